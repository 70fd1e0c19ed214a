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
