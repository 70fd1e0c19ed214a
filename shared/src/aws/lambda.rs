//! Lambda as a deploy target and as a test runner.
//!
//! `LambdaDeployTarget`: UpdateFunctionCode to `repo@sha256:…`, wait until
//! LastUpdateStatus is Successful (or report why not), PublishVersion, move the alias.
//! Restore moves the alias back to the version it had. Already at the digest: nothing.
//!
//! `LambdaTestRunner`: invokes a test function with the image reference; its answer
//! `{"passed": bool, "summary": "…", "output": "…"}` decides, a function error fails.

use std::time::{Duration, Instant};

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::LastUpdateStatus;
use serde_json::{Value, json};

use crate::config::{LambdaDeploy, LambdaTest};
use crate::error::{Error, Message, Result};
use crate::ports::{
    Applied, DeployRequest, DeployTarget, Rollout, TestOutcome, TestProgress, TestRequest,
    TestRunner, WorkloadImage,
};

/// Deploys an image to a Lambda function behind an alias.
#[derive(Debug, Clone)]
pub struct LambdaDeployTarget {
    client: aws_sdk_lambda::Client,
    function: String,
    alias: String,
    timeout: Duration,
    poll: Duration,
}

fn svc<E: std::fmt::Display>(what: String, e: E) -> Error {
    Error::transient(what, Message(e.to_string()))
}

impl LambdaDeployTarget {
    pub fn new(client: aws_sdk_lambda::Client, cfg: &LambdaDeploy) -> LambdaDeployTarget {
        LambdaDeployTarget {
            client,
            function: cfg.function.clone(),
            alias: cfg.alias.clone(),
            timeout: cfg.timeout,
            poll: cfg.poll,
        }
    }

    fn workload(&self, version: &str) -> String {
        format!("Lambda/{}:{}@{version}", self.function, self.alias)
    }

    /// The alias's version and the image it runs, if the alias exists.
    async fn alias_state(&self) -> Result<Option<(String, String)>> {
        let alias = match self
            .client
            .get_alias()
            .function_name(&self.function)
            .name(&self.alias)
            .send()
            .await
        {
            Ok(a) => a,
            Err(e) => {
                let s = e.into_service_error();
                if s.is_resource_not_found_exception() {
                    return Ok(None);
                }
                return Err(svc(
                    format!("get alias {}:{}", self.function, self.alias),
                    s,
                ));
            }
        };
        let version = alias.function_version().unwrap_or("$LATEST").to_string();
        let f = self
            .client
            .get_function()
            .function_name(&self.function)
            .qualifier(&version)
            .send()
            .await
            .map_err(|e| self.not_found_or(e.into_service_error()))?;
        let image = f
            .code()
            .and_then(|c| c.image_uri())
            .unwrap_or_default()
            .to_string();
        Ok(Some((version, image)))
    }

    fn not_found_or(&self, e: aws_sdk_lambda::operation::get_function::GetFunctionError) -> Error {
        if e.is_resource_not_found_exception() {
            Error::permanent(
                format!("Lambda function {}", self.function),
                "does not exist",
            )
        } else {
            svc(format!("get function {}", self.function), e)
        }
    }

    async fn wait_updated(&self) -> Result<()> {
        let started = Instant::now();
        loop {
            let c = self
                .client
                .get_function_configuration()
                .function_name(&self.function)
                .send()
                .await
                .map_err(|e| {
                    svc(
                        format!("get configuration of {}", self.function),
                        e.into_service_error(),
                    )
                })?;
            match c.last_update_status() {
                Some(LastUpdateStatus::Successful) | None => return Ok(()),
                Some(LastUpdateStatus::Failed) => {
                    return Err(Error::permanent(
                        format!("update of Lambda function {}", self.function),
                        format!(
                            "failed: {} {}",
                            c.last_update_status_reason_code()
                                .map(|r| r.as_str())
                                .unwrap_or(""),
                            c.last_update_status_reason().unwrap_or("")
                        ),
                    ));
                }
                _ if started.elapsed() > self.timeout => {
                    return Err(Error::permanent(
                        format!("update of Lambda function {}", self.function),
                        format!(
                            "still in progress after {}",
                            humantime::format_duration(self.timeout)
                        ),
                    ));
                }
                _ => tokio::time::sleep(self.poll).await,
            }
        }
    }

    async fn point_alias(&self, version: &str, exists: bool) -> Result<()> {
        let what = format!("move alias {}:{} to {version}", self.function, self.alias);
        if exists {
            self.client
                .update_alias()
                .function_name(&self.function)
                .name(&self.alias)
                .function_version(version)
                .send()
                .await
                .map_err(|e| svc(what, e.into_service_error()))?;
        } else {
            self.client
                .create_alias()
                .function_name(&self.function)
                .name(&self.alias)
                .function_version(version)
                .send()
                .await
                .map_err(|e| svc(what, e.into_service_error()))?;
        }
        Ok(())
    }
}

impl DeployTarget for LambdaDeployTarget {
    fn kind(&self) -> &'static str {
        "lambda"
    }

    async fn apply(&self, req: &DeployRequest) -> Result<Applied> {
        let want = req.image.reference();
        let before = self.alias_state().await?;
        if let Some((version, image)) = &before
            && image == &want
        {
            return Ok(Applied {
                previous: vec![WorkloadImage {
                    workload: self.workload(version),
                    image: image.clone(),
                }],
                changed: false,
                detail: format!(
                    "{}:{} already runs {}",
                    self.function,
                    self.alias,
                    req.image.short_digest()
                ),
            });
        }
        self.client
            .update_function_code()
            .function_name(&self.function)
            .image_uri(&want)
            .send()
            .await
            .map_err(|e| {
                let s = e.into_service_error();
                if s.is_resource_not_found_exception() {
                    Error::permanent(
                        format!("Lambda function {}", self.function),
                        "does not exist",
                    )
                } else {
                    svc(format!("update code of {}", self.function), s)
                }
            })?;
        self.wait_updated().await?;
        let published = self
            .client
            .publish_version()
            .function_name(&self.function)
            .description(req.cause.chars().take(256).collect::<String>())
            .send()
            .await
            .map_err(|e| {
                svc(
                    format!("publish a version of {}", self.function),
                    e.into_service_error(),
                )
            })?;
        let version = published.version().unwrap_or("$LATEST").to_string();
        self.point_alias(&version, before.is_some()).await?;
        Ok(Applied {
            previous: before
                .map(|(v, image)| {
                    vec![WorkloadImage {
                        workload: self.workload(&v),
                        image,
                    }]
                })
                .unwrap_or_default(),
            changed: true,
            detail: format!(
                "{} version {version} behind alias {}",
                self.function, self.alias
            ),
        })
    }

    async fn rollout(&self, req: &DeployRequest) -> Result<Rollout> {
        match self.alias_state().await? {
            Some((version, image)) if image == req.image.reference() => Ok(Rollout::Complete {
                detail: format!("alias {} serves version {version}", self.alias),
            }),
            Some((version, image)) => Ok(Rollout::Failed {
                reason: format!(
                    "alias {} serves version {version} ({image}), not {}",
                    self.alias,
                    req.image.reference()
                ),
            }),
            None => Ok(Rollout::Failed {
                reason: format!("alias {} of {} does not exist", self.alias, self.function),
            }),
        }
    }

    async fn restore(&self, _req: &DeployRequest, previous: &[WorkloadImage]) -> Result<()> {
        for p in previous {
            if let Some(version) = p.workload.rsplit_once('@').map(|(_, v)| v) {
                self.point_alias(version, true).await?;
            }
        }
        Ok(())
    }
}

/// Runs tests by invoking a test function.
#[derive(Debug, Clone)]
pub struct LambdaTestRunner {
    client: aws_sdk_lambda::Client,
    function: String,
    output_limit: usize,
}

impl LambdaTestRunner {
    pub fn new(client: aws_sdk_lambda::Client, cfg: &LambdaTest) -> LambdaTestRunner {
        LambdaTestRunner {
            client,
            function: cfg.function.clone(),
            output_limit: 64 * 1024,
        }
    }
}

impl TestRunner for LambdaTestRunner {
    fn kind(&self) -> &'static str {
        "lambda"
    }

    async fn start(&self, req: &TestRequest) -> Result<TestProgress> {
        let payload = json!({
            "image": req.image.reference(),
            "digest": req.image.digest,
            "tag": req.image.tag,
            "repository": req.image.repository,
            "app": req.app,
            "run": req.run,
            "attempt": req.attempt,
        });
        let out = self
            .client
            .invoke()
            .function_name(&self.function)
            .payload(Blob::new(payload.to_string()))
            .send()
            .await
            .map_err(|e| {
                let s = e.into_service_error();
                if s.is_resource_not_found_exception() {
                    Error::permanent(format!("test function {}", self.function), "does not exist")
                } else {
                    svc(format!("invoke test function {}", self.function), s)
                }
            })?;
        let body = out
            .payload()
            .map(|b| String::from_utf8_lossy(b.as_ref()).into_owned())
            .unwrap_or_default();
        let output = crate::stages::test::bound(&body, self.output_limit);
        if let Some(err) = out.function_error() {
            return Ok(TestProgress::Finished(TestOutcome {
                passed: false,
                summary: format!("test function {} failed ({err})", self.function),
                exit_code: None,
                output,
            }));
        }
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let Some(passed) = v["passed"].as_bool() else {
            return Err(Error::permanent(
                format!("test function {}", self.function),
                "answered without a boolean \"passed\" (expected {\"passed\": true|false, \"summary\": …, \"output\": …})",
            ));
        };
        Ok(TestProgress::Finished(TestOutcome {
            passed,
            summary: v["summary"].as_str().map(str::to_owned).unwrap_or_else(|| {
                if passed {
                    "passed".into()
                } else {
                    "failed".into()
                }
            }),
            exit_code: None,
            output: v["output"]
                .as_str()
                .map(|o| crate::stages::test::bound(o, self.output_limit))
                .unwrap_or(output),
        }))
    }

    async fn check(&self, _req: &TestRequest, _state: &Value) -> Result<TestProgress> {
        Err(Error::permanent(
            "lambda test runner",
            "an invocation finishes in one delivery; there is no progress to check",
        ))
    }
}
