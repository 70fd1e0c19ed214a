//! `retention`: how long finished runs are kept.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;

/// How long finished runs' records (stage records, run log, test output, approvals)
/// are kept: `baton gc` applies it, and `baton serve` does every `every`. A run that is
/// live in an environment, waits for an approval or is still running is always kept,
/// and so are the last `keep_last` runs of each app whatever their age. What is live
/// where is never removed; each environment's deploy history (what rollback uses) loses
/// its deploys older than `max_age` beyond its newest `keep_last` (at least 2).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Finished runs last updated longer ago than this are removed.
    #[serde(default = "default_max_age", with = "duration")]
    pub max_age: Duration,
    /// The newest runs of each app kept whatever their age.
    #[serde(default = "default_keep_last")]
    pub keep_last: usize,
    /// How often `baton serve` applies the policy; `0s` turns that off (`baton gc`
    /// still applies it).
    #[serde(default = "default_every", with = "duration")]
    pub every: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            max_age: default_max_age(),
            keep_last: default_keep_last(),
            every: default_every(),
        }
    }
}

fn default_max_age() -> Duration {
    Duration::from_secs(90 * 24 * 3600)
}
fn default_keep_last() -> usize {
    50
}
fn default_every() -> Duration {
    Duration::from_secs(3600)
}

impl RetentionConfig {
    pub(super) fn check(&self, at: &str, p: &mut Vec<String>) {
        if self.max_age < Duration::from_secs(3600) {
            p.push(format!(
                "{at}.max_age: must be at least 1h (a younger run may still be retried)"
            ));
        }
        if !self.every.is_zero() && self.every < Duration::from_secs(60) {
            p.push(format!("{at}.every: must be 0s (off) or at least 1m"));
        }
    }
}
