//! DORA's four keys per app and environment, from Baton's own run records (`baton dora`):
//!
//! - **deployments** (and per day): deploys that succeeded in the window, rollbacks
//!   excluded;
//! - **lead time**: push → deployed in that environment, median and 90th percentile;
//! - **change failure rate**: deploys that failed (a rollout failure, rolled back or not),
//!   failed their verification, or were later rolled back by an operator, over all deploys that changed the
//!   environment or tried to;
//! - **time to restore**: from a failed deploy to a working image live again (at once
//!   when the failed rollout was put back automatically; else the next successful deploy
//!   or rollback), and from a deploy an operator rolled back to that rollback; median.
//!
//! [`compute`] is pure over [`RunFacts`]; [`collect`] reads them from the store.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::error::Result;
use crate::event::{FailureCode, Payload};
use crate::pipeline::Pipeline;
use crate::pipeline::runs;
use crate::ports::Ports;

/// What one run did, as far as DORA is concerned.
#[derive(Debug, Clone, PartialEq)]
pub struct RunFacts {
    pub app: String,
    pub pushed_at: DateTime<Utc>,
    pub deploys: Vec<DeployFact>,
}

/// One deploy of a run to an environment.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployFact {
    pub environment: String,
    pub at: DateTime<Utc>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// Deployed; `rolled_back_at`: an operator later rolled it back.
    Succeeded {
        rolled_back_at: Option<DateTime<Utc>>,
    },
    /// The rollout failed; `restored`: the previous image was put back at once.
    Failed { restored: bool },
}

/// The four keys for one app's environment.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Figures {
    pub app: String,
    pub environment: String,
    pub deployments: u32,
    pub deployments_per_day: f64,
    /// Seconds, push → deployed.
    pub lead_time_p50: Option<f64>,
    pub lead_time_p90: Option<f64>,
    pub change_failures: u32,
    /// `change_failures` over deploy attempts; `None` without any.
    pub change_failure_rate: Option<f64>,
    /// Seconds to restore, median over the failures restored in the window.
    pub time_to_restore_p50: Option<f64>,
    /// Failures not yet restored.
    pub unrestored: u32,
}

/// A duration in seconds for people, in two units at most: `9d 6h`, `6h 48m`, `48m 22s`,
/// `22s`, `350ms`.
pub fn human(secs: f64) -> String {
    if secs < 1.0 {
        return format!("{}ms", (secs.max(0.0) * 1000.0).round() as u64);
    }
    let s = secs.round() as u64;
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    // Nearest rank.
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank.min(sorted.len()) - 1).copied()
}

fn secs(d: Duration) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

/// The figures of every `(app, environment)` in `envs`, over deploys in `[since, until)`.
pub fn compute(
    runs: &[RunFacts],
    envs: &[(String, String)],
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Vec<Figures> {
    let days = (secs(until - since) / 86_400.0).max(1.0 / 24.0);
    // Every deploy of each environment, in time order (restores need what came next).
    let mut by_env: BTreeMap<(&str, &str), Vec<(&RunFacts, &DeployFact)>> = BTreeMap::new();
    for r in runs {
        for d in &r.deploys {
            by_env
                .entry((r.app.as_str(), d.environment.as_str()))
                .or_default()
                .push((r, d));
        }
    }
    for list in by_env.values_mut() {
        list.sort_by_key(|(_, d)| d.at);
    }
    envs.iter()
        .map(|(app, env)| {
            let all = by_env
                .get(&(app.as_str(), env.as_str()))
                .cloned()
                .unwrap_or_default();
            let mut deployments = 0;
            let mut failures = 0;
            let mut attempts = 0;
            let mut unrestored = 0;
            let mut leads = vec![];
            let mut restores = vec![];
            for (i, (run, d)) in all.iter().enumerate() {
                if d.at < since || d.at >= until {
                    continue;
                }
                attempts += 1;
                match d.outcome {
                    Outcome::Succeeded { rolled_back_at } => {
                        deployments += 1;
                        leads.push(secs(d.at - run.pushed_at).max(0.0));
                        if let Some(back) = rolled_back_at {
                            failures += 1;
                            restores.push(secs(back - d.at).max(0.0));
                        }
                    }
                    Outcome::Failed { restored: true } => {
                        failures += 1;
                        restores.push(0.0);
                    }
                    Outcome::Failed { restored: false } => {
                        failures += 1;
                        // Restored by the next deploy that succeeded here.
                        match all[i + 1..]
                            .iter()
                            .find(|(_, n)| matches!(n.outcome, Outcome::Succeeded { .. }))
                        {
                            Some((_, next)) => restores.push(secs(next.at - d.at).max(0.0)),
                            None => unrestored += 1,
                        }
                    }
                }
            }
            leads.sort_by(f64::total_cmp);
            restores.sort_by(f64::total_cmp);
            Figures {
                app: app.clone(),
                environment: env.clone(),
                deployments,
                deployments_per_day: f64::from(deployments) / days,
                lead_time_p50: quantile(&leads, 0.5),
                lead_time_p90: quantile(&leads, 0.9),
                change_failures: failures,
                change_failure_rate: (attempts > 0)
                    .then(|| f64::from(failures) / f64::from(attempts)),
                time_to_restore_p50: quantile(&restores, 0.5),
                unrestored,
            }
        })
        .collect()
}

/// The facts of every run whose records are kept (what `baton status` lists).
pub async fn collect<P: Ports>(p: &Pipeline<P>) -> Result<Vec<RunFacts>> {
    let mut out = vec![];
    let mut after: Option<String> = None;
    loop {
        let page = runs::page(p, 500, after.as_deref()).await?;
        for r in &page.runs {
            let view = runs::view(p, &r.app, &r.run).await?;
            let mut pushed_at = None;
            let mut deploys = vec![];
            for e in &view.events {
                let env = e.ctx().environment.clone().unwrap_or_default();
                match &e.payload {
                    Payload::ImageBuilt(b) => pushed_at = Some(b.pushed_at),
                    Payload::DeploySucceeded(d) if !d.rollback => deploys.push(DeployFact {
                        environment: env,
                        at: e.time,
                        outcome: Outcome::Succeeded {
                            rolled_back_at: None,
                        },
                    }),
                    // A deploy whose checks failed is a failed change, restored when
                    // the previous image went back.
                    Payload::VerificationFailed(_) => {
                        if let Some(d) = deploys.iter_mut().rev().find(|d| d.environment == env)
                            && let Outcome::Succeeded { rolled_back_at } = &mut d.outcome
                        {
                            *rolled_back_at = Some(e.time);
                        }
                    }
                    Payload::DeployFailed(d) if d.code != FailureCode::Superseded => {
                        deploys.push(DeployFact {
                            environment: env,
                            at: e.time,
                            outcome: Outcome::Failed {
                                restored: d.rolled_back,
                            },
                        })
                    }
                    _ => {}
                }
            }
            for mark in &view.rolled_back {
                if let Some(d) = deploys
                    .iter_mut()
                    .filter(|d| d.environment == mark.environment && d.at <= mark.at)
                    .last()
                    && let Outcome::Succeeded { rolled_back_at } = &mut d.outcome
                {
                    *rolled_back_at = Some(mark.at);
                }
            }
            if let Some(pushed_at) = pushed_at {
                out.push(RunFacts {
                    app: r.app.clone(),
                    pushed_at,
                    deploys,
                });
            }
        }
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(human(0.35), "350ms");
        assert_eq!(human(22.0), "22s");
        assert_eq!(human(2902.0), "48m 22s");
        assert_eq!(human(24_480.0), "6h 48m");
        assert_eq!(human(799_200.0), "9d 6h");
    }

    fn t(h: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + Duration::hours(h)
    }

    fn ok(env: &str, at: i64) -> DeployFact {
        DeployFact {
            environment: env.into(),
            at: t(at),
            outcome: Outcome::Succeeded {
                rolled_back_at: None,
            },
        }
    }

    #[test]
    fn the_four_keys_of_a_known_history() {
        // Ten days. Four pushes:
        //  r1 pushed 0h: staging 1h, production 3h            (lead 3h)
        //  r2 pushed 24h: staging 25h, production 30h, rolled back by an operator at 32h
        //  r3 pushed 48h: staging 49h, production fails at 50h (not put back), r4 restores
        //  r4 pushed 60h: staging 61h, production 70h         (lead 10h; restores r3: 20h)
        //  r5 pushed 80h: production rollout fails at 81h and is put back at once
        let mut r2_prod = ok("production", 30);
        r2_prod.outcome = Outcome::Succeeded {
            rolled_back_at: Some(t(32)),
        };
        let runs = vec![
            RunFacts {
                app: "web".into(),
                pushed_at: t(0),
                deploys: vec![ok("staging", 1), ok("production", 3)],
            },
            RunFacts {
                app: "web".into(),
                pushed_at: t(24),
                deploys: vec![ok("staging", 25), r2_prod],
            },
            RunFacts {
                app: "web".into(),
                pushed_at: t(48),
                deploys: vec![
                    ok("staging", 49),
                    DeployFact {
                        environment: "production".into(),
                        at: t(50),
                        outcome: Outcome::Failed { restored: false },
                    },
                ],
            },
            RunFacts {
                app: "web".into(),
                pushed_at: t(60),
                deploys: vec![ok("staging", 61), ok("production", 70)],
            },
            RunFacts {
                app: "web".into(),
                pushed_at: t(80),
                deploys: vec![DeployFact {
                    environment: "production".into(),
                    at: t(81),
                    outcome: Outcome::Failed { restored: true },
                }],
            },
        ];
        let envs = vec![
            ("web".to_string(), "staging".to_string()),
            ("web".to_string(), "production".to_string()),
        ];
        let f = compute(&runs, &envs, t(0), t(240));
        let (staging, production) = (&f[0], &f[1]);
        assert_eq!(staging.deployments, 4);
        assert_eq!(staging.deployments_per_day, 0.4);
        assert_eq!(staging.lead_time_p50, Some(3600.0));
        assert_eq!(staging.change_failure_rate, Some(0.0));
        assert_eq!(staging.time_to_restore_p50, None);

        // production: 3 succeeded (r1, r2, r4), r2 rolled back, r3 and r5 failed.
        assert_eq!(production.deployments, 3);
        assert_eq!(production.deployments_per_day, 0.3);
        // leads 3h, 6h, 10h
        assert_eq!(production.lead_time_p50, Some(6.0 * 3600.0));
        assert_eq!(production.lead_time_p90, Some(10.0 * 3600.0));
        assert_eq!(production.change_failures, 3);
        assert_eq!(production.change_failure_rate, Some(3.0 / 5.0));
        // restores: r2 2h, r3 20h, r5 0 → median 2h
        assert_eq!(production.time_to_restore_p50, Some(2.0 * 3600.0));
        assert_eq!(production.unrestored, 0);

        // A window that ends before r4: r3's failure is not yet restored... but r4 is
        // still seen as its restore (the facts run past the window); only deploys inside
        // the window count.
        let f = compute(&runs, &envs, t(40), t(60));
        assert_eq!((f[1].deployments, f[1].change_failures), (0, 1));
        assert_eq!(f[1].change_failure_rate, Some(1.0));
        // An environment without deploys has no rates.
        let f = compute(&[], &envs, t(0), t(24));
        assert_eq!(
            (
                f[0].deployments,
                f[0].change_failure_rate,
                f[0].lead_time_p50
            ),
            (0, None, None)
        );
    }
}
