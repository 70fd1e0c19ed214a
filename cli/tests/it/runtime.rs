//! Every function binary answers the real Lambda Runtime API: cargo-lambda's emulator
//! (`cargo lambda watch --only-lambda-apis`, from its PyPI wheel) serves the Runtime API,
//! the already-built binaries poll it, and `cargo lambda invoke` sends the samples in
//! `events/`. AWS calls go to moto.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Proc, sdk};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where cargo put this build's binaries: the directory above this test's `deps/`
/// (`target/debug`, or its place under `CARGO_TARGET_DIR`).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test executable lies in <target>/<profile>/deps")
        .to_path_buf()
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

/// Builds the function binaries. `--tests` makes the features the same as in
/// `cargo test --workspace` (dev-dependencies included), so every library that run built
/// is reused and only the function binaries are linked.
/// Once per test process: the tests that run function binaries share one build.
fn build_functions() {
    static BUILT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *BUILT.get_or_init(|| {
        Command::new(env!("CARGO"))
            .args(["build", "--workspace", "--bins", "--tests", "--quiet"])
            .current_dir(root())
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(ok, "cargo build --workspace --bins --tests failed");
}

/// The functions built, moto with a state bucket and topic, and the Lambda emulator.
struct Functions {
    _moto: baton_testkit::moto::Moto,
    _emulator: Proc,
    endpoint: String,
    s3: aws_sdk_s3::Client,
    topic: String,
    port: u16,
    lambda_endpoint: String,
}

impl Functions {
    async fn start() -> Functions {
        build_functions();
        let (moto, endpoint) = crate::moto().await;
        let conf = sdk(&endpoint).await;
        let (s3, topic) = state(&conf).await;
        let (emulator, port) = emulator().await;
        Functions {
            _moto: moto,
            _emulator: emulator,
            endpoint,
            s3,
            topic,
            port,
            lambda_endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Starts the function of `stage` (`baton-fn-<stage>`) on the stack's state, topic
    /// and endpoints, reading the configuration `cfg`.
    fn start_stage(&self, stage: &str, cfg: &Path) -> Proc {
        let name = format!("baton-fn-{stage}");
        start_function(
            self.port,
            &name,
            &bin_dir().join(&name),
            &[
                ("BATON_CONFIG", cfg.display().to_string()),
                ("BATON_BUCKET", "state".into()),
                ("BATON_TOPIC_ARN", self.topic.clone()),
                ("AWS_ENDPOINT_URL", self.endpoint.clone()),
                ("AWS_ENDPOINT_URL_LAMBDA", self.lambda_endpoint.clone()),
            ],
        )
    }

    /// The run log of web's run ab781cee5e2f2eae (the samples' run), in the state bucket.
    async fn run_log(&self) -> Vec<Value> {
        let keys = self
            .s3
            .list_objects_v2()
            .bucket("state")
            .prefix("runs/web/ab781cee5e2f2eae/events/")
            .send()
            .await
            .unwrap();
        let mut events = vec![];
        for k in keys.contents() {
            let o = self
                .s3
                .get_object()
                .bucket("state")
                .key(k.key().unwrap())
                .send()
                .await
                .unwrap();
            events.push(
                serde_json::from_slice(&o.body.collect().await.unwrap().into_bytes()).unwrap(),
            );
        }
        events
    }
}

/// Starts `cargo lambda watch` (Runtime API and Invoke API) on a free port.
async fn emulator() -> (Proc, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proc = Proc(
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
    (proc, port)
}

/// Where a function's logs go: nowhere, or with `BATON_TEST_FUNCTION_LOGS` set, the
/// test's output (for debugging).
fn logs() -> Stdio {
    if std::env::var_os("BATON_TEST_FUNCTION_LOGS").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    }
}

/// Runs `bin` as the function `name` polling the emulator on `port`.
fn start_function(port: u16, name: &str, bin: &Path, env: &[(&str, String)]) -> Proc {
    let mut cmd = Command::new(bin);
    cmd.env(
        "AWS_LAMBDA_RUNTIME_API",
        format!("http://127.0.0.1:{port}/.rt/{name}"),
    )
    .env("AWS_LAMBDA_FUNCTION_NAME", name)
    .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
    .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
    .env("AWS_REGION", "us-east-1")
    .env("AWS_ACCESS_KEY_ID", "testing")
    .env("AWS_SECRET_ACCESS_KEY", "testing")
    .stdout(logs())
    .stderr(logs());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().expect("start function"))
}

/// `cargo lambda invoke` of function `name` with the file `data`; its JSON answer.
fn invoke(port: u16, name: &str, data: &Path) -> Value {
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
        .arg(data)
        .arg(name)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{name}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// The state bucket and the topic of a stack in moto; returns (S3 client, topic ARN).
async fn state(conf: &aws_config::SdkConfig) -> (aws_sdk_s3::Client, String) {
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(conf)
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket().bucket("state").send().await.unwrap();
    let topic = baton_testkit::moto::topic(&aws_sdk_sns::Client::new(conf), "events").await;
    (s3, topic)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_function_answers_the_lambda_runtime_api() {
    build_functions();
    let (_moto, endpoint) = crate::moto().await;
    let (_s3, topic) = state(&sdk(&endpoint).await).await;
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
serve:
  approvers:
    alice: { iam: ["arn:aws:iam::123456789012:user/alice"] }
    bob: { iam: [{ role: "arn:aws:iam::123456789012:role/Approvers", session: bob }] }
"#,
    )
    .unwrap();

    let (_emulator, port) = emulator().await;
    let samples = root().join("events");
    // The approve URL sample (IAM caller alice) and the same request without an identity.
    let url_sample = samples.join("aws/function-url-approve.json");
    let mut anonymous: Value =
        serde_json::from_str(&std::fs::read_to_string(&url_sample).unwrap()).unwrap();
    anonymous["requestContext"]
        .as_object_mut()
        .unwrap()
        .remove("authorizer");
    let url_file = dir.path().join("approve-url-anonymous.json");
    std::fs::write(&url_file, anonymous.to_string()).unwrap();
    // The attack of the security issue: any role, with a session named after an
    // approver. The caller chose the name "bob"; the role is not bob's.
    let mut chosen: Value =
        serde_json::from_str(&std::fs::read_to_string(&url_sample).unwrap()).unwrap();
    chosen["requestContext"]["authorizer"]["iam"]["userArn"] =
        json!("arn:aws:sts::123456789012:assumed-role/AnyRoleICanAssume/bob");
    let chosen_file = dir.path().join("approve-url-session-named-bob.json");
    std::fs::write(&chosen_file, chosen.to_string()).unwrap();
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
        ("approve", chosen_file, json!({"statusCode": 403})),
        // alice decides on a run that does not exist: her identity was read (not 401).
        ("approve", url_sample, json!({"statusCode": 404})),
    ];
    for (stage, sample, expected) in cases {
        let function = format!("baton-fn-{stage}");
        let _fn = start_function(
            port,
            &function,
            &bin_dir().join(&function),
            &[
                ("BATON_CONFIG", cfg.display().to_string()),
                ("BATON_BUCKET", "state".into()),
                ("BATON_TOPIC_ARN", topic.clone()),
                ("AWS_ENDPOINT_URL", endpoint.clone()),
            ],
        );
        let got = invoke(port, &function, &sample);
        match expected.get("statusCode") {
            Some(code) => assert_eq!(&got["statusCode"], code, "{function}: {got}"),
            None => assert_eq!(got, expected, "{function}"),
        }
    }
}

/// The Lambda test runner and `baton retry --stack` invoke real functions: the test stage
/// runs in `baton-fn-test` and invokes the test function (`baton-fn-lambda-test`) through the Lambda Invoke API, which `cargo lambda watch` serves
/// (`AWS_ENDPOINT_URL_LAMBDA`; every other AWS API is moto). The first run fails its
/// tests; once they can pass, `baton retry RUN test --stack baton-fn` invokes the stage's
/// function, which re-runs that stage alone from its record.
#[tokio::test(flavor = "multi_thread")]
async fn retry_on_aws_and_the_lambda_test_runner_invoke_real_functions() {
    let fns = Functions::start().await;
    let port = fns.port;
    let (endpoint, lambda_endpoint) = (&fns.endpoint, &fns.lambda_endpoint);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("baton.yaml");
    std::fs::write(
        &cfg,
        r#"
apps:
  - name: web
    repository: demo/web
    tags: { semver: ">=1.0.0" }
    test: { lambda: { function: baton-fn-lambda-test } }
    environments:
      - name: staging
        approval: auto
        deploy: { lambda: { function: web } }
"#,
    )
    .unwrap();
    // The test suite passes once `ready` exists, and checks it was given the image.
    let ready = dir.path().join("ready");
    let _tests = start_function(
        port,
        "baton-fn-lambda-test",
        &bin_dir().join("baton-fn-lambda-test"),
        &[(
            "BATON_TEST_COMMAND",
            format!(
                "echo \"testing $BATON_IMAGE\"; test \"$BATON_TAG\" = 1.0.0 && test -e '{}'",
                ready.display()
            ),
        )],
    );
    let _stage = fns.start_stage("test", &cfg);
    let log = || async {
        fns.run_log()
            .await
            .iter()
            .map(|v| v["type"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };

    // image.built of run ab781cee5e2f2eae (web 1.0.0): the test function fails it.
    let got = invoke(
        port,
        "baton-fn-test",
        &root().join("events/aws/sqs-event.json"),
    );
    assert_eq!(
        got,
        json!({"batchItemFailures": []}),
        "a failed test is an outcome, not a retry"
    );
    let types = log().await;
    assert!(
        types.contains(&"tests.failed".to_string()) && !types.contains(&"tests.passed".to_string()),
        "the first run fails its tests: {types:?}"
    );

    // Fixed; retry the stage on AWS.
    std::fs::write(&ready, "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args([
            "--json",
            "retry",
            "ab781cee5e2f2eae",
            "test",
            "--stack",
            "baton-fn",
        ])
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ENDPOINT_URL_LAMBDA", lambda_endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env_remove("BATON_STACK")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "baton retry --stack: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["stage"], "test", "{report}");
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(
        report["outputs"][0]["type"], "tests.passed",
        "the retried stage passed: {report}"
    );
    let types = log().await;
    assert!(
        types.contains(&"tests.passed".to_string()),
        "the retry is in the run log: {types:?}"
    );
}

/// A function binary is a Lambda function and nothing else: outside the Runtime API it
/// runs no stage on anything, says what it is and how to run stages locally, and exits 2.
#[test]
fn a_function_binary_outside_lambda_says_what_it_is_and_runs_nothing() {
    build_functions();
    let dir = tempfile::tempdir().unwrap();
    for stage in ["ingest", "gate", "deploy"] {
        let out = Command::new(bin_dir().join(format!("baton-fn-{stage}")))
            .env_clear()
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stage}: {err}");
        assert!(
            err.contains(&format!("AWS Lambda function for the {stage} stage"))
                && err.contains("AWS_LAMBDA_RUNTIME_API")
                && err.contains("baton demo"),
            "{stage}: {err}"
        );
        assert!(out.stdout.is_empty(), "{stage}");
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

/// A verify stage's `lambda` check invokes a real function: the verify stage runs in
/// `baton-fn-verify` and invokes the test function (`baton-fn-lambda-test`, served by
/// `cargo lambda watch`), whose command is told the environment and the check
/// (`BATON_ENVIRONMENT`, `BATON_CHECK`); it passes, and `verification.passed` is in the
/// run log with the check's evidence.
#[tokio::test(flavor = "multi_thread")]
async fn a_lambda_verify_check_invokes_a_real_function() {
    let fns = Functions::start().await;
    let port = fns.port;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("baton.yaml");
    std::fs::write(
        &cfg,
        r#"
apps:
  - name: web
    repository: demo/web
    tags: { semver: ">=1.0.0" }
    test: { command: { run: ["true"] } }
    environments:
      - name: staging
        approval: auto
        deploy: { lambda: { function: web } }
        verify:
          checks:
            - name: smoke
              lambda: { function: baton-fn-lambda-test }
"#,
    )
    .unwrap();
    let _check = start_function(
        port,
        "baton-fn-lambda-test",
        &bin_dir().join("baton-fn-lambda-test"),
        &[(
            "BATON_TEST_COMMAND",
            "test \"$BATON_ENVIRONMENT\" = staging && test \"$BATON_CHECK\" = smoke && echo \"checked $BATON_CHECK of $BATON_TAG in $BATON_ENVIRONMENT\"".to_string(),
        )],
    );
    let _stage = fns.start_stage("verify", &cfg);
    // deploy.succeeded of run ab781cee5e2f2eae in staging, as SNS hands it to the
    // verify queue.
    let mut deployed: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("events/baton/deploy.succeeded.json")).unwrap(),
    )
    .unwrap();
    deployed["data"]["environment"] = json!("staging");
    let mut batch: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("events/aws/sqs-event.json")).unwrap(),
    )
    .unwrap();
    let mut note: Value =
        serde_json::from_str(batch["Records"][0]["body"].as_str().unwrap()).unwrap();
    note["Message"] = json!(deployed.to_string());
    note["MessageAttributes"]["type"]["Value"] = json!("deploy.succeeded");
    batch["Records"][0]["body"] = json!(note.to_string());
    batch["Records"][0]["eventSourceARN"] =
        json!("arn:aws:sqs:us-east-1:123456789012:baton-verify");
    let file = dir.path().join("deployed.json");
    std::fs::write(&file, batch.to_string()).unwrap();
    let got = invoke(port, "baton-fn-verify", &file);
    assert_eq!(got, json!({"batchItemFailures": []}), "{got}");
    let passed = fns
        .run_log()
        .await
        .into_iter()
        .find(|v| v["type"] == "verification.passed");
    let passed = passed.expect("verification.passed in the run log");
    assert_eq!(passed["data"]["environment"], "staging", "{passed:#}");
    let text = passed["data"].to_string();
    assert!(text.contains("smoke"), "{passed:#}");
}
