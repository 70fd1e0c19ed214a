//! `bus`: retry settings of the embedded bus (SQS's redrive policy in AWS).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;

/// Retry settings of the embedded bus (SQS's redrive policy in AWS).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// Deliveries before a message goes to the dead-letter list.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt.
    #[serde(default = "default_initial_backoff", with = "duration")]
    pub initial_backoff: Duration,
    /// Upper bound of the retry delay.
    #[serde(default = "default_max_backoff", with = "duration")]
    pub max_backoff: Duration,
    /// Deliveries `baton serve` runs at once (1–256).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            max_attempts: default_attempts(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            concurrency: default_concurrency(),
        }
    }
}

fn default_attempts() -> u32 {
    5
}
fn default_initial_backoff() -> Duration {
    Duration::from_millis(200)
}
fn default_concurrency() -> usize {
    16
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}

impl BusConfig {
    /// This section's problems (`at` is `bus`).
    pub(super) fn check(&self, at: &str, p: &mut Vec<String>) {
        if self.max_attempts == 0 {
            p.push(format!("{at}.max_attempts: must be at least 1"));
        }
        if !(1..=256).contains(&self.concurrency) {
            p.push(format!(
                "{at}.concurrency: must be 1 to 256 deliveries at once, not {}",
                self.concurrency
            ));
        }
    }
}
