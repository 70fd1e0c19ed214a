//! Whether freeze windows freeze an environment at an instant, and when to look again.
//! The configuration's windows (`freeze.windows[]`) come here as [`Window`]s.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Whether deploys wait while a window is open, or may happen only then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// Deploys wait while the window is open (a holiday, a quiet weekend).
    Deny,
    /// Deploys happen only while one of the allow windows is open (business hours).
    Allow,
}

/// One recurring window: it opens at each time of `schedule` read in `tz` and stays
/// open for `duration`.
#[derive(Debug, Clone, Copy)]
pub struct Window<'a> {
    pub name: &'a str,
    pub kind: WindowKind,
    pub schedule: &'a cron::Schedule,
    pub duration: std::time::Duration,
    pub tz: chrono_tz::Tz,
}

/// Opening times of a window examined at most (a window opening every minute for days).
const MAX_STARTS: usize = 200_000;

/// When the window open at `t` closes (the latest close of the openings that cover `t`),
/// or `None` when it is closed at `t`.
pub fn closes_at(w: &Window, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let d = chrono::Duration::from_std(w.duration).ok()?;
    let from = t.checked_sub_signed(d)?.with_timezone(&w.tz);
    // Openings in (t - duration, t] cover t.
    w.schedule
        .after(&from)
        .take(MAX_STARTS)
        .map(|s| s.with_timezone(&Utc))
        .take_while(|s| *s <= t)
        .filter_map(|s| s.checked_add_signed(d))
        .max()
}

/// The next opening of the window after `t`.
pub fn next_opening(w: &Window, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    w.schedule
        .after(&t.with_timezone(&w.tz))
        .next()
        .map(|s| s.with_timezone(&Utc))
}

/// Why an environment is frozen, and when it may open.
#[derive(Debug, Clone, PartialEq)]
pub struct Frozen {
    pub reason: String,
    /// When the windows next let deploys through (`None`: a freeze set by hand, until
    /// someone lifts it).
    pub until: Option<DateTime<Utc>>,
}

/// Whether the windows freeze an environment at `t`: an open deny window, or allow
/// windows of which none is open.
pub fn by_windows(windows: &[Window], t: DateTime<Utc>) -> Option<Frozen> {
    let fmt = |w: &Window, at: DateTime<Utc>| {
        at.with_timezone(&w.tz)
            .format("%Y-%m-%d %H:%M %Z")
            .to_string()
    };
    let mut denied: Option<(DateTime<Utc>, String)> = None;
    for w in windows.iter().filter(|w| w.kind == WindowKind::Deny) {
        if let Some(close) = closes_at(w, t)
            && denied.as_ref().is_none_or(|(c, _)| close > *c)
        {
            denied = Some((
                close,
                format!("freeze window {} is open until {}", w.name, fmt(w, close)),
            ));
        }
    }
    if let Some((until, reason)) = denied {
        return Some(Frozen {
            reason,
            until: Some(until),
        });
    }
    let allow: Vec<&Window> = windows
        .iter()
        .filter(|w| w.kind == WindowKind::Allow)
        .collect();
    if allow.is_empty() || allow.iter().any(|w| closes_at(w, t).is_some()) {
        return None;
    }
    let next = allow
        .iter()
        .filter_map(|w| next_opening(w, t).map(|at| (at, fmt(w, at), w.name)))
        .min_by_key(|(at, _, _)| *at);
    let names: Vec<&str> = allow.iter().map(|w| w.name).collect();
    Some(Frozen {
        reason: format!(
            "outside the allow windows ({}){}",
            names.join(", "),
            next.as_ref()
                .map(|(_, shown, name)| format!("; {name} opens {shown}"))
                .unwrap_or_default()
        ),
        until: next.map(|(at, _, _)| at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::str::FromStr;

    /// A window named `w` (the schedule leaked: tests only).
    fn window(kind: &str, cron: &str, duration: &str, tz: &str) -> Window<'static> {
        Window {
            name: "w",
            kind: if kind == "deny" {
                WindowKind::Deny
            } else {
                WindowKind::Allow
            },
            schedule: Box::leak(Box::new(
                cron::Schedule::from_str(&format!("0 {cron}")).unwrap(),
            )),
            duration: humantime::parse_duration(duration).unwrap(),
            tz: chrono_tz::Tz::from_str(tz).unwrap(),
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_deny_window_is_open_for_its_duration_from_each_opening() {
        // Fridays 18:00 Berlin time for 62 hours (until Monday 08:00).
        let w = window("deny", "0 18 * * FRI", "62h", "Europe/Berlin");
        // Friday 2026-11-27 18:00 CET = 17:00 UTC.
        assert_eq!(closes_at(&w, at("2026-11-27T16:59:00Z")), None);
        assert_eq!(
            closes_at(&w, at("2026-11-27T17:00:00Z")),
            Some(at("2026-11-30T07:00:00Z"))
        );
        assert_eq!(
            closes_at(&w, at("2026-11-29T12:00:00Z")),
            Some(at("2026-11-30T07:00:00Z"))
        );
        assert_eq!(closes_at(&w, at("2026-11-30T07:00:00Z")), None);
        let f = by_windows(&[w], at("2026-11-28T10:00:00Z")).unwrap();
        assert_eq!(f.until, Some(at("2026-11-30T07:00:00Z")));
        assert!(
            f.reason.contains("until 2026-11-30 08:00 CET"),
            "{}",
            f.reason
        );
    }

    #[test]
    fn windows_follow_the_wall_clock_across_daylight_saving_changes() {
        // Every day at 02:30 New York time for 1 hour. On 2026-03-08 clocks jump from
        // 02:00 to 03:00 EST→EDT: 02:30 does not exist that day.
        let w = window("deny", "30 2 * * *", "1h", "America/New_York");
        // 2026-03-07 02:30 EST = 07:30 UTC.
        assert!(closes_at(&w, at("2026-03-07T07:45:00Z")).is_some());
        // 2026-03-09 02:30 EDT = 06:30 UTC (one hour earlier in UTC than before).
        assert!(closes_at(&w, at("2026-03-09T06:45:00Z")).is_some());
        assert!(closes_at(&w, at("2026-03-09T07:45:00Z")).is_none());
        // In Berlin, 2026-10-25 03:00 CEST → 02:00 CET: a 01:00 window opens at 23:00
        // UTC the day before, and at 00:00 UTC after the change.
        let b = window("deny", "0 1 * * *", "30m", "Europe/Berlin");
        assert!(closes_at(&b, at("2026-10-24T23:10:00Z")).is_some());
        assert!(closes_at(&b, at("2026-10-26T00:10:00Z")).is_some());
        assert!(closes_at(&b, at("2026-10-25T23:10:00Z")).is_none());
    }

    #[test]
    fn allow_windows_freeze_everything_outside_them() {
        let w = window("allow", "0 9 * * MON-FRI", "8h", "UTC");
        assert_eq!(by_windows(&[w], at("2026-11-30T10:00:00Z")), None);
        let f = by_windows(&[w], at("2026-11-28T10:00:00Z")).unwrap();
        assert_eq!(f.until, Some(at("2026-11-30T09:00:00Z")));
        assert!(
            f.reason.starts_with("outside the allow windows (w)"),
            "{}",
            f.reason
        );
        // a deny window wins over an open allow window
        let d = window("deny", "0 12 30 11 *", "1h", "UTC");
        let f = by_windows(&[w, d], at("2026-11-30T12:30:00Z")).unwrap();
        assert_eq!(f.until, Some(at("2026-11-30T13:00:00Z")));
    }
}
