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
use crate::event::Event;
use crate::ids::is_label;
use crate::reference::{Digest, ParseError, RegistryHost, Repository, Tag, excerpt};

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

/// One image pushed under a tag: what ingest turns into a run. Every part is parsed
/// (image parts to the distribution grammar, ids and names to bounded printable labels)
/// before a `Push` exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Push {
    pub trigger: TriggerKind,
    /// The registry's id of the notification (dedup across registry retries).
    pub notification_id: String,
    pub registry: RegistryHost,
    pub repository: Repository,
    pub tag: Tag,
    /// Absent when the notification does not carry it; ingest then resolves the tag.
    #[serde(default)]
    pub digest: Option<Digest>,
    pub pushed_at: DateTime<Utc>,
    /// Who pushed, as the source says (a registry user, an IAM principal ARN).
    #[serde(default)]
    pub pushed_by: Option<String>,
}

/// A reference part of a notification, parsed; the error names the field.
fn part<T: std::str::FromStr<Err = ParseError>>(what: &str, field: &str, v: &str) -> Result<T> {
    v.parse()
        .map_err(|e: ParseError| Error::invalid(what, format!("{field}: {e}")))
}

/// A notification id: a bounded printable label.
fn notification_id(what: &str, field: &str, v: String) -> Result<String> {
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
fn pusher(what: &str, field: &str, v: Option<String>) -> Result<Option<String>> {
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

/// The ECR registry host of an account and region, both checked: a 12-digit account and
/// a region name.
fn ecr_registry(account: Option<&str>, region: Option<&str>) -> Result<RegistryHost> {
    let account = account.unwrap_or_default();
    let region = region.unwrap_or_default();
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::invalid(
            "ECR event",
            format!(
                "account: {} is not a 12-digit AWS account id",
                excerpt(account)
            ),
        ));
    }
    if region.is_empty()
        || !region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(Error::invalid(
            "ECR event",
            format!("region: {} is not an AWS region", excerpt(region)),
        ));
    }
    part(
        "ECR event",
        "account/region",
        &format!("{account}.dkr.ecr.{region}.amazonaws.com"),
    )
}

/// The `detail` of an "AWS API Call via CloudTrail" event for ECR's `PutImage`: the
/// push with the caller's verified identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CloudTrailPutImage {
    event_name: String,
    #[serde(rename = "eventID", default)]
    event_id: Option<String>,
    #[serde(default)]
    error_code: Option<String>,
    user_identity: CloudTrailIdentity,
    #[serde(default)]
    request_parameters: Option<PutImageRequest>,
    #[serde(default)]
    response_elements: Option<PutImageResponse>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CloudTrailIdentity {
    #[serde(default)]
    arn: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PutImageRequest {
    repository_name: String,
    #[serde(default)]
    image_tag: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PutImageResponse {
    #[serde(default)]
    image: Option<PutImageImage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PutImageImage {
    #[serde(default)]
    image_id: Option<PutImageId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PutImageId {
    #[serde(default)]
    image_digest: Option<String>,
}

/// The two detail types ECR pushes arrive as through EventBridge.
pub const ECR_IMAGE_ACTION: &str = "ECR Image Action";
pub const CLOUDTRAIL_API_CALL: &str = "AWS API Call via CloudTrail";

/// Parses an EventBridge event about an ECR push: "ECR Image Action" (no pusher), or
/// "AWS API Call via CloudTrail" for `PutImage`, which names the caller's IAM identity
/// (so the no-self-approval rule has a pusher).
pub fn parse_ecr(payload: &Value) -> Result<Parsed> {
    let kind = payload.get("detail-type").and_then(Value::as_str);
    if payload.get("source").and_then(Value::as_str) == Some("aws.ecr")
        && kind == Some(CLOUDTRAIL_API_CALL)
    {
        return parse_ecr_cloudtrail(payload);
    }
    let ev: EventBridgeEvent<EcrImageAction> = serde_path_to_error::deserialize(payload.clone())
        .map_err(|e| path_error("ECR event", e))?;
    if ev.source != "aws.ecr" || ev.detail_type != ECR_IMAGE_ACTION {
        return Err(Error::invalid(
            "ECR event",
            format!(
                "source/detail-type: {}/{} is not aws.ecr/\"{ECR_IMAGE_ACTION}\" or \"{CLOUDTRAIL_API_CALL}\"",
                excerpt(&ev.source),
                excerpt(&ev.detail_type)
            ),
        ));
    }
    let d = &ev.detail;
    let mut out = Parsed::default();
    if d.action_type != "PUSH" || d.result != "SUCCESS" {
        out.ignored.push(format!(
            "{} {} of {} is not a successful push",
            excerpt(&d.action_type),
            excerpt(&d.result),
            excerpt(&d.repository_name)
        ));
        return Ok(out);
    }
    let Some(tag) = d.image_tag.as_deref().filter(|t| !t.is_empty()) else {
        out.ignored
            .push(format!("untagged push to {}", excerpt(&d.repository_name)));
        return Ok(out);
    };
    const WHAT: &str = "ECR event";
    let digest: Digest = part(
        WHAT,
        "detail.image-digest",
        d.image_digest
            .as_deref()
            .ok_or_else(|| Error::invalid(WHAT, "detail.image-digest: missing on a push"))?,
    )?;
    let registry = ecr_registry(ev.account.as_deref(), ev.region.as_deref())?;
    out.pushes.push(Push {
        trigger: TriggerKind::Ecr,
        notification_id: notification_id(
            WHAT,
            "id",
            ev.id.clone().unwrap_or_else(|| digest.to_string()),
        )?,
        registry,
        repository: part(WHAT, "detail.repository-name", &d.repository_name)?,
        tag: part(WHAT, "detail.image-tag", tag)?,
        digest: Some(digest),
        pushed_at: ev.time.unwrap_or_else(Utc::now),
        pushed_by: None,
    });
    Ok(out)
}

fn parse_ecr_cloudtrail(payload: &Value) -> Result<Parsed> {
    const WHAT: &str = "ECR CloudTrail event";
    let ev: EventBridgeEvent<CloudTrailPutImage> =
        serde_path_to_error::deserialize(payload.clone()).map_err(|e| path_error(WHAT, e))?;
    let d = &ev.detail;
    let mut out = Parsed::default();
    if d.event_name != "PutImage" {
        out.ignored.push(format!(
            "ECR API call {} is not a push",
            excerpt(&d.event_name)
        ));
        return Ok(out);
    }
    if let Some(code) = &d.error_code {
        out.ignored.push(format!(
            "PutImage failed ({}); nothing was pushed",
            excerpt(code)
        ));
        return Ok(out);
    }
    let Some(req) = &d.request_parameters else {
        return Err(Error::invalid(
            WHAT,
            "detail.requestParameters: missing on a PutImage call",
        ));
    };
    let Some(tag) = req.image_tag.as_deref().filter(|t| !t.is_empty()) else {
        out.ignored.push(format!(
            "untagged push to {}",
            excerpt(&req.repository_name)
        ));
        return Ok(out);
    };
    let arn = d
        .user_identity
        .arn
        .clone()
        .ok_or_else(|| Error::invalid(WHAT, "detail.userIdentity.arn: missing"))?;
    let digest = match d
        .response_elements
        .as_ref()
        .and_then(|r| r.image.as_ref())
        .and_then(|i| i.image_id.as_ref())
        .and_then(|i| i.image_digest.as_deref())
    {
        Some(d) => Some(part(
            WHAT,
            "detail.responseElements.image.imageId.imageDigest",
            d,
        )?),
        // CloudTrail may leave out large response elements: ingest resolves the tag.
        None => None,
    };
    out.pushes.push(Push {
        trigger: TriggerKind::Ecr,
        notification_id: notification_id(
            WHAT,
            "detail.eventID",
            d.event_id
                .clone()
                .or_else(|| ev.id.clone())
                .unwrap_or_else(|| format!("{}:{tag}", req.repository_name)),
        )?,
        registry: ecr_registry(ev.account.as_deref(), ev.region.as_deref())?,
        repository: part(
            WHAT,
            "detail.requestParameters.repositoryName",
            &req.repository_name,
        )?,
        tag: part(WHAT, "detail.requestParameters.imageTag", tag)?,
        digest,
        pushed_at: ev.time.unwrap_or_else(Utc::now),
        pushed_by: pusher(WHAT, "detail.userIdentity.arn", Some(arn))?,
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
        const WHAT: &str = "registry notification";
        let what = format!("event {i} ({})", excerpt(&ev.id));
        if ev.action != "push" {
            out.ignored.push(format!(
                "{what}: action {} is not a push",
                excerpt(&ev.action)
            ));
            continue;
        }
        let t = &ev.target;
        let is_manifest = is_manifest_media_type(&t.media_type)
            || t.url.as_deref().is_some_and(|u| u.contains("/manifests/"));
        if !is_manifest {
            out.ignored.push(format!(
                "{what}: blob push to {} ignored",
                excerpt(&t.repository)
            ));
            continue;
        }
        let Some(tag) = t.tag.as_deref().filter(|t| !t.is_empty()) else {
            out.ignored.push(format!(
                "{what}: manifest push to {} without a tag ignored",
                excerpt(&t.repository)
            ));
            continue;
        };
        let at = |f: &str| format!("events[{i}].{f}");
        let digest = part(WHAT, &at("target.digest"), &t.digest)?;
        let registry = match (
            ev.request.as_ref().and_then(|r| r.host.as_deref()),
            t.url.as_deref(),
        ) {
            (Some(host), _) => part(WHAT, &at("request.host"), host)?,
            (None, Some(url)) => part(
                WHAT,
                &at("target.url"),
                host_of_url(url).unwrap_or_default(),
            )?,
            (None, None) => {
                return Err(Error::invalid(
                    WHAT,
                    format!(
                        "{}: missing, and there is no target.url to name the registry",
                        at("request.host")
                    ),
                ));
            }
        };
        out.pushes.push(Push {
            trigger: TriggerKind::Distribution,
            notification_id: notification_id(WHAT, &at("id"), ev.id.clone())?,
            registry,
            repository: part(WHAT, &at("target.repository"), &t.repository)?,
            tag: part(WHAT, &at("target.tag"), tag)?,
            digest: Some(digest),
            pushed_at: ev.timestamp.with_timezone(&Utc),
            pushed_by: pusher(WHAT, &at("actor.name"), ev.actor.and_then(|a| a.name))?,
        });
    }
    Ok(out)
}

fn host_of_url(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    rest.split('/').next()
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

/// The registry host a reference names (`docker.io` when it names none).
fn host_of(reference: &str) -> &str {
    let first = reference.split('/').next().unwrap_or("");
    if first.contains('.') || first.contains(':') || first == "localhost" {
        first
    } else {
        "docker.io"
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
    const WHAT: &str = "Docker Hub webhook";
    if p.push_data.tag.is_empty() {
        out.ignored.push(format!(
            "push to {} without a tag ignored",
            excerpt(&p.repository.repo_name)
        ));
        return Ok(out);
    }
    // Official images are `library/<name>` in the registry.
    let repository: Repository = if p.repository.repo_name.contains('/') {
        part(WHAT, "repository.repo_name", &p.repository.repo_name)?
    } else {
        part(
            WHAT,
            "repository.repo_name",
            &format!("library/{}", p.repository.repo_name),
        )?
    };
    let tag: Tag = part(WHAT, "push_data.tag", &p.push_data.tag)?;
    out.pushes.push(Push {
        trigger: TriggerKind::Dockerhub,
        notification_id: format!("{repository}:{tag}:{}", p.push_data.pushed_at),
        registry: part(WHAT, "registry", "docker.io")?,
        repository,
        tag,
        digest: None,
        pushed_at,
        pushed_by: pusher(WHAT, "push_data.pusher", p.push_data.pusher)?,
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
    const WHAT: &str = "Harbor webhook";
    let mut out = Parsed::default();
    if p.ty != "PUSH_ARTIFACT" {
        out.ignored
            .push(format!("Harbor event {} is not a push", excerpt(&p.ty)));
        return Ok(out);
    }
    let pushed_at = DateTime::from_timestamp(p.occur_at, 0)
        .ok_or_else(|| Error::invalid(WHAT, "occur_at: not a Unix time"))?;
    let repository: Repository = part(
        WHAT,
        "event_data.repository.repo_full_name",
        &p.event_data.repository.repo_full_name,
    )?;
    let pushed_by = pusher(WHAT, "operator", p.operator.clone())?;
    for (i, r) in p.event_data.resources.into_iter().enumerate() {
        let Some(tag) = r.tag.filter(|t| !t.is_empty()) else {
            out.ignored.push(format!(
                "untagged artifact {} ignored",
                excerpt(&r.resource_url)
            ));
            continue;
        };
        let at = |f: &str| format!("event_data.resources[{i}].{f}");
        let digest: Digest = part(WHAT, &at("digest"), &r.digest)?;
        out.pushes.push(Push {
            trigger: TriggerKind::Harbor,
            notification_id: format!("{repository}:{digest}:{}", p.occur_at),
            registry: part(WHAT, &at("resource_url"), host_of(&r.resource_url))?,
            repository: repository.clone(),
            tag: part(WHAT, &at("tag"), &tag)?,
            digest: Some(digest),
            pushed_at,
            pushed_by: pushed_by.clone(),
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
            excerpt(&p.package.package_type)
        ));
        return Ok(out);
    }
    if p.action != "published" && p.action != "updated" {
        out.ignored.push(format!(
            "package action {} is not a push",
            excerpt(&p.action)
        ));
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
            excerpt(&p.package.namespace),
            excerpt(&p.package.name)
        ));
        return Ok(out);
    }
    const WHAT: &str = "GitHub package event";
    let digest: Digest = part(
        WHAT,
        "package.package_version.container_metadata.tag.digest",
        &meta.tag.digest,
    )?;
    let registry: RegistryHost = match p.package.registry.as_ref() {
        Some(r) => part(
            WHAT,
            "package.registry.url",
            r.url
                .split_once("://")
                .map_or("", |(_, h)| h.trim_end_matches('/')),
        )?,
        None => part(WHAT, "package.registry.url", "ghcr.io")?,
    };
    out.pushes.push(Push {
        trigger: TriggerKind::Ghcr,
        notification_id: format!(
            "ghcr:{}:{}",
            p.package.package_version.id,
            excerpt(&meta.tag.name)
        ),
        registry,
        repository: part(
            WHAT,
            "package.namespace/package.name",
            &format!("{}/{}", p.package.namespace.to_lowercase(), p.package.name),
        )?,
        tag: part(
            WHAT,
            "package.package_version.container_metadata.tag.name",
            &meta.tag.name,
        )?,
        digest: Some(digest),
        pushed_at: p
            .package
            .package_version
            .created_at
            .or(p.package.updated_at)
            .unwrap_or_else(Utc::now),
        pushed_by: pusher(WHAT, "sender.login", p.sender.map(|s| s.login))?,
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
    const WHAT: &str = "Quay notification";
    let p: QuayPayload = typed(WHAT, payload)?;
    let mut out = Parsed::default();
    let id = crate::ids::stable_id(&["quay", &payload.to_string()]);
    let registry: RegistryHost = part(WHAT, "docker_url", host_of(&p.docker_url))?;
    let repository: Repository = part(WHAT, "repository", &p.repository)?;
    for (i, tag) in p.updated_tags.into_iter().enumerate() {
        if tag.is_empty() {
            continue;
        }
        let tag: Tag = part(WHAT, &format!("updated_tags[{i}]"), &tag)?;
        out.pushes.push(Push {
            trigger: TriggerKind::Quay,
            notification_id: format!("{id}:{tag}"),
            registry: registry.clone(),
            repository: repository.clone(),
            tag,
            digest: None,
            pushed_at: received_at,
            pushed_by: None,
        });
    }
    if out.pushes.is_empty() {
        out.ignored
            .push(format!("notification for {repository} names no tag"));
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
