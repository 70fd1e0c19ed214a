//! The dashboard's HTML, rendered on the server with maud (every value escaped): pure
//! functions from the pipeline's views to markup. The few moving parts (live updates)
//! are in `app.js`; nothing here loads from another origin.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use crate::event::Image;
use crate::pipeline::approvals::{ApprovalRecord, PendingApproval};
use crate::pipeline::deployments::{DeployKind, HistoryEntry};
use crate::pipeline::dora::Figures;
use crate::pipeline::environments::EnvironmentView;
use crate::pipeline::harness::{StageRecord, StageStatus};
use crate::pipeline::runs::{RunStatus, RunSummary, RunView};
use crate::policy::approval::{ApprovalStatus, Verdict};

/// Who looks at a page, as the page needs it.
pub struct Viewing<'a> {
    pub name: &'a str,
    /// May decide approvals and roll back.
    pub approver: bool,
    /// The form token of this viewer (hidden in every form).
    pub csrf: &'a str,
    /// Approvals waiting for this viewer, for the navigation.
    pub waiting: usize,
    /// The server's change counter when the page was made: the page's live updates
    /// start from it, so a change made meanwhile is not missed.
    pub generation: u64,
    pub now: DateTime<Utc>,
}

/// A message at the top of a page: what a form did, or why it was refused.
pub enum Flash {
    Done(String),
    Refused(String),
}

/// The page frame: navigation, the flash, and `main`.
pub fn layout(title: &str, v: Option<&Viewing>, flash: Option<&Flash>, main: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Baton" }
                link rel="stylesheet" href="/ui/app.css";
                script src="/ui/app.js" defer {}
            }
            body data-generation=[v.map(|v| v.generation)] {
                a.skip href="#main" { "Skip to content" }
                header {
                    nav aria-label="Main" {
                        a.brand href="/" { "Baton" }
                        @if let Some(v) = v {
                            a href="/" { "Board" }
                            a href="/runs" { "Runs" }
                            a href="/approvals" {
                                "Approvals"
                                span #nav-waiting data-live {
                                    @if v.waiting > 0 { " " span.count { (v.waiting) span.visually-hidden { " waiting for you" } } }
                                }
                            }
                            span.who {
                                "Signed in as " strong { (v.name) }
                                @if !v.approver { " (reader)" }
                            }
                            span #live-status role="status" { "" }
                            form.inline method="post" action="/ui/logout" {
                                input type="hidden" name="csrf" value=(v.csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #main {
                    @match flash {
                        Some(Flash::Done(m)) => p.flash.done role="status" { (m) },
                        Some(Flash::Refused(m)) => p.flash.refused role="alert" { strong { "Not done: " } (m) },
                        None => {},
                    }
                    (main)
                }
            }
        }
    }
}

/// The sign-in page.
pub fn login(next: &str, error: Option<&str>) -> Markup {
    let main = html! {
        h1 { "Sign in" }
        p { "Use your approver or reader token (the value of your " code { "serve.approvers.<you>.token_env" } " or " code { "serve.readers.<you>.token_env" } " variable). Behind the trusted proxy you are signed in already." }
        @if let Some(e) = error { p.flash.refused role="alert" { (e) } }
        form.stack method="post" action="/ui/login" {
            input type="hidden" name="next" value=(next);
            label for="token" { "Token" }
            input #token type="password" name="token" required autocomplete="off" autofocus;
            button type="submit" { "Sign in" }
        }
    };
    layout("Sign in", None, None, main)
}

fn time(t: DateTime<Utc>, now: DateTime<Utc>) -> Markup {
    html! {
        time datetime=(t.to_rfc3339()) title=(t.format("%Y-%m-%d %H:%M:%S UTC")) { (ago(t, now)) }
    }
}

/// `12s ago`, `5m ago`, `3h ago`, `2d ago` (or `in …` for a time to come).
pub fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = now.signed_duration_since(t).num_seconds();
    let (n, future) = (secs.unsigned_abs(), secs < 0);
    let span = match n {
        0..60 => format!("{n}s"),
        60..3600 => format!("{}m", n / 60),
        3600..86_400 => format!("{}h", n / 3600),
        _ => format!("{}d", n / 86_400),
    };
    if future {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

use crate::pipeline::dora::human as duration;

/// The badge class of a run status.
fn tone(s: &RunStatus) -> &'static str {
    match s {
        RunStatus::Deployed => "ok",
        RunStatus::AwaitingApproval(_) => "wait",
        RunStatus::Verifying(_) | RunStatus::InProgress | RunStatus::Retrying(_) => "busy",
        RunStatus::Held(_) | RunStatus::Frozen(_) | RunStatus::Superseded(_) => "muted",
        RunStatus::RolledBack(_)
        | RunStatus::TestsFailed
        | RunStatus::Rejected(_)
        | RunStatus::VerificationFailed { .. }
        | RunStatus::DeployFailed { .. }
        | RunStatus::FailedAt { .. } => "bad",
    }
}

fn status(s: &RunStatus) -> Markup {
    html! { span.badge.(tone(s)) { (s.to_string()) } }
}

fn image(i: &Image) -> Markup {
    html! {
        span.image { strong { (i.tag.to_string()) } " " code title=(i.digest.to_string()) { (i.short_digest()) } }
    }
}

fn run_link(run: &str) -> Markup {
    html! { a href={ "/runs/" (run) } { code { (run) } } }
}

/// The board: apps × environments, approvals waiting for the viewer, recent runs, and
/// DORA's four keys.
pub fn board(
    v: &Viewing,
    envs: &[EnvironmentView],
    waiting: &[PendingApproval],
    runs: &[RunSummary],
    dora: Option<&[Figures]>,
) -> Markup {
    // Columns: every environment name, in configuration order.
    let mut columns: Vec<&str> = vec![];
    for e in envs {
        if !columns.contains(&e.environment.as_str()) {
            columns.push(&e.environment);
        }
    }
    let mut apps: Vec<&str> = vec![];
    for e in envs {
        if !apps.contains(&e.app.as_str()) {
            apps.push(&e.app);
        }
    }
    let main = html! {
        h1 { "What is live where" }
        section #board data-live aria-labelledby="board-h" {
            h2 #board-h .visually-hidden { "Environments" }
            table.board {
                caption { "Each app's environments: the live image, since when, its run and who approved it; what waits and what stops the line." }
                thead { tr { th scope="col" { "App" } @for c in &columns { th scope="col" { (c) } } } }
                tbody {
                    @for app in &apps {
                        tr {
                            th scope="row" { (app) }
                            @for c in &columns {
                                @match envs.iter().find(|e| e.app == *app && e.environment == *c) {
                                    None => td.empty { "—" },
                                    Some(e) => td.cell data-app=(e.app) data-env=(e.environment) { (cell(v, e)) },
                                }
                            }
                        }
                    }
                }
            }
        }
        @if v.approver {
            section #waiting data-live aria-labelledby="waiting-h" {
                h2 #waiting-h { "Waiting for you" }
                @if waiting.is_empty() {
                    p.quiet { "Nothing waits for your approval." }
                } @else {
                    (approval_list(v, waiting))
                }
            }
        }
        section #recent data-live aria-labelledby="recent-h" {
            h2 #recent-h { "Recent runs" }
            (run_table(v, runs))
            p { a href="/runs" { "All runs" } }
        }
        section #dora data-live aria-labelledby="dora-h" {
            h2 #dora-h { "DORA, last 30 days" }
            @match dora {
                Some(d) => (dora_table(d)),
                None => p.quiet { "Being computed from the run records; shown in a moment." },
            }
        }
    };
    layout("Board", Some(v), None, main)
}

fn cell(v: &Viewing, e: &EnvironmentView) -> Markup {
    html! {
        @match &e.live {
            None => p.quiet { "nothing deployed" },
            Some(l) => {
                p { (image(&l.image)) }
                p.small {
                    @if l.kind == DeployKind::Rollback { "rolled back " } @else { "deployed " }
                    (time(l.since, v.now)) " by run " (run_link(l.run.as_str()))
                }
                @if !l.approved_by.is_empty() {
                    p.small { "approved by " (l.approved_by.join(", ")) }
                }
            }
        }
        @for p in &e.pending {
            p.pending {
                a href={ "/runs/" (p.run.as_str()) "#approve" } {
                    "awaiting approval: " (p.image.tag.to_string()) " (" (p.approvals) " of " (p.required) ")"
                }
            }
        }
        @if let Some(s) = &e.stopped { p.stopped { "⏸ " (s) } }
        @if let Some(f) = &e.last_failure {
            p.failure.small { "last failure: " (run_link(f.run.as_str())) " " (f.status.to_string()) }
        }
        p.small { a href={ "/environments/" (e.app) "/" (e.environment) } { "history" @if v.approver { " and rollback" } } }
    }
}

fn approval_list(v: &Viewing, list: &[PendingApproval]) -> Markup {
    html! {
        table {
            thead { tr { th scope="col" { "Run" } th scope="col" { "App" } th scope="col" { "Environment" } th scope="col" { "Image" } th scope="col" { "Approvals" } th scope="col" { "Pushed by" } th scope="col" { "Expires" } } }
            tbody {
                @for a in list {
                    tr {
                        td { a href={ "/runs/" (a.run.as_str()) "#approve" } { code { (a.run.as_str()) } } }
                        td { (a.app) } td { (a.environment) } td { (image(&a.image)) }
                        td { (a.approvals) " of " (a.required) }
                        td { (a.pushed_by.as_deref().unwrap_or("unknown")) }
                        td { (time(a.expires_at, v.now)) }
                    }
                }
            }
        }
    }
}

fn run_table(v: &Viewing, runs: &[RunSummary]) -> Markup {
    html! {
        @if runs.is_empty() {
            p.quiet { "No runs yet: push an image to a watched repository." }
        } @else {
            table {
                thead { tr { th scope="col" { "Run" } th scope="col" { "App" } th scope="col" { "Image" } th scope="col" { "Status" } th scope="col" { "Started" } th scope="col" { "Updated" } } }
                tbody {
                    @for r in runs {
                        tr {
                            td { (run_link(r.run.as_str())) }
                            td { (r.app) }
                            td { @if let Some(i) = &r.image { (image(i)) } }
                            td { (status(&r.status)) }
                            td { @if let Some(t) = r.started_at { (time(t, v.now)) } }
                            td { @if let Some(t) = r.updated_at { (time(t, v.now)) } }
                        }
                    }
                }
            }
        }
    }
}

fn dora_table(dora: &[Figures]) -> Markup {
    let secs = |s: Option<f64>| s.map(duration).unwrap_or_else(|| "—".into());
    html! {
        table {
            thead { tr {
                th scope="col" { "App" } th scope="col" { "Environment" }
                th scope="col" { "Deploys" } th scope="col" { "Per day" }
                th scope="col" { "Lead time p50" } th scope="col" { "Change failure rate" }
                th scope="col" { "Time to restore p50" }
            } }
            tbody {
                @for f in dora {
                    tr {
                        td { (f.app) } td { (f.environment) } td { (f.deployments) }
                        td { (format!("{:.2}", f.deployments_per_day)) }
                        td { (secs(f.lead_time_p50)) }
                        td { @match f.change_failure_rate { Some(r) => (format!("{:.0}%", r * 100.0)), None => "—" } }
                        td { (secs(f.time_to_restore_p50)) @if f.unrestored > 0 { " (" (f.unrestored) " open)" } }
                    }
                }
            }
        }
    }
}

/// The runs page: one page of runs, newest first.
pub fn runs(v: &Viewing, runs: &[RunSummary], next: Option<&str>) -> Markup {
    let main = html! {
        h1 { "Runs" }
        section #runs data-live aria-label="Runs" { (run_table(v, runs)) }
        @if let Some(n) = next {
            p { a href={ "/runs?after=" (n) } rel="next" { "Older runs" } }
        }
    };
    layout("Runs", Some(v), None, main)
}

/// The approvals page: what waits for the viewer, and what waits for others.
pub fn approvals(
    v: &Viewing,
    mine: &[PendingApproval],
    others: &[PendingApproval],
    flash: Option<&Flash>,
) -> Markup {
    let main = html! {
        h1 { "Approvals" }
        section #mine data-live aria-labelledby="mine-h" {
            h2 #mine-h { "Waiting for you" }
            @if !v.approver {
                p.quiet { "You are signed in as a reader: you see approvals but cannot decide them." }
            } @else if mine.is_empty() {
                p.quiet { "Nothing waits for your approval." }
            } @else {
                (approval_list(v, mine))
            }
        }
        section #others data-live aria-labelledby="others-h" {
            h2 #others-h { "Waiting for others" }
            @if others.is_empty() { p.quiet { "Nothing." } } @else { (approval_list(v, others)) }
        }
    };
    layout("Approvals", Some(v), flash, main)
}

/// The run page: status, approvals (with the decision form for an approver), the stage
/// timeline, the event log and the tail of the test output.
pub fn run(
    v: &Viewing,
    run: &RunView,
    decidable: &[(String, bool)],
    output: Option<&str>,
    flash: Option<&Flash>,
) -> Markup {
    let title = format!("{} run {}", run.app, run.run.as_str());
    let main = html! {
        section #summary data-live aria-labelledby="run-h" {
            h1 #run-h { (run.app) " run " code { (run.run.as_str()) } " " (status(&run.status)) }
            dl.facts {
                @if let Some(i) = &run.image {
                    dt { "Image" } dd { code { (i.reference()) } " (" (i.tag.to_string()) ")" }
                }
                @if let Some(e) = run.events.first() {
                    dt { "Pushed by" } dd { (e.ctx().pushed_by.as_deref().unwrap_or("unknown")) }
                    dt { "Started" } dd { (time(e.time, v.now)) }
                }
                @for m in &run.rolled_back {
                    dt { "Rolled back" }
                    dd {
                        "out of " (m.environment) " " (time(m.at, v.now)) ", back to " (m.to.tag.to_string())
                        @if let Some(b) = &m.by { " by " (b) }
                        @if let Some(r) = &m.reason { ": " (r) }
                    }
                }
            }
        }
        section #approvals data-live aria-labelledby="approvals-h" {
            h2 #approvals-h { "Approvals" }
            @if run.approvals.is_empty() {
                p.quiet { "No approval was asked for." }
            }
            @for a in &run.approvals { (approval(v, a)) }
        }
        @if v.approver && !decidable.is_empty() {
            section #approve aria-labelledby="approve-h" {
                h2 #approve-h { "Your decision" }
                @for (env, held) in decidable {
                    form.stack.decision method="post" action={ "/ui/approve/" (run.run.as_str()) "/" (env) } {
                        input type="hidden" name="csrf" value=(v.csrf);
                        p { "Deploy " (run.image.as_ref().map(|i| i.tag.to_string()).unwrap_or_default()) " to " strong { (env) } "?" }
                        label for={ "comment-" (env) } { "Comment (recorded with your decision)" }
                        textarea id={ "comment-" (env) } name="comment" rows="2" maxlength="1000" {}
                        @if *held {
                            label.check {
                                input type="checkbox" name="release_hold" value="true";
                                " Also release " (env) "'s rollback hold"
                            }
                        }
                        div.buttons {
                            button.approve type="submit" name="decision" value="approve" { "Approve " (env) }
                            button.reject type="submit" name="decision" value="reject" { "Reject " (env) }
                        }
                    }
                }
            }
        }
        section #timeline data-live aria-labelledby="timeline-h" {
            h2 #timeline-h { "Stages" }
            (timeline(&run.stages, v.now))
            (stage_table(v, &run.stages))
        }
        section #events data-live aria-labelledby="events-h" {
            h2 #events-h { "Events" }
            table {
                thead { tr { th scope="col" { "Time" } th scope="col" { "Type" } th scope="col" { "From" } th scope="col" { "What" } } }
                tbody {
                    @for e in &run.events {
                        tr {
                            td { time datetime=(e.time.to_rfc3339()) { (e.time.format("%H:%M:%S%.3f")) } }
                            td { code { (e.event_type().to_string()) } }
                            td { (e.source) }
                            td { (e.summary()) }
                        }
                    }
                }
            }
        }
        section #output data-live aria-labelledby="output-h" {
            h2 #output-h { "Test output (tail)" }
            @match output {
                Some(o) if !o.is_empty() => pre.output tabindex="0" { (o) },
                _ => p.quiet { "No test output recorded." },
            }
        }
    };
    layout(&title, Some(v), flash, main)
}

fn approval(v: &Viewing, a: &ApprovalRecord) -> Markup {
    let verdict = |d: Verdict| match d {
        Verdict::Approve => "approved",
        Verdict::Reject => "rejected",
    };
    let tone = match a.status {
        ApprovalStatus::Granted => "ok",
        ApprovalStatus::Pending => "wait",
        ApprovalStatus::Rejected | ApprovalStatus::Expired => "bad",
    };
    html! {
        div.approval data-env=(a.environment) {
            h3 { (a.environment) " " span.badge.(tone) { (a.status.as_str()) } }
            p.small {
                (a.rules.required) " of " (a.rules.approvers.join(", "))
                @if !a.rules.groups.is_empty() {
                    " (groups: " (a.rules.groups.iter().map(|(g, _)| g.as_str()).collect::<Vec<_>>().join(", ")) ")"
                }
                @if a.status == ApprovalStatus::Pending { "; expires " (time(a.rules.expires_at, v.now)) }
            }
            @if !a.decisions.is_empty() {
                ul {
                    @for d in &a.decisions {
                        li {
                            strong { (d.by) } " " (verdict(d.verdict)) " " (time(d.at, v.now))
                            @if let Some(c) = &d.comment { ": " q { (c) } }
                        }
                    }
                }
            }
        }
    }
}

fn stage_label(s: &StageRecord) -> String {
    match &s.environment {
        Some(e) => format!("{} ({e})", s.stage),
        None => s.stage.to_string(),
    }
}

/// Where a stage record ends on the timeline: when it finished, else now while it goes on.
fn end_of(s: &StageRecord, now: DateTime<Utc>) -> DateTime<Utc> {
    s.finished_at
        .unwrap_or(if s.status == StageStatus::Failed {
            s.updated_at
        } else {
            now
        })
        .max(s.started_at)
}

/// The stage timeline as bars: one row per stage record, one segment per state it was in
/// (running, waiting, retrying, publishing) from its history, over the run's span.
pub fn timeline(stages: &[StageRecord], now: DateTime<Utc>) -> Markup {
    let Some(t0) = stages.iter().map(|s| s.started_at).min() else {
        return html! { p.quiet { "No stage has run yet." } };
    };
    let t1 = stages.iter().map(|s| end_of(s, now)).max().unwrap_or(t0);
    let span_ms = t1.signed_duration_since(t0).num_milliseconds().max(1) as f64;
    const LEFT: f64 = 190.0;
    const WIDTH: f64 = 800.0;
    const ROW: f64 = 24.0;
    let x = |t: DateTime<Utc>| {
        LEFT + WIDTH * (t.signed_duration_since(t0).num_milliseconds().max(0) as f64 / span_ms)
    };
    let height = ROW * stages.len() as f64 + 22.0;
    let total = duration(span_ms / 1000.0);
    html! {
        svg.timeline viewBox={ "0 0 1000 " (height) } role="img" aria-labelledby="timeline-title" {
            title #timeline-title { "Stage timeline over " (total) ": each bar is a stage, coloured by what it was doing" }
            @for (i, s) in stages.iter().enumerate() {
                @let y = ROW * i as f64;
                text.label x="0" y=(y + 16.0) { (stage_label(s)) @if s.attempt > 1 { " ×" (s.attempt) } }
                @for (j, tr) in s.history.iter().enumerate() {
                    @let from = tr.at.max(s.started_at);
                    @let to = s.history.get(j + 1).map(|n| n.at).unwrap_or_else(|| end_of(s, now));
                    @if !matches!(tr.status, StageStatus::Succeeded | StageStatus::Failed) {
                        @let (xa, xb) = (x(from), x(to.max(from)));
                        rect class={ "seg " (tr.status.as_str()) } x=(format!("{xa:.1}")) y=(y + 4.0) width=(format!("{:.1}", (xb - xa).max(2.0))) height="16" {
                            title { (stage_label(s)) ", attempt " (tr.attempt) ": " (tr.status.as_str()) " for " (duration(to.signed_duration_since(from).num_milliseconds().max(0) as f64 / 1000.0)) @if let Some(n) = &tr.note { " (" (n) ")" } }
                        }
                    }
                }
                @if matches!(s.status, StageStatus::Succeeded | StageStatus::Failed) {
                    rect class={ "end " (s.status.as_str()) } x=(format!("{:.1}", x(end_of(s, now)) - 1.0)) y=(y + 2.0) width="3" height="20" {
                        title { (stage_label(s)) " " (s.status.as_str()) }
                    }
                }
            }
            text.axis x=(LEFT) y=(height - 4.0) { "0" }
            text.axis x="1000" y=(height - 4.0) text-anchor="end" { (total) }
        }
        p.legend aria-hidden="true" {
            span.key.running {} "running " span.key.waiting {} "waiting " span.key.retrying {} "retrying " span.key.publishing {} "publishing " span.key.succeeded {} "succeeded " span.key.failed {} "failed"
        }
    }
}

fn stage_table(v: &Viewing, stages: &[StageRecord]) -> Markup {
    html! {
        table.stages {
            caption.visually-hidden { "Stages in order, with their state, attempts and duration" }
            thead { tr { th scope="col" { "Stage" } th scope="col" { "State" } th scope="col" { "Attempt" } th scope="col" { "Started" } th scope="col" { "Took" } th scope="col" { "Note" } } }
            tbody {
                @for s in stages {
                    tr {
                        td { (stage_label(s)) }
                        td { span class={ "state " (s.status.as_str()) } { (s.status.as_str()) } }
                        td { (s.attempt) }
                        td { (time(s.started_at, v.now)) }
                        td { (duration(end_of(s, v.now).signed_duration_since(s.started_at).num_milliseconds().max(0) as f64 / 1000.0)) }
                        td {
                            @if let Some(e) = &s.error { (e.message) } @else if let Some(n) = &s.note { (n) }
                        }
                    }
                }
            }
        }
    }
}

/// One environment: what is live, what stops it, and its deploy history, each entry
/// with a rollback button for an approver.
pub fn environment(
    v: &Viewing,
    e: &EnvironmentView,
    history: &[HistoryEntry],
    flash: Option<&Flash>,
) -> Markup {
    let live_digest = e.live.as_ref().map(|l| l.image.digest.to_string());
    let title = format!("{} · {}", e.app, e.environment);
    // Newest first; a rollback button on the newest entry of each image only.
    let mut seen: Vec<String> = vec![];
    let rows: Vec<(&HistoryEntry, String, bool)> = history
        .iter()
        .rev()
        .map(|h| {
            let digest = h.image.digest.to_string();
            let first = !seen.contains(&digest);
            seen.push(digest.clone());
            (h, digest, first)
        })
        .collect();
    let main = html! {
        h1 { (e.app) " · " (e.environment) }
        section #env data-live aria-label="Now" {
            (cell(v, e))
            @if let Some(h) = &e.held {
                p.stopped {
                    "Held on " (h.on.tagged()) " since " (time(h.since, v.now))
                    @if let Some(b) = &h.by { " by " (b) }
                    @if let Some(r) = &h.reason { ": " (r) }
                    ". Newer runs wait here until the hold is released."
                }
            }
        }
        section #history data-live aria-labelledby="history-h" {
            h2 #history-h { "History" }
            @if history.is_empty() { p.quiet { "Nothing was deployed here yet." } } @else {
                table {
                    thead { tr { th scope="col" { "When" } th scope="col" { "What" } th scope="col" { "Image" } th scope="col" { "Run" } th scope="col" { "By" } @if v.approver { th scope="col" { span.visually-hidden { "Action" } } } } }
                    tbody {
                        @for (h, digest, first) in &rows {
                            tr {
                                td { (time(h.at, v.now)) }
                                td { @if h.kind == DeployKind::Rollback { "rollback" } @else { "deploy" } }
                                td { (image(&h.image)) }
                                td { (run_link(h.run.as_str())) }
                                td { (h.by.as_deref().unwrap_or("")) }
                                @if v.approver {
                                    td {
                                        @if Some(digest) == live_digest.as_ref() {
                                            @if *first { span.quiet { "live" } }
                                        } @else if *first {
                                            a.button href={ "/environments/" (e.app) "/" (e.environment) "/rollback?to=" (digest) } { "Roll back to " (h.image.tag.to_string()) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout(&title, Some(v), flash, main)
}

/// The rollback confirmation: what goes out, what comes back, and why (required).
pub fn confirm_rollback(v: &Viewing, e: &EnvironmentView, to: &HistoryEntry) -> Markup {
    let main = html! {
        h1 { "Roll back " (e.app) " in " (e.environment) "?" }
        p {
            @if let Some(l) = &e.live { "Takes " (image(&l.image)) " out of " (e.environment) " and puts " } @else { "Puts " }
            (image(&to.image)) " (run " (run_link(to.run.as_str())) ") back. "
            "The environment is then held on it: newer runs wait there until the hold is released."
        }
        form.stack method="post" action={ "/ui/rollback/" (e.app) "/" (e.environment) } {
            input type="hidden" name="csrf" value=(v.csrf);
            input type="hidden" name="to" value=(to.image.digest.to_string());
            label for="reason" { "Why (recorded with the rollback and the hold)" }
            textarea #reason name="reason" rows="2" required maxlength="500" {}
            div.buttons {
                button.reject type="submit" { "Roll back to " (to.image.tag.to_string()) }
                a.button href={ "/environments/" (e.app) "/" (e.environment) } { "Cancel" }
            }
        }
    };
    layout("Confirm rollback", Some(v), None, main)
}

/// A page that only says what went wrong (an unknown run, a refused request).
pub fn problem(v: Option<&Viewing>, title: &str, message: &str) -> Markup {
    layout(
        title,
        v,
        None,
        html! { h1 { (title) } p.flash.refused role="alert" { (message) } p { a href="/" { "Back to the board" } } },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn viewing(now: DateTime<Utc>) -> Viewing<'static> {
        Viewing {
            name: "<b>eve</b>",
            approver: true,
            csrf: "\"><script>",
            waiting: 0,
            generation: 0,
            now,
        }
    }

    #[test]
    fn every_value_is_escaped() {
        let now = Utc::now();
        let v = viewing(now);
        let page = layout(
            "<script>alert(1)</script>",
            Some(&v),
            Some(&Flash::Refused("<img src=x onerror=alert(1)>".into())),
            html! {},
        )
        .into_string();
        assert!(!page.contains("<script>alert(1)"), "{page}");
        assert!(!page.contains("<img src=x"), "{page}");
        assert!(!page.contains("<b>eve</b>"), "{page}");
        assert!(!page.contains("value=\"\"><script>"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("&lt;b&gt;eve&lt;/b&gt;"));
        let login = login("/\"><script>x</script>", Some("<i>no</i>")).into_string();
        assert!(!login.contains("<script>x"), "{login}");
        assert!(!login.contains("<i>no</i>"), "{login}");
    }

    #[test]
    fn ago_reads_as_people_say_it() {
        let now = Utc::now();
        assert_eq!(ago(now - chrono::Duration::seconds(12), now), "12s ago");
        assert_eq!(ago(now - chrono::Duration::minutes(5), now), "5m ago");
        assert_eq!(ago(now - chrono::Duration::hours(3), now), "3h ago");
        assert_eq!(ago(now - chrono::Duration::days(2), now), "2d ago");
        assert_eq!(ago(now + chrono::Duration::hours(1), now), "in 1h");
    }
}
