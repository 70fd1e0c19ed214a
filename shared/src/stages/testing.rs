//! What the stages' own tests share: a pipeline on the in-memory ports with a
//! two-environment app (staging auto, production approved by alice), and the event
//! samples of `events/baton/` as inputs.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::adapters::memory::MemPorts;
use crate::config::Config;
use crate::event::Event;
use crate::pipeline::{Pipeline, Settings};

pub(crate) const CONFIG: &str = r#"
apps:
  - name: web
    registry: localhost:5000
    repository: demo/web
    tags: { semver: ">=1.0.0" }
    test: { command: { run: ["true"] } }
    environments:
      - name: staging
        approval: auto
        deploy: { manifest: { dir: m, workloads: [{ name: web, container: app }] } }
      - name: production
        approval: { approvers: [alice, bob], required: 1, expires_after: 2h }
        deploy: { manifest: { dir: m, workloads: [{ name: web, container: app }] } }
"#;

/// The time the tests' clock starts at.
pub(crate) fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-22T00:20:00Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

/// A pipeline of [`CONFIG`] on empty in-memory ports whose clock reads [`t0`].
pub(crate) fn pipeline() -> Pipeline<MemPorts> {
    let config = Config::from_yaml(CONFIG, Path::new("."), "test configuration").unwrap();
    Pipeline::new(MemPorts::at(t0()), Arc::new(config), Settings::default())
}

/// The sample event `events/baton/<name>.json`, edited by `edit` (its JSON).
pub(crate) fn sample(name: &str, edit: impl FnOnce(&mut Value)) -> Event {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../events/baton/{name}.json"));
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    Event::from_json(&v.to_string()).unwrap()
}

/// The types of the events published so far.
pub(crate) fn published(p: &Pipeline<MemPorts>) -> Vec<String> {
    p.ports
        .bus
        .events()
        .iter()
        .map(|e| e.event_type().to_string())
        .collect()
}
