//! Harbor webhooks: only `PUSH_ARTIFACT` events start runs.

use chrono::DateTime;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::reference::{Digest, Repository, excerpt};
use crate::triggers::{Parsed, Push, TriggerKind, host_of, part, pusher, typed};

#[derive(Debug, Deserialize)]
struct HarborPayload {
    #[serde(rename = "type")]
    ty: String,
    occur_at: i64,
    #[serde(default)]
    operator: Option<String>,
    event_data: HarborData,
}
#[derive(Debug, Deserialize)]
struct HarborData {
    resources: Vec<HarborResource>,
    repository: HarborRepository,
}
#[derive(Debug, Deserialize)]
struct HarborResource {
    digest: String,
    #[serde(default)]
    tag: Option<String>,
    resource_url: String,
}
#[derive(Debug, Deserialize)]
struct HarborRepository {
    repo_full_name: String,
}

/// Parses a Harbor webhook; only `PUSH_ARTIFACT` events start runs.
pub fn parse_harbor(payload: &Value) -> Result<Parsed> {
    let p: HarborPayload = typed("Harbor webhook", payload)?;
    const WHAT: &str = "Harbor webhook";
    let mut out = Parsed::default();
    if p.ty != "PUSH_ARTIFACT" {
        out.ignored
            .push(format!("Harbor event {} is not a push", excerpt(&p.ty)));
        return Ok(out);
    }
    let pushed_at = DateTime::from_timestamp(p.occur_at, 0)
        .ok_or_else(|| Error::invalid(WHAT, "occur_at: not a Unix time"))?;
    let repository: Repository = part(
        WHAT,
        "event_data.repository.repo_full_name",
        &p.event_data.repository.repo_full_name,
    )?;
    let pushed_by = pusher(WHAT, "operator", p.operator.clone())?;
    for (i, r) in p.event_data.resources.into_iter().enumerate() {
        let Some(tag) = r.tag.filter(|t| !t.is_empty()) else {
            out.ignored.push(format!(
                "untagged artifact {} ignored",
                excerpt(&r.resource_url)
            ));
            continue;
        };
        let at = |f: &str| format!("event_data.resources[{i}].{f}");
        let digest: Digest = part(WHAT, &at("digest"), &r.digest)?;
        out.pushes.push(Push {
            trigger: TriggerKind::Harbor,
            notification_id: format!("{repository}:{digest}:{}", p.occur_at),
            registry: part(WHAT, &at("resource_url"), host_of(&r.resource_url))?,
            repository: repository.clone(),
            tag: part(WHAT, &at("tag"), &tag)?,
            digest: Some(digest),
            pushed_at,
            pushed_by: pushed_by.clone(),
        });
    }
    Ok(out)
}
