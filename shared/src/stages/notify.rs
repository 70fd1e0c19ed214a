//! notify: any event a reaction's filter policy matches → a notification (webhook, log;
//! email is an SNS email subscription in AWS). Publishes nothing. Each (reaction,
//! event) pair is claimed once, so a re-delivered event notifies once.

use crate::error::Result;
use crate::pipeline::Pipeline;
use crate::pipeline::harness::{ReactionInput, Step};
use crate::ports::{Notifier, Ports};

pub(crate) async fn run<P: Ports>(p: &Pipeline<P>, input: &ReactionInput) -> Result<Step> {
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
