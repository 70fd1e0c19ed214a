//! verify: `deploy.succeeded` of an environment with checks → `verification.passed` /
//! `verification.failed`. Runs the environment's checks (HTTP, PromQL, and the test
//! runners) on their intervals through the soak: each delivery evaluates the checks that
//! are due, records where they stand and hands the message back until the next one is
//! due, so no function sleeps. A check that fails more than it may ends it: the report
//! carries every check's evidence, and with `rollback` (the default) the deploy stage,
//! which alone holds the target's credentials, puts the previous image back.
//!
//! Promote and the next environment's gate wait for `verification.passed` where an
//! environment has checks.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{CheckConfig, NoData, VerifyConfig};
use crate::error::{Error, Result};
use crate::event::{CheckOutcome, Event, EventType, Payload, VerificationReport};
use crate::pipeline::Pipeline;
use crate::pipeline::stage::{
    Consumes, Input, RecordKey, Stage, StageCtx, StageName, StageSpec, Step, per_environment,
};
use crate::ports::{CheckTarget, Probe, TestProgress, TestRequest, TestRunner, VerifyPorts};

const CONSUMES: &[EventType] = &[EventType::DeploySucceeded];

/// How many observations a check keeps as evidence.
const EVIDENCE: usize = 5;

/// The verify stage.
pub struct Verify;

pub static SPEC: StageSpec = StageSpec {
    name: StageName::Verify,
    consumes: Consumes::Events(CONSUMES),
    per_environment: true,
    reports_failures: true,
    may_hold: &[
        "logs",
        "store:config",
        "store:runs",
        "store:runs:write",
        "store:list",
        "queue",
        "publish",
        "invoke-functions",
        "k8s:verify",
    ],
    never: "targets; registry writes; other environments",
};

/// The checks of the environment a deploy event names, unless there are none or the
/// deploy was a rollback (never verified: it is the way back).
pub(crate) fn checks_for<'a, P: crate::ports::Ports>(
    p: &'a Pipeline<P>,
    e: &Event,
) -> Option<&'a VerifyConfig> {
    let Payload::DeploySucceeded(d) = &e.payload else {
        return None;
    };
    if d.rollback {
        return None;
    }
    let ctx = e.ctx();
    p.config
        .app(&ctx.app)
        .ok()?
        .environment(ctx.environment.as_deref()?)
        .ok()?
        .verify
        .as_ref()
}

impl<P: VerifyPorts> Stage<P> for Verify {
    const SPEC: &'static StageSpec = &SPEC;

    fn record(p: &Pipeline<P>, input: &Input) -> Result<Option<RecordKey>> {
        match input {
            Input::Event(e) if checks_for(p, e).is_some() => {
                per_environment(StageName::Verify, input).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// A failed verification that rolled nothing back may be run again.
    fn may_retry(outputs: &[Event]) -> bool {
        outputs
            .iter()
            .any(|e| matches!(&e.payload, Payload::VerificationFailed(v) if !v.rollback))
    }

    async fn run(p: &Pipeline<P>, input: &Input, ctx: &StageCtx) -> Result<Step> {
        step(p, input.expect_event(StageName::Verify, CONSUMES)?, ctx).await
    }
}

/// Where the checks stand between deliveries (the stage record's progress).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Progress {
    started: DateTime<Utc>,
    checks: Vec<CheckState>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct CheckState {
    /// When it is evaluated next; now when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next_at: Option<DateTime<Utc>>,
    runs: u32,
    failures: u32,
    consecutive: u32,
    evidence: VecDeque<String>,
    /// A runner check: its outcome once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    finished: Option<bool>,
    /// A runner check: the runner's state while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    runner: Option<serde_json::Value>,
}

impl CheckState {
    fn observe(&mut self, ok: bool, evidence: String, now: DateTime<Utc>) {
        self.runs = self.runs.saturating_add(1);
        if ok {
            self.consecutive = self.consecutive.saturating_add(1);
        } else {
            self.failures = self.failures.saturating_add(1);
            self.consecutive = 0;
        }
        self.note(format!(
            "{} {}",
            now.format("%H:%M:%S"),
            one_line(&evidence)
        ));
    }

    fn note(&mut self, line: String) {
        self.evidence.push_back(line);
        while self.evidence.len() > EVIDENCE {
            self.evidence.pop_front();
        }
    }
}

/// Evidence as one bounded line: what a service or a query said is not trusted to be
/// short or printable.
fn one_line(s: &str) -> String {
    const MAX: usize = 240;
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX)
        .collect();
    if s.chars().count() > MAX {
        out.push('…');
    }
    out
}

/// Where one check stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Failed,
    Satisfied,
    Pending,
}

fn verdict(c: &CheckConfig, s: &CheckState) -> Verdict {
    let (allowed, needed) = match (&c.http, &c.prometheus) {
        (Some(h), _) => (h.allowed_failures, h.successes),
        (_, Some(q)) => (q.allowed_failures, q.successes),
        _ => {
            return match s.finished {
                Some(true) => Verdict::Satisfied,
                Some(false) => Verdict::Failed,
                None => Verdict::Pending,
            };
        }
    };
    if s.failures > allowed {
        Verdict::Failed
    } else if s.consecutive >= needed {
        Verdict::Satisfied
    } else {
        Verdict::Pending
    }
}

fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

async fn step<P: VerifyPorts>(p: &Pipeline<P>, input: &Event, sctx: &StageCtx) -> Result<Step> {
    let ctx = input.ctx();
    let env_name = ctx.environment.clone().unwrap_or_default();
    let Some(cfg) = checks_for(p, input) else {
        return Ok(Step::Done {
            outputs: vec![],
            note: Some(format!("{env_name}: no checks")),
        });
    };
    let now = sctx.now;
    let recorded = match &sctx.progress {
        Some(v) => Some(
            serde_json::from_value::<Progress>(v.clone())
                .map_err(|e| Error::permanent("verify progress", format!("unreadable: {e}")))?,
        ),
        None => None,
    };
    // A changed list of checks starts the verification again.
    let mut progress = recorded
        .filter(|pr| pr.checks.len() == cfg.checks.len())
        .unwrap_or_else(|| Progress {
            started: now,
            checks: vec![CheckState::default(); cfg.checks.len()],
        });
    for (i, c) in cfg.checks.iter().enumerate() {
        let due = progress.checks[i].next_at.is_none_or(|t| t <= now);
        let state = &mut progress.checks[i];
        if !due || state.finished.is_some() || verdict(c, state) == Verdict::Failed {
            continue;
        }
        let target = CheckTarget {
            environment: env_name.clone(),
            check: cfg.check_name(i),
        };
        evaluate(p, c, state, sctx, ctx, target).await?;
    }
    let verdicts: Vec<Verdict> = cfg
        .checks
        .iter()
        .zip(&progress.checks)
        .map(|(c, s)| verdict(c, s))
        .collect();
    let soak_end = after(progress.started, cfg.soak);
    let elapsed = now.signed_duration_since(progress.started);
    let report = |summary: String, rollback: bool| VerificationReport {
        ctx: ctx.clone(),
        summary,
        checks: outcomes(cfg, &progress, &verdicts),
        duration_ms: elapsed.num_milliseconds().max(0) as u64,
        rollback,
    };
    if let Some(i) = verdicts.iter().position(|v| *v == Verdict::Failed) {
        let s = &progress.checks[i];
        let last = s.evidence.back().cloned().unwrap_or_default();
        let summary = format!(
            "{}: {} failure(s) in {} run(s){}: {last}",
            cfg.check_name(i),
            s.failures,
            s.runs,
            allowed_of(&cfg.checks[i])
                .map(|a| format!(" (allowed {a})"))
                .unwrap_or_default()
        );
        let rollback = cfg.rollback;
        return Ok(Step::Done {
            note: Some(format!(
                "{env_name}: verification failed: {summary}{}",
                if rollback {
                    "; rolling back"
                } else {
                    "; rollback off"
                }
            )),
            outputs: vec![Payload::VerificationFailed(report(summary, rollback))],
        });
    }
    let deadline = after(progress.started, cfg.deadline());
    let all_passed = verdicts.iter().all(|v| *v == Verdict::Satisfied);
    if !all_passed && now >= deadline {
        let pending: Vec<String> = verdicts
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != Verdict::Satisfied)
            .map(|(i, _)| cfg.check_name(i))
            .collect();
        let summary = format!(
            "not passed within {} of the deploy: {} still pending",
            humantime::format_duration(cfg.deadline()),
            pending.join(", ")
        );
        return Ok(Step::Done {
            note: Some(format!("{env_name}: verification failed: {summary}")),
            outputs: vec![Payload::VerificationFailed(report(summary, cfg.rollback))],
        });
    }
    if now >= soak_end && all_passed {
        let soak = if cfg.soak.is_zero() {
            String::new()
        } else {
            format!(" through a {} soak", humantime::format_duration(cfg.soak))
        };
        let summary = format!("{} check(s) passed{soak}", cfg.checks.len());
        return Ok(Step::Done {
            note: Some(format!("{env_name}: {summary}")),
            outputs: vec![Payload::VerificationPassed(report(summary, false))],
        });
    }
    // Next look: the earliest due check, the end of the soak, or the deadline.
    let mut wake = if now < soak_end { soak_end } else { deadline };
    for (s, v) in progress.checks.iter().zip(&verdicts) {
        if s.finished.is_none()
            && *v != Verdict::Failed
            && let Some(t) = s.next_at
            && t < wake
        {
            wake = t;
        }
    }
    let wait = wake
        .signed_duration_since(now)
        .to_std()
        .unwrap_or_default()
        .clamp(Duration::from_millis(100), p.settings.max_wait);
    let pending: Vec<String> = verdicts
        .iter()
        .enumerate()
        .filter(|(_, v)| **v == Verdict::Pending)
        .map(|(i, _)| cfg.check_name(i))
        .collect();
    let note = if pending.is_empty() {
        format!(
            "{env_name}: checks passing; soak ends {}",
            soak_end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    } else {
        format!("{env_name}: verifying: waiting on {}", pending.join(", "))
    };
    Ok(Step::Wait {
        after: wait,
        progress: serde_json::to_value(&progress).unwrap_or_default(),
        note,
        notices: vec![],
    })
}

fn allowed_of(c: &CheckConfig) -> Option<u32> {
    c.http
        .as_ref()
        .map(|h| h.allowed_failures)
        .or(c.prometheus.as_ref().map(|q| q.allowed_failures))
}

fn outcomes(cfg: &VerifyConfig, progress: &Progress, verdicts: &[Verdict]) -> Vec<CheckOutcome> {
    cfg.checks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let s = &progress.checks[i];
            CheckOutcome {
                name: cfg.check_name(i),
                kind: c.kind().into(),
                passed: verdicts[i] == Verdict::Satisfied,
                runs: s.runs,
                failures: s.failures,
                evidence: s.evidence.iter().cloned().collect(),
            }
        })
        .collect()
}

/// Evaluates one due check and records what it saw.
async fn evaluate<P: VerifyPorts>(
    p: &Pipeline<P>,
    c: &CheckConfig,
    state: &mut CheckState,
    sctx: &StageCtx,
    ctx: &crate::event::RunContext,
    target: CheckTarget,
) -> Result<()> {
    let now = sctx.now;
    if let Some(h) = &c.http {
        let (ok, seen) = match p.ports.probe().http_get(&h.url, h.timeout).await {
            Ok(a) => {
                let body_ok = match &h.body {
                    None => true,
                    // Checked at load; a pattern that no longer compiles fails the check.
                    Some(pat) => regex_lite::Regex::new(pat).is_ok_and(|re| re.is_match(&a.body)),
                };
                let ok = a.status == h.status && body_ok;
                let mut seen =
                    format!("{} from {} in {}ms", a.status, h.url, a.elapsed.as_millis());
                if a.status != h.status {
                    seen.push_str(&format!(" (want {})", h.status));
                } else if !body_ok {
                    seen.push_str(&format!(
                        "; body does not match {:?}",
                        h.body.as_deref().unwrap_or_default()
                    ));
                }
                (ok, seen)
            }
            Err(e) => (false, e.to_string()),
        };
        state.observe(ok, seen, now);
        state.next_at = Some(after(now, h.interval));
    } else if let Some(q) = &c.prometheus {
        let (ok, seen) = match p
            .ports
            .probe()
            .prometheus_query(&q.url, &q.query, q.timeout)
            .await
        {
            Ok(samples) if samples.is_empty() => (
                q.no_data == NoData::Pass,
                format!("no data for {} (no_data: {:?})", q.query, q.no_data).to_lowercase(),
            ),
            Ok(samples) => {
                let bad: Vec<String> = samples
                    .iter()
                    .filter_map(|s| {
                        out_of_bounds(s.value, q.min, q.max)
                            .map(|why| format!("{} {why}", s.labels))
                    })
                    .collect();
                if bad.is_empty() {
                    let values: Vec<String> = samples
                        .iter()
                        .take(3)
                        .map(|s| format!("{}", s.value))
                        .collect();
                    (true, format!("value {} within bounds", values.join(", ")))
                } else {
                    (false, bad.join("; "))
                }
            }
            Err(e) => (false, e.to_string()),
        };
        state.observe(ok, seen, now);
        state.next_at = Some(after(now, q.interval));
    } else if let Some(test) = c.runner() {
        let runner = p.ports.test_runner(&test)?;
        let req = TestRequest {
            app: ctx.app.clone(),
            run: ctx.run.clone(),
            image: ctx.image.clone(),
            attempt: sctx.attempt,
            check: Some(target),
        };
        let progress = match state.runner.take() {
            Some(running) => runner.check(&req, &running).await?,
            None => runner.start(&req).await?,
        };
        match progress {
            TestProgress::Running {
                state: running,
                check_after,
                ..
            } => {
                state.runner = Some(running);
                state.next_at = Some(after(now, check_after.min(p.settings.max_wait)));
            }
            TestProgress::Finished(outcome) => {
                let tail = outcome
                    .output
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map(|l| format!(": {}", l.trim()))
                    .unwrap_or_default();
                state.observe(
                    outcome.passed,
                    format!("{} {}{tail}", runner.kind(), outcome.summary),
                    now,
                );
                state.finished = Some(outcome.passed);
                state.next_at = None;
            }
        }
    }
    Ok(())
}

/// Why a sample is out of bounds, or `None`. Not-a-number is out of every bound.
fn out_of_bounds(v: f64, min: Option<f64>, max: Option<f64>) -> Option<String> {
    if v.is_nan() {
        return Some("value NaN".into());
    }
    if let Some(hi) = max
        && v > hi
    {
        return Some(format!("value {v} > max {hi}"));
    }
    if let Some(lo) = min
        && v < lo
    {
        return Some(format!("value {v} < min {lo}"));
    }
    None
}
