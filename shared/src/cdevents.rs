//! CDEvents v0.5.1 (the CD Foundation's vocabulary of delivery events) from Baton's
//! events, sent as CloudEvents in HTTP binary mode (`ce-*` headers, the whole CDEvent as
//! the JSON body), as the CDEvents CloudEvents binding says. The artifact is a package
//! URL: `pkg:oci/<name>@sha256%3A<hex>?repository_url=<registry>/<repository>&tag=<tag>`.
//!
//! | Baton | CDEvents |
//! |---|---|
//! | `image.built` | `dev.cdevents.artifact.published.0.3.0` |
//! | `tests.passed` / `tests.failed` | `dev.cdevents.testsuiterun.finished.0.3.0` (`success` / `failure`) |
//! | `deploy.succeeded` (first image in the environment) | `dev.cdevents.service.deployed.0.3.0` |
//! | `deploy.succeeded` (replacing a live image) | `dev.cdevents.service.upgraded.0.3.0` |
//! | `deploy.succeeded` with `rollback` | `dev.cdevents.service.rolledback.0.3.0` |
//!
//! Other events have no CDEvents counterpart here and are not sent. The JSON Schemas
//! these are checked against are in `events/cdevents/`.

use serde_json::{Value, json};

use crate::event::{Event, Image, Payload};

/// The CDEvents specification version Baton speaks.
pub const SPEC_VERSION: &str = "0.5.1";

/// What a purl escapes in a name, version or qualifier value: everything but
/// unreserved characters (`A-Z a-z 0-9 - . _ ~`).
const PURL: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn purl_escape(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, PURL).to_string()
}

/// The image as a package URL (purl type `oci`): the repository's last path component
/// as the name, the digest as the version, the repository and tag as qualifiers.
pub fn purl(image: &Image) -> String {
    let repo = image.repository.to_string();
    let name = repo
        .rsplit('/')
        .next()
        .unwrap_or(&repo)
        .to_ascii_lowercase();
    // Qualifier values keep `/` and `:` readable as the purl specification's examples do.
    let repository_url = format!("{}/{}", image.registry, repo)
        .split('/')
        .map(purl_escape)
        .collect::<Vec<_>>()
        .join("/")
        .replace("%3A", ":");
    format!(
        "pkg:oci/{}@{}?repository_url={}&tag={}",
        purl_escape(&name),
        purl_escape(image.digest.as_str()),
        repository_url,
        purl_escape(image.tag.as_str())
    )
}

/// The CDEvent of a Baton event, or `None` when it has no counterpart.
pub fn cdevent(event: &Event) -> Option<Value> {
    let ctx = event.ctx();
    let env = ctx.environment.clone().unwrap_or_default();
    let service = format!("{}/{}", ctx.app, env);
    let (ty, subject_id, content) = match &event.payload {
        Payload::ImageBuilt(_) => {
            let mut content = json!({});
            if let Some(who) = &ctx.pushed_by {
                content["user"] = json!(who);
            }
            ("artifact.published", purl(&ctx.image), content)
        }
        Payload::TestsPassed(r) | Payload::TestsFailed(r) => {
            let passed = matches!(event.payload, Payload::TestsPassed(_));
            let mut content = json!({
                "outcome": if passed { "success" } else { "failure" },
                "environment": {"id": format!("{}-tests", ctx.app)},
                "testSuite": {"id": format!("{}/tests", ctx.app), "name": format!("{} tests ({})", ctx.app, r.runner)},
            });
            if !passed {
                content["reason"] = json!(r.summary);
            }
            (
                "testsuiterun.finished",
                format!("{}/{}/tests", ctx.app, ctx.run),
                content,
            )
        }
        Payload::DeploySucceeded(d) => {
            let ty = if d.rollback {
                "service.rolledback"
            } else if d.previous.is_some() && d.changed {
                "service.upgraded"
            } else {
                "service.deployed"
            };
            (
                ty,
                service,
                json!({"environment": {"id": env}, "artifactId": purl(&ctx.image)}),
            )
        }
        _ => return None,
    };
    let full_type = format!("dev.cdevents.{ty}.0.3.0");
    Some(json!({
        "context": {
            "specversion": SPEC_VERSION,
            "id": event.id,
            "source": event.source,
            "type": full_type,
            "timestamp": event.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "chainId": ctx.run.to_string(),
        },
        "subject": {"id": subject_id, "source": format!("/baton/{}", ctx.app), "content": content},
    }))
}

/// The CloudEvents binary-mode headers of a CDEvent (`ce-specversion`, `ce-id`,
/// `ce-source`, `ce-type`, `ce-subject`, `ce-time`).
pub fn cloudevent_headers(cd: &Value) -> Vec<(&'static str, String)> {
    let c = &cd["context"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    vec![
        ("ce-specversion", "1.0".into()),
        ("ce-id", s(&c["id"])),
        ("ce-source", s(&c["source"])),
        ("ce-type", s(&c["type"])),
        ("ce-subject", s(&cd["subject"]["id"])),
        ("ce-time", s(&c["timestamp"])),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::testing::sample;

    #[test]
    fn images_become_oci_package_urls() {
        let e = sample("image.built", |_| {});
        let p = purl(&e.ctx().image);
        assert!(p.starts_with("pkg:oci/web@sha256%3A"), "{p}");
        assert!(
            p.contains("?repository_url=localhost:5000/demo/web&tag="),
            "{p}"
        );
    }

    #[test]
    fn each_mapped_event_gets_its_type_and_others_none() {
        let ty = |e: &Event| cdevent(e).map(|v| v["context"]["type"].as_str().unwrap().to_string());
        assert_eq!(
            ty(&sample("image.built", |_| {})).unwrap(),
            "dev.cdevents.artifact.published.0.3.0"
        );
        assert_eq!(
            ty(&sample("tests.failed", |_| {})).unwrap(),
            "dev.cdevents.testsuiterun.finished.0.3.0"
        );
        assert_eq!(
            ty(&sample("deploy.succeeded", |v| {
                v["data"]["previous"] = Value::Null;
            }))
            .unwrap(),
            "dev.cdevents.service.deployed.0.3.0"
        );
        assert_eq!(
            ty(&sample("deploy.succeeded", |_| {})).unwrap(),
            "dev.cdevents.service.upgraded.0.3.0"
        );
        assert_eq!(
            ty(&sample("deploy.succeeded", |v| v["data"]["rollback"] = json!(true))).unwrap(),
            "dev.cdevents.service.rolledback.0.3.0"
        );
        assert_eq!(ty(&sample("approval.requested", |_| {})), None);
    }
}
