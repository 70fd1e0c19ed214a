//! approve: decisions → `approval.granted` / `approval.rejected`. The stage consumes
//! `approval.requested` (it opens the approvals record and waits until the request
//! expires), and every decision re-runs it through the harness. Only listed approvers
//! and group members decide, N-of-M distinct approvals grant, one rejection rejects, the
//! pusher may not approve their own image (and when the pusher is unknown, the policy
//! says what happens), and nothing is decided after expiry. The rules come from the
//! configuration, never from the event that asked: a forged `approval.requested` cannot
//! lower the bar. Only this stage writes approval records; deploy checks them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::event::{ApprovalGranted, ApprovalRejected, Event, EventType, GrantPolicy, Payload};
use crate::pipeline::harness::{Disposition, Input, Mode, StageCtx, Step};
use crate::pipeline::{Pipeline, StageName, expect_type};
use crate::policy::approval::{
    self, ApprovalRules, ApprovalStatus, Approver, Check, DecisionRecord, Outcome, Verdict,
};
use crate::ports::{Ports, Precondition};
use crate::store::{approval_key, get_json, put_json};

/// An approval request and its decisions, at `approvals/<app>/<run>/<env>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    pub app: String,
    pub run: String,
    pub environment: String,
    pub status: ApprovalStatus,
    /// The `approval.requested` event this record answers.
    pub request: Event,
    pub rules: ApprovalRules,
    pub decisions: Vec<DecisionRecord>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Largest approval decision body taken over HTTP.
pub const MAX_DECISION_BODY: usize = 16 * 1024;

/// An approver's decision, with the identity established by the caller (CLI user,
/// authenticated HTTP request, IAM principal), never taken from a request body.
#[derive(Debug, Clone)]
pub struct Decision {
    pub run: String,
    pub environment: String,
    pub by: Approver,
    pub verdict: Verdict,
    pub comment: Option<String>,
}

/// Where an approval stands after a decision.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionReport {
    pub app: String,
    pub run: String,
    pub environment: String,
    pub status: ApprovalStatus,
    pub approvals: u32,
    pub required: u32,
    /// False when the same person had already made the same decision.
    pub recorded: bool,
}

pub(crate) async fn run<P: Ports>(p: &Pipeline<P>, input: &Event, sctx: &StageCtx) -> Result<Step> {
    expect_type(
        StageName::Approve,
        input.event_type(),
        &[EventType::ApprovalRequested],
    )?;
    let Payload::ApprovalRequested(req) = &input.payload else {
        return Err(Error::invalid(
            "stage input",
            "approve consumes approval.requested",
        ));
    };
    let ctx = &req.ctx;
    let env = ctx.environment.clone().unwrap_or_default();
    let key = approval_key(&ctx.app, &ctx.run, &env);
    let store = p.ports.store();
    for _ in 0..5 {
        let now = sctx.now;
        let (mut rec, etag) = match get_json::<_, ApprovalRecord>(store, &key).await? {
            Some(found) => found,
            None => {
                let rules = rules_from_config(p, &req.ctx, &env, req.expires_at, now)?;
                if rules.approvers != req.approvers
                    || rules.required != req.required
                    || req.groups
                        != rules
                            .groups
                            .iter()
                            .map(|(g, _)| g.clone())
                            .collect::<Vec<_>>()
                {
                    tracing::warn!(run = %ctx.run, env = %env, event = %input.id,
                        "approval.requested names other rules than the configuration; the configuration's apply");
                }
                let rec = ApprovalRecord {
                    app: ctx.app.clone(),
                    run: ctx.run.clone(),
                    environment: env.clone(),
                    status: ApprovalStatus::Pending,
                    request: input.clone(),
                    rules,
                    decisions: vec![],
                    created_at: now,
                    updated_at: now,
                };
                match put_json(store, &key, &rec, Precondition::IfNoneMatch).await {
                    Ok(etag) => (rec, etag),
                    Err(Error::Conflict { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
        };
        let outcome = approval::outcome(&rec.rules, &rec.decisions, now);
        let (status, step) = match outcome {
            Outcome::Pending { have, need } => {
                let left = (rec.rules.expires_at - now).to_std().unwrap_or_default();
                return Ok(Step::Wait {
                    after: left.clamp(std::time::Duration::from_secs(1), p.settings.max_wait),
                    progress: serde_json::json!({ "approvals": have, "required": need }),
                    note: format!("{env}: waiting for approval ({have} of {need})"),
                });
            }
            Outcome::Granted { by } => (
                ApprovalStatus::Granted,
                Step::Done {
                    note: Some(format!("{env}: approved by {}", by.join(", "))),
                    outputs: vec![Payload::ApprovalGranted(ApprovalGranted {
                        ctx: ctx.clone(),
                        policy: GrantPolicy::Manual,
                        approved_by: by,
                    })],
                },
            ),
            Outcome::Rejected { by, reason } => (
                ApprovalStatus::Rejected,
                Step::Done {
                    note: Some(format!("{env}: rejected by {by}")),
                    outputs: vec![Payload::ApprovalRejected(ApprovalRejected {
                        ctx: ctx.clone(),
                        rejected_by: Some(by),
                        reason,
                    })],
                },
            ),
            Outcome::Expired => (
                ApprovalStatus::Expired,
                Step::Done {
                    note: Some(format!("{env}: approval request expired")),
                    outputs: vec![Payload::ApprovalRejected(ApprovalRejected {
                        ctx: ctx.clone(),
                        rejected_by: None,
                        reason: format!(
                            "approval request expired at {}",
                            rec.rules
                                .expires_at
                                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        ),
                    })],
                },
            ),
        };
        if rec.status != status {
            rec.status = status;
            rec.updated_at = now;
            match put_json(store, &key, &rec, Precondition::IfMatch(etag)).await {
                Ok(_) => {}
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        return Ok(step);
    }
    Err(Error::transient(
        format!("approvals record {key}"),
        crate::error::Message("too much contention".into()),
    ))
}

/// The rules of a request, from the configuration of its environment. The expiry is
/// the one the request names, but never later than the policy allows from now.
fn rules_from_config<P: Ports>(
    p: &Pipeline<P>,
    ctx: &crate::event::RunContext,
    env: &str,
    requested_expiry: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<ApprovalRules> {
    let environment = p.config.app(&ctx.app)?.environment(env)?;
    let crate::config::ApprovalPolicy::Manual(m) = &environment.approval else {
        return Err(Error::Refused(format!(
            "{env} of {} is approved automatically (approval: auto); an approval.requested for it is not the gate's",
            ctx.app
        )));
    };
    let longest = now
        .checked_add_signed(
            chrono::Duration::from_std(m.expires_after).unwrap_or(chrono::Duration::days(1)),
        )
        .unwrap_or(now);
    Ok(ApprovalRules {
        approvers: m.approvers.clone(),
        groups: m
            .groups
            .iter()
            .map(|g| {
                (
                    g.clone(),
                    p.config.groups.get(g).cloned().unwrap_or_default(),
                )
            })
            .collect(),
        required: m.required,
        expires_at: requested_expiry.min(longest),
        allow_self_approval: m.allow_self_approval,
        pushed_by: ctx.pushed_by.clone(),
        unknown_pusher: m.unknown_pusher,
    })
}

impl<P: Ports> Pipeline<P> {
    /// Records an approver's decision and lets the approve stage act on it.
    /// Refusals (not an approver, self-approval, expired, already decided) are
    /// `Error::Refused` with one line saying why; nothing is recorded then.
    pub async fn decide(&self, d: Decision) -> Result<DecisionReport> {
        let app_name = self.find_run(&d.run).await?;
        let run = self.resolve_run_id(&app_name, &d.run).await?;
        let app = self.config.app(&app_name)?;
        app.environment(&d.environment)?;
        let key = approval_key(&app_name, &run, &d.environment);
        let store = self.ports.store();
        let mut recorded = false;
        let mut done = false;
        for _ in 0..5 {
            let Some((mut rec, etag)) = get_json::<_, ApprovalRecord>(store, &key).await? else {
                return Err(Error::Refused(
                    self.why_no_approval(&app_name, &run, &d.environment)
                        .await?,
                ));
            };
            let now = self.ports.now();
            match approval::check(
                &rec.rules,
                rec.status,
                &rec.decisions,
                &d.by,
                d.verdict,
                now,
            ) {
                Err(why) => {
                    tracing::info!(run = %run, env = %d.environment, by = %d.by.name, %why, "decision refused");
                    return Err(Error::Refused(format!(
                        "run {run} in {}: {why}",
                        d.environment
                    )));
                }
                Ok(Check::AlreadyRecorded) => {
                    done = true;
                    break;
                }
                Ok(Check::Record) => {
                    rec.decisions.push(DecisionRecord {
                        by: d.by.name.clone(),
                        verdict: d.verdict,
                        at: now,
                        comment: d.comment.clone(),
                        principal: Some(d.by.principal.clone()),
                    });
                    rec.updated_at = now;
                    match put_json(store, &key, &rec, Precondition::IfMatch(etag)).await {
                        Ok(_) => {
                            recorded = true;
                            done = true;
                            tracing::info!(run = %run, env = %d.environment, by = %d.by.name,
                                principal = %d.by.principal, verdict = ?d.verdict, "decision recorded");
                            let handled = self
                                .handle(
                                    StageName::Approve,
                                    Input::Event(rec.request.clone()),
                                    Mode::Deliver,
                                )
                                .await?;
                            if let Disposition::Retry(e) = handled.disposition {
                                // The approve stage is busy elsewhere; its next delivery
                                // sees this decision.
                                tracing::warn!(error = %e, "approve stage will pick the decision up later");
                            }
                            break;
                        }
                        Err(Error::Conflict { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        if !done {
            return Err(Error::transient(
                format!("approvals record {key}"),
                crate::error::Message("too much contention".into()),
            ));
        }
        let (rec, _) = get_json::<_, ApprovalRecord>(store, &key)
            .await?
            .ok_or_else(|| Error::not_found("approval", key.clone()))?;
        let approvals = rec
            .decisions
            .iter()
            .filter(|x| x.verdict == Verdict::Approve)
            .map(|x| x.by.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len() as u32;
        Ok(DecisionReport {
            app: app_name,
            run,
            environment: d.environment,
            status: rec.status,
            approvals,
            required: rec.rules.required,
            recorded,
        })
    }

    async fn why_no_approval(&self, app: &str, run: &str, env: &str) -> Result<String> {
        let app_cfg = self.config.app(app)?;
        if let Ok(e) = app_cfg.environment(env)
            && e.approval == crate::config::ApprovalPolicy::Auto
        {
            return Ok(format!(
                "{env} is approved automatically (approval: auto); nothing to decide for run {run}"
            ));
        }
        Ok(format!(
            "no approval has been requested for run {run} in {env} yet (see `baton status {run}`)"
        ))
    }
}
