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
}

impl TriggerKind {
    pub const ALL: [TriggerKind; 6] = [
        TriggerKind::Ecr,
        TriggerKind::Distribution,
        TriggerKind::Dockerhub,
        TriggerKind::Harbor,
        TriggerKind::Ghcr,
        TriggerKind::Quay,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Ecr => "ecr",
            TriggerKind::Distribution => "distribution",
            TriggerKind::Dockerhub => "dockerhub",
            TriggerKind::Harbor => "harbor",
            TriggerKind::Ghcr => "ghcr",
            TriggerKind::Quay => "quay",
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
    /// Empty when the notification does not carry it; ingest then resolves the tag.
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
            TriggerKind::Dockerhub => parse_dockerhub(&self.payload),
            TriggerKind::Harbor => parse_harbor(&self.payload),
            TriggerKind::Ghcr => parse_ghcr(&self.payload),
            TriggerKind::Quay => parse_quay(&self.payload, self.received_at),
        }
    }
}

fn typed<T: serde::de::DeserializeOwned>(what: &str, payload: &Value) -> Result<T> {
    serde_path_to_error::deserialize(payload).map_err(|e| path_error(what, e))
}

fn host_of(reference: &str) -> String {
    let first = reference.split('/').next().unwrap_or("");
    if first.contains('.') || first.contains(':') || first == "localhost" {
        first.to_string()
    } else {
        "docker.io".into()
    }
}

#[derive(Debug, Deserialize)]
struct HubPayload {
    push_data: HubPushData,
    repository: HubRepository,
}
#[derive(Debug, Deserialize)]
struct HubPushData {
    pushed_at: i64,
    #[serde(default)]
    pusher: Option<String>,
    tag: String,
}
#[derive(Debug, Deserialize)]
struct HubRepository {
    repo_name: String,
}

/// Parses a Docker Hub repository webhook. It carries no digest: ingest resolves it.
pub fn parse_dockerhub(payload: &Value) -> Result<Parsed> {
    let p: HubPayload = typed("Docker Hub webhook", payload)?;
    let pushed_at = DateTime::from_timestamp(p.push_data.pushed_at, 0).ok_or_else(|| {
        Error::invalid("Docker Hub webhook", "push_data.pushed_at: not a Unix time")
    })?;
    let mut out = Parsed::default();
    if p.push_data.tag.is_empty() {
        out.ignored.push(format!(
            "push to {} without a tag ignored",
            p.repository.repo_name
        ));
        return Ok(out);
    }
    // Official images are `library/<name>` in the registry.
    let repository = if p.repository.repo_name.contains('/') {
        p.repository.repo_name.clone()
    } else {
        format!("library/{}", p.repository.repo_name)
    };
    out.pushes.push(Push {
        trigger: TriggerKind::Dockerhub,
        notification_id: format!(
            "{}:{}:{}",
            repository, p.push_data.tag, p.push_data.pushed_at
        ),
        registry: "docker.io".into(),
        repository,
        tag: p.push_data.tag,
        digest: String::new(),
        pushed_at,
        pushed_by: p.push_data.pusher.filter(|x| !x.is_empty()),
    });
    Ok(out)
}

#[derive(Debug, Deserialize)]
struct HarborPayload {
    #[serde(rename = "type")]
    ty: String,
    occur_at: i64,
    #[serde(default)]
    operator: Option<String>,
    event_data: HarborData,
}
#[derive(Debug, Deserialize)]
struct HarborData {
    resources: Vec<HarborResource>,
    repository: HarborRepository,
}
#[derive(Debug, Deserialize)]
struct HarborResource {
    digest: String,
    #[serde(default)]
    tag: Option<String>,
    resource_url: String,
}
#[derive(Debug, Deserialize)]
struct HarborRepository {
    repo_full_name: String,
}

/// Parses a Harbor webhook; only `PUSH_ARTIFACT` events start runs.
pub fn parse_harbor(payload: &Value) -> Result<Parsed> {
    let p: HarborPayload = typed("Harbor webhook", payload)?;
    let mut out = Parsed::default();
    if p.ty != "PUSH_ARTIFACT" {
        out.ignored
            .push(format!("Harbor event {} is not a push", p.ty));
        return Ok(out);
    }
    let pushed_at = DateTime::from_timestamp(p.occur_at, 0)
        .ok_or_else(|| Error::invalid("Harbor webhook", "occur_at: not a Unix time"))?;
    for (i, r) in p.event_data.resources.into_iter().enumerate() {
        let Some(tag) = r.tag.filter(|t| !t.is_empty()) else {
            out.ignored
                .push(format!("untagged artifact {} ignored", r.resource_url));
            continue;
        };
        validate_digest(&r.digest).map_err(|e| {
            Error::invalid(
                "Harbor webhook",
                format!("event_data.resources[{i}].digest: {e}"),
            )
        })?;
        out.pushes.push(Push {
            trigger: TriggerKind::Harbor,
            notification_id: format!(
                "{}:{}:{}",
                p.event_data.repository.repo_full_name, r.digest, p.occur_at
            ),
            registry: host_of(&r.resource_url),
            repository: p.event_data.repository.repo_full_name.clone(),
            tag,
            digest: r.digest,
            pushed_at,
            pushed_by: p.operator.clone().filter(|x| !x.is_empty()),
        });
    }
    Ok(out)
}

#[derive(Debug, Deserialize)]
struct GhPayload {
    action: String,
    package: GhPackage,
    #[serde(default)]
    sender: Option<GhUser>,
}
#[derive(Debug, Deserialize)]
struct GhPackage {
    name: String,
    namespace: String,
    package_type: String,
    package_version: GhVersion,
    #[serde(default)]
    registry: Option<GhRegistry>,
    #[serde(default)]
    updated_at: Option<DateTime<Utc>>,
}
#[derive(Debug, Deserialize)]
struct GhVersion {
    id: u64,
    #[serde(default)]
    container_metadata: Option<GhContainer>,
    #[serde(default)]
    created_at: Option<DateTime<Utc>>,
}
#[derive(Debug, Deserialize)]
struct GhContainer {
    tag: GhTag,
}
#[derive(Debug, Deserialize)]
struct GhTag {
    name: String,
    digest: String,
}
#[derive(Debug, Deserialize)]
struct GhRegistry {
    url: String,
}
#[derive(Debug, Deserialize)]
struct GhUser {
    login: String,
}

/// Parses a GitHub `package` event (GHCR); only published container versions start runs.
pub fn parse_ghcr(payload: &Value) -> Result<Parsed> {
    let p: GhPayload = typed("GitHub package event", payload)?;
    let mut out = Parsed::default();
    if !p.package.package_type.eq_ignore_ascii_case("container") {
        out.ignored.push(format!(
            "package type {} is not a container",
            p.package.package_type
        ));
        return Ok(out);
    }
    if p.action != "published" && p.action != "updated" {
        out.ignored
            .push(format!("package action {} is not a push", p.action));
        return Ok(out);
    }
    let Some(meta) = p.package.package_version.container_metadata else {
        out.ignored
            .push("package version without container metadata ignored".into());
        return Ok(out);
    };
    if meta.tag.name.is_empty() {
        out.ignored.push(format!(
            "untagged version of {}/{} ignored",
            p.package.namespace, p.package.name
        ));
        return Ok(out);
    }
    validate_digest(&meta.tag.digest).map_err(|e| {
        Error::invalid(
            "GitHub package event",
            format!("package.package_version.container_metadata.tag.digest: {e}"),
        )
    })?;
    let registry = p
        .package
        .registry
        .as_ref()
        .and_then(|r| {
            r.url
                .split_once("://")
                .map(|(_, h)| h.trim_end_matches('/').to_string())
        })
        .unwrap_or_else(|| "ghcr.io".into());
    out.pushes.push(Push {
        trigger: TriggerKind::Ghcr,
        notification_id: format!("ghcr:{}:{}", p.package.package_version.id, meta.tag.name),
        registry,
        repository: format!("{}/{}", p.package.namespace.to_lowercase(), p.package.name),
        tag: meta.tag.name,
        digest: meta.tag.digest,
        pushed_at: p
            .package
            .package_version
            .created_at
            .or(p.package.updated_at)
            .unwrap_or_else(Utc::now),
        pushed_by: p.sender.map(|s| s.login),
    });
    Ok(out)
}

#[derive(Debug, Deserialize)]
struct QuayPayload {
    repository: String,
    docker_url: String,
    updated_tags: Vec<String>,
}

/// Parses a Quay repository push notification (one push per updated tag; no digest and
/// no time: ingest resolves the digest, the receive time orders it).
pub fn parse_quay(payload: &Value, received_at: DateTime<Utc>) -> Result<Parsed> {
    let p: QuayPayload = typed("Quay notification", payload)?;
    let mut out = Parsed::default();
    let id = crate::ids::stable_id(&["quay", &payload.to_string()]);
    for tag in p.updated_tags.into_iter().filter(|t| !t.is_empty()) {
        out.pushes.push(Push {
            trigger: TriggerKind::Quay,
            notification_id: format!("{id}:{tag}"),
            registry: host_of(&p.docker_url),
            repository: p.repository.clone(),
            tag,
            digest: String::new(),
            pushed_at: received_at,
            pushed_by: None,
        });
    }
    if out.pushes.is_empty() {
        out.ignored
            .push(format!("notification for {} names no tag", p.repository));
    }
    Ok(out)
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
    /// A registry notification of this kind.
    Trigger(TriggerKind),
    Sqs,
    Sns,
    /// A request through a Lambda function URL (webhooks to ingest, decisions to approve).
    FunctionUrl,
}

impl DocumentKind {
    pub fn describe(self) -> &'static str {
        match self {
            DocumentKind::BatonEvent => "Baton event (CloudEvents 1.0)",
            DocumentKind::Trigger(TriggerKind::Ecr) => "ECR Image Action (EventBridge)",
            DocumentKind::Trigger(TriggerKind::Distribution) => {
                "CNCF distribution notification envelope"
            }
            DocumentKind::Trigger(TriggerKind::Dockerhub) => "Docker Hub webhook",
            DocumentKind::Trigger(TriggerKind::Harbor) => "Harbor webhook",
            DocumentKind::Trigger(TriggerKind::Ghcr) => "GitHub package event (GHCR)",
            DocumentKind::Trigger(TriggerKind::Quay) => "Quay repository notification",
            DocumentKind::Sqs => "SQS event (Lambda event source mapping)",
            DocumentKind::Sns => "SNS notification",
            DocumentKind::FunctionUrl => "Lambda function URL request",
        }
    }
}

/// Reads a Lambda function URL request (the `aws_lambda_events` type); errors name the
/// field.
pub fn function_url_request(
    v: &Value,
) -> Result<aws_lambda_events::lambda_function_urls::LambdaFunctionUrlRequest> {
    serde_path_to_error::deserialize(v).map_err(|e| path_error("function URL request", e))
}

/// Identifies a document; `None` when it is none of the known shapes.
pub fn identify(v: &Value) -> Option<DocumentKind> {
    let o = v.as_object()?;
    if o.contains_key("specversion") {
        Some(DocumentKind::BatonEvent)
    } else if o.contains_key("requestContext") && o.contains_key("rawPath") {
        Some(DocumentKind::FunctionUrl)
    } else if o.contains_key("detail-type") {
        Some(DocumentKind::Trigger(TriggerKind::Ecr))
    } else if o.contains_key("events") {
        Some(DocumentKind::Trigger(TriggerKind::Distribution))
    } else if o.contains_key("push_data") {
        Some(DocumentKind::Trigger(TriggerKind::Dockerhub))
    } else if o.contains_key("event_data") {
        Some(DocumentKind::Trigger(TriggerKind::Harbor))
    } else if o.contains_key("package") {
        Some(DocumentKind::Trigger(TriggerKind::Ghcr))
    } else if o.contains_key("updated_tags") {
        Some(DocumentKind::Trigger(TriggerKind::Quay))
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
