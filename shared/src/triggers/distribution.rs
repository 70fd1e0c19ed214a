//! CNCF distribution (`docker-registry`, GitLab's registry) notification envelopes:
//! manifest pushes with a tag start runs; blob pushes and untagged manifests are ignored.

use chrono::{DateTime, FixedOffset, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::reference::excerpt;
use crate::triggers::{Parsed, Push, TriggerKind, notification_id, part, path_error, pusher};

#[derive(Debug, Deserialize)]
struct DistEnvelope {
    events: Vec<DistEvent>,
}

#[derive(Debug, Deserialize)]
struct DistEvent {
    id: String,
    timestamp: DateTime<FixedOffset>,
    action: String,
    target: DistTarget,
    #[serde(default)]
    request: Option<DistRequest>,
    #[serde(default)]
    actor: Option<DistActor>,
}

#[derive(Debug, Deserialize)]
struct DistTarget {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    repository: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    tag: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DistRequest {
    #[serde(default)]
    host: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DistActor {
    #[serde(default)]
    name: Option<String>,
}

/// Media types of manifests (as opposed to blobs).
pub fn is_manifest_media_type(mt: &str) -> bool {
    mt.contains("manifest") || mt.contains("image.index")
}

/// Parses a CNCF distribution notification envelope
/// (`application/vnd.docker.distribution.events.v1+json`).
pub fn parse_distribution(payload: &Value) -> Result<Parsed> {
    let env: DistEnvelope = serde_path_to_error::deserialize(payload.clone())
        .map_err(|e| path_error("registry notification", e))?;
    let mut out = Parsed::default();
    for (i, ev) in env.events.into_iter().enumerate() {
        const WHAT: &str = "registry notification";
        let what = format!("event {i} ({})", excerpt(&ev.id));
        if ev.action != "push" {
            out.ignored.push(format!(
                "{what}: action {} is not a push",
                excerpt(&ev.action)
            ));
            continue;
        }
        let t = &ev.target;
        let is_manifest = is_manifest_media_type(&t.media_type)
            || t.url.as_deref().is_some_and(|u| u.contains("/manifests/"));
        if !is_manifest {
            out.ignored.push(format!(
                "{what}: blob push to {} ignored",
                excerpt(&t.repository)
            ));
            continue;
        }
        let Some(tag) = t.tag.as_deref().filter(|t| !t.is_empty()) else {
            out.ignored.push(format!(
                "{what}: manifest push to {} without a tag ignored",
                excerpt(&t.repository)
            ));
            continue;
        };
        let at = |f: &str| format!("events[{i}].{f}");
        let digest = part(WHAT, &at("target.digest"), &t.digest)?;
        let registry = match (
            ev.request.as_ref().and_then(|r| r.host.as_deref()),
            t.url.as_deref(),
        ) {
            (Some(host), _) => part(WHAT, &at("request.host"), host)?,
            (None, Some(url)) => part(
                WHAT,
                &at("target.url"),
                host_of_url(url).unwrap_or_default(),
            )?,
            (None, None) => {
                return Err(Error::invalid(
                    WHAT,
                    format!(
                        "{}: missing, and there is no target.url to name the registry",
                        at("request.host")
                    ),
                ));
            }
        };
        out.pushes.push(Push {
            trigger: TriggerKind::Distribution,
            notification_id: notification_id(WHAT, &at("id"), ev.id.clone())?,
            registry,
            repository: part(WHAT, &at("target.repository"), &t.repository)?,
            tag: part(WHAT, &at("target.tag"), tag)?,
            digest: Some(digest),
            pushed_at: ev.timestamp.with_timezone(&Utc),
            pushed_by: pusher(WHAT, &at("actor.name"), ev.actor.and_then(|a| a.name))?,
        });
    }
    Ok(out)
}

fn host_of_url(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    rest.split('/').next()
}
