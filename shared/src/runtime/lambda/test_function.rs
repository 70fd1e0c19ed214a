//! A test function for the `lambda` test runner (`test: { lambda: { function: … } }`):
//! package it with your test suite in a Lambda container image. For each image Baton
//! tests, it runs `sh -c "$BATON_TEST_COMMAND"` in a sandbox ([`crate::adapters::sandbox`]): a
//! cleared environment with `PATH`, the image (`BATON_IMAGE` = `registry/repository@sha256:…`,
//! `BATON_DIGEST`, `BATON_TAG`, `BATON_REPOSITORY`, `BATON_APP`, `BATON_RUN`,
//! `BATON_ATTEMPT`; for a verify stage's `lambda` check also `BATON_ENVIRONMENT`, the
//! environment deployed, and `BATON_CHECK`, the check's name) and the variables
//! `BATON_TEST_PASS_ENV` names (comma-separated), so
//! the function's own AWS credentials never reach the tests. It answers the runner's
//! contract: `{"passed": <exit status 0>, "summary": "…", "output": "<last 16 KiB>"}`.
//! The command's process group is killed 5 seconds before the invocation's deadline.
//!
//! Built by the `functions/lambda-test` crate (`cargo lambda build --release --arm64 -p
//! baton-fn-lambda-test`); not part of the stack: it runs where your tests run.

use std::time::Duration;

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::reference::{Digest, ImageRef, Repository, Tag};

const OUTPUT_LIMIT: usize = 16 * 1024;

/// The runner's request, every part parsed.
#[derive(Debug, Deserialize)]
struct Request {
    image: ImageRef,
    digest: Digest,
    tag: Tag,
    repository: Repository,
    app: String,
    run: String,
    attempt: u32,
    /// A verify check: the environment deployed and the check's name.
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    check: Option<String>,
}

/// The variables the tests see for `req`; a request whose names are not Baton names is
/// refused.
fn test_env(req: &Request) -> Result<Vec<(String, String)>, Error> {
    if !crate::ids::is_name(&req.app) || !crate::ids::is_run_id(&req.run) {
        return Err("test request: app or run is not a Baton name".into());
    }
    let mut env = vec![
        ("BATON_IMAGE".to_string(), req.image.to_string()),
        ("BATON_DIGEST".into(), req.digest.to_string()),
        ("BATON_TAG".into(), req.tag.to_string()),
        ("BATON_REPOSITORY".into(), req.repository.to_string()),
        ("BATON_APP".into(), req.app.clone()),
        ("BATON_RUN".into(), req.run.clone()),
        ("BATON_ATTEMPT".into(), req.attempt.to_string()),
    ];
    if let Some(e) = &req.environment {
        if !crate::ids::is_name(e) {
            return Err("test request: environment is not a Baton name".into());
        }
        env.push(("BATON_ENVIRONMENT".into(), e.clone()));
    }
    if let Some(c) = &req.check {
        if !crate::ids::is_name(c) {
            return Err("test request: check is not a Baton name".into());
        }
        env.push(("BATON_CHECK".into(), c.clone()));
    }
    Ok(env)
}

/// Handles one test request from the runner.
pub async fn run(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let command = std::env::var("BATON_TEST_COMMAND")
        .map_err(|_| "set BATON_TEST_COMMAND to the command that runs the tests")?;
    let req: Request = serde_path_to_error::deserialize(event.payload)
        .map_err(|e| format!("test request: {}: {}", e.path(), e.inner()))?;
    let mut env = test_env(&req)?;
    for name in std::env::var("BATON_TEST_PASS_ENV")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        if let Ok(v) = std::env::var(name) {
            env.push((name.to_string(), v));
        }
    }
    let left = event
        .context
        .deadline()
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    let finished = crate::adapters::sandbox::run(&crate::adapters::sandbox::Command {
        program: "sh".into(),
        args: vec!["-c".into(), command.clone()],
        env,
        workdir: std::env::current_dir().unwrap_or_else(|_| "/".into()),
        timeout: left
            .saturating_sub(Duration::from_secs(5))
            .max(Duration::from_secs(1)),
        output_limit: OUTPUT_LIMIT,
    })
    .await
    .map_err(|e| format!("cannot run sh -c {command:?}: {e}"))?;
    let image = &req.image;
    let (passed, summary) = match finished.status.map(|s| s.code()) {
        Some(Some(0)) => (true, format!("tests passed on {image}")),
        Some(Some(code)) => (
            false,
            format!("tests failed on {image} (exit status {code})"),
        ),
        Some(None) => (false, format!("tests on {image} were killed by a signal")),
        None => (
            false,
            format!("tests on {image} did not finish before the function's deadline"),
        ),
    };
    Ok(json!({ "passed": passed, "summary": summary, "output": finished.output }))
}

/// `main` of the test function: serves the Lambda Runtime API.
pub fn main() -> std::process::ExitCode {
    crate::adapters::sandbox::protect_this_process();
    crate::runtime::function::block_on(lambda_runtime::run(service_fn(run)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(extra: Value) -> Request {
        let mut v = json!({
            "image": format!("localhost:5000/demo/web@sha256:{}", "a".repeat(64)),
            "digest": format!("sha256:{}", "a".repeat(64)),
            "tag": "1.0.0", "repository": "demo/web", "app": "web",
            "run": "ab781cee5e2f2eae", "attempt": 1
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_verify_check_names_its_environment_and_check_to_the_tests() {
        let env = test_env(&request(json!({}))).unwrap();
        assert!(!env.iter().any(|(k, _)| k == "BATON_CHECK"));
        let env = test_env(&request(
            json!({"environment": "staging", "check": "smoke"}),
        ))
        .unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("BATON_ENVIRONMENT"), Some("staging"));
        assert_eq!(get("BATON_CHECK"), Some("smoke"));
        assert_eq!(get("BATON_TAG"), Some("1.0.0"));
        for bad in [
            json!({"environment": "staging; rm -rf /"}),
            json!({"check": "$(id)"}),
            json!({"app": "Web"}),
        ] {
            assert!(test_env(&request(bad.clone())).is_err(), "{bad}");
        }
    }
}
