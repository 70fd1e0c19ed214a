//! A test function for the `lambda` test runner (`test: { lambda: { function: … } }`):
//! package it with your test suite in a Lambda container image. For each image Baton
//! tests, it runs `sh -c "$BATON_TEST_COMMAND"` with the image in the environment
//! (`BATON_IMAGE` = `registry/repository@sha256:…`, `BATON_DIGEST`, `BATON_TAG`,
//! `BATON_REPOSITORY`, `BATON_APP`, `BATON_RUN`, `BATON_ATTEMPT`) and answers the runner's
//! contract: `{"passed": <exit status 0>, "summary": "…", "output": "<last 16 KiB>"}`.
//!
//! Built by the `functions/lambda-test` crate (`cargo lambda build --release --arm64 -p
//! baton-fn-lambda-test`); not part of the stack: it runs where your tests run.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

const OUTPUT_LIMIT: usize = 16 * 1024;

/// Handles one test request from the runner.
pub async fn run(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let command = std::env::var("BATON_TEST_COMMAND")
        .map_err(|_| "set BATON_TEST_COMMAND to the command that runs the tests")?;
    let p = &event.payload;
    let field = |name: &str| match &p[name] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let image = field("image");
    if image.is_empty() {
        return Err("the invocation names no image (expected Baton's test request)".into());
    }
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .env("BATON_IMAGE", &image)
        .env("BATON_DIGEST", field("digest"))
        .env("BATON_TAG", field("tag"))
        .env("BATON_REPOSITORY", field("repository"))
        .env("BATON_APP", field("app"))
        .env("BATON_RUN", field("run"))
        .env("BATON_ATTEMPT", field("attempt"))
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run sh -c {command:?}: {e}"))?;
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    if output.len() > OUTPUT_LIMIT {
        let mut cut = output.len() - OUTPUT_LIMIT;
        while !output.is_char_boundary(cut) {
            cut += 1;
        }
        output = format!("…{}", &output[cut..]);
    }
    let passed = out.status.success();
    let summary = match out.status.code() {
        Some(0) => format!("tests passed on {image}"),
        Some(code) => format!("tests failed on {image} (exit status {code})"),
        None => format!("tests on {image} were killed by a signal"),
    };
    Ok(json!({ "passed": passed, "summary": summary, "output": output }))
}

/// `main` of the test function: serves the Lambda Runtime API.
pub fn main() -> std::process::ExitCode {
    crate::function::block_on(lambda_runtime::run(service_fn(run)))
}
