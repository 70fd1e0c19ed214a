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

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::event::{DeployFailed, DeploySucceeded, Event, EventType, Image, Payload, RunContext};
use crate::ids::stable_id;
use crate::pipeline::harness::{StageCtx, Step};
use crate::pipeline::{Pipeline, StageName, expect_type};
use crate::policy::OrderKey;
use crate::policy::tags::may_replace;
use crate::ports::{
    Applied, DeployRequest, DeployTarget, ObjectStore, Ports, Precondition, Rollout,
};
use crate::store::{current_key, get_json, history_key, history_prefix, lease_key, put_json};

/// What is live in an environment: `deployments/<app>/<env>/current.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveRecord {
    pub image: Image,
    pub run: String,
    pub deployed_at: DateTime<Utc>,
    /// The run context of the deploy (for rollback events).
    pub ctx: RunContext,
    /// `deploy` or `rollback`.
    pub kind: String,
}

/// One deploy in an environment's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at: DateTime<Utc>,
    /// `deploy` or `rollback`.
    pub kind: String,
    pub image: Image,
    pub run: String,
    pub ctx: RunContext,
    pub applied: Applied,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lease {
    holder: String,
    until: DateTime<Utc>,
}

/// What a rollback did.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    pub app: String,
    pub environment: String,
    pub from: Option<String>,
    pub to: String,
    pub run: String,
    pub event: String,
}

fn order_key<P: Ports>(p: &Pipeline<P>, ctx: &RunContext) -> OrderKey {
    let version = p
        .config
        .app(&ctx.app)
        .ok()
        .and_then(|a| a.tag_policy().ok())
        .and_then(|pol| pol.version_of(&ctx.image.tag));
    OrderKey {
        version,
        sequence: ctx.sequence,
    }
}

pub(crate) async fn run<P: Ports>(p: &Pipeline<P>, input: &Event, sctx: &StageCtx) -> Result<Step> {
    expect_type(
        StageName::Deploy,
        input.event_type(),
        &[EventType::ApprovalGranted],
    )?;
    let ctx = input.ctx().clone();
    let env_name = ctx.environment.clone().unwrap_or_default();
    let app = p.config.app(&ctx.app)?;
    let env = app.environment(&env_name)?;
    check_image_of_app(app, &ctx)?;
    if let crate::config::ApprovalPolicy::Manual(m) = &env.approval {
        verify_approval(p, input, &ctx, &env_name, m).await?;
    }
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
    let lease = p.acquire_lease(&ctx.app, &env_name, &ctx.run).await?;
    let result = deploy_under_lease(p, &target, &req, &ctx, env.rollback_on_failure, sctx).await;
    // A waiting rollout keeps the lease (renewed on every check); everything else frees it.
    if !matches!(result, Ok(Step::Wait { .. })) {
        p.release_lease(&ctx.app, &env_name, &lease).await;
    }
    result
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

/// Checks the approvals record behind an `approval.granted` for a manual environment;
/// a refusal names what is wrong and nothing is deployed.
async fn verify_approval<P: Ports>(
    p: &Pipeline<P>,
    input: &Event,
    ctx: &RunContext,
    env: &str,
    m: &crate::config::ManualApproval,
) -> Result<()> {
    let refuse = |why: String| {
        tracing::error!(run = %ctx.run, app = %ctx.app, env = %env, event = %input.id,
            source = %input.source, %why, "approval.granted refused: not backed by a valid approvals record");
        Error::Refused(format!(
            "deploy of run {} to {env} refused: {why}; nothing was deployed",
            ctx.run
        ))
    };
    if let Payload::ApprovalGranted(g) = &input.payload
        && g.policy == crate::event::GrantPolicy::Auto
    {
        return Err(refuse(format!(
            "the event claims automatic approval, but {env} requires approvers"
        )));
    }
    let key = crate::store::approval_key(&ctx.app, &ctx.run, env);
    let Some((rec, _)) =
        get_json::<_, crate::stages::approve::ApprovalRecord>(p.ports.store(), &key).await?
    else {
        return Err(refuse(format!("there is no approvals record ({key})")));
    };
    if rec.app != ctx.app || rec.run != ctx.run || rec.environment != env {
        return Err(refuse(format!(
            "the approvals record at {key} is for {}/{} in {}",
            rec.app, rec.run, rec.environment
        )));
    }
    if rec.request.ctx().image.digest != ctx.image.digest {
        return Err(refuse(format!(
            "the approvals record is for {}, not {}",
            rec.request.ctx().image.short_digest(),
            ctx.image.short_digest()
        )));
    }
    let eligible = p.config.eligible(m);
    crate::policy::approval::verify_granted(
        &rec.rules,
        rec.status,
        &rec.decisions,
        &eligible,
        m.required,
    )
    .map(|by| {
        tracing::info!(run = %ctx.run, env = %env, approvers = %by.join(", "), "approval verified");
    })
    .map_err(refuse)
}

async fn deploy_under_lease<P: Ports, T: DeployTarget>(
    p: &Pipeline<P>,
    target: &T,
    req: &DeployRequest,
    ctx: &RunContext,
    rollback_on_failure: bool,
    sctx: &StageCtx,
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
                            code: "superseded".into(),
                            reason,
                            rolled_back: false,
                            live: Some(live.image.reference()),
                        })],
                    });
                }
            }
            target
                .apply(req)
                .await
                .map_err(|e| e.context(format!("deploy {} to {env_name}", ctx.image.reference())))?
        }
    };
    match target.rollout(req).await? {
        Rollout::Complete { detail } => {
            p.record_live(ctx, env_name, &applied, "deploy", None)
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
            // The lease outlasts the wait, so no other run deploys to this environment
            // between two checks of this rollout (a traffic shift, a rolling update).
            let after = check_after.min(p.settings.max_wait);
            p.acquire_lease_for(&ctx.app, env_name, &ctx.run, after + p.settings.lease)
                .await?;
            Ok(Step::Wait {
                after,
                progress: serde_json::to_value(&applied).unwrap_or_default(),
                note: detail,
            })
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
                    code: "rollout_failed".into(),
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

impl<P: Ports> Pipeline<P> {
    async fn acquire_lease(&self, app: &str, env: &str, holder: &str) -> Result<String> {
        self.acquire_lease_for(app, env, holder, self.settings.lease)
            .await
    }

    /// Takes (or renews) the environment's deploy lease for `hold`.
    async fn acquire_lease_for(
        &self,
        app: &str,
        env: &str,
        holder: &str,
        hold: std::time::Duration,
    ) -> Result<String> {
        let key = lease_key(app, env);
        let store = self.ports.store();
        for _ in 0..5 {
            let now = self.ports.now();
            let until = now + chrono::Duration::from_std(hold).unwrap_or_default();
            let lease = Lease {
                holder: holder.into(),
                until,
            };
            let cond = match get_json::<_, Lease>(store, &key).await? {
                None => Precondition::IfNoneMatch,
                Some((cur, etag)) if cur.until <= now || cur.holder == holder => {
                    Precondition::IfMatch(etag)
                }
                Some((cur, _)) => {
                    return Err(Error::transient(
                        format!("deploy lease for {app}/{env}"),
                        crate::error::Message(format!(
                            "held by {} until {}",
                            cur.holder,
                            cur.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        )),
                    ));
                }
            };
            match put_json(store, &key, &lease, cond).await {
                Ok(_) => return Ok(holder.to_string()),
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::transient(
            format!("deploy lease for {app}/{env}"),
            crate::error::Message("too much contention".into()),
        ))
    }

    async fn release_lease(&self, app: &str, env: &str, holder: &str) {
        let key = lease_key(app, env);
        let store = self.ports.store();
        if let Ok(Some((cur, etag))) = get_json::<_, Lease>(store, &key).await
            && cur.holder == holder
        {
            let released = Lease {
                holder: holder.into(),
                until: self.ports.now(),
            };
            if let Err(e) = put_json(store, &key, &released, Precondition::IfMatch(etag)).await {
                tracing::warn!(%key, error = %e, "could not release deploy lease; it expires by itself");
            }
        }
    }

    async fn record_live(
        &self,
        ctx: &RunContext,
        env: &str,
        applied: &Applied,
        kind: &str,
        by: Option<&str>,
    ) -> Result<()> {
        let now = self.ports.now();
        let store = self.ports.store();
        let mut ctx = ctx.clone();
        ctx.environment = Some(env.to_string());
        let entry = HistoryEntry {
            at: now,
            kind: kind.into(),
            image: ctx.image.clone(),
            run: ctx.run.clone(),
            ctx: ctx.clone(),
            applied: applied.clone(),
            by: by.map(str::to_owned),
        };
        put_json(
            store,
            &history_key(&ctx.app, env, now.timestamp_millis(), &ctx.run),
            &entry,
            Precondition::None,
        )
        .await?;
        let live = LiveRecord {
            image: ctx.image.clone(),
            run: ctx.run.clone(),
            deployed_at: now,
            ctx: ctx.clone(),
            kind: kind.into(),
        };
        put_json(
            store,
            &current_key(&ctx.app, env),
            &live,
            Precondition::None,
        )
        .await?;
        Ok(())
    }

    /// What is live in an environment.
    pub async fn live(&self, app: &str, env: &str) -> Result<Option<LiveRecord>> {
        Ok(
            get_json::<_, LiveRecord>(self.ports.store(), &current_key(app, env))
                .await?
                .map(|(l, _)| l),
        )
    }

    /// An environment's deploy history, oldest first.
    pub async fn history(&self, app: &str, env: &str) -> Result<Vec<HistoryEntry>> {
        let store = self.ports.store();
        let mut out = vec![];
        for key in store.list(&history_prefix(app, env)).await? {
            if let Some((h, _)) = get_json::<_, HistoryEntry>(store, &key).await? {
                out.push(h);
            }
        }
        Ok(out)
    }

    /// Explicit rollback: puts an earlier image back, bypassing newer-wins, and
    /// publishes `deploy.succeeded` with `rollback: true` (promote retags; gate does not
    /// promote onwards). `to` is a digest or a unique prefix of one; the image live
    /// before the current one when absent.
    pub async fn rollback(
        &self,
        app: &str,
        env: &str,
        to: Option<&str>,
        by: Option<&str>,
    ) -> Result<RollbackReport> {
        let app_cfg = self.config.app(app)?;
        let env_cfg = app_cfg.environment(env)?;
        let live = self.live(app, env).await?.ok_or_else(|| {
            Error::Refused(format!(
                "nothing is deployed to {env} of {app} yet; nothing to roll back"
            ))
        })?;
        let history = self.history(app, env).await?;
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
        let target = self.ports.deploy_target(app_cfg, env_cfg)?;
        let holder = format!("rollback-{}", entry.run);
        self.acquire_lease(app, env, &holder).await?;
        let req = DeployRequest {
            app: app.into(),
            environment: env.into(),
            run: entry.run.clone(),
            image: entry.image.clone(),
            cause: format!(
                "baton rollback{}: back to {} ({})",
                by.map(|b| format!(" by {b}")).unwrap_or_default(),
                entry.image.tagged(),
                entry.image.short_digest()
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
                        if started.elapsed() > self.settings.max_wait {
                            return Err(Error::permanent(
                                format!("rollback of {env}"),
                                format!("rollout did not finish: {detail}"),
                            ));
                        }
                        tracing::info!(%detail, "rollback rolling out");
                        tokio::time::sleep(check_after.min(Duration::from_secs(10))).await;
                    }
                    Rollout::Failed { reason } => {
                        target.restore(&req, &applied.previous).await?;
                        return Err(Error::permanent(format!("rollback of {env}"), reason));
                    }
                }
            }
            self.record_live(&entry.ctx, env, &applied, "rollback", by)
                .await?;
            Ok(applied)
        }
        .await;
        self.release_lease(app, env, &holder).await;
        let applied = result?;
        let now = self.ports.now();
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
        self.publish(std::slice::from_ref(&event)).await?;
        Ok(RollbackReport {
            app: app.into(),
            environment: env.into(),
            from: Some(live.image.reference()),
            to: entry.image.reference(),
            run: entry.run,
            event: id,
        })
    }
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
