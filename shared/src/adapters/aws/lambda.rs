//! Lambda as a deploy target and as a test runner.
//!
//! `LambdaDeployTarget`: `apply` calls UpdateFunctionCode to `repo@sha256:…` and marks
//! the alias (`baton: updating code to <image> since <time>`); each `rollout` check
//! reads LastUpdateStatus once and, when it is Successful, publishes the version and
//! moves the alias (or starts a traffic shift). Nothing waits inside a function: an
//! update in progress is `Progressing`, so the deploy stage's message comes back after
//! `poll` (the deploy function's timeout bounds one check, not the update); an update
//! still in progress after `timeout` fails the rollout. Restore moves the alias back to
//! the version it had (all of its traffic). Already at the digest: nothing.
//!
//! With `traffic` (canary or linear), the alias keeps its version and routes a share of
//! its traffic to the new one (a weighted alias); each `rollout` check moves the next
//! step once the current one has been held long enough. The step and when it began are
//! written in the alias's description (`baton: 10% to version 7 since …`), so the state
//! lives where operators look and survives any function restart.
//!
//! `LambdaTestRunner`: invokes a test function with the image reference; its answer
//! `{"passed": bool, "summary": "…", "output": "…"}` decides, a function error fails.

use std::time::Duration;

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::LastUpdateStatus;
use serde_json::{Value, json};

use super::call_failed;
use crate::config::{LambdaDeploy, LambdaTest, TrafficShift};
use crate::error::{Error, Result};
use crate::ports::{
    Applied, DeployRequest, DeployTarget, Rollout, TestOutcome, TestProgress, TestRequest,
    TestRunner, WorkloadImage,
};

/// Deploys an image to a Lambda function behind an alias.
#[derive(Debug, Clone)]
pub struct LambdaDeployTarget {
    client: crate::adapters::aws::Lazy<aws_sdk_lambda::Client>,
    function: String,
    alias: String,
    timeout: Duration,
    poll: Duration,
    traffic: Option<TrafficShift>,
}

/// What an alias serves.
#[derive(Debug, Clone)]
struct AliasState {
    /// The version taking the rest of the traffic, and its image.
    version: String,
    image: String,
    /// A version taking a share of the traffic (percent), while a shift runs.
    shifting: Option<(String, u8)>,
    description: String,
}

/// What a check of a code update says while it is not done (`None`: it is, go on):
/// failed, still in progress (check again after `poll`), or in progress for longer than
/// `timeout`.
fn update_pending(
    function: &str,
    status: Option<&LastUpdateStatus>,
    reason: &str,
    elapsed: Duration,
    timeout: Duration,
    poll: Duration,
) -> Option<Rollout> {
    match status {
        Some(LastUpdateStatus::Successful) | None => None,
        Some(LastUpdateStatus::Failed) => Some(Rollout::Failed {
            reason: format!(
                "the code update of Lambda function {function} failed: {}",
                reason.trim()
            ),
        }),
        Some(_) if elapsed > timeout => Some(Rollout::Failed {
            reason: format!(
                "the code update of Lambda function {function} is still in progress after {}",
                humantime::format_duration(timeout)
            ),
        }),
        Some(_) => Some(Rollout::Progressing {
            detail: format!("code update of {function} in progress"),
            check_after: poll,
        }),
    }
}

/// The alias description while a code update is awaited: `<UPDATING><image> since <t>`.
const UPDATING: &str = "baton: updating code to ";

/// When the current step of a shift (or an awaited update) began, from the alias
/// description.
fn step_began(description: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let (_, since) = description.rsplit_once(" since ")?;
    chrono::DateTime::parse_from_rfc3339(since.trim())
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

impl LambdaDeployTarget {
    pub fn new(
        client: impl Into<crate::adapters::aws::Lazy<aws_sdk_lambda::Client>>,
        cfg: &LambdaDeploy,
    ) -> LambdaDeployTarget {
        LambdaDeployTarget {
            client: client.into(),
            function: cfg.function.clone(),
            alias: cfg.alias.clone(),
            timeout: cfg.timeout,
            poll: cfg.poll,
            traffic: cfg.traffic,
        }
    }

    fn workload(&self, version: &str) -> String {
        format!("Lambda/{}:{}@{version}", self.function, self.alias)
    }

    /// What the alias serves, if it exists.
    async fn alias_state(&self) -> Result<Option<AliasState>> {
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
                return Err(call_failed(
                    format!("get alias {}:{}", self.function, self.alias),
                    s,
                ));
            }
        };
        let version = alias.function_version().unwrap_or("$LATEST").to_string();
        let shifting = alias
            .routing_config()
            .and_then(|r| r.additional_version_weights())
            .and_then(|w| w.iter().find(|(_, share)| **share > 0.0))
            .map(|(v, share)| (v.clone(), (share * 100.0).round().clamp(0.0, 100.0) as u8));
        Ok(Some(AliasState {
            image: self.image_of(&version).await?,
            version,
            shifting,
            description: alias.description().unwrap_or_default().to_string(),
        }))
    }

    /// The image a version of the function runs.
    async fn image_of(&self, version: &str) -> Result<String> {
        let f = self
            .client
            .get_function()
            .function_name(&self.function)
            .qualifier(version)
            .send()
            .await
            .map_err(|e| self.not_found_or(e.into_service_error()))?;
        Ok(f.code()
            .and_then(|c| c.image_uri())
            .unwrap_or_default()
            .to_string())
    }

    fn not_found_or(&self, e: aws_sdk_lambda::operation::get_function::GetFunctionError) -> Error {
        if e.is_resource_not_found_exception() {
            Error::permanent(
                format!("Lambda function {}", self.function),
                "does not exist",
            )
        } else {
            call_failed(format!("get function {}", self.function), e)
        }
    }

    /// Marks the alias as waiting for a code update to `image` (its version and routing
    /// unchanged), so a later check knows what it is waiting for.
    async fn mark_updating(&self, image: &str) -> Result<()> {
        self.client
            .update_alias()
            .function_name(&self.function)
            .name(&self.alias)
            .description(format!(
                "{UPDATING}{image} since {}",
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ))
            .send()
            .await
            .map_err(|e| {
                call_failed(
                    format!("mark alias {}:{} as updating", self.function, self.alias),
                    e.into_service_error(),
                )
            })?;
        Ok(())
    }

    /// One check of a code update to `want`: still in progress, failed, or done, in
    /// which case the version is published and the alias moved (or a shift started).
    async fn finish_update(
        &self,
        req: &DeployRequest,
        alias: Option<&AliasState>,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Rollout> {
        let want = req.image.reference();
        let c = self
            .client
            .get_function_configuration()
            .function_name(&self.function)
            .send()
            .await
            .map_err(|e| {
                call_failed(
                    format!("get configuration of {}", self.function),
                    e.into_service_error(),
                )
            })?;
        let status = c.last_update_status();
        let reason = format!(
            "{} {}",
            c.last_update_status_reason_code()
                .map(|r| r.as_str())
                .unwrap_or(""),
            c.last_update_status_reason().unwrap_or("")
        );
        let elapsed = since
            .map(|t| (chrono::Utc::now() - t).to_std().unwrap_or_default())
            .unwrap_or_default();
        if let Some(r) = update_pending(
            &self.function,
            status,
            &reason,
            elapsed,
            self.timeout,
            self.poll,
        ) {
            return Ok(r);
        }
        let latest = self.image_of("$LATEST").await?;
        if latest != want {
            return Ok(Rollout::Failed {
                reason: format!(
                    "Lambda function {} runs {latest} now, not {want}: another update replaced this one",
                    self.function
                ),
            });
        }
        let published = self
            .client
            .publish_version()
            .function_name(&self.function)
            .description(req.cause.chars().take(256).collect::<String>())
            .send()
            .await
            .map_err(|e| {
                call_failed(
                    format!("publish a version of {}", self.function),
                    e.into_service_error(),
                )
            })?;
        let version = published.version().unwrap_or("$LATEST").to_string();
        match (alias, self.traffic) {
            (Some(a), Some(shift)) if a.version != version => {
                self.set_share(&a.version, &version, shift.first()).await?;
                Ok(Rollout::Progressing {
                    detail: format!(
                        "{} version {version} takes {}% of alias {} ({}), version {} the rest",
                        self.function,
                        shift.first(),
                        self.alias,
                        match shift {
                            TrafficShift::Canary { .. } => "canary",
                            TrafficShift::Linear { .. } => "linear",
                        },
                        a.version
                    ),
                    check_after: shift.hold(),
                })
            }
            _ => {
                self.point_alias(&version, alias.is_some()).await?;
                Ok(Rollout::Complete {
                    detail: format!(
                        "{} version {version} behind alias {}",
                        self.function, self.alias
                    ),
                })
            }
        }
    }

    async fn point_alias(&self, version: &str, exists: bool) -> Result<()> {
        let what = format!("move alias {}:{} to {version}", self.function, self.alias);
        if exists {
            // All traffic: any weighted routing of a shift is cleared.
            self.client
                .update_alias()
                .function_name(&self.function)
                .name(&self.alias)
                .function_version(version)
                .routing_config(
                    aws_sdk_lambda::types::AliasRoutingConfiguration::builder()
                        .set_additional_version_weights(Some(Default::default()))
                        .build(),
                )
                .description(format!("baton: version {version}"))
                .send()
                .await
                .map_err(|e| call_failed(what, e.into_service_error()))?;
        } else {
            self.client
                .create_alias()
                .function_name(&self.function)
                .name(&self.alias)
                .function_version(version)
                .send()
                .await
                .map_err(|e| call_failed(what, e.into_service_error()))?;
        }
        Ok(())
    }

    /// Keeps `primary` behind the alias and routes `share` percent to `next`.
    async fn set_share(&self, primary: &str, next: &str, share: u8) -> Result<()> {
        let mut weights = std::collections::HashMap::new();
        weights.insert(next.to_string(), f64::from(share) / 100.0);
        self.client
            .update_alias()
            .function_name(&self.function)
            .name(&self.alias)
            .function_version(primary)
            .routing_config(
                aws_sdk_lambda::types::AliasRoutingConfiguration::builder()
                    .set_additional_version_weights(Some(weights))
                    .build(),
            )
            .description(format!(
                "baton: {share}% to version {next} since {}",
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ))
            .send()
            .await
            .map_err(|e| {
                call_failed(
                    format!(
                        "route {share}% of alias {}:{} to version {next}",
                        self.function, self.alias
                    ),
                    e.into_service_error(),
                )
            })?;
        Ok(())
    }

    /// One check of a running shift: holds the current step or moves to the next.
    async fn shift_step(
        &self,
        shift: TrafficShift,
        alias: &AliasState,
        next_version: &str,
        share: u8,
    ) -> Result<Rollout> {
        let held = step_began(&alias.description)
            .map(|t| (chrono::Utc::now() - t).to_std().unwrap_or_default())
            .unwrap_or(shift.hold());
        if held < shift.hold() {
            let left = shift.hold() - held;
            return Ok(Rollout::Progressing {
                detail: format!(
                    "{share}% of alias {} on version {next_version}; {}% in {}",
                    self.alias,
                    shift.next(share),
                    humantime::format_duration(Duration::from_secs(left.as_secs().max(1)))
                ),
                check_after: left,
            });
        }
        let next = shift.next(share);
        if next >= 100 {
            self.point_alias(next_version, true).await?;
            return Ok(Rollout::Complete {
                detail: format!(
                    "alias {} serves version {next_version} (all traffic, after {share}%)",
                    self.alias
                ),
            });
        }
        self.set_share(&alias.version, next_version, next).await?;
        Ok(Rollout::Progressing {
            detail: format!("{next}% of alias {} on version {next_version}", self.alias),
            check_after: shift.hold(),
        })
    }
}

impl DeployTarget for LambdaDeployTarget {
    fn kind(&self) -> &'static str {
        "lambda"
    }

    async fn apply(&self, req: &DeployRequest) -> Result<Applied> {
        let want = req.image.reference();
        let before = self.alias_state().await?;
        if let Some(a) = &before
            && a.image == want
        {
            let previous = vec![WorkloadImage {
                workload: self.workload(&a.version),
                image: a.image.clone(),
            }];
            if let Some((shifting, share)) = &a.shifting {
                // Back to the version that runs the image (a rollback during a shift).
                self.point_alias(&a.version, true).await?;
                return Ok(Applied {
                    previous,
                    changed: true,
                    detail: format!(
                        "{}:{} back to version {} with all traffic ({share}% was on version {shifting})",
                        self.function, self.alias, a.version
                    ),
                });
            }
            return Ok(Applied {
                previous,
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
                    call_failed(format!("update code of {}", self.function), s)
                }
            })?;
        if before.is_some() {
            self.mark_updating(&want).await?;
        }
        Ok(Applied {
            previous: before
                .map(|a| {
                    vec![WorkloadImage {
                        workload: self.workload(&a.version),
                        image: a.image,
                    }]
                })
                .unwrap_or_default(),
            changed: true,
            detail: format!("{} code updated to {want}", self.function),
        })
    }

    async fn rollout(&self, req: &DeployRequest) -> Result<Rollout> {
        let want = req.image.reference();
        let Some(alias) = self.alias_state().await? else {
            // A first deploy: the alias is created once the update is done.
            return self.finish_update(req, None, None).await;
        };
        if let Some(rest) = alias.description.strip_prefix(UPDATING)
            && rest.split(" since ").next() == Some(want.as_str())
        {
            return self
                .finish_update(req, Some(&alias), step_began(&alias.description))
                .await;
        }
        if alias.image == want && alias.shifting.is_none() {
            return Ok(Rollout::Complete {
                detail: format!("alias {} serves version {}", self.alias, alias.version),
            });
        }
        if let Some((next, share)) = &alias.shifting
            && self.image_of(next).await? == want
        {
            return match self.traffic {
                Some(shift) => self.shift_step(shift, &alias, next, *share).await,
                // The shift was taken out of the configuration: finish it.
                None => {
                    self.point_alias(next, true).await?;
                    Ok(Rollout::Complete {
                        detail: format!("alias {} serves version {next}", self.alias),
                    })
                }
            };
        }
        Ok(Rollout::Failed {
            reason: format!(
                "alias {} serves version {} ({}), not {want}",
                self.alias, alias.version, alias.image
            ),
        })
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
    client: crate::adapters::aws::Lazy<aws_sdk_lambda::Client>,
    function: String,
    output_limit: usize,
}

impl LambdaTestRunner {
    pub fn new(
        client: impl Into<crate::adapters::aws::Lazy<aws_sdk_lambda::Client>>,
        cfg: &LambdaTest,
    ) -> LambdaTestRunner {
        LambdaTestRunner {
            client: client.into(),
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
        let mut payload = json!({
            "image": req.image.reference(),
            "digest": req.image.digest,
            "tag": req.image.tag,
            "repository": req.image.repository,
            "app": req.app,
            "run": req.run,
            "attempt": req.attempt,
        });
        if let Some(c) = &req.check {
            payload["environment"] = json!(c.environment);
            payload["check"] = json!(c.check);
        }
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
                    call_failed(format!("invoke test function {}", self.function), s)
                }
            })?;
        let body = out
            .payload()
            .map(|b| String::from_utf8_lossy(b.as_ref()).into_owned())
            .unwrap_or_default();
        let output = crate::ports::bound_output(&body, self.output_limit);
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
                .map(|o| crate::ports::bound_output(o, self.output_limit))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_in_progress_is_checked_again_later_never_waited_for() {
        let (timeout, poll) = (Duration::from_secs(600), Duration::from_secs(5));
        let check = |status, elapsed| {
            update_pending(
                "web",
                status,
                "",
                Duration::from_secs(elapsed),
                timeout,
                poll,
            )
        };
        assert_eq!(check(Some(&LastUpdateStatus::Successful), 0), None);
        assert_eq!(check(None, 0), None);
        assert_eq!(
            check(Some(&LastUpdateStatus::InProgress), 30),
            Some(Rollout::Progressing {
                detail: "code update of web in progress".into(),
                check_after: poll,
            })
        );
        assert!(matches!(
            check(Some(&LastUpdateStatus::InProgress), 601),
            Some(Rollout::Failed { reason }) if reason.contains("still in progress after 10m")
        ));
        assert!(matches!(
            update_pending("web", Some(&LastUpdateStatus::Failed), "InvalidImage bad ", Duration::ZERO, timeout, poll),
            Some(Rollout::Failed { reason }) if reason.ends_with("failed: InvalidImage bad")
        ));
    }

    #[test]
    fn the_awaited_update_is_read_back_from_the_alias_description() {
        let d = format!(
            "{UPDATING}repo@sha256:{} since 2026-11-29T12:00:00.000Z",
            "a".repeat(64)
        );
        let rest = d.strip_prefix(UPDATING).unwrap();
        assert_eq!(
            rest.split(" since ").next(),
            Some(format!("repo@sha256:{}", "a".repeat(64)).as_str())
        );
        assert_eq!(
            step_began(&d),
            chrono::DateTime::parse_from_rfc3339("2026-11-29T12:00:00Z")
                .ok()
                .map(|t| t.with_timezone(&chrono::Utc))
        );
    }
}
