//! The pipeline: the ports, the configuration and the settings every stage runs with
//! ([`Pipeline`]), and what runs the stages over them:
//!
//! * [`stage`]: what a stage is (the `Stage` trait, its declaration, its input and step);
//! * [`harness`]: claim, run, publish, record, for any stage;
//! * [`approvals`], [`deployments`]: the approval records and what is live where, over
//!   the store;
//! * [`runs`]: queries over runs and `retry`.
//!
//! The stages themselves, and what is read from all their declarations (the subscription
//! table), are `crate::stages`: they depend on this module, never the other way.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::ports::Ports;

pub mod approvals;
pub mod deployments;
pub mod dora;
pub mod environments;
pub mod harness;
pub mod holds;
pub mod retention;
pub mod runs;
pub mod stage;

pub use stage::{Input, PushInput, ReactionInput, RecordKey, Stage, StageCtx, StageName, Step};

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
    /// Fault-suite only: `(stage, point)` at which this pipeline's work panics, as a
    /// function that crashes there would stop (see [`Pipeline::fail_point`]).
    pub fail_point: Option<(String, String)>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            lease: harness::DEFAULT_LEASE,
            test_output_limit: 64 * 1024,
            approvals_url: None,
            max_wait: Duration::from_secs(15 * 60),
            owner: crate::process::instance_id(),
            fail_point: None,
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

    /// A crash injected right after a side effect (the fault suites): the process
    /// kills itself when `BATON_FAIL_POINT` names this point (see
    /// [`crate::process::fail_point`]); this pipeline's work panics when its settings
    /// name it (an in-process function stops there as a crashed one would).
    pub fn fail_point(&self, stage: &str, point: &str) {
        crate::process::fail_point(stage, point);
        if let Some((s, p)) = &self.settings.fail_point
            && s == stage
            && p == point
        {
            panic!("fail point {stage}:{point}");
        }
    }
}
