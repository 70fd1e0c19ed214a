//! `apps[]`: an app's repository and tag policy, its test runner, its environments
//! with their approval policies and deploy targets (Lambda, Kubernetes, manifests).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Config, duration, is_dns_label};
use crate::error::{Error, Result};
use crate::policy::TagPolicy;

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
    /// `{regex: "v[0-9]+"}`; compiled when the configuration is read.
    pub tags: TagPolicy,
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
    /// Freeze windows of this environment (besides the global ones).
    #[serde(default)]
    pub freeze: crate::config::FreezeConfig,
    /// Checks after a deploy (and a soak) before promotion and the next environment;
    /// none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<crate::config::VerifyConfig>,
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
    /// `Deployment` (the default), `StatefulSet` or `DaemonSet`.
    #[serde(default)]
    pub kind: WorkloadKind,
    pub name: String,
    /// The container whose image is set.
    pub container: String,
    /// Namespace, when manifests declare several.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// The workload kinds whose pod template Baton knows how to edit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkloadKind {
    #[default]
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl WorkloadKind {
    /// The Kubernetes `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
        }
    }
}

impl std::fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AppConfig {
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

impl AppConfig {
    /// This app's problems (`at` is `apps[i]`); `cfg` resolves groups and clusters.
    pub(super) fn check(&self, cfg: &Config, at: &str, p: &mut Vec<String>) {
        if !is_dns_label(&self.name) {
            p.push(format!(
                "{at}.name: {:?} must be lowercase letters, digits and dashes (at most 63)",
                self.name
            ));
        }
        self.test.check(cfg, &format!("{at}.test"), p);
        if self.environments.is_empty() {
            p.push(format!(
                "{at}.environments: at least one environment is required"
            ));
        }
        let mut envs = BTreeSet::new();
        for (j, env) in self.environments.iter().enumerate() {
            let at = format!("{at}.environments[{j}]");
            env.check(cfg, &at, p);
            if !envs.insert(env.name.clone()) {
                p.push(format!("{at}.name: {:?} is declared twice", env.name));
            }
        }
    }
}

impl TestConfig {
    pub(super) fn check(&self, cfg: &Config, at: &str, p: &mut Vec<String>) {
        match self {
            TestConfig::Command(c) => {
                if c.run.is_empty() || c.run[0].is_empty() {
                    p.push(format!(
                        "{at}.command.run: needs a program, e.g. [\"sh\", \"-c\", \"make test\"]"
                    ));
                }
                if c.timeout.is_zero() {
                    p.push(format!("{at}.command.timeout: must be more than 0"));
                }
            }
            TestConfig::Lambda(l) => {
                if l.function.is_empty() {
                    p.push(format!("{at}.lambda.function: name the test function"));
                }
            }
            TestConfig::KubernetesJob(j) => {
                let at = format!("{at}.kubernetes_job");
                cfg.check_cluster_ref(&format!("{at}.cluster"), &j.cluster, p);
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
    }
}

impl EnvironmentConfig {
    fn check(&self, cfg: &Config, at: &str, p: &mut Vec<String>) {
        if !is_dns_label(&self.name) {
            p.push(format!(
                "{at}.name: {:?} must be lowercase letters, digits and dashes",
                self.name
            ));
        }
        if let ApprovalPolicy::Manual(m) = &self.approval {
            m.check(cfg, &format!("{at}.approval"), p);
        }
        self.deploy.check(cfg, &format!("{at}.deploy"), p);
        if let Some(v) = &self.verify {
            v.check(cfg, &format!("{at}.verify"), p);
        }
    }
}

impl ManualApproval {
    fn check(&self, cfg: &Config, at: &str, p: &mut Vec<String>) {
        if self.approvers.is_empty() && self.groups.is_empty() {
            p.push(format!(
                "{at}: list approvers or groups (or use `approval: auto`)"
            ));
        }
        for (k, g) in self.groups.iter().enumerate() {
            if !cfg.groups.contains_key(g) {
                let known: Vec<&str> = cfg.groups.keys().map(String::as_str).collect();
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
        let eligible = cfg.eligible(self).len();
        if self.required == 0 {
            p.push(format!("{at}.required: must be at least 1"));
        } else if eligible > 0 && self.required as usize > eligible {
            p.push(format!(
                "{at}.required: {} approvals needed but only {eligible} people may approve",
                self.required
            ));
        }
        if self.expires_after.is_zero() || self.expires_after > Duration::from_secs(366 * 24 * 3600)
        {
            p.push(format!(
                "{at}.expires_after: must be more than 0 and at most 366d"
            ));
        }
    }
}

impl DeployConfig {
    fn check(&self, cfg: &Config, at: &str, p: &mut Vec<String>) {
        match self {
            DeployConfig::Lambda(l) => {
                if l.function.is_empty() || l.alias.is_empty() {
                    p.push(format!("{at}.lambda: function and alias must not be empty"));
                }
                let share = match l.traffic {
                    Some(TrafficShift::Canary { percent, .. }) => Some(("canary.percent", percent)),
                    Some(TrafficShift::Linear { step, .. }) => Some(("linear.step", step)),
                    None => None,
                };
                if let Some((field, n)) = share
                    && !(1..=99).contains(&n)
                {
                    p.push(format!(
                        "{at}.lambda.traffic.{field}: {n} is not between 1 and 99"
                    ));
                }
            }
            DeployConfig::Kubernetes(k) => {
                let at = format!("{at}.kubernetes");
                cfg.check_cluster_ref(&format!("{at}.cluster"), &k.cluster, p);
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
                    w.check(&format!("{at}.workloads[{n}]"), p);
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
                    p.push(format!("{at}.manifest.dir: must name a directory"));
                }
                if m.workloads.is_empty() {
                    p.push(format!(
                        "{at}.manifest.workloads: name at least one workload"
                    ));
                }
                for (k, w) in m.workloads.iter().enumerate() {
                    w.check(&format!("{at}.manifest.workloads[{k}]"), p);
                }
            }
        }
    }
}

impl WorkloadRef {
    fn check(&self, at: &str, p: &mut Vec<String>) {
        if self.name.is_empty() {
            p.push(format!("{at}.name: must name the workload"));
        }
        if self.container.is_empty() {
            p.push(format!("{at}.container: must name the container"));
        }
    }
}
