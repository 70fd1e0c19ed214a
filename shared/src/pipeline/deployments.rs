//! What is live where, over the store: the live record of each (app, environment), its
//! deploy history (what `baton rollback` goes back to), and the deploy lease that
//! serializes deploys to one environment (a conditional write with an expiry).
//!
//! ```text
//! deployments/<app>/<env>/current.json            what is live
//! deployments/<app>/<env>/history/<day>/<ms>-<run>.json deploy history
//! deployments/<app>/<env>/lease.json              deploy lease
//! ```

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::event::{Image, RunContext};
use crate::pipeline::Pipeline;
use crate::ports::{Applied, ObjectStore, Ports, Precondition};
use crate::store::{
    Change, Swapped, compare_and_swap, current_key, get_json, history_key, history_prefix,
    lease_key, put_json,
};

/// How an image became live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployKind {
    /// The pipeline deployed it.
    Deploy,
    /// An operator rolled back to it.
    Rollback,
}

/// What is live in an environment: `deployments/<app>/<env>/current.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveRecord {
    pub image: Image,
    pub run: crate::ids::RunId,
    pub deployed_at: DateTime<Utc>,
    /// The run context of the deploy (for rollback events).
    pub ctx: RunContext,
    pub kind: DeployKind,
    /// The fence of the deploy lease it was written under: a write under an older
    /// lease (a worker that lost it) never replaces it.
    #[serde(default)]
    pub fence: u64,
    /// What the deploy changed, and who asked (a rollback): with `deployed_at`, the
    /// history entry this record is written before, so a worker that stopped between
    /// the two writes can write that same entry again ([`ensure_history`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<Applied>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl LiveRecord {
    /// The history entry written with this record (`None` for a record written before
    /// records carried it).
    fn history_entry(&self) -> Option<HistoryEntry> {
        Some(HistoryEntry {
            at: self.deployed_at,
            kind: self.kind,
            image: self.image.clone(),
            run: self.run.clone(),
            ctx: self.ctx.clone(),
            applied: self.applied.clone()?,
            by: self.by.clone(),
        })
    }
}

/// One deploy in an environment's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at: DateTime<Utc>,
    pub kind: DeployKind,
    pub image: Image,
    pub run: crate::ids::RunId,
    pub ctx: RunContext,
    pub applied: Applied,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// The deploy lease: `deployments/<app>/<env>/lease.json`. Held by a run (the deploy
/// of one run may wait across deliveries: a rollout, a traffic shift) and, within the
/// run, by one worker: the one that claimed the run's deploy stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lease {
    pub holder: String,
    /// The worker of `holder` that holds it (one stage claim: `host/pid/start#n`).
    #[serde(default)]
    pub worker: String,
    pub until: DateTime<Utc>,
    /// Incremented each time the lease changes hands, to another run or to another
    /// worker of the same run (a renewal by the same worker keeps it): writes made
    /// under the lease carry it, so a worker that lost the lease cannot overwrite what
    /// a later one wrote.
    #[serde(default)]
    pub fence: u64,
}

/// A deploy lease held: by which run and worker, and its fence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub holder: String,
    pub worker: String,
    pub fence: u64,
}

/// Takes (or renews) the environment's deploy lease for the pipeline's lease time.
pub async fn acquire_lease<P: Ports>(
    p: &Pipeline<P>,
    app: &str,
    env: &str,
    holder: &str,
    worker: &str,
) -> Result<Held> {
    acquire_lease_for(p, app, env, holder, worker, p.settings.lease).await
}

/// Takes (or renews) the environment's deploy lease for `hold`. Another run's live
/// lease refuses (transient: retry later); another worker of the same run takes it over
/// with the next fence (only the worker holding the run's stage claim asks, so the
/// earlier one stalled or died, and whatever it still writes is refused).
pub async fn acquire_lease_for<P: Ports>(
    p: &Pipeline<P>,
    app: &str,
    env: &str,
    holder: &str,
    worker: &str,
    hold: std::time::Duration,
) -> Result<Held> {
    let key = lease_key(app, env);
    let what = format!("deploy lease for {app}/{env}");
    // A new fence is above the live record's too (the lease object may be gone).
    let live_fence = live(p, app, env).await?.map_or(0, |l| l.fence);
    let swapped = compare_and_swap(p.ports.store(), &key, &what, |cur: Option<Lease>| {
        let now = p.ports.now();
        let until = chrono::Duration::from_std(hold)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .ok_or_else(|| Error::invalid(what.clone(), "the lease time is out of range"))?;
        Ok(match cur {
            Some(cur) if cur.until > now && cur.holder != holder => Change::Stop(cur),
            // A renewal keeps the fence; a lease taken anew, or over, gets the next one.
            Some(cur) => Change::Write(Lease {
                holder: holder.into(),
                worker: worker.into(),
                until,
                fence: if cur.until > now && cur.worker == worker {
                    cur.fence
                } else {
                    cur.fence.max(live_fence).saturating_add(1)
                },
            }),
            None => Change::Write(Lease {
                holder: holder.into(),
                worker: worker.into(),
                until,
                fence: live_fence.saturating_add(1),
            }),
        })
    })
    .await?;
    match swapped {
        Swapped::Written(lease, _) => Ok(Held {
            holder: lease.holder,
            worker: lease.worker,
            fence: lease.fence,
        }),
        Swapped::Stopped(cur) => Err(Error::transient(
            what,
            crate::error::Message(format!(
                "held by {} until {}",
                cur.holder,
                cur.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )),
        )),
    }
}

/// Frees the lease if this worker still holds it (it expires by itself otherwise).
pub async fn release_lease<P: Ports>(p: &Pipeline<P>, app: &str, env: &str, held: &Held) {
    let key = lease_key(app, env);
    let store = p.ports.store();
    if let Ok(Some((cur, etag))) = get_json::<_, Lease>(store, &key).await
        && cur.holder == held.holder
        && cur.worker == held.worker
    {
        let released = Lease {
            until: p.ports.now(),
            ..cur
        };
        if let Err(e) = put_json(store, &key, &released, Precondition::IfMatch(etag)).await {
            tracing::warn!(%key, error = %e, "could not release deploy lease; it expires by itself");
        }
    }
}

/// Records a deploy (or rollback) made under `lease` in the environment's history and
/// as live. The live record is replaced by compare-and-swap, and only by a write under
/// the same or a later lease: a worker that lost its lease (it stalled past the lease
/// time and another deploy took over) is refused, naming both.
pub async fn record_live<P: Ports>(
    p: &Pipeline<P>,
    ctx: &RunContext,
    env: &str,
    applied: &Applied,
    kind: DeployKind,
    by: Option<&str>,
    lease: &Held,
) -> Result<()> {
    let now = p.ports.now();
    let store = p.ports.store();
    let what = format!("live record of {}/{env}", ctx.app);
    // The lease taken over since (by another run, or another worker of this run): this
    // worker's result is stale.
    if let Some((cur, _)) = get_json::<_, Lease>(store, &lease_key(&ctx.app, env)).await?
        && cur.fence > lease.fence
    {
        return Err(Error::permanent(
            what,
            crate::error::Message(format!(
                "{} ({}) lost its deploy lease (fence {}) to {} ({}, fence {}); this deploy's result is not recorded",
                lease.holder, lease.worker, lease.fence, cur.holder, cur.worker, cur.fence
            )),
        ));
    }
    let mut ctx = ctx.clone();
    ctx.environment = Some(env.to_string());
    // The live record first, then its history entry under a key made from the record
    // (its time and run): a worker stopped between the two leaves the record, and its
    // next attempt finds the image live and writes the same entry ([`ensure_history`]);
    // written the other way round, the next attempt deployed again and the history
    // held the deploy twice.
    let live = LiveRecord {
        image: ctx.image.clone(),
        run: ctx.run.clone(),
        deployed_at: now,
        ctx: ctx.clone(),
        kind,
        fence: lease.fence,
        applied: Some(applied.clone()),
        by: by.map(str::to_owned),
    };
    let swapped = compare_and_swap(
        store,
        &current_key(&ctx.app, env),
        &what,
        |cur: Option<LiveRecord>| {
            Ok(match cur {
                Some(cur) if cur.fence > lease.fence => Change::Stop(cur),
                _ => Change::Write(live.clone()),
            })
        },
    )
    .await?;
    match swapped {
        Swapped::Written(..) => {
            p.fail_point("deploy", "live_recorded");
            // On the heap: the store's write future is large, and callers run on threads
            // with small stacks.
            Box::pin(ensure_history(p, &ctx.app, env, &live)).await
        }
        Swapped::Stopped(cur) => Err(Error::permanent(
            what,
            crate::error::Message(format!(
                "{} ({}) lost its deploy lease (fence {}) and run {} has since recorded {} as live (fence {}); this deploy's result is not recorded",
                lease.holder, lease.worker, lease.fence, cur.run, cur.image.tag, cur.fence
            )),
        )),
    }
}

/// Writes the history entry of a live record, unless it is there already (the record
/// carries it, see [`LiveRecord::applied`]; one written by an older version does not).
pub async fn ensure_history<P: Ports>(
    p: &Pipeline<P>,
    app: &str,
    env: &str,
    live: &LiveRecord,
) -> Result<()> {
    let Some(entry) = live.history_entry() else {
        return Ok(());
    };
    let key = history_key(app, env, live.deployed_at, &live.run);
    match put_json(p.ports.store(), &key, &entry, Precondition::IfNoneMatch).await {
        Ok(_) | Err(Error::Conflict { .. }) => Ok(()),
        Err(e) => Err(e.context(format!("write the history entry of {app}/{env}"))),
    }
}

/// What is live in an environment.
pub async fn live<P: Ports>(p: &Pipeline<P>, app: &str, env: &str) -> Result<Option<LiveRecord>> {
    Ok(
        get_json::<_, LiveRecord>(p.ports.store(), &current_key(app, env))
            .await?
            .map(|(l, _)| l),
    )
}

/// An environment's deploy history, oldest first.
pub async fn history<P: Ports>(p: &Pipeline<P>, app: &str, env: &str) -> Result<Vec<HistoryEntry>> {
    let store = p.ports.store();
    let mut out = vec![];
    for key in store.list(&history_prefix(app, env)).await? {
        if let Some((h, _)) = get_json::<_, HistoryEntry>(store, &key).await? {
            out.push(h);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::testing::{pipeline, sample};

    fn applied() -> Applied {
        Applied {
            previous: vec![],
            changed: true,
            detail: "patched".into(),
        }
    }

    /// Records `ctx`'s image as deployed to `web`'s staging under `lease`.
    async fn deploy_to_staging(
        p: &Pipeline<crate::adapters::memory::MemPorts>,
        ctx: &RunContext,
        lease: &Held,
    ) -> Result<()> {
        record_live(
            p,
            ctx,
            "staging",
            &applied(),
            DeployKind::Deploy,
            None,
            lease,
        )
        .await
    }

    /// A worker that stalls past its lease and wakes after another deploy took over
    /// cannot overwrite what that deploy recorded as live; a renewal keeps the fence, a
    /// lease taken anew gets a higher one, also when the lease object is gone.
    #[tokio::test]
    async fn a_worker_that_lost_its_lease_cannot_overwrite_the_live_record() {
        let p = pipeline();
        let ctx = sample("image.built", |_| {}).ctx().clone();
        let a = acquire_lease(&p, "web", "staging", "run-a", "w1")
            .await
            .unwrap();
        assert_eq!(
            acquire_lease(&p, "web", "staging", "run-a", "w1")
                .await
                .unwrap(),
            a,
            "a renewal keeps the fence"
        );
        let busy = acquire_lease(&p, "web", "staging", "run-b", "w2").await;
        assert!(busy.is_err_and(|e| e.is_retryable() && e.to_string().contains("held by run-a")));

        // run-a stalls past its lease; run-b takes it and records its deploy.
        p.ports.advance(chrono::Duration::minutes(5));
        let b = acquire_lease(&p, "web", "staging", "run-b", "w2")
            .await
            .unwrap();
        assert!(b.fence > a.fence, "{b:?} after {a:?}");
        deploy_to_staging(&p, &ctx, &b).await.unwrap();

        // run-a wakes up and finishes its deploy: refused, and b's record stays.
        let mut stale = ctx.clone();
        stale.image.tag = "0.9.0".parse().unwrap();
        let e = deploy_to_staging(&p, &stale, &a).await.unwrap_err();
        assert!(!e.is_retryable());
        let msg = e.to_string();
        assert!(msg.contains("run-a (w1) lost its deploy lease"), "{msg}");
        let now = live(&p, "web", "staging").await.unwrap().unwrap();
        assert_eq!(
            (now.image.tag.to_string(), now.fence),
            (ctx.image.tag.to_string(), b.fence)
        );
        let deploys = history(&p, "web", "staging").await.unwrap();
        assert_eq!(
            deploys
                .iter()
                .map(|h| h.image.tag.to_string())
                .collect::<Vec<_>>(),
            [ctx.image.tag.to_string()],
            "the refused worker's deploy is not in the history"
        );

        // The lease object lost (a cleanup, a restore): the next fence is still higher.
        p.ports.store.remove(&lease_key("web", "staging"));
        let c = acquire_lease(&p, "web", "staging", "run-c", "w3")
            .await
            .unwrap();
        assert!(c.fence > b.fence, "{c:?} after {b:?}");
    }

    /// A worker stopped between the live record and its history entry (a crash of the
    /// process): the next attempt finds its image live and writes that same entry, once.
    #[tokio::test]
    async fn a_deploy_stopped_before_its_history_entry_gets_that_entry_once() {
        let p = pipeline();
        let ctx = sample("image.built", |_| {}).ctx().clone();
        let lease = acquire_lease(&p, "web", "staging", "run-a", "w1")
            .await
            .unwrap();
        deploy_to_staging(&p, &ctx, &lease).await.unwrap();
        let written = history(&p, "web", "staging").await.unwrap();
        assert_eq!(written.len(), 1);
        let now = live(&p, "web", "staging").await.unwrap().unwrap();
        p.ports
            .store
            .remove(&history_key("web", "staging", now.deployed_at, &now.run));
        assert!(history(&p, "web", "staging").await.unwrap().is_empty());
        ensure_history(&p, "web", "staging", &now).await.unwrap();
        ensure_history(&p, "web", "staging", &now).await.unwrap();
        assert_eq!(
            history(&p, "web", "staging").await.unwrap(),
            written,
            "the same entry, once"
        );
    }

    /// The same run's deploy taken over by another worker (the first one's stage claim
    /// expired while it stalled): the new worker gets the next fence at once, the
    /// stalled one can neither write the live record nor release the lease.
    #[tokio::test]
    async fn a_stalled_worker_of_the_same_run_is_fenced_by_the_worker_that_took_over() {
        let p = pipeline();
        let ctx = sample("image.built", |_| {}).ctx().clone();
        let first = acquire_lease(&p, "web", "staging", "run-a", "w1")
            .await
            .unwrap();
        let second = acquire_lease(&p, "web", "staging", "run-a", "w2")
            .await
            .unwrap();
        assert!(second.fence > first.fence, "{second:?} after {first:?}");
        assert_eq!(
            acquire_lease(&p, "web", "staging", "run-a", "w2")
                .await
                .unwrap(),
            second,
            "its renewal keeps the fence"
        );
        let e = deploy_to_staging(&p, &ctx, &first).await.unwrap_err();
        assert!(e.to_string().contains("lost its deploy lease"), "{e}");
        release_lease(&p, "web", "staging", &first).await;
        let busy = acquire_lease(&p, "web", "staging", "run-b", "w3").await;
        assert!(busy.is_err(), "the stalled worker's release freed nothing");
        deploy_to_staging(&p, &ctx, &second).await.unwrap();
        release_lease(&p, "web", "staging", &second).await;
        acquire_lease(&p, "web", "staging", "run-b", "w3")
            .await
            .unwrap();
    }
}
