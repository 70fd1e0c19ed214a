//! Human output: run lists, stage timelines, progress while the bus delivers.

use std::time::Duration;

use baton::adapters::embedded::Delivery;
use baton::event::Event;
use baton::pipeline::runs::{RunSummary, RunView};
use baton::runtime::local::DeliveryReport;
use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};

/// Formats a duration compactly: `12ms`, `1.4s`, `2m03s`.
pub fn dur(d: chrono::Duration) -> String {
    let ms = d.num_milliseconds().max(0);
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

pub fn print_runs(runs: &[RunSummary]) {
    if runs.is_empty() {
        println!("no runs yet");
        return;
    }
    println!(
        "{:<16}  {:<10}  {:<12}  {:<14}  {:<20}  STATUS",
        "RUN", "APP", "TAG", "DIGEST", "STARTED"
    );
    for r in runs {
        let (tag, digest) = r
            .image
            .as_ref()
            .map(|i| (i.tag.to_string(), i.short_digest().to_string()))
            .unwrap_or_default();
        println!(
            "{:<16}  {:<10}  {:<12}  {:<14}  {:<20}  {}",
            r.run,
            r.app,
            tag,
            digest,
            r.started_at
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default(),
            r.status
        );
    }
}

/// `baton envs`: one line per app and environment, then what waits, stops or failed.
pub fn print_environments(envs: &[baton::pipeline::environments::EnvironmentView]) {
    println!(
        "{:<10}  {:<12}  {:<12}  {:<14}  {:<16}  {:<16}  {:<16}  NOW",
        "APP", "ENVIRONMENT", "LIVE", "DIGEST", "SINCE", "RUN", "APPROVED BY"
    );
    for e in envs {
        let (tag, digest, since, run, by) = match &e.live {
            Some(l) => (
                l.image.tag.to_string(),
                l.image.short_digest().to_string(),
                l.since.format("%Y-%m-%d %H:%M").to_string(),
                l.run.to_string(),
                match l.kind {
                    baton::pipeline::deployments::DeployKind::Rollback => "(rollback)".into(),
                    _ => l.approved_by.join(","),
                },
            ),
            None => ("-".into(), "".into(), "".into(), "".into(), "".into()),
        };
        let mut now = vec![];
        if let Some(s) = &e.stopped {
            now.push(s.clone());
        }
        for p in &e.pending {
            now.push(format!(
                "{} awaits approval ({}/{}, until {})",
                p.image.tag,
                p.approvals,
                p.required,
                p.expires_at.format("%Y-%m-%d %H:%M")
            ));
        }
        if let Some(f) = &e.last_failure {
            now.push(format!(
                "last failure: {} {}",
                f.image
                    .as_ref()
                    .map(|i| i.tag.to_string())
                    .unwrap_or_default(),
                f.status
            ));
        }
        println!(
            "{:<10}  {:<12}  {:<12}  {:<14}  {:<16}  {:<16}  {:<16}  {}",
            e.app,
            e.environment,
            tag,
            digest,
            since,
            run,
            by,
            if now.is_empty() {
                "-".into()
            } else {
                now.join("; ")
            }
        );
    }
}

/// The stage timeline of a run, offsets relative to its first stage.
pub fn print_timeline(v: &RunView) {
    let now = Utc::now();
    let t0: Option<DateTime<Utc>> = v.stages.iter().map(|s| s.started_at).min();
    if let Some(img) = &v.image {
        println!(
            "run {}  app {}  image {} ({})",
            v.run,
            v.app,
            img.tagged(),
            img.short_digest()
        );
    }
    println!("status: {}", v.status);
    println!();
    println!(
        "{:<9} {:<12} {:<10} {:>3}  {:>8}  {:>9}  NOTE",
        "STAGE", "ENV", "STATUS", "TRY", "AT", "TOOK"
    );
    for s in &v.stages {
        let at = t0
            .map(|t| format!("+{}", dur(s.started_at - t)))
            .unwrap_or_default();
        let note = s
            .error
            .as_ref()
            .map(|e| e.message.clone())
            .or_else(|| s.note.clone())
            .unwrap_or_default();
        println!(
            "{:<9} {:<12} {:<10} {:>3}  {:>8}  {:>9}  {}",
            s.stage.as_str(),
            s.environment.as_deref().unwrap_or("-"),
            s.status.as_str(),
            s.attempt,
            at,
            dur(s.duration(now)),
            note
        );
    }
}

pub fn print_events(events: &[Event]) {
    println!();
    println!("events:");
    for e in events {
        println!(
            "  {}  {:<18} {}",
            e.time.format("%H:%M:%S%.3f"),
            e.event_type().as_str(),
            e.id
        );
    }
}

/// A spinner on stderr that names each delivery (hidden when stderr is not a terminal).
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new_spinner()
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        Progress { bar }
    }

    pub fn message(&self, msg: impl Into<String>) {
        self.bar.set_message(msg.into());
    }

    pub fn delivered(&self, d: &DeliveryReport) {
        let ty = match d.message.attributes.get("type") {
            Some(baton::event::AttrValue::String(s)) => s.clone(),
            _ => "?".into(),
        };
        let outcome = match &d.outcome {
            Delivery::Done => "done".to_string(),
            Delivery::Retry(e) => format!("retry ({e})"),
            Delivery::Later(after, note) => {
                format!("{note}; checking again in {}", humantime_short(*after))
            }
            Delivery::Dead(e) => format!("dead-lettered ({e})"),
        };
        let line = format!(
            "{:<24} ← {:<18} {outcome} in {}",
            d.subscription,
            ty,
            dur(chrono::Duration::from_std(d.elapsed).unwrap_or_default())
        );
        self.bar.set_message(line.clone());
        // Waits are shown on the spinner line (rollout and Job progress update in place);
        // retries and dead letters stay on screen.
        if matches!(d.outcome, Delivery::Retry(_) | Delivery::Dead(_)) {
            self.bar.println(line);
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn humantime_short(d: Duration) -> String {
    dur(chrono::Duration::from_std(d).unwrap_or_default())
}
