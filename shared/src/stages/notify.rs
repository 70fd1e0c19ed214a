//! notify: any event a reaction's filter policy matches → a notification (webhook, log;
//! email is an SNS email subscription in AWS). Publishes nothing. Each (reaction,
//! event) pair is claimed once, so a re-delivered event notifies once.

use crate::error::{Error, Result};
use crate::pipeline::Pipeline;
use crate::pipeline::stage::{
    Consumes, Input, RecordKey, Stage, StageCtx, StageName, StageSpec, Step,
};
use crate::ports::{Notifier, NotifyPorts};

/// The notify stage.
pub struct Notify;

pub static SPEC: StageSpec = StageSpec {
    name: StageName::Notify,
    consumes: Consumes::Reactions,
    per_environment: false,
    // A notification reports its failures in its record only: a `stage.failed` could set
    // off the same failing reaction again.
    reports_failures: false,
    may_hold: &[
        "logs",
        "store:config",
        "store:runs",
        "store:runs:write",
        "store:list",
        "queue",
    ],
    never: "everything else",
};

impl<P: NotifyPorts> Stage<P> for Notify {
    const SPEC: &'static StageSpec = &SPEC;

    fn record(_p: &Pipeline<P>, input: &Input) -> Result<Option<RecordKey>> {
        let Input::Reaction(r) = input else {
            return Err(Error::invalid(
                "stage input",
                "notify consumes events for a reaction",
            ));
        };
        let ctx = input.ctx();
        Ok(Some(RecordKey {
            key: crate::store::notification_key(&ctx.app, &ctx.run, &r.reaction, &r.event.id),
            environment: None,
        }))
    }

    async fn run(p: &Pipeline<P>, input: &Input, _ctx: &StageCtx) -> Result<Step> {
        let Input::Reaction(input) = input else {
            return Err(Error::invalid(
                "stage input",
                "notify consumes events for a reaction",
            ));
        };
        let reaction = p.config.reaction(&input.reaction)?;
        let notifier = p.ports.notifier(reaction)?;
        notifier
            .notify(&reaction.name, &input.event)
            .await
            .map_err(|e| e.context(format!("reaction {}", reaction.name)))?;
        Ok(Step::Done {
            outputs: vec![],
            note: Some(format!(
                "{} sent to {}",
                input.event.event_type(),
                reaction.name
            )),
        })
    }
}
