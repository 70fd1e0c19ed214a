//! Stops of the line that people set: freezes (`baton freeze`, for everything, one
//! environment of every app, or one app's environment) and rollback holds (`baton
//! rollback` holds the environment on the image it put back until `baton hold
//! release`). The deploy stage waits while either applies; rollbacks are never blocked.
//! Records are kept when lifted (who, when, why), so the store says who stopped and who
//! restarted the line.
//!
//! Keys: `freezes/<app or _all>/<environment or _all>.json`, `holds/<app>/<env>.json`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::event::Image;
use crate::pipeline::Pipeline;
use crate::ports::{ObjectStore, Ports, Precondition};
use crate::store::{get_json, put_json};

const ALL: &str = "_all";

/// A freeze set by hand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FreezeRecord {
    /// The app it applies to; every app when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The environment it applies to; every environment when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    pub active: bool,
    pub reason: String,
    pub by: String,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifted: Option<Lifted>,
}

/// Who lifted a freeze or released a hold, when and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lifted {
    pub by: String,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl FreezeRecord {
    /// Where it applies, in words.
    pub fn scope(&self) -> String {
        match (&self.app, &self.environment) {
            (None, None) => "everything".into(),
            (None, Some(e)) => format!("{e} of every app"),
            (Some(a), None) => format!("every environment of {a}"),
            (Some(a), Some(e)) => format!("{e} of {a}"),
        }
    }
}

fn freeze_key(app: Option<&str>, env: Option<&str>) -> String {
    format!("freezes/{}/{}.json", app.unwrap_or(ALL), env.unwrap_or(ALL))
}

fn check_names<P: Ports>(p: &Pipeline<P>, app: Option<&str>, env: Option<&str>) -> Result<()> {
    if let Some(a) = app {
        let cfg = p.config.app(a)?;
        if let Some(e) = env {
            cfg.environment(e)?;
        }
    } else if let Some(e) = env
        && !p
            .config
            .apps
            .iter()
            .any(|a| a.environments.iter().any(|x| x.name == e))
    {
        return Err(Error::invalid(
            "environment",
            format!("no app has an environment {e:?}"),
        ));
    }
    Ok(())
}

/// Freezes `app`'s (every app's) `env` (every environment): deploys there wait until
/// it is lifted. Freezing what is frozen replaces the reason.
pub async fn freeze<P: Ports>(
    p: &Pipeline<P>,
    app: Option<&str>,
    env: Option<&str>,
    by: &str,
    reason: &str,
) -> Result<FreezeRecord> {
    check_names(p, app, env)?;
    if reason.trim().is_empty() {
        return Err(Error::invalid(
            "reason",
            "a freeze needs a reason (--reason): it is shown to everyone it stops",
        ));
    }
    let record = FreezeRecord {
        app: app.map(str::to_string),
        environment: env.map(str::to_string),
        active: true,
        reason: reason.into(),
        by: by.into(),
        at: p.ports.now(),
        lifted: None,
    };
    put_json(
        p.ports.store(),
        &freeze_key(app, env),
        &record,
        Precondition::None,
    )
    .await?;
    Ok(record)
}

/// Lifts the freeze set on exactly this scope.
pub async fn unfreeze<P: Ports>(
    p: &Pipeline<P>,
    app: Option<&str>,
    env: Option<&str>,
    by: &str,
    reason: Option<&str>,
) -> Result<FreezeRecord> {
    check_names(p, app, env)?;
    let key = freeze_key(app, env);
    let store = p.ports.store();
    let Some((mut record, etag)) = get_json::<_, FreezeRecord>(store, &key).await? else {
        return Err(Error::Settled(format!(
            "{} is not frozen (baton freezes lists what is)",
            scope_words(app, env)
        )));
    };
    if !record.active {
        return Err(Error::Settled(format!(
            "{} is not frozen: the freeze was lifted by {}",
            record.scope(),
            record.lifted.as_ref().map(|l| l.by.as_str()).unwrap_or("?")
        )));
    }
    record.active = false;
    record.lifted = Some(Lifted {
        by: by.into(),
        at: p.ports.now(),
        reason: reason.map(str::to_string),
    });
    put_json(store, &key, &record, Precondition::IfMatch(etag)).await?;
    Ok(record)
}

fn scope_words(app: Option<&str>, env: Option<&str>) -> String {
    FreezeRecord {
        app: app.map(str::to_string),
        environment: env.map(str::to_string),
        active: false,
        reason: String::new(),
        by: String::new(),
        at: DateTime::<Utc>::MIN_UTC,
        lifted: None,
    }
    .scope()
}

/// The freezes in force for `app`'s `env` (everything, the environment everywhere, the
/// app everywhere, the app's environment).
pub async fn active_freezes<P: Ports>(
    p: &Pipeline<P>,
    app: &str,
    env: &str,
) -> Result<Vec<FreezeRecord>> {
    let mut out = vec![];
    for (a, e) in [
        (None, None),
        (None, Some(env)),
        (Some(app), None),
        (Some(app), Some(env)),
    ] {
        if let Some((r, _)) =
            get_json::<_, FreezeRecord>(p.ports.store(), &freeze_key(a, e)).await?
            && r.active
        {
            out.push(r);
        }
    }
    Ok(out)
}

/// Every record under `prefix`.
async fn records<P: Ports, T: serde::de::DeserializeOwned>(
    p: &Pipeline<P>,
    prefix: &str,
) -> Result<Vec<T>> {
    let store = p.ports.store();
    let mut out = vec![];
    for key in store.list(prefix).await? {
        if let Some((r, _)) = get_json::<_, T>(store, &key).await? {
            out.push(r);
        }
    }
    Ok(out)
}

/// Every freeze record, lifted ones included.
pub async fn freezes<P: Ports>(p: &Pipeline<P>) -> Result<Vec<FreezeRecord>> {
    records(p, "freezes/").await
}

/// An environment held after a rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldRecord {
    pub app: String,
    pub environment: String,
    pub active: bool,
    /// The image the rollback put back: the only one that deploys there while held.
    pub image: Image,
    /// The image rolled back out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Image>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Why the rollback was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<Lifted>,
}

fn hold_key(app: &str, env: &str) -> String {
    format!("holds/{app}/{env}.json")
}

/// Holds `app`'s `env` on `image` (what a rollback put back).
pub async fn hold<P: Ports>(
    p: &Pipeline<P>,
    app: &str,
    env: &str,
    image: &Image,
    from: Option<&Image>,
    by: Option<&str>,
    reason: Option<&str>,
) -> Result<HoldRecord> {
    let record = HoldRecord {
        reason: reason.map(str::to_string),
        app: app.into(),
        environment: env.into(),
        active: true,
        image: image.clone(),
        from: from.cloned(),
        by: by.map(str::to_string),
        at: p.ports.now(),
        released: None,
    };
    put_json(
        p.ports.store(),
        &hold_key(app, env),
        &record,
        Precondition::None,
    )
    .await?;
    Ok(record)
}

/// The hold on `app`'s `env`, if one is in force.
pub async fn active_hold<P: Ports>(
    p: &Pipeline<P>,
    app: &str,
    env: &str,
) -> Result<Option<HoldRecord>> {
    Ok(
        get_json::<_, HoldRecord>(p.ports.store(), &hold_key(app, env))
            .await?
            .map(|(h, _)| h)
            .filter(|h| h.active),
    )
}

/// Releases the hold on `app`'s `env`: newer runs deploy there again.
pub async fn release<P: Ports>(
    p: &Pipeline<P>,
    app: &str,
    env: &str,
    by: &str,
    reason: Option<&str>,
) -> Result<HoldRecord> {
    p.config.app(app)?.environment(env)?;
    let key = hold_key(app, env);
    let store = p.ports.store();
    let held = get_json::<_, HoldRecord>(store, &key).await?;
    let Some((mut record, etag)) = held.filter(|(h, _)| h.active) else {
        return Err(Error::Settled(format!(
            "{env} of {app} is not held (a hold comes from baton rollback)"
        )));
    };
    record.active = false;
    record.released = Some(Lifted {
        by: by.into(),
        at: p.ports.now(),
        reason: reason.map(str::to_string),
    });
    put_json(store, &key, &record, Precondition::IfMatch(etag)).await?;
    Ok(record)
}

/// Every hold record, released ones included.
pub async fn holds<P: Ports>(p: &Pipeline<P>) -> Result<Vec<HoldRecord>> {
    records(p, "holds/").await
}

/// A break-glass override: one person asks, with a reason, to deploy one run to one
/// frozen environment; a second approver of that environment approves it. A hold is not
/// overridden (its release is its own decision).
/// Key: `overrides/<app>/<run>/<env>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverrideRecord {
    pub app: String,
    pub run: crate::ids::RunId,
    pub environment: String,
    pub reason: String,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_at: Option<DateTime<Utc>>,
}

fn override_key(app: &str, run: &str, env: &str) -> String {
    format!("overrides/{app}/{run}/{env}.json")
}

/// Who may approve a break-glass for `env` of `app`: the approvers of that environment
/// (by name and through its groups); for an `auto` environment, those of the app's
/// other environments.
fn may_approve_override<P: Ports>(
    p: &Pipeline<P>,
    app: &str,
    env: &str,
    who: &str,
) -> Result<bool> {
    let cfg = p.config.app(app)?;
    let named = |m: &crate::config::ManualApproval| {
        m.approvers.iter().any(|a| a == who)
            || m.groups.iter().any(|g| {
                p.config
                    .groups
                    .get(g)
                    .is_some_and(|members| members.iter().any(|x| x == who))
            })
    };
    let e = cfg.environment(env)?;
    Ok(match &e.approval {
        crate::config::ApprovalPolicy::Manual(m) => named(m),
        crate::config::ApprovalPolicy::Auto => cfg
            .environments
            .iter()
            .any(|x| matches!(&x.approval, crate::config::ApprovalPolicy::Manual(m) if named(m))),
    })
}

/// Asks for a break-glass deploy of `run` (of `app`) to `env` while it is frozen.
pub async fn request_override<P: Ports>(
    p: &Pipeline<P>,
    app: &str,
    run: &crate::ids::RunId,
    env: &str,
    by: &str,
    reason: &str,
) -> Result<OverrideRecord> {
    p.config.app(app)?.environment(env)?;
    if reason.trim().is_empty() {
        return Err(Error::invalid(
            "reason",
            "a break-glass needs a reason (--reason): it is kept with the deploy",
        ));
    }
    let record = OverrideRecord {
        app: app.into(),
        run: run.clone(),
        environment: env.into(),
        reason: reason.into(),
        requested_by: by.into(),
        requested_at: p.ports.now(),
        approved_by: None,
        approved_at: None,
    };
    match put_json(
        p.ports.store(),
        &override_key(app, run.as_str(), env),
        &record,
        Precondition::IfNoneMatch,
    )
    .await
    {
        Ok(_) => Ok(record),
        Err(Error::Conflict { .. }) => Err(Error::Settled(format!(
            "a break-glass for run {run} in {env} was already requested (baton status {run})"
        ))),
        Err(e) => Err(e),
    }
}

/// Approves a requested break-glass: by an approver of the environment other than the
/// person who asked.
pub async fn approve_override<P: Ports>(
    p: &Pipeline<P>,
    app: &str,
    run: &str,
    env: &str,
    by: &str,
) -> Result<OverrideRecord> {
    let key = override_key(app, run, env);
    let store = p.ports.store();
    let Some((mut record, etag)) = get_json::<_, OverrideRecord>(store, &key).await? else {
        return Err(Error::Refused(format!(
            "no break-glass was requested for run {run} in {env} (baton break-glass {run} --env {env} --reason …)"
        )));
    };
    if let Some(a) = &record.approved_by {
        return Err(Error::Settled(format!(
            "the break-glass for run {run} in {env} was already approved by {a}"
        )));
    }
    if record.requested_by == by {
        return Err(Error::Refused(format!(
            "{by} asked for this break-glass; a second person must approve it"
        )));
    }
    if !may_approve_override(p, app, env, by)? {
        return Err(Error::Refused(format!(
            "{by} is not an approver of {env} of {app}, so may not approve a break-glass there"
        )));
    }
    record.approved_by = Some(by.into());
    record.approved_at = Some(p.ports.now());
    put_json(store, &key, &record, Precondition::IfMatch(etag)).await?;
    Ok(record)
}

/// The approved break-glass for `run` in `env`, if there is one.
pub async fn approved_override<P: Ports>(
    p: &Pipeline<P>,
    app: &str,
    run: &str,
    env: &str,
) -> Result<Option<OverrideRecord>> {
    Ok(
        get_json::<_, OverrideRecord>(p.ports.store(), &override_key(app, run, env))
            .await?
            .map(|(r, _)| r)
            .filter(|r| r.approved_by.is_some()),
    )
}
