//! Chat webhook formats over real HTTP: a receiver started here records what each
//! format's notifier POSTs; the DingTalk and Feishu signatures are checked with Python's
//! `hmac` (an implementation independent of Baton's) as those services document them;
//! a robot's refusal in a 200 answer is an error, not a delivery.

use std::process::Command;
use std::time::Duration;

use baton::adapters::embedded::WebhookNotifier;
use baton::adapters::http::Http;
use baton::config::ChatFormat;
use baton::event::Event;
use baton::ports::Notifier;
use serde_json::{Value, json};

async fn receiver() -> baton_testkit::receiver::Receiver {
    baton_testkit::receiver::start(|r| {
        if r.path == "/refuses" {
            (200, json!({"errcode": 310000, "errmsg": "sign not match"}))
        } else {
            (200, json!({"errcode": 0, "code": 0, "msg": "ok"}))
        }
    })
    .await
}

fn event() -> Event {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../events/baton/verification.failed.json"),
    )
    .unwrap();
    Event::from_json(&text).unwrap()
}

/// Base64(HMAC-SHA256(key, msg)) by Python's standard library.
fn python_hmac_b64(key: &str, msg: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import base64,hashlib,hmac,sys; print(base64.b64encode(hmac.new(sys.argv[1].encode(), sys.argv[2].encode(), hashlib.sha256).digest()).decode())",
            key,
            msg,
        ])
        .output()
        .expect("python3");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn notifier(
    url: String,
    format: ChatFormat,
    secret: Option<&str>,
    template: Option<&str>,
) -> WebhookNotifier {
    WebhookNotifier::new(Http::new(), url, Duration::from_secs(5)).with_format(
        format,
        secret.map(str::to_string),
        template.map(str::to_string),
        Some("https://baton.example.com".into()),
    )
}

#[tokio::test]
async fn each_format_posts_its_shape_and_robots_get_valid_signatures() {
    let rx = receiver().await;
    let base = rx.url("");
    let e = event();
    let link = format!("https://baton.example.com/runs/{}", e.ctx().run);
    let secret = "SEC0123456789abcdef-robot-secret";

    // DingTalk: signature in the query, beside the robot's own access_token.
    notifier(
        format!("{base}/robot/send?access_token=t0k"),
        ChatFormat::Dingtalk,
        Some(secret),
        None,
    )
    .notify("chat", &e)
    .await
    .unwrap();
    // Feishu: signature in the body.
    notifier(
        format!("{base}/open-apis/bot/v2/hook/x"),
        ChatFormat::Feishu,
        Some(secret),
        None,
    )
    .notify("chat", &e)
    .await
    .unwrap();
    for (path, f) in [
        ("/slack", ChatFormat::Slack),
        ("/teams", ChatFormat::Teams),
        ("/discord", ChatFormat::Discord),
    ] {
        notifier(format!("{base}{path}"), f, None, None)
            .notify("chat", &e)
            .await
            .unwrap();
    }
    notifier(
        format!("{base}/custom"),
        ChatFormat::Template,
        None,
        Some(r#"{"title": {{ summary|tojson }}, "env": {{ environment|tojson }}, "url": {{ link|tojson }}}"#),
    )
    .notify("chat", &e)
    .await
    .unwrap();

    let seen: Vec<(String, Value)> = rx
        .seen()
        .into_iter()
        .map(|r| {
            (
                format!(
                    "{}{}",
                    r.path,
                    r.query.map(|q| format!("?{q}")).unwrap_or_default()
                ),
                r.body,
            )
        })
        .collect();
    assert_eq!(seen.len(), 6, "{seen:#?}");
    // DingTalk
    let (uri, body) = &seen[0];
    let q: std::collections::BTreeMap<String, String> =
        reqwest::Url::parse(&format!("http://x{uri}"))
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect();
    assert_eq!(q["access_token"], "t0k", "the robot's token kept");
    let ts: i64 = q["timestamp"].parse().unwrap();
    assert!(
        (chrono::Utc::now().timestamp_millis() - ts).abs() < 60_000,
        "milliseconds, now"
    );
    assert_eq!(
        q["sign"],
        python_hmac_b64(secret, &format!("{ts}\n{secret}"))
    );
    assert_eq!(body["msgtype"], "markdown");
    assert!(
        body["markdown"]["text"]
            .as_str()
            .unwrap()
            .contains(&format!("[Open run]({link})"))
    );
    // Feishu
    let (_, body) = &seen[1];
    let ts: i64 = body["timestamp"].as_str().unwrap().parse().unwrap();
    assert!(
        (chrono::Utc::now().timestamp() - ts).abs() < 60,
        "seconds, now"
    );
    assert_eq!(
        body["sign"],
        python_hmac_b64(&format!("{ts}\n{secret}"), "")
    );
    assert_eq!(body["msg_type"], "interactive");
    assert_eq!(
        body["card"]["header"]["template"], "red",
        "a failed verification"
    );
    // Slack, Teams, Discord, template
    assert!(
        seen[2].1["blocks"][0]["text"]["text"]
            .as_str()
            .unwrap()
            .contains("verification.failed")
    );
    assert_eq!(seen[2].1["blocks"][2]["elements"][0]["url"], link.as_str());
    assert_eq!(
        seen[3].1["attachments"][0]["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(seen[4].1["embeds"][0]["url"], link.as_str());
    assert_eq!(seen[5].1["env"], "staging");
    assert_eq!(seen[5].1["url"], link.as_str());
}

#[tokio::test]
async fn a_robot_refusing_in_a_200_answer_is_an_error_naming_why() {
    let rx = receiver().await;
    let err = notifier(
        rx.url("/refuses"),
        ChatFormat::Dingtalk,
        Some("wrong-secret-wrong-secret"),
        None,
    )
    .notify("chat", &event())
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("refused the message") && text.contains("sign not match"),
        "{text}"
    );
    assert!(
        !text.contains("127.0.0.1"),
        "the URL (a secret) is not in the error: {text}"
    );
}

#[test]
fn chat_options_are_checked_at_load_naming_the_field() {
    let with = |webhook: &str| {
        let cfg = crate::Setup {
            reactions: format!("  - name: chat\n    on: {{ type: [deploy.failed] }}\n    notify:\n      webhook: {webhook}\n"),
            ..Default::default()
        }
        .config();
        match baton::config::Config::from_yaml(&cfg, std::path::Path::new("/tmp"), "baton.yaml") {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    let at = "reactions[0].notify.webhook";
    for (w, want) in [
        (
            "{ url: \"http://h\", format: template }",
            format!("{at}.template: format template needs a template"),
        ),
        (
            "{ url: \"http://h\", format: slack, template: \"{}\" }",
            format!("{at}.template: only for format template"),
        ),
        (
            "{ url: \"http://h\", format: slack, secret_env: X }",
            format!("{at}.secret_env: signing is for dingtalk and feishu"),
        ),
        (
            "{ url: \"http://h\", format: template, template: \"{{ x\" }",
            format!("{at}.template: not a template"),
        ),
        (
            "{ url: \"http://h\", format: whatsapp }",
            "whatsapp".to_string(),
        ),
    ] {
        let err = with(w);
        assert!(err.contains(&want), "{w}: want {want:?} in {err:?}");
    }
    assert_eq!(
        with("{ url: \"http://h\", format: dingtalk, secret_env: X }"),
        ""
    );
}
