//! JSON Schemas of Baton's events, generated from the Rust types with schemars. The
//! checked-in copies under `events/schema/` are compared with these by a test;
//! `baton events schema --out events/schema` rewrites them.

use schemars::{JsonSchema, schema_for};
use serde_json::Value;

use crate::event::{
    ApprovalGranted, ApprovalRejected, ApprovalRequested, DeployFailed, DeploySucceeded, Envelope,
    EventType, ImageBuilt, ImagePromoted, StageFailed, TestReport, VerificationReport,
};

fn envelope_schema<T: JsonSchema>(ty: EventType) -> Value {
    let mut v = schema_for!(Envelope<T>).to_value();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("$id".into(), Value::String(ty.schema_uri()));
        obj.insert(
            "title".into(),
            Value::String(format!("Baton event {}", ty.as_str())),
        );
        if let Some(props) = obj.get_mut("properties").and_then(Value::as_object_mut) {
            props.insert("type".into(), serde_json::json!({ "const": ty.as_str() }));
            props.insert("specversion".into(), serde_json::json!({ "const": "1.0" }));
            props.insert(
                "datacontenttype".into(),
                serde_json::json!({ "const": "application/json" }),
            );
            props.insert(
                "dataschema".into(),
                serde_json::json!({ "const": ty.schema_uri() }),
            );
        }
    }
    v
}

/// `(file name, schema)` for every event type.
pub fn event_schemas() -> Vec<(String, Value)> {
    EventType::ALL
        .into_iter()
        .map(|ty| {
            let schema = match ty {
                EventType::ImageBuilt => envelope_schema::<ImageBuilt>(ty),
                EventType::TestsPassed | EventType::TestsFailed => {
                    envelope_schema::<TestReport>(ty)
                }
                EventType::ApprovalRequested => envelope_schema::<ApprovalRequested>(ty),
                EventType::ApprovalGranted => envelope_schema::<ApprovalGranted>(ty),
                EventType::ApprovalRejected => envelope_schema::<ApprovalRejected>(ty),
                EventType::DeploySucceeded => envelope_schema::<DeploySucceeded>(ty),
                EventType::DeployFailed => envelope_schema::<DeployFailed>(ty),
                EventType::DeployWaiting => envelope_schema::<crate::event::DeployWaiting>(ty),
                EventType::VerificationPassed | EventType::VerificationFailed => {
                    envelope_schema::<VerificationReport>(ty)
                }
                EventType::ImagePromoted => envelope_schema::<ImagePromoted>(ty),
                EventType::StageFailed => envelope_schema::<StageFailed>(ty),
            };
            (format!("{}.json", ty.as_str()), schema)
        })
        .collect()
}

/// The text written for a schema (stable formatting, trailing newline).
pub fn render(schema: &Value) -> String {
    let mut s = serde_json::to_string_pretty(schema).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_schemas_are_current() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../events/schema");
        let mut stale = vec![];
        for (name, schema) in event_schemas() {
            let on_disk = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
            if on_disk != render(&schema) {
                stale.push(name);
            }
        }
        assert!(
            stale.is_empty(),
            "events/schema is stale for {stale:?}; run `cargo run -p baton-cli -- events schema --out events/schema`"
        );
    }
}
