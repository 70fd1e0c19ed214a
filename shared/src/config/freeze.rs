//! Freeze windows: recurring times when deploys wait (`deny`) or the only times they may
//! happen (`allow`), globally (`freeze:` at the top, optionally for some environments)
//! and per environment (`environments[].freeze:`). Each window opens at the times of a
//! five-field cron expression read in its time zone (DST-correct: a window opening at
//! 02:30 opens at the same wall-clock time on both sides of a change) and stays open
//! for its duration. Rollbacks are never blocked; `baton freeze` adds freezes by hand.

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::policy::freeze::WindowKind;

/// `freeze:` of one environment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreezeConfig {
    #[serde(default)]
    pub windows: Vec<FreezeWindow>,
}

/// `freeze:` at the top of the configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalFreezeConfig {
    /// Windows for every app (each optionally for some environments only).
    #[serde(default)]
    pub windows: Vec<FreezeWindow>,
    /// How often a deploy waiting on a freeze or a rollback hold looks again, at most.
    #[serde(default = "default_recheck", with = "super::duration")]
    pub recheck: Duration,
}

fn default_recheck() -> Duration {
    Duration::from_secs(60)
}

impl Default for GlobalFreezeConfig {
    fn default() -> Self {
        GlobalFreezeConfig {
            windows: vec![],
            recheck: default_recheck(),
        }
    }
}

impl GlobalFreezeConfig {
    /// Problems, each prefixed by `at`; `envs`: every app's environments.
    pub fn check(&self, at: &str, envs: &[&str], p: &mut Vec<String>) {
        check_windows(&self.windows, at, true, envs, p);
        if self.recheck < Duration::from_millis(100) || self.recheck > Duration::from_secs(15 * 60)
        {
            p.push(format!("{at}.recheck: from 100ms to 15m"));
        }
    }
}

/// One recurring window.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreezeWindow {
    /// Shown when it blocks a deploy.
    pub name: String,
    pub kind: WindowKind,
    /// When the window opens: `minute hour day-of-month month day-of-week`, in
    /// `time_zone` (e.g. `"0 18 * * FRI"`).
    pub cron: CronSpec,
    /// How long it stays open each time.
    #[serde(with = "super::duration")]
    pub duration: Duration,
    /// An IANA time zone name (`Europe/Berlin`); UTC when absent.
    #[serde(default)]
    pub time_zone: TimeZone,
    /// Global windows only: the environments it applies to (all when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environments: Vec<String>,
}

impl FreezeWindow {
    /// The window, for [`crate::policy::freeze`].
    pub fn window(&self) -> crate::policy::freeze::Window<'_> {
        crate::policy::freeze::Window {
            name: &self.name,
            kind: self.kind,
            schedule: self.cron.schedule(),
            duration: self.duration,
            tz: self.time_zone.0,
        }
    }

    /// Whether it applies to environment `env`.
    pub fn applies_to(&self, env: &str) -> bool {
        self.environments.is_empty() || self.environments.iter().any(|e| e == env)
    }
}

impl FreezeConfig {
    /// Problems, each prefixed by `at`.
    pub fn check(&self, at: &str, envs: &[&str], p: &mut Vec<String>) {
        check_windows(&self.windows, at, false, envs, p);
    }
}

/// Problems of `windows`, each prefixed by `at`; `global` allows `environments`.
fn check_windows(
    windows: &[FreezeWindow],
    at: &str,
    global: bool,
    envs: &[&str],
    p: &mut Vec<String>,
) {
    {
        let mut names = std::collections::BTreeSet::new();
        for (i, w) in windows.iter().enumerate() {
            let at = format!("{at}.windows[{i}]");
            if w.name.trim().is_empty() {
                p.push(format!("{at}.name: a window needs a name"));
            }
            if !names.insert(w.name.clone()) {
                p.push(format!("{at}.name: {:?} is declared twice", w.name));
            }
            if w.duration < Duration::from_secs(60) {
                p.push(format!("{at}.duration: at least 1m"));
            }
            if !global && !w.environments.is_empty() {
                p.push(format!(
                    "{at}.environments: only global windows name environments; this one belongs to its environment"
                ));
            }
            for e in &w.environments {
                if !envs.contains(&e.as_str()) {
                    p.push(format!(
                        "{at}.environments: {e:?} is no app's environment (declared: {})",
                        envs.join(", ")
                    ));
                }
            }
        }
    }
}

/// A five-field cron expression, parsed.
#[derive(Debug, Clone)]
pub struct CronSpec {
    text: String,
    schedule: cron::Schedule,
}

impl CronSpec {
    pub fn schedule(&self) -> &cron::Schedule {
        &self.schedule
    }
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for CronSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<CronSpec, String> {
        let fields = s.split_whitespace().count();
        if fields != 5 {
            return Err(format!(
                "{s:?} has {fields} fields; give five: minute hour day-of-month month day-of-week (e.g. \"0 18 * * FRI\")"
            ));
        }
        // The cron crate counts seconds first.
        let schedule = cron::Schedule::from_str(&format!("0 {s}"))
            .map_err(|e| format!("{s:?} is not a cron expression: {e}"))?;
        Ok(CronSpec {
            text: s.to_string(),
            schedule,
        })
    }
}

impl Serialize for CronSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for CronSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<CronSpec, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// An IANA time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeZone(pub chrono_tz::Tz);

impl Default for TimeZone {
    fn default() -> TimeZone {
        TimeZone(chrono_tz::UTC)
    }
}

impl Serialize for TimeZone {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.name())
    }
}

impl<'de> Deserialize<'de> for TimeZone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TimeZone, D::Error> {
        let s = String::deserialize(d)?;
        chrono_tz::Tz::from_str(&s).map(TimeZone).map_err(|_| {
            serde::de::Error::custom(format!(
                "{s:?} is not an IANA time zone name (e.g. \"Europe/Berlin\", \"America/New_York\", \"UTC\")"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_expressions_and_time_zones_are_checked_with_what_to_write() {
        let e = serde_json::from_value::<FreezeWindow>(serde_json::json!({
            "name": "w", "kind": "deny", "cron": "0 0 18 * * FRI", "duration": "1h"
        }))
        .unwrap_err()
        .to_string();
        assert!(e.contains("has 6 fields; give five"), "{e}");
        let e = serde_json::from_value::<FreezeWindow>(serde_json::json!({
            "name": "w", "kind": "deny", "cron": "0 18 * * FRI", "duration": "1h",
            "time_zone": "Mars/Olympus"
        }))
        .unwrap_err()
        .to_string();
        assert!(e.contains("not an IANA time zone name"), "{e}");
    }
}
