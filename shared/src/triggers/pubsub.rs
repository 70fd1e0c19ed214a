//! Google Cloud through Pub/Sub push subscriptions: the push envelope (`message.data`
//! base64, `message.messageId`, `message.publishTime`; Pub/Sub also sends the
//! snake_case copies, which are ignored) carrying either an Artifact
//! Registry / Container Registry notification (the `gcr` topic: `{"action": "INSERT",
//! "digest": "<host>/<path>@sha256:…", "tag": "<host>/<path>:<tag>"}`) or a Cloud Build
//! notification (the `cloud-builds` topic: the Build resource; `status: SUCCESS` and
//! `results.images[]` with `name` and `digest`). Deletions, untagged images and builds
//! that did not succeed are ignored, saying why.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::reference::{Digest, ImageRef, excerpt};
use crate::triggers::{Parsed, Push, TriggerKind, notification_id, part, typed};

const WHAT: &str = "Pub/Sub push";

#[derive(Debug, Deserialize)]
struct Envelope {
    message: Message,
}
#[derive(Debug, Deserialize)]
struct Message {
    data: String,
    #[serde(rename = "messageId")]
    message_id: String,
    #[serde(rename = "publishTime")]
    publish_time: DateTime<Utc>,
}

#[derive(Debug, Deserialize)]
struct GcrNotification {
    action: String,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    tag: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Build {
    id: String,
    status: String,
    #[serde(default)]
    results: Option<BuildResults>,
    #[serde(rename = "finishTime", default)]
    finish_time: Option<DateTime<Utc>>,
}
#[derive(Debug, Deserialize)]
struct BuildResults {
    #[serde(default)]
    images: Vec<BuiltImage>,
}
#[derive(Debug, Deserialize)]
struct BuiltImage {
    name: String,
    digest: String,
}

/// A reference with a registry host (`us-east1-docker.pkg.dev/p/r/img:1.0`); the error
/// names `field`.
fn reference(field: &str, s: &str) -> Result<ImageRef> {
    let r: ImageRef = part(WHAT, field, s)?;
    if r.registry.is_none() {
        return Err(Error::invalid(
            WHAT,
            format!("{field}: {} names no registry host", excerpt(s)),
        ));
    }
    Ok(r)
}

/// Parses a Pub/Sub push request from the `gcr` topic or the `cloud-builds` topic.
pub fn parse_pubsub(payload: &Value) -> Result<Parsed> {
    let env: Envelope = typed(WHAT, payload)?;
    let data = base64::engine::general_purpose::STANDARD
        .decode(env.message.data.trim())
        .map_err(|e| Error::invalid(WHAT, format!("message.data: not base64 ({e})")))?;
    let inner: Value = serde_json::from_slice(&data)
        .map_err(|e| Error::invalid(WHAT, format!("message.data: not JSON ({e})")))?;
    let id = notification_id(WHAT, "message.messageId", env.message.message_id)?;
    let mut out = Parsed::default();
    if inner.get("action").is_some() {
        let n: GcrNotification = serde_path_to_error::deserialize(&inner).map_err(|e| {
            Error::invalid(WHAT, format!("message.data.{}: {}", e.path(), e.inner()))
        })?;
        if n.action != "INSERT" {
            out.ignored.push(format!(
                "registry action {} is not a push",
                excerpt(&n.action)
            ));
            return Ok(out);
        }
        let Some(tagged) = n.tag.filter(|t| !t.is_empty()) else {
            out.ignored
                .push("an image pushed without a tag ignored".to_string());
            return Ok(out);
        };
        let t = reference("message.data.tag", &tagged)?;
        let digest = match n.digest.filter(|d| !d.is_empty()) {
            Some(d) => {
                let r = reference("message.data.digest", &d)?;
                if r.registry != t.registry || r.repository != t.repository {
                    return Err(Error::invalid(
                        WHAT,
                        "message.data.digest: names another image than message.data.tag",
                    ));
                }
                r.digest
            }
            None => None,
        };
        out.pushes.push(Push {
            trigger: TriggerKind::Pubsub,
            notification_id: id,
            registry: t
                .registry
                .clone()
                .ok_or_else(|| Error::invalid(WHAT, "message.data.tag: no host"))?,
            repository: t.repository,
            tag: t
                .tag
                .ok_or_else(|| Error::invalid(WHAT, "message.data.tag: names no tag"))?,
            digest,
            pushed_at: env.message.publish_time,
            pushed_by: None,
        });
        return Ok(out);
    }
    if inner.get("status").is_some() && inner.get("id").is_some() {
        let b: Build = serde_path_to_error::deserialize(&inner).map_err(|e| {
            Error::invalid(WHAT, format!("message.data.{}: {}", e.path(), e.inner()))
        })?;
        if b.status != "SUCCESS" {
            out.ignored.push(format!(
                "build {} is {}, not SUCCESS",
                excerpt(&b.id),
                excerpt(&b.status)
            ));
            return Ok(out);
        }
        let images = b.results.map(|r| r.images).unwrap_or_default();
        if images.is_empty() {
            out.ignored
                .push(format!("build {} pushed no image", excerpt(&b.id)));
        }
        for (i, img) in images.into_iter().enumerate() {
            let field = format!("message.data.results.images[{i}]");
            let r = reference(&format!("{field}.name"), &img.name)?;
            let Some(tag) = r.tag else {
                out.ignored
                    .push(format!("built image {} has no tag", excerpt(&img.name)));
                continue;
            };
            let digest: Digest = part(WHAT, &format!("{field}.digest"), &img.digest)?;
            out.pushes.push(Push {
                trigger: TriggerKind::Pubsub,
                notification_id: notification_id(WHAT, "message.messageId", format!("{id}/{i}"))?,
                registry: r
                    .registry
                    .ok_or_else(|| Error::invalid(WHAT, format!("{field}.name: no host")))?,
                repository: r.repository,
                tag,
                digest: Some(digest),
                pushed_at: b.finish_time.unwrap_or(env.message.publish_time),
                pushed_by: None,
            });
        }
        return Ok(out);
    }
    Err(Error::invalid(
        WHAT,
        "message.data: neither a registry notification (action) nor a Cloud Build (id, status)",
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn push(data: Value) -> Value {
        json!({"message": {
            "data": base64::engine::general_purpose::STANDARD.encode(data.to_string()),
            "messageId": "2070443601311540", "publishTime": "2026-11-29T10:00:00.123Z",
            "attributes": {}},
            "subscription": "projects/my-project/subscriptions/baton"})
    }

    const D: &str = "sha256:6ec128e26cd5c6f5d7a2c4a5d1c8e1a4b3a9b6e3f4c1d2e3f4a5b6c7d8e9f0a1";

    #[test]
    fn an_artifact_registry_insert_is_a_push() {
        let p = parse_pubsub(&push(json!({"action": "INSERT",
            "digest": format!("us-east1-docker.pkg.dev/my-project/my-repo/web@{D}"),
            "tag": "us-east1-docker.pkg.dev/my-project/my-repo/web:1.2.0"})))
        .unwrap();
        let x = &p.pushes[0];
        assert_eq!(x.registry, "us-east1-docker.pkg.dev");
        assert_eq!(x.repository, "my-project/my-repo/web");
        assert_eq!(x.tag, "1.2.0");
        assert_eq!(x.digest.as_ref().unwrap().as_str(), D);
        assert_eq!(x.notification_id, "2070443601311540");
    }

    #[test]
    fn a_successful_cloud_build_is_a_push_per_tagged_image() {
        let build = |status: &str| {
            json!({"id": "b-1", "status": status, "finishTime": "2026-11-29T10:00:00Z",
            "results": {"images": [
                {"name": "gcr.io/my-project/web:1.3.0", "digest": D},
                {"name": "gcr.io/my-project/web", "digest": D}]}})
        };
        let p = parse_pubsub(&push(build("SUCCESS"))).unwrap();
        assert_eq!(p.pushes.len(), 1);
        assert_eq!(p.pushes[0].registry, "gcr.io");
        assert_eq!(p.pushes[0].tag, "1.3.0");
        assert!(p.ignored[0].contains("no tag"));
        let failed = parse_pubsub(&push(build("FAILURE"))).unwrap();
        assert!(failed.pushes.is_empty() && failed.ignored[0].contains("not SUCCESS"));
    }

    #[test]
    fn deletions_are_ignored_and_malformed_or_hostile_input_named() {
        let del =
            parse_pubsub(&push(json!({"action": "DELETE", "tag": "gcr.io/p/web:1"}))).unwrap();
        assert!(del.pushes.is_empty() && del.ignored[0].contains("not a push"));
        for (data, want) in [
            (
                json!({"action": "INSERT", "tag": "web:1.0"}),
                "names no registry host",
            ),
            (
                json!({"action": "INSERT", "tag": "gcr.io/p/web:1.0\nimage: evil"}),
                "message.data.tag",
            ),
            (
                json!({"action": "INSERT", "tag": "gcr.io/p/web:1.0", "digest": format!("gcr.io/p/other@{D}")}),
                "another image",
            ),
            (
                json!({"id": "b", "status": "SUCCESS", "results": {"images": [{"name": "gcr.io/p/w:1", "digest": "sha256:nope"}]}}),
                "results.images[0].digest",
            ),
            (json!({"hello": 1}), "neither"),
        ] {
            let e = parse_pubsub(&push(data)).unwrap_err().to_string();
            assert!(e.contains(want), "want {want:?} in {e}");
        }
        let e = parse_pubsub(&json!({"message": {"data": "%%%", "messageId": "1", "publishTime": "2026-11-29T10:00:00Z"}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("message.data: not base64"), "{e}");
        let e = parse_pubsub(&json!({"message": {"data": ""}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("message"), "{e}");
    }
}
