//! `CommandRunner`: the embedded test runner. Runs the configured command with the
//! image (pinned by digest) in its environment: `BATON_IMAGE` (`repo@sha256:…`),
//! `BATON_IMAGE_DIGEST`, `BATON_IMAGE_TAG`, `BATON_IMAGE_REPOSITORY`,
//! `BATON_IMAGE_REGISTRY`, `BATON_APP`, `BATON_RUN`, `BATON_ATTEMPT`. The exit code
//! decides; stdout and stderr are captured; the command is killed at its timeout.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncReadExt;

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
    /// Bytes of output kept.
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

impl TestRunner for CommandRunner {
    fn kind(&self) -> &'static str {
        "command"
    }

    async fn start(&self, req: &TestRequest) -> Result<TestProgress> {
        let (program, args) = self
            .run
            .split_first()
            .ok_or_else(|| Error::invalid("test command", "empty command"))?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .current_dir(&self.workdir)
            .envs(self.env.iter().cloned())
            .env("BATON_IMAGE", req.image.reference())
            .env("BATON_IMAGE_DIGEST", &req.image.digest)
            .env("BATON_IMAGE_TAG", &req.image.tag)
            .env("BATON_IMAGE_REPOSITORY", &req.image.repository)
            .env("BATON_IMAGE_REGISTRY", &req.image.registry)
            .env("BATON_APP", &req.app)
            .env("BATON_RUN", &req.run)
            .env("BATON_ATTEMPT", req.attempt.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            Error::permanent(
                format!("test command {program:?} (in {})", self.workdir.display()),
                format!("cannot start: {e}"),
            )
        })?;
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let read_all = async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let a = async {
                if let Some(s) = stdout.as_mut() {
                    let _ = s.read_to_end(&mut out).await;
                }
            };
            let b = async {
                if let Some(s) = stderr.as_mut() {
                    let _ = s.read_to_end(&mut err).await;
                }
            };
            tokio::join!(a, b);
            (out, err)
        };
        let waited = tokio::time::timeout(self.timeout, async {
            let (out, err) = read_all.await;
            let status = child.wait().await;
            (out, err, status)
        })
        .await;
        match waited {
            Err(_) => {
                let _ = child.kill().await;
                Ok(TestProgress::Finished(TestOutcome {
                    passed: false,
                    summary: format!(
                        "timed out after {}",
                        humantime::format_duration(self.timeout)
                    ),
                    exit_code: None,
                    output: String::new(),
                }))
            }
            Ok((out, err, status)) => {
                let status = status.map_err(|e| Error::transient("wait for test command", e))?;
                let mut output = String::from_utf8_lossy(&out).into_owned();
                if !err.is_empty() {
                    output.push_str(&String::from_utf8_lossy(&err));
                }
                let output = crate::stages::test::bound(&output, self.output_limit);
                let code = status.code();
                Ok(TestProgress::Finished(TestOutcome {
                    passed: status.success(),
                    summary: match code {
                        Some(c) => format!("exit code {c}"),
                        None => "killed by a signal".into(),
                    },
                    exit_code: code,
                    output,
                }))
            }
        }
    }

    async fn check(&self, _req: &TestRequest, _state: &Value) -> Result<TestProgress> {
        Err(Error::permanent(
            "command test runner",
            "a command runs to completion in one delivery; there is no progress to check",
        ))
    }
}
