//! Every function binary answers the real Lambda Runtime API: cargo-lambda's emulator
//! (`cargo lambda watch --only-lambda-apis`, from its PyPI wheel) serves the Runtime API,
//! the already-built binaries poll it, and `cargo lambda invoke` sends the samples in
//! `events/`. AWS calls go to moto.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Proc;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cargo_lambda() -> PathBuf {
    let venv = root().join("target/ci-venv/bin/cargo-lambda");
    if venv.is_file() {
        return venv;
    }
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("cargo-lambda")).find(|p| p.is_file()))
        .expect("cargo-lambda is not installed: run .ci/run once (it installs it into target/ci-venv) or pip install cargo-lambda")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_function_answers_the_lambda_runtime_api() {
    // The function binaries, built with the workspace's features (cheap after `cargo test`).
    let status = Command::new(env!("CARGO"))
        .args(["build", "--workspace", "--bins", "--quiet"])
        .current_dir(root())
        .status()
        .unwrap();
    assert!(status.success(), "cargo build --workspace --bins");
    let (_moto, endpoint) = crate::moto().await;
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_iam::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .load()
        .await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket().bucket("state").send().await.unwrap();
    let topic = aws_sdk_sns::Client::new(&conf)
        .create_topic()
        .name("events")
        .send()
        .await
        .unwrap()
        .topic_arn()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("baton.yaml");
    std::fs::write(
        &cfg,
        r#"
apps:
  - name: web
    registry: 123456789012.dkr.ecr.eu-west-1.amazonaws.com
    repository: demo/web
    tags: { semver: ">=1.0.0" }
    test: { command: { run: ["true"] } }
    environments:
      - name: staging
        approval: auto
        deploy: { lambda: { function: web } }
"#,
    )
    .unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _emulator = Proc(
        Command::new(cargo_lambda())
            .args([
                "lambda",
                "watch",
                "--only-lambda-apis",
                "-A",
                "127.0.0.1",
                "-P",
                &port.to_string(),
            ])
            .current_dir(root())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cargo lambda watch"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the Runtime API emulator did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let samples = root().join("events");
    let url_request = json!({
        "version": "2.0", "rawPath": "/", "rawQueryString": "", "headers": {}, "body": "{}", "isBase64Encoded": false,
        "requestContext": {"http": {"method": "POST", "path": "/"}}
    });
    let url_file = dir.path().join("approve-url.json");
    std::fs::write(&url_file, url_request.to_string()).unwrap();
    let sqs_sample = samples.join("aws/sqs-event.json");
    let record_id = "19dd0b57-b21e-4ac1-bd88-01bbb068cb78";
    let cases: Vec<(&str, PathBuf, Value)> = vec![
        (
            "ingest",
            samples.join("triggers/ecr-delete.json"),
            json!({"accepted": [], "ignored": ["DELETE SUCCESS of demo/web is not a successful push"]}),
        ),
        ("test", sqs_sample.clone(), json!({"batchItemFailures": []})),
        ("gate", sqs_sample.clone(), json!({"batchItemFailures": []})),
        // deploy consumes approval.granted: an image.built record fails and stays queued
        (
            "deploy",
            sqs_sample.clone(),
            json!({"batchItemFailures": [{"itemIdentifier": record_id}]}),
        ),
        (
            "promote",
            sqs_sample.clone(),
            json!({"batchItemFailures": [{"itemIdentifier": record_id}]}),
        ),
        (
            "notify",
            sqs_sample.clone(),
            json!({"batchItemFailures": []}),
        ),
        ("approve", url_file, json!({"statusCode": 401})),
    ];
    for (stage, sample, expected) in cases {
        let function = format!("baton-fn-{stage}");
        let _fn = Proc(
            Command::new(root().join("target/debug").join(&function))
                .env(
                    "AWS_LAMBDA_RUNTIME_API",
                    format!("http://127.0.0.1:{port}/.rt/{function}"),
                )
                .env("AWS_LAMBDA_FUNCTION_NAME", &function)
                .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
                .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
                .env("BATON_CONFIG", &cfg)
                .env("BATON_BUCKET", "state")
                .env("BATON_TOPIC_ARN", &topic)
                .env("AWS_ENDPOINT_URL", &endpoint)
                .env("AWS_REGION", "us-east-1")
                .env("AWS_ACCESS_KEY_ID", "testing")
                .env("AWS_SECRET_ACCESS_KEY", "testing")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start function"),
        );
        let out = Command::new(cargo_lambda())
            .args([
                "lambda",
                "invoke",
                "-A",
                "127.0.0.1",
                "-P",
                &port.to_string(),
                "--data-file",
            ])
            .arg(&sample)
            .arg(&function)
            .current_dir(root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{function}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{function}: {e}: {}", String::from_utf8_lossy(&out.stdout))
        });
        match expected.get("statusCode") {
            Some(code) => assert_eq!(&got["statusCode"], code, "{function}: {got}"),
            None => assert_eq!(got, expected, "{function}"),
        }
    }
}
