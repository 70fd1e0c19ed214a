//! Every sample in `events/` is loaded here: the fixtures are the contract.

use std::path::{Path, PathBuf};

use baton::envelopes::{DocumentKind, event_from_sns_notification, events_from_sqs, identify};
use baton::event::{Event, EventType};
use baton::triggers::{Trigger, TriggerKind};
use baton::triggers::{parse_distribution, parse_ecr};
use serde_json::Value;

fn samples() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../events");
    let mut out = vec![];
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                // JSON Schemas: Baton's own, and the copied CDEvents ones.
                if !["schema", "cdevents"].contains(&p.file_name().unwrap().to_str().unwrap()) {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "json") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_sample_parses_as_what_it_is() {
    let files = samples();
    assert!(files.len() >= 16, "samples: {files:?}");
    let mut types_seen = std::collections::BTreeSet::new();
    let mut kinds_seen = std::collections::BTreeSet::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        let kind = identify(&v).unwrap_or_else(|| panic!("{} is of no known shape", f.display()));
        match kind {
            DocumentKind::BatonEvent => {
                let e = Event::from_json(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                types_seen.insert(e.event_type());
                // round trip is lossless
                assert_eq!(Event::from_json(&e.to_json()).unwrap(), e);
                // the event writes itself as the envelope it converts to, and as the
                // sample says (apart from the order of keys)
                let written: Value = serde_json::from_str(&e.to_json()).unwrap();
                assert_eq!(written, serde_json::to_value(e.to_envelope()).unwrap());
                assert_eq!(written, v, "{}", f.display());
            }
            DocumentKind::Trigger(TriggerKind::Ecr) => {
                parse_ecr(&v).unwrap();
            }
            DocumentKind::Trigger(TriggerKind::Distribution) => {
                let p = parse_distribution(&v).unwrap();
                assert_eq!(p.pushes.len(), 1, "one tagged manifest push");
                assert_eq!(p.ignored.len(), 1, "one blob push ignored");
                assert!(p.ignored[0].contains("blob"));
            }
            DocumentKind::Trigger(kind) => {
                let t = Trigger {
                    kind,
                    received_at: chrono::Utc::now(),
                    payload: v.clone(),
                };
                let p = t.parse().unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                assert_eq!(p.pushes.len(), 1, "{}: one push", f.display());
                kinds_seen.insert(kind);
            }
            DocumentKind::Sns => {
                event_from_sns_notification(&text).unwrap();
            }
            DocumentKind::FunctionUrl => {
                let req = baton::envelopes::function_url_request(&v).unwrap();
                let caller = req.request_context.authorizer.and_then(|a| a.iam);
                assert_eq!(
                    caller.and_then(|i| i.user_arn).as_deref(),
                    Some("arn:aws:iam::123456789012:user/alice"),
                    "{}: the approver's IAM identity",
                    f.display()
                );
                // Without the required request context the error names the field.
                let mut broken = v.clone();
                broken["requestContext"]
                    .as_object_mut()
                    .unwrap()
                    .remove("http");
                let e = baton::envelopes::function_url_request(&broken).unwrap_err();
                assert!(e.to_string().contains("requestContext"), "{e}");
            }
            DocumentKind::Sqs => {
                for (_, r) in events_from_sqs(&v).unwrap() {
                    r.unwrap();
                }
            }
        }
    }
    let all: std::collections::BTreeSet<EventType> = EventType::ALL.into_iter().collect();
    assert_eq!(types_seen, all, "a sample of every Baton event type");
    assert_eq!(
        kinds_seen.len(),
        8,
        "samples of Docker Hub, Harbor, GHCR, Quay, CDEvents, Pub/Sub, Event Grid and Alibaba ACR webhooks"
    );
}

fn load(rel: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../events")
        .join(rel);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn ecr_samples_push_and_delete() {
    let push = parse_ecr(&load("triggers/ecr-push.json")).unwrap();
    assert_eq!(push.pushes[0].tag, "1.1.0");
    assert_eq!(
        push.pushes[0].registry,
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
    );
    let del = parse_ecr(&load("triggers/ecr-delete.json")).unwrap();
    assert!(del.pushes.is_empty());
    assert!(del.ignored[0].contains("DELETE"));
}

#[test]
fn ecr_cloudtrail_put_image_names_the_pusher() {
    let p = parse_ecr(&load("triggers/ecr-cloudtrail-putimage.json")).unwrap();
    assert_eq!(p.pushes.len(), 1, "{:?}", p.ignored);
    let push = &p.pushes[0];
    assert_eq!(push.tag, "1.1.0");
    assert_eq!(push.repository, "demo/web");
    assert_eq!(
        push.pushed_by.as_deref(),
        Some("arn:aws:sts::123456789012:assumed-role/ci-pushers/ci-bot")
    );
    assert!(push.digest.is_some());
    // the same push as the image action: one run
    let action = parse_ecr(&load("triggers/ecr-push.json")).unwrap();
    assert_eq!(push.digest, action.pushes[0].digest);
    let mut failed = load("triggers/ecr-cloudtrail-putimage.json");
    failed["detail"]["errorCode"] = Value::from("ImageAlreadyExistsException");
    assert!(parse_ecr(&failed).unwrap().pushes.is_empty());
    let mut other = load("triggers/ecr-cloudtrail-putimage.json");
    other["detail"]["eventName"] = Value::from("BatchDeleteImage");
    assert!(parse_ecr(&other).unwrap().pushes.is_empty());
}

/// Every image reference part of every trigger sample, made hostile, is refused with an
/// error naming the field: nothing unparsed gets past the edge.
#[test]
fn hostile_reference_parts_in_every_trigger_are_refused_naming_the_field() {
    let evil_host = "evil.example\n        securityContext:\n          privileged: true";
    let long_tag = "x".repeat(200_000);
    type Case = (&'static str, &'static [&'static str], &'static str);
    let cases: Vec<(Case, String)> = vec![
        (
            (
                "triggers/ecr-push.json",
                &["detail", "repository-name"],
                "detail.repository-name",
            ),
            "Web/../x".into(),
        ),
        (
            (
                "triggers/ecr-push.json",
                &["detail", "image-tag"],
                "detail.image-tag",
            ),
            long_tag.clone(),
        ),
        (
            ("triggers/ecr-push.json", &["region"], "region"),
            "eu-west-1.evil.com/x".into(),
        ),
        (
            (
                "triggers/ecr-cloudtrail-putimage.json",
                &["detail", "requestParameters", "imageTag"],
                "detail.requestParameters.imageTag",
            ),
            "1.0\nx".into(),
        ),
        (
            (
                "triggers/distribution-push.json",
                &["events", "1", "request", "host"],
                "events[1].request.host",
            ),
            evil_host.into(),
        ),
        (
            (
                "triggers/distribution-push.json",
                &["events", "1", "target", "tag"],
                "events[1].target.tag",
            ),
            long_tag.clone(),
        ),
        (
            (
                "triggers/distribution-push.json",
                &["events", "1", "target", "repository"],
                "events[1].target.repository",
            ),
            "demo/web\"; rm -rf /".into(),
        ),
        (
            (
                "webhooks/dockerhub.json",
                &["push_data", "tag"],
                "push_data.tag",
            ),
            "-rf".into(),
        ),
        (
            (
                "webhooks/harbor.json",
                &["event_data", "resources", "0", "resource_url"],
                "resource_url",
            ),
            format!("{evil_host}/library/x:1"),
        ),
        (
            (
                "webhooks/ghcr.json",
                &[
                    "package",
                    "package_version",
                    "container_metadata",
                    "tag",
                    "name",
                ],
                "tag.name",
            ),
            "a b".into(),
        ),
        (
            ("webhooks/quay.json", &["docker_url"], "docker_url"),
            format!("{evil_host}/ns/repo"),
        ),
    ];
    for ((file, path, field), value) in cases {
        let mut v = load(file);
        let mut at = &mut v;
        for k in path {
            at = match k.parse::<usize>() {
                Ok(i) => &mut at[i],
                Err(_) => &mut at[*k],
            };
        }
        *at = Value::from(value.clone());
        let kind = match identify(&v) {
            Some(DocumentKind::Trigger(k)) => k,
            other => panic!("{file}: {other:?}"),
        };
        let trigger = Trigger {
            kind,
            received_at: chrono::Utc::now(),
            payload: v,
        };
        let e = trigger
            .parse()
            .expect_err(&format!(
                "{file}: {field} = {} was accepted",
                &value[..value.len().min(40)]
            ))
            .to_string();
        assert!(e.contains(field), "{file}: the error names {field}: {e}");
        assert!(
            e.len() < 600,
            "{file}: the error quotes a bounded excerpt: {}",
            e.len()
        );
    }
}

#[test]
fn malformed_variants_of_samples_name_the_field() {
    let mut ecr = load("triggers/ecr-push.json");
    ecr["detail"]["image-digest"] = Value::from(42);
    let e = parse_ecr(&ecr).unwrap_err().to_string();
    assert!(e.contains("detail.image-digest"), "{e}");

    let mut dist = load("triggers/distribution-push.json");
    dist["events"][1]["target"]["digest"] = Value::from("md5:abc");
    let e = parse_distribution(&dist).unwrap_err().to_string();
    assert!(e.contains("events[1].target.digest"), "{e}");

    let mut dist = load("triggers/distribution-push.json");
    dist["events"][1]["timestamp"] = Value::from("yesterday");
    let e = parse_distribution(&dist).unwrap_err().to_string();
    assert!(e.contains("events[1].timestamp"), "{e}");

    let mut sqs = load("aws/sqs-event.json");
    let body: Value = serde_json::from_str(sqs["Records"][0]["body"].as_str().unwrap()).unwrap();
    let mut inner: Value = serde_json::from_str(body["Message"].as_str().unwrap()).unwrap();
    inner["data"]["image"]
        .as_object_mut()
        .unwrap()
        .remove("digest");
    let mut body2 = body.clone();
    body2["Message"] = Value::from(inner.to_string());
    sqs["Records"][0]["body"] = Value::from(body2.to_string());
    let results = events_from_sqs(&sqs).unwrap();
    let e = results[0].1.as_ref().unwrap_err().to_string();
    assert!(e.contains("Records[0].body") && e.contains("digest"), "{e}");

    let mut ev = load("baton/approval.requested.json");
    ev["data"]["expires_at"] = Value::from("soon");
    let e = Event::from_value(ev).unwrap_err().to_string();
    assert!(e.contains("data.expires_at"), "{e}");
}
