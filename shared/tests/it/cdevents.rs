//! CDEvents out: a sink started here receives what a `cdevents` reaction sends, as
//! CloudEvents in HTTP binary mode, and every body is validated against the CDEvents
//! v0.5.1 JSON Schemas copied in `events/cdevents/` by Python's `jsonschema` (draft
//! 2020-12, formats checked).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use baton::adapters::embedded::WebhookNotifier;
use baton::adapters::http::Http;
use baton::event::Event;
use baton::ports::Notifier;
use serde_json::{Value, json};

fn sample(name: &str, edit: impl FnOnce(&mut Value)) -> Event {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../events/baton/{name}.json"));
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    edit(&mut v);
    Event::from_json(&v.to_string()).unwrap()
}

const VALIDATE: &str = r#"
import json, pathlib, sys
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
d = pathlib.Path(sys.argv[1])
reg = Registry()
for p in d.rglob("*.json"):
    s = json.loads(p.read_text())
    reg = reg.with_resource(s["$id"], Resource.from_contents(s))
schema = json.loads((d / sys.argv[2]).read_text())
v = Draft202012Validator(schema, registry=reg, format_checker=FormatChecker())
errs = [f"{list(e.absolute_path)}: {e.message}" for e in v.iter_errors(json.load(sys.stdin))]
print("\n".join(errs))
sys.exit(1 if errs else 0)
"#;

/// Validates `doc` against the CDEvents schema file `file`; the errors, if any.
fn validate(file: &str, doc: &Value) -> Result<(), String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../events/cdevents/schemas");
    let mut child = Command::new(baton_testkit::venv_program("python"))
        .args(["-c", VALIDATE])
        .arg(&dir)
        .arg(file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python with jsonschema (.ci/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(doc.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[tokio::test]
async fn each_mapped_event_is_a_valid_cdevent_in_a_binary_mode_cloudevent() {
    let sink = baton_testkit::receiver::start(|_| (202, Value::Null)).await;
    let n = WebhookNotifier::cdevents(Http::new(), sink.url("/events"), Duration::from_secs(5));
    let events = [
        (sample("image.built", |_| {}), "artifactpublished.json"),
        (sample("tests.passed", |_| {}), "testsuiterunfinished.json"),
        (sample("tests.failed", |_| {}), "testsuiterunfinished.json"),
        (
            sample("deploy.succeeded", |v| {
                v["data"].as_object_mut().unwrap().remove("previous");
            }),
            "servicedeployed.json",
        ),
        (sample("deploy.succeeded", |_| {}), "serviceupgraded.json"),
        (
            sample("deploy.succeeded", |v| v["data"]["rollback"] = json!(true)),
            "servicerolledback.json",
        ),
    ];
    for (e, _) in &events {
        n.notify("cd", e).await.unwrap();
    }
    // No counterpart: nothing sent, and no error.
    n.notify("cd", &sample("approval.requested", |_| {}))
        .await
        .unwrap();
    let seen: Vec<(baton_testkit::receiver::Received, Value)> = sink
        .seen()
        .into_iter()
        .map(|r| {
            let b = r.body.clone();
            (r, b)
        })
        .collect();
    assert_eq!(seen.len(), events.len(), "one CloudEvent per mapped event");
    for ((received, body), (e, schema)) in seen.iter().zip(&events) {
        validate(schema, body).unwrap_or_else(|errs| panic!("{schema}: {errs}\n{body:#}"));
        let h = |k: &str| received.header(k);
        assert_eq!(h("ce-specversion"), "1.0");
        assert_eq!(h("ce-type"), body["context"]["type"]);
        assert_eq!(h("ce-id"), e.id);
        assert_eq!(h("ce-source"), body["context"]["source"]);
        assert_eq!(h("ce-subject"), body["subject"]["id"]);
        assert_eq!(h("ce-time"), body["context"]["timestamp"]);
        assert!(h("content-type").starts_with("application/json"));
    }
    let artifact = seen[0].1["subject"]["id"].as_str().unwrap();
    assert!(
        artifact.starts_with("pkg:oci/web@sha256%3A89c8ddc0"),
        "{artifact}"
    );
    assert_eq!(seen[2].1["subject"]["content"]["outcome"], "failure");
    assert_eq!(
        seen[5].1["context"]["type"],
        "dev.cdevents.service.rolledback.0.3.0"
    );
    // The validator does refuse: a CDEvent without its artifact is invalid.
    let mut broken = seen[4].1.clone();
    broken["subject"]["content"]
        .as_object_mut()
        .unwrap()
        .remove("artifactId");
    assert!(validate("serviceupgraded.json", &broken).is_err());
}
