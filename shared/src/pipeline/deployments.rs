//! What is live where, over the store: the live record of each (app, environment), its
//! deploy history (what `baton rollback` goes back to), and the deploy lease that
//! serializes deploys to one environment (a conditional write with an expiry).
//!
//! ```text
//! deployments/<app>/<env>/current.json            what is live
//! deployments/<app>/<env>/history/<ms>-<run>.json deploy history
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lease {
    pub holder: String,
    pub until: DateTime<Utc>,
}

/// Takes (or renews) the environment's deploy lease for the pipeline's lease time.
pub async fn acquire_lease<P: Ports>(
    p: &Pipeline<P>,
    app: &str,
    env: &str,
    holder: &str,
) -> Result<String> {
    acquire_lease_for(p, app, env, holder, p.settings.lease).await
}

/// Takes (or renews) the environment's deploy lease for `hold`.
pub async fn acquire_lease_for<P: Ports>(
    p: &Pipeline<P>,
    app: &str,
    env: &str,
    holder: &str,
    hold: std::time::Duration,
) -> Result<String> {
    let key = lease_key(app, env);
    let what = format!("deploy lease for {app}/{env}");
    let swapped = compare_and_swap(p.ports.store(), &key, &what, |cur: Option<Lease>| {
        let now = p.ports.now();
        let until = chrono::Duration::from_std(hold)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .ok_or_else(|| Error::invalid(what.clone(), "the lease time is out of range"))?;
        Ok(match cur {
            Some(cur) if cur.until > now && cur.holder != holder => Change::Stop(cur),
            _ => Change::Write(Lease {
                holder: holder.into(),
                until,
            }),
        })
    })
    .await?;
    match swapped {
        Swapped::Written(..) => Ok(holder.to_string()),
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

/// Frees the lease if `holder` still holds it (it expires by itself otherwise).
pub async fn release_lease<P: Ports>(p: &Pipeline<P>, app: &str, env: &str, holder: &str) {
    let key = lease_key(app, env);
    let store = p.ports.store();
    if let Ok(Some((cur, etag))) = get_json::<_, Lease>(store, &key).await
        && cur.holder == holder
    {
        let released = Lease {
            holder: holder.into(),
            until: p.ports.now(),
        };
        if let Err(e) = put_json(store, &key, &released, Precondition::IfMatch(etag)).await {
            tracing::warn!(%key, error = %e, "could not release deploy lease; it expires by itself");
        }
    }
}

/// Records a deploy (or rollback) as live and in the environment's history.
pub async fn record_live<P: Ports>(
    p: &Pipeline<P>,
    ctx: &RunContext,
    env: &str,
    applied: &Applied,
    kind: DeployKind,
    by: Option<&str>,
) -> Result<()> {
    let now = p.ports.now();
    let store = p.ports.store();
    let mut ctx = ctx.clone();
    ctx.environment = Some(env.to_string());
    let entry = HistoryEntry {
        at: now,
        kind,
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
        kind,
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
