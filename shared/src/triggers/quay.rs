//! Quay repository push notifications (one push per updated tag; no digest, no time).

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::error::Result;
use crate::reference::{RegistryHost, Repository, Tag};
use crate::triggers::{Parsed, Push, TriggerKind, host_of, part, typed};

#[derive(Debug, Deserialize)]
struct QuayPayload {
    repository: String,
    docker_url: String,
    updated_tags: Vec<String>,
}

/// Parses a Quay repository push notification (one push per updated tag; no digest and
/// no time: ingest resolves the digest, the receive time orders it).
pub fn parse_quay(payload: &Value, received_at: DateTime<Utc>) -> Result<Parsed> {
    const WHAT: &str = "Quay notification";
    let p: QuayPayload = typed(WHAT, payload)?;
    let mut out = Parsed::default();
    let id = crate::ids::stable_id(&["quay", &payload.to_string()]);
    let registry: RegistryHost = part(WHAT, "docker_url", host_of(&p.docker_url))?;
    let repository: Repository = part(WHAT, "repository", &p.repository)?;
    for (i, tag) in p.updated_tags.into_iter().enumerate() {
        if tag.is_empty() {
            continue;
        }
        let tag: Tag = part(WHAT, &format!("updated_tags[{i}]"), &tag)?;
        out.pushes.push(Push {
            trigger: TriggerKind::Quay,
            notification_id: format!("{id}:{tag}"),
            registry: registry.clone(),
            repository: repository.clone(),
            tag,
            digest: None,
            pushed_at: received_at,
            pushed_by: None,
        });
    }
    if out.pushes.is_empty() {
        out.ignored
            .push(format!("notification for {repository} names no tag"));
    }
    Ok(out)
}
