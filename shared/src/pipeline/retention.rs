//! Run retention: which finished runs the configuration's `retention` lets go.
//!
//! A run is kept while it is live in an environment, waits for an approval, or is still
//! running; the newest `keep_last` runs of each app are kept whatever their age; the
//! rest are removed once last updated longer ago than `max_age`. Removal is the
//! caller's (`baton gc`, `baton serve`): this module only decides.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::RetentionConfig;
use crate::error::Result;
use crate::ids::RunId;
use crate::pipeline::runs::{self, RunStatus};
use crate::pipeline::{Pipeline, deployments};
use crate::ports::Ports;

/// Why a run is kept or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Live in an environment.
    Live,
    /// Waiting for an approval, or still running.
    Unfinished,
    /// Among the app's newest `keep_last`.
    Recent,
    /// Updated within `max_age`.
    Young,
    /// Finished and older than `max_age`: removed.
    Expired,
}

/// One run and what retention does with it.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub app: String,
    pub run: RunId,
    pub verdict: Verdict,
    pub updated_at: Option<DateTime<Utc>>,
}

/// What retention decides for every run, newest first within each app.
pub async fn decide<P: Ports>(
    p: &Pipeline<P>,
    policy: &RetentionConfig,
    now: DateTime<Utc>,
) -> Result<Vec<Decision>> {
    let mut live = BTreeSet::new();
    for app in &p.config.apps {
        for env in &app.environments {
            if let Some(l) = deployments::live(p, &app.name, &env.name).await? {
                live.insert((app.name.clone(), l.run));
            }
        }
    }
    let cutoff = chrono::Duration::from_std(policy.max_age)
        .ok()
        .and_then(|d| now.checked_sub_signed(d));
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = vec![];
    // Newest first, so the first `keep_last` of an app are its newest.
    for r in runs::list(p).await? {
        let n = seen.entry(r.app.clone()).or_default();
        *n += 1;
        let unfinished = matches!(
            r.status,
            RunStatus::InProgress | RunStatus::Retrying(_) | RunStatus::AwaitingApproval(_)
        );
        let verdict = if live.contains(&(r.app.clone(), r.run.clone())) {
            Verdict::Live
        } else if unfinished {
            Verdict::Unfinished
        } else if *n <= policy.keep_last {
            Verdict::Recent
        } else if match (r.updated_at, cutoff) {
            (Some(at), Some(cutoff)) => at > cutoff,
            // No record time, or a cutoff before any date: keep.
            _ => true,
        } {
            Verdict::Young
        } else {
            Verdict::Expired
        };
        out.push(Decision {
            app: r.app,
            run: r.run,
            verdict,
            updated_at: r.updated_at,
        });
    }
    Ok(out)
}

/// The fewest deploys of an environment its history keeps, whatever `keep_last` says: the
/// one live and one to roll back to.
pub const HISTORY_KEEPS_AT_LEAST: usize = 2;

/// Which keys of an environment's deploy history (`keys`: its keys, oldest first, as the
/// store lists them) retention removes: deploys made longer ago than `max_age`, except
/// the newest `keep_last` (at least [`HISTORY_KEEPS_AT_LEAST`]). A key whose time cannot
/// be read is kept.
pub fn expired_history<'k>(
    keys: &'k [String],
    policy: &RetentionConfig,
    now: DateTime<Utc>,
) -> Vec<&'k str> {
    let Some(cutoff) = chrono::Duration::from_std(policy.max_age)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
    else {
        return vec![];
    };
    let keep = policy.keep_last.max(HISTORY_KEEPS_AT_LEAST);
    let older = keys.len().saturating_sub(keep);
    keys[..older]
        .iter()
        .filter(|k| deployed_at(k).is_some_and(|at| at < cutoff))
        .map(String::as_str)
        .collect()
}

/// When a deploy history key's deploy was made: its name starts with the time in
/// milliseconds (`…/history/<day>/<ms>-<run>.json`, or `…/history/<ms>-<run>.json` as
/// earlier versions wrote it).
fn deployed_at(key: &str) -> Option<DateTime<Utc>> {
    let name = key.rsplit('/').next()?;
    let ms: i64 = name.split('-').next()?.parse().ok()?;
    DateTime::from_timestamp_millis(ms)
}

/// What [`gc`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// The runs removed (or that would be, with `dry_run`).
    pub removed: Vec<Decision>,
    /// Runs kept.
    pub kept: usize,
    /// Deploy history entries removed (or that would be): deploys older than
    /// `retention.max_age`, beyond each environment's newest `keep_last`.
    pub history_removed: usize,
    /// Bytes freed, where the store can tell (the local store); 0 on S3.
    pub bytes_freed: u64,
}

/// Applies the configured retention as if the time were `now`: removes the records and
/// approvals of expired runs (see [`decide`]) and their index entries, the deploy
/// history beyond what [`expired_history`] keeps, and the open-approval markers of days
/// that have passed. With `dry_run`, reports what it would remove and removes nothing.
/// The same on the local state and on a stack's bucket.
pub async fn gc<P: Ports>(p: &Pipeline<P>, now: DateTime<Utc>, dry_run: bool) -> Result<GcReport> {
    use crate::ports::ObjectStore;
    let store = p.ports.store();
    let decisions = decide(p, &p.config.retention, now).await?;
    let mut report = GcReport {
        dry_run,
        ..GcReport::default()
    };
    for d in decisions {
        if d.verdict != Verdict::Expired {
            report.kept += 1;
            continue;
        }
        if !dry_run {
            report.bytes_freed = report
                .bytes_freed
                .saturating_add(
                    store
                        .delete_prefix(&crate::store::run_prefix(&d.app, &d.run))
                        .await?,
                )
                .saturating_add(
                    store
                        .delete_prefix(&format!("approvals/{}/{}/", d.app, d.run))
                        .await?,
                );
        }
        report.removed.push(d);
    }
    if !dry_run && !report.removed.is_empty() {
        let removed: Vec<_> = report.removed.iter().map(|d| d.run.clone()).collect();
        for key in runs::index_keys_of(store, &removed).await? {
            store.delete(&key).await?;
        }
    }
    let (history_removed, history_bytes) = gc_history(p, now, dry_run).await?;
    report.history_removed = history_removed;
    report.bytes_freed = report.bytes_freed.saturating_add(history_bytes);
    if !dry_run {
        // Open-approval markers of days that have passed: every request they name
        // has expired (its record stays with its run).
        let today = now.format("%Y-%m-%d").to_string();
        let prefix = crate::store::OPEN_APPROVALS;
        for key in store.list(prefix).await? {
            if key[prefix.len()..]
                .split('/')
                .next()
                .is_some_and(|day| *day < *today)
            {
                store.delete(&key).await?;
            }
        }
    }
    Ok(report)
}

/// Applies retention to each configured environment's deploy history (see
/// [`expired_history`]); how many entries it removed (or would) and the bytes freed. A
/// day whose entries all go is removed whole, with its segment.
async fn gc_history<P: Ports>(
    p: &Pipeline<P>,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<(usize, u64)> {
    use crate::ports::ObjectStore;
    let store = p.ports.store();
    let mut removed = 0;
    let mut bytes = 0u64;
    for app in &p.config.apps {
        for env in &app.environments {
            let prefix = crate::store::history_prefix(&app.name, &env.name);
            let keys = store.list(&prefix).await?;
            let expired = expired_history(&keys, &p.config.retention, now);
            removed += expired.len();
            if dry_run {
                continue;
            }
            // The day directory of a key filed by day (`history/<day>/<name>`).
            let day_of = |key: &str| {
                let rest = key.get(prefix.len()..)?;
                let (day, _) = rest.split_once('/')?;
                Some(format!("{prefix}{day}/"))
            };
            // Per day: its entries, and how many of them go.
            let mut days: BTreeMap<String, (usize, usize)> = BTreeMap::new();
            for key in &keys {
                if let Some(day) = day_of(key) {
                    days.entry(day).or_default().0 += 1;
                }
            }
            for key in &expired {
                if let Some(day) = day_of(key) {
                    days.entry(day).or_default().1 += 1;
                }
            }
            let mut days_removed = BTreeSet::new();
            for key in &expired {
                match day_of(key) {
                    Some(day) if days.get(&day).is_some_and(|(all, go)| all == go) => {
                        if days_removed.insert(day.clone()) {
                            bytes = bytes.saturating_add(store.delete_prefix(&day).await?);
                        }
                    }
                    _ => store.delete(key).await?,
                }
            }
        }
    }
    Ok((removed, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_age_h: u64, keep_last: usize) -> RetentionConfig {
        RetentionConfig {
            max_age: std::time::Duration::from_secs(max_age_h * 3600),
            keep_last,
            ..RetentionConfig::default()
        }
    }

    /// Old deploys go, except the newest `keep_last` (never fewer than two); young ones
    /// and keys whose time is unreadable stay; legacy keys (a file each) are read too.
    #[test]
    fn history_keeps_young_deploys_and_the_newest() {
        let now = DateTime::parse_from_rfc3339("2026-12-07T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = |h: i64| (now - chrono::Duration::hours(h)).timestamp_millis();
        let h = "deployments/web/production/history/";
        let keys: Vec<String> = vec![
            format!("{h}{:013}-run0.json", at(500)),
            format!("{h}2026-11-17/{:013}-run1.json", at(480)),
            format!("{h}2026-11-17/not-a-time.json"),
            format!("{h}2026-11-27/{:013}-run2.json", at(240)),
            format!("{h}2026-12-06/{:013}-run3.json", at(30)),
            format!("{h}2026-12-07/{:013}-run4.json", at(2)),
            format!("{h}2026-12-07/{:013}-run5.json", at(1)),
        ];
        let names = |v: Vec<&str>| -> Vec<String> {
            v.iter()
                .map(|k| k.rsplit('-').next().unwrap().to_string())
                .collect()
        };
        // Max age 24 h, keep 2: everything older than a day but the newest two.
        assert_eq!(
            names(expired_history(&keys, &policy(24, 2), now)),
            ["run0.json", "run1.json", "run2.json", "run3.json"]
        );
        // Keep 3: run3 is among the newest three.
        assert_eq!(
            names(expired_history(&keys, &policy(24, 3), now)),
            ["run0.json", "run1.json", "run2.json"]
        );
        // keep_last 0 still keeps two (the live deploy and one to roll back to).
        assert_eq!(
            names(expired_history(&keys, &policy(1, 0), now)),
            ["run0.json", "run1.json", "run2.json", "run3.json"]
        );
        // Max age 10 days: only the deploys of 20 days ago go.
        assert_eq!(
            names(expired_history(&keys, &policy(240, 2), now)),
            ["run0.json", "run1.json"]
        );
        assert!(expired_history(&keys[..2], &policy(1, 2), now).is_empty());
    }
}
