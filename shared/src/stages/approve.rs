//! approve: decisions → `approval.granted` / `approval.rejected`. The stage consumes
//! `approval.requested` (it opens the approvals record and waits until the request
//! expires), and every decision re-runs it through the harness. Only listed approvers
//! and group members decide, N-of-M distinct approvals grant, one rejection rejects, the
//! pusher may not approve their own image (and when the pusher is unknown, the policy
//! says what happens), and nothing is decided after expiry. The rules come from the
//! configuration, never from the event that asked: a forged `approval.requested` cannot
//! lower the bar. Only this stage writes approval records; deploy checks them.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::event::{ApprovalGranted, ApprovalRejected, Event, EventType, GrantPolicy, Payload};
use crate::pipeline::Pipeline;
use crate::pipeline::approvals::{self, ApprovalRecord};
use crate::pipeline::harness::{self, Disposition, Mode};
use crate::pipeline::runs;
use crate::pipeline::stage::{
    Consumes, Input, RecordKey, Stage, StageCtx, StageName, StageSpec, Step, per_environment,
};
use crate::policy::approval::{
    self, ApprovalStatus, Approver, Check, DecisionRecord, Outcome, Refusal, Verdict,
};
use crate::ports::{ObjectStore, Ports};
use crate::store::{Change, Swapped, approval_key, compare_and_swap, get_json};

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
    /// An approval that also releases the environment's rollback hold, so this run (and
    /// newer ones) may deploy there again.
    pub release_hold: bool,
}

/// Where an approval stands after a decision.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionReport {
    pub app: String,
    pub run: crate::ids::RunId,
    pub environment: String,
    pub status: ApprovalStatus,
    pub approvals: u32,
    pub required: u32,
    /// False when the same person had already made the same decision.
    pub recorded: bool,
    /// The decision released the environment's rollback hold.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hold_released: bool,
}

const CONSUMES: &[EventType] = &[EventType::ApprovalRequested];

/// The approve stage.
pub struct Approve;

pub static SPEC: StageSpec = StageSpec {
    name: StageName::Approve,
    consumes: Consumes::Events(CONSUMES),
    per_environment: true,
    reports_failures: true,
    may_hold: &[
        "logs",
        "store:config",
        "store:runs",
        "store:runs:write",
        "store:list",
        "store:approvals",
        "store:approvals:read",
        "store:slack",
        "queue",
        "publish",
    ],
    never: "targets",
};

impl<P: Ports> Stage<P> for Approve {
    const SPEC: &'static StageSpec = &SPEC;

    fn record(p: &Pipeline<P>, input: &Input) -> Result<Option<RecordKey>> {
        let _ = p;
        per_environment(StageName::Approve, input).map(Some)
    }

    async fn run(p: &Pipeline<P>, input: &Input, ctx: &StageCtx) -> Result<Step> {
        step(p, input.expect_event(StageName::Approve, CONSUMES)?, ctx).await
    }
}

async fn step<P: Ports>(p: &Pipeline<P>, input: &Event, sctx: &StageCtx) -> Result<Step> {
    let Payload::ApprovalRequested(req) = &input.payload else {
        return Err(Error::invalid(
            "stage input",
            "approve consumes approval.requested",
        ));
    };
    let ctx = &req.ctx;
    let env = ctx.environment.clone().unwrap_or_default();
    let key = approval_key(&ctx.app, &ctx.run, &env);
    let now = sctx.now;
    // Open the record (rules from the configuration) or read it, decide where it stands,
    // and write the status when it changed.
    let mut step = None;
    let mut open_until = None;
    compare_and_swap(
        p.ports.store(),
        &key,
        "approvals record",
        |cur: Option<ApprovalRecord>| {
            let created = cur.is_none();
            let mut rec = match cur {
                Some(rec) => rec,
                None => open_record(p, input, req, &env, now)?,
            };
            let (status, s) = evaluate(p, &rec, &env, now);
            step = Some(s);
            open_until = (status == ApprovalStatus::Pending).then_some(rec.rules.expires_at);
            Ok(if created || rec.status != status {
                rec.status = status;
                rec.updated_at = now;
                Change::Write(rec)
            } else {
                Change::Stop(())
            })
        },
    )
    .await?;
    // Listed as open (GET /approvals, the dashboard) while it waits; written on every
    // check, so a crash between the record and its marker is mended by the next one.
    if let Some(until) = open_until {
        let marker = crate::store::open_approval_key(until, &ctx.app, &ctx.run, &env);
        match p
            .ports
            .store()
            .put(
                &marker,
                b"{}".to_vec(),
                crate::ports::Precondition::IfNoneMatch,
            )
            .await
        {
            Ok(_) | Err(Error::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    step.ok_or_else(|| Error::permanent(format!("approvals record {key}"), "not evaluated"))
}

/// A new approvals record for a request, with the configuration's rules.
fn open_record<P: Ports>(
    p: &Pipeline<P>,
    input: &Event,
    req: &crate::event::ApprovalRequested,
    env: &str,
    now: DateTime<Utc>,
) -> Result<ApprovalRecord> {
    let ctx = &req.ctx;
    let rules = approvals::rules_from_config(&p.config, ctx, env, req.expires_at, now)?;
    let groups: Vec<String> = rules.groups.iter().map(|(g, _)| g.clone()).collect();
    if rules.approvers != req.approvers || rules.required != req.required || req.groups != groups {
        tracing::warn!(run = %ctx.run, env = %env, event = %input.id,
            "approval.requested names other rules than the configuration; the configuration's apply");
    }
    Ok(ApprovalRecord {
        app: ctx.app.clone(),
        run: ctx.run.clone(),
        environment: env.to_string(),
        status: ApprovalStatus::Pending,
        request: input.clone(),
        rules,
        decisions: vec![],
        created_at: now,
        updated_at: now,
    })
}

/// Where a record stands now, and what the stage does about it.
fn evaluate<P: Ports>(
    p: &Pipeline<P>,
    rec: &ApprovalRecord,
    env: &str,
    now: DateTime<Utc>,
) -> (ApprovalStatus, Step) {
    let ctx = rec.request.ctx();
    match approval::outcome(&rec.rules, &rec.decisions, now) {
        Outcome::Pending { have, need } => {
            let left = (rec.rules.expires_at - now).to_std().unwrap_or_default();
            (
                ApprovalStatus::Pending,
                Step::Wait {
                    after: left.clamp(std::time::Duration::from_secs(1), p.settings.max_wait),
                    progress: serde_json::json!({ "approvals": have, "required": need }),
                    note: format!("{env}: waiting for approval ({have} of {need})"),
                    notices: vec![],
                },
            )
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
    }
}

/// Records an approver's decision and lets the approve stage act on it.
/// Refusals (not an approver, self-approval, expired, already decided) are
/// `Error::Refused` with one line saying why; nothing is recorded then.
pub async fn decide<P: Ports>(p: &Pipeline<P>, d: Decision) -> Result<DecisionReport> {
    let (app_name, run) = runs::resolve(p, &d.run).await?;
    let app = p.config.app(&app_name)?;
    app.environment(&d.environment)?;
    let key = approval_key(&app_name, &run, &d.environment);
    let store = p.ports.store();
    let now = p.ports.now();
    let swapped = compare_and_swap(store, &key, "approvals record", |cur: Option<ApprovalRecord>| {
        let Some(mut rec) = cur else {
            return Ok(Change::Stop(Err(Error::Refused(why_no_approval(
                p,
                &app_name,
                &run,
                &d.environment,
            )?))));
        };
        match approval::check(&rec.rules, rec.status, &rec.decisions, &d.by, d.verdict, now) {
            Err(why) => {
                tracing::info!(run = %run, env = %d.environment, by = %d.by.name, %why, "decision refused");
                let message = format!("run {run} in {}: {why}", d.environment);
                Ok(Change::Stop(Err(match why {
                    Refusal::NotAllowed(_) => Error::Refused(message),
                    Refusal::Settled(_) => Error::Settled(message),
                })))
            }
            Ok(Check::AlreadyRecorded) => Ok(Change::Stop(Ok(()))),
            Ok(Check::Record) => {
                rec.decisions.push(DecisionRecord {
                    by: d.by.name.clone(),
                    verdict: d.verdict,
                    at: now,
                    comment: d.comment.clone(),
                    principal: Some(d.by.principal.clone()),
                });
                rec.updated_at = now;
                Ok(Change::Write(rec))
            }
        }
    })
    .await?;
    let recorded = match swapped {
        Swapped::Stopped(result) => {
            result?;
            false
        }
        Swapped::Written(rec, _) => {
            tracing::info!(run = %run, env = %d.environment, by = %d.by.name,
                principal = %d.by.principal, verdict = ?d.verdict, "decision recorded");
            let handled =
                harness::handle::<Approve, P>(p, Input::Event(rec.request.clone()), Mode::Deliver)
                    .await?;
            if let Disposition::Retry(e) = handled.disposition {
                // The approve stage is busy elsewhere; its next delivery sees this
                // decision.
                tracing::warn!(error = %e, "approve stage will pick the decision up later");
            }
            true
        }
    };
    let mut hold_released = false;
    if d.release_hold && d.verdict == Verdict::Approve {
        let why = format!("approval of run {run} by {} says so", d.by.name);
        match crate::pipeline::holds::release(p, &app_name, &d.environment, &d.by.name, Some(&why))
            .await
        {
            Ok(_) => hold_released = true,
            Err(Error::Settled(_)) => {}
            Err(e) => return Err(e),
        }
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
        hold_released,
        recorded,
    })
}

fn why_no_approval<P: Ports>(p: &Pipeline<P>, app: &str, run: &str, env: &str) -> Result<String> {
    let app_cfg = p.config.app(app)?;
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::stages::testing::{pipeline, published, sample};

    fn decision(
        p: &Pipeline<crate::adapters::memory::MemPorts>,
        by: &str,
        verdict: Verdict,
    ) -> Decision {
        Decision {
            run: "ab781cee5e2f2eae".into(),
            environment: "production".into(),
            by: p.config.approver(by, "test"),
            verdict,
            comment: None,
            release_hold: false,
        }
    }

    /// The rules come from the configuration, never from the request: a forged request
    /// naming mallory as the approver does not make her one.
    #[tokio::test]
    async fn a_request_waits_for_a_configured_approver_then_grants_once() {
        let p = pipeline();
        let forged = sample("approval.requested", |v| {
            v["data"]["approvers"] = json!(["mallory"]);
            v["data"]["groups"] = json!([]);
        });
        let h = harness::handle::<Approve, _>(&p, Input::Event(forged), Mode::Deliver)
            .await
            .unwrap();
        assert!(
            matches!(h.disposition, Disposition::Later(_)),
            "{:?}",
            h.note
        );
        assert!(published(&p).is_empty());

        let e = decide(&p, decision(&p, "mallory", Verdict::Approve))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Refused(m) if m.contains("mallory may not")),
            "{e}"
        );

        let report = decide(&p, decision(&p, "alice", Verdict::Approve))
            .await
            .unwrap();
        assert!(report.recorded);
        assert_eq!(published(&p), ["approval.granted"]);

        let e = decide(&p, decision(&p, "bob", Verdict::Reject))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Settled(_)), "{e}");
        assert_eq!(e.http_status(), 409);
        assert_eq!(published(&p), ["approval.granted"], "nothing more");
    }

    #[tokio::test]
    async fn a_decision_without_a_request_says_why() {
        let p = pipeline();
        // A run exists (its gate ran) but no approval was asked for.
        harness::handle::<crate::stages::Gate, _>(
            &p,
            Input::Event(sample("tests.passed", |_| {})),
            Mode::Deliver,
        )
        .await
        .unwrap();
        let e = decide(&p, decision(&p, "alice", Verdict::Approve))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Refused(_)), "{e}");
    }
}
