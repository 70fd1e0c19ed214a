//! The pipeline configuration file (`baton.yaml`): apps, tag policies, ordered
//! environments with approval policies and deploy targets, the test runner, reactions
//! and bus settings. Validated at load; every error names the field (`apps[0].tags`)
//! and says what is allowed. The commented reference is `examples/baton.yaml`; the
//! documented one is `docs/configuration.md`.
//!
//! One file per section (`apps`, `clusters`, `reactions`, `registries`, `serve`, `bus`),
//! each with its types and its own `check`; values with a grammar (hosts, repositories,
//! tag policies, durations, addresses) are parsed as the file is read, so a bad one is
//! refused with its path (`apps[0].tags: semver: …`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod apps;
mod bus;
mod clusters;
mod freeze;
mod reactions;
mod registries;
mod retention;
mod serve;
mod verify;

pub use apps::*;
pub use bus::*;
pub use clusters::*;
pub use freeze::*;
pub use reactions::*;
pub use registries::*;
pub use retention::*;
pub use serve::*;
pub use verify::*;

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
    /// How long finished runs are kept (`baton gc`, and `baton serve` periodically).
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Freeze windows for every app (optionally some environments only), and how often
    /// waiting deploys look again.
    #[serde(default)]
    pub freeze: GlobalFreezeConfig,
    /// Directory relative paths in this file are resolved against.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

fn default_version() -> u32 {
    1
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

/// `"10m"`, `"24h"`, `"500ms"` as [`Duration`], at most [`duration::MAX`]: every time
/// computed from a configured duration stays far inside what dates and timers hold.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// The longest duration a configuration may give: 366 days.
    pub const MAX: Duration = Duration::from_secs(366 * 24 * 3600);

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        let d = humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not a duration ({e}); e.g. \"30s\", \"10m\", \"24h\""
            ))
        })?;
        if d > MAX {
            return Err(serde::de::Error::custom(format!(
                "{s:?} is longer than the longest duration a configuration takes (366 days)"
            )));
        }
        Ok(d)
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

    /// Every semantic problem, each prefixed by the field it is about. Each section
    /// checks itself (`AppConfig::check`, `ServeConfig::check`, …); what spans entries
    /// (a name declared twice) is checked here, and references to groups and clusters
    /// are resolved through this configuration.
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
            app.check(self, &at, &mut p);
            if !names.insert(app.name.clone()) {
                p.push(format!("{at}.name: {:?} is declared twice", app.name));
            }
            if !repos.insert((app.registry.clone(), app.repository.clone())) {
                p.push(format!(
                    "{at}.repository: {:?} is already used by another app",
                    app.repository
                ));
            }
        }
        let mut reactions = BTreeSet::new();
        for (i, r) in self.reactions.iter().enumerate() {
            let at = format!("reactions[{i}]");
            r.check(&at, &mut p);
            if !reactions.insert(r.name.clone()) {
                p.push(format!("{at}.name: {:?} is declared twice", r.name));
            }
        }
        self.bus.check("bus", &mut p);
        let mut clusters = BTreeSet::new();
        for (i, c) in self.clusters.iter().enumerate() {
            let at = format!("clusters[{i}]");
            c.check(&at, &mut p);
            if !clusters.insert(c.name.clone()) {
                p.push(format!("{at}.name: {:?} is declared twice", c.name));
            }
        }
        let mut hosts = BTreeSet::new();
        for (i, r) in self.registries.iter().enumerate() {
            let at = format!("registries[{i}]");
            r.check(&at, &mut p);
            if !hosts.insert(r.host.clone()) {
                p.push(format!("{at}.host: {:?} is declared twice", r.host));
            }
        }
        self.serve.check("serve", &mut p);
        self.retention.check("retention", &mut p);
        let envs: BTreeSet<&str> = self
            .apps
            .iter()
            .flat_map(|a| a.environments.iter().map(|e| e.name.as_str()))
            .collect();
        let envs: Vec<&str> = envs.into_iter().collect();
        self.freeze.check("freeze", &envs, &mut p);
        for (i, app) in self.apps.iter().enumerate() {
            for (j, env) in app.environments.iter().enumerate() {
                env.freeze.check(
                    &format!("apps[{i}].environments[{j}].freeze"),
                    &envs,
                    &mut p,
                );
            }
        }
        p
    }

    /// The freeze windows of environment `env`: the global ones that apply to it, then
    /// its own.
    pub fn freeze_windows<'a>(
        &'a self,
        env: &'a EnvironmentConfig,
    ) -> Vec<crate::policy::freeze::Window<'a>> {
        self.freeze
            .windows
            .iter()
            .filter(|w| w.applies_to(&env.name))
            .chain(env.freeze.windows.iter())
            .map(FreezeWindow::window)
            .collect()
    }

    /// Every configured `(app, environment)`, in configuration order.
    pub fn environment_names(&self) -> Vec<(String, String)> {
        self.apps
            .iter()
            .flat_map(|a| {
                a.environments
                    .iter()
                    .map(|e| (a.name.clone(), e.name.clone()))
            })
            .collect()
    }

    /// Whether `name` is a declared cluster (for `at`).
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

fn is_dns_label(s: &str) -> bool {
    crate::ids::is_name(s)
}
#[cfg(test)]
mod tests {
    use std::time::Duration;

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

    /// How a case changes [`GOOD`].
    enum Edit {
        /// Replace this text (which must occur) with that.
        Replace(&'static str, &'static str),
        /// Append top-level keys.
        Append(&'static str),
        /// The whole file.
        Whole(&'static str),
    }
    use Edit::{Append, Replace, Whole};

    const PRODUCTION_MANIFEST: &str =
        "manifest: { dir: manifests/production, workloads: [{ name: web, container: app }] }";
    const STAGING_WORKLOAD: &str = "{ name: web, container: app }] }\n      - name: production";

    /// Every case: what is wrong, the edit, and what the error must say (the field's
    /// path first).
    const BAD: &[(&str, Edit, &[&str])] = &[
        (
            "a bad semver range",
            Replace("semver: \">=1.0.0\"", "semver: \"~>1\""),
            &["apps[0].tags: semver", "semver range"],
        ),
        (
            "an unknown tag policy",
            Replace("tags: { semver: \">=1.0.0\" }", "tags: { wildcard: \"*\" }"),
            &["apps[0].tags", "semver"],
        ),
        (
            "a bad regex",
            Replace("tags: { semver: \">=1.0.0\" }", "tags: { regex: \"(\" }"),
            &["apps[0].tags: regex", "regular expression"],
        ),
        (
            "more approvals than approvers",
            Replace("required: 2", "required: 5"),
            &["apps[0].environments[1].approval.required", "only 3 people"],
        ),
        (
            "an undeclared group",
            Replace("groups: [release-managers]", "groups: [admins]"),
            &["apps[0].environments[1].approval.groups[0]", "admins"],
        ),
        (
            "an unknown approval policy",
            Replace("approval: auto", "approval: sometimes"),
            &["apps[0].environments[0].approval", "auto"],
        ),
        (
            "a duration that is none",
            Replace("expires_after: 2h", "expires_after: soon"),
            &["apps[0].environments[1].approval.expires_after", "duration"],
        ),
        (
            "an expiry over a year",
            Replace("expires_after: 2h", "expires_after: 400d"),
            &["apps[0].environments[1].approval.expires_after", "366 days"],
        ),
        (
            "a retention shorter than a retry window",
            Replace("apps:\n", "retention: { max_age: 10m }\napps:\n"),
            &["retention.max_age", "at least 1h"],
        ),
        (
            "a duration beyond what dates hold",
            Replace("timeout: 1m }", "timeout: 300000y }"),
            &["apps[0].test.command.timeout", "366 days"],
        ),
        (
            "an empty group",
            Replace("release-managers: [bob, carol]", "release-managers: []"),
            &["groups.release-managers", "at least one member"],
        ),
        (
            "an unknown workload field",
            Replace(
                STAGING_WORKLOAD,
                "{ name: web, container: app, colour: red }] }\n      - name: production",
            ),
            &[
                "apps[0].environments[0].deploy.manifest.workloads[0]",
                "colour",
            ],
        ),
        (
            "an unknown workload kind",
            Replace(
                STAGING_WORKLOAD,
                "{ name: web, container: app, kind: Pod }] }\n      - name: production",
            ),
            &["workloads[0].kind", "Pod", "Deployment"],
        ),
        (
            "a workload without a container",
            Replace(
                STAGING_WORKLOAD,
                "{ name: web, container: \"\" }] }\n      - name: production",
            ),
            &["apps[0].environments[0].deploy.manifest.workloads[0].container"],
        ),
        (
            "an app name that is no label",
            Replace("name: web\n", "name: Web_App\n"),
            &["apps[0].name", "lowercase"],
        ),
        (
            "a repository with a tag",
            Replace("repository: team/web", "repository: team/web:1.0"),
            &["apps[0].repository"],
        ),
        (
            "an environment declared twice",
            Replace(
                "environments:\n      - name: staging",
                "environments:\n      - name: production",
            ),
            &["apps[0].environments[1].name", "declared twice"],
        ),
        (
            "a test without a program",
            Replace(
                "command: { run: [\"true\"], timeout: 1m }",
                "command: { run: [], timeout: 1m }",
            ),
            &["apps[0].test.command.run"],
        ),
        (
            "an undeclared cluster",
            Replace(
                PRODUCTION_MANIFEST,
                "kubernetes: { cluster: nope, namespace: web, workloads: [{ name: web, container: app }] }",
            ),
            &["apps[0].environments[1].deploy.kubernetes.cluster", "nope"],
        ),
        (
            "a canary of 100%",
            Replace(
                PRODUCTION_MANIFEST,
                "lambda: { function: web, traffic: { canary: { percent: 100, wait: 5m } } }",
            ),
            &[
                "apps[0].environments[1].deploy.lambda.traffic.canary.percent",
                "between 1 and 99",
            ],
        ),
        (
            "a canary without a wait",
            Replace(
                PRODUCTION_MANIFEST,
                "lambda: { function: web, traffic: { canary: { percent: 10 } } }",
            ),
            &["traffic.canary", "wait"],
        ),
        (
            "an unknown traffic shift",
            Replace(
                PRODUCTION_MANIFEST,
                "lambda: { function: web, traffic: { blue_green: {} } }",
            ),
            &["deploy.lambda.traffic"],
        ),
        (
            "a reaction URL that is no http(s)",
            Replace("url_env: SLACK_URL", "url: ftp://x"),
            &["reactions[0].notify.webhook.url", "http(s)"],
        ),
        (
            "a filter that is no list",
            Replace("type: [deploy.failed]", "type: deploy.failed"),
            &["reactions[0].on"],
        ),
        ("no app", Whole("apps: []"), &["apps: at least one"]),
        (
            "another format version",
            Append("version: 2\n"),
            &["version: 2 is not supported"],
        ),
        (
            "an unknown top-level key",
            Append("colour: red\n"),
            &["colour"],
        ),
        (
            "a listen that is no address",
            Append("serve:\n  listen: localhost\n"),
            &["serve.listen", "127.0.0.1:8080"],
        ),
        (
            "an open webhook off loopback",
            Append(
                "serve:\n  listen: 0.0.0.0:8080\n  webhooks:\n    - { name: hub, source: distribution, auth: none }\n",
            ),
            &["serve.webhooks[0].auth", "loopback"],
        ),
        (
            "an ECR webhook",
            Append("serve:\n  webhooks:\n    - { name: hub, source: ecr, auth: none }\n"),
            &["serve.webhooks[0].source", "EventBridge"],
        ),
        (
            "an approver without an identity",
            Append("serve:\n  approvers:\n    alice: {}\n"),
            &["serve.approvers.alice", "token_env"],
        ),
        (
            "the retired identity header",
            Append("serve:\n  identity_header: X-User\n"),
            &["serve.identity_header", "trusted_proxy"],
        ),
        (
            "no connection allowed",
            Append("serve:\n  max_connections: 0\n"),
            &["serve.max_connections", "at least 1"],
        ),
        (
            "no delivery attempt",
            Append("bus:\n  max_attempts: 0\n"),
            &["bus.max_attempts", "at least 1"],
        ),
        (
            "a cluster reached two ways",
            Append("clusters:\n  - { name: c1, in_cluster: {}, url: \"https://k.example.com\" }\n"),
            &["clusters[0]", "exactly one"],
        ),
        (
            "a token realm that is no origin",
            Append(
                "registries:\n  - { host: r.example.com, token_realms: [\"https://auth.example.com/token\"] }\n",
            ),
            &["registries[0].token_realms[0]", "origin"],
        ),
        (
            "a registry declared twice",
            Append("registries:\n  - { host: r.example.com }\n  - { host: r.example.com }\n"),
            &["registries[1].host", "declared twice"],
        ),
    ];

    #[test]
    fn each_bad_field_is_refused_by_its_path() {
        let mut wrong = vec![];
        for (what, edit, want) in BAD {
            let text = match edit {
                Replace(from, to) => {
                    assert!(
                        GOOD.contains(from),
                        "{what}: the case's text is not in GOOD"
                    );
                    GOOD.replacen(from, to, 1)
                }
                Append(more) => format!("{GOOD}{more}"),
                Whole(text) => text.to_string(),
            };
            match load(&text) {
                Ok(_) => wrong.push(format!("{what}: accepted")),
                Err(e) => {
                    let e = e.to_string();
                    if !want.iter().all(|w| e.contains(w)) {
                        wrong.push(format!("{what}: {e:?} does not say {want:?}"));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn a_linear_traffic_shift_reads_as_steps() {
        let c = load(&GOOD.replace(
            PRODUCTION_MANIFEST,
            "lambda: { function: web, traffic: { linear: { step: 25, every: 2m } } }",
        ))
        .unwrap();
        let DeployConfig::Lambda(l) = &c.apps[0].environments[1].deploy else {
            panic!("lambda")
        };
        let shift = l.traffic.unwrap();
        assert_eq!(
            (shift.first(), shift.next(25), shift.next(75)),
            (25, 50, 100)
        );
        assert_eq!(shift.hold(), Duration::from_secs(120));
    }

    #[test]
    fn ships_a_valid_example() {
        let text = include_str!("../../../examples/baton.yaml");
        let c = load(text).unwrap();
        assert!(!c.apps.is_empty());
    }
}
