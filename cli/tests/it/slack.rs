//! Approve from Slack through `baton serve`: the `slack` reaction posts the approval
//! request with Approve/Reject buttons to a receiver standing in for Slack's incoming
//! webhook; button presses come back signed as Slack signs them (v0 HMAC with the
//! signing secret). Forged, stale, replayed and unmapped presses decide nothing; the
//! approval rules still apply; the message is updated through `response_url`.

use std::time::{Duration, Instant};

use baton_testkit::free_port;
use serde_json::{Value, json};

use crate::registry::{
    Api, HOOK_SECRET, hmac_sha256_hex, manifest, push, start_registry, start_serve_with,
    write_project,
};

const SIGNING_SECRET: &str = "slack-signing-secret-for-the-tests";

/// A button press as Slack posts it: the form body and its signature headers.
fn press(
    user: &str,
    action: &str,
    value: &str,
    response_url: &str,
    ts: i64,
) -> (String, String, String) {
    let payload = json!({"type": "block_actions", "user": {"id": user, "username": "x"},
        "actions": [{"action_id": action, "value": value, "type": "button"}],
        "response_url": response_url});
    let mut body = String::from("payload=");
    for b in payload.to_string().bytes() {
        if b.is_ascii_alphanumeric() {
            body.push(b as char);
        } else {
            body.push_str(&format!("%{b:02X}"));
        }
    }
    let sig = format!(
        "v0={}",
        hmac_sha256_hex(
            SIGNING_SECRET.as_bytes(),
            format!("v0:{ts}:{body}").as_bytes()
        )
    );
    (body, ts.to_string(), sig)
}

#[tokio::test(flavor = "multi_thread")]
async fn approve_from_slack_through_baton_serve() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let serve_port = free_port();
    let slack = baton_testkit::receiver::start(|_| (200, json!("ok"))).await;
    let slack_port = slack.port;
    let (_registry, reg) = start_registry(&root, None).await;
    write_project(
        &root,
        reg,
        "true",
        &format!(
            "reactions:\n  - name: slack\n    on: {{ type: [approval.requested] }}\n    notify: {{ webhook: {{ url: \"http://127.0.0.1:{slack_port}/incoming\", format: slack }} }}\n"
        ),
    );
    let mut cfg = std::fs::read_to_string(root.join("baton.yaml"))
        .unwrap()
        .replace(
            "approvers: [alice], required: 1",
            "approvers: [alice, bob], required: 1",
        );
    cfg.push_str(&format!(
        "  slack:\n    signing_secret_env: BATON_TEST_SLACK_SECRET\n    users: {{ U0ALICE: alice, U0BOB: bob, U0EVE: eve }}\n    response_urls: [\"http://127.0.0.1:{slack_port}/\"]\n"
    ));
    std::fs::write(root.join("baton.yaml"), cfg).unwrap();
    let _serve = start_serve_with(
        &root,
        serve_port,
        &[("BATON_TEST_SLACK_SECRET", SIGNING_SECRET)],
    )
    .await;
    let api = Api::new(serve_port);

    // alice pushed 1.0.0 (the registry's notification names her).
    let d = push(&root, reg, "demo/app", "1.0.0");
    let note = baton_testkit::build::dist_push(
        "demo/app",
        "1.0.0",
        &d,
        "alice",
        chrono::Utc::now(),
        "n-1",
    )
    .to_string()
    .replace("localhost:5000", &format!("127.0.0.1:{reg}"));
    let r = api
        .client
        .post(format!("{}/hooks/registry", api.base))
        .header("Authorization", HOOK_SECRET)
        .body(note)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    api.wait_status(&d, "awaiting approval (production)").await;
    // The request reached "Slack" with the buttons.
    let start = Instant::now();
    let message = loop {
        if let Some(r) = slack.seen().into_iter().find(|r| r.path == "/incoming") {
            break r.body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no Slack message"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let actions = message["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "actions")
        .unwrap_or_else(|| panic!("buttons: {message:#}"));
    let approve = &actions["elements"][0];
    assert_eq!(approve["action_id"], "baton-approve");
    assert_eq!(actions["elements"][1]["action_id"], "baton-reject");
    let value = approve["value"].as_str().unwrap().to_string();
    assert!(value.ends_with("/production"), "{value}");

    let send = |(body, ts, sig): (String, String, String)| {
        let client = api.client.clone();
        let url = format!("{}/slack/interactions", api.base);
        async move {
            let r = client
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("x-slack-request-timestamp", ts)
                .header("x-slack-signature", sig)
                .body(body)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let now = chrono::Utc::now().timestamp();
    let respond = format!("http://127.0.0.1:{slack_port}/respond/1");
    // Forged: wrong secret; stale: six minutes old.
    let (body, ts, _) = press("U0ALICE", "baton-approve", &value, &respond, now);
    let forged = format!(
        "v0={}",
        hmac_sha256_hex(b"not-the-secret", format!("v0:{ts}:{body}").as_bytes())
    );
    assert_eq!(send((body, ts, forged)).await.0, 401);
    assert_eq!(
        send(press(
            "U0ALICE",
            "baton-approve",
            &value,
            &respond,
            now - 360
        ))
        .await
        .0,
        401
    );
    // Not an approver of production (eve), and not mapped at all: nothing decided.
    let (status, v) = send(press("U0EVE", "baton-approve", &value, &respond, now)).await;
    assert_eq!((status, v["decided"].clone()), (200, json!(false)), "{v}");
    let (status, v) = send(press(
        "U0NOBODY",
        "baton-approve",
        &value,
        &respond,
        now + 1,
    ))
    .await;
    assert_eq!((status, v["decided"].clone()), (200, json!(false)), "{v}");
    assert_eq!(
        api.status_of(&d).await.as_deref(),
        Some("awaiting approval (production)")
    );
    // alice pushed it: her approval from Slack is refused like any other.
    let (status, v) = send(press("U0ALICE", "baton-approve", &value, &respond, now + 2)).await;
    assert_eq!((status, v["decided"].clone()), (200, json!(false)), "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or("")
            .contains("no self-approval"),
        "{v}"
    );
    // bob approves from Slack: the run deploys, the message says so.
    let good = press("U0BOB", "baton-approve", &value, &respond, now + 3);
    let (status, v) = send(good.clone()).await;
    assert_eq!((status, v["decided"].clone()), (200, json!(true)), "{v}");
    api.wait_status(&d, "deployed").await;
    assert!(manifest(&root, "production").contains(&d));
    // The same signed request again is a replay.
    assert_eq!(send(good).await.0, 401);
    let seen = slack.seen();
    let updates: Vec<&Value> = seen
        .iter()
        .filter(|r| r.path == "/respond/1")
        .map(|r| &r.body)
        .collect();
    assert!(
        updates.iter().any(|u| u["replace_original"] == true
            && u["text"].as_str().unwrap_or("").contains("approved by bob")),
        "{updates:#?}"
    );
    assert!(
        updates.iter().any(|u| u["response_type"] == "ephemeral"
            && u["text"]
                .as_str()
                .unwrap_or("")
                .contains("U0NOBODY is not mapped")),
        "{updates:#?}"
    );
    assert!(
        updates.iter().any(|u| u["response_type"] == "ephemeral"
            && u["text"].as_str().unwrap_or("").contains("not taken")),
        "eve's refusal told to eve: {updates:#?}"
    );
    // Only bob's decision was recorded.
    let run = api
        .runs()
        .await
        .into_iter()
        .find(|r| r["image"]["digest"] == d.as_str())
        .unwrap()["run"]
        .as_str()
        .unwrap()
        .to_string();
    let view = api
        .get(&format!("/runs/{run}"), crate::registry::ALICE_TOKEN)
        .await;
    let decisions = &view["approvals"][0]["decisions"];
    assert_eq!(decisions.as_array().map(Vec::len), Some(1), "{view:#}");
    assert_eq!(decisions[0]["by"], "bob", "{view:#}");
}
