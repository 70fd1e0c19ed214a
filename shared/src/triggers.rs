//! Parsers for what arrives from outside: registry push notifications (ECR "ECR Image
//! Action" via EventBridge, CNCF distribution notification envelopes) and the AWS
//! envelopes Baton events travel in (SNS notification inside an SQS message). Each
//! parser turns input into [`Push`]es or [`Event`]s, says why it ignored the rest, and
//! rejects malformed input with an error naming the field. No I/O.

use aws_lambda_events::eventbridge::EventBridgeEvent;
use aws_lambda_events::sns::SnsMessage;
use aws_lambda_events::sqs::SqsEvent;
use chrono::{DateTime, FixedOffset, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::event::{Event, validate_digest};

/// Where a push notification came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TriggerKind {
    /// ECR "ECR Image Action" delivered by EventBridge.
    Ecr,
    /// CNCF distribution (`docker-registry`) notification envelope.
    Distribution,
}

impl TriggerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Ecr => "ecr",
            TriggerKind::Distribution => "distribution",
        }
    }
}

/// A raw registry notification as the embedded bus carries it to ingest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    pub kind: TriggerKind,
    pub received_at: DateTime<Utc>,
    pub payload: Value,
}

/// One image pushed under a tag: what ingest turns into a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Push {
    pub trigger: TriggerKind,
    /// The registry's id of the notification (dedup across registry retries).
    pub notification_id: String,
    pub registry: String,
    pub repository: String,
    pub tag: String,
    pub digest: String,
    pub pushed_at: DateTime<Utc>,
    #[serde(default)]
    pub pushed_by: Option<String>,
}

/// Pushes found in a notification, and why the rest of it was ignored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    pub pushes: Vec<Push>,
    pub ignored: Vec<String>,
}

fn path_error(what: &str, e: serde_path_to_error::Error<serde_json::Error>) -> Error {
    let path = e.path().to_string();
    if path == "." {
        Error::invalid(what, e.inner().to_string())
    } else {
        Error::invalid(what, format!("{path}: {}", e.inner()))
    }
}

/// The `detail` of an "ECR Image Action" event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EcrImageAction {
    pub result: String,
    pub repository_name: String,
    #[serde(default)]
    pub image_digest: Option<String>,
    pub action_type: String,
    #[serde(default)]
    pub image_tag: Option<String>,
}

/// Parses an EventBridge "ECR Image Action" event.
pub fn parse_ecr(payload: &Value) -> Result<Parsed> {
    let ev: EventBridgeEvent<EcrImageAction> = serde_path_to_error::deserialize(payload.clone())
        .map_err(|e| path_error("ECR event", e))?;
    if ev.source != "aws.ecr" || ev.detail_type != "ECR Image Action" {
        return Err(Error::invalid(
            "ECR event",
            format!(
                "source/detail-type: {:?}/{:?} is not aws.ecr/\"ECR Image Action\"",
                ev.source, ev.detail_type
            ),
        ));
    }
    let d = &ev.detail;
    let mut out = Parsed::default();
    if d.action_type != "PUSH" || d.result != "SUCCESS" {
        out.ignored.push(format!(
            "{} {} of {} is not a successful push",
            d.action_type, d.result, d.repository_name
        ));
        return Ok(out);
    }
    let Some(tag) = d.image_tag.as_deref().filter(|t| !t.is_empty()) else {
        out.ignored
            .push(format!("untagged push to {}", d.repository_name));
        return Ok(out);
    };
    let digest = d
        .image_digest
        .clone()
        .ok_or_else(|| Error::invalid("ECR event", "detail.image-digest: missing on a push"))?;
    validate_digest(&digest)
        .map_err(|e| Error::invalid("ECR event", format!("detail.image-digest: {e}")))?;
    let account = ev.account.clone().unwrap_or_default();
    let region = ev.region.clone().unwrap_or_default();
    if account.is_empty() || region.is_empty() {
        return Err(Error::invalid(
            "ECR event",
            "account/region: both are needed to name the registry",
        ));
    }
    out.pushes.push(Push {
        trigger: TriggerKind::Ecr,
        notification_id: ev.id.clone().unwrap_or_else(|| digest.clone()),
        registry: format!("{account}.dkr.ecr.{region}.amazonaws.com"),
        repository: d.repository_name.clone(),
        tag: tag.to_string(),
        digest,
        pushed_at: ev.time.unwrap_or_else(Utc::now),
        pushed_by: None,
    });
    Ok(out)
}

#[derive(Debug, Deserialize)]
struct DistEnvelope {
    events: Vec<DistEvent>,
}

#[derive(Debug, Deserialize)]
struct DistEvent {
    id: String,
    timestamp: DateTime<FixedOffset>,
    action: String,
    target: DistTarget,
    #[serde(default)]
    request: Option<DistRequest>,
    #[serde(default)]
    actor: Option<DistActor>,
}

#[derive(Debug, Deserialize)]
struct DistTarget {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    repository: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    tag: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DistRequest {
    #[serde(default)]
    host: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DistActor {
    #[serde(default)]
    name: Option<String>,
}

/// Media types of manifests (as opposed to blobs).
pub fn is_manifest_media_type(mt: &str) -> bool {
    mt.contains("manifest") || mt.contains("image.index")
}

/// Parses a CNCF distribution notification envelope
/// (`application/vnd.docker.distribution.events.v1+json`).
pub fn parse_distribution(payload: &Value) -> Result<Parsed> {
    let env: DistEnvelope = serde_path_to_error::deserialize(payload.clone())
        .map_err(|e| path_error("registry notification", e))?;
    let mut out = Parsed::default();
    for (i, ev) in env.events.into_iter().enumerate() {
        let what = format!("event {} ({})", i, ev.id);
        if ev.action != "push" {
            out.ignored
                .push(format!("{what}: action {} is not a push", ev.action));
            continue;
        }
        let t = &ev.target;
        let is_manifest = is_manifest_media_type(&t.media_type)
            || t.url.as_deref().is_some_and(|u| u.contains("/manifests/"));
        if !is_manifest {
            out.ignored
                .push(format!("{what}: blob push to {} ignored", t.repository));
            continue;
        }
        let Some(tag) = t.tag.clone().filter(|t| !t.is_empty()) else {
            out.ignored.push(format!(
                "{what}: manifest push to {} without a tag ignored",
                t.repository
            ));
            continue;
        };
        validate_digest(&t.digest).map_err(|e| {
            Error::invalid(
                "registry notification",
                format!("events[{i}].target.digest: {e}"),
            )
        })?;
        let registry = ev
            .request
            .as_ref()
            .and_then(|r| r.host.clone())
            .or_else(|| t.url.as_deref().and_then(host_of_url))
            .unwrap_or_default();
        out.pushes.push(Push {
            trigger: TriggerKind::Distribution,
            notification_id: ev.id.clone(),
            registry,
            repository: t.repository.clone(),
            tag,
            digest: t.digest.clone(),
            pushed_at: ev.timestamp.with_timezone(&Utc),
            pushed_by: ev.actor.and_then(|a| a.name).filter(|n| !n.is_empty()),
        });
    }
    Ok(out)
}

fn host_of_url(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    Some(rest.split('/').next()?.to_string())
}

impl Trigger {
    pub fn parse(&self) -> Result<Parsed> {
        match self.kind {
            TriggerKind::Ecr => parse_ecr(&self.payload),
            TriggerKind::Distribution => parse_distribution(&self.payload),
        }
    }
}

/// Unwraps the Baton event inside an SNS notification (the body of an SQS message
/// subscribed to the topic without raw delivery).
pub fn event_from_sns_notification(body: &str) -> Result<Event> {
    let mut de = serde_json::Deserializer::from_str(body);
    let msg: SnsMessage = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        Error::invalid("SNS notification", format!("{path}: {}", e.inner()))
    })?;
    Event::from_json(&msg.message).map_err(|e| match e {
        Error::Invalid { reason, .. } => {
            Error::invalid("SNS notification", format!("Message: {reason}"))
        }
        other => other,
    })
}

/// Unwraps every record of an SQS event: `(messageId, event or why not)`.
pub fn events_from_sqs(payload: &Value) -> Result<Vec<(String, Result<Event>)>> {
    let ev: SqsEvent = serde_path_to_error::deserialize(payload.clone())
        .map_err(|e| path_error("SQS event", e))?;
    Ok(ev
        .records
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let id = r
                .message_id
                .clone()
                .unwrap_or_else(|| format!("record {i}"));
            let parsed = match r.body.as_deref() {
                None => Err(Error::invalid(
                    "SQS event",
                    format!("Records[{i}].body: missing"),
                )),
                Some(b) => event_from_sns_notification(b).map_err(|e| match e {
                    Error::Invalid { what, reason } => {
                        Error::invalid("SQS event", format!("Records[{i}].body ({what}): {reason}"))
                    }
                    other => other,
                }),
            };
            (id, parsed)
        })
        .collect())
}

/// What a JSON document is, judged by its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentKind {
    BatonEvent,
    Ecr,
    Distribution,
    Sqs,
    Sns,
}

impl DocumentKind {
    pub fn describe(self) -> &'static str {
        match self {
            DocumentKind::BatonEvent => "Baton event (CloudEvents 1.0)",
            DocumentKind::Ecr => "ECR Image Action (EventBridge)",
            DocumentKind::Distribution => "CNCF distribution notification envelope",
            DocumentKind::Sqs => "SQS event (Lambda event source mapping)",
            DocumentKind::Sns => "SNS notification",
        }
    }
}

/// Identifies a document; `None` when it is none of the known shapes.
pub fn identify(v: &Value) -> Option<DocumentKind> {
    let o = v.as_object()?;
    if o.contains_key("specversion") {
        Some(DocumentKind::BatonEvent)
    } else if o.contains_key("detail-type") {
        Some(DocumentKind::Ecr)
    } else if o.contains_key("events") {
        Some(DocumentKind::Distribution)
    } else if o.contains_key("Records") {
        Some(DocumentKind::Sqs)
    } else if o.get("Type").and_then(Value::as_str) == Some("Notification") {
        Some(DocumentKind::Sns)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ecr(action: &str, result: &str) -> Value {
        json!({
            "version": "0", "id": "13cde686-328b-6117-af20-0e5566167482",
            "detail-type": "ECR Image Action", "source": "aws.ecr",
            "account": "123456789012", "time": "2026-11-20T10:00:00Z", "region": "eu-west-1",
            "resources": [],
            "detail": {
                "result": result, "repository-name": "team/web",
                "image-digest": format!("sha256:{}", "b".repeat(64)),
                "action-type": action, "image-tag": "1.4.0"
            }
        })
    }

    #[test]
    fn ecr_push_success_is_a_push() {
        let p = parse_ecr(&ecr("PUSH", "SUCCESS")).unwrap();
        assert_eq!(p.pushes.len(), 1);
        let push = &p.pushes[0];
        assert_eq!(
            push.registry,
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
        );
        assert_eq!(push.repository, "team/web");
        assert_eq!(push.tag, "1.4.0");
        assert_eq!(push.notification_id, "13cde686-328b-6117-af20-0e5566167482");
    }

    #[test]
    fn ecr_delete_and_failure_are_ignored() {
        assert!(
            parse_ecr(&ecr("DELETE", "SUCCESS"))
                .unwrap()
                .pushes
                .is_empty()
        );
        assert!(
            parse_ecr(&ecr("PUSH", "FAILURE"))
                .unwrap()
                .pushes
                .is_empty()
        );
    }

    #[test]
    fn ecr_malformed_names_field() {
        let mut v = ecr("PUSH", "SUCCESS");
        v["detail"]
            .as_object_mut()
            .unwrap()
            .remove("repository-name");
        let e = parse_ecr(&v).unwrap_err().to_string();
        assert!(e.contains("repository-name"), "{e}");
        let mut v = ecr("PUSH", "SUCCESS");
        v["detail"]["image-digest"] = "sha256:nope".into();
        let e = parse_ecr(&v).unwrap_err().to_string();
        assert!(e.contains("detail.image-digest"), "{e}");
        let mut v = ecr("PUSH", "SUCCESS");
        v["source"] = "aws.s3".into();
        assert!(parse_ecr(&v).is_err());
    }

    #[test]
    fn distribution_blob_is_ignored_and_malformed_named() {
        let v = json!({"events": [{
            "id": "x", "timestamp": "2026-11-20T10:00:00.123456789-08:00", "action": "push",
            "target": {"mediaType": "application/octet-stream", "digest": format!("sha256:{}", "c".repeat(64)),
                       "repository": "team/web", "url": "http://localhost:5000/v2/team/web/blobs/sha256:cc"}
        }]});
        let p = parse_distribution(&v).unwrap();
        assert!(p.pushes.is_empty());
        assert!(p.ignored[0].contains("blob"));
        let bad = json!({"events": [{"id": "x", "action": "push", "target": {}}]});
        let e = parse_distribution(&bad).unwrap_err().to_string();
        assert!(e.contains("events[0]"), "{e}");
    }
}
