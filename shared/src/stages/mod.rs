//! The eight stages, one file each. A stage file holds everything about its stage: its
//! declaration (`SPEC`: what it consumes, whether it runs per environment, what its role
//! may hold), where its record lives, and what it does, over the ports it needs.
//!
//! | stage | consumes | publishes | needs |
//! |---|---|---|---|
//! | [`ingest`] | registry pushes | `image.built` | a registry |
//! | [`test`] | `image.built` | `tests.passed` / `tests.failed` | a test runner |
//! | [`gate`] | `tests.passed`, `deploy.succeeded` | `approval.granted` (auto) / `approval.requested` | – |
//! | [`approve`] | `approval.requested`, decisions | `approval.granted` / `approval.rejected` | – |
//! | [`deploy`] | `approval.granted`, `verification.failed` (rollback) | `deploy.succeeded` / `deploy.failed` | a deploy target |
//! | [`verify`] | `deploy.succeeded` (environments with checks) | `verification.passed` / `verification.failed` | test runners, a probe |
//! | [`promote`] | `deploy.succeeded` (no checks), `verification.passed` | `image.promoted` | a registry |
//! | [`notify`] | what reactions match | – | a notifier |
//!
//! [`SPECS`] lists the declarations; [`subscriptions`] (which queue feeds which stage)
//! and the audit rows are read from it.

use crate::error::Result;
use crate::pipeline::Pipeline;
use crate::pipeline::harness::{self, Handled, Mode};
use crate::pipeline::stage::{Input, StageName, StageSpec};
use crate::ports::AllPorts;

pub mod approve;
pub mod deploy;
pub mod gate;
pub mod ingest;
pub mod notify;
pub mod promote;
pub mod subscriptions;
pub mod test;
#[cfg(test)]
pub(crate) mod testing;
pub mod verify;

pub use approve::Approve;
pub use deploy::Deploy;
pub use gate::Gate;
pub use ingest::Ingest;
pub use notify::Notify;
pub use promote::Promote;
pub use test::Test;
pub use verify::Verify;

/// Every stage's declaration, in pipeline order: what the subscription table, the
/// audit's rows and the list of functions are read from.
pub static SPECS: [&StageSpec; 8] = [
    &ingest::SPEC,
    &test::SPEC,
    &gate::SPEC,
    &approve::SPEC,
    &deploy::SPEC,
    &verify::SPEC,
    &promote::SPEC,
    &notify::SPEC,
];

/// The declaration of a stage.
pub fn spec(name: StageName) -> &'static StageSpec {
    // SPECS is in the order of StageName::ALL (a unit test holds it).
    SPECS[name as usize]
}

/// Runs the stage `name` on `input` under the harness: for a runtime that runs every
/// stage (the local dispatcher, `baton retry`). A function runs its one stage directly.
pub async fn handle<P: AllPorts>(
    p: &Pipeline<P>,
    name: StageName,
    input: Input,
    mode: Mode,
) -> Result<Handled> {
    match name {
        StageName::Ingest => harness::handle::<Ingest, P>(p, input, mode).await,
        StageName::Test => harness::handle::<Test, P>(p, input, mode).await,
        StageName::Gate => harness::handle::<Gate, P>(p, input, mode).await,
        StageName::Approve => harness::handle::<Approve, P>(p, input, mode).await,
        StageName::Deploy => harness::handle::<Deploy, P>(p, input, mode).await,
        StageName::Verify => harness::handle::<Verify, P>(p, input, mode).await,
        StageName::Promote => harness::handle::<Promote, P>(p, input, mode).await,
        StageName::Notify => harness::handle::<Notify, P>(p, input, mode).await,
    }
}

/// Re-runs exactly one stage of a run from its recorded input, as a new attempt
/// (`baton retry`).
pub async fn retry<P: AllPorts>(
    p: &Pipeline<P>,
    run: &str,
    name: StageName,
    env: Option<&str>,
) -> Result<Handled> {
    let rec = crate::pipeline::runs::retry_record(p, run, spec(name), env).await?;
    handle(p, name, rec.input, Mode::Retry).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_follow_the_stage_names() {
        for name in StageName::ALL {
            assert_eq!(spec(name).name, name);
        }
    }
}
