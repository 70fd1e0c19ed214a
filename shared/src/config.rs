//! The pipeline configuration file (`baton.yaml`): apps, tag policies, ordered
//! environments with approval policies and deploy targets, the test runner, reactions
//! and bus settings. Validated at load; every error names the field (`apps[0].tags`)
//! and says what is allowed. The commented reference is `examples/baton.yaml`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::policy::{FilterPolicy, TagPolicy, TagPolicySpec};

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Format version; only `1` exists.
    #[serde(default = "default_version")]
    pub version: u32,
    /// Named groups of approvers: `release-managers: [alice, bob]`.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    /// The apps Baton deploys. A push starts a run only for a configured repository.
    pub apps: Vec<AppConfig>,
    /// Reactions: notifications attached to events by filter policy.
    #[serde(default)]
    pub reactions: Vec<ReactionConfig>,
    /// Retry settings of the embedded bus.
    #[serde(default)]
    pub bus: BusConfig,
    /// Registries Baton talks to over the distribution HTTP API (resolve, retag).
    /// Images on other hosts use the embedded registry.
    #[serde(default)]
    pub registries: Vec<RegistryConfig>,
    /// `baton serve`: webhooks, approvals and status over HTTP.
    #[serde(default)]
    pub serve: ServeConfig,
    /// Kubernetes clusters the `kubernetes` deploy target and `kubernetes_job` test
    /// runner use, by name.
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
    /// Directory relative paths in this file are resolved against.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

fn default_version() -> u32 {
    1
}

/// One app: a repository, which of its tags start runs, how to test, where to deploy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// Lowercase letters, digits and dashes; part of store keys and run subjects.
    pub name: String,
    /// Registry host the pushes must come from; any host when absent.
    #[serde(default)]
    pub registry: Option<crate::reference::RegistryHost>,
    /// Repository path in the registry (`team/web`), without tag or digest.
    pub repository: crate::reference::Repository,
    /// Which pushed tags start a run: `{semver: ">=1.0.0"}`, `{glob: "release-*"}` or
    /// `{regex: "v[0-9]+"}`.
    pub tags: TagPolicySpec,
    /// How the image is tested, once per image, before the first environment.
    pub test: TestConfig,
    /// Environments in promotion order (e.g. staging, then production).
    pub environments: Vec<EnvironmentConfig>,
}

/// Test runners.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TestConfig {
    /// Run a local command with the image reference in its environment.
    Command(CommandTest),
    /// Run the image, pinned by digest, as a Kubernetes Job in a test namespace.
    KubernetesJob(KubeJobTest),
    /// Invoke a test Lambda function with the image reference.
    Lambda(LambdaTest),
}

/// The `lambda` test runner.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LambdaTest {
    /// Name or ARN of the test function; it answers `{"passed": bool, "summary", "output"}`.
    pub function: String,
}

/// The `lambda` deploy target.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LambdaDeploy {
    /// Name or ARN of the function whose image is updated.
    pub function: String,
    /// The alias moved to the published version (rollback moves it back).
    #[serde(default = "default_alias")]
    pub alias: String,
    /// How long the code update may take.
    #[serde(default = "default_lambda_timeout", with = "duration")]
    pub timeout: Duration,
    #[serde(default = "default_lambda_poll", with = "duration")]
    pub poll: Duration,
    /// Shift traffic to the new version gradually instead of at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficShift>,
}

/// A gradual shift of an alias's traffic to a new version (Lambda weighted aliases).
/// While it runs, the deploy stage checks back at each step; a rollback, or a failed
/// rollout with `rollback_on_failure`, puts all traffic back on the previous version.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TrafficShift {
    /// `percent` of the traffic for `wait`, then all of it.
    Canary {
        percent: u8,
        #[serde(with = "duration")]
        wait: Duration,
    },
    /// `step` more percent every `every`, until all of it.
    Linear {
        step: u8,
        #[serde(with = "duration")]
        every: Duration,
    },
}

impl TrafficShift {
    /// The share of traffic (percent) the new version gets first.
    pub fn first(&self) -> u8 {
        match *self {
            TrafficShift::Canary { percent, .. } => percent,
            TrafficShift::Linear { step, .. } => step,
        }
    }

    /// The share (percent) after `current`; 100 ends the shift.
    pub fn next(&self, current: u8) -> u8 {
        match *self {
            TrafficShift::Canary { .. } => 100,
            TrafficShift::Linear { step, .. } => current.saturating_add(step).min(100),
        }
    }

    /// How long each share is held before the next.
    pub fn hold(&self) -> Duration {
        match *self {
            TrafficShift::Canary { wait, .. } => wait,
            TrafficShift::Linear { every, .. } => every,
        }
    }
}

fn default_alias() -> String {
    "live".into()
}
fn default_lambda_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_lambda_poll() -> Duration {
    Duration::from_secs(2)
}

impl TestConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            TestConfig::Command(_) => "command",
            TestConfig::KubernetesJob(_) => "kubernetes-job",
            TestConfig::Lambda(_) => "lambda",
        }
    }
}

/// The `kubernetes_job` test runner.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeJobTest {
    /// A name from `clusters:`.
    pub cluster: String,
    /// The test namespace (never a production one).
    pub namespace: String,
    /// Entrypoint override; the image's own when empty.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment (no secrets). `BATON_IMAGE`, `BATON_RUN`, … are always set.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `requests` and `limits` (`cpu: 500m`, `memory: 256Mi`).
    #[serde(default)]
    pub resources: Resources,
    /// `activeDeadlineSeconds` of the Job.
    #[serde(default = "default_test_timeout", with = "duration")]
    pub deadline: Duration,
    /// `ttlSecondsAfterFinished`: the cluster deletes the Job this long after it ends.
    #[serde(default = "default_job_ttl", with = "duration")]
    pub ttl: Duration,
    /// How often the Job is checked.
    #[serde(default = "default_poll", with = "duration")]
    pub poll: Duration,
    #[serde(default)]
    pub service_account: Option<String>,
    /// Mount the service account's API token in the test pod. Off by default: pushed
    /// code gets no credentials for the cluster.
    #[serde(default)]
    pub automount_service_account_token: bool,
    /// `securityContext` of the pod and of the test container. When absent, the
    /// restricted profile: non-root, no privilege escalation, every capability dropped,
    /// the runtime's default seccomp profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<Box<SecurityContexts>>,
}

/// The pod's and the test container's `securityContext`, as Kubernetes spells them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityContexts {
    #[serde(default)]
    pub pod: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub container: serde_json::Map<String, serde_json::Value>,
}

impl SecurityContexts {
    /// Kubernetes' "restricted" Pod Security Standard.
    pub fn restricted() -> SecurityContexts {
        let map = |v: serde_json::Value| match v {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        SecurityContexts {
            pod: map(serde_json::json!({
                "runAsNonRoot": true,
                "seccompProfile": { "type": "RuntimeDefault" },
            })),
            container: map(serde_json::json!({
                "allowPrivilegeEscalation": false,
                "capabilities": { "drop": ["ALL"] },
                "runAsNonRoot": true,
                "seccompProfile": { "type": "RuntimeDefault" },
            })),
        }
    }
}

/// Container resources.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub requests: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
}

fn default_job_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_poll() -> Duration {
    Duration::from_secs(5)
}
fn default_rollout_timeout() -> Duration {
    Duration::from_secs(15 * 60)
}

/// A Kubernetes cluster and how to reach it: exactly one of `kubeconfig`,
/// `in_cluster`, `eks` or `url`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub name: String,
    /// A kubeconfig file (`path`, default `$KUBECONFIG` or `~/.kube/config`) and context.
    #[serde(default)]
    pub kubeconfig: Option<KubeconfigAccess>,
    /// The pod's service account (Baton running inside the cluster).
    #[serde(default)]
    pub in_cluster: Option<InCluster>,
    /// EKS from a Lambda: a bearer token presigned with the function's own AWS
    /// credentials; endpoint and CA from here.
    #[serde(default)]
    pub eks: Option<EksAccess>,
    /// A plain API URL without credentials (`kubectl proxy`, test servers).
    #[serde(default)]
    pub url: Option<String>,
}

/// Kubeconfig access.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeconfigAccess {
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub context: Option<String>,
}

/// In-cluster access (no settings).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InCluster {}

/// EKS access.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EksAccess {
    /// The EKS cluster name (signed into the token).
    pub cluster: String,
    pub region: String,
    /// The API server endpoint (`https://….eks.amazonaws.com`).
    pub endpoint: String,
    /// The cluster CA, base64 of the PEM, as in kubeconfig `certificate-authority-data`.
    pub ca_data: String,
}

/// The `command` test runner.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandTest {
    /// Program and arguments, e.g. `["sh", "-c", "make smoke"]`.
    pub run: Vec<String>,
    /// Kill the command and fail the tests after this long.
    #[serde(default = "default_test_timeout", with = "duration")]
    pub timeout: Duration,
    /// Extra environment variables (no secrets: use the process environment for those).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory, relative to this file; the file's directory when absent.
    #[serde(default)]
    pub workdir: Option<PathBuf>,
}

fn default_test_timeout() -> Duration {
    Duration::from_secs(600)
}

/// One environment of an app.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentConfig {
    pub name: String,
    /// `auto`, or `{approvers, groups, required, expires_after, allow_self_approval}`.
    pub approval: ApprovalPolicy,
    /// Where and how the image is deployed.
    pub deploy: DeployConfig,
    /// Retag the image with `promote_tag` after a successful deploy.
    #[serde(default = "yes")]
    pub promote: bool,
    /// The tag promote writes; the environment's name when absent.
    #[serde(default)]
    pub promote_tag: Option<crate::reference::Tag>,
    /// Put the previous image back when a deploy fails after changing the target.
    #[serde(default = "yes")]
    pub rollback_on_failure: bool,
}

fn yes() -> bool {
    true
}

impl EnvironmentConfig {
    /// The tag promote writes. An environment name (a DNS label, checked at load) is
    /// always a valid tag.
    pub fn promote_tag(&self) -> Result<crate::reference::Tag> {
        match &self.promote_tag {
            Some(t) => Ok(t.clone()),
            None => self.name.parse().map_err(|e| {
                Error::invalid(
                    format!("environment {}", self.name),
                    format!("promote tag: {e}"),
                )
            }),
        }
    }
}

/// Who must approve a deploy to an environment.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ApprovalPolicy {
    /// `approval: auto`: approved as soon as it is requested.
    #[serde(serialize_with = "auto_str")]
    Auto,
    Manual(ManualApproval),
}

fn auto_str<S: serde::Serializer>(s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str("auto")
}

impl<'de> Deserialize<'de> for ApprovalPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ApprovalPolicy;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"auto\" or a map with approvers, groups, required, expires_after")
            }
            fn visit_str<E: serde::de::Error>(
                self,
                v: &str,
            ) -> std::result::Result<Self::Value, E> {
                if v == "auto" {
                    Ok(ApprovalPolicy::Auto)
                } else {
                    Err(E::custom(format!(
                        "{v:?} is not an approval policy (allowed: \"auto\", or a map with approvers/groups)"
                    )))
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                ManualApproval::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(ApprovalPolicy::Manual)
            }
        }
        d.deserialize_any(V)
    }
}

/// A manual approval policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManualApproval {
    /// Approvers allowed by name.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Groups (from `groups:`) whose members may approve.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Distinct approvals needed (N of M).
    #[serde(default = "one")]
    pub required: u32,
    /// The request expires after this long (`24h`, `30m`).
    #[serde(default = "default_expiry", with = "duration")]
    pub expires_after: Duration,
    /// Let the person who pushed the image approve it. Off by default.
    #[serde(default)]
    pub allow_self_approval: bool,
    /// When the source did not say who pushed (ECR's image action, Quay), the
    /// no-self-approval rule cannot be checked: `refuse` (the default) takes no
    /// approval; `allow` takes them and records that the check was not made.
    #[serde(default)]
    pub unknown_pusher: crate::policy::approval::UnknownPusher,
}

fn one() -> u32 {
    1
}
fn default_expiry() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// Deploy targets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DeployConfig {
    /// Rewrite image references in Kubernetes YAML manifests in a directory (GitOps).
    Manifest(ManifestDeploy),
    /// Patch workloads in a cluster and follow their rollout.
    Kubernetes(KubeDeploy),
    /// Update a Lambda function's image, publish a version, move an alias.
    Lambda(LambdaDeploy),
}

impl DeployConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            DeployConfig::Manifest(_) => "manifest",
            DeployConfig::Kubernetes(_) => "kubernetes",
            DeployConfig::Lambda(_) => "lambda",
        }
    }
}

/// The `kubernetes` deploy target.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeDeploy {
    /// A name from `clusters:`.
    pub cluster: String,
    pub namespace: String,
    /// The workloads and containers whose image Baton sets.
    pub workloads: Vec<WorkloadRef>,
    /// Baton's own limit on a rollout, besides the Deployment's progress deadline.
    #[serde(default = "default_rollout_timeout", with = "duration")]
    pub timeout: Duration,
    /// How often the rollout is checked.
    #[serde(default = "default_poll", with = "duration")]
    pub poll: Duration,
}

/// The `manifest` deploy target.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestDeploy {
    /// Directory of `.yaml`/`.yml` manifests, relative to this file.
    pub dir: PathBuf,
    /// The workloads and containers whose image Baton sets.
    pub workloads: Vec<WorkloadRef>,
}

/// A container of a workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadRef {
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    #[serde(default = "deployment")]
    pub kind: String,
    pub name: String,
    /// The container whose image is set.
    pub container: String,
    /// Namespace, when manifests declare several.
    #[serde(default)]
    pub namespace: Option<String>,
}

fn deployment() -> String {
    "Deployment".into()
}

/// The workload kinds whose pod template Baton knows how to edit.
pub const WORKLOAD_KINDS: [&str; 3] = ["Deployment", "StatefulSet", "DaemonSet"];

/// A reaction: a notification attached to events by a filter policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReactionConfig {
    pub name: String,
    /// SNS filter policy on the attributes `type`, `app`, `environment`, `attempt`.
    pub on: FilterPolicy,
    pub notify: NotifyConfig,
}

/// Where a reaction sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum NotifyConfig {
    /// POST the event as JSON to a URL (Slack-compatible `text` field included).
    Webhook(WebhookConfig),
    /// Append one line per event to a file under the state directory.
    Log(LogConfig),
}

/// A webhook: the URL inline (not secret) or the name of the variable holding it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    #[serde(default)]
    pub url: Option<String>,
    /// Environment variable holding the URL (Slack URLs are secrets).
    #[serde(default)]
    pub url_env: Option<String>,
    #[serde(default = "default_webhook_timeout", with = "duration")]
    pub timeout: Duration,
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(10)
}

/// A log file reaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// File name under the state directory.
    #[serde(default = "default_log_path")]
    pub path: PathBuf,
}

fn default_log_path() -> PathBuf {
    PathBuf::from("notifications.log")
}

/// A registry reached over the distribution HTTP API v2.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// The host images name (`localhost:5000`, `docker.io`, `ghcr.io`).
    pub host: crate::reference::RegistryHost,
    /// API base URL; `https://<host>` when absent.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub auth: RegistryAuth,
    /// Token services (`https://auth.example.com`, origins only) besides https on the
    /// registry's own host that may receive the basic credentials when a registry's
    /// bearer challenge names them. Any other realm gets an anonymous token request.
    #[serde(default)]
    pub token_realms: Vec<String>,
}

impl RegistryConfig {
    pub fn base_url(&self) -> String {
        self.url
            .clone()
            .unwrap_or_else(|| format!("https://{}", self.host))
    }
}

/// Registry credentials; secrets come from the environment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RegistryAuth {
    #[default]
    None,
    /// Basic auth (also used to fetch bearer tokens when the registry asks for them).
    Basic {
        username: String,
        password_env: String,
    },
    /// A static bearer token.
    Bearer { token_env: String },
}

/// `baton serve` settings (webhooks and approvers also serve the AWS function URLs).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// URL users reach Baton at (approval links); `http://<listen>` when absent.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Webhook endpoints, one per registry source: `POST /hooks/<name>`.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfigEntry>,
    /// Approvers: a bearer token from the environment (`baton serve`) and/or IAM
    /// principals (the approve function URL on AWS).
    #[serde(default)]
    pub approvers: BTreeMap<String, ApproverIdentity>,
    /// Readers who may see runs over HTTP (`GET /runs`) without being approvers, each
    /// with a bearer token from the environment.
    #[serde(default)]
    pub readers: BTreeMap<String, ReaderToken>,
    /// A reverse proxy that authenticates approvers and names them in a header. The
    /// header is believed only on requests that also carry the proxy's shared secret.
    #[serde(default)]
    pub trusted_proxy: Option<TrustedProxy>,
    /// Replaced by `trusted_proxy`: a bare identity header can be forged by any local
    /// process. Refused at load with what to write instead.
    #[serde(default, skip_serializing)]
    pub identity_header: Option<String>,
    /// Most connections served at once; more wait in the listen queue.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, and then its body.
    #[serde(default = "default_request_timeout", with = "duration")]
    pub request_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: default_listen(),
            public_url: None,
            webhooks: vec![],
            approvers: BTreeMap::new(),
            readers: BTreeMap::new(),
            trusted_proxy: None,
            identity_header: None,
            max_connections: default_max_connections(),
            request_timeout: default_request_timeout(),
        }
    }
}

fn default_max_connections() -> usize {
    256
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}

impl ServeConfig {
    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
            .trim_end_matches('/')
            .to_string()
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

/// Whether `addr` (an `ip:port`) listens on loopback only.
pub fn is_loopback_listen(addr: &str) -> bool {
    addr.parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback())
}

/// A webhook endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfigEntry {
    /// Path segment: the endpoint is `POST /hooks/<name>`.
    pub name: String,
    /// `distribution`, `dockerhub`, `harbor`, `ghcr` or `quay`.
    pub source: crate::triggers::TriggerKind,
    /// How requests prove they come from the registry.
    pub auth: WebhookAuth,
}

/// Webhook authentication. Each source has its documented one: distribution sends
/// configured headers, Harbor an auth header, GitHub an HMAC signature, Quay basic auth
/// in the URL, Docker Hub only the URL (so a token in the query).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum WebhookAuth {
    /// A header whose whole value must equal the secret (e.g. `Authorization`,
    /// value `Bearer <secret>`).
    Header { name: String, secret_env: String },
    /// HMAC-SHA256 of the body, hex, in a header (`X-Hub-Signature-256: sha256=<hex>`).
    Hmac {
        #[serde(default = "default_hmac_header")]
        header: String,
        secret_env: String,
    },
    /// HTTP basic auth.
    Basic {
        username: String,
        password_env: String,
    },
    /// A token in the query string (`?token=<secret>`).
    QueryToken {
        #[serde(default = "default_token_param")]
        param: String,
        secret_env: String,
    },
    /// No authentication: refused unless `baton serve` listens on loopback only, and
    /// never accepted by the ingest function URL.
    None,
}

fn default_hmac_header() -> String {
    "X-Hub-Signature-256".into()
}
fn default_token_param() -> String {
    "token".into()
}

/// How an approver authenticates: a bearer token for `baton serve`, IAM principals for
/// the approve function URL. At least one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproverIdentity {
    /// Environment variable holding the approver's bearer token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// IAM principals that are this approver: user ARNs, or `{role, session}` where the
    /// role's trust policy enforces the session name.
    #[serde(default)]
    pub iam: Vec<crate::identity::IamPrincipal>,
}

/// A reader's bearer token, from the environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReaderToken {
    pub token_env: String,
}

/// A reverse proxy (oauth2-proxy, an SSO gateway) that authenticates approvers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedProxy {
    /// The header naming the authenticated user (`X-Forwarded-User`).
    pub user_header: String,
    /// The header carrying the shared secret the proxy adds to every request.
    #[serde(default = "default_proxy_secret_header")]
    pub secret_header: String,
    /// Environment variable holding that secret.
    pub secret_env: String,
}

fn default_proxy_secret_header() -> String {
    "X-Baton-Proxy-Secret".into()
}

/// Reads a secret from the environment: missing, or set but empty, is an error naming
/// the variable and the field; shorter than 16 bytes is a warning. Never logged.
pub fn secret_env(var: &str, field: &str) -> Result<String> {
    match std::env::var(var) {
        Err(_) => Err(Error::invalid(
            field.to_string(),
            format!("environment variable {var} is not set"),
        )),
        Ok(v) if v.trim().is_empty() => Err(Error::invalid(
            field.to_string(),
            format!(
                "environment variable {var} is set but empty; an empty secret would let anyone in"
            ),
        )),
        Ok(v) => {
            if v.len() < 16 {
                tracing::warn!(variable = %var, %field, bytes = v.len(),
                    "this secret is shorter than 16 bytes; use a long random value");
            }
            Ok(v)
        }
    }
}

/// Retry settings of the embedded bus (SQS's redrive policy in AWS).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// Deliveries before a message goes to the dead-letter list.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt.
    #[serde(default = "default_initial_backoff", with = "duration")]
    pub initial_backoff: Duration,
    /// Upper bound of the retry delay.
    #[serde(default = "default_max_backoff", with = "duration")]
    pub max_backoff: Duration,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            max_attempts: default_attempts(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

fn default_attempts() -> u32 {
    5
}
fn default_initial_backoff() -> Duration {
    Duration::from_millis(200)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}

/// `"10m"`, `"24h"`, `"500ms"` as [`Duration`].
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not a duration ({e}); e.g. \"30s\", \"10m\", \"24h\""
            ))
        })
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid(
                "configuration",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        Config::from_yaml(&text, &base, &path.display().to_string())
    }

    /// Parses and validates configuration text; `origin` names it in errors.
    pub fn from_yaml(text: &str, base_dir: &Path, origin: &str) -> Result<Config> {
        // YAML → JSON value first: enums read as plain maps (`tags: {semver: …}`) and
        // errors carry the field path.
        let value: serde_json::Value = serde_yaml_ng::from_str(text).map_err(|e| {
            Error::invalid(
                format!("configuration {origin}"),
                format!("not valid YAML: {e}"),
            )
        })?;
        if value.is_null() {
            return Err(Error::invalid(
                format!("configuration {origin}"),
                "the file is empty",
            ));
        }
        let mut cfg: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.inner().to_string();
            let reason = if path == "." {
                inner
            } else {
                format!("{path}: {inner}")
            };
            Error::invalid(format!("configuration {origin}"), reason)
        })?;
        cfg.base_dir = base_dir.to_path_buf();
        let problems = cfg.problems();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(Error::invalid(
                format!("configuration {origin}"),
                problems.join("; "),
            ))
        }
    }

    /// Every semantic problem, each prefixed by the field it is about.
    pub fn problems(&self) -> Vec<String> {
        let mut p = vec![];
        if self.version != 1 {
            p.push(format!(
                "version: {} is not supported (allowed: 1)",
                self.version
            ));
        }
        for (g, members) in &self.groups {
            if members.is_empty() {
                p.push(format!("groups.{g}: a group needs at least one member"));
            }
        }
        if self.apps.is_empty() {
            p.push("apps: at least one app is required".into());
        }
        let mut names = BTreeSet::new();
        let mut repos = BTreeSet::new();
        for (i, app) in self.apps.iter().enumerate() {
            let at = format!("apps[{i}]");
            if !is_dns_label(&app.name) {
                p.push(format!(
                    "{at}.name: {:?} must be lowercase letters, digits and dashes (at most 63)",
                    app.name
                ));
            }
            if !names.insert(app.name.clone()) {
                p.push(format!("{at}.name: {:?} is declared twice", app.name));
            }
            if !repos.insert((app.registry.clone(), app.repository.clone())) {
                p.push(format!(
                    "{at}.repository: {:?} is already used by another app",
                    app.repository
                ));
            }
            if let Err(e) = TagPolicy::compile(&app.tags) {
                let key = match app.tags {
                    TagPolicySpec::Semver(_) => "semver",
                    TagPolicySpec::Glob(_) => "glob",
                    TagPolicySpec::Regex(_) => "regex",
                };
                p.push(format!("{at}.tags.{key}: {e}"));
            }
            match &app.test {
                TestConfig::Command(c) => {
                    if c.run.is_empty() || c.run[0].is_empty() {
                        p.push(format!("{at}.test.command.run: needs a program, e.g. [\"sh\", \"-c\", \"make test\"]"));
                    }
                    if c.timeout.is_zero() {
                        p.push(format!("{at}.test.command.timeout: must be more than 0"));
                    }
                }
                TestConfig::Lambda(l) => {
                    if l.function.is_empty() {
                        p.push(format!("{at}.test.lambda.function: name the test function"));
                    }
                }
                TestConfig::KubernetesJob(j) => {
                    let at = format!("{at}.test.kubernetes_job");
                    self.check_cluster_ref(&format!("{at}.cluster"), &j.cluster, &mut p);
                    if !is_dns_label(&j.namespace) {
                        p.push(format!(
                            "{at}.namespace: {:?} is not a namespace name",
                            j.namespace
                        ));
                    }
                    if j.deadline.is_zero() || j.poll.is_zero() {
                        p.push(format!("{at}: deadline and poll must be more than 0"));
                    }
                }
            }
            if app.environments.is_empty() {
                p.push(format!(
                    "{at}.environments: at least one environment is required"
                ));
            }
            let mut envs = BTreeSet::new();
            for (j, env) in app.environments.iter().enumerate() {
                let at = format!("{at}.environments[{j}]");
                if !is_dns_label(&env.name) {
                    p.push(format!(
                        "{at}.name: {:?} must be lowercase letters, digits and dashes",
                        env.name
                    ));
                }
                if !envs.insert(env.name.clone()) {
                    p.push(format!("{at}.name: {:?} is declared twice", env.name));
                }
                if let ApprovalPolicy::Manual(m) = &env.approval {
                    self.check_manual(&format!("{at}.approval"), m, &mut p);
                }
                match &env.deploy {
                    DeployConfig::Lambda(l) => {
                        if l.function.is_empty() || l.alias.is_empty() {
                            p.push(format!(
                                "{at}.deploy.lambda: function and alias must not be empty"
                            ));
                        }
                        let share = match l.traffic {
                            Some(TrafficShift::Canary { percent, .. }) => {
                                Some(("canary.percent", percent))
                            }
                            Some(TrafficShift::Linear { step, .. }) => Some(("linear.step", step)),
                            None => None,
                        };
                        if let Some((field, n)) = share
                            && !(1..=99).contains(&n)
                        {
                            p.push(format!(
                                "{at}.deploy.lambda.traffic.{field}: {n} is not between 1 and 99"
                            ));
                        }
                    }
                    DeployConfig::Kubernetes(k) => {
                        let at = format!("{at}.deploy.kubernetes");
                        self.check_cluster_ref(&format!("{at}.cluster"), &k.cluster, &mut p);
                        if !is_dns_label(&k.namespace) {
                            p.push(format!(
                                "{at}.namespace: {:?} is not a namespace name",
                                k.namespace
                            ));
                        }
                        if k.workloads.is_empty() {
                            p.push(format!("{at}.workloads: name at least one workload"));
                        }
                        for (n, w) in k.workloads.iter().enumerate() {
                            check_workload(&format!("{at}.workloads[{n}]"), w, &mut p);
                            if w.namespace.as_ref().is_some_and(|ns| ns != &k.namespace) {
                                p.push(format!(
                                    "{at}.workloads[{n}].namespace: the target's namespace is {}",
                                    k.namespace
                                ));
                            }
                        }
                        if k.timeout.is_zero() || k.poll.is_zero() {
                            p.push(format!("{at}: timeout and poll must be more than 0"));
                        }
                    }
                    DeployConfig::Manifest(m) => {
                        if m.dir.as_os_str().is_empty() {
                            p.push(format!("{at}.deploy.manifest.dir: must name a directory"));
                        }
                        if m.workloads.is_empty() {
                            p.push(format!(
                                "{at}.deploy.manifest.workloads: name at least one workload"
                            ));
                        }
                        for (k, w) in m.workloads.iter().enumerate() {
                            check_workload(
                                &format!("{at}.deploy.manifest.workloads[{k}]"),
                                w,
                                &mut p,
                            );
                        }
                    }
                }
            }
        }
        let mut reactions = BTreeSet::new();
        for (i, r) in self.reactions.iter().enumerate() {
            let at = format!("reactions[{i}]");
            if !is_dns_label(&r.name) {
                p.push(format!(
                    "{at}.name: {:?} must be lowercase letters, digits and dashes",
                    r.name
                ));
            }
            if !reactions.insert(r.name.clone()) {
                p.push(format!("{at}.name: {:?} is declared twice", r.name));
            }
            if let NotifyConfig::Webhook(w) = &r.notify {
                match (&w.url, &w.url_env) {
                    (Some(_), Some(_)) | (None, None) => p.push(format!(
                        "{at}.notify.webhook: set exactly one of url or url_env"
                    )),
                    (Some(u), None) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                        p.push(format!(
                            "{at}.notify.webhook.url: {u:?} must be an http(s) URL"
                        ))
                    }
                    (None, Some(v)) if v.is_empty() => {
                        p.push(format!("{at}.notify.webhook.url_env: must name a variable"))
                    }
                    _ => {}
                }
            }
        }
        if self.bus.max_attempts == 0 {
            p.push("bus.max_attempts: must be at least 1".into());
        }
        let mut clusters = BTreeSet::new();
        for (i, c) in self.clusters.iter().enumerate() {
            let at = format!("clusters[{i}]");
            if !clusters.insert(c.name.clone()) {
                p.push(format!("{at}.name: {:?} is declared twice", c.name));
            }
            let ways = [
                c.kubeconfig.is_some(),
                c.in_cluster.is_some(),
                c.eks.is_some(),
                c.url.is_some(),
            ]
            .iter()
            .filter(|x| **x)
            .count();
            if ways != 1 {
                p.push(format!(
                    "{at}: set exactly one of kubeconfig, in_cluster, eks, url"
                ));
            }
            if let Some(u) = &c.url
                && !(u.starts_with("http://") || u.starts_with("https://"))
            {
                p.push(format!("{at}.url: {u:?} must be an http(s) URL"));
            }
            if let Some(e) = &c.eks {
                if !e.endpoint.starts_with("https://") {
                    p.push(format!(
                        "{at}.eks.endpoint: {:?} must be an https URL",
                        e.endpoint
                    ));
                }
                if e.cluster.is_empty() || e.region.is_empty() || e.ca_data.is_empty() {
                    p.push(format!(
                        "{at}.eks: cluster, region and ca_data are required"
                    ));
                }
            }
        }
        let mut hosts = BTreeSet::new();
        for (i, r) in self.registries.iter().enumerate() {
            if !hosts.insert(r.host.clone()) {
                p.push(format!(
                    "registries[{i}].host: {:?} is declared twice",
                    r.host
                ));
            }
            if let Some(u) = &r.url
                && !(u.starts_with("http://") || u.starts_with("https://"))
            {
                p.push(format!("registries[{i}].url: {u:?} must be an http(s) URL"));
            }
            for (j, o) in r.token_realms.iter().enumerate() {
                let origin = reqwest::Url::parse(o)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                    .map(|u| u.origin().ascii_serialization());
                if origin.as_deref() != Some(o.trim_end_matches('/')) {
                    p.push(format!(
                        "registries[{i}].token_realms[{j}]: {o:?} must be an origin like https://auth.example.com (scheme, host and port only)"
                    ));
                }
            }
        }
        if self.serve.listen.parse::<std::net::SocketAddr>().is_err() {
            p.push(format!(
                "serve.listen: {:?} must be an address like 127.0.0.1:8080",
                self.serve.listen
            ));
        }
        let mut hooks = BTreeSet::new();
        for (i, w) in self.serve.webhooks.iter().enumerate() {
            if !is_dns_label(&w.name) {
                p.push(format!(
                    "serve.webhooks[{i}].name: {:?} must be lowercase letters, digits and dashes",
                    w.name
                ));
            }
            if !hooks.insert(w.name.clone()) {
                p.push(format!(
                    "serve.webhooks[{i}].name: {:?} is declared twice",
                    w.name
                ));
            }
            if w.source == crate::triggers::TriggerKind::Ecr {
                p.push(format!(
                    "serve.webhooks[{i}].source: ecr pushes arrive through EventBridge, not a webhook (allowed: distribution, dockerhub, harbor, ghcr, quay)"
                ));
            }
        }
        let loopback = is_loopback_listen(&self.serve.listen);
        for (i, w) in self.serve.webhooks.iter().enumerate() {
            if w.auth == WebhookAuth::None && !loopback {
                p.push(format!(
                    "serve.webhooks[{i}].auth: none is allowed only when serve.listen is a loopback address (it is {}); anyone who reaches the port could start runs",
                    self.serve.listen
                ));
            }
        }
        let mut principals: BTreeMap<String, &str> = BTreeMap::new();
        for (who, id) in &self.serve.approvers {
            let at = format!("serve.approvers.{who}");
            if !crate::ids::is_label(who, 128) || who.trim() != who {
                p.push(format!("{at}: {who:?} is not an approver name"));
            }
            if id.token_env.is_none() && id.iam.is_empty() {
                p.push(format!(
                    "{at}: give token_env (baton serve) or iam (the AWS approve URL)"
                ));
            }
            for (k, principal) in id.iam.iter().enumerate() {
                if let Some(why) = principal.problem() {
                    p.push(format!("{at}.iam[{k}]: {why}"));
                }
                let key = serde_json::to_string(principal).unwrap_or_default();
                if let Some(other) = principals.insert(key, who) {
                    p.push(format!("{at}.iam[{k}]: already maps to approver {other}"));
                }
            }
        }
        for who in self.serve.readers.keys() {
            if !crate::ids::is_label(who, 128) {
                p.push(format!("serve.readers.{who}: not a reader name"));
            }
        }
        if self.serve.identity_header.is_some() {
            p.push(
                "serve.identity_header: no longer honoured, since any local process could send it; use serve.trusted_proxy: {user_header: X-Forwarded-User, secret_env: BATON_PROXY_SECRET} and have the proxy send the secret in X-Baton-Proxy-Secret".into(),
            );
        }
        if let Some(tp) = &self.serve.trusted_proxy
            && (tp.user_header.is_empty()
                || tp.secret_header.is_empty()
                || tp.secret_env.is_empty())
        {
            p.push(
                "serve.trusted_proxy: user_header, secret_header and secret_env must not be empty"
                    .into(),
            );
        }
        if self.serve.max_connections == 0 {
            p.push("serve.max_connections: must be at least 1".into());
        }
        if self.serve.request_timeout.is_zero() {
            p.push("serve.request_timeout: must be more than 0".into());
        }
        p
    }

    fn check_manual(&self, at: &str, m: &ManualApproval, p: &mut Vec<String>) {
        if m.approvers.is_empty() && m.groups.is_empty() {
            p.push(format!(
                "{at}: list approvers or groups (or use `approval: auto`)"
            ));
        }
        for (k, g) in m.groups.iter().enumerate() {
            if !self.groups.contains_key(g) {
                let known: Vec<&str> = self.groups.keys().map(String::as_str).collect();
                p.push(format!(
                    "{at}.groups[{k}]: group {g:?} is not declared under groups: (declared: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ));
            }
        }
        let eligible = self.eligible(m).len();
        if m.required == 0 {
            p.push(format!("{at}.required: must be at least 1"));
        } else if eligible > 0 && m.required as usize > eligible {
            p.push(format!(
                "{at}.required: {} approvals needed but only {eligible} people may approve",
                m.required
            ));
        }
        if m.expires_after.is_zero() || m.expires_after > Duration::from_secs(366 * 24 * 3600) {
            p.push(format!(
                "{at}.expires_after: must be more than 0 and at most 366d"
            ));
        }
    }

    fn check_cluster_ref(&self, at: &str, name: &str, p: &mut Vec<String>) {
        if !self.clusters.iter().any(|c| c.name == name) {
            let known: Vec<&str> = self.clusters.iter().map(|c| c.name.as_str()).collect();
            p.push(format!(
                "{at}: cluster {name:?} is not declared under clusters: (declared: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ));
        }
    }

    /// A cluster by name.
    pub fn cluster(&self, name: &str) -> Result<&ClusterConfig> {
        self.clusters
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| Error::not_found("cluster", name))
    }

    /// Everyone who may approve under a manual policy (names and group members).
    pub fn eligible(&self, m: &ManualApproval) -> BTreeSet<String> {
        let mut all: BTreeSet<String> = m.approvers.iter().cloned().collect();
        for g in &m.groups {
            if let Some(members) = self.groups.get(g) {
                all.extend(members.iter().cloned());
            }
        }
        all
    }

    /// The approver `name` as the approval rules see them: the name and every identity
    /// configured for them, authenticated as `principal` (`token`, `proxy`, an IAM ARN,
    /// `cli`).
    pub fn approver(&self, name: &str, principal: &str) -> crate::policy::approval::Approver {
        let identities = self
            .serve
            .approvers
            .get(name)
            .map(|a| a.iam.iter().flat_map(|p| p.names()).collect())
            .unwrap_or_default();
        crate::policy::approval::Approver {
            name: name.to_string(),
            identities,
            principal: principal.to_string(),
        }
    }

    /// The approver a verified IAM caller is, if exactly one is mapped to it.
    pub fn approver_for_iam(&self, arn: &str, account: Option<&str>) -> Option<&str> {
        let mut found = self
            .serve
            .approvers
            .iter()
            .filter(|(_, a)| a.iam.iter().any(|p| p.matches(arn, account)));
        match (found.next(), found.next()) {
            (Some((name, _)), None) => Some(name.as_str()),
            _ => None,
        }
    }

    pub fn app(&self, name: &str) -> Result<&AppConfig> {
        self.apps
            .iter()
            .find(|a| a.name == name)
            .ok_or_else(|| Error::not_found("app", name))
    }

    /// The app whose repository (and registry, when set) matches a push.
    pub fn app_for_repository(&self, registry: &str, repository: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|a| {
            a.repository == repository && a.registry.as_ref().is_none_or(|r| r == registry)
        })
    }

    /// Resolves a path from this file against its directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    pub fn reaction(&self, name: &str) -> Result<&ReactionConfig> {
        self.reactions
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| Error::not_found("reaction", name))
    }
}

impl AppConfig {
    /// The compiled tag policy (validated at load).
    pub fn tag_policy(&self) -> Result<TagPolicy> {
        TagPolicy::compile(&self.tags)
            .map_err(|e| Error::invalid(format!("app {} tag policy", self.name), e))
    }

    pub fn environment(&self, name: &str) -> Result<&EnvironmentConfig> {
        self.environments
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| {
                Error::not_found(
                    "environment",
                    format!(
                        "{name} (app {} has: {})",
                        self.name,
                        self.environments
                            .iter()
                            .map(|e| e.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
    }

    /// The environment after `name` in promotion order.
    pub fn next_environment(&self, name: &str) -> Option<&EnvironmentConfig> {
        let i = self.environments.iter().position(|e| e.name == name)?;
        self.environments.get(i + 1)
    }
}

fn check_workload(at: &str, w: &WorkloadRef, p: &mut Vec<String>) {
    if !WORKLOAD_KINDS.contains(&w.kind.as_str()) {
        p.push(format!(
            "{at}.kind: {:?} is not supported (allowed: {})",
            w.kind,
            WORKLOAD_KINDS.join(", ")
        ));
    }
    if w.name.is_empty() {
        p.push(format!("{at}.name: must name the workload"));
    }
    if w.container.is_empty() {
        p.push(format!("{at}.container: must name the container"));
    }
}

fn is_dns_label(s: &str) -> bool {
    crate::ids::is_name(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
groups:
  release-managers: [bob, carol]
apps:
  - name: web
    repository: team/web
    tags: { semver: ">=1.0.0" }
    test:
      command: { run: ["true"], timeout: 1m }
    environments:
      - name: staging
        approval: auto
        deploy:
          manifest: { dir: manifests/staging, workloads: [{ name: web, container: app }] }
      - name: production
        approval: { approvers: [alice], groups: [release-managers], required: 2, expires_after: 2h }
        deploy:
          manifest: { dir: manifests/production, workloads: [{ name: web, container: app }] }
reactions:
  - name: failures
    on: { type: [deploy.failed] }
    notify: { webhook: { url_env: SLACK_URL } }
"#;

    fn load(text: &str) -> Result<Config> {
        Config::from_yaml(text, Path::new("/cfg"), "baton.yaml")
    }

    #[test]
    fn loads_a_good_file() {
        let c = load(GOOD).unwrap();
        assert_eq!(c.apps[0].environments.len(), 2);
        let prod = &c.apps[0].environments[1];
        let ApprovalPolicy::Manual(m) = &prod.approval else {
            panic!("manual")
        };
        assert_eq!(m.required, 2);
        assert_eq!(m.expires_after, Duration::from_secs(7200));
        assert_eq!(c.eligible(m).len(), 3);
        assert_eq!(c.apps[0].environments[0].approval, ApprovalPolicy::Auto);
        assert_eq!(
            c.resolve(Path::new("manifests/staging")),
            PathBuf::from("/cfg/manifests/staging")
        );
        assert_eq!(
            c.apps[0].next_environment("staging").unwrap().name,
            "production"
        );
        assert!(c.app_for_repository("any", "team/web").is_some());
        assert!(c.app_for_repository("any", "team/api").is_none());
    }

    fn err(text: &str) -> String {
        load(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_field() {
        let e = err(&GOOD.replace("semver: \">=1.0.0\"", "semver: \"~>1\""));
        assert!(e.contains("apps[0].tags.semver"), "{e}");
        let e = err(&GOOD.replace("tags: { semver: \">=1.0.0\" }", "tags: { wildcard: \"*\" }"));
        assert!(e.contains("apps[0].tags") && e.contains("semver"), "{e}");
        let e = err(&GOOD.replace("required: 2", "required: 5"));
        assert!(
            e.contains("apps[0].environments[1].approval.required"),
            "{e}"
        );
        let e = err(&GOOD.replace("groups: [release-managers]", "groups: [admins]"));
        assert!(
            e.contains("approval.groups[0]") && e.contains("admins"),
            "{e}"
        );
        let e = err(&GOOD.replace("approval: auto", "approval: sometimes"));
        assert!(
            e.contains("apps[0].environments[0].approval") && e.contains("auto"),
            "{e}"
        );
        let e = err(&GOOD.replace("expires_after: 2h", "expires_after: soon"));
        assert!(e.contains("expires_after") && e.contains("duration"), "{e}");
        let e = err(&GOOD.replace(
            "{ name: web, container: app }] }\n      - name: production",
            "{ name: web, container: app, colour: red }] }\n      - name: production",
        ));
        assert!(e.contains("workloads[0]") && e.contains("colour"), "{e}");
        let e = err(&GOOD.replace("name: web\n", "name: Web_App\n"));
        assert!(e.contains("apps[0].name"), "{e}");
        let e = err(&GOOD.replace("url_env: SLACK_URL", "url: ftp://x"));
        assert!(e.contains("reactions[0].notify.webhook.url"), "{e}");
        let e = err(&GOOD.replace("type: [deploy.failed]", "type: deploy.failed"));
        assert!(e.contains("reactions[0].on"), "{e}");
        let e = err(&GOOD.replace("repository: team/web", "repository: team/web:1.0"));
        assert!(e.contains("apps[0].repository"), "{e}");
        let e = err(&GOOD.replace(
            "environments:\n      - name: staging",
            "environments:\n      - name: production",
        ));
        assert!(e.contains("declared twice"), "{e}");
        let e = err("apps: []");
        assert!(e.contains("apps: at least one"), "{e}");
        let lambda = |traffic: &str| {
            GOOD.replace(
                "manifest: { dir: manifests/production, workloads: [{ name: web, container: app }] }",
                &format!("lambda: {{ function: web, traffic: {traffic} }}"),
            )
        };
        let c = load(&lambda("{ linear: { step: 25, every: 2m } }")).unwrap();
        let DeployConfig::Lambda(l) = &c.apps[0].environments[1].deploy else {
            panic!("lambda")
        };
        let shift = l.traffic.unwrap();
        assert_eq!(
            (shift.first(), shift.next(25), shift.next(75)),
            (25, 50, 100)
        );
        assert_eq!(shift.hold(), Duration::from_secs(120));
        let e = err(&lambda("{ canary: { percent: 100, wait: 5m } }"));
        assert!(
            e.contains("apps[0].environments[1].deploy.lambda.traffic.canary.percent")
                && e.contains("between 1 and 99"),
            "{e}"
        );
        let e = err(&lambda("{ canary: { percent: 10 } }"));
        assert!(e.contains("traffic.canary") && e.contains("wait"), "{e}");
        let e = err(&lambda("{ blue_green: {} }"));
        assert!(e.contains("deploy.lambda.traffic"), "{e}");
    }

    #[test]
    fn ships_a_valid_example() {
        let text = include_str!("../../examples/baton.yaml");
        let c = load(text).unwrap();
        assert!(!c.apps.is_empty());
    }
}
