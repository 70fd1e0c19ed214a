//! `CommandRunner`: the embedded test runner. Runs the configured command in a sandbox
//! ([`crate::adapters::sandbox`]: cleared environment, its own process group, a bounded output
//! tail) with the image, pinned by digest, in its environment: `BATON_IMAGE`
//! (`repo@sha256:…`), `BATON_IMAGE_DIGEST`, `BATON_IMAGE_TAG`, `BATON_IMAGE_REPOSITORY`,
//! `BATON_IMAGE_REGISTRY`, `BATON_APP`, `BATON_RUN`, `BATON_ATTEMPT`, plus `PATH` and the
//! configured `env`, and nothing else. The exit code decides; the whole process group is
//! killed at the timeout.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::adapters::sandbox;
use crate::config::CommandTest;
use crate::error::{Error, Result};
use crate::ports::{TestOutcome, TestProgress, TestRequest, TestRunner};

/// Runs a local command as the test.
#[derive(Debug, Clone)]
pub struct CommandRunner {
    pub run: Vec<String>,
    pub timeout: Duration,
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
    /// Bytes of output kept (the last ones).
    pub output_limit: usize,
}

impl CommandRunner {
    pub fn from_config(cfg: &CommandTest, base: &std::path::Path) -> CommandRunner {
        CommandRunner {
            run: cfg.run.clone(),
            timeout: cfg.timeout,
            env: cfg
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            workdir: cfg
                .workdir
                .as_ref()
                .map(|w| base.join(w))
                .unwrap_or_else(|| base.to_path_buf()),
            output_limit: 64 * 1024,
        }
    }
}

/// The variables describing the image and run, as every test command sees them.
pub fn image_env(req: &TestRequest) -> Vec<(String, String)> {
    let mut env = vec![
        ("BATON_IMAGE".into(), req.image.reference()),
        ("BATON_IMAGE_DIGEST".into(), req.image.digest.to_string()),
        ("BATON_IMAGE_TAG".into(), req.image.tag.to_string()),
        (
            "BATON_IMAGE_REPOSITORY".into(),
            req.image.repository.to_string(),
        ),
        (
            "BATON_IMAGE_REGISTRY".into(),
            req.image.registry.to_string(),
        ),
        ("BATON_APP".into(), req.app.clone()),
        ("BATON_RUN".into(), req.run.to_string()),
        ("BATON_ATTEMPT".into(), req.attempt.to_string()),
    ];
    if let Some(c) = &req.check {
        env.push(("BATON_ENVIRONMENT".into(), c.environment.clone()));
        env.push(("BATON_CHECK".into(), c.check.clone()));
    }
    env
}

impl TestRunner for CommandRunner {
    fn kind(&self) -> &'static str {
        "command"
    }

    async fn start(&self, req: &TestRequest) -> Result<TestProgress> {
        let (program, args) = self
            .run
            .split_first()
            .ok_or_else(|| Error::invalid("test command", "empty command"))?;
        let mut env = self.env.clone();
        env.extend(image_env(req));
        let finished = sandbox::run(&sandbox::Command {
            program: program.clone(),
            args: args.to_vec(),
            env,
            workdir: self.workdir.clone(),
            timeout: self.timeout,
            output_limit: self.output_limit,
        })
        .await
        .map_err(|e| e.context(format!("test command of run {}", req.run)))?;
        Ok(TestProgress::Finished(match finished.status {
            None => TestOutcome {
                passed: false,
                summary: format!(
                    "timed out after {} (the command's process group was killed)",
                    humantime::format_duration(self.timeout)
                ),
                exit_code: None,
                output: finished.output,
            },
            Some(status) => {
                let code = status.code();
                TestOutcome {
                    passed: status.success(),
                    summary: match code {
                        Some(c) => format!("exit code {c}"),
                        None => "killed by a signal".into(),
                    },
                    exit_code: code,
                    output: finished.output,
                }
            }
        }))
    }

    async fn check(&self, _req: &TestRequest, _state: &Value) -> Result<TestProgress> {
        Err(Error::permanent(
            "command test runner",
            "a command runs to completion in one delivery; there is no progress to check",
        ))
    }
}
