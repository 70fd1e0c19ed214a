//! Registry push notifications, one file per source: ECR (image action and CloudTrail),
//! CNCF distribution, Docker Hub, Harbor, GHCR, Quay, and CDEvents `artifact.published`. Each parser turns a notification
//! into [`Push`]es whose every part is parsed, says why it ignored the rest, and rejects
//! malformed input with an error naming the field. No I/O. (The AWS envelopes Baton's
//! own events travel in are `crate::envelopes`.)

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::ids::is_label;
use crate::reference::{Digest, ParseError, RegistryHost, Repository, Tag, excerpt};

pub mod alibaba;
pub mod azure;
pub mod cdevents;
pub mod distribution;
pub mod dockerhub;
pub mod ecr;
pub mod ghcr;
pub mod harbor;
pub mod pubsub;
pub mod quay;

pub use alibaba::parse_acr;
pub use azure::parse_event_grid;
pub use cdevents::parse_cdevents;
pub use distribution::{is_manifest_media_type, parse_distribution};
pub use dockerhub::parse_dockerhub;
pub use ecr::{CLOUDTRAIL_API_CALL, ECR_IMAGE_ACTION, EcrImageAction, parse_ecr};
pub use ghcr::parse_ghcr;
pub use harbor::parse_harbor;
pub use pubsub::parse_pubsub;
pub use quay::parse_quay;

/// Where a push notification came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TriggerKind {
    /// ECR "ECR Image Action" delivered by EventBridge.
    Ecr,
    /// CNCF distribution (`docker-registry`) notification envelope.
    Distribution,
    /// Docker Hub repository webhook (no digest: resolved through the registry).
    Dockerhub,
    /// Harbor `PUSH_ARTIFACT` webhook.
    Harbor,
    /// GitHub Packages `package` event for a container (GHCR).
    Ghcr,
    /// Quay repository push notification (no digest: resolved through the registry).
    Quay,
    /// A CDEvents `artifact.published` (any CDEvents producer).
    Cdevents,
    /// A Google Cloud Pub/Sub push: Artifact Registry / Container Registry (`gcr`
    /// topic) or Cloud Build (`cloud-builds` topic) notifications.
    Pubsub,
    /// Azure Event Grid: ACR `ImagePushed` events (and the validation handshake).
    Eventgrid,
    /// Alibaba Cloud Container Registry webhook.
    Acr,
}

impl TriggerKind {
    pub const ALL: [TriggerKind; 10] = [
        TriggerKind::Ecr,
        TriggerKind::Distribution,
        TriggerKind::Dockerhub,
        TriggerKind::Harbor,
        TriggerKind::Ghcr,
        TriggerKind::Quay,
        TriggerKind::Cdevents,
        TriggerKind::Pubsub,
        TriggerKind::Eventgrid,
        TriggerKind::Acr,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Ecr => "ecr",
            TriggerKind::Distribution => "distribution",
            TriggerKind::Dockerhub => "dockerhub",
            TriggerKind::Harbor => "harbor",
            TriggerKind::Ghcr => "ghcr",
            TriggerKind::Quay => "quay",
            TriggerKind::Cdevents => "cdevents",
            TriggerKind::Pubsub => "pubsub",
            TriggerKind::Eventgrid => "eventgrid",
            TriggerKind::Acr => "acr",
        }
    }
}

/// A raw registry notification, before [`Trigger::parse`]: what a webhook body or an
/// EventBridge event is read into at the edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    pub kind: TriggerKind,
    pub received_at: DateTime<Utc>,
    pub payload: Value,
}

/// One image pushed under a tag: what ingest turns into a run. Every part is parsed
/// (image parts to the distribution grammar, ids and names to bounded printable labels)
/// before a `Push` exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Push {
    pub trigger: TriggerKind,
    /// The registry's id of the notification (dedup across registry retries).
    #[serde(deserialize_with = "de_notification_id")]
    pub notification_id: String,
    pub registry: RegistryHost,
    pub repository: Repository,
    pub tag: Tag,
    /// Absent when the notification does not carry it; ingest then resolves the tag.
    #[serde(default)]
    pub digest: Option<Digest>,
    pub pushed_at: DateTime<Utc>,
    /// Who pushed, as the source says (a registry user, an IAM principal ARN).
    #[serde(default, deserialize_with = "de_pusher")]
    pub pushed_by: Option<String>,
}

// A `Push` read back from the ingest queue is checked as the parser checked it: the
// queue is a trust boundary like the bus.
fn de_notification_id<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<String, D::Error> {
    notification_id("push", "notification_id", String::deserialize(d)?)
        .map_err(serde::de::Error::custom)
}

fn de_pusher<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    pusher("push", "pushed_by", Option::<String>::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// A reference part of a notification, parsed; the error names the field.
pub(crate) fn part<T: std::str::FromStr<Err = ParseError>>(
    what: &str,
    field: &str,
    v: &str,
) -> Result<T> {
    v.parse()
        .map_err(|e: ParseError| Error::invalid(what, format!("{field}: {e}")))
}

/// A notification id: a bounded printable label.
pub(crate) fn notification_id(what: &str, field: &str, v: String) -> Result<String> {
    if is_label(&v, 512) {
        Ok(v)
    } else {
        Err(Error::invalid(
            what,
            format!(
                "{field}: {} is not an id (1 to 512 printable characters)",
                excerpt(&v)
            ),
        ))
    }
}

/// Who pushed: a bounded printable label, or nothing.
pub(crate) fn pusher(what: &str, field: &str, v: Option<String>) -> Result<Option<String>> {
    match v.filter(|x| !x.is_empty()) {
        None => Ok(None),
        Some(x) if is_label(&x, 256) => Ok(Some(x)),
        Some(x) => Err(Error::invalid(
            what,
            format!(
                "{field}: {} is not a user name (at most 256 printable characters)",
                excerpt(&x)
            ),
        )),
    }
}

/// Pushes found in a notification, and why the rest of it was ignored: what an accepted
/// webhook becomes, and what the ingest queue holds (every part already parsed, so what
/// is acknowledged is what is processed).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parsed {
    pub pushes: Vec<Push>,
    #[serde(default)]
    pub ignored: Vec<String>,
    /// What the endpoint answers instead of queueing (Event Grid's validation
    /// handshake), once the request is authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respond: Option<Value>,
}

pub(crate) fn path_error(what: &str, e: serde_path_to_error::Error<serde_json::Error>) -> Error {
    let path = e.path().to_string();
    if path == "." {
        Error::invalid(what, e.inner().to_string())
    } else {
        Error::invalid(what, format!("{path}: {}", e.inner()))
    }
}

impl Trigger {
    pub fn parse(&self) -> Result<Parsed> {
        match self.kind {
            TriggerKind::Ecr => parse_ecr(&self.payload),
            TriggerKind::Distribution => parse_distribution(&self.payload),
            TriggerKind::Dockerhub => parse_dockerhub(&self.payload),
            TriggerKind::Harbor => parse_harbor(&self.payload),
            TriggerKind::Ghcr => parse_ghcr(&self.payload),
            TriggerKind::Quay => parse_quay(&self.payload, self.received_at),
            TriggerKind::Cdevents => parse_cdevents(&self.payload),
            TriggerKind::Pubsub => parse_pubsub(&self.payload),
            TriggerKind::Eventgrid => parse_event_grid(&self.payload),
            TriggerKind::Acr => parse_acr(&self.payload),
        }
    }
}

pub(crate) fn typed<T: serde::de::DeserializeOwned>(what: &str, payload: &Value) -> Result<T> {
    serde_path_to_error::deserialize(payload).map_err(|e| path_error(what, e))
}

/// The registry host a reference names (`docker.io` when it names none).
pub(crate) fn host_of(reference: &str) -> &str {
    let first = reference.split('/').next().unwrap_or("");
    if first.contains('.') || first.contains(':') || first == "localhost" {
        first
    } else {
        "docker.io"
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
