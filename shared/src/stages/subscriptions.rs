//! The subscription table: which stage consumes which event types, read from the stages'
//! declarations ([`crate::stages::SPECS`]). Infra (SNS subscriptions with filter
//! policies), the embedded bus and the tests all read this one table; reactions from the
//! configuration are added beside it.

use crate::config::Config;
use crate::pipeline::StageName;
use crate::pipeline::stage::Consumes;
use crate::policy::FilterPolicy;

/// The `type` attribute of registry notifications on the embedded bus (ingest's
/// trigger; in AWS, EventBridge and the function URL invoke ingest directly).
pub const REGISTRY_PUSH: &str = "registry.push";

/// One subscription: a named queue with a filter policy and the stage it feeds.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Queue name: the stage name, or `notify.<reaction>`.
    pub name: String,
    pub stage: StageName,
    pub filter: FilterPolicy,
    /// The reaction a `notify` subscription serves.
    pub reaction: Option<String>,
}

/// The stage subscriptions on the events topic: one per stage that consumes events.
pub fn stage_subscriptions() -> Vec<Subscription> {
    crate::stages::SPECS
        .iter()
        .filter_map(|spec| match spec.consumes {
            Consumes::Events(types) => Some(Subscription {
                name: spec.name.as_str().into(),
                stage: spec.name,
                filter: FilterPolicy::types(types.iter().map(|t| t.as_str())),
                reaction: None,
            }),
            Consumes::Triggers | Consumes::Reactions => None,
        })
        .collect()
}

/// Stage subscriptions plus one `notify.<reaction>` subscription per reaction.
pub fn all_subscriptions(config: &Config) -> Vec<Subscription> {
    let mut subs = stage_subscriptions();
    subs.extend(config.reactions.iter().map(|r| Subscription {
        name: format!("notify.{}", r.name),
        stage: StageName::Notify,
        filter: r.on.clone(),
        reaction: Some(r.name.clone()),
    }));
    subs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AttrValue, Attributes, EventType};

    fn typed(t: &str) -> Attributes {
        [("type".to_string(), AttrValue::String(t.into()))]
            .into_iter()
            .collect()
    }

    #[test]
    fn every_event_type_reaches_exactly_the_stages_in_the_table() {
        let subs = stage_subscriptions();
        let consumers = |t: EventType| -> Vec<StageName> {
            subs.iter()
                .filter(|s| s.filter.matches(&typed(t.as_str())))
                .map(|s| s.stage)
                .collect()
        };
        assert_eq!(consumers(EventType::ImageBuilt), vec![StageName::Test]);
        assert_eq!(
            consumers(EventType::DeploySucceeded),
            vec![StageName::Gate, StageName::Verify, StageName::Promote]
        );
        assert_eq!(
            consumers(EventType::VerificationPassed),
            vec![StageName::Gate, StageName::Promote]
        );
        assert_eq!(
            consumers(EventType::VerificationFailed),
            vec![StageName::Deploy]
        );
        assert_eq!(
            consumers(EventType::ApprovalGranted),
            vec![StageName::Deploy]
        );
        assert!(consumers(EventType::StageFailed).is_empty());
        assert!(consumers(EventType::TestsFailed).is_empty());
        assert!(
            subs.iter()
                .all(|s| !s.filter.matches(&typed(REGISTRY_PUSH)))
        );
    }
}
