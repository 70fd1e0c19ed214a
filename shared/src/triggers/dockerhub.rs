//! Docker Hub repository webhooks. They carry no digest: ingest resolves the tag.

use chrono::DateTime;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::reference::{Repository, Tag, excerpt};
use crate::triggers::{Parsed, Push, TriggerKind, part, pusher, typed};

#[derive(Debug, Deserialize)]
struct HubPayload {
    push_data: HubPushData,
    repository: HubRepository,
}
#[derive(Debug, Deserialize)]
struct HubPushData {
    pushed_at: i64,
    #[serde(default)]
    pusher: Option<String>,
    tag: String,
}
#[derive(Debug, Deserialize)]
struct HubRepository {
    repo_name: String,
}

/// Parses a Docker Hub repository webhook. It carries no digest: ingest resolves it.
pub fn parse_dockerhub(payload: &Value) -> Result<Parsed> {
    let p: HubPayload = typed("Docker Hub webhook", payload)?;
    let pushed_at = DateTime::from_timestamp(p.push_data.pushed_at, 0).ok_or_else(|| {
        Error::invalid("Docker Hub webhook", "push_data.pushed_at: not a Unix time")
    })?;
    let mut out = Parsed::default();
    const WHAT: &str = "Docker Hub webhook";
    if p.push_data.tag.is_empty() {
        out.ignored.push(format!(
            "push to {} without a tag ignored",
            excerpt(&p.repository.repo_name)
        ));
        return Ok(out);
    }
    // Official images are `library/<name>` in the registry.
    let repository: Repository = if p.repository.repo_name.contains('/') {
        part(WHAT, "repository.repo_name", &p.repository.repo_name)?
    } else {
        part(
            WHAT,
            "repository.repo_name",
            &format!("library/{}", p.repository.repo_name),
        )?
    };
    let tag: Tag = part(WHAT, "push_data.tag", &p.push_data.tag)?;
    out.pushes.push(Push {
        trigger: TriggerKind::Dockerhub,
        notification_id: format!("{repository}:{tag}:{}", p.push_data.pushed_at),
        registry: part(WHAT, "registry", "docker.io")?,
        repository,
        tag,
        digest: None,
        pushed_at,
        pushed_by: pusher(WHAT, "push_data.pusher", p.push_data.pusher)?,
    });
    Ok(out)
}
