//! The canary: every secret `baton serve` holds is set to a distinctive value, then a
//! whole run happens through the real binary and a real registry (push, tests, an
//! approval over HTTP, deploys, a failed test run, a notification, a malformed webhook
//! kept as a dead letter). Afterwards no secret value appears anywhere Baton writes or
//! answers: its log (at debug level), the run records, events, dead letters and every
//! file of the state directory, every HTTP response, and the notifications it sent.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::registry::{free_port, push, start_registry, start_serve_with, write_project};

const HOOK: &str = "Bearer canary-hook-7f3a9e1c5b";
const ALICE: &str = "canary-alice-2d8b6f0e4a";
const READER: &str = "canary-reader-9c1e7a3f5d";
const PROXY: &str = "canary-proxy-5b2d8f1a7c";
const REGISTRY_PASSWORD: &str = "canary-registry-4e9a2c6b8d";
const SLACK_PATH: &str = "canary-slack-8f4c1a7e3b";

fn canaries() -> [&'static str; 6] {
    // The hook secret is matched without its scheme word.
    [
        "canary-hook-7f3a9e1c5b",
        ALICE,
        READER,
        PROXY,
        REGISTRY_PASSWORD,
        SLACK_PATH,
    ]
}

/// Waits for the run of `digest` to reach `want`, keeping every answer; returns its id.
async fn wait(
    client: &reqwest::Client,
    base: &str,
    digest: &str,
    want: &str,
    responses: &mut Vec<String>,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = client
            .get(format!("{base}/runs"))
            .bearer_auth(READER)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        responses.push(body);
        if let Some(r) = v
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["image"]["digest"] == digest && r["status"] == want)
        {
            return r["run"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "{digest} never reached {want}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_appears_in_logs_records_events_dead_letters_responses_or_notifications() {
    // The reaction's receiver: its URL (a secret, like a Slack webhook URL) carries a
    // canary; what it receives must not.
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slack = format!("http://{}/{SLACK_PATH}", listener.local_addr().unwrap());
    {
        let received = received.clone();
        tokio::spawn(async move {
            let app = axum::Router::new().route(
                &format!("/{SLACK_PATH}"),
                axum::routing::post(move |body: String| {
                    let received = received.clone();
                    async move {
                        received.lock().unwrap().push(body);
                        "ok"
                    }
                }),
            );
            axum::serve(listener, app).await
        });
    }

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let serve_port = free_port();
    let hook = format!("http://127.0.0.1:{serve_port}/hooks/registry");
    let (_registry, reg) = start_registry(&root, Some((&hook, HOOK))).await;
    // the tests print their whole environment; 1.1.0's fail
    write_project(
        &root,
        reg,
        "env; echo token=$BATON_TEST_ALICE_TOKEN; test $BATON_IMAGE_TAG != 1.1.0",
        "",
    );
    let cfg = std::fs::read_to_string(root.join("baton.yaml")).unwrap();
    let cfg = cfg
        .replace(
            &format!("  - host: 127.0.0.1:{reg}\n    url: http://127.0.0.1:{reg}\n"),
            &format!("  - host: 127.0.0.1:{reg}\n    url: http://127.0.0.1:{reg}\n    auth: {{ basic: {{ username: ci, password_env: BATON_TEST_REGISTRY_PASSWORD }} }}\n"),
        )
        .replace(
            "serve:\n",
            "reactions:\n  - name: chat\n    on: { type: [tests.failed, deploy.succeeded, approval.requested] }\n    notify: { webhook: { url_env: BATON_TEST_SLACK_URL } }\nserve:\n  trusted_proxy: { user_header: X-Forwarded-User, secret_env: BATON_TEST_PROXY_SECRET }\n",
        );
    assert!(cfg.contains("BATON_TEST_REGISTRY_PASSWORD") && cfg.contains("BATON_TEST_SLACK_URL"));
    std::fs::write(root.join("baton.yaml"), cfg).unwrap();
    let _serve = start_serve_with(
        &root,
        serve_port,
        &[
            ("BATON_TEST_HOOK_SECRET", HOOK),
            ("BATON_TEST_ALICE_TOKEN", ALICE),
            ("BATON_TEST_READER_TOKEN", READER),
            ("BATON_TEST_PROXY_SECRET", PROXY),
            ("BATON_TEST_REGISTRY_PASSWORD", REGISTRY_PASSWORD),
            ("BATON_TEST_SLACK_URL", &slack),
            ("BATON_LOG", "debug"),
        ],
    )
    .await;
    let base = format!("http://127.0.0.1:{serve_port}");
    let client = reqwest::Client::new();
    let mut responses: Vec<String> = vec![];
    // a push, its tests, staging, and production's approval over HTTP (token, then the
    // proxy for the second run)
    let d100 = push(&root, reg, "demo/app", "1.0.0");
    let run = wait(
        &client,
        &base,
        &d100,
        "awaiting approval (production)",
        &mut responses,
    )
    .await;
    let r = client
        .get(format!("{base}/approvals"))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    responses.push(r.text().await.unwrap());
    let r = client
        .post(format!("{base}/approvals/{run}/production"))
        .bearer_auth(ALICE)
        .json(&json!({"decision": "approve", "comment": "ship it"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    responses.push(r.text().await.unwrap());
    wait(&client, &base, &d100, "deployed", &mut responses).await;
    let r = client
        .get(format!("{base}/runs/{run}"))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    responses.push(r.text().await.unwrap());
    // a failure
    let d110 = push(&root, reg, "demo/app", "1.1.0");
    wait(&client, &base, &d110, "tests failed", &mut responses).await;
    // a refused and a malformed webhook (the second kept as a dead letter)
    for (auth, body) in [
        ("Bearer wrong", r#"{"events": []}"#),
        (HOOK, r#"{"events": [{"id": "x", "action": "push"}]}"#),
    ] {
        let r = client
            .post(format!("{base}/hooks/registry"))
            .header("Authorization", auth)
            .body(body)
            .send()
            .await
            .unwrap();
        responses.push(r.text().await.unwrap());
    }
    // a decision through the proxy, with its secret (the approval is already decided)
    let r = client
        .post(format!("{base}/approvals/{run}/production"))
        .header("X-Forwarded-User", "alice")
        .header("X-Baton-Proxy-Secret", PROXY)
        .json(&json!({"decision": "approve"}))
        .send()
        .await
        .unwrap();
    responses.push(r.text().await.unwrap());
    // the notifications arrive
    let deadline = Instant::now() + Duration::from_secs(20);
    while received.lock().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "the reactions never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Everything Baton wrote or said.
    let mut places: Vec<(String, String)> = vec![];
    for f in files(&root.join(".baton")) {
        let bytes = std::fs::read(&f).unwrap();
        places.push((
            f.display().to_string(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    // A run's objects are deflated in their segment: read as the store gives them too.
    for (key, text) in crate::stored_under(&root, "") {
        places.push((format!("store object {key}"), text));
    }
    let log = std::fs::read_to_string(root.join("serve.log")).unwrap();
    assert!(
        log.contains("DEBUG") || log.contains("debug"),
        "the log is at debug level"
    );
    places.push(("serve.log".into(), log));
    for (i, r) in responses.iter().enumerate() {
        places.push((format!("HTTP response {i}"), r.clone()));
    }
    for (i, n) in received.lock().unwrap().iter().enumerate() {
        places.push((format!("notification {i}"), n.clone()));
    }
    let dead = root.join(".baton/store/deadletters/webhooks/registry");
    assert_eq!(
        std::fs::read_dir(&dead).unwrap().count(),
        1,
        "a dead letter was kept"
    );
    let output = crate::stored(&root, &format!("runs/app/{run}/tests/output.log"));
    assert!(
        output.contains("token=\n"),
        "the test looked for the token: {output}"
    );
    assert!(places.len() > 30, "{} places scanned", places.len());
    for (place, text) in &places {
        for secret in canaries() {
            assert!(
                !text.contains(secret),
                "{secret} appears in {place}:\n{}",
                &text[text.find(secret).unwrap().saturating_sub(200)..]
                    .chars()
                    .take(400)
                    .collect::<String>()
            );
        }
    }
}
