//! Baton's event contract: the CloudEvents 1.0 structured-JSON envelope and the typed
//! `data` of every event type. Parsing rejects malformed input with an error that names
//! the offending field (`data.image.digest: …`). Must not depend on any adapter.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::ids::RunId;
use crate::reference::{Digest, ImageRef, RegistryHost, Repository, Tag};

/// The CloudEvents spec version Baton writes and accepts.
pub const SPEC_VERSION: &str = "1.0";
/// The content type of every Baton event's `data`.
pub const CONTENT_TYPE: &str = "application/json";

/// Every event type Baton publishes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum EventType {
    #[serde(rename = "image.built")]
    ImageBuilt,
    #[serde(rename = "tests.passed")]
    TestsPassed,
    #[serde(rename = "tests.failed")]
    TestsFailed,
    #[serde(rename = "approval.requested")]
    ApprovalRequested,
    #[serde(rename = "approval.granted")]
    ApprovalGranted,
    #[serde(rename = "approval.rejected")]
    ApprovalRejected,
    #[serde(rename = "deploy.succeeded")]
    DeploySucceeded,
    #[serde(rename = "deploy.failed")]
    DeployFailed,
    #[serde(rename = "deploy.waiting")]
    DeployWaiting,
    #[serde(rename = "verification.passed")]
    VerificationPassed,
    #[serde(rename = "verification.failed")]
    VerificationFailed,
    #[serde(rename = "image.promoted")]
    ImagePromoted,
    #[serde(rename = "stage.failed")]
    StageFailed,
}

impl EventType {
    pub const ALL: [EventType; 13] = [
        EventType::ImageBuilt,
        EventType::TestsPassed,
        EventType::TestsFailed,
        EventType::ApprovalRequested,
        EventType::ApprovalGranted,
        EventType::ApprovalRejected,
        EventType::DeploySucceeded,
        EventType::DeployFailed,
        EventType::DeployWaiting,
        EventType::VerificationPassed,
        EventType::VerificationFailed,
        EventType::ImagePromoted,
        EventType::StageFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ImageBuilt => "image.built",
            EventType::TestsPassed => "tests.passed",
            EventType::TestsFailed => "tests.failed",
            EventType::ApprovalRequested => "approval.requested",
            EventType::ApprovalGranted => "approval.granted",
            EventType::ApprovalRejected => "approval.rejected",
            EventType::DeploySucceeded => "deploy.succeeded",
            EventType::DeployFailed => "deploy.failed",
            EventType::DeployWaiting => "deploy.waiting",
            EventType::VerificationPassed => "verification.passed",
            EventType::VerificationFailed => "verification.failed",
            EventType::ImagePromoted => "image.promoted",
            EventType::StageFailed => "stage.failed",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The `dataschema` URI of this type.
    pub fn schema_uri(self) -> String {
        format!("urn:baton:events:v1:{}", self.as_str())
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An image as Baton deploys it: always pinned by digest. Every part is parsed to the
/// grammar of the OCI distribution spec when it is built or deserialized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// Registry host (`123456789012.dkr.ecr.eu-west-1.amazonaws.com`, `localhost:5000`).
    pub registry: RegistryHost,
    /// Repository path inside the registry (`team/web`).
    pub repository: Repository,
    /// The tag that was pushed (informational; never used to deploy).
    pub tag: Tag,
    /// Content digest, `sha256:` and 64 lowercase hex digits.
    pub digest: Digest,
}

impl Image {
    /// Parses each part; the error names the part.
    pub fn parse(
        registry: &str,
        repository: &str,
        tag: &str,
        digest: &str,
    ) -> std::result::Result<Image, String> {
        let part = |name: &str, e: crate::reference::ParseError| format!("image.{name}: {e}");
        Ok(Image {
            registry: registry.parse().map_err(|e| part("registry", e))?,
            repository: repository.parse().map_err(|e| part("repository", e))?,
            tag: tag.parse().map_err(|e| part("tag", e))?,
            digest: digest.parse().map_err(|e| part("digest", e))?,
        })
    }

    /// `registry/repository@sha256:…`: the only form Baton deploys.
    pub fn pinned(&self) -> ImageRef {
        ImageRef::pinned(&self.registry, &self.repository, &self.digest)
    }

    /// `registry/repository@sha256:…` as text.
    pub fn reference(&self) -> String {
        self.pinned().to_string()
    }

    /// `registry/repository:tag`, for display.
    pub fn tagged(&self) -> String {
        format!("{}/{}:{}", self.registry, self.repository, self.tag)
    }

    /// The first 12 hex digits of the digest, for display.
    pub fn short_digest(&self) -> &str {
        self.digest.short()
    }
}

/// The first 12 hex digits of a `sha256:` digest.
pub fn short_digest(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    &hex[..hex.len().min(12)]
}

/// What every Baton event carries about its run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunContext {
    /// Run id: deterministic from (app, image digest).
    pub run: RunId,
    /// The configured app this image belongs to.
    pub app: String,
    /// The environment the event applies to (approval, deploy, promote).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    pub image: Image,
    /// Id of the event (or registry notification) that caused this one.
    pub causation: String,
    /// Attempt of the stage that published this event (1 unless retried).
    #[schemars(range(min = 1))]
    pub attempt: u32,
    /// Push sequence (milliseconds since the epoch of the push) for newer-wins checks.
    pub sequence: u64,
    /// Who pushed the image, when the registry says (used to refuse self-approval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_by: Option<String>,
}

/// `image.built`: a configured repository received an image under an allowed tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ImageBuilt {
    #[serde(flatten)]
    pub ctx: RunContext,
    /// When the registry received the push.
    pub pushed_at: DateTime<Utc>,
    /// Which trigger announced it (`ecr`, `distribution`, …).
    pub trigger: String,
}

/// `tests.passed` / `tests.failed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TestReport {
    #[serde(flatten)]
    pub ctx: RunContext,
    /// The runner that ran the tests (`command`, `kubernetes-job`, `lambda`).
    pub runner: String,
    /// One line on the outcome (`exit code 0`, `deadline exceeded after 10m`).
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    /// Store key of the captured output (bounded), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_key: Option<String>,
}

/// `approval.requested`: an environment waits for approvers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApprovalRequested {
    #[serde(flatten)]
    pub ctx: RunContext,
    /// Approvers allowed by name.
    pub approvers: Vec<String>,
    /// Groups whose members may approve.
    pub groups: Vec<String>,
    /// How many distinct approvals are needed.
    pub required: u32,
    pub expires_at: DateTime<Utc>,
    /// Where to decide, when an HTTP endpoint serves approvals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Set when the source did not say who pushed: what the policy does then (`refuse`:
    /// no approval is taken; `allow`: taken without the self-approval check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_pusher: Option<UnknownPusher>,
}

/// How an approval was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GrantPolicy {
    /// The environment's policy approves automatically.
    Auto,
    /// Enough listed approvers approved.
    Manual,
}

/// What a policy does when the source did not say who pushed the image, so the
/// no-self-approval rule cannot be checked. Never silently "allow".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UnknownPusher {
    /// No one may approve (any approver could be the pusher); reject, or let it expire.
    #[default]
    Refuse,
    /// Approvals are taken; the record says the self-approval check was not made.
    Allow,
}

/// `approval.granted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApprovalGranted {
    #[serde(flatten)]
    pub ctx: RunContext,
    pub policy: GrantPolicy,
    /// Who approved (empty for `auto`).
    pub approved_by: Vec<String>,
}

/// `approval.rejected`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApprovalRejected {
    #[serde(flatten)]
    pub ctx: RunContext,
    /// Who rejected (empty when the request expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_by: Option<String>,
    pub reason: String,
}

/// `deploy.succeeded`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeploySucceeded {
    #[serde(flatten)]
    pub ctx: RunContext,
    /// Target kind (`manifest`, `kubernetes`, `lambda`).
    pub target: String,
    /// The image reference that was live before, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// False when the digest was already live and nothing was changed.
    pub changed: bool,
    /// True when an operator rolled back to this image.
    #[serde(default)]
    pub rollback: bool,
    /// What the target did, in one line.
    pub detail: String,
}

/// `deploy.waiting`: a deploy stopped at a freeze or a rollback hold, published once
/// when it starts waiting (and again if what stops it changes); it goes on by itself when
/// the line opens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeployWaiting {
    #[serde(flatten)]
    pub ctx: RunContext,
    /// What stops it.
    pub blocked_by: Blocker,
    /// Who set it, why, and what lifts it, in one line.
    pub reason: String,
    /// When a freeze window opens again, if a window is what stops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
}

/// What stops a deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Blocker {
    /// `baton freeze` or a freeze window.
    Freeze,
    /// The hold a `baton rollback` put on the environment.
    Hold,
}

impl Blocker {
    pub fn as_str(self) -> &'static str {
        match self {
            Blocker::Freeze => "freeze",
            Blocker::Hold => "hold",
        }
    }
}

/// Why a deploy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    /// A newer image is live; newer wins (only `baton rollback` goes back).
    Superseded,
    /// The rollout did not finish (the previous image may have been put back).
    RolloutFailed,
}

impl FailureCode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCode::Superseded => "superseded",
            FailureCode::RolloutFailed => "rollout_failed",
        }
    }
}

/// `deploy.failed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeployFailed {
    #[serde(flatten)]
    pub ctx: RunContext,
    pub target: String,
    /// Machine-readable cause.
    pub code: FailureCode,
    /// What happened, in words.
    pub reason: String,
    /// Whether the previous image was put back.
    pub rolled_back: bool,
    /// The image live after this failure, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<String>,
}

/// `verification.passed` / `verification.failed`: what the environment's checks saw
/// after a deploy, through the soak.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VerificationReport {
    #[serde(flatten)]
    pub ctx: RunContext,
    /// One line on the outcome (`3 checks passed through a 5m soak`, `health: 3
    /// failures (allowed 2): status 503`).
    pub summary: String,
    /// Every check with its evidence.
    pub checks: Vec<CheckOutcome>,
    /// From the first check to the outcome.
    pub duration_ms: u64,
    /// Failed only: whether the environment asked for the previous image to be put
    /// back (the deploy stage does it and publishes `deploy.succeeded` with `rollback`).
    #[serde(default)]
    pub rollback: bool,
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CheckOutcome {
    /// The check's name in the configuration.
    pub name: String,
    /// `http`, `prometheus`, `command`, `kubernetes_job` or `lambda`.
    pub kind: String,
    pub passed: bool,
    /// Evaluations made.
    pub runs: u32,
    /// Evaluations that failed.
    pub failures: u32,
    /// The last observations, oldest first (`503 from http://…`, `value 0.12 > max 0.05`).
    pub evidence: Vec<String>,
}

/// `image.promoted`: the image carries the environment's tag in the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ImagePromoted {
    #[serde(flatten)]
    pub ctx: RunContext,
    /// The tag now pointing at the digest.
    pub promoted_tag: Tag,
}

/// `stage.failed`: a stage stopped on a permanent error and will not retry by itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StageFailed {
    #[serde(flatten)]
    pub ctx: RunContext,
    /// The stage that failed.
    pub stage: String,
    /// Stable error kind (`permanent`, `invalid_input`, `refused`).
    pub error_kind: String,
    /// What went wrong and what to fix.
    pub reason: String,
}

/// The typed `data` of an event; the variant decides the envelope's `type`.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    ImageBuilt(ImageBuilt),
    TestsPassed(TestReport),
    TestsFailed(TestReport),
    ApprovalRequested(ApprovalRequested),
    ApprovalGranted(ApprovalGranted),
    ApprovalRejected(ApprovalRejected),
    DeploySucceeded(DeploySucceeded),
    DeployFailed(DeployFailed),
    DeployWaiting(DeployWaiting),
    VerificationPassed(VerificationReport),
    VerificationFailed(VerificationReport),
    ImagePromoted(ImagePromoted),
    StageFailed(StageFailed),
}

impl Payload {
    pub fn event_type(&self) -> EventType {
        match self {
            Payload::ImageBuilt(_) => EventType::ImageBuilt,
            Payload::TestsPassed(_) => EventType::TestsPassed,
            Payload::TestsFailed(_) => EventType::TestsFailed,
            Payload::ApprovalRequested(_) => EventType::ApprovalRequested,
            Payload::ApprovalGranted(_) => EventType::ApprovalGranted,
            Payload::ApprovalRejected(_) => EventType::ApprovalRejected,
            Payload::DeploySucceeded(_) => EventType::DeploySucceeded,
            Payload::DeployFailed(_) => EventType::DeployFailed,
            Payload::DeployWaiting(_) => EventType::DeployWaiting,
            Payload::VerificationPassed(_) => EventType::VerificationPassed,
            Payload::VerificationFailed(_) => EventType::VerificationFailed,
            Payload::ImagePromoted(_) => EventType::ImagePromoted,
            Payload::StageFailed(_) => EventType::StageFailed,
        }
    }

    pub fn ctx(&self) -> &RunContext {
        match self {
            Payload::ImageBuilt(d) => &d.ctx,
            Payload::TestsPassed(d) | Payload::TestsFailed(d) => &d.ctx,
            Payload::ApprovalRequested(d) => &d.ctx,
            Payload::ApprovalGranted(d) => &d.ctx,
            Payload::ApprovalRejected(d) => &d.ctx,
            Payload::DeploySucceeded(d) => &d.ctx,
            Payload::DeployFailed(d) => &d.ctx,
            Payload::DeployWaiting(d) => &d.ctx,
            Payload::VerificationPassed(d) | Payload::VerificationFailed(d) => &d.ctx,
            Payload::ImagePromoted(d) => &d.ctx,
            Payload::StageFailed(d) => &d.ctx,
        }
    }

    pub fn ctx_mut(&mut self) -> &mut RunContext {
        match self {
            Payload::ImageBuilt(d) => &mut d.ctx,
            Payload::TestsPassed(d) | Payload::TestsFailed(d) => &mut d.ctx,
            Payload::ApprovalRequested(d) => &mut d.ctx,
            Payload::ApprovalGranted(d) => &mut d.ctx,
            Payload::ApprovalRejected(d) => &mut d.ctx,
            Payload::DeploySucceeded(d) => &mut d.ctx,
            Payload::DeployFailed(d) => &mut d.ctx,
            Payload::DeployWaiting(d) => &mut d.ctx,
            Payload::VerificationPassed(d) | Payload::VerificationFailed(d) => &mut d.ctx,
            Payload::ImagePromoted(d) => &mut d.ctx,
            Payload::StageFailed(d) => &mut d.ctx,
        }
    }

    fn to_value(&self) -> serde_json::Result<Value> {
        match self {
            Payload::ImageBuilt(d) => serde_json::to_value(d),
            Payload::TestsPassed(d) | Payload::TestsFailed(d) => serde_json::to_value(d),
            Payload::ApprovalRequested(d) => serde_json::to_value(d),
            Payload::ApprovalGranted(d) => serde_json::to_value(d),
            Payload::ApprovalRejected(d) => serde_json::to_value(d),
            Payload::DeploySucceeded(d) => serde_json::to_value(d),
            Payload::DeployFailed(d) => serde_json::to_value(d),
            Payload::DeployWaiting(d) => serde_json::to_value(d),
            Payload::VerificationPassed(d) | Payload::VerificationFailed(d) => {
                serde_json::to_value(d)
            }
            Payload::ImagePromoted(d) => serde_json::to_value(d),
            Payload::StageFailed(d) => serde_json::to_value(d),
        }
    }

    /// Parses `data` of the given type; errors name the field (`data.image.digest`).
    pub fn from_value(ty: EventType, data: Value) -> Result<Payload> {
        Payload::parse(ty, &data)
    }

    /// Parses `data` of the given type from its JSON text, then checks it as
    /// [`Payload::from_value`] does. Its errors do not name the field: callers parse
    /// again with `from_value` for that.
    fn from_raw(ty: EventType, data: &serde_json::value::RawValue) -> Result<Payload> {
        Payload::parse(ty, data)
    }

    /// The data of an event of type `ty`, parsed from `data` and checked.
    fn parse(ty: EventType, data: &(impl Data + ?Sized)) -> Result<Payload> {
        let payload = match ty {
            EventType::ImageBuilt => Payload::ImageBuilt(data.parse()?),
            EventType::TestsPassed => Payload::TestsPassed(data.parse()?),
            EventType::TestsFailed => Payload::TestsFailed(data.parse()?),
            EventType::ApprovalRequested => Payload::ApprovalRequested(data.parse()?),
            EventType::ApprovalGranted => Payload::ApprovalGranted(data.parse()?),
            EventType::ApprovalRejected => Payload::ApprovalRejected(data.parse()?),
            EventType::DeploySucceeded => Payload::DeploySucceeded(data.parse()?),
            EventType::DeployFailed => Payload::DeployFailed(data.parse()?),
            EventType::DeployWaiting => Payload::DeployWaiting(data.parse()?),
            EventType::VerificationPassed => Payload::VerificationPassed(data.parse()?),
            EventType::VerificationFailed => Payload::VerificationFailed(data.parse()?),
            EventType::ImagePromoted => Payload::ImagePromoted(data.parse()?),
            EventType::StageFailed => Payload::StageFailed(data.parse()?),
        };
        payload.validate()?;
        Ok(payload)
    }

    /// Semantic checks serde cannot express.
    fn validate(&self) -> Result<()> {
        let ctx = self.ctx();
        let bad = |field: &str, reason: String| {
            Err(Error::invalid("event", format!("data.{field}: {reason}")))
        };
        use crate::ids::{is_label, is_name, is_run_id};
        use crate::reference::excerpt;
        if !is_name(&ctx.app) {
            return bad(
                "app",
                format!(
                    "{} is not an app name (lowercase letters, digits, dashes)",
                    excerpt(&ctx.app)
                ),
            );
        }
        if !is_run_id(&ctx.run) {
            return bad(
                "run",
                format!(
                    "{} is not a run id (16 lowercase hex digits)",
                    excerpt(&ctx.run)
                ),
            );
        }
        if let Some(env) = &ctx.environment
            && !is_name(env)
        {
            return bad(
                "environment",
                format!("{} is not an environment name", excerpt(env)),
            );
        }
        if !is_label(&ctx.causation, 512) {
            return bad(
                "causation",
                format!("{} is not an event id", excerpt(&ctx.causation)),
            );
        }
        if let Some(who) = &ctx.pushed_by
            && !is_label(who, 256)
        {
            return bad("pushed_by", format!("{} is not a user name", excerpt(who)));
        }
        if ctx.attempt == 0 {
            return bad("attempt", "must be 1 or more".into());
        }
        let needs_env = !matches!(
            self,
            Payload::ImageBuilt(_)
                | Payload::TestsPassed(_)
                | Payload::TestsFailed(_)
                | Payload::StageFailed(_)
        );
        if needs_env && ctx.environment.as_deref().unwrap_or("").is_empty() {
            return bad(
                "environment",
                format!("{} events must name an environment", self.event_type()),
            );
        }
        Ok(())
    }
}

/// Where an event's data is parsed from: a `Value`, or its JSON text.
trait Data {
    fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T>;
}

impl Data for Value {
    /// Straight from the value; the path of an error is looked for only when there is
    /// one.
    fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        fn at_path<T: serde::de::DeserializeOwned>(data: Value) -> Result<T> {
            serde_path_to_error::deserialize(data).map_err(|e| {
                let path = e.path().to_string();
                let field = if path == "." {
                    "data".to_string()
                } else {
                    format!("data.{path}")
                };
                Error::invalid("event", format!("{field}: {}", e.inner()))
            })
        }
        if let Ok(t) = T::deserialize(self) {
            return Ok(t);
        }
        // serde loses the path inside `#[serde(flatten)]`: check the common part on its
        // own first so its errors name the field.
        if self.is_object() {
            at_path::<RunContext>(self.clone())?;
        }
        at_path(self.clone())
    }
}

impl Data for serde_json::value::RawValue {
    /// From the text; an error does not name its field.
    fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(self.get()).map_err(|e| Error::invalid("event", format!("data: {e}")))
    }
}

/// A Baton event: CloudEvents 1.0 envelope plus typed data.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Unique per `source`; `source` + `id` is the dedup key.
    pub id: String,
    /// The publishing stage, `/baton/<stage>`.
    pub source: String,
    /// `<app>/<run>`.
    pub subject: String,
    pub time: DateTime<Utc>,
    pub payload: Payload,
}

/// The envelope as it travels (structured JSON mode).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Envelope<D = Value> {
    /// Always `1.0`.
    pub specversion: String,
    pub id: String,
    /// The publishing stage, `/baton/<stage>`.
    pub source: String,
    #[serde(rename = "type")]
    pub ty: String,
    /// `<app>/<run>`.
    pub subject: String,
    pub time: DateTime<Utc>,
    /// Always `application/json`.
    pub datacontenttype: String,
    /// `urn:baton:events:v1:<type>`.
    pub dataschema: String,
    pub data: D,
}

impl Event {
    /// Builds an event published by `stage` now.
    pub fn new(id: String, stage: &str, time: DateTime<Utc>, payload: Payload) -> Event {
        let ctx = payload.ctx();
        Event {
            id,
            source: format!("/baton/{stage}"),
            subject: format!("{}/{}", ctx.app, ctx.run),
            time,
            payload,
        }
    }

    pub fn event_type(&self) -> EventType {
        self.payload.event_type()
    }

    pub fn ctx(&self) -> &RunContext {
        self.payload.ctx()
    }

    /// One line for humans and chat: type, app, environment, image, run, and why.
    pub fn summary(&self) -> String {
        let ctx = self.ctx();
        let env = ctx
            .environment
            .as_deref()
            .map(|e| format!(" {e}"))
            .unwrap_or_default();
        let detail = match &self.payload {
            Payload::TestsPassed(r) | Payload::TestsFailed(r) => format!(": {}", r.summary),
            Payload::ApprovalRequested(r) => match r.unknown_pusher {
                Some(UnknownPusher::Refuse) => format!(
                    ": {} approval(s) needed; the pusher is unknown, so approvals are refused (unknown_pusher: refuse)",
                    r.required
                ),
                Some(UnknownPusher::Allow) => format!(
                    ": {} approval(s) needed; the pusher is unknown and self-approval is not checked",
                    r.required
                ),
                None => format!(": {} approval(s) needed", r.required),
            },
            Payload::ApprovalGranted(g) if !g.approved_by.is_empty() => {
                format!(": approved by {}", g.approved_by.join(", "))
            }
            Payload::ApprovalRejected(r) => format!(": {}", r.reason),
            Payload::DeploySucceeded(d) => format!(": {}", d.detail),
            Payload::DeployFailed(d) => format!(": {}", d.reason),
            Payload::DeployWaiting(d) => {
                format!(": waiting ({}): {}", d.blocked_by.as_str(), d.reason)
            }
            Payload::VerificationPassed(v) | Payload::VerificationFailed(v) => {
                format!(": {}", v.summary)
            }
            Payload::ImagePromoted(p) => format!(": tagged {}", p.promoted_tag),
            Payload::StageFailed(f) => format!(": {} failed: {}", f.stage, f.reason),
            _ => String::new(),
        };
        format!(
            "{} {}{} {} ({}) run {}{}",
            self.event_type(),
            ctx.app,
            env,
            ctx.image.tag,
            ctx.image.short_digest(),
            ctx.run,
            detail
        )
    }

    /// The dedup key: `source` + `id`.
    pub fn dedup_key(&self) -> String {
        format!("{} {}", self.source, self.id)
    }

    /// The SNS message attributes subscriptions filter on.
    pub fn attributes(&self) -> Attributes {
        let ctx = self.ctx();
        let mut a = Attributes::new();
        a.insert(
            "type".into(),
            AttrValue::String(self.event_type().as_str().into()),
        );
        a.insert("app".into(), AttrValue::String(ctx.app.clone()));
        if let Some(env) = &ctx.environment {
            a.insert("environment".into(), AttrValue::String(env.clone()));
        }
        a.insert("attempt".into(), AttrValue::Number(f64::from(ctx.attempt)));
        a
    }

    pub fn to_envelope(&self) -> Envelope {
        let ty = self.event_type();
        Envelope {
            specversion: SPEC_VERSION.into(),
            id: self.id.clone(),
            source: self.source.clone(),
            ty: ty.as_str().into(),
            subject: self.subject.clone(),
            time: self.time,
            datacontenttype: CONTENT_TYPE.into(),
            dataschema: ty.schema_uri(),
            // Serializing plain structs of strings and numbers cannot fail.
            data: self.payload.to_value().unwrap_or(Value::Null),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Parses a structured-mode CloudEvent; errors name the field.
    pub fn from_json(text: &str) -> Result<Event> {
        // The data straight from its text into its struct; anything that fails this way
        // is parsed again below, the way that names the field at fault.
        if let Ok(env) = serde_json::from_str::<Envelope<&serde_json::value::RawValue>>(text)
            && let Ok(e) = Event::checked(env, Payload::from_raw)
        {
            return Ok(e);
        }
        Event::from_json_naming_fields(text)
    }

    /// [`Event::from_json`] the slow way: through a `Value`, so an error names its field.
    fn from_json_naming_fields(text: &str) -> Result<Event> {
        let mut de = serde_json::Deserializer::from_str(text);
        let env: Envelope = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                Error::invalid("event", e.inner().to_string())
            } else {
                Error::invalid("event", format!("{path}: {}", e.inner()))
            }
        })?;
        Event::from_envelope(env)
    }

    pub fn from_value(value: Value) -> Result<Event> {
        let env: Envelope = serde_path_to_error::deserialize(value)
            .map_err(|e| Error::invalid("event", format!("{}: {}", e.path(), e.inner())))?;
        Event::from_envelope(env)
    }

    fn from_envelope(env: Envelope) -> Result<Event> {
        Event::checked(env, Payload::from_value)
    }

    /// The envelope's checks, then its data parsed by `data`.
    fn checked<D>(
        env: Envelope<D>,
        data: impl FnOnce(EventType, D) -> Result<Payload>,
    ) -> Result<Event> {
        if env.specversion != SPEC_VERSION {
            return Err(Error::invalid(
                "event",
                format!(
                    "specversion: {:?} is not supported (expected \"1.0\")",
                    env.specversion
                ),
            ));
        }
        if env.id.is_empty() {
            return Err(Error::invalid("event", "id: must not be empty"));
        }
        if env.source.is_empty() {
            return Err(Error::invalid("event", "source: must not be empty"));
        }
        if env.datacontenttype != CONTENT_TYPE {
            return Err(Error::invalid(
                "event",
                format!(
                    "datacontenttype: {:?} is not supported (expected \"{CONTENT_TYPE}\")",
                    env.datacontenttype
                ),
            ));
        }
        let ty = EventType::parse(&env.ty).ok_or_else(|| {
            Error::invalid(
                "event",
                format!(
                    "type: {:?} is not a Baton event type (allowed: {})",
                    env.ty,
                    EventType::ALL.map(|t| t.as_str()).join(", ")
                ),
            )
        })?;
        let payload = data(ty, env.data)?;
        Ok(Event {
            id: env.id,
            source: env.source,
            subject: env.subject,
            time: env.time,
            payload,
        })
    }
}

impl Serialize for Event {
    /// The envelope of [`Event::to_envelope`], written from the event's own fields: no
    /// copy of the strings, and the data straight from its typed struct instead of
    /// through a `Value`. (Keys of `data` come in the struct's order instead of sorted.)
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let ty = self.event_type();
        EnvelopeRef {
            specversion: SPEC_VERSION,
            id: self.id.as_str(),
            source: self.source.as_str(),
            ty: ty.as_str(),
            subject: self.subject.as_str(),
            time: self.time,
            datacontenttype: CONTENT_TYPE,
            dataschema: SchemaUri(ty),
            data: DataOf(&self.payload),
        }
        .serialize(s)
    }
}

/// [`Envelope`], borrowed from an [`Event`] to be written.
#[derive(Serialize)]
struct EnvelopeRef<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    ty: &'static str,
    subject: &'a str,
    time: DateTime<Utc>,
    datacontenttype: &'static str,
    dataschema: SchemaUri,
    data: DataOf<'a>,
}

/// `urn:baton:events:v1:<type>`, written without building the string.
struct SchemaUri(EventType);

impl Serialize for SchemaUri {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("urn:baton:events:v1:{}", self.0.as_str()))
    }
}

/// An event's data, serialized from its typed struct.
struct DataOf<'a>(&'a Payload);

impl Serialize for DataOf<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self.0 {
            Payload::ImageBuilt(d) => d.serialize(s),
            Payload::TestsPassed(d) | Payload::TestsFailed(d) => d.serialize(s),
            Payload::ApprovalRequested(d) => d.serialize(s),
            Payload::ApprovalGranted(d) => d.serialize(s),
            Payload::ApprovalRejected(d) => d.serialize(s),
            Payload::DeploySucceeded(d) => d.serialize(s),
            Payload::DeployFailed(d) => d.serialize(s),
            Payload::DeployWaiting(d) => d.serialize(s),
            Payload::VerificationPassed(d) | Payload::VerificationFailed(d) => d.serialize(s),
            Payload::ImagePromoted(d) => d.serialize(s),
            Payload::StageFailed(d) => d.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Event {
    /// The data is taken as its JSON text and parsed straight into its struct; data that
    /// fails that way is parsed again through a `Value`, so the error names the field.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let env = Envelope::<Box<serde_json::value::RawValue>>::deserialize(d)?;
        Event::checked(env, |ty, raw| {
            Payload::from_raw(ty, &raw).or_else(|_| {
                let data = serde_json::from_str(raw.get())
                    .map_err(|e| Error::invalid("event", format!("data: {e}")))?;
                Payload::from_value(ty, data)
            })
        })
        .map_err(serde::de::Error::custom)
    }
}

/// A message attribute value, as SNS types them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AttrValue {
    String(String),
    Number(f64),
    StringArray(Vec<String>),
}

/// Message attributes: what filter policies match on.
pub type Attributes = BTreeMap<String, AttrValue>;

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_ctx() -> RunContext {
        RunContext {
            run: crate::ids::run_id("web", "sha256:0"),
            app: "web".into(),
            environment: Some("staging".into()),
            image: Image::parse(
                "localhost:5000",
                "team/web",
                "1.2.3",
                &format!("sha256:{}", "a".repeat(64)),
            )
            .unwrap(),
            causation: "cause-1".into(),
            attempt: 1,
            sequence: 1_700_000_000_000,
            pushed_by: Some("ci-bot".into()),
        }
    }

    fn sample_event() -> Event {
        Event::new(
            "id-1".into(),
            "deploy",
            Utc::now(),
            Payload::DeploySucceeded(DeploySucceeded {
                ctx: sample_ctx(),
                target: "manifest".into(),
                previous: None,
                changed: true,
                rollback: false,
                detail: "rewrote 1 image".into(),
            }),
        )
    }

    /// `from_json` parses the data straight from its text when it can; whatever it
    /// decides must be what the field-naming parse through a `Value` decides.
    #[test]
    fn the_direct_parse_decides_as_the_value_parse() {
        use serde_json::json;
        let good = sample_event().to_json();
        let mut texts = vec![good.clone()];
        let v: Value = serde_json::from_str(&good).unwrap();
        let mut edit = |f: &dyn Fn(&mut Value)| {
            let mut v = v.clone();
            f(&mut v);
            texts.push(v.to_string());
        };
        edit(&|v| v["data"]["attempt"] = json!(0));
        edit(&|v| v["data"]["attempt"] = json!("1"));
        edit(&|v| v["data"]["image"]["digest"] = json!("sha256:short"));
        edit(&|v| v["data"]["changed"] = json!(null));
        edit(&|v| v["data"]["extra"] = json!({"nested": [1, 2]}));
        edit(&|v| v["data"] = json!([]));
        edit(&|v| v["data"] = json!("text"));
        edit(&|v| v["type"] = json!("approval.granted"));
        edit(&|v| v["specversion"] = json!("0.3"));
        edit(&|v| {
            v.as_object_mut().unwrap().remove("data");
        });
        // A key twice: in the data a `Value` keeps the last where a struct refuses, so
        // the event is read the `Value` way; in the envelope both refuse.
        texts.push(good.replacen("\"changed\":true", "\"changed\":false,\"changed\":true", 1));
        texts.push(good.replacen("{\"specversion\"", "{\"id\":\"x\",\"specversion\"", 1));
        for text in &texts {
            let slow = Event::from_json_naming_fields(text).map_err(|e| e.to_string());
            let fast = Event::from_json(text).map_err(|e| e.to_string());
            match (&fast, &slow) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{text}"),
                (Err(_), Err(_)) => {}
                _ => panic!("{text}: from_json {fast:?}, through a Value {slow:?}"),
            }
        }
        assert!(Event::from_json(&texts[0]).is_ok());
        assert!(Event::from_json(&texts[1]).is_err());
        assert!(
            Event::from_json(&texts[11]).is_ok(),
            "the last `changed` counts"
        );
    }

    #[test]
    fn round_trips_through_json() {
        let e = sample_event();
        let back = Event::from_json(&e.to_json()).unwrap();
        assert_eq!(back, e);
        let v: Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["type"], "deploy.succeeded");
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["data"]["image"]["digest"], e.ctx().image.digest.as_str());
        assert_eq!(v["dataschema"], "urn:baton:events:v1:deploy.succeeded");
    }

    #[test]
    fn reference_is_digest_pinned() {
        let ctx = sample_ctx();
        assert_eq!(
            ctx.image.reference(),
            format!("localhost:5000/team/web@sha256:{}", "a".repeat(64))
        );
    }

    fn mutate(f: impl FnOnce(&mut Value)) -> String {
        let mut v: Value = serde_json::from_str(&sample_event().to_json()).unwrap();
        f(&mut v);
        match Event::from_value(v) {
            Ok(_) => panic!("malformed event was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn malformed_events_name_the_field() {
        let e = mutate(|v| v["data"]["image"]["digest"] = "sha256:xyz".into());
        assert!(e.contains("data.image.digest"), "{e}");
        let e = mutate(|v| {
            v["data"].as_object_mut().unwrap().remove("run");
        });
        assert!(e.contains("run"), "{e}");
        let e = mutate(|v| v["type"] = "image.exploded".into());
        assert!(e.contains("type") && e.contains("image.exploded"), "{e}");
        let e = mutate(|v| v["specversion"] = "0.3".into());
        assert!(e.contains("specversion"), "{e}");
        let e = mutate(|v| v["data"]["attempt"] = "one".into());
        assert!(e.contains("data.attempt"), "{e}");
        let e = mutate(|v| {
            v["data"].as_object_mut().unwrap().remove("environment");
        });
        assert!(e.contains("data.environment"), "{e}");
        let e = mutate(|v| {
            v.as_object_mut().unwrap().remove("id");
        });
        assert!(e.contains("id"), "{e}");
        let e = mutate(|v| v["data"]["image"]["colour"] = "red".into());
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn attributes_carry_filter_keys() {
        let a = sample_event().attributes();
        assert_eq!(a["type"], AttrValue::String("deploy.succeeded".into()));
        assert_eq!(a["app"], AttrValue::String("web".into()));
        assert_eq!(a["environment"], AttrValue::String("staging".into()));
        assert_eq!(a["attempt"], AttrValue::Number(1.0));
    }

    #[test]
    fn hostile_image_parts_are_refused_naming_the_field() {
        let e = mutate(|v| v["data"]["image"]["registry"] = "evil\nprivileged: true".into());
        assert!(
            e.contains("data.image.registry") && e.contains("registry host"),
            "{e}"
        );
        let e = mutate(|v| v["data"]["image"]["tag"] = "x".repeat(200_000).into());
        assert!(e.contains("data.image.tag") && e.len() < 400, "{e}");
        let e = mutate(|v| v["data"]["image"]["repository"] = "../../etc".into());
        assert!(e.contains("data.image.repository"), "{e}");
        let e = mutate(|v| v["data"]["app"] = "../web".into());
        assert!(e.contains("data.app"), "{e}");
        let e = mutate(|v| v["data"]["run"] = "../../approvals".into());
        assert!(e.contains("data.run"), "{e}");
        let e = mutate(|v| v["data"]["environment"] = "prod/../x".into());
        assert!(e.contains("data.environment"), "{e}");
    }
}
