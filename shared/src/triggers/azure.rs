//! Azure Container Registry through Event Grid (the Event Grid schema: an array of
//! events): `Microsoft.ContainerRegistry.ImagePushed` events start runs; the
//! subscription validation handshake (`Microsoft.EventGrid.SubscriptionValidationEvent`)
//! is answered with its `validationCode`, after the request was authenticated; every
//! other event type is ignored, saying why.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::ids::is_label;
use crate::reference::{Digest, RegistryHost, Repository, Tag, excerpt};
use crate::triggers::{Parsed, Push, TriggerKind, notification_id, part, pusher};

const WHAT: &str = "Event Grid delivery";

#[derive(Debug, Deserialize)]
struct GridEvent {
    id: String,
    #[serde(rename = "eventType")]
    event_type: String,
    #[serde(rename = "eventTime")]
    event_time: DateTime<Utc>,
    #[serde(default)]
    data: Value,
}

#[derive(Debug, Deserialize)]
struct Pushed {
    target: Target,
    request: Request,
    #[serde(default)]
    actor: Option<Actor>,
}
#[derive(Debug, Deserialize)]
struct Target {
    digest: String,
    repository: String,
    #[serde(default)]
    tag: Option<String>,
}
#[derive(Debug, Deserialize)]
struct Request {
    host: String,
}
#[derive(Debug, Deserialize)]
struct Actor {
    #[serde(default)]
    name: Option<String>,
}

/// Parses an Event Grid delivery (one event or an array of them).
pub fn parse_event_grid(payload: &Value) -> Result<Parsed> {
    let events: Vec<Value> = match payload {
        Value::Array(a) => a.clone(),
        Value::Object(_) => vec![payload.clone()],
        _ => return Err(Error::invalid(WHAT, "not an array of events")),
    };
    let mut out = Parsed::default();
    for (i, raw) in events.into_iter().enumerate() {
        let at = format!("[{i}]");
        let e: GridEvent = serde_path_to_error::deserialize(&raw)
            .map_err(|err| Error::invalid(WHAT, format!("{at}.{}: {}", err.path(), err.inner())))?;
        match e.event_type.as_str() {
            "Microsoft.EventGrid.SubscriptionValidationEvent" => {
                let code = e.data["validationCode"].as_str().unwrap_or_default();
                if !is_label(code, 256) {
                    return Err(Error::invalid(
                        WHAT,
                        format!("{at}.data.validationCode: {} is not a code", excerpt(code)),
                    ));
                }
                out.respond = Some(json!({ "validationResponse": code }));
            }
            "Microsoft.ContainerRegistry.ImagePushed" => {
                let d: Pushed = serde_path_to_error::deserialize(&e.data).map_err(|err| {
                    Error::invalid(WHAT, format!("{at}.data.{}: {}", err.path(), err.inner()))
                })?;
                let Some(tag) = d.target.tag.filter(|t| !t.is_empty()) else {
                    out.ignored.push(format!(
                        "an untagged push to {} ignored",
                        excerpt(&d.target.repository)
                    ));
                    continue;
                };
                let registry: RegistryHost =
                    part(WHAT, &format!("{at}.data.request.host"), &d.request.host)?;
                let repository: Repository = part(
                    WHAT,
                    &format!("{at}.data.target.repository"),
                    &d.target.repository,
                )?;
                let tag: Tag = part(WHAT, &format!("{at}.data.target.tag"), &tag)?;
                let digest: Digest =
                    part(WHAT, &format!("{at}.data.target.digest"), &d.target.digest)?;
                out.pushes.push(Push {
                    trigger: TriggerKind::Eventgrid,
                    notification_id: notification_id(WHAT, &format!("{at}.id"), e.id)?,
                    registry,
                    repository,
                    tag,
                    digest: Some(digest),
                    pushed_at: e.event_time,
                    pushed_by: pusher(
                        WHAT,
                        &format!("{at}.data.actor.name"),
                        d.actor.and_then(|a| a.name),
                    )?,
                });
            }
            other => out.ignored.push(format!(
                "Event Grid event {} is not an image push",
                excerpt(other)
            )),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pushed(tag: &str) -> Value {
        json!([{"id": "831e1650-001e-001b-66ab-eeb76e069631",
            "topic": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerRegistry/registries/demo",
            "subject": "web:1.2.0", "eventType": "Microsoft.ContainerRegistry.ImagePushed",
            "eventTime": "2026-11-29T10:00:00.6549614Z",
            "data": {"id": "31c51664", "timestamp": "2026-11-29T10:00:00Z", "action": "push",
                "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 3023,
                    "digest": "sha256:213bbc182920ab41e18edc2001e06abcca6735d87782d9cef68abd83941cf0e5",
                    "length": 3023, "repository": "team/web", "tag": tag},
                "request": {"id": "7c66f28b", "host": "demo.azurecr.io", "method": "PUT", "useragent": "docker"}},
            "dataVersion": "1.0", "metadataVersion": "1"}])
    }

    #[test]
    fn an_image_push_is_a_push_and_the_handshake_is_answered() {
        let p = parse_event_grid(&pushed("1.2.0")).unwrap();
        assert_eq!(p.pushes[0].registry, "demo.azurecr.io");
        assert_eq!(p.pushes[0].repository, "team/web");
        assert_eq!(p.pushes[0].tag, "1.2.0");
        assert!(p.respond.is_none());
        let v = parse_event_grid(&json!([{"id": "2d1781af", "topic": "/subscriptions/s", "subject": "",
            "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6", "validationUrl": "https://x"},
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "eventTime": "2026-11-29T10:00:00Z", "metadataVersion": "1", "dataVersion": "1"}]))
        .unwrap();
        assert_eq!(
            v.respond,
            Some(json!({"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}))
        );
        assert!(v.pushes.is_empty());
    }

    #[test]
    fn other_events_are_ignored_and_hostile_parts_refused_naming_the_field() {
        let mut del = pushed("1.0.0");
        del[0]["eventType"] = json!("Microsoft.ContainerRegistry.ImageDeleted");
        assert!(parse_event_grid(&del).unwrap().ignored[0].contains("not an image push"));
        assert!(parse_event_grid(&pushed("")).unwrap().ignored[0].contains("untagged"));
        let mut evil = pushed("1.0.0");
        evil[0]["data"]["request"]["host"] = json!("evil.example/x\n  privileged: true");
        let e = parse_event_grid(&evil).unwrap_err().to_string();
        assert!(e.contains("[0].data.request.host"), "{e}");
        let mut bad = pushed("1.0.0");
        bad[0]["data"]["target"]["digest"] = json!("sha256:nope");
        assert!(
            parse_event_grid(&bad)
                .unwrap_err()
                .to_string()
                .contains("[0].data.target.digest")
        );
        let e = parse_event_grid(&json!(42)).unwrap_err().to_string();
        assert!(e.contains("not an array"), "{e}");
    }
}
