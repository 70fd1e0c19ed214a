//! The CLI's AWS mode (`--stack`) against moto, and `baton react` on the local
//! configuration file.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

use crate::{EXAMPLE, project};

fn baton_aws(endpoint: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env_remove("BATON_STACK")
        .output()
        .unwrap()
}

fn out_json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

async fn clients(endpoint: &str) -> (aws_sdk_sns::Client, aws_sdk_sqs::Client) {
    let conf = crate::sdk(endpoint).await;
    (
        aws_sdk_sns::Client::new(&conf),
        aws_sdk_sqs::Client::new(&conf),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn reactions_are_subscriptions_on_the_stacks_topic() {
    let (_moto, endpoint) = crate::moto().await;
    let (sns, sqs) = clients(&endpoint).await;
    let topic = baton_testkit::moto::topic(&sns, "prod-events").await;
    // a stage queue is part of the pipeline, not a reaction
    sqs.create_queue()
        .queue_name("prod-deploy")
        .send()
        .await
        .unwrap();
    sns.subscribe()
        .topic_arn(&topic)
        .protocol("sqs")
        .endpoint("arn:aws:sqs:us-east-1:123456789012:prod-deploy")
        .send()
        .await
        .unwrap();
    let q = sqs
        .create_queue()
        .queue_name("audit-trail")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let o = baton_aws(
        &endpoint,
        &[
            "--stack",
            "prod",
            "--json",
            "react",
            "add",
            "--on",
            "deploy.failed,tests.failed",
            "--sqs",
            "arn:aws:sqs:us-east-1:123456789012:audit-trail",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sub = out_json(&o)["subscription"].as_str().unwrap().to_string();
    let o = baton_aws(&endpoint, &["--stack", "prod", "--json", "react", "list"]);
    let list = out_json(&o);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(
        list[0]["filter"],
        json!({"type": ["deploy.failed", "tests.failed"]})
    );
    // the filter works: a deploy.failed reaches the queue, an image.built does not
    for ty in ["image.built", "deploy.failed"] {
        sns.publish()
            .topic_arn(&topic)
            .message("{}")
            .message_attributes(
                "type",
                aws_sdk_sns::types::MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(ty)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    }
    let got = sqs
        .receive_message()
        .queue_url(&q)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    assert_eq!(got.messages().len(), 1);
    assert!(got.messages()[0].body().unwrap().contains("deploy.failed"));
    let o = baton_aws(&endpoint, &["--stack", "prod", "react", "remove", &sub]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = baton_aws(&endpoint, &["--stack", "prod", "--json", "react", "list"]);
    assert!(out_json(&o).as_array().unwrap().is_empty());
    // operator errors are one line
    let o = baton_aws(&endpoint, &["--stack", "nope", "react", "list"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no topic named nope-events"));
    let o = baton_aws(
        &endpoint,
        &[
            "--stack",
            "prod",
            "react",
            "add",
            "--on",
            "image.exploded",
            "--email",
            "ops@example.com",
        ],
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a Baton event type"));
}

#[tokio::test(flavor = "multi_thread")]
async fn dlq_list_and_redrive_a_stage_of_the_stack() {
    let (_moto, endpoint) = crate::moto().await;
    let (_sns, sqs) = clients(&endpoint).await;
    let dlq = sqs
        .create_queue()
        .queue_name("prod-deploy-dlq")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let queue = sqs
        .create_queue()
        .queue_name("prod-deploy")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let sample = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../events/aws/sns-notification.json"),
    )
    .unwrap();
    sqs.send_message()
        .queue_url(&dlq)
        .message_body(&sample)
        .send()
        .await
        .unwrap();
    let o = baton_aws(
        &endpoint,
        &["--stack", "prod", "--json", "dlq", "list", "deploy"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dead = out_json(&o);
    assert_eq!(dead.as_array().unwrap().len(), 1);
    assert!(
        dead[0]["event"]
            .as_str()
            .unwrap()
            .starts_with("image.built ")
    );
    let o = baton_aws(
        &endpoint,
        &["--stack", "prod", "--json", "dlq", "redrive", "deploy"],
    );
    assert_eq!(out_json(&o)["redriven"], 1);
    let got = sqs
        .receive_message()
        .queue_url(&queue)
        .send()
        .await
        .unwrap();
    assert_eq!(got.messages().len(), 1);
    assert_eq!(got.messages()[0].body(), Some(sample.as_str()));
    let o = baton_aws(&endpoint, &["--stack", "prod", "dlq", "list"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("name the stage"));
}

#[test]
fn react_edits_the_local_configuration() {
    let (_d, root) = project();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(args)
            .current_dir(&root)
            .env_remove("BATON_CONFIG")
            .env_remove("BATON_STACK")
            .output()
            .unwrap()
    };
    let o = run(&[
        "react",
        "add",
        "--on",
        "deploy.succeeded",
        "--webhook",
        "http://127.0.0.1:9/hook",
        "--name",
        "chat-deploys",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["react", "add", "--on", "image.promoted", "--log"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["--json", "react", "list"]);
    let names: Vec<String> = serde_json::from_slice::<Value>(&o.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "timeline",
            "slack-on-failure",
            "chat-deploys",
            "log-image-promoted"
        ]
    );
    let text = std::fs::read_to_string(root.join("baton.yaml")).unwrap();
    assert!(
        text.contains("# Retries of the embedded bus"),
        "comments survive"
    );
    let o = run(&[
        "react",
        "add",
        "--on",
        "deploy.failed",
        "--email",
        "ops@example.com",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("give --smtp HOST[:PORT] and --from ADDR"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = run(&[
        "react",
        "add",
        "--on",
        "deploy.succeeded",
        "--log",
        "--name",
        "chat-deploys",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("declared twice"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(root.join("baton.yaml")).unwrap(),
        text,
        "a refused edit changes nothing"
    );
    let o = run(&["react", "remove", "chat-deploys"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["--json", "react", "list"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&o.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let after = std::fs::read_to_string(root.join("baton.yaml")).unwrap();
    assert_eq!(after.replace("  - name: log-image-promoted\n    on: { type: [image.promoted] }\n    notify: { log: {} }\n", ""), EXAMPLE.to_string(), "only the added lines differ");
}

/// `baton react add --email` without AWS: the reaction goes into the configuration with
/// its SMTP server (or the one an e-mail reaction there already uses), and a run sends
/// the mail through aiosmtpd; `--format` gives a webhook reaction its chat shape.
#[tokio::test]
async fn react_add_email_and_chat_formats_locally() {
    let (_d, root) = project();
    let smtp = baton_testkit::smtp::start(&root, None).await;
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(args)
            .current_dir(&root)
            .env_remove("BATON_CONFIG")
            .env_remove("BATON_STACK")
            .output()
            .unwrap()
    };
    let ok = |o: &Output| assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let server = format!("127.0.0.1:{}", smtp.port);
    ok(&run(&[
        "react",
        "add",
        "--on",
        "tests.passed",
        "--email",
        "ops@example.com",
        "--from",
        "baton@example.com",
        "--smtp",
        &server,
        "--smtp-tls",
        "none",
    ]));
    // The second takes the sender and server from the first.
    ok(&run(&[
        "react",
        "add",
        "--on",
        "image.built",
        "--email",
        "dev@example.com",
    ]));
    ok(&run(&[
        "react",
        "add",
        "--on",
        "deploy.failed",
        "--webhook",
        "https://oapi.dingtalk.com/robot/send?access_token=x",
        "--format",
        "dingtalk",
        "--secret-env",
        "BATON_DINGTALK_SECRET",
        "--name",
        "dingtalk",
    ]));
    let o = run(&[
        "react",
        "add",
        "--on",
        "deploy.failed",
        "--webhook",
        "http://h",
        "--format",
        "whatsapp",
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("whatsapp"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = run(&[
        "--stack",
        "prod",
        "react",
        "add",
        "--on",
        "deploy.failed",
        "--email",
        "a@b.c",
        "--from",
        "x@y.z",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("with --stack a reaction is an SNS subscription")
    );
    let text = std::fs::read_to_string(root.join("baton.yaml")).unwrap();
    assert!(
        text.contains("email-tests-passed") && text.contains("email-image-built"),
        "{text}"
    );
    assert!(text.contains(r#""format":"dingtalk""#), "{text}");

    // A run: both e-mails go out through the SMTP server.
    let p = crate::push_file(&root, "1.0.0", 'c', "2026-11-29T10:00:00Z");
    let o = run(&["--json", "ingest", p.to_str().unwrap()]);
    ok(&o);
    let start = std::time::Instant::now();
    while smtp.messages().len() < 2 && start.elapsed() < std::time::Duration::from_secs(20) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mails = smtp.messages();
    assert_eq!(mails.len(), 2, "{mails:#?}");
    assert!(
        mails
            .iter()
            .any(|m| m.contains("ops@example.com") && m.contains("tests.passed"))
    );
    assert!(
        mails
            .iter()
            .any(|m| m.contains("dev@example.com") && m.contains("image.built"))
    );
}

/// Freezes and holds on a deployed stack: the CLI finds the stack's state bucket through
/// its deploy function's environment and writes there, with the operator's credentials,
/// the records the deploy function reads (`freezes/`, `holds/`).
#[tokio::test(flavor = "multi_thread")]
async fn freeze_unfreeze_and_hold_release_on_a_stack() {
    let (_moto, endpoint) = crate::moto().await;
    let conf = crate::sdk(&endpoint).await;
    let clients = baton::adapters::aws::Clients::new(&conf);
    clients
        .s3
        .create_bucket()
        .bucket("prod-state")
        .send()
        .await
        .unwrap();
    let topic = baton_testkit::moto::topic(&aws_sdk_sns::Client::new(&conf), "prod-events").await;
    let role = baton_testkit::moto::lambda_role(&conf, "prod-deploy-fn").await;
    aws_sdk_lambda::Client::new(&conf)
        .create_function()
        .function_name("prod-deploy")
        .role(role)
        .package_type(aws_sdk_lambda::types::PackageType::Image)
        .code(
            aws_sdk_lambda::types::FunctionCode::builder()
                .image_uri(format!(
                    "123456789012.dkr.ecr.us-east-1.amazonaws.com/baton@sha256:{}",
                    "0".repeat(64)
                ))
                .build(),
        )
        .environment(
            aws_sdk_lambda::types::Environment::builder()
                .variables("BATON_BUCKET", "prod-state")
                .variables("BATON_TOPIC_ARN", &topic)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let (_d, root) = project();
    let config = root.join("baton.yaml");
    let run = |stack: &str, args: &[&str]| {
        let mut all = vec![
            "--config",
            config.to_str().unwrap(),
            "--stack",
            stack,
            "--json",
        ];
        all.extend_from_slice(args);
        baton_aws(&endpoint, &all)
    };

    let o = run(
        "prod",
        &[
            "freeze",
            "--env",
            "production",
            "--reason",
            "holiday freeze",
            "--as",
            "alice",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(out_json(&o)["reason"], "holiday freeze");
    // Where the deploy function looks: the stack's bucket.
    let keys: Vec<String> = clients
        .s3
        .list_objects_v2()
        .bucket("prod-state")
        .prefix("freezes/")
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    // The deploy function's view of the bucket.
    let cfg = std::sync::Arc::new(baton::config::Config::load(&config).unwrap());
    let p = baton::pipeline::Pipeline::new(
        baton::runtime::lambda::ports::AwsPorts::<()>::new(
            &clients,
            "prod-state",
            &topic,
            cfg.clone(),
        )
        .unwrap(),
        cfg,
        baton::pipeline::Settings::default(),
    );
    let active = baton::pipeline::holds::active_freezes(&p, "web", "production")
        .await
        .unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].by, "alice");
    let listed = out_json(&run("prod", &["freezes"]));
    assert_eq!(listed["freezes"][0]["reason"], "holiday freeze", "{listed}");
    // A name the configuration does not have is refused, and nothing is written.
    let o = run("prod", &["freeze", "--env", "qa", "--reason", "x"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("qa"));

    let o = run("prod", &["unfreeze", "--env", "production", "--as", "bob"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        baton::pipeline::holds::active_freezes(&p, "web", "production")
            .await
            .unwrap()
            .is_empty()
    );

    // A hold (what a rollback on the stack leaves) released from the CLI.
    let image = baton::event::Image::parse(
        "123456789012.dkr.ecr.us-east-1.amazonaws.com",
        "demo/web",
        "1.0.0",
        &format!("sha256:{}", "a".repeat(64)),
    )
    .unwrap();
    baton::pipeline::holds::hold(&p, "web", "staging", &image, None, Some("carol"), None)
        .await
        .unwrap();
    let o = run(
        "prod",
        &["hold", "release", "web", "--env", "staging", "--as", "bob"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        baton::pipeline::holds::active_hold(&p, "web", "staging")
            .await
            .unwrap()
            .is_none()
    );

    // Commands of the local state refuse a named stack rather than act locally.
    for args in [
        &[
            "approve",
            "abcd1234",
            "--env",
            "production",
            "--as",
            "alice",
        ][..],
        &["status"][..],
        &["envs"][..],
    ] {
        let o = run("prod", args);
        assert!(!o.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("works on the local state directory"),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    // Retention on the stack's bucket: `gc` prunes production's deploy history there
    // (three deploys 10–12 days old; the newest two stay, one to roll back to).
    let mut yaml = std::fs::read_to_string(&config).unwrap();
    yaml.push_str("retention: { max_age: 1h, keep_last: 1 }\n");
    std::fs::write(&config, yaml).unwrap();
    use baton::ports::ObjectStore;
    let store = baton::adapters::aws::s3::S3Store::new(clients.s3.clone(), "prod-state");
    let now = chrono::Utc::now();
    for days in [12, 11, 10] {
        let key = baton::store::history_key(
            "web",
            "production",
            now - chrono::Duration::days(days),
            &format!("run-{days}"),
        );
        store
            .put(
                &key,
                b"{}".to_vec(),
                baton::ports::Precondition::IfNoneMatch,
            )
            .await
            .unwrap();
    }
    let history = || async {
        store
            .list(&baton::store::history_prefix("web", "production"))
            .await
            .unwrap()
    };
    let o = run("prod", &["gc", "--dry-run"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(out_json(&o)["history_removed"], 1, "{}", out_json(&o));
    assert_eq!(history().await.len(), 3, "a dry run removes nothing");
    let o = run("prod", &["gc"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(out_json(&o)["history_removed"], 1, "{}", out_json(&o));
    let left = history().await;
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|k| !k.contains("run-12")), "{left:?}");

    // Not a stack: said, nothing done.
    let o = run("nope", &["freeze", "--reason", "x"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no function nope-deploy"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
