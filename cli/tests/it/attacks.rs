//! The security issue's attacks, each performed against the real `baton serve` binary
//! over HTTP (with Debian's `docker-registry` where a real push is needed), each named
//! after the attack. Every test asserts the refusal and that nothing changed: manifests
//! byte-identical, no approval recorded, no run started, no secret seen.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::registry::{
    ALICE_TOKEN, Api, HOOK_SECRET, READER_TOKEN, free_port, manifest, push, serve_command,
    start_registry, start_serve_with, write_project,
};

/// A project served on a free port, with a registry (not notifying: the tests post).
pub(crate) struct Served {
    _dir: tempfile::TempDir,
    pub(crate) root: std::path::PathBuf,
    pub(crate) api: Api,
    pub(crate) registry: u16,
    _registry: crate::registry::Proc,
    _serve: crate::registry::Proc,
}

/// `edit` rewrites the written configuration before `baton serve` starts.
pub(crate) async fn served(
    test_cmd: &str,
    edit: impl Fn(String, u16) -> String,
    env: &[(&str, &str)],
) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (registry_proc, registry) = start_registry(&root, None).await;
    write_project(&root, registry, test_cmd, "");
    let cfg = std::fs::read_to_string(root.join("baton.yaml")).unwrap();
    std::fs::write(root.join("baton.yaml"), edit(cfg, registry)).unwrap();
    let port = free_port();
    let serve = start_serve_with(&root, port, env).await;
    Served {
        _dir: dir,
        root,
        api: Api::new(port),
        registry,
        _registry: registry_proc,
        _serve: serve,
    }
}

fn notification(registry: u16, digest: &str, tag: &str, host: &str, actor: Option<&str>) -> Value {
    let mut ev = json!({
        "id": format!("n-{}", &digest[7..19]), "timestamp": "2026-11-20T10:00:00Z", "action": "push",
        "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
                   "repository": "demo/app", "tag": tag},
        "request": {"host": host}});
    if let Some(a) = actor {
        ev["actor"] = json!({ "name": a });
    }
    let _ = registry;
    json!({ "events": [ev] })
}

fn manifests(root: &Path) -> (String, String) {
    (manifest(root, "staging"), manifest(root, "production"))
}

#[tokio::test(flavor = "multi_thread")]
async fn injected_registry_host_tag_or_repository_never_reaches_a_manifest() {
    // The app names no registry, so the host of a push is whatever the notification says.
    let s = served(
        "true",
        |c, reg| {
            c.replace(
                &format!("    registry: 127.0.0.1:{reg}\n    repository: demo/app"),
                "    repository: demo/app",
            )
        },
        &[],
    )
    .await;
    let digest = push(&s.root, s.registry, "demo/app", "1.0.0");
    let before = manifests(&s.root);
    let host = format!("127.0.0.1:{}", s.registry);
    let attacks = [
        (
            "request.host",
            notification(
                s.registry,
                &digest,
                "1.0.0",
                &format!(
                    "{host}\n          securityContext:\n            privileged: true\n          command: [\"/bin/sh\"]"
                ),
                Some("ci-bot"),
            ),
        ),
        (
            "target.tag",
            notification(
                s.registry,
                &digest,
                &"9".repeat(200_000),
                &host,
                Some("ci-bot"),
            ),
        ),
        (
            "target.tag",
            notification(
                s.registry,
                &digest,
                "1.0.0\nprivileged: true",
                &host,
                Some("ci-bot"),
            ),
        ),
        ("target.repository", {
            let mut n = notification(s.registry, &digest, "1.0.0", &host, Some("ci-bot"));
            n["events"][0]["target"]["repository"] = json!("demo/app\"\n  evil: x");
            n
        }),
        (
            "actor.name",
            notification(s.registry, &digest, "1.0.0", &host, Some("ci\u{1b}[2Jbot")),
        ),
    ];
    for (field, body) in attacks {
        let (status, v) = s.api.hook(&body.to_string()).await;
        assert_eq!(status, 400, "{field}: {v}");
        let e = v["error"].as_str().unwrap();
        assert!(
            e.contains(&format!("events[0].{field}")),
            "names {field}: {e}"
        );
        assert!(
            e.len() < 600,
            "a bounded excerpt, not the value: {} bytes",
            e.len()
        );
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(s.api.runs().await.is_empty(), "no run started");
    assert_eq!(manifests(&s.root), before, "manifests byte-identical");
    // the same push, well-formed, deploys by digest: only the image line changes
    let (status, v) = s
        .api
        .hook(&notification(s.registry, &digest, "1.0.0", &host, Some("ci-bot")).to_string())
        .await;
    assert_eq!(status, 202, "{v}");
    s.api
        .wait_status(&digest, "awaiting approval (production)")
        .await;
    let staging = manifest(&s.root, "staging");
    assert_eq!(
        staging,
        before
            .0
            .replace("example/app:0.0.1", &format!("{host}/demo/app@{digest}")),
        "only the image scalar changed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn test_commands_cannot_read_the_servers_secrets_and_die_with_their_group() {
    // A unique argument marks the process the tests leave behind.
    let marker = format!("300.{}1", std::process::id());
    // The pushed tests print their environment (kept with the run, served over HTTP),
    // where a token would let them approve themselves, and leave a process behind.
    let cmd = format!("env; sleep {marker} & exit 0");
    let s = served(&cmd, |c, _| c, &[]).await;
    let digest = push(&s.root, s.registry, "demo/app", "1.0.0");
    let host = format!("127.0.0.1:{}", s.registry);
    let (status, _) = s
        .api
        .hook(&notification(s.registry, &digest, "1.0.0", &host, Some("ci-bot")).to_string())
        .await;
    assert_eq!(status, 202);
    s.api
        .wait_status(&digest, "awaiting approval (production)")
        .await;
    let run = s.api.runs().await[0]["run"].as_str().unwrap().to_string();
    let output = crate::stored(&s.root, &format!("runs/app/{run}/tests/output.log"));
    assert!(
        output.contains("BATON_IMAGE="),
        "the test saw its image: {output}"
    );
    for secret in [
        ALICE_TOKEN,
        HOOK_SECRET,
        READER_TOKEN,
        "BATON_TEST_ALICE_TOKEN",
        "BATON_LOG",
    ] {
        assert!(
            !output.contains(secret),
            "{secret} reached the test command:\n{output}"
        );
    }
    let view = s.api.get(&format!("/runs/{run}"), READER_TOKEN).await;
    assert!(!view.to_string().contains(ALICE_TOKEN));
    // the run ended; nothing it started is left
    let alive = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .any(|c| String::from_utf8_lossy(&c).contains(&format!("sleep\0{marker}")));
    assert!(!alive, "the test's background process outlived it");
    // and no approval was recorded
    let pending = s.api.get("/approvals", ALICE_TOKEN).await;
    assert_eq!(pending[0]["approvals"], 0, "{pending}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_test_that_outlives_its_timeout_is_killed_with_its_children() {
    let marker = format!("300.{}2", std::process::id());
    let cmd = format!("sleep {marker} & sleep 301");
    let s = served(
        &cmd,
        |c, _| c.replace("command: { run:", "command: { timeout: 1s, run:"),
        &[],
    )
    .await;
    let digest = push(&s.root, s.registry, "demo/app", "1.0.0");
    let host = format!("127.0.0.1:{}", s.registry);
    s.api
        .hook(&notification(s.registry, &digest, "1.0.0", &host, Some("ci-bot")).to_string())
        .await;
    s.api.wait_status(&digest, "tests failed").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let alive = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .any(|c| String::from_utf8_lossy(&c).contains(&format!("sleep\0{marker}")));
    assert!(!alive, "the whole process group was killed at the timeout");
}

/// `baton serve` refuses to start; returns its stderr.
fn refused_start(root: &Path, listen: &str, env: &[(&str, &str)]) -> String {
    let mut child = serve_command(root, listen, env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "baton serve started");
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("baton serve started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_secrets_and_open_endpoints_on_public_addresses_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_project(root, 5000, "true", "");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // a webhook secret that is set but empty would let an empty header in
    let e = refused_start(root, &listen, &[("BATON_TEST_HOOK_SECRET", "")]);
    assert!(
        e.contains("BATON_TEST_HOOK_SECRET") && e.contains("empty"),
        "{e}"
    );
    let e = refused_start(root, &listen, &[("BATON_TEST_ALICE_TOKEN", "  ")]);
    assert!(
        e.contains("BATON_TEST_ALICE_TOKEN") && e.contains("empty"),
        "{e}"
    );
    // auth: none on an address others can reach
    let cfg = std::fs::read_to_string(root.join("baton.yaml")).unwrap();
    let open = cfg.replace(
        "auth: { header: { name: Authorization, secret_env: BATON_TEST_HOOK_SECRET } }",
        "auth: none",
    );
    assert_ne!(open, cfg);
    std::fs::write(root.join("baton.yaml"), &open).unwrap();
    let e = refused_start(root, &format!("0.0.0.0:{port}"), &[]);
    assert!(
        e.contains("serve.webhooks[0].auth") && e.contains("loopback"),
        "{e}"
    );
    let listens = open.replace("serve:\n", "serve:\n  listen: 0.0.0.0:8080\n");
    std::fs::write(root.join("baton.yaml"), &listens).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["status"])
        .current_dir(root)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("serve.webhooks[0].auth"),
        "{e}"
    );
    // the old bare identity header is refused with what to write instead
    let header = cfg.replace("serve:\n", "serve:\n  identity_header: X-Forwarded-User\n");
    std::fs::write(root.join("baton.yaml"), &header).unwrap();
    let e = refused_start(root, &listen, &[]);
    assert!(
        e.contains("serve.identity_header") && e.contains("trusted_proxy"),
        "{e}"
    );
    assert!(!root.join(".baton/store/runs").exists(), "nothing ran");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_identity_header_without_the_proxy_secret_approves_nothing() {
    const PROXY_SECRET: &str = "proxy-shared-secret-0123456789";
    let s = served(
        "true",
        |c, _| {
            c.replace(
                "serve:\n",
                "serve:\n  trusted_proxy: { user_header: X-Forwarded-User, secret_env: BATON_TEST_PROXY_SECRET }\n",
            )
        },
        &[("BATON_TEST_PROXY_SECRET", PROXY_SECRET)],
    )
    .await;
    let digest = push(&s.root, s.registry, "demo/app", "1.0.0");
    let host = format!("127.0.0.1:{}", s.registry);
    s.api
        .hook(&notification(s.registry, &digest, "1.0.0", &host, Some("ci-bot")).to_string())
        .await;
    s.api
        .wait_status(&digest, "awaiting approval (production)")
        .await;
    let run = s.api.runs().await[0]["run"].as_str().unwrap().to_string();
    let before = manifest(&s.root, "production");
    let post = |headers: Vec<(&'static str, String)>| {
        let mut r = s
            .api
            .client
            .post(format!("{}/approvals/{run}/production", s.api.base))
            .json(&json!({"decision": "approve"}));
        for (k, v) in headers {
            r = r.header(k, v);
        }
        r.send()
    };
    // any local process (a test command, a same-host proxy that forwards the header)
    let r = post(vec![("X-Forwarded-User", "alice".into())])
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = post(vec![
        ("X-Forwarded-User", "alice".into()),
        ("X-Baton-Proxy-Secret", "guess".into()),
    ])
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(manifest(&s.root, "production"), before, "nothing deployed");
    let rec: Value = serde_json::from_str(&crate::stored(
        &s.root,
        &format!("approvals/app/{run}/production.json"),
    ))
    .unwrap();
    assert_eq!(rec["decisions"], json!([]), "no decision recorded");
    // the proxy, with its secret, is believed
    let r = post(vec![
        ("X-Forwarded-User", "alice".into()),
        ("X-Baton-Proxy-Secret", PROXY_SECRET.into()),
    ])
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    s.api.wait_status(&digest, "deployed").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_pusher_cannot_be_approved_unless_the_policy_says_so() {
    // Quay-like: a push whose source does not say who pushed (a registry without auth).
    let s = served("true", |c, _| c.replace(", unknown_pusher: allow", ""), &[]).await;
    let digest = push(&s.root, s.registry, "demo/app", "1.0.0");
    let host = format!("127.0.0.1:{}", s.registry);
    s.api
        .hook(&notification(s.registry, &digest, "1.0.0", &host, None).to_string())
        .await;
    s.api
        .wait_status(&digest, "awaiting approval (production)")
        .await;
    let run = s.api.runs().await[0]["run"].as_str().unwrap().to_string();
    // the request says so
    let pending = s.api.get("/approvals", ALICE_TOKEN).await;
    assert!(
        pending[0]["self_approval"]
            .as_str()
            .unwrap()
            .starts_with("refused: the source did not say who pushed"),
        "{pending}"
    );
    let before = manifest(&s.root, "production");
    let (status, body) = s
        .api
        .decide(&run, "production", ALICE_TOKEN, "approve")
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("unknown_pusher"),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(manifest(&s.root, "production"), before);
    // rejecting stays possible
    let (status, body) = s
        .api
        .decide(&run, "production", ALICE_TOKEN, "reject")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "rejected");
}

/// Opens a connection and sends `head` (and nothing more).
fn stall(port: u16, head: &str) -> TcpStream {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(head.as_bytes()).unwrap();
    c
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_and_stalled_clients_cost_no_memory_and_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    write_project(&root, 5000, "true", "");
    let cfg = std::fs::read_to_string(root.join("baton.yaml")).unwrap();
    std::fs::write(
        root.join("baton.yaml"),
        cfg.replace(
            "serve:\n",
            "serve:\n  request_timeout: 1s\n  max_connections: 16\n",
        ),
    )
    .unwrap();
    let port = free_port();
    let serve = start_serve_with(&root, port, &[]).await;
    let pid = serve.0.id();
    let api = Api::new(port);
    let rss_before = rss_kb(pid);

    // 1. A wrong secret with a 2 MB body announced: refused from the headers, before a
    //    byte of the body is read.
    let mut c = stall(
        port,
        "POST /hooks/registry HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\nContent-Length: 2000000\r\n\r\n",
    );
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = [0u8; 64];
    let n = c.read(&mut got).unwrap();
    assert!(
        String::from_utf8_lossy(&got[..n]).starts_with("HTTP/1.1 401"),
        "answered 401 without the body: {}",
        String::from_utf8_lossy(&got[..n])
    );

    // 2. Authenticated, but over the 1 MiB cap: 413 from the declared length, before the
    //    body is read (a raw socket: an HTTP client may see its write cut off instead of
    //    the answer, since the server does not read what it refuses).
    let mut c = stall(
        port,
        &format!(
            "POST /hooks/registry HTTP/1.1\r\nHost: x\r\nAuthorization: {HOOK_SECRET}\r\nContent-Length: 2097152\r\n\r\n{}",
            " ".repeat(1000)
        ),
    );
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = c.read(&mut got).unwrap();
    assert!(
        String::from_utf8_lossy(&got[..n]).starts_with("HTTP/1.1 413"),
        "answered 413: {}",
        String::from_utf8_lossy(&got[..n])
    );

    // 3. 100 stalled uploads (headers and part of a body, or half the headers): each is
    //    cut at the request timeout, and memory does not follow them.
    let mut stalled = vec![];
    for i in 0..100 {
        let head = if i % 2 == 0 {
            format!(
                "POST /hooks/registry HTTP/1.1\r\nHost: x\r\nAuthorization: {HOOK_SECRET}\r\nContent-Length: 1048000\r\n\r\n{}",
                "x".repeat(60_000)
            )
        } else {
            "POST /hooks/registry HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_string()
        };
        let c = std::thread::spawn(move || {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let _ = c.write_all(head.as_bytes());
            c
        });
        stalled.push(c);
    }
    let mut conns: Vec<TcpStream> = stalled.into_iter().map(|t| t.join().unwrap()).collect();
    // healthz still answers (it waits for a free slot at most a request timeout)
    let started = Instant::now();
    let r = reqwest::Client::new()
        .get(format!("{}/healthz", api.base))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    println!(
        "healthz behind 100 stalled clients: {} ms",
        started.elapsed().as_millis()
    );
    // every stalled connection is closed by the server
    for c in &mut conns {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut sink = Vec::new();
        match c.read_to_end(&mut sink) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("a stalled connection was left open: {e}"),
        }
    }
    let rss_after = rss_kb(pid);
    println!("baton serve RSS: {rss_before} kB before, {rss_after} kB after 100 stalled uploads");
    assert!(
        rss_after < rss_before + 32 * 1024,
        "stalled uploads held memory: {rss_before} → {rss_after} kB"
    );
    assert!(
        !root.join(".baton/bus/messages.jsonl").exists()
            || std::fs::read_to_string(root.join(".baton/bus/messages.jsonl"))
                .unwrap()
                .is_empty(),
        "nothing was queued"
    );
    drop(serve);
}

#[tokio::test(flavor = "multi_thread")]
async fn run_data_is_not_public() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    write_project(&root, 5000, "true", "");
    let port = free_port();
    let _serve = start_serve_with(&root, port, &[]).await;
    let c = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    for path in ["/runs", "/runs/0123456789abcdef", "/approvals"] {
        let r = c.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path} without a token");
        let r = c
            .get(format!("{base}{path}"))
            .bearer_auth("not-a-token")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path} with a wrong token");
    }
    let r = c
        .get(format!("{base}/runs"))
        .bearer_auth(READER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = c
        .get(format!("{base}/runs"))
        .bearer_auth(ALICE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // a reader is not an approver
    let r = c
        .post(format!("{base}/approvals/0123456789abcdef/production"))
        .bearer_auth(READER_TOKEN)
        .json(&json!({"decision": "approve"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = c
        .get(format!("{base}/runs/..%2F..%2Fapprovals"))
        .bearer_auth(READER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400, "a run id is parsed");
    let r = c.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_credentials_never_follow_a_foreign_token_realm() {
    use axum::Router;
    use axum::http::HeaderMap;
    use axum::response::IntoResponse;
    use axum::routing::get;
    use std::sync::{Arc, Mutex};
    // The realm: another host (127.0.0.2), plain http. It records what it is sent.
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let realm = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let realm_addr = realm.local_addr().unwrap();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        let app = Router::new().route(
            "/token",
            get(move |h: HeaderMap| {
                let seen = seen2.clone();
                async move {
                    seen.lock().unwrap().push(
                        h.get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned),
                    );
                    axum::http::StatusCode::UNAUTHORIZED.into_response()
                }
            }),
        );
        axum::serve(realm, app).await
    });
    // The registry (docker.io, as Docker Hub's webhook names it) challenges with it.
    let registry = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let reg_addr = registry.local_addr().unwrap();
    tokio::spawn(async move {
        let app = Router::new().route(
            "/v2/{ns}/{name}/manifests/{reference}",
            get(move || async move {
                let challenge =
                    format!("Bearer realm=\"http://{realm_addr}/token\",service=\"registry\"");
                (
                    axum::http::StatusCode::UNAUTHORIZED,
                    [("www-authenticate", challenge)],
                )
                    .into_response()
            }),
        );
        axum::serve(registry, app).await
    });
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    write_project(&root, 5000, "true", "");
    let cfg = std::fs::read_to_string(root.join("baton.yaml")).unwrap();
    let cfg = cfg
        .replace(
            "registries:\n",
            &format!("registries:\n  - {{ host: docker.io, url: \"http://{reg_addr}\", auth: {{ basic: {{ username: ci, password_env: BATON_TEST_REGISTRY_PASSWORD }} }} }}\n"),
        )
        .replace("    registry: 127.0.0.1:5000\n    repository: demo/app", "    registry: docker.io\n    repository: demo/app")
        .replace(
            "  webhooks:\n",
            "  webhooks:\n    - { name: hub, source: dockerhub, auth: { query_token: { secret_env: BATON_TEST_HOOK_SECRET } } }\n",
        );
    std::fs::write(root.join("baton.yaml"), cfg).unwrap();
    const PASSWORD: &str = "registry-password-canary-77";
    let port = free_port();
    let _serve = start_serve_with(&root, port, &[("BATON_TEST_REGISTRY_PASSWORD", PASSWORD)]).await;
    let hub = json!({"push_data": {"pushed_at": 1795230000, "pusher": "ci-bot", "tag": "1.0.0"},
                     "repository": {"repo_name": "demo/app"}});
    let r = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{port}/hooks/hub?token={}",
            HOOK_SECRET.replace(' ', "%20")
        ))
        .body(hub.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the realm was never asked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen.lock().unwrap().iter().all(Option::is_none),
        "credentials were sent to a realm on another host: {:?}",
        seen.lock().unwrap()
    );
    let log = std::fs::read_to_string(root.join("serve.log")).unwrap();
    assert!(log.contains("token realm"), "the withholding is logged");
    assert!(!log.contains(PASSWORD));
}

/// The test command's parent is `baton`, whose environment (at `/proc/<pid>/environ`)
/// holds the secrets it was started with. `baton` makes itself non-dumpable, so a
/// process of the same user cannot read it. Run as an ordinary user (`nobody` through
/// setpriv when the tests run as root, since root reads everything anyway).
#[test]
fn a_test_command_cannot_read_its_parents_environment() {
    use std::os::unix::fs::PermissionsExt;
    const CANARY: &str = "parent-secret-canary-4f1d";
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    std::fs::write(root.join("baton.yaml"), crate::EXAMPLE.replace(
        r#"run: ["sh", "-c", "echo \"smoke-testing $BATON_IMAGE\"; test -n \"$BATON_IMAGE_DIGEST\""]"#,
        r#"run: ["sh", "-c", "echo parent=$PPID; tr '\\0' '\\n' < /proc/$PPID/environ; echo read-status=$?"]"#,
    )).unwrap();
    for env in ["staging", "production"] {
        std::fs::create_dir_all(root.join("manifests").join(env)).unwrap();
        std::fs::write(
            root.join("manifests").join(env).join("web.yaml"),
            crate::STAGING,
        )
        .unwrap();
    }
    let push = crate::push_file(&root, "1.0.0", 'c', "2026-11-20T10:00:00Z");
    let as_root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(1)
        == 0;
    let mut cmd = if as_root {
        // nobody must be able to reach the binary and own the project
        for entry in walk(&root) {
            std::os::unix::fs::chown(&entry, Some(65534), Some(65534)).unwrap();
        }
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_baton"));
        c
    } else {
        std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
    };
    let o = cmd
        .args(["--json", "ingest"])
        .arg(&push)
        .current_dir(&root)
        .env_remove("BATON_CONFIG")
        .env_remove("BATON_STATE_DIR")
        .env("BATON_PARENT_SECRET", CANARY)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let run = v["runs"][0]["run"].as_str().unwrap().to_string();
    let output = crate::stored(&root, &format!("runs/web/{run}/tests/output.log"));
    assert!(output.contains("parent="), "the test ran: {output}");
    assert!(
        !output.contains(CANARY),
        "the test read baton's environment through /proc:\n{output}"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
