//! Builders: a pipeline configuration with knobs, its manifests, digests and registry
//! notifications.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sha2::Digest as _;

/// The manifest of `web` both environments start from.
pub const WEB_MANIFEST: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  template:
    spec:
      containers:
        - name: app
          image: localhost:5000/demo/web:0.1.0  # set by baton
";

/// Knobs of the test configuration: the app `web` (`localhost:5000/demo/web`, semver
/// tags) with staging (auto) and production (manual) deploying manifests.
pub struct Setup {
    /// The test command, a YAML list.
    pub test_cmd: String,
    /// Production's approval policy, YAML.
    pub production: String,
    /// Staging's manifest directory.
    pub staging_dir: String,
    /// The `reactions:` entries, YAML.
    pub reactions: String,
    /// The embedded bus's `max_attempts`.
    pub max_attempts: u32,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            test_cmd:
                r#"["sh", "-c", "echo testing $BATON_IMAGE; test -n \"$BATON_IMAGE_DIGEST\""]"#
                    .into(),
            production:
                "{ approvers: [alice], groups: [release-managers], required: 1, expires_after: 1h }"
                    .into(),
            staging_dir: "manifests/staging".into(),
            reactions:
                "  - name: all\n    on: { type: [{ exists: true }] }\n    notify: { log: {} }\n"
                    .into(),
            max_attempts: 3,
        }
    }
}

impl Setup {
    /// The configuration file's text.
    pub fn config(&self) -> String {
        format!(
            r#"
groups:
  release-managers: [bob, carol]
apps:
  - name: web
    registry: localhost:5000
    repository: demo/web
    tags: {{ semver: ">=1.0.0" }}
    test:
      command: {{ run: {test}, timeout: 30s }}
    environments:
      - name: staging
        approval: auto
        deploy:
          manifest: {{ dir: {staging}, workloads: [{{ name: web, container: app }}] }}
      - name: production
        approval: {prod}
        deploy:
          manifest: {{ dir: manifests/production, workloads: [{{ name: web, container: app }}] }}
reactions:
{reactions}
bus: {{ max_attempts: {attempts}, initial_backoff: 5ms, max_backoff: 20ms }}
"#,
            test = self.test_cmd,
            staging = self.staging_dir,
            prod = self.production,
            reactions = self.reactions,
            attempts = self.max_attempts,
        )
    }
}

/// Writes both environments' manifests under `root/manifests/`.
pub fn write_manifests(root: &Path) {
    for env in ["staging", "production"] {
        let d = root.join("manifests").join(env);
        std::fs::create_dir_all(&d).expect("create manifests");
        std::fs::write(d.join("web.yaml"), WEB_MANIFEST).expect("write manifest");
    }
}

/// A `sha256:` digest derived from `seed`.
pub fn digest(seed: &str) -> String {
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(seed.as_bytes()))
    )
}

/// A distribution notification envelope (from `localhost:5000`) with a blob push and a
/// tagged manifest push.
pub fn dist_push(
    repo: &str,
    tag: &str,
    digest: &str,
    actor: &str,
    at: DateTime<Utc>,
    id: &str,
) -> Value {
    json!({"events": [
        {"id": format!("{id}-blob"), "timestamp": at.to_rfc3339(), "action": "push",
         "target": {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "repository": repo,
                    "url": format!("http://localhost:5000/v2/{repo}/blobs/{digest}")},
         "request": {"host": "localhost:5000"}, "actor": {"name": actor}},
        {"id": id, "timestamp": at.to_rfc3339(), "action": "push",
         "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "repository": repo,
                    "url": format!("http://localhost:5000/v2/{repo}/manifests/{digest}"), "tag": tag},
         "request": {"host": "localhost:5000"}, "actor": {"name": actor}}
    ]})
}
