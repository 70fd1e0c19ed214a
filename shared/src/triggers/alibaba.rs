//! Alibaba Cloud Container Registry (ACR, the registry of the Yunxiao pipelines)
//! webhooks: `{"push_data": {"digest"?, "pushed_at", "tag"}, "repository": {"namespace",
//! "name", "region", "repo_full_name", …}}`. The registry host is the region's
//! (`registry.<region>.aliyuncs.com`) unless the webhook names an instance domain;
//! without a digest ingest resolves the tag through the registry API.

use chrono::{NaiveDateTime, TimeZone, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::reference::{Digest, RegistryHost, Repository, Tag, excerpt};
use crate::triggers::{Parsed, Push, TriggerKind, part, typed};

const WHAT: &str = "Alibaba ACR webhook";

#[derive(Debug, Deserialize)]
struct AcrPayload {
    push_data: AcrPushData,
    repository: AcrRepository,
}
#[derive(Debug, Deserialize)]
struct AcrPushData {
    #[serde(default)]
    digest: Option<String>,
    pushed_at: String,
    tag: String,
}
#[derive(Debug, Deserialize)]
struct AcrRepository {
    repo_full_name: String,
    region: String,
    /// Enterprise instances: the instance's registry domain, when the webhook says it.
    #[serde(default)]
    domain: Option<String>,
}

/// Parses an ACR webhook; `pushed_at` is ACR's `YYYY-MM-DD HH:MM:SS`, in China
/// Standard Time (UTC+8) as ACR documents its console times.
pub fn parse_acr(payload: &Value) -> Result<Parsed> {
    let p: AcrPayload = typed(WHAT, payload)?;
    let mut out = Parsed::default();
    if p.push_data.tag.is_empty() {
        out.ignored.push(format!(
            "push to {} without a tag ignored",
            excerpt(&p.repository.repo_full_name)
        ));
        return Ok(out);
    }
    let region_ok = !p.repository.region.is_empty()
        && p.repository.region.len() <= 32
        && p.repository
            .region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !region_ok {
        return Err(Error::invalid(
            WHAT,
            format!(
                "repository.region: {} is not a region id (cn-hangzhou)",
                excerpt(&p.repository.region)
            ),
        ));
    }
    let registry: RegistryHost = match &p.repository.domain {
        Some(d) if !d.is_empty() => part(WHAT, "repository.domain", d)?,
        _ => part(
            WHAT,
            "repository.region",
            &format!("registry.{}.aliyuncs.com", p.repository.region),
        )?,
    };
    let repository: Repository = part(
        WHAT,
        "repository.repo_full_name",
        &p.repository.repo_full_name,
    )?;
    let tag: Tag = part(WHAT, "push_data.tag", &p.push_data.tag)?;
    let digest: Option<Digest> = match p.push_data.digest.filter(|d| !d.is_empty()) {
        Some(d) => Some(part(WHAT, "push_data.digest", &d)?),
        None => None,
    };
    let local = NaiveDateTime::parse_from_str(&p.push_data.pushed_at, "%Y-%m-%d %H:%M:%S")
        .map_err(|_| {
            Error::invalid(
                WHAT,
                format!(
                    "push_data.pushed_at: {} is not YYYY-MM-DD HH:MM:SS",
                    excerpt(&p.push_data.pushed_at)
                ),
            )
        })?;
    let cst =
        chrono::FixedOffset::east_opt(8 * 3600).ok_or_else(|| Error::invalid(WHAT, "time zone"))?;
    let pushed_at = cst
        .from_local_datetime(&local)
        .single()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| Error::invalid(WHAT, "push_data.pushed_at: not a time"))?;
    out.pushes.push(Push {
        trigger: TriggerKind::Acr,
        notification_id: format!("{registry}/{repository}:{tag}@{}", p.push_data.pushed_at),
        registry,
        repository,
        tag,
        digest,
        pushed_at,
        pushed_by: None,
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn acr() -> Value {
        json!({"push_data": {"digest": "sha256:457f4aa83fc9a6663ab9d1b0a6e2dce25a12a943ed5bf2c1747c58d48bbb4917",
                "pushed_at": "2026-11-29 18:25:46", "tag": "1.5.0"},
               "repository": {"date_created": "2026-01-01 10:00:00", "name": "web", "namespace": "team",
                "region": "cn-hangzhou", "repo_authentication_type": "NO_CERTIFIED",
                "repo_full_name": "team/web", "repo_origin_type": "NO_CERTIFIED", "repo_type": "PRIVATE"}})
    }

    #[test]
    fn a_push_names_the_regions_registry_and_reads_cst() {
        let p = parse_acr(&acr()).unwrap();
        let x = &p.pushes[0];
        assert_eq!(x.registry, "registry.cn-hangzhou.aliyuncs.com");
        assert_eq!(x.repository, "team/web");
        assert_eq!(x.tag, "1.5.0");
        assert_eq!(x.pushed_at.to_rfc3339(), "2026-11-29T10:25:46+00:00");
        let mut no_digest = acr();
        no_digest["push_data"]
            .as_object_mut()
            .unwrap()
            .remove("digest");
        assert_eq!(
            parse_acr(&no_digest).unwrap().pushes[0].digest,
            None,
            "resolved by ingest"
        );
    }

    #[test]
    fn hostile_or_malformed_parts_are_refused_naming_the_field() {
        for (path, v, want) in [
            (
                "/repository/region",
                json!("cn-hangzhou.evil.com/x"),
                "repository.region",
            ),
            (
                "/repository/repo_full_name",
                json!("team/../web"),
                "repository.repo_full_name",
            ),
            ("/push_data/tag", json!("1.0\nimage: x"), "push_data.tag"),
            (
                "/push_data/pushed_at",
                json!("yesterday"),
                "push_data.pushed_at",
            ),
            ("/push_data/digest", json!("md5:abc"), "push_data.digest"),
        ] {
            let mut a = acr();
            *a.pointer_mut(path).unwrap() = v;
            let e = parse_acr(&a).unwrap_err().to_string();
            assert!(e.contains(want), "{path}: {e}");
        }
    }
}
