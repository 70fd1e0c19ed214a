//! Stage logic for all seven stages, over ports. [`Pipeline`] holds the ports and the
//! configuration; the harness (`crate::pipeline::harness`) runs each stage; this module decides
//! which record a stage's work belongs to and dispatches to the stage's function.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::event::EventType;
use crate::pipeline::harness::{Input, StageCtx, Step};
use crate::ports::Ports;
use crate::store;

pub mod harness;
pub mod runs;
pub mod subscriptions;

use crate::stages::{approve, deploy, gate, ingest, notify, promote, test};

/// The stages, each its own function with its own permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageName {
    Ingest,
    Test,
    Gate,
    Approve,
    Deploy,
    Promote,
    Notify,
}

impl StageName {
    pub const ALL: [StageName; 7] = [
        StageName::Ingest,
        StageName::Test,
        StageName::Gate,
        StageName::Approve,
        StageName::Deploy,
        StageName::Promote,
        StageName::Notify,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StageName::Ingest => "ingest",
            StageName::Test => "test",
            StageName::Gate => "gate",
            StageName::Approve => "approve",
            StageName::Deploy => "deploy",
            StageName::Promote => "promote",
            StageName::Notify => "notify",
        }
    }

    /// Whether the stage runs once per environment.
    pub fn per_environment(self) -> bool {
        matches!(
            self,
            StageName::Gate | StageName::Approve | StageName::Deploy | StageName::Promote
        )
    }
}

impl fmt::Display for StageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StageName {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        StageName::ALL
            .into_iter()
            .find(|n| n.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown stage {s:?} (stages: {})",
                    StageName::ALL.map(|n| n.as_str()).join(", ")
                )
            })
    }
}

/// Runtime settings that are not part of the pipeline configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a claim holds before another worker may take it over.
    pub lease: Duration,
    /// Bytes of test output kept in the run record.
    pub test_output_limit: usize,
    /// Base URL of the approvals endpoint, when one serves them.
    pub approvals_url: Option<String>,
    /// Longest a waiting stage sleeps between checks.
    pub max_wait: Duration,
    /// Who this worker is, recorded with its claims (see [`crate::process`]).
    pub owner: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            lease: crate::pipeline::harness::DEFAULT_LEASE,
            test_output_limit: 64 * 1024,
            approvals_url: None,
            max_wait: Duration::from_secs(15 * 60),
            owner: crate::process::instance_id(),
        }
    }
}

/// The pipeline: ports, configuration and settings. Every stage runs through it.
pub struct Pipeline<P: Ports> {
    pub ports: P,
    pub config: Arc<Config>,
    pub settings: Settings,
}

impl<P: Ports> Pipeline<P> {
    pub fn new(ports: P, config: Arc<Config>, settings: Settings) -> Pipeline<P> {
        Pipeline {
            ports,
            config,
            settings,
        }
    }

    /// The environment a stage's work is about, if it is per-environment.
    pub(crate) fn record_env(&self, stage: StageName, input: &Input) -> Result<Option<String>> {
        let ctx = input.ctx();
        Ok(match stage {
            StageName::Gate => gate::target_environment(self, input)?,
            s if s.per_environment() => ctx.environment.clone(),
            _ => None,
        })
    }

    /// The record a stage's work on this input belongs to; `None` when there is nothing
    /// to do (for example gate after the last environment).
    pub(crate) fn record_key(&self, stage: StageName, input: &Input) -> Result<Option<String>> {
        let ctx = input.ctx();
        Ok(match stage {
            StageName::Notify => match input {
                Input::Reaction(r) => Some(store::notification_key(
                    &ctx.app,
                    &ctx.run,
                    &r.reaction,
                    &r.event.id,
                )),
                _ => {
                    return Err(Error::invalid(
                        "stage input",
                        "notify consumes events for a reaction",
                    ));
                }
            },
            StageName::Gate => gate::target_environment(self, input)?
                .map(|env| store::stage_key(&ctx.app, &ctx.run, "gate", Some(&env))),
            s if s.per_environment() => {
                let env = ctx.environment.as_deref().ok_or_else(|| {
                    Error::invalid(
                        "event",
                        format!("{s} needs an event that names an environment"),
                    )
                })?;
                // A rollback is a new deploy of an old run: promote retags again.
                let scope = match input.event().map(|e| (&e.payload, &e.id)) {
                    Some((crate::event::Payload::DeploySucceeded(d), id))
                        if d.rollback && s == StageName::Promote =>
                    {
                        format!("{env}.rollback-{}", &id[..id.len().min(8)])
                    }
                    _ => env.to_string(),
                };
                Some(store::stage_key(
                    &ctx.app,
                    &ctx.run,
                    s.as_str(),
                    Some(&scope),
                ))
            }
            s => Some(store::stage_key(&ctx.app, &ctx.run, s.as_str(), None)),
        })
    }

    pub(crate) async fn run_stage(
        &self,
        stage: StageName,
        input: &Input,
        ctx: &StageCtx,
    ) -> Result<Step> {
        match (stage, input) {
            (StageName::Ingest, Input::Push(p)) => Ok(ingest::run(p)),
            (StageName::Test, Input::Event(e)) => test::run(self, e, ctx).await,
            (StageName::Gate, Input::Event(e)) => gate::run(self, e, ctx).await,
            (StageName::Approve, Input::Event(e)) => approve::run(self, e, ctx).await,
            (StageName::Deploy, Input::Event(e)) => deploy::run(self, e, ctx).await,
            (StageName::Promote, Input::Event(e)) => promote::run(self, e).await,
            (StageName::Notify, Input::Reaction(r)) => notify::run(self, r).await,
            (stage, input) => Err(Error::invalid(
                "stage input",
                format!("{stage} does not consume {}", input.describe()),
            )),
        }
    }
}

/// Checks that an event is of the type a stage consumes.
pub(crate) fn expect_type(stage: StageName, got: EventType, allowed: &[EventType]) -> Result<()> {
    if allowed.contains(&got) {
        Ok(())
    } else {
        Err(Error::invalid(
            "stage input",
            format!(
                "{stage} consumes {} but got {got}",
                allowed
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        ))
    }
}
