//! GitHub `package` events for containers (GHCR).

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::error::Result;
use crate::reference::{Digest, RegistryHost, excerpt};
use crate::triggers::{Parsed, Push, TriggerKind, part, pusher, typed};

#[derive(Debug, Deserialize)]
struct GhPayload {
    action: String,
    package: GhPackage,
    #[serde(default)]
    sender: Option<GhUser>,
}
#[derive(Debug, Deserialize)]
struct GhPackage {
    name: String,
    namespace: String,
    package_type: String,
    package_version: GhVersion,
    #[serde(default)]
    registry: Option<GhRegistry>,
    #[serde(default)]
    updated_at: Option<DateTime<Utc>>,
}
#[derive(Debug, Deserialize)]
struct GhVersion {
    id: u64,
    #[serde(default)]
    container_metadata: Option<GhContainer>,
    #[serde(default)]
    created_at: Option<DateTime<Utc>>,
}
#[derive(Debug, Deserialize)]
struct GhContainer {
    tag: GhTag,
}
#[derive(Debug, Deserialize)]
struct GhTag {
    name: String,
    digest: String,
}
#[derive(Debug, Deserialize)]
struct GhRegistry {
    url: String,
}
#[derive(Debug, Deserialize)]
struct GhUser {
    login: String,
}

/// Parses a GitHub `package` event (GHCR); only published container versions start runs.
pub fn parse_ghcr(payload: &Value) -> Result<Parsed> {
    let p: GhPayload = typed("GitHub package event", payload)?;
    let mut out = Parsed::default();
    if !p.package.package_type.eq_ignore_ascii_case("container") {
        out.ignored.push(format!(
            "package type {} is not a container",
            excerpt(&p.package.package_type)
        ));
        return Ok(out);
    }
    if p.action != "published" && p.action != "updated" {
        out.ignored.push(format!(
            "package action {} is not a push",
            excerpt(&p.action)
        ));
        return Ok(out);
    }
    let Some(meta) = p.package.package_version.container_metadata else {
        out.ignored
            .push("package version without container metadata ignored".into());
        return Ok(out);
    };
    if meta.tag.name.is_empty() {
        out.ignored.push(format!(
            "untagged version of {}/{} ignored",
            excerpt(&p.package.namespace),
            excerpt(&p.package.name)
        ));
        return Ok(out);
    }
    const WHAT: &str = "GitHub package event";
    let digest: Digest = part(
        WHAT,
        "package.package_version.container_metadata.tag.digest",
        &meta.tag.digest,
    )?;
    let registry: RegistryHost = match p.package.registry.as_ref() {
        Some(r) => part(
            WHAT,
            "package.registry.url",
            r.url
                .split_once("://")
                .map_or("", |(_, h)| h.trim_end_matches('/')),
        )?,
        None => part(WHAT, "package.registry.url", "ghcr.io")?,
    };
    out.pushes.push(Push {
        trigger: TriggerKind::Ghcr,
        notification_id: format!(
            "ghcr:{}:{}",
            p.package.package_version.id,
            excerpt(&meta.tag.name)
        ),
        registry,
        repository: part(
            WHAT,
            "package.namespace/package.name",
            &format!("{}/{}", p.package.namespace.to_lowercase(), p.package.name),
        )?,
        tag: part(
            WHAT,
            "package.package_version.container_metadata.tag.name",
            &meta.tag.name,
        )?,
        digest: Some(digest),
        pushed_at: p
            .package
            .package_version
            .created_at
            .or(p.package.updated_at)
            .unwrap_or_else(Utc::now),
        pushed_by: pusher(WHAT, "sender.login", p.sender.map(|s| s.login))?,
    });
    Ok(out)
}
