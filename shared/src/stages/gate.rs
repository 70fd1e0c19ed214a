//! gate: `tests.passed` (first environment) or `deploy.succeeded` of the previous
//! environment (`verification.passed` where it has checks) → `approval.granted` under an `auto` policy, else `approval.requested`
//! with the rules the approvers must meet. Rollbacks never promote onwards.

use chrono::Duration;

use crate::config::ApprovalPolicy;
use crate::error::{Error, Result};
use crate::event::{ApprovalGranted, ApprovalRequested, Event, EventType, GrantPolicy, Payload};
use crate::pipeline::Pipeline;
use crate::pipeline::stage::{
    Consumes, Input, RecordKey, Stage, StageCtx, StageName, StageSpec, Step,
};
use crate::ports::Ports;

/// The environment the gate decides for, or `None` when there is none.
pub(crate) fn target_environment<P: Ports>(
    p: &Pipeline<P>,
    input: &Input,
) -> Result<Option<String>> {
    let Input::Event(e) = input else {
        return Err(Error::invalid(
            "stage input",
            "gate consumes events, not pushes",
        ));
    };
    let ctx = e.ctx();
    let app = p.config.app(&ctx.app)?;
    Ok(match &e.payload {
        Payload::TestsPassed(_) => app.environments.first().map(|e| e.name.clone()),
        // An environment with checks opens the next gate on `verification.passed`.
        Payload::DeploySucceeded(d) if !d.rollback => {
            if crate::stages::verify::checks_for(p, e).is_some() {
                return Ok(None);
            }
            let env = ctx.environment.as_deref().unwrap_or("");
            app.next_environment(env).map(|e| e.name.clone())
        }
        Payload::VerificationPassed(_) => {
            let env = ctx.environment.as_deref().unwrap_or("");
            app.next_environment(env).map(|e| e.name.clone())
        }
        _ => None,
    })
}

const CONSUMES: &[EventType] = &[
    EventType::TestsPassed,
    EventType::DeploySucceeded,
    EventType::VerificationPassed,
];

/// The gate stage.
pub struct Gate;

pub static SPEC: StageSpec = StageSpec {
    name: StageName::Gate,
    consumes: Consumes::Events(CONSUMES),
    per_environment: true,
    reports_failures: true,
    may_hold: &[
        "logs",
        "store:config",
        "store:runs",
        "store:runs:write",
        "store:list",
        "queue",
        "publish",
    ],
    never: "targets; approval records",
};

impl<P: Ports> Stage<P> for Gate {
    const SPEC: &'static StageSpec = &SPEC;

    fn record(p: &Pipeline<P>, input: &Input) -> Result<Option<RecordKey>> {
        let ctx = input.ctx();
        Ok(target_environment(p, input)?.map(|env| RecordKey {
            key: crate::store::stage_key(&ctx.app, &ctx.run, "gate", Some(&env)),
            environment: Some(env),
        }))
    }

    async fn run(p: &Pipeline<P>, input: &Input, ctx: &StageCtx) -> Result<Step> {
        step(p, input.expect_event(StageName::Gate, CONSUMES)?, ctx).await
    }
}

async fn step<P: Ports>(p: &Pipeline<P>, input: &Event, sctx: &StageCtx) -> Result<Step> {
    let Some(env_name) = target_environment(p, &Input::Event(input.clone()))? else {
        return Ok(Step::Done {
            outputs: vec![],
            note: Some("no further environment".into()),
        });
    };
    let mut ctx = input.ctx().clone();
    let app = p.config.app(&ctx.app)?;
    let env = app.environment(&env_name)?;
    ctx.environment = Some(env_name.clone());
    match &env.approval {
        ApprovalPolicy::Auto => Ok(Step::Done {
            outputs: vec![Payload::ApprovalGranted(ApprovalGranted {
                ctx,
                policy: GrantPolicy::Auto,
                approved_by: vec![],
            })],
            note: Some(format!("{env_name}: approved by policy (auto)")),
        }),
        ApprovalPolicy::Manual(m) => {
            let expires_at = Duration::from_std(m.expires_after)
                .ok()
                .and_then(|d| sctx.now.checked_add_signed(d))
                .ok_or_else(|| {
                    Error::invalid(
                        format!("{env_name} approval policy"),
                        "expires_after is too far in the future",
                    )
                })?;
            let url = p.settings.approvals_url.as_ref().map(|base| {
                format!(
                    "{}/approvals/{}/{}",
                    base.trim_end_matches('/'),
                    ctx.run,
                    env_name
                )
            });
            // The request says when the no-self-approval rule cannot be checked, and
            // what the policy does then.
            let unknown_pusher =
                (ctx.pushed_by.is_none() && !m.allow_self_approval).then_some(m.unknown_pusher);
            let unknown = match unknown_pusher {
                Some(crate::policy::approval::UnknownPusher::Refuse) => {
                    "; pusher unknown: approvals refused (unknown_pusher: refuse)"
                }
                Some(crate::policy::approval::UnknownPusher::Allow) => {
                    "; pusher unknown: self-approval not checked (unknown_pusher: allow)"
                }
                None => "",
            };
            Ok(Step::Done {
                outputs: vec![Payload::ApprovalRequested(ApprovalRequested {
                    ctx,
                    approvers: m.approvers.clone(),
                    groups: m.groups.clone(),
                    required: m.required,
                    expires_at,
                    url,
                    unknown_pusher,
                })],
                note: Some(format!(
                    "{env_name}: {} approval(s) requested, expires {}{unknown}",
                    m.required,
                    expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::EventType;
    use crate::pipeline::harness::{self, Mode};
    use crate::stages::testing::{pipeline, published, sample, t0};

    #[tokio::test]
    async fn passed_tests_are_granted_by_an_auto_policy_once() {
        let p = pipeline();
        let passed = sample("tests.passed", |_| {});
        let first = harness::handle::<Gate, _>(&p, Input::Event(passed.clone()), Mode::Deliver)
            .await
            .unwrap();
        assert_eq!(first.outputs.len(), 1);
        let Payload::ApprovalGranted(g) = &first.outputs[0].payload else {
            panic!("{:?}", first.outputs[0].payload);
        };
        assert_eq!(
            (g.policy, g.ctx.environment.as_deref()),
            (GrantPolicy::Auto, Some("staging"))
        );
        // A redelivery publishes nothing more.
        let again = harness::handle::<Gate, _>(&p, Input::Event(passed), Mode::Deliver)
            .await
            .unwrap();
        assert!(again.duplicate && again.outputs.is_empty());
        assert_eq!(published(&p), ["approval.granted"]);
    }

    #[tokio::test]
    async fn a_staging_deploy_requests_production_approval_from_the_configuration() {
        let p = pipeline();
        let deployed = sample("deploy.succeeded", |v| {
            v["data"]["environment"] = json!("staging");
        });
        let h = harness::handle::<Gate, _>(&p, Input::Event(deployed), Mode::Deliver)
            .await
            .unwrap();
        let Payload::ApprovalRequested(r) = &h.outputs[0].payload else {
            panic!("{:?}", h.outputs);
        };
        assert_eq!(r.ctx.environment.as_deref(), Some("production"));
        assert_eq!(
            (r.approvers.as_slice(), r.required),
            (&["alice".to_string(), "bob".to_string()][..], 1)
        );
        assert_eq!(r.expires_at, t0() + Duration::hours(2));
        assert_eq!(h.outputs[0].event_type(), EventType::ApprovalRequested);
    }

    #[tokio::test]
    async fn the_last_environment_and_rollbacks_promote_nowhere() {
        let p = pipeline();
        for deployed in [
            sample("deploy.succeeded", |_| {}),
            sample("deploy.succeeded", |v| {
                v["data"]["environment"] = json!("staging");
                v["data"]["rollback"] = json!(true);
            }),
        ] {
            let h = harness::handle::<Gate, _>(&p, Input::Event(deployed), Mode::Deliver)
                .await
                .unwrap();
            assert!(h.outputs.is_empty(), "{:?}", h.note);
        }
        assert!(published(&p).is_empty());
    }
}
