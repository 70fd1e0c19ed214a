//! CDEvents `artifact.published` as a trigger: any CDEvents producer (a build system, a
//! registry bridge) can start a run. The body is the CDEvent itself (CloudEvents HTTP
//! binary mode, what CDEvents SDKs send) or a structured-mode CloudEvent whose `data` is
//! the CDEvent. The artifact is a package URL of type `oci`:
//! `pkg:oci/<name>@sha256%3A<hex>?repository_url=<registry>/<repository>&tag=<tag>`;
//! without a `tag` qualifier there is no tag for the app's tag policy, so it is ignored.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::reference::{Digest, RegistryHost, Repository, Tag, excerpt};
use crate::triggers::{Parsed, Push, TriggerKind, notification_id, part, pusher, typed};

const WHAT: &str = "CDEvent";

#[derive(Debug, Deserialize)]
struct CdEvent {
    context: CdContext,
    subject: CdSubject,
}
#[derive(Debug, Deserialize)]
struct CdContext {
    id: String,
    #[serde(rename = "type")]
    ty: String,
    timestamp: DateTime<Utc>,
}
#[derive(Debug, Deserialize)]
struct CdSubject {
    id: String,
    #[serde(default)]
    content: Option<CdContent>,
}
#[derive(Debug, Deserialize)]
struct CdContent {
    #[serde(default)]
    user: Option<String>,
}

/// `%XX` sequences decoded; a malformed sequence or a non-UTF-8 result is `None`
/// (percent-encoding decodes a malformed `%` as itself: refused here instead).
fn percent_decode(s: &str) -> Option<String> {
    let malformed = s.match_indices('%').any(|(i, _)| {
        s.get(i + 1..i + 3)
            .is_none_or(|h| !h.bytes().all(|b| b.is_ascii_hexdigit()))
    });
    if malformed {
        return None;
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// The parts of an OCI purl: (registry, repository, digest, tag).
fn parse_purl(purl: &str) -> Result<Option<(RegistryHost, Repository, Digest, Tag)>> {
    let field = "subject.id";
    let bad = |why: &str| Error::invalid(WHAT, format!("{field}: {} {why}", excerpt(purl)));
    let rest = purl
        .strip_prefix("pkg:oci/")
        .ok_or_else(|| bad("is not an OCI package URL (pkg:oci/…)"))?;
    let (before, qualifiers) = rest.split_once('?').unwrap_or((rest, ""));
    let (_name, version) = before
        .split_once('@')
        .ok_or_else(|| bad("has no version (@sha256:…)"))?;
    let digest: Digest = part(
        WHAT,
        &format!("{field} version"),
        &percent_decode(version).ok_or_else(|| bad("has a malformed %-escape"))?,
    )?;
    let mut repository_url = None;
    let mut tag = None;
    for q in qualifiers.split('&').filter(|q| !q.is_empty()) {
        let (k, v) = q.split_once('=').unwrap_or((q, ""));
        let v = percent_decode(v).ok_or_else(|| bad("has a malformed %-escape"))?;
        match k {
            "repository_url" => repository_url = Some(v),
            "tag" => tag = Some(v),
            _ => {}
        }
    }
    let Some(tag) = tag.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let url = repository_url.ok_or_else(|| {
        bad("has no repository_url qualifier (registry/repository the image is in)")
    })?;
    let (host, repo) = url
        .split_once('/')
        .ok_or_else(|| bad("has a repository_url without a repository"))?;
    Ok(Some((
        part(WHAT, &format!("{field} repository_url host"), host)?,
        part(WHAT, &format!("{field} repository_url repository"), repo)?,
        digest,
        part(WHAT, &format!("{field} tag"), &tag)?,
    )))
}

/// Parses a CDEvent (or a structured CloudEvent carrying one); only
/// `dev.cdevents.artifact.published.*` of a tagged OCI image starts a run.
pub fn parse_cdevents(payload: &Value) -> Result<Parsed> {
    // Structured mode: the CloudEvent's data is the CDEvent.
    let doc = match payload.get("specversion") {
        Some(_) => payload
            .get("data")
            .ok_or_else(|| Error::invalid(WHAT, "data: a structured CloudEvent without data"))?,
        None => payload,
    };
    let e: CdEvent = typed(WHAT, doc)?;
    let mut out = Parsed::default();
    if !e.context.ty.starts_with("dev.cdevents.artifact.published.") {
        out.ignored.push(format!(
            "CDEvent {} is not an artifact.published",
            excerpt(&e.context.ty)
        ));
        return Ok(out);
    }
    let Some((registry, repository, digest, tag)) = parse_purl(&e.subject.id)? else {
        out.ignored.push(format!(
            "artifact {} has no tag qualifier; a run needs a tag",
            excerpt(&e.subject.id)
        ));
        return Ok(out);
    };
    out.pushes.push(Push {
        trigger: TriggerKind::Cdevents,
        notification_id: notification_id(WHAT, "context.id", e.context.id)?,
        registry,
        repository,
        tag,
        digest: Some(digest),
        pushed_at: e.context.timestamp,
        pushed_by: pusher(
            WHAT,
            "subject.content.user",
            e.subject.content.and_then(|c| c.user),
        )?,
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cd(purl: &str) -> Value {
        json!({
            "context": {"specversion": "0.5.1", "id": "271069a8-fc18-44f1-b38f-9d70a1695819",
                "source": "/event/source/123", "type": "dev.cdevents.artifact.published.0.3.0",
                "timestamp": "2026-11-29T10:00:00Z"},
            "subject": {"id": purl, "content": {"user": "builder"}}
        })
    }

    const DIGEST: &str =
        "sha256%3A89c8ddc0798381cf38663148bbe53b2133096cd87368441fc997d6a7c2a17405";

    #[test]
    fn a_tagged_oci_artifact_is_a_push() {
        let p = parse_cdevents(&cd(&format!(
            "pkg:oci/web@{DIGEST}?repository_url=localhost:5000/demo/web&tag=1.2.0"
        )))
        .unwrap();
        let push = &p.pushes[0];
        assert_eq!(push.registry, "localhost:5000");
        assert_eq!(push.repository, "demo/web");
        assert_eq!(push.tag, "1.2.0");
        assert_eq!(push.pushed_by.as_deref(), Some("builder"));
        assert!(
            push.digest
                .as_ref()
                .unwrap()
                .as_str()
                .starts_with("sha256:89c8")
        );
        // Structured mode: the same CDEvent as a CloudEvent's data.
        let structured = json!({"specversion": "1.0", "id": "x", "source": "/s",
            "type": "dev.cdevents.artifact.published.0.3.0",
            "data": cd(&format!("pkg:oci/web@{DIGEST}?repository_url=localhost%3A5000%2Fdemo%2Fweb&tag=1.2.0"))});
        assert_eq!(parse_cdevents(&structured).unwrap().pushes, p.pushes);
    }

    #[test]
    fn what_baton_sends_as_a_cdevent_starts_the_same_run_elsewhere() {
        let built = crate::stages::testing::sample("image.built", |_| {});
        let Some(cd) = crate::cdevents::cdevent(&built) else {
            panic!("image.built has a CDEvent")
        };
        let p = parse_cdevents(&cd).unwrap();
        let img = &built.ctx().image;
        let push = &p.pushes[0];
        assert_eq!(
            (
                &push.registry,
                &push.repository,
                &push.tag,
                push.digest.as_ref()
            ),
            (&img.registry, &img.repository, &img.tag, Some(&img.digest))
        );
        assert_eq!(push.notification_id, built.id);
    }

    #[test]
    fn other_events_and_untagged_artifacts_are_ignored_saying_why() {
        let mut other = cd("pkg:oci/web@x");
        other["context"]["type"] = json!("dev.cdevents.service.deployed.0.3.0");
        assert!(parse_cdevents(&other).unwrap().ignored[0].contains("not an artifact.published"));
        let untagged = parse_cdevents(&cd(&format!(
            "pkg:oci/web@{DIGEST}?repository_url=localhost:5000/demo/web"
        )))
        .unwrap();
        assert!(untagged.pushes.is_empty() && untagged.ignored[0].contains("no tag"));
    }

    #[test]
    fn hostile_or_malformed_package_urls_are_refused_naming_the_field() {
        for (purl, want) in [
            ("pkg:npm/web@1.0.0", "not an OCI package URL"),
            ("pkg:oci/web?tag=1", "no version"),
            (
                "pkg:oci/web@sha256%3Anope?repository_url=h/r&tag=1",
                "subject.id version",
            ),
            (&format!("pkg:oci/web@{DIGEST}?tag=1"), "no repository_url"),
            (
                &format!("pkg:oci/web@{DIGEST}?repository_url=h/r&tag=1%0Aimage:%20evil"),
                "subject.id tag",
            ),
            (
                &format!("pkg:oci/web@{DIGEST}?repository_url=h/../x&tag=1"),
                "repository_url repository",
            ),
            (
                &format!("pkg:oci/web@{DIGEST}?repository_url=h/r&tag=%zz"),
                "malformed %-escape",
            ),
        ] {
            let e = parse_cdevents(&cd(purl)).unwrap_err().to_string();
            assert!(e.contains(want), "{purl}: want {want:?} in {e}");
        }
        let e = parse_cdevents(&json!({"context": {}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("context"), "{e}");
    }
}
