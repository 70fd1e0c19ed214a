//! Whether an environment is frozen at an instant, by its freeze windows
//! ([`crate::config::FreezeWindow`]) and the freezes set by hand, and when to look again.

use chrono::{DateTime, Utc};

use crate::config::{FreezeWindow, WindowKind};

/// Opening times of a window examined at most (a window opening every minute for days).
const MAX_STARTS: usize = 200_000;

/// When the window open at `t` closes (the latest close of the openings that cover `t`),
/// or `None` when it is closed at `t`.
pub fn closes_at(w: &FreezeWindow, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let d = chrono::Duration::from_std(w.duration).ok()?;
    let from = t.checked_sub_signed(d)?.with_timezone(&w.time_zone.0);
    // Openings in (t - duration, t] cover t.
    w.cron
        .schedule()
        .after(&from)
        .take(MAX_STARTS)
        .map(|s| s.with_timezone(&Utc))
        .take_while(|s| *s <= t)
        .filter_map(|s| s.checked_add_signed(d))
        .max()
}

/// The next opening of the window after `t`.
pub fn next_opening(w: &FreezeWindow, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    w.cron
        .schedule()
        .after(&t.with_timezone(&w.time_zone.0))
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
pub fn by_windows(windows: &[&FreezeWindow], t: DateTime<Utc>) -> Option<Frozen> {
    let fmt = |w: &FreezeWindow, at: DateTime<Utc>| {
        at.with_timezone(&w.time_zone.0)
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
    let allow: Vec<&&FreezeWindow> = windows
        .iter()
        .filter(|w| w.kind == WindowKind::Allow)
        .collect();
    if allow.is_empty() || allow.iter().any(|w| closes_at(w, t).is_some()) {
        return None;
    }
    let next = allow
        .iter()
        .filter_map(|w| next_opening(w, t).map(|at| (at, fmt(w, at), w.name.as_str())))
        .min_by_key(|(at, _, _)| *at);
    let names: Vec<&str> = allow.iter().map(|w| w.name.as_str()).collect();
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

    fn window(kind: &str, cron: &str, duration: &str, tz: &str) -> FreezeWindow {
        serde_json::from_value(serde_json::json!({
            "name": "w", "kind": kind, "cron": cron, "duration": duration, "time_zone": tz
        }))
        .unwrap()
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
        let f = by_windows(&[&w], at("2026-11-28T10:00:00Z")).unwrap();
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
        assert_eq!(by_windows(&[&w], at("2026-11-30T10:00:00Z")), None);
        let f = by_windows(&[&w], at("2026-11-28T10:00:00Z")).unwrap();
        assert_eq!(f.until, Some(at("2026-11-30T09:00:00Z")));
        assert!(
            f.reason.starts_with("outside the allow windows (w)"),
            "{}",
            f.reason
        );
        // a deny window wins over an open allow window
        let d = window("deny", "0 12 30 11 *", "1h", "UTC");
        let f = by_windows(&[&w, &d], at("2026-11-30T12:30:00Z")).unwrap();
        assert_eq!(f.until, Some(at("2026-11-30T13:00:00Z")));
    }

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
