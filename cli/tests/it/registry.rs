//! Real pushes drive real runs: Debian's `docker-registry` (CNCF distribution) on a
//! free loopback port notifies the real `baton serve` binary; images are built with
//! `umoci` and pushed with `skopeo`. `.ci/run` installs the three programs; a missing
//! one fails the test (it never skips).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub(crate) use baton_testkit::registry::{digest_of, push, start as start_registry, wait_tag};
pub(crate) use baton_testkit::{Proc, free_port};

pub(crate) async fn wait_http(url: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} did not come up");
}

pub(crate) const HOOK_SECRET: &str = "Bearer hook-s3cret";
pub(crate) const ALICE_TOKEN: &str = "alice-token-1";
pub(crate) const READER_TOKEN: &str = "reader-token-for-the-tests";

pub(crate) fn write_project(root: &Path, registry: u16, test_cmd: &str, extra: &str) {
    let manifest = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app\nspec:\n  template:\n    spec:\n      containers:\n        - name: app\n          image: example/app:0.0.1 # set by baton\n";
    for env in ["staging", "production"] {
        std::fs::create_dir_all(root.join("manifests").join(env)).unwrap();
        std::fs::write(root.join("manifests").join(env).join("app.yaml"), manifest).unwrap();
    }
    let cfg = format!(
        r#"
registries:
  - host: 127.0.0.1:{registry}
    url: http://127.0.0.1:{registry}
apps:
  - name: app
    registry: 127.0.0.1:{registry}
    repository: demo/app
    tags: {{ semver: ">=1.0.0" }}
    test:
      command: {{ run: ["sh", "-c", "{test_cmd}"] }}
    environments:
      - name: staging
        approval: auto
        deploy: {{ manifest: {{ dir: manifests/staging, workloads: [{{ name: app, container: app }}] }} }}
      - name: production
        approval: {{ approvers: [alice], required: 1, unknown_pusher: allow }}
        deploy: {{ manifest: {{ dir: manifests/production, workloads: [{{ name: app, container: app }}] }} }}
{extra}
serve:
  webhooks:
    - {{ name: registry, source: distribution, auth: {{ header: {{ name: Authorization, secret_env: BATON_TEST_HOOK_SECRET }} }} }}
  approvers:
    alice: {{ token_env: BATON_TEST_ALICE_TOKEN }}
  readers:
    ci: {{ token_env: BATON_TEST_READER_TOKEN }}
"#
    );
    std::fs::write(root.join("baton.yaml"), cfg).unwrap();
}

/// An app (`apps[]` entry) of one auto-approved staging environment writing
/// `manifests/staging-<name>`, tested with `true`.
pub(crate) fn staging_app(name: &str, host: &str, repo: &str, promote: bool) -> String {
    format!(
        "  - name: {name}\n    registry: {host}\n    repository: {repo}\n    tags: {{ semver: \">=1.0.0\" }}\n    test: {{ command: {{ run: [\"true\"] }} }}\n    environments:\n      - name: staging\n        approval: auto\n        promote: {promote}\n        deploy: {{ manifest: {{ dir: manifests/staging-{name}, workloads: [{{ name: app, container: app }}] }} }}\n"
    )
}

pub(crate) async fn start_serve(root: &Path, port: u16) -> Proc {
    start_serve_with(root, port, &[]).await
}

/// `baton serve` on loopback `port` with the tests' secrets, `env` overriding them.
pub(crate) async fn start_serve_with(root: &Path, port: u16, env: &[(&str, &str)]) -> Proc {
    let child = serve_command(root, &format!("127.0.0.1:{port}"), env)
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(root.join("serve.log"))
                .unwrap(),
        )
        .spawn()
        .expect("start baton serve");
    wait_http(&format!("http://127.0.0.1:{port}/healthz")).await;
    Proc(child)
}

/// The `baton serve` command with the tests' secrets in its environment (`env` adds or
/// overrides), its log appended to `serve.log`.
pub(crate) fn serve_command(root: &Path, listen: &str, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_baton"));
    cmd.args(["serve", "--listen", listen])
        .current_dir(root)
        .env_remove("BATON_CONFIG")
        .env_remove("BATON_STATE_DIR")
        .env("BATON_TEST_HOOK_SECRET", HOOK_SECRET)
        .env("BATON_TEST_ALICE_TOKEN", ALICE_TOKEN)
        .env("BATON_TEST_READER_TOKEN", READER_TOKEN)
        .env("BATON_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

pub(crate) struct Api {
    pub(crate) base: String,
    pub(crate) client: reqwest::Client,
}

impl Api {
    pub(crate) fn new(port: u16) -> Api {
        Api {
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        }
    }

    /// `GET path` with a bearer token, as JSON (`null` when it is not JSON).
    pub(crate) async fn get(&self, path: &str, token: &str) -> Value {
        self.client
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(Value::Null)
    }

    /// `POST /hooks/registry` with the webhook's secret: the status and the JSON answer.
    pub(crate) async fn hook(&self, body: &str) -> (u16, Value) {
        self.try_hook(body)
            .await
            .unwrap_or_else(|e| panic!("POST /hooks/registry: {e}"))
    }

    /// [`Api::hook`], with the connection's failure as an error (a server that died
    /// before answering).
    pub(crate) async fn try_hook(&self, body: &str) -> Result<(u16, Value), reqwest::Error> {
        let r = self
            .client
            .post(format!("{}/hooks/registry", self.base))
            .header("Authorization", HOOK_SECRET)
            .body(body.to_string())
            .send()
            .await?;
        Ok((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
    }

    pub(crate) async fn runs(&self) -> Vec<Value> {
        let v: Value = self
            .client
            .get(format!("{}/runs", self.base))
            .bearer_auth(READER_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.as_array().cloned().unwrap_or_default()
    }

    /// The status of the run of `digest`, once it exists.
    pub(crate) async fn status_of(&self, digest: &str) -> Option<String> {
        self.runs()
            .await
            .into_iter()
            .find(|r| r["image"]["digest"] == digest)
            .and_then(|r| r["status"].as_str().map(str::to_owned))
    }

    pub(crate) async fn wait_status(&self, digest: &str, want: &str) -> Duration {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if self.status_of(digest).await.as_deref() == Some(want) {
                return start.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "run of {digest} never reached {want:?}; runs: {:#?}",
            self.runs().await
        );
    }

    pub(crate) async fn decide(
        &self,
        run: &str,
        env: &str,
        token: &str,
        decision: &str,
    ) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}/approvals/{run}/{env}", self.base))
            .bearer_auth(token)
            .json(&json!({ "decision": decision, "comment": "from the test" }))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
}

pub(crate) fn manifest(root: &Path, env: &str) -> String {
    std::fs::read_to_string(root.join("manifests").join(env).join("app.yaml")).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_pushes_drive_runs_through_baton_serve() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let serve_port = free_port();
    let hook = format!("http://127.0.0.1:{serve_port}/hooks/registry");
    let (_registry, reg) = start_registry(&root, Some((&hook, HOOK_SECRET))).await;
    write_project(&root, reg, "echo smoke-testing $BATON_IMAGE", "");
    let _serve = start_serve(&root, serve_port).await;
    let api = Api::new(serve_port);

    // 1.0.0: tests, staging by digest, production waits
    let started = Instant::now();
    let d100 = push(&root, reg, "demo/app", "1.0.0");
    api.wait_status(&d100, "awaiting approval (production)")
        .await;
    let push_to_staging = started.elapsed();
    println!(
        "push to staging deploy (incl. skopeo push): {} ms",
        push_to_staging.as_millis()
    );
    let reference = format!("127.0.0.1:{reg}/demo/app@{d100}");
    assert!(
        manifest(&root, "staging").contains(&format!("image: {reference} # set by baton")),
        "{}",
        manifest(&root, "staging")
    );
    assert!(manifest(&root, "production").contains("example/app:0.0.1"));
    // promote retagged the image in the real registry
    wait_tag(reg, "demo/app", "staging", &d100).await;

    // approvals over HTTP: a bad token changes nothing
    let run = api
        .runs()
        .await
        .into_iter()
        .find(|r| r["image"]["digest"] == d100.as_str())
        .unwrap()["run"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = api
        .decide(&run, "production", "not-a-token", "approve")
        .await;
    assert_eq!(status, 401);
    let r = api
        .client
        .get(format!("{}/approvals", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let pending: Value = api
        .client
        .get(format!("{}/approvals", api.base))
        .bearer_auth(ALICE_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pending.as_array().unwrap().len(), 1, "{pending}");
    assert_eq!(pending[0]["run"], run.as_str());
    assert_eq!(
        pending[0]["url"],
        format!("http://127.0.0.1:{serve_port}/approvals/{run}/production").as_str(),
        "approval.requested carries a link"
    );
    assert!(manifest(&root, "production").contains("example/app:0.0.1"));
    assert_eq!(
        api.status_of(&d100).await.as_deref(),
        Some("awaiting approval (production)")
    );

    let (status, body) = api.decide(&run, "production", ALICE_TOKEN, "approve").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "granted");
    api.wait_status(&d100, "deployed").await;
    assert!(manifest(&root, "production").contains(&reference));
    wait_tag(reg, "demo/app", "production", &d100).await;
    let (status, body) = api.decide(&run, "production", ALICE_TOKEN, "approve").await;
    assert_eq!(status, 409, "already decided: {body}");

    // newer wins: 1.1.0 then 1.0.1 leaves 1.1.0 live in staging
    let d110 = push(&root, reg, "demo/app", "1.1.0");
    api.wait_status(&d110, "awaiting approval (production)")
        .await;
    let d101 = push(&root, reg, "demo/app", "1.0.1");
    api.wait_status(&d101, "superseded (staging)").await;
    assert!(manifest(&root, "staging").contains(&d110));
    wait_tag(reg, "demo/app", "staging", &d110).await;

    // a repository no app configures starts nothing (notifications arrive in order,
    // so once the later push has a run, the earlier one was handled)
    let before = api.runs().await.len();
    push(&root, reg, "other/app", "1.0.0");
    let d120 = push(&root, reg, "demo/app", "1.2.0");
    api.wait_status(&d120, "awaiting approval (production)")
        .await;
    let runs = api.runs().await;
    assert_eq!(runs.len(), before + 1, "only demo/app:1.2.0 started a run");
    assert!(runs.iter().all(|r| r["image"]["repository"] == "demo/app"));

    // the same notification delivered again starts no second run
    let sample = json!({"events": [{
        "id": "replayed-1", "timestamp": "2026-11-20T10:00:00Z", "action": "push",
        "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d120,
                   "repository": "demo/app", "tag": "1.2.0"},
        "request": {"host": format!("127.0.0.1:{reg}")}}]});
    for _ in 0..2 {
        let r = api
            .client
            .post(format!("{}/hooks/registry", api.base))
            .header("Authorization", HOOK_SECRET)
            .header(
                "Content-Type",
                "application/vnd.docker.distribution.events.v1+json",
            )
            .body(sample.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(api.runs().await.len(), before + 1);

    // bad secret → 401; malformed body → 400 with the field, kept as a dead letter
    let r = api
        .client
        .post(format!("{}/hooks/registry", api.base))
        .header("Authorization", "Bearer wrong")
        .body(sample.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = api
        .client
        .post(format!("{}/hooks/registry", api.base))
        .header("Authorization", HOOK_SECRET)
        .body(r#"{"events": [{"id": "x", "action": "push"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("events[0]"),
        "{body}"
    );
    let dead = root.join(".baton/store/deadletters/webhooks/registry");
    assert_eq!(std::fs::read_dir(&dead).unwrap().count(), 1);
    let log = std::fs::read_to_string(root.join("serve.log")).unwrap();
    assert!(log.contains("webhook refused"), "refusals are logged");
    assert!(
        !log.contains("hook-s3cret") && !log.contains(ALICE_TOKEN),
        "secrets never reach the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_right_after_202_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let serve_port = free_port();
    // no notifications from the registry: the test posts the notification itself, so
    // it knows exactly when the 202 came
    let (_registry, reg) = start_registry(&root, None).await;
    write_project(&root, reg, "sleep 1; echo ok", "");
    let digest = push(&root, reg, "demo/app", "1.0.0");
    let serve = start_serve(&root, serve_port).await;
    let body = json!({"events": [{
        "id": "n-1", "timestamp": "2026-11-20T10:00:00Z", "action": "push",
        "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
                   "repository": "demo/app", "tag": "1.0.0"},
        "request": {"host": format!("127.0.0.1:{reg}")}}]});
    let (status, answer) = Api::new(serve_port).hook(&body.to_string()).await;
    assert_eq!(status, 202, "{answer}");
    drop(serve); // SIGKILL, right after the 202
    // nothing finished yet
    let staging = manifest(&root, "staging");
    assert!(staging.contains("example/app:0.0.1"), "{staging}");

    let _serve = start_serve(&root, serve_port).await;
    let api = Api::new(serve_port);
    let waited = api
        .wait_status(&digest, "awaiting approval (production)")
        .await;
    assert!(
        waited < Duration::from_secs(20),
        "resumed without waiting out a lease: {waited:?}"
    );
    assert!(manifest(&root, "staging").contains(&digest));
    // and the run completes
    let run = api.runs().await[0]["run"].as_str().unwrap().to_string();
    let (status, body) = api.decide(&run, "production", ALICE_TOKEN, "approve").await;
    assert_eq!(status, 200, "{body}");
    api.wait_status(&digest, "deployed").await;
    assert!(manifest(&root, "production").contains(&digest));
    let view: Value = api
        .client
        .get(format!("{}/runs/{}", api.base, &run[..8]))
        .bearer_auth(READER_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let built = view["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "image.built")
        .count();
    assert_eq!(
        built, 1,
        "the delivery replayed after the restart started no second run"
    );
}

/// What `baton serve` acknowledges it can process: a notification nested as deep as the
/// JSON reader takes is queued as its parsed pushes and starts its run (it was once
/// answered 202 and then dead-lettered as unreadable), and one nested deeper is
/// refused with 400 and queues nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_deeply_nested_webhook_is_processed_or_refused_never_lost() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let serve_port = free_port();
    let (_registry, reg) = start_registry(&root, None).await;
    write_project(&root, reg, "echo ok", "");
    let digest = push(&root, reg, "demo/app", "1.0.0");
    let _serve = start_serve(&root, serve_port).await;
    let post = |depth: usize| {
        // `extra` holds `depth` nested arrays; the envelope adds 4 levels.
        let extra = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let body = format!(
            r#"{{"events": [{{"id": "n-deep-{depth}", "timestamp": "2026-11-20T10:00:00Z", "action": "push",
              "target": {{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "{digest}",
                         "repository": "demo/app", "tag": "1.0.0", "extra": {extra}}},
              "request": {{"host": "127.0.0.1:{reg}"}}}}]}}"#
        );
        async move { Api::new(serve_port).hook(&body).await }
    };
    let (status, body) = post(400).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(123).await;
    assert_eq!(status, 202, "{body}");
    let api = Api::new(serve_port);
    api.wait_status(&digest, "awaiting approval (production)")
        .await;
    assert!(manifest(&root, "staging").contains(&digest));
    let out = crate::baton(&root, &["--json", "dlq", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let letters: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(letters, json!([]), "nothing dead-lettered");

    // /healthz says what holds: the dispatcher, the queue, the state directory; 503
    // while the state directory cannot be written, 200 again once it can.
    let health = || async {
        let r = reqwest::get(format!("http://127.0.0.1:{serve_port}/healthz"))
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let (status, h) = health().await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["dispatcher"], "running", "{h}");
    assert_eq!(h["state_dir"], "writable", "{h}");
    assert!(h["queue_depth"].is_u64(), "{h}");
    std::fs::rename(root.join(".baton"), root.join(".baton-away")).unwrap();
    let (status, h) = health().await;
    std::fs::rename(root.join(".baton-away"), root.join(".baton")).unwrap();
    assert_eq!(status, 503, "{h}");
    assert_eq!(h["status"], "unhealthy", "{h}");
    assert!(
        h["state_dir"]
            .as_str()
            .unwrap_or("")
            .contains("cannot write the state directory"),
        "{h}"
    );
    assert_eq!(health().await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn other_registries_webhooks_through_http() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let serve_port = free_port();
    let (_registry, reg) = start_registry(&root, None).await;
    // Docker Hub and Quay notifications carry no digest: baton resolves the tag through
    // the registry API, here the local registry standing in for docker.io and quay.io.
    let hub_digest = push(&root, reg, "demo/web", "1.2.0");
    let quay_digest = push(&root, reg, "demo/web", "1.5.0");
    let cd_digest = push(&root, reg, "demo/web", "1.6.0");
    let app = |name: &str, host: &str, promote: bool| staging_app(name, host, "demo/web", promote);
    write_project(&root, reg, "true", "");
    let mut cfg = std::fs::read_to_string(root.join("baton.yaml")).unwrap();
    let apps = [
        app("hub", "docker.io", true),
        app("harbor", "harbor.example.com", false),
        app("ghcr", "ghcr.io", false),
        app("quay", "quay.io", true),
        app("cd", &format!("127.0.0.1:{reg}"), false),
    ]
    .concat();
    cfg = cfg.replace("apps:\n", &format!("apps:\n{apps}"));
    cfg = cfg.replace(
        "registries:\n",
        &format!("registries:\n  - {{ host: docker.io, url: \"http://127.0.0.1:{reg}\" }}\n  - {{ host: quay.io, url: \"http://127.0.0.1:{reg}\" }}\n"),
    );
    cfg = cfg.replace(
        "  webhooks:\n",
        "  webhooks:\n    - { name: hub, source: dockerhub, auth: { query_token: { secret_env: BATON_TEST_HOOK_SECRET } } }\n    - { name: harbor, source: harbor, auth: { header: { name: Authorization, secret_env: BATON_TEST_HOOK_SECRET } } }\n    - { name: gh, source: ghcr, auth: { hmac: { secret_env: BATON_TEST_HOOK_SECRET } } }\n    - { name: quay, source: quay, auth: { basic: { username: quay, password_env: BATON_TEST_HOOK_SECRET } } }\n    - { name: cd, source: cdevents, auth: { header: { name: Authorization, secret_env: BATON_TEST_HOOK_SECRET } } }\n",
    );
    std::fs::write(root.join("baton.yaml"), cfg).unwrap();
    for name in ["hub", "harbor", "ghcr", "quay", "cd"] {
        let d = root.join(format!("manifests/staging-{name}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(root.join("manifests/staging/app.yaml"), d.join("app.yaml")).unwrap();
    }
    let _serve = start_serve(&root, serve_port).await;
    let api = Api::new(serve_port);
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../events/webhooks");
    let read = |f: &str| std::fs::read(samples.join(f)).unwrap();

    let send = |path: &str, body: Vec<u8>, auth: Option<(&'static str, String)>| {
        let mut req = api.client.post(format!("{}{path}", api.base)).body(body);
        if let Some((h, v)) = auth {
            req = req.header(h, v);
        }
        req.send()
    };
    let secret = HOOK_SECRET.to_string();
    let quay_basic = format!("Basic {}", b64(format!("quay:{secret}").as_bytes()));

    // wrong credentials: 401 for each source's scheme
    assert_eq!(
        send("/hooks/hub?token=nope", read("dockerhub.json"), None)
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    assert_eq!(
        send(
            "/hooks/harbor",
            read("harbor.json"),
            Some(("Authorization", "x".into()))
        )
        .await
        .unwrap()
        .status()
        .as_u16(),
        401
    );
    assert_eq!(
        send(
            "/hooks/gh",
            read("ghcr.json"),
            Some(("X-Hub-Signature-256", "sha256=00".into()))
        )
        .await
        .unwrap()
        .status()
        .as_u16(),
        401
    );
    assert_eq!(
        send(
            "/hooks/quay",
            read("quay.json"),
            Some(("Authorization", "Basic eDp5".into()))
        )
        .await
        .unwrap()
        .status()
        .as_u16(),
        401
    );

    // right credentials: 202, queued. One push at a time, each followed to the end
    // (deployed, and promoted where it promotes), so "the last push" is well defined.
    let harbor: Value = serde_json::from_slice(&read("harbor.json")).unwrap();
    let ghcr: Value = serde_json::from_slice(&read("ghcr.json")).unwrap();
    let harbor_digest = harbor["event_data"]["resources"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let ghcr_digest = ghcr["package"]["package_version"]["container_metadata"]["tag"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let staging_tag_becomes =
        |want: String| async move { wait_tag(reg, "demo/web", "staging", &want).await };
    // A CDEvents producer announcing the image pushed as 1.6.0.
    let mut cd: Value = serde_json::from_slice(&read("cdevents-artifact-published.json")).unwrap();
    cd["subject"]["id"] = json!(format!(
        "pkg:oci/web@{}?repository_url=127.0.0.1:{reg}/demo/web&tag=1.6.0",
        cd_digest.replace(':', "%3A")
    ));
    let cd_body = serde_json::to_vec(&cd).unwrap();
    assert_eq!(
        send(
            "/hooks/cd",
            cd_body.clone(),
            Some(("Authorization", "wrong".into()))
        )
        .await
        .unwrap()
        .status()
        .as_u16(),
        401
    );
    let token = secret.replace(' ', "%20");
    for (path, body, auth, app, digest, promotes) in [
        (
            format!("/hooks/hub?token={token}"),
            read("dockerhub.json"),
            None,
            "hub",
            &hub_digest,
            true,
        ),
        (
            "/hooks/harbor".to_string(),
            read("harbor.json"),
            Some(("Authorization", secret.clone())),
            "harbor",
            &harbor_digest,
            false,
        ),
        (
            "/hooks/gh".to_string(),
            read("ghcr.json"),
            Some((
                "X-Hub-Signature-256",
                format!(
                    "sha256={}",
                    hmac_sha256_hex(secret.as_bytes(), &read("ghcr.json"))
                ),
            )),
            "ghcr",
            &ghcr_digest,
            false,
        ),
        (
            "/hooks/quay".to_string(),
            read("quay.json"),
            Some(("Authorization", quay_basic.clone())),
            "quay",
            &quay_digest,
            true,
        ),
        (
            "/hooks/cd".to_string(),
            cd_body.clone(),
            Some(("Authorization", secret.clone())),
            "cd",
            &cd_digest,
            false,
        ),
    ] {
        let r = send(&path, body, auth).await.unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, 202, "{path}: {v}");
        assert_eq!(v["queued"], true, "{path}: {v}");
        api.wait_status(digest, "deployed").await;
        let run = api
            .runs()
            .await
            .into_iter()
            .find(|r| r["image"]["digest"] == digest.as_str())
            .unwrap();
        assert_eq!(run["app"], app);
        // promote retags through the registry API for the hosts it reaches
        if promotes {
            staging_tag_becomes(digest.clone()).await;
        }
    }
    assert_eq!(
        digest_of(reg, "demo/web", "staging"),
        quay_digest,
        "quay's push came last"
    );
}

fn b64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// HMAC-SHA256 (RFC 2104) over `sha2`, written out here so the test does not check the
/// server's verifier with the server's own code.
pub(crate) fn hmac_sha256_hex(key: &[u8], msg: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let inner: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x36)
        .chain(msg.iter().copied())
        .collect();
    let inner_hash = Sha256::digest(&inner);
    let outer: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x5c)
        .chain(inner_hash.iter().copied())
        .collect();
    Sha256::digest(&outer)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Unmounts a test filesystem however the test ends.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A full disk acknowledges nothing: with the state directory on a small filesystem
/// (tmpfs, mounted by the test; root required, as in CI) filled to the last byte, a
/// push is answered 503 and `/healthz` is 503 naming the state directory; once space
/// returns, the same push is taken and deploys, and nothing half-written is left in
/// the way.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_answers_503_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let state = root.join(".baton");
    std::fs::create_dir_all(&state).unwrap();
    let out = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=8m",
            "baton-test",
            state.to_str().unwrap(),
        ])
        .output()
        .expect("mount (util-linux)");
    assert!(
        out.status.success(),
        "this test mounts a small tmpfs and needs root: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _mounted = Mounted(state.clone());
    let serve_port = free_port();
    let (_registry, reg) = start_registry(&root, None).await;
    write_project(&root, reg, "echo ok", "");
    let digest = push(&root, reg, "demo/app", "1.0.0");
    let _serve = start_serve(&root, serve_port).await;
    let api = Api::new(serve_port);
    let body = json!({"events": [{
        "id": "n-full", "timestamp": "2026-11-20T10:00:00Z", "action": "push",
        "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
                   "repository": "demo/app", "tag": "1.0.0"},
        "request": {"host": format!("127.0.0.1:{reg}")}}]})
    .to_string();

    // Fill the filesystem: one file takes every free byte.
    let filler = state.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        loop {
            match f.write(&block) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let mut byte = [0u8; 1];
        while f.write(&byte).is_ok_and(|n| n == 1) {
            byte[0] = 1;
        }
    }
    let (status, answer) = api.hook(&body).await;
    assert_eq!(status, 503, "{answer}");
    let r = reqwest::get(format!("{}/healthz", api.base)).await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let h: Value = r.json().await.unwrap();
    assert!(
        h["state_dir"]
            .as_str()
            .unwrap_or("")
            .contains("cannot write"),
        "{h}"
    );
    assert!(api.runs().await.is_empty(), "nothing was started");

    // Space returns: the registry's retry is taken and the run goes through.
    std::fs::remove_file(&filler).unwrap();
    let (status, answer) = api.hook(&body).await;
    assert_eq!(status, 202, "{answer}");
    api.wait_status(&digest, "awaiting approval (production)")
        .await;
    assert!(manifest(&root, "staging").contains(&digest));
    let r = reqwest::get(format!("{}/healthz", api.base)).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// Stopping the line over HTTP: only an approver may freeze; a frozen production takes
/// its approval but waits to deploy (`frozen (production)`), and goes once unfrozen.
#[tokio::test(flavor = "multi_thread")]
async fn approvers_freeze_and_unfreeze_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let serve_port = free_port();
    let hook = format!("http://127.0.0.1:{serve_port}/hooks/registry");
    let (_registry, reg) = start_registry(&root, Some((&hook, HOOK_SECRET))).await;
    write_project(&root, reg, "true", "freeze: { recheck: 200ms }");
    let _serve = start_serve(&root, serve_port).await;
    let api = Api::new(serve_port);
    let post = |path: &'static str, token: Option<&'static str>, body: Value| {
        let mut r = api.client.post(format!("{}{path}", api.base)).json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move {
            let resp = r.send().await.unwrap();
            (
                resp.status().as_u16(),
                resp.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let freeze = json!({"environment": "production", "reason": "incident 7"});
    assert_eq!(post("/freeze", None, freeze.clone()).await.0, 401);
    assert_eq!(
        post("/freeze", Some(READER_TOKEN), freeze.clone()).await.0,
        401,
        "readers may not"
    );
    let (status, body) = post(
        "/freeze",
        Some(ALICE_TOKEN),
        json!({"environment": "production"}),
    )
    .await;
    assert_eq!(status, 400, "a reason is required: {body}");
    let (status, body) = post("/freeze", Some(ALICE_TOKEN), freeze).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["by"].as_str(), body["active"].as_bool()),
        (Some("alice"), Some(true))
    );

    let digest = push(&root, reg, "demo/app", "1.0.0");
    api.wait_status(&digest, "awaiting approval (production)")
        .await;
    let run = api
        .runs()
        .await
        .into_iter()
        .find(|r| r["image"]["digest"] == digest.as_str())
        .and_then(|r| r["run"].as_str().map(str::to_owned))
        .unwrap();
    let (status, body) = api.decide(&run, "production", ALICE_TOKEN, "approve").await;
    assert_eq!(status, 200, "approvals may still be given: {body}");
    api.wait_status(&digest, "frozen (production)").await;
    assert!(manifest(&root, "production").contains("example/app:0.0.1"));
    // A break-glass over HTTP: asked by alice, who may not approve her own.
    let (status, body) = post(
        "/break-glass",
        Some(ALICE_TOKEN),
        json!({"run": run, "environment": "production", "reason": "hotfix"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["requested_by"], "alice");
    let (status, body) = post(
        "/break-glass/approve",
        Some(ALICE_TOKEN),
        json!({"run": run, "environment": "production"}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("second person"),
        "{body}"
    );
    let envs = api.get("/api/environments", READER_TOKEN).await;
    let production = envs
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["environment"] == "production")
        .unwrap()
        .clone();
    assert_eq!(
        production["stopped"],
        "production of every app frozen by alice: incident 7"
    );
    assert!(production["live"].is_null());
    let staging = envs
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["environment"] == "staging")
        .unwrap();
    assert_eq!(staging["live"]["image"]["digest"], digest.as_str());
    let anonymous = api
        .client
        .get(format!("{}/api/environments", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);

    // /metrics, parsed as Prometheus does.
    let anonymous = api
        .client
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let text = api
        .client
        .get(format!("{}/metrics", api.base))
        .bearer_auth(READER_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    assert!(
        value(
            "baton_deliveries_total",
            &[("subscription", "deploy"), ("outcome", "done")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    assert_eq!(
        value("baton_runs", &[("status", "frozen (production)")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value("baton_pending_approvals", &[("environment", "production")]),
        None,
        "approved: {text}"
    );
    assert_eq!(
        value(
            "baton_dora_deployments",
            &[("app", "app"), ("environment", "staging")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            "baton_dora_deployments",
            &[("app", "app"), ("environment", "production")]
        ),
        Some(0.0),
        "{text}"
    );
    assert!(
        value(
            "baton_dora_lead_time_seconds",
            &[("environment", "staging"), ("quantile", "0.5")]
        )
        .is_some(),
        "{text}"
    );
    assert_eq!(value("baton_dead_letters", &[]), Some(0.0), "{text}");
    assert!(
        text.contains("baton_delivery_seconds_bucket{"),
        "a histogram per subscription: {text}"
    );
    // The Grafana dashboard in docs/ queries only metrics this endpoint exposes.
    let dashboard = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/grafana-dashboard.json"),
    )
    .unwrap();
    let dashboard: Value = serde_json::from_str(&dashboard).unwrap();
    let mut names = vec![];
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("baton_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                names.push(name);
            }
        }
    }
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        assert!(
            baton::runtime::metrics::FAMILIES.contains(&family),
            "the dashboard queries {name}, which /metrics does not expose"
        );
    }
    // And every family the renderer declares shows up once it has samples: the ones
    // this run has must be in the scrape.
    for family in [
        "baton_deliveries",
        "baton_delivery_seconds",
        "baton_queue_depth",
        "baton_runs",
        "baton_dora_deployments",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family}: {text}"
        );
    }

    let (status, body) = post(
        "/unfreeze",
        Some(ALICE_TOKEN),
        json!({"environment": "production", "reason": "fixed"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["lifted"]["by"], "alice");
    api.wait_status(&digest, "deployed").await;
    assert!(manifest(&root, "production").contains(&digest));
    let (status, _) = post(
        "/unfreeze",
        Some(ALICE_TOKEN),
        json!({"environment": "production"}),
    )
    .await;
    assert_eq!(status, 409, "not frozen any more");
    // Hold release: approvers only; nothing held here.
    let release = json!({"app": "app", "environment": "production"});
    assert_eq!(
        post("/holds/release", Some(READER_TOKEN), release.clone())
            .await
            .0,
        401
    );
    assert_eq!(
        post("/holds/release", Some(ALICE_TOKEN), release).await.0,
        409
    );
    let (status, _) = post("/holds/release", Some(ALICE_TOKEN), json!({"app": "app"})).await;
    assert_eq!(status, 400, "an app's environment is named");
}

/// Google Cloud (Pub/Sub pushes from Artifact Registry and Cloud Build), Azure (Event
/// Grid, with its validation handshake), GitLab's registry (distribution notifications
/// with a token header) and Alibaba ACR (a custom header) start runs through `baton serve`; each source's
/// authentication is checked first. The samples in `events/webhooks/` are what is sent;
/// their digests are used as given, so no registry is contacted.
#[tokio::test(flavor = "multi_thread")]
async fn cloud_registry_webhooks_through_http() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let serve_port = free_port();
    let (_registry, reg) = start_registry(&root, None).await;
    let app = |name: &str, host: &str, repo: &str| staging_app(name, host, repo, false);
    write_project(&root, reg, "true", "");
    let mut cfg = std::fs::read_to_string(root.join("baton.yaml")).unwrap();
    let apps = [
        app("ar", "us-east1-docker.pkg.dev", "my-project/my-repo/web"),
        app("cb", "us-east1-docker.pkg.dev", "my-project/my-repo/api"),
        app("acr", "demo.azurecr.io", "team/web"),
        app("gl", "registry.gitlab.example.com", "group/project/web"),
        app("ali", "registry.cn-hangzhou.aliyuncs.com", "team/web"),
    ]
    .concat();
    cfg = cfg.replace("apps:\n", &format!("apps:\n{apps}"));
    cfg = cfg.replace(
        "  webhooks:\n",
        "  webhooks:\n    - { name: gcp, source: pubsub, auth: { query_token: { secret_env: BATON_TEST_HOOK_SECRET } } }\n    - { name: azure, source: eventgrid, auth: { query_token: { param: code, secret_env: BATON_TEST_HOOK_SECRET } } }\n    - { name: gitlab, source: distribution, auth: { header: { name: Authorization, secret_env: BATON_TEST_HOOK_SECRET } } }\n    - { name: aliyun, source: acr, auth: { header: { name: X-Baton-Token, secret_env: BATON_TEST_HOOK_SECRET } } }\n",
    );
    std::fs::write(root.join("baton.yaml"), cfg).unwrap();
    for name in ["ar", "cb", "acr", "gl", "ali"] {
        let d = root.join(format!("manifests/staging-{name}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(root.join("manifests/staging/app.yaml"), d.join("app.yaml")).unwrap();
    }
    let _serve = start_serve(&root, serve_port).await;
    let api = Api::new(serve_port);
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../events/webhooks");
    let read = |f: &str| std::fs::read(samples.join(f)).unwrap();
    let token = HOOK_SECRET.replace(' ', "%20");
    let post = |path: String, body: Vec<u8>, header: Option<(&'static str, String)>| {
        let mut req = api.client.post(format!("{}{path}", api.base)).body(body);
        if let Some((h, v)) = header {
            req = req.header(h, v);
        }
        async move {
            let r = req.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };

    // Event Grid's validation handshake: answered once authenticated.
    let handshake = json!([{"id": "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66", "topic": "/subscriptions/s", "subject": "",
        "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"},
        "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
        "eventTime": "2026-11-29T10:00:00Z", "metadataVersion": "1", "dataVersion": "1"}]);
    let body = serde_json::to_vec(&handshake).unwrap();
    assert_eq!(post("/hooks/azure".into(), body.clone(), None).await.0, 401);
    let (status, v) = post(format!("/hooks/azure?code={token}"), body, None).await;
    assert_eq!(
        (status, v),
        (
            200,
            json!({"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"})
        )
    );
    // Unauthenticated deliveries of each source: 401.
    assert_eq!(
        post(
            "/hooks/gcp?token=nope".into(),
            read("pubsub-artifact-registry.json"),
            None
        )
        .await
        .0,
        401
    );
    assert_eq!(
        post(
            "/hooks/gitlab".into(),
            read("gitlab-registry.json"),
            Some(("Authorization", "x".into()))
        )
        .await
        .0,
        401
    );

    let digest_of_sample = |f: &str| -> String {
        let v: Value = serde_json::from_slice(&read(f)).unwrap();
        let t = baton::triggers::Trigger {
            kind: match f {
                f if f.starts_with("pubsub") => baton::triggers::TriggerKind::Pubsub,
                f if f.starts_with("eventgrid") => baton::triggers::TriggerKind::Eventgrid,
                f if f.starts_with("alibaba") => baton::triggers::TriggerKind::Acr,
                _ => baton::triggers::TriggerKind::Distribution,
            },
            received_at: chrono::Utc::now(),
            payload: v,
        };
        t.parse().unwrap().pushes[0]
            .digest
            .as_ref()
            .unwrap()
            .to_string()
    };
    for (path, file, header, app) in [
        (
            format!("/hooks/gcp?token={token}"),
            "pubsub-artifact-registry.json",
            None,
            "ar",
        ),
        (
            format!("/hooks/gcp?token={token}"),
            "pubsub-cloud-build.json",
            None,
            "cb",
        ),
        (
            format!("/hooks/azure?code={token}"),
            "eventgrid-acr-push.json",
            None,
            "acr",
        ),
        (
            "/hooks/gitlab".to_string(),
            "gitlab-registry.json",
            Some(("Authorization", HOOK_SECRET.to_string())),
            "gl",
        ),
        (
            "/hooks/aliyun".to_string(),
            "alibaba-acr.json",
            Some(("X-Baton-Token", HOOK_SECRET.to_string())),
            "ali",
        ),
    ] {
        let (status, v) = post(path.clone(), read(file), header).await;
        assert_eq!(status, 202, "{file}: {v}");
        let digest = digest_of_sample(file);
        api.wait_status(&digest, "deployed").await;
        let run = api
            .runs()
            .await
            .into_iter()
            .find(|r| r["image"]["digest"] == digest.as_str())
            .unwrap();
        assert_eq!(run["app"], app, "{file}");
        assert!(
            std::fs::read_to_string(root.join(format!("manifests/staging-{app}/app.yaml")))
                .unwrap()
                .contains(&digest),
            "{file}: deployed by digest"
        );
    }
}

/// Pub/Sub pushes authenticated by Google's OIDC token: a key pair made here by
/// `openssl` stands in for Google's (its public half in the JWKS file the webhook
/// names), tokens are signed by `openssl dgst`. Only a token signed by a JWKS key, for
/// the configured audience and service account, current, is taken.
#[tokio::test(flavor = "multi_thread")]
async fn pubsub_pushes_are_authenticated_by_googles_oidc_token() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let openssl = |args: &[&str], stdin: Option<&[u8]>| -> Vec<u8> {
        use std::io::Write;
        let mut child = Command::new("openssl")
            .args(args)
            .current_dir(&root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.unwrap_or_default())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let b64url = |b: &[u8]| {
        b64(b)
            .replace('+', "-")
            .replace('/', "_")
            .trim_end_matches('=')
            .to_string()
    };
    openssl(&["genrsa", "-out", "google.pem", "2048"], None);
    openssl(&["genrsa", "-out", "other.pem", "2048"], None);
    let modulus = String::from_utf8(openssl(
        &["rsa", "-in", "google.pem", "-noout", "-modulus"],
        None,
    ))
    .unwrap();
    let hex = modulus.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    std::fs::write(
        root.join("google-certs.json"),
        json!({"keys": [{"kty": "RSA", "kid": "test-key", "alg": "RS256", "use": "sig", "n": b64url(&n), "e": "AQAB"}]}).to_string(),
    )
    .unwrap();
    let token = |key: &str, claims: Value| {
        let signing = format!(
            "{}.{}",
            b64url(
                json!({"alg": "RS256", "kid": "test-key", "typ": "JWT"})
                    .to_string()
                    .as_bytes()
            ),
            b64url(claims.to_string().as_bytes())
        );
        let sig = openssl(&["dgst", "-sha256", "-sign", key], Some(signing.as_bytes()));
        format!("Bearer {signing}.{}", b64url(&sig))
    };
    let audience = "https://baton.example.com/hooks/gcp";
    let sa = "pubsub-pusher@my-project.iam.gserviceaccount.com";
    let now = chrono::Utc::now().timestamp();
    let claims = |aud: &str, email: &str, exp: i64| {
        json!({"iss": "https://accounts.google.com", "aud": aud, "email": email, "email_verified": true,
               "sub": "1234567890", "iat": now - 10, "exp": exp})
    };

    let serve_port = free_port();
    let (_registry, reg) = start_registry(&root, None).await;
    write_project(&root, reg, "true", "");
    let mut cfg = std::fs::read_to_string(root.join("baton.yaml")).unwrap();
    cfg = cfg.replace(
        "apps:\n",
        &format!(
            "apps:\n{}",
            staging_app(
                "ar",
                "us-east1-docker.pkg.dev",
                "my-project/my-repo/web",
                false
            )
        ),
    );
    cfg = cfg.replace(
        "  webhooks:\n",
        &format!("  webhooks:\n    - {{ name: gcp, source: pubsub, auth: {{ google_oidc: {{ audience: \"{audience}\", jwks_file: google-certs.json, email: {sa} }} }} }}\n"),
    );
    std::fs::write(root.join("baton.yaml"), cfg).unwrap();
    std::fs::create_dir_all(root.join("manifests/staging-ar")).unwrap();
    std::fs::copy(
        root.join("manifests/staging/app.yaml"),
        root.join("manifests/staging-ar/app.yaml"),
    )
    .unwrap();
    let _serve = start_serve(&root, serve_port).await;
    let api = Api::new(serve_port);
    let body = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../events/webhooks/pubsub-artifact-registry.json"),
    )
    .unwrap();
    let send = |auth: Option<String>| {
        let mut req = api
            .client
            .post(format!("{}/hooks/gcp", api.base))
            .body(body.clone());
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    for (auth, why) in [
        (None, "no token"),
        (
            Some(token("other.pem", claims(audience, sa, now + 3600))),
            "signed by a key not in the JWKS",
        ),
        (
            Some(token(
                "google.pem",
                claims("https://elsewhere.example.com", sa, now + 3600),
            )),
            "another audience",
        ),
        (
            Some(token(
                "google.pem",
                claims(audience, "someone@evil.example", now + 3600),
            )),
            "another service account",
        ),
        (
            Some(token("google.pem", claims(audience, sa, now - 3600))),
            "expired",
        ),
    ] {
        assert_eq!(send(auth).await, 401, "{why}");
    }
    assert_eq!(
        send(Some(token("google.pem", claims(audience, sa, now + 3600)))).await,
        202
    );
    api.wait_status(
        "sha256:6ec128e26cd5c6f5d7a2c4a5d1c8e1a4b3a9b6e3f4c1d2e3f4a5b6c7d8e9f0a1",
        "deployed",
    )
    .await;
}
