//! What a stage is. Each stage (`crate::stages`) is a type implementing [`Stage`]: a
//! declaration ([`StageSpec`]: what it consumes, whether it runs per environment, what
//! its role may hold) and its logic (`record`, `run`). The harness runs any stage through
//! this trait and names none; the subscription table, the audit's rows and the list of
//! functions are read from the declarations.

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::event::{Event, EventType, RunContext};
use crate::ids::output_event_id;
use crate::pipeline::Pipeline;
use crate::ports::Ports;
use crate::triggers::Push;

/// The stages, each its own function with its own permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageName {
    Ingest,
    Test,
    Gate,
    Approve,
    Deploy,
    Verify,
    Promote,
    Notify,
}

impl StageName {
    pub const ALL: [StageName; 8] = [
        StageName::Ingest,
        StageName::Test,
        StageName::Gate,
        StageName::Approve,
        StageName::Deploy,
        StageName::Verify,
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
            StageName::Verify => "verify",
            StageName::Promote => "promote",
            StageName::Notify => "notify",
        }
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

/// What a stage consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumes {
    /// Registry notifications (EventBridge, webhooks).
    Triggers,
    /// Baton events of these types (its queue's filter policy).
    Events(&'static [EventType]),
    /// Any event a reaction's filter policy matches, once per reaction.
    Reactions,
}

/// A stage's declaration: everything about it that is not its logic.
#[derive(Debug)]
pub struct StageSpec {
    pub name: StageName,
    pub consumes: Consumes,
    /// Runs once per environment (its records are `<stage>.<env>`).
    pub per_environment: bool,
    /// A permanent failure publishes `stage.failed`. (A notification reports its failures
    /// in its record only: a `stage.failed` could set off the same failing reaction.)
    pub reports_failures: bool,
    /// Capabilities its role may hold, in the audit's vocabulary (its row of the stage
    /// table), and in words what it must never touch.
    pub may_hold: &'static [&'static str],
    pub never: &'static str,
}

/// What a stage consumes, as the harness hands it over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Input {
    /// A Baton event from the bus.
    Event(Event),
    /// A registry push (ingest), with the run context ingest computed for it.
    Push(PushInput),
    /// An event delivered to one reaction (notify).
    Reaction(ReactionInput),
}

/// An event for a named reaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReactionInput {
    pub reaction: String,
    pub event: Event,
}

/// A push accepted by ingest's repository and tag checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushInput {
    pub push: Push,
    pub ctx: RunContext,
}

impl Input {
    /// The id outputs are derived from and duplicates are recognised by.
    pub fn id(&self) -> String {
        match self {
            Input::Event(e) => e.id.clone(),
            Input::Push(p) => format!(
                "push:{}:{}:{}",
                p.push.trigger.as_str(),
                p.push.notification_id,
                p.ctx.image.digest
            ),
            Input::Reaction(r) => format!("{}:{}", r.reaction, r.event.id),
        }
    }

    pub fn ctx(&self) -> &RunContext {
        match self {
            Input::Event(e) => e.ctx(),
            Input::Push(p) => &p.ctx,
            Input::Reaction(r) => r.event.ctx(),
        }
    }

    pub fn event(&self) -> Option<&Event> {
        match self {
            Input::Event(e) => Some(e),
            Input::Reaction(r) => Some(&r.event),
            Input::Push(_) => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Input::Event(e) => format!("{} {}", e.event_type(), e.id),
            Input::Push(p) => format!("push of {}", p.ctx.image.tagged()),
            Input::Reaction(r) => format!(
                "{} {} for reaction {}",
                r.event.event_type(),
                r.event.id,
                r.reaction
            ),
        }
    }

    /// The event, when the input is one of these types; otherwise an error saying what
    /// the stage consumes.
    pub fn expect_event(&self, stage: StageName, allowed: &[EventType]) -> Result<&Event> {
        match self {
            Input::Event(e) if allowed.contains(&e.event_type()) => Ok(e),
            other => Err(Error::invalid(
                "stage input",
                format!(
                    "{stage} consumes {} but got {}",
                    allowed
                        .iter()
                        .map(|t| t.as_str())
                        .collect::<Vec<_>>()
                        .join(" or "),
                    other.describe()
                ),
            )),
        }
    }
}

/// Where a stage's work on an input is recorded: `runs/<app>/<run>/stages/<key>.json`
/// (or the notification record of a reaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordKey {
    pub key: String,
    pub environment: Option<String>,
}

/// What a stage decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Publish these (possibly none) and finish.
    Done {
        outputs: Vec<crate::event::Payload>,
        note: Option<String>,
    },
    /// Not finished: record `progress`, publish `notices`, and deliver the input again
    /// after `after`.
    Wait {
        after: Duration,
        progress: Value,
        note: String,
        notices: Vec<Notice>,
    },
}

/// An event a waiting stage publishes (a deploy stopped at a freeze). Its id derives
/// from the input, the attempt and `key`: the same notice published again (a crash
/// between publishing and recording) is the same event, and a different `key` is another.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub key: String,
    pub payload: crate::event::Payload,
}

impl Step {
    pub fn publish(outputs: Vec<crate::event::Payload>) -> Step {
        Step::Done {
            outputs,
            note: None,
        }
    }
}

/// What a stage sees besides its input.
#[derive(Debug, Clone)]
pub struct StageCtx {
    pub stage: StageName,
    pub attempt: u32,
    pub input_id: String,
    /// Progress recorded by a previous `Step::Wait`.
    pub progress: Option<Value>,
    pub now: DateTime<Utc>,
    /// This run of the stage: the claim's owner and a number unique in the process
    /// (what the deploy lease is held by).
    pub worker: String,
}

impl StageCtx {
    /// The id the harness will give this stage's output of type `ty`.
    pub fn output_id(&self, ty: EventType) -> String {
        output_event_id(
            &self.input_id,
            self.stage.as_str(),
            ty.as_str(),
            self.attempt,
        )
    }
}

/// A stage: its declaration and its logic, over the ports it needs (`P`).
pub trait Stage<P: Ports>: Send + Sync + 'static {
    const SPEC: &'static StageSpec;

    /// The record this input's work belongs to; `None` when there is nothing to do (gate
    /// after the last environment).
    fn record(p: &Pipeline<P>, input: &Input) -> Result<Option<RecordKey>>;

    /// Whether `baton retry` may run a stage again whose record finished with these
    /// outputs (a failed test suite, a failed rollout), not only one that failed.
    fn may_retry(_outputs: &[Event]) -> bool {
        false
    }

    /// The stage's work on one input.
    fn run(
        p: &Pipeline<P>,
        input: &Input,
        ctx: &StageCtx,
    ) -> impl Future<Output = Result<Step>> + Send;
}

/// The record of a stage that runs once per image.
pub fn per_image(stage: StageName, ctx: &RunContext) -> RecordKey {
    RecordKey {
        key: crate::store::stage_key(&ctx.app, &ctx.run, stage.as_str(), None),
        environment: None,
    }
}

/// The record of a stage in the environment its input names.
pub fn per_environment(stage: StageName, input: &Input) -> Result<RecordKey> {
    let ctx = input.ctx();
    let env = ctx.environment.as_deref().ok_or_else(|| {
        Error::invalid(
            "event",
            format!("{stage} needs an event that names an environment"),
        )
    })?;
    Ok(RecordKey {
        key: crate::store::stage_key(&ctx.app, &ctx.run, stage.as_str(), Some(env)),
        environment: Some(env.to_string()),
    })
}
