//! deploy: `approval.granted` → `deploy.succeeded` / `deploy.failed`. Deploys to one
//! (app, environment) are serialized by a lease in the store; under it, newer wins: an
//! older image never replaces a newer live one (only `baton rollback` may). The image is
//! always set by digest. A rollout that fails after the target changed is rolled back to
//! the previous images when the environment allows it. History is kept for rollback.
//!
//! Approvals cannot be forged: any stage's role may publish an `approval.granted`, so for
//! an environment whose policy is not `auto` deploy acts only on the approvals record
//! the approve stage wrote (and only it can write): granted for this run, environment
//! and digest, by enough distinct approvers the configuration lists now, before expiry.

use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::event::{
    DeployFailed, DeploySucceeded, Event, EventType, FailureCode, Payload, RunContext,
};
use crate::ids::stable_id;
use crate::pipeline::Pipeline;
use crate::pipeline::approvals;
use crate::pipeline::deployments::{self, DeployKind, HistoryEntry, LiveRecord};
use crate::pipeline::harness;
use crate::pipeline::stage::{
    Consumes, Input, RecordKey, Stage, StageCtx, StageName, StageSpec, Step, per_environment,
};
use crate::policy::OrderKey;
use crate::policy::tags::may_replace;
use crate::ports::{Applied, DeployRequest, DeployTarget, Ports, Rollout, TargetPorts};
use crate::store::{current_key, get_json};

/// What a rollback did.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    pub app: String,
    pub environment: String,
    pub from: Option<String>,
    pub to: String,
    pub run: crate::ids::RunId,
    pub event: String,
}

fn order_key<P: Ports>(p: &Pipeline<P>, ctx: &RunContext) -> OrderKey {
    let version = p
        .config
        .app(&ctx.app)
        .ok()
        .and_then(|a| a.tags.version_of(&ctx.image.tag));
    OrderKey {
        version,
        sequence: ctx.sequence,
    }
}

const CONSUMES: &[EventType] = &[EventType::ApprovalGranted, EventType::VerificationFailed];

/// The deploy stage.
pub struct Deploy;

pub static SPEC: StageSpec = StageSpec {
    name: StageName::Deploy,
    consumes: Consumes::Events(CONSUMES),
    per_environment: true,
    reports_failures: true,
    may_hold: &[
        "logs",
        "store:config",
        "store:runs",
        "store:runs:write",
        "store:deployments",
        "store:approvals:read",
        "store:line:read",
        "store:list",
        "queue",
        "publish",
        "deploy-functions",
        "read-functions",
        "registry-read",
        "eks",
        "k8s:deploy",
    ],
    never: "registry writes; test sandbox; writing approval records",
};

impl<P: TargetPorts> Stage<P> for Deploy {
    const SPEC: &'static StageSpec = &SPEC;

    fn record(p: &Pipeline<P>, input: &Input) -> Result<Option<RecordKey>> {
        let _ = p;
        let mut rec = per_environment(StageName::Deploy, input)?;
        // Putting the previous image back after a failed verification is a change of
        // its own, in a record of its own.
        if let Input::Event(e) = input
            && let Payload::VerificationFailed(v) = &e.payload
        {
            if !v.rollback {
                return Ok(None);
            }
            let ctx = input.ctx();
            let env = rec.environment.clone().unwrap_or_default();
            rec.key =
                crate::store::stage_key(&ctx.app, &ctx.run, "deploy", Some(&format!("{env}.undo")));
        }
        Ok(Some(rec))
    }

    /// A failed rollout may run again (a fixed cluster); a superseded deploy may not: a
    /// newer image is live, and a retry cannot change that.
    fn may_retry(outputs: &[Event]) -> bool {
        outputs.iter().any(
            |e| matches!(&e.payload, Payload::DeployFailed(d) if d.code != FailureCode::Superseded),
        )
    }

    async fn run(p: &Pipeline<P>, input: &Input, ctx: &StageCtx) -> Result<Step> {
        let e = input.expect_event(StageName::Deploy, CONSUMES)?;
        match &e.payload {
            Payload::VerificationFailed(v) => undo(p, e, v, ctx).await,
            _ => step(p, e, ctx).await,
        }
    }
}

async fn step<P: TargetPorts>(p: &Pipeline<P>, input: &Event, sctx: &StageCtx) -> Result<Step> {
    let ctx = input.ctx().clone();
    let env_name = ctx.environment.clone().unwrap_or_default();
    let app = p.config.app(&ctx.app)?;
    let env = app.environment(&env_name)?;
    check_image_of_app(app, &ctx)?;
    if let crate::config::ApprovalPolicy::Manual(m) = &env.approval {
        approvals::verify(p, input, &ctx, &env_name, m).await?;
    }
    if let Some(wait) = blocked(p, env, &ctx, sctx).await? {
        return Ok(wait);
    }
    // Waited on a freeze or a hold that has ended: deploy from the start.
    let unblocked;
    let sctx = if sctx.progress.as_ref().is_some_and(is_blocked_progress) {
        unblocked = StageCtx {
            progress: None,
            ..sctx.clone()
        };
        &unblocked
    } else {
        sctx
    };
    let target = p.ports.deploy_target(app, env)?;
    let req = DeployRequest {
        app: ctx.app.clone(),
        environment: env_name.clone(),
        run: ctx.run.clone(),
        image: ctx.image.clone(),
        cause: format!(
            "baton run {}: {} ({})",
            ctx.run,
            ctx.image.tagged(),
            ctx.image.short_digest()
        ),
    };
    let lease = deployments::acquire_lease(p, &ctx.app, &env_name, &ctx.run, &sctx.worker).await?;
    let result = deploy_under_lease(
        p,
        &target,
        &req,
        &ctx,
        env.rollback_on_failure,
        sctx,
        &lease,
    )
    .await;
    // A waiting rollout keeps the lease (renewed on every check); everything else frees it.
    if !matches!(result, Ok(Step::Wait { .. })) {
        deployments::release_lease(p, &ctx.app, &env_name, &lease).await;
    }
    result
}

fn is_blocked_progress(v: &serde_json::Value) -> bool {
    v.get("blocked").is_some()
}

/// A deploy waits (the stage's message comes back later; no function sleeps) while the
/// environment is held after a rollback on another image, frozen by hand (`baton
/// freeze`), or frozen by its windows; it looks again every minute, or when the window
/// says it opens. A deploy already changing the target (its rollout being followed)
/// finishes. Rollbacks do not come here: they are never blocked.
async fn blocked<P: Ports>(
    p: &Pipeline<P>,
    env: &crate::config::EnvironmentConfig,
    ctx: &RunContext,
    sctx: &StageCtx,
) -> Result<Option<Step>> {
    if sctx
        .progress
        .as_ref()
        .is_some_and(|v| !is_blocked_progress(v))
    {
        return Ok(None);
    }
    let now = sctx.now;
    let app = &ctx.app;
    let name = &env.name;
    let hold = crate::pipeline::holds::active_hold(p, app, name)
        .await?
        .filter(|h| h.image.digest != ctx.image.digest);
    let (kind, reason, until) = if let Some(h) = hold {
        (
            "hold",
            format!(
                "{name} is held on {} since a rollback{} at {}; newer runs wait until `baton hold release {app} --env {name}`",
                h.image.tagged(),
                h.by.as_deref()
                    .map(|b| format!(" by {b}"))
                    .unwrap_or_default(),
                h.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            None,
        )
    } else if let Some(f) = crate::pipeline::holds::active_freezes(p, app, name)
        .await?
        .into_iter()
        .next()
    {
        (
            "freeze",
            format!(
                "{} frozen by {}: {} (lift with `baton unfreeze{}{}`)",
                f.scope(),
                f.by,
                f.reason,
                f.app
                    .as_deref()
                    .map(|a| format!(" --app {a}"))
                    .unwrap_or_default(),
                f.environment
                    .as_deref()
                    .map(|e| format!(" --env {e}"))
                    .unwrap_or_default()
            ),
            None,
        )
    } else {
        let windows = p.config.freeze_windows(env);
        match crate::policy::freeze::by_windows(&windows, now) {
            Some(f) => ("freeze", f.reason, f.until),
            None => return Ok(None),
        }
    };
    // A break-glass approved by a second person lets this run through a freeze (never a
    // hold); read only when frozen, so an unfrozen deploy pays nothing for it.
    if kind == "freeze"
        && let Some(g) =
            crate::pipeline::holds::approved_override(p, app, ctx.run.as_str(), name).await?
    {
        tracing::warn!(run = %ctx.run, env = %name, requested_by = %g.requested_by,
            approved_by = ?g.approved_by, reason = %g.reason, frozen = %reason,
            "break-glass: deploying through a freeze");
        return Ok(None);
    }
    let recheck = p.config.freeze.recheck;
    let after = until
        .and_then(|u| u.signed_duration_since(now).to_std().ok())
        .unwrap_or(recheck)
        .clamp(recheck.min(Duration::from_secs(1)), recheck);
    let was = sctx
        .progress
        .as_ref()
        .and_then(|v| v["blocked"]["kind"].as_str().map(str::to_string));
    let since = sctx
        .progress
        .as_ref()
        .and_then(|v| v["blocked"]["since"].as_str().map(str::to_string))
        .unwrap_or_else(|| now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    // `deploy.waiting` when the deploy starts waiting, and when what stops it changes:
    // reactions tell people the line is stopped and which run waits.
    let notices = if was.as_deref() == Some(kind) {
        vec![]
    } else {
        let mut ctx = ctx.clone();
        ctx.environment = Some(name.clone());
        vec![crate::pipeline::stage::Notice {
            key: kind.to_string(),
            payload: Payload::DeployWaiting(crate::event::DeployWaiting {
                ctx,
                blocked_by: if kind == "hold" {
                    crate::event::Blocker::Hold
                } else {
                    crate::event::Blocker::Freeze
                },
                reason: reason.clone(),
                until,
            }),
        }]
    };
    Ok(Some(Step::Wait {
        after,
        progress: serde_json::json!({"blocked": {"kind": kind, "reason": reason, "since": since}}),
        note: format!("{name}: waiting: {reason}"),
        notices,
    }))
}

/// Deploys only an image of the app's own repository (and registry, when configured),
/// under the run id its digest gives: an event naming another image, whoever
/// published it, deploys nothing.
fn check_image_of_app(app: &crate::config::AppConfig, ctx: &RunContext) -> Result<()> {
    let img = &ctx.image;
    let why = if img.repository != app.repository {
        format!(
            "the image's repository {} is not app {}'s ({})",
            img.repository, app.name, app.repository
        )
    } else if app.registry.as_ref().is_some_and(|r| *r != img.registry) {
        format!(
            "the image's registry {} is not app {}'s",
            img.registry, app.name
        )
    } else if ctx.run != crate::ids::run_id(&app.name, &img.digest) {
        format!(
            "run {} is not the run of {} in app {}",
            ctx.run,
            img.short_digest(),
            app.name
        )
    } else {
        return Ok(());
    };
    tracing::error!(run = %ctx.run, app = %ctx.app, %why, "deploy refused an image that is not the app's");
    Err(Error::Refused(format!(
        "deploy refused: {why}; nothing was deployed"
    )))
}

async fn deploy_under_lease<P: Ports, T: DeployTarget>(
    p: &Pipeline<P>,
    target: &T,
    req: &DeployRequest,
    ctx: &RunContext,
    rollback_on_failure: bool,
    sctx: &StageCtx,
    lease: &deployments::Held,
) -> Result<Step> {
    let store = p.ports.store();
    let env_name = &req.environment;
    let applied: Applied = match &sctx.progress {
        Some(state) => serde_json::from_value(state.clone())
            .map_err(|e| Error::permanent("deploy progress", format!("unreadable: {e}")))?,
        None => {
            let current: Option<(LiveRecord, String)> =
                get_json(store, &current_key(&ctx.app, env_name)).await?;
            if let Some((live, _)) = &current {
                if live.image.digest == ctx.image.digest {
                    // This run's own deploy, by a worker that stopped before it wrote
                    // the history entry: the same entry, written now.
                    if live.run == ctx.run {
                        Box::pin(deployments::ensure_history(p, &ctx.app, env_name, live)).await?;
                    }
                    return Ok(Step::Done {
                        note: Some(format!(
                            "{env_name}: {} already live",
                            ctx.image.short_digest()
                        )),
                        outputs: vec![Payload::DeploySucceeded(DeploySucceeded {
                            ctx: ctx.clone(),
                            target: target.kind().into(),
                            previous: Some(live.image.reference()),
                            changed: false,
                            rollback: false,
                            detail: "digest already live; nothing changed".into(),
                        })],
                    });
                }
                if !may_replace(&order_key(p, ctx), &order_key(p, &live.ctx)) {
                    let reason = format!(
                        "{} ({}) is live and newer than {} ({}); newer wins, use `baton rollback` to go back explicitly",
                        live.image.tag,
                        live.image.short_digest(),
                        ctx.image.tag,
                        ctx.image.short_digest()
                    );
                    return Ok(Step::Done {
                        note: Some(format!("{env_name}: superseded by {}", live.image.tag)),
                        outputs: vec![Payload::DeployFailed(DeployFailed {
                            ctx: ctx.clone(),
                            target: target.kind().into(),
                            code: FailureCode::Superseded,
                            reason,
                            rolled_back: false,
                            live: Some(live.image.reference()),
                        })],
                    });
                }
            }
            let applied = target.apply(req).await.map_err(|e| {
                e.context(format!("deploy {} to {env_name}", ctx.image.reference()))
            })?;
            p.fail_point("deploy", "applied");
            applied
        }
    };
    match target.rollout(req).await? {
        Rollout::Complete { detail } => {
            deployments::record_live(p, ctx, env_name, &applied, DeployKind::Deploy, None, lease)
                .await?;
            Ok(Step::Done {
                note: Some(format!("{env_name}: {detail}")),
                outputs: vec![Payload::DeploySucceeded(DeploySucceeded {
                    ctx: ctx.clone(),
                    target: target.kind().into(),
                    previous: applied.previous.first().map(|w| w.image.clone()),
                    changed: applied.changed,
                    rollback: false,
                    detail: format!("{}; {detail}", applied.detail),
                })],
            })
        }
        Rollout::Progressing {
            detail,
            check_after,
        } => {
            let progress = serde_json::to_value(&applied).unwrap_or_default();
            wait_for_rollout(
                p,
                ctx,
                env_name,
                &ctx.run,
                lease,
                check_after,
                progress,
                detail,
            )
            .await
        }
        Rollout::Failed { reason } => {
            let rolled_back = rollback_on_failure && applied.changed;
            if rolled_back {
                target
                    .restore(req, &applied.previous)
                    .await
                    .map_err(|e| e.context(format!("roll back {env_name} after: {reason}")))?;
            }
            Ok(Step::Done {
                note: Some(format!("{env_name}: rollout failed")),
                outputs: vec![Payload::DeployFailed(DeployFailed {
                    ctx: ctx.clone(),
                    target: target.kind().into(),
                    code: FailureCode::RolloutFailed,
                    reason,
                    rolled_back,
                    live: if rolled_back {
                        applied.previous.first().map(|w| w.image.clone())
                    } else {
                        Some(ctx.image.reference())
                    },
                })],
            })
        }
    }
}

/// A rollout still in progress: the lease is kept past the wait (so no other run deploys
/// to this environment between two checks of a traffic shift or a rolling update) and
/// the message comes back after `check_after` (at most the pipeline's longest wait).
#[allow(clippy::too_many_arguments)]
async fn wait_for_rollout<P: Ports>(
    p: &Pipeline<P>,
    ctx: &RunContext,
    env_name: &str,
    holder: &str,
    lease: &deployments::Held,
    check_after: Duration,
    progress: serde_json::Value,
    note: String,
) -> Result<Step> {
    let after = check_after.min(p.settings.max_wait);
    deployments::acquire_lease_for(
        p,
        &ctx.app,
        env_name,
        holder,
        &lease.worker,
        after + p.settings.lease,
    )
    .await?;
    Ok(Step::Wait {
        after,
        progress,
        note,
        notices: vec![],
    })
}

/// Where putting the previous image back after a failed verification stands.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct UndoProgress {
    applied: Applied,
    to: HistoryEntry,
}

/// `verification.failed` with `rollback`: puts back the image that was live before the
/// failed one, through the target's restore path (manifest, Kubernetes, Lambda alias),
/// under the environment's lease, and publishes `deploy.succeeded` with `rollback` for
/// it. Any stage's role may publish a `verification.failed`, so it acts only on the one
/// the verify stage recorded (only verify writes its records). Nothing happens when the
/// failed image is no longer live (a newer one replaced it: newer wins) or when nothing
/// was live before it.
async fn undo<P: TargetPorts>(
    p: &Pipeline<P>,
    input: &Event,
    v: &crate::event::VerificationReport,
    sctx: &StageCtx,
) -> Result<Step> {
    let ctx = &v.ctx;
    let env_name = ctx.environment.clone().unwrap_or_default();
    let app = p.config.app(&ctx.app)?;
    let env = app.environment(&env_name)?;
    check_image_of_app(app, ctx)?;
    verified_failure(p, input, ctx, &env_name).await?;
    let target = p.ports.deploy_target(app, env)?;
    let lease = deployments::acquire_lease(
        p,
        &ctx.app,
        &env_name,
        &format!("undo-{}", ctx.run),
        &sctx.worker,
    )
    .await?;
    let result = undo_under_lease(p, &target, ctx, &env_name, v, sctx, &lease).await;
    if !matches!(result, Ok(Step::Wait { .. })) {
        deployments::release_lease(p, &ctx.app, &env_name, &lease).await;
    }
    result
}

/// The verify stage's record of this run and environment holds exactly this event.
async fn verified_failure<P: Ports>(
    p: &Pipeline<P>,
    input: &Event,
    ctx: &RunContext,
    env: &str,
) -> Result<()> {
    let key = crate::store::stage_key(&ctx.app, &ctx.run, "verify", Some(env));
    let rec: Option<(harness::StageRecord, String)> = get_json(p.ports.store(), &key).await?;
    let recorded = rec.is_some_and(|(r, _)| {
        r.outputs.iter().any(|o| {
            o.id == input.id
                && matches!(&o.payload, Payload::VerificationFailed(f)
                    if f.rollback && f.ctx.image.digest == ctx.image.digest)
        })
    });
    if recorded {
        return Ok(());
    }
    tracing::error!(run = %ctx.run, env = %env, event = %input.id,
        "a verification.failed the verify stage did not record asked for a rollback");
    Err(Error::Refused(format!(
        "rollback refused: run {} has no failed verification in {env} recorded by the verify stage for event {}; nothing was changed",
        ctx.run, input.id
    )))
}

async fn undo_under_lease<P: Ports, T: DeployTarget>(
    p: &Pipeline<P>,
    target: &T,
    ctx: &RunContext,
    env_name: &str,
    v: &crate::event::VerificationReport,
    sctx: &StageCtx,
    lease: &deployments::Held,
) -> Result<Step> {
    let request = |to: &HistoryEntry| DeployRequest {
        app: ctx.app.clone(),
        environment: env_name.into(),
        run: to.run.clone(),
        image: to.image.clone(),
        cause: format!(
            "baton verify: run {} ({}) failed verification; back to {} ({})",
            ctx.run,
            ctx.image.tag,
            to.image.tagged(),
            to.image.short_digest()
        ),
    };
    let progress = match &sctx.progress {
        Some(state) => serde_json::from_value::<UndoProgress>(state.clone())
            .map_err(|e| Error::permanent("rollback progress", format!("unreadable: {e}")))?,
        None => {
            let live = deployments::live(p, &ctx.app, env_name).await?;
            match &live {
                Some(l) if l.image.digest == ctx.image.digest => {}
                other => {
                    let now_live = other
                        .as_ref()
                        .map(|l| format!("{} ({}) is live", l.image.tag, l.image.short_digest()))
                        .unwrap_or_else(|| "nothing is live".into());
                    return Ok(Step::Done {
                        outputs: vec![],
                        note: Some(format!(
                            "{env_name}: not rolled back: {now_live}, not the image that failed verification"
                        )),
                    });
                }
            }
            let history = deployments::history(p, &ctx.app, env_name).await?;
            let Some(to) = history
                .iter()
                .rev()
                .find(|h| h.image.digest != ctx.image.digest)
                .cloned()
            else {
                return Ok(Step::Done {
                    outputs: vec![],
                    note: Some(format!(
                        "{env_name}: not rolled back: {} is the first image deployed there; nothing to go back to",
                        ctx.image.short_digest()
                    )),
                });
            };
            let applied = target.apply(&request(&to)).await.map_err(|e| {
                e.context(format!(
                    "roll {env_name} back to {} after a failed verification",
                    to.image.reference()
                ))
            })?;
            UndoProgress { applied, to }
        }
    };
    let req = request(&progress.to);
    match target.rollout(&req).await? {
        Rollout::Complete { detail } => {
            deployments::record_live(
                p,
                &progress.to.ctx,
                env_name,
                &progress.applied,
                DeployKind::Rollback,
                Some("verify"),
                lease,
            )
            .await?;
            let mut back = progress.to.ctx.clone();
            back.environment = Some(env_name.into());
            Ok(Step::Done {
                note: Some(format!(
                    "{env_name}: rolled back to {} after a failed verification",
                    progress.to.image.tag
                )),
                outputs: vec![Payload::DeploySucceeded(DeploySucceeded {
                    ctx: back,
                    target: target.kind().into(),
                    previous: Some(ctx.image.reference()),
                    changed: progress.applied.changed,
                    rollback: true,
                    detail: format!(
                        "rolled back from {} to {} after a failed verification ({}); {detail}",
                        ctx.image.tag, progress.to.image.tag, v.summary
                    ),
                })],
            })
        }
        Rollout::Progressing {
            detail,
            check_after,
        } => {
            let holder = format!("undo-{}", ctx.run);
            let state = serde_json::to_value(&progress).unwrap_or_default();
            let note = format!("{env_name}: rolling back: {detail}");
            wait_for_rollout(p, ctx, env_name, &holder, lease, check_after, state, note).await
        }
        Rollout::Failed { reason } => Ok(Step::Done {
            note: Some(format!("{env_name}: rollback did not roll out")),
            outputs: vec![Payload::DeployFailed(DeployFailed {
                ctx: ctx.clone(),
                target: target.kind().into(),
                code: FailureCode::RolloutFailed,
                reason: format!(
                    "putting {} back after a failed verification did not roll out: {reason}",
                    progress.to.image.tag
                ),
                rolled_back: false,
                live: None,
            })],
        }),
    }
}

/// Explicit rollback: puts an earlier image back, bypassing newer-wins, and
/// publishes `deploy.succeeded` with `rollback: true` (promote retags; gate does not
/// promote onwards). `to` is a digest or a unique prefix of one; the image live
/// before the current one when absent.
pub async fn rollback<P: TargetPorts>(
    p: &Pipeline<P>,
    app: &str,
    env: &str,
    to: Option<&str>,
    by: Option<&str>,
    reason: Option<&str>,
) -> Result<RollbackReport> {
    let reason = reason.map(str::trim).filter(|r| !r.is_empty());
    let app_cfg = p.config.app(app)?;
    let env_cfg = app_cfg.environment(env)?;
    let live = deployments::live(p, app, env).await?.ok_or_else(|| {
        Error::Refused(format!(
            "nothing is deployed to {env} of {app} yet; nothing to roll back"
        ))
    })?;
    let history = deployments::history(p, app, env).await?;
    let entry = match to {
        Some(want) => {
            let want = want.strip_prefix("sha256:").unwrap_or(want);
            if want.len() < 7 {
                return Err(Error::Refused(format!(
                    "--to {want}: give at least 7 hex digits of the digest"
                )));
            }
            let found = history
                .iter()
                .rev()
                .find(|h| {
                    h.image
                        .digest
                        .trim_start_matches("sha256:")
                        .starts_with(want)
                })
                .ok_or_else(|| {
                    Error::Refused(format!(
                        "{want} was never deployed to {env} of {app} (deployed: {})",
                        distinct_digests(&history).join(", ")
                    ))
                })?;
            if found.image.digest == live.image.digest {
                return Err(Error::Refused(format!(
                    "{} is already live in {env}; nothing to roll back",
                    found.image.short_digest()
                )));
            }
            found.clone()
        }
        None => history
            .iter()
            .rev()
            .find(|h| h.image.digest != live.image.digest)
            .cloned()
            .ok_or_else(|| {
                Error::Refused(format!(
                    "nothing to roll back to: only {} ({}) has been deployed to {env} of {app}",
                    live.image.tag,
                    live.image.short_digest()
                ))
            })?,
    };
    let target = p.ports.deploy_target(app_cfg, env_cfg)?;
    let holder = format!("rollback-{}", entry.run);
    let worker = crate::pipeline::harness::worker_id(&p.settings.owner);
    let lease = deployments::acquire_lease(p, app, env, &holder, &worker).await?;
    let req = DeployRequest {
        app: app.into(),
        environment: env.into(),
        run: entry.run.clone(),
        image: entry.image.clone(),
        cause: format!(
            "baton rollback{}: back to {} ({}){}",
            by.map(|b| format!(" by {b}")).unwrap_or_default(),
            entry.image.tagged(),
            entry.image.short_digest(),
            reason.map(|r| format!(": {r}")).unwrap_or_default()
        ),
    };
    let result = async {
        let applied = target.apply(&req).await?;
        let started = std::time::Instant::now();
        loop {
            match target.rollout(&req).await? {
                Rollout::Complete { .. } => break,
                Rollout::Progressing {
                    detail,
                    check_after,
                } => {
                    if started.elapsed() > p.settings.max_wait {
                        return Err(Error::permanent(
                            format!("rollback of {env}"),
                            format!("rollout did not finish: {detail}"),
                        ));
                    }
                    tracing::info!(%detail, "rollback rolling out");
                    tokio::time::sleep(check_after.min(Duration::from_secs(10))).await;
                    // Renewed while the rollout goes on, so no deploy takes over.
                    deployments::acquire_lease(p, app, env, &holder, &worker).await?;
                }
                Rollout::Failed { reason } => {
                    target.restore(&req, &applied.previous).await?;
                    return Err(Error::permanent(format!("rollback of {env}"), reason));
                }
            }
        }
        deployments::record_live(
            p,
            &entry.ctx,
            env,
            &applied,
            DeployKind::Rollback,
            by,
            &lease,
        )
        .await?;
        Ok(applied)
    }
    .await;
    deployments::release_lease(p, app, env, &lease).await;
    let applied = result?;
    let now = p.ports.now();
    let mut ctx = entry.ctx.clone();
    ctx.environment = Some(env.into());
    ctx.causation = format!("rollback:{}", live.run);
    ctx.attempt = 1;
    let id = stable_id(&[
        "rollback",
        app,
        env,
        &entry.image.digest,
        &now.timestamp_millis().to_string(),
    ]);
    let event = Event::new(
        id.clone(),
        StageName::Deploy.as_str(),
        now,
        Payload::DeploySucceeded(DeploySucceeded {
            ctx,
            target: target.kind().into(),
            previous: Some(live.image.reference()),
            changed: applied.changed,
            rollback: true,
            detail: format!("rolled back from {} to {}", live.image.tag, entry.image.tag),
        }),
    );
    harness::publish(p, std::slice::from_ref(&event)).await?;
    // The environment is held on what was put back: newer runs wait there until the
    // hold is released.
    crate::pipeline::holds::hold(p, app, env, &entry.image, Some(&live.image), by, reason).await?;
    // The run rolled back out says so from now on (`rolled back (<env>)`), until its
    // image is deployed there again.
    if live.run != entry.run {
        let mark = crate::pipeline::runs::RolledBackMark {
            environment: env.into(),
            at: now,
            to: entry.image.clone(),
            by: by.map(str::to_string),
            reason: reason.map(str::to_string),
        };
        crate::store::put_json(
            p.ports.store(),
            &crate::pipeline::runs::rolled_back_key(app, &live.run, env),
            &mark,
            crate::ports::Precondition::None,
        )
        .await?;
    }
    Ok(RollbackReport {
        app: app.into(),
        environment: env.into(),
        from: Some(live.image.reference()),
        to: entry.image.reference(),
        run: entry.run,
        event: id,
    })
}

fn distinct_digests(history: &[HistoryEntry]) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for h in history {
        let d = format!("{} ({})", h.image.short_digest(), h.image.tag);
        if !out.contains(&d) {
            out.push(d);
        }
    }
    out
}
