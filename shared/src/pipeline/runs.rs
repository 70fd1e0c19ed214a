//! Read-side views over the store: finding runs by (prefix of) id, a run's stages,
//! events and approvals, its overall status; and `retry`, which re-runs exactly one
//! stage from its recorded input.

use std::collections::BTreeSet;

use futures::StreamExt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::event::{Event, FailureCode, Image, Payload};
use crate::ids::RunId;
use crate::pipeline::approvals::ApprovalRecord;
use crate::pipeline::harness::{StageRecord, StageStatus};
use crate::pipeline::stage::StageSpec;
use crate::pipeline::{Pipeline, StageName};
use crate::ports::{ObjectStore, Ports, Put};
use crate::store::{
    RUN_INDEX, RUN_INDEX_DAYS, approval_key, bytes_of, get_json, json_of, put_json, run_index_key,
    run_prefix, stage_key,
};

/// One line of `baton status`.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub app: String,
    pub run: crate::ids::RunId,
    pub image: Option<Image>,
    pub status: RunStatus,
    pub started_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// Everything about one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    pub app: String,
    pub run: crate::ids::RunId,
    pub image: Option<Image>,
    pub status: RunStatus,
    /// Stage records in pipeline order.
    pub stages: Vec<StageRecord>,
    /// The run log, in publication order.
    pub events: Vec<Event>,
    pub approvals: Vec<ApprovalRecord>,
    /// Environments `baton rollback` took this run's image out of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rolled_back: Vec<RolledBackMark>,
}

/// Finds a run by its id or a unique prefix of it (at least 4 characters).
pub async fn resolve<P: Ports>(p: &Pipeline<P>, id: &str) -> Result<(String, RunId)> {
    if id.len() < 4 {
        return Err(Error::Refused(format!(
            "run id {id:?} is too short; give at least 4 characters"
        )));
    }
    if !crate::ids::is_run_prefix(id) {
        return Err(Error::not_found("run", id));
    }
    let mut found = BTreeSet::new();
    for app in &p.config.apps {
        let prefix = format!("runs/{}/", app.name);
        // A whole id names one run's directory: only that is read. A prefix lists the
        // app's runs starting with it.
        let listed = if crate::ids::is_run_id(id) {
            format!("{prefix}{id}/")
        } else {
            format!("{prefix}{id}")
        };
        for key in p.ports.store().list(&listed).await? {
            if let Some(run) = run_of_key(&key, &prefix)
                && run.starts_with(id)
            {
                found.insert((app.name.clone(), run));
            }
        }
    }
    let mut it = found.iter();
    match (it.next(), it.next()) {
        (None, _) => Err(Error::not_found("run", id)),
        (Some(one), None) => Ok(one.clone()),
        _ => Err(Error::Refused(format!(
            "run id {id:?} is ambiguous: {}",
            found
                .iter()
                .map(|(_, r)| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The run id in a store key under `prefix` (`runs/<app>/`); keys that do not hold one
/// are skipped.
fn run_of_key(key: &str, prefix: &str) -> Option<RunId> {
    key.strip_prefix(prefix)?.split('/').next()?.parse().ok()
}

/// One run's line of `baton status`.
pub async fn summary<P: Ports>(p: &Pipeline<P>, app: &str, run: &RunId) -> Result<RunSummary> {
    let v = view(p, app, run).await?;
    Ok(RunSummary {
        started_at: v.stages.iter().map(|s| s.started_at).min(),
        updated_at: v.stages.iter().map(|s| s.updated_at).max(),
        app: v.app,
        run: v.run,
        image: v.image,
        status: v.status,
    })
}

/// Every run, newest first.
pub async fn list<P: Ports>(p: &Pipeline<P>) -> Result<Vec<RunSummary>> {
    let mut ids = BTreeSet::new();
    for app in &p.config.apps {
        let prefix = format!("runs/{}/", app.name);
        for key in p.ports.store().list(&prefix).await? {
            if let Some(run) = run_of_key(&key, &prefix) {
                ids.insert((app.name.clone(), run));
            }
        }
    }
    let mut out = vec![];
    for (app, run) in ids {
        out.push(summary(p, &app, &run).await?);
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.started_at));
    Ok(out)
}

/// An entry of the run index: the run's app, and its summary as of the stamp of its
/// records (see [`ObjectStore::stamp`]), which [`summarize`] keeps.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IndexEntry {
    app: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    summary: Option<KeptSummary>,
}

/// A run's summary kept in its index entry, valid while its stamp is the run's.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeptSummary {
    stamp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image: Option<Image>,
    status: RunStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    updated_at: Option<DateTime<Utc>>,
}

/// The directories a run's summary is made from (its records and its approvals).
fn summary_dirs(app: &str, run: &RunId) -> [String; 2] {
    [run_prefix(app, run), format!("approvals/{app}/{run}/")]
}

/// The run of a run index key (`…/<ms>-<run>`).
fn run_of_index_key(key: &str) -> Option<RunId> {
    key.rsplit_once('-').and_then(|(_, r)| r.parse().ok())
}

/// A run's summary from its index entry when the summary kept there is current (kept
/// under `stamp`, what the run's segments have now), else from its records.
async fn summary_stamped<P: Ports>(
    p: &Pipeline<P>,
    entry: &IndexEntry,
    run: &RunId,
    stamp: Option<&crate::ports::Stamp>,
) -> Result<RunSummary> {
    if let (Some(now), Some(kept)) = (stamp, &entry.summary)
        && now.token == kept.stamp
        && p.config.app(&entry.app).is_ok()
    {
        let kept = kept.clone();
        return Ok(RunSummary {
            app: entry.app.clone(),
            run: run.clone(),
            image: kept.image,
            status: kept.status,
            started_at: kept.started_at,
            updated_at: kept.updated_at,
        });
    }
    summary(p, &entry.app, run).await
}

/// Adds a run to the run index (idempotent), as started at `at`.
pub async fn index<P: Ports>(
    p: &Pipeline<P>,
    app: &str,
    run: &RunId,
    at: DateTime<Utc>,
) -> Result<()> {
    let store = p.ports.store();
    let key = run_index_key(at, run);
    let day = key
        .strip_prefix(RUN_INDEX)
        .and_then(|k| k.split('/').next())
        .unwrap_or_default();
    for (key, value) in [
        (
            key.clone(),
            serde_json::json!(IndexEntry {
                app: app.into(),
                summary: None,
            }),
        ),
        (format!("{RUN_INDEX_DAYS}{day}"), serde_json::json!({})),
    ] {
        match put_json(store, &key, &value, crate::ports::Precondition::IfNoneMatch).await {
            Ok(_) | Err(Error::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Builds the run index from the run records when it has no entry at all (a state
/// directory from before the index); reads every run once.
async fn ensure_index<P: Ports>(p: &Pipeline<P>) -> Result<()> {
    if !p.ports.store().list(RUN_INDEX_DAYS).await?.is_empty() {
        return Ok(());
    }
    let all = list(p).await?;
    if !all.is_empty() {
        tracing::info!(runs = all.len(), "building the run index");
    }
    for r in all {
        index(
            p,
            &r.app,
            &r.run,
            r.started_at.unwrap_or_else(|| p.ports.now()),
        )
        .await?;
    }
    Ok(())
}

/// One page of runs, newest first, and the cursor of the next page.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    pub runs: Vec<RunSummary>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub next: Option<String>,
}

/// A page cursor: `<day>/<13 digits>-<run id>`, as [`Page::next`] gives.
pub fn is_cursor(s: &str) -> bool {
    let Some((day, rest)) = s.split_once('/') else {
        return false;
    };
    let Some((ms, run)) = rest.split_once('-') else {
        return false;
    };
    day.len() == 10
        && chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").is_ok()
        && ms.len() == 13
        && ms.bytes().all(|b| b.is_ascii_digit())
        && run.parse::<RunId>().is_ok()
}

/// Up to `limit` runs, newest first, older than the cursor `after`: reads the index of
/// the days it needs and the records of the runs it returns, whatever the history.
pub async fn page<P: Ports>(p: &Pipeline<P>, limit: usize, after: Option<&str>) -> Result<Page> {
    ensure_index(p).await?;
    let store = p.ports.store();
    let mut days = store.list(RUN_INDEX_DAYS).await?;
    days.reverse();
    let mut runs = vec![];
    let mut last: Option<String> = None;
    for day_key in days {
        let day = &day_key[RUN_INDEX_DAYS.len()..];
        if after.is_some_and(|a| a.get(..10).is_some_and(|a_day| day > a_day)) {
            continue;
        }
        let mut keys = store.list(&format!("{RUN_INDEX}{day}/")).await?;
        keys.reverse();
        let mut keys = keys
            .into_iter()
            .filter(|key| after.is_none_or(|a| &key[RUN_INDEX.len()..] < a))
            .peekable();
        while keys.peek().is_some() {
            if runs.len() == limit {
                return Ok(Page { runs, next: last });
            }
            // The next runs this page needs: their entries read at once, then their
            // stamps, then the runs without a current summary read side by side; kept
            // in index order.
            let chunk: Vec<String> = keys
                .by_ref()
                .take(limit - runs.len())
                .filter(|key| run_of_index_key(key).is_some())
                .collect();
            let mut entries = vec![];
            for (key, obj) in chunk.iter().zip(store.get_many(&chunk).await?) {
                if let (Some(obj), Some(run)) = (obj, run_of_index_key(key)) {
                    entries.push((key.clone(), run, json_of::<IndexEntry>(key, &obj.bytes)?));
                }
            }
            let sets: Vec<Vec<String>> = entries
                .iter()
                .map(|(_, run, entry)| summary_dirs(&entry.app, run).to_vec())
                .collect();
            let stamps = store.stamps(&sets).await?;
            let read = futures::stream::iter(entries.into_iter().zip(stamps))
                .map(|((key, run, entry), stamp)| async move {
                    // A run removed by retention, or of an app no longer configured:
                    // skipped.
                    Ok(summary_stamped(p, &entry, &run, stamp.as_ref())
                        .await
                        .ok()
                        .map(|s| (key, s)))
                })
                .buffered(16)
                .collect::<Vec<Result<Option<(String, RunSummary)>>>>()
                .await;
            for found in read {
                let Some((key, summary)) = found? else {
                    continue;
                };
                // A run indexed twice (under two times) is listed once.
                if runs.iter().any(|r: &RunSummary| r.run == summary.run) {
                    continue;
                }
                runs.push(summary);
                last = Some(key[RUN_INDEX.len()..].to_string());
            }
        }
    }
    Ok(Page { runs, next: None })
}

/// How long a run must have been quiet before [`summarize_recent`] keeps its summary (a
/// run in flight changes every few milliseconds).
const QUIET: chrono::TimeDelta = chrono::TimeDelta::seconds(2);

/// What a [`summarize`] walk did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summarized {
    /// Index entries read.
    pub seen: usize,
    /// Summaries written.
    pub wrote: usize,
    /// The cursor of the newest entry the walk read.
    pub first: Option<String>,
    /// The cursor of the last entry the walk read, when it stopped at its `scan` limit
    /// (pass it as `after` to go on from there); `None` when it reached `until` or the
    /// oldest run.
    pub cut: Option<String>,
    /// The cursor of the oldest entry read whose run was not quiet yet (to walk again).
    pub unsettled: Option<String>,
}

/// Keeps current summaries in the index entries of runs, so pages of runs read one small
/// entry per run instead of the run's records: walks the index newest first, from the
/// cursor `after` (exclusive; `None`: the newest run) down to the cursor `until`
/// (inclusive; `None`: the oldest run), at most `scan` entries, and writes the summary of
/// each run quiet for [`QUIET`] whose kept summary is missing or stale. Stores that give
/// no stamp (S3) keep none.
pub async fn summarize<P: Ports>(
    p: &Pipeline<P>,
    after: Option<&str>,
    until: Option<&str>,
    scan: usize,
) -> Result<Summarized> {
    let store = p.ports.store();
    let (mut done, quiet) = quiet_runs(p, after, until, scan).await?;
    let mut quiet = quiet.into_iter().peekable();
    while quiet.peek().is_some() {
        // Packed first, a few runs at a time (one sync for each few; what a pack holds
        // in memory stays small), so the stamp kept is the packed segments'.
        let chunk: Vec<Quiet> = quiet.by_ref().take(COMPACT_CHUNK).collect();
        let dirs: Vec<String> = chunk
            .iter()
            .flat_map(|q| summary_dirs(&q.entry.app, &q.run))
            .collect();
        store.compact(&dirs).await?;
        // Then their index entries, written together (one sync for the chunk).
        let mut writes = Vec::with_capacity(chunk.len());
        for q in chunk {
            if let Some(w) = kept_summary(p, q).await? {
                writes.push(w);
            }
        }
        for written in store.put_many(writes).await? {
            match written {
                Ok(_) => done.wrote += 1,
                // Retention removed the entry, or another writer got there first.
                Err(Error::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(done)
}

/// How many runs [`summarize`] packs together.
const COMPACT_CHUNK: usize = 16;

/// The write that keeps a quiet run's summary in its index entry, under the stamp its
/// segments have now, if the entry is still the one read (retention may have removed
/// it, or another writer changed it since); `None` when there is nothing to keep.
async fn kept_summary<P: Ports>(p: &Pipeline<P>, q: Quiet) -> Result<Option<Put>> {
    let store = p.ports.store();
    let Quiet {
        key,
        mut entry,
        etag,
        run,
    } = q;
    let Some(stamp) = store.stamp(&summary_dirs(&entry.app, &run)).await? else {
        return Ok(None);
    };
    let Ok(s) = summary(p, &entry.app, &run).await else {
        return Ok(None);
    };
    entry.summary = Some(KeptSummary {
        stamp: stamp.token,
        image: s.image,
        status: s.status,
        started_at: s.started_at,
        updated_at: s.updated_at,
    });
    Ok(Some(Put {
        bytes: bytes_of(&key, &entry)?,
        key,
        cond: crate::ports::Precondition::IfMatch(etag),
    }))
}

/// A quiet run whose index entry has no current summary.
struct Quiet {
    key: String,
    entry: IndexEntry,
    etag: String,
    run: RunId,
}

/// The walk of [`summarize`]: what it read, and the quiet runs to summarize.
async fn quiet_runs<P: Ports>(
    p: &Pipeline<P>,
    after: Option<&str>,
    until: Option<&str>,
    scan: usize,
) -> Result<(Summarized, Vec<Quiet>)> {
    let store = p.ports.store();
    let now = p.ports.now();
    let mut days = store.list(RUN_INDEX_DAYS).await?;
    days.reverse();
    let mut seen = 0usize;
    let mut done = Summarized::default();
    let mut quiet = vec![];
    for day_key in days {
        let day = &day_key[RUN_INDEX_DAYS.len()..];
        if after.is_some_and(|a| a.get(..10).is_some_and(|a_day| day > a_day)) {
            continue;
        }
        if until.is_some_and(|u| u.get(..10).is_some_and(|u_day| day < u_day)) {
            break;
        }
        let mut keys = store
            .list(&format!(
                "{RUN_INDEX}{day}/{}",
                window(day, after, until, now)
            ))
            .await?;
        keys.reverse();
        // The day's keys this walk reads, newest first; then whether it stops here.
        let mut picked = vec![];
        let mut stop = false;
        for key in keys {
            let cursor = &key[RUN_INDEX.len()..];
            if after.is_some_and(|a| cursor >= a) {
                continue;
            }
            if until.is_some_and(|u| cursor < u) || seen == scan {
                stop = true;
                break;
            }
            seen += 1;
            done.seen = seen;
            done.cut = Some(cursor.to_string());
            if done.first.is_none() {
                done.first = Some(cursor.to_string());
            }
            picked.push(key);
        }
        // Read a few dozen entries at once, then their stamps (two trips, not two a run).
        for some in picked.chunks(64) {
            let mut read = vec![];
            for (key, obj) in some.iter().zip(store.get_many(some).await?) {
                if let (Some(obj), Some(run)) = (obj, run_of_index_key(key)) {
                    let entry: IndexEntry = json_of(key, &obj.bytes)?;
                    read.push((key, run, entry, obj.etag));
                }
            }
            let sets: Vec<Vec<String>> = read
                .iter()
                .map(|(_, run, entry, _)| summary_dirs(&entry.app, run).to_vec())
                .collect();
            for ((key, run, entry, etag), stamp) in read.into_iter().zip(store.stamps(&sets).await?)
            {
                let Some(stamp) = stamp else {
                    // The store cannot tell when a run changes: nothing to keep.
                    done.cut = None;
                    return Ok((done, quiet));
                };
                if entry
                    .summary
                    .as_ref()
                    .is_some_and(|k| k.stamp == stamp.token)
                {
                    continue;
                }
                // Written in the last moments (in flight): left for a later walk, without
                // reading its records now. The oldest such is the one to walk again from.
                if stamp
                    .changed
                    .is_some_and(|c| now.signed_duration_since(c) < QUIET)
                {
                    done.unsettled = Some(key[RUN_INDEX.len()..].to_string());
                    continue;
                }
                quiet.push(Quiet {
                    key: key.clone(),
                    entry,
                    etag,
                    run,
                });
            }
        }
        if stop {
            return Ok((done, quiet));
        }
    }
    done.cut = None;
    Ok((done, quiet))
}

/// The digits every index key of `day` between the cursors `until` and `after` (or a
/// minute from `now`) starts its time with, so a walk of the newest runs lists those and
/// not the day's whole index (an entry more than a minute ahead of the clock is listed
/// once the clock reaches it).
fn window(day: &str, after: Option<&str>, until: Option<&str>, now: DateTime<Utc>) -> String {
    let ms_of = |cursor: &str| -> Option<String> {
        let (d, rest) = cursor.split_once('/')?;
        (d == day).then(|| rest.get(..13).map(str::to_string))?
    };
    let Some(low) = until.and_then(ms_of) else {
        return String::new();
    };
    let high = match after {
        Some(a) => match ms_of(a) {
            Some(h) => h,
            None => return String::new(),
        },
        None => {
            let Some(h) = now.checked_add_signed(chrono::TimeDelta::minutes(1)) else {
                return String::new();
            };
            if h.format("%Y-%m-%d").to_string() != day {
                return String::new();
            }
            format!("{:013}", h.timestamp_millis().max(0))
        }
    };
    low.chars()
        .zip(high.chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect()
}

/// Where [`summarize`] walks stand between calls: keeps the summaries of every quiet
/// run, walking only what changed since (see [`Summarizer::step`]).
#[derive(Debug, Clone, Default)]
pub struct Summarizer {
    /// Every entry older than this cursor has been summarized (or read while quiet).
    settled_below: Option<String>,
    /// A walk cut at its scan limit goes on from here.
    resume: Option<String>,
    /// The newest entry of the walk in progress.
    top: Option<String>,
    /// The oldest entry of the walk in progress that was not quiet yet.
    unsettled: Option<String>,
}

impl Summarizer {
    /// One walk of at most `scan` entries: from the newest run (or where the last walk
    /// was cut) down to the newest entry known settled. Once a walk reaches it, the
    /// settled mark moves up to the oldest run that was not quiet, or to the walk's
    /// newest entry.
    pub async fn step<P: Ports>(&mut self, p: &Pipeline<P>, scan: usize) -> Result<Summarized> {
        let r = summarize(
            p,
            self.resume.as_deref(),
            self.settled_below.as_deref(),
            scan,
        )
        .await?;
        if self.resume.is_none() {
            self.top = r.first.clone();
        }
        if r.unsettled.is_some() {
            self.unsettled = r.unsettled.clone();
        }
        match &r.cut {
            Some(cut) => self.resume = Some(cut.clone()),
            None => {
                self.resume = None;
                if let Some(mark) = self.unsettled.take().or(self.top.take()) {
                    self.settled_below = Some(mark);
                }
            }
        }
        Ok(r)
    }
}

/// The keys of these runs' index entries (for retention to remove); lists the index once.
pub async fn index_keys_of<S: ObjectStore>(store: &S, runs: &[RunId]) -> Result<Vec<String>> {
    Ok(store
        .list(RUN_INDEX)
        .await?
        .into_iter()
        .filter(|k| {
            k.rsplit_once('-')
                .is_some_and(|(_, r)| runs.iter().any(|run| run.as_str() == r))
        })
        .collect())
}

/// A run's records, events and approvals.
pub async fn view<P: Ports>(p: &Pipeline<P>, app: &str, run: &RunId) -> Result<RunView> {
    let store = p.ports.store();
    let prefix = run_prefix(app, run);
    let mut stages = vec![];
    let mut events = vec![];
    let mut rolled_back = vec![];
    for (key, obj) in store.get_prefix(&prefix).await? {
        let rest = &key[prefix.len()..];
        if rest.starts_with("stages/") {
            stages.push(json_of::<StageRecord>(&key, &obj.bytes)?);
        } else if rest.starts_with("events/") {
            events.push(json_of::<Event>(&key, &obj.bytes)?);
        } else if rest.starts_with("rollbacks/") {
            rolled_back.push(json_of::<RolledBackMark>(&key, &obj.bytes)?);
        }
    }
    if stages.is_empty() && events.is_empty() {
        return Err(Error::not_found("run", run.as_str()));
    }
    let app_cfg = p.config.app(app)?;
    let env_index = |e: &Option<String>| {
        e.as_ref()
            .and_then(|e| app_cfg.environments.iter().position(|x| &x.name == e))
            .unwrap_or(0)
    };
    stages.sort_by_key(|s| (s.started_at, env_index(&s.environment), s.stage));
    events.sort_by(|a, b| a.time.cmp(&b.time).then(a.id.cmp(&b.id)));
    // The configured environments' approvals, in their order.
    let mut found = std::collections::BTreeMap::new();
    for (key, obj) in store.get_prefix(&format!("approvals/{app}/{run}/")).await? {
        found.insert(key.clone(), json_of::<ApprovalRecord>(&key, &obj.bytes)?);
    }
    let approvals = app_cfg
        .environments
        .iter()
        .filter_map(|env| found.remove(&approval_key(app, run, &env.name)))
        .collect();
    let image = events.first().map(|e| e.ctx().image.clone());
    let status = status_of(app_cfg, &stages, &events, &rolled_back);
    Ok(RunView {
        app: app.into(),
        run: run.clone(),
        image,
        status,
        stages,
        events,
        approvals,
        rolled_back,
    })
}

/// The record `baton retry` re-runs exactly one stage from (its recorded input, as a new
/// attempt), for the stage `spec` declares. Per-environment stages need `env` unless the
/// stage ran in one environment only.
pub async fn retry_record<P: Ports>(
    p: &Pipeline<P>,
    run: &str,
    spec: &StageSpec,
    env: Option<&str>,
) -> Result<StageRecord> {
    let stage = spec.name;
    if spec.consumes == crate::pipeline::stage::Consumes::Reactions {
        return Err(Error::Refused(
            "notify runs per reaction; redrive its dead letters instead".into(),
        ));
    }
    let (app, run) = resolve(p, run).await?;
    let app_cfg = p.config.app(&app)?;
    let env = match (spec.per_environment, env) {
        (false, Some(e)) => {
            return Err(Error::Refused(format!(
                "{stage} runs once per image; drop --env {e}"
            )));
        }
        (false, None) => None,
        (true, Some(e)) => Some(app_cfg.environment(e)?.name.clone()),
        (true, None) => {
            let ran: Vec<String> = view(p, &app, &run)
                .await?
                .stages
                .into_iter()
                .filter(|s| s.stage == stage)
                .filter_map(|s| s.environment)
                .collect();
            match ran.as_slice() {
                [one] => Some(one.clone()),
                [] => {
                    return Err(Error::Refused(format!(
                        "{stage} has not run for run {run}; nothing to retry"
                    )));
                }
                many => {
                    return Err(Error::Refused(format!(
                        "{stage} ran in {}; say which with --env",
                        many.join(", ")
                    )));
                }
            }
        }
    };
    let key = stage_key(&app, &run, stage.as_str(), env.as_deref());
    let Some((rec, _)) = get_json::<_, StageRecord>(p.ports.store(), &key).await? else {
        return Err(Error::Refused(format!(
            "{stage} has not run for run {run}{}; nothing to retry",
            env.map(|e| format!(" in {e}")).unwrap_or_default()
        )));
    };
    tracing::info!(%run, %stage, attempt = rec.attempt + 1, "retrying stage");
    Ok(rec)
}

/// Where a run stands now, in words `baton status` prints (and JSON carries as that
/// string): `deployed`, `awaiting approval (production)`, `tests failed`, …
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStatus {
    /// The last environment runs its image (not through a rollback).
    Deployed,
    /// An operator rolled this run's image back out of this environment (`baton
    /// rollback`), and it has not been deployed there again since.
    RolledBack(String),
    /// The deploy to this environment waits: it is held after a rollback.
    Held(String),
    /// The deploy to this environment waits: it is frozen (a window, or by hand).
    Frozen(String),
    AwaitingApproval(String),
    TestsFailed,
    Rejected(String),
    /// A newer image is live in this environment.
    Superseded(String),
    /// The environment's checks run after the deploy (through the soak).
    Verifying(String),
    /// A check failed after the deploy; `rolled_back` once the previous image is back.
    VerificationFailed {
        environment: String,
        rolled_back: bool,
    },
    DeployFailed {
        environment: String,
        rolled_back: bool,
    },
    /// A stage stopped on a permanent error.
    FailedAt {
        stage: StageName,
        environment: Option<String>,
    },
    Retrying(StageName),
    InProgress,
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunStatus::Deployed => f.write_str("deployed"),
            RunStatus::RolledBack(env) => write!(f, "rolled back ({env})"),
            RunStatus::Held(env) => write!(f, "held ({env})"),
            RunStatus::Frozen(env) => write!(f, "frozen ({env})"),
            RunStatus::AwaitingApproval(env) => write!(f, "awaiting approval ({env})"),
            RunStatus::TestsFailed => f.write_str("tests failed"),
            RunStatus::Rejected(env) => write!(f, "rejected ({env})"),
            RunStatus::Superseded(env) => write!(f, "superseded ({env})"),
            RunStatus::Verifying(env) => write!(f, "verifying ({env})"),
            RunStatus::VerificationFailed {
                environment,
                rolled_back,
            } => write!(
                f,
                "verification failed ({environment}{})",
                if *rolled_back { ", rolled back" } else { "" }
            ),
            RunStatus::DeployFailed {
                environment,
                rolled_back,
            } => write!(
                f,
                "deploy failed ({environment}{})",
                if *rolled_back { ", rolled back" } else { "" }
            ),
            RunStatus::FailedAt { stage, environment } => write!(
                f,
                "failed at {stage}{}",
                environment
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ),
            RunStatus::Retrying(stage) => write!(f, "retrying {stage}"),
            RunStatus::InProgress => f.write_str("in progress"),
        }
    }
}

impl Serialize for RunStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::str::FromStr for RunStatus {
    type Err = String;

    /// The words [`RunStatus`] prints, read back (a summary kept in the run index).
    fn from_str(s: &str) -> std::result::Result<RunStatus, String> {
        let bad = || format!("{s:?} is not a run status");
        let inner = |rest: &str| -> Option<String> {
            rest.strip_prefix('(')?
                .strip_suffix(')')
                .map(str::to_string)
        };
        let failed = |rest: &str| -> Option<(String, bool)> {
            let env = inner(rest)?;
            Some(match env.strip_suffix(", rolled back") {
                Some(e) => (e.to_string(), true),
                None => (env, false),
            })
        };
        let parsed = match s {
            "deployed" => Some(RunStatus::Deployed),
            "tests failed" => Some(RunStatus::TestsFailed),
            "in progress" => Some(RunStatus::InProgress),
            _ => {
                let (head, rest) = match s.find(" (") {
                    Some(i) => (&s[..i], &s[i + 1..]),
                    None => (s, ""),
                };
                match head {
                    "rolled back" => inner(rest).map(RunStatus::RolledBack),
                    "held" => inner(rest).map(RunStatus::Held),
                    "frozen" => inner(rest).map(RunStatus::Frozen),
                    "awaiting approval" => inner(rest).map(RunStatus::AwaitingApproval),
                    "rejected" => inner(rest).map(RunStatus::Rejected),
                    "superseded" => inner(rest).map(RunStatus::Superseded),
                    "verifying" => inner(rest).map(RunStatus::Verifying),
                    "verification failed" => failed(rest).map(|(environment, rolled_back)| {
                        RunStatus::VerificationFailed {
                            environment,
                            rolled_back,
                        }
                    }),
                    "deploy failed" => {
                        failed(rest).map(|(environment, rolled_back)| RunStatus::DeployFailed {
                            environment,
                            rolled_back,
                        })
                    }
                    _ => {
                        if let Some(stage) = head.strip_prefix("failed at ") {
                            let environment = if rest.is_empty() {
                                Some(None)
                            } else {
                                inner(rest).map(Some)
                            };
                            stage
                                .parse()
                                .ok()
                                .zip(environment)
                                .map(|(stage, environment)| RunStatus::FailedAt {
                                    stage,
                                    environment,
                                })
                        } else if let Some(stage) = head.strip_prefix("retrying ") {
                            (rest.is_empty())
                                .then(|| stage.parse().ok().map(RunStatus::Retrying))
                                .flatten()
                        } else {
                            None
                        }
                    }
                }
            }
        };
        parsed.ok_or_else(bad)
    }
}

impl<'de> Deserialize<'de> for RunStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A mark on a run whose image `baton rollback` took out of an environment:
/// `runs/<app>/<run>/rollbacks/<env>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolledBackMark {
    pub environment: String,
    pub at: DateTime<Utc>,
    /// The image put back in its place.
    pub to: Image,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Why (`baton rollback --reason`, the dashboard's rollback form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The key of `run`'s rollback mark in `env`.
pub fn rolled_back_key(app: &str, run: &str, env: &str) -> String {
    format!("{}rollbacks/{env}.json", run_prefix(app, run))
}

/// The overall status of a run, from its records and events: what is true now.
fn status_of(
    app: &crate::config::AppConfig,
    stages: &[StageRecord],
    events: &[Event],
    rolled_back: &[RolledBackMark],
) -> RunStatus {
    if let Some(s) = stages.iter().find(|s| s.status == StageStatus::Failed) {
        return RunStatus::FailedAt {
            stage: s.stage,
            environment: s.environment.clone(),
        };
    }
    // Rolled back out of an environment, and not deployed there again since (a rollback
    // to this run publishes a deploy.succeeded for it, later than the mark).
    for env in app.environments.iter().rev() {
        let Some(mark) = rolled_back.iter().find(|m| m.environment == env.name) else {
            continue;
        };
        let redeployed = events.iter().any(|e| {
            matches!(e.payload, Payload::DeploySucceeded(_))
                && e.ctx().environment.as_deref() == Some(env.name.as_str())
                && e.time > mark.at
        });
        if !redeployed {
            return RunStatus::RolledBack(env.name.clone());
        }
    }
    let last_env = app.environments.last().map(|e| e.name.as_str());
    let mut deployed_last = false;
    // Newest first: a retried stage's later outcome replaces its earlier one.
    let mut deployed = std::collections::BTreeSet::new();
    for e in events.iter().rev() {
        let env = e.ctx().environment.clone().unwrap_or_default();
        match &e.payload {
            Payload::TestsPassed(_) => break,
            Payload::TestsFailed(_) => return RunStatus::TestsFailed,
            Payload::DeployFailed(_) if deployed.contains(&env) => {}
            Payload::ApprovalRejected(_) => return RunStatus::Rejected(env),
            Payload::DeployFailed(d) if d.code == FailureCode::Superseded => {
                return RunStatus::Superseded(env);
            }
            Payload::DeployFailed(d) => {
                return RunStatus::DeployFailed {
                    environment: env,
                    rolled_back: d.rolled_back,
                };
            }
            Payload::VerificationFailed(_) if !deployed.contains(&env) => {
                // Back once the deploy stage's record of putting it back succeeded.
                let rolled_back = stages.iter().any(|s| {
                    s.stage == StageName::Deploy
                        && s.status == StageStatus::Succeeded
                        && s.environment.as_deref() == Some(env.as_str())
                        && matches!(&s.input, crate::pipeline::stage::Input::Event(i)
                            if matches!(i.payload, Payload::VerificationFailed(_)))
                        && s.outputs
                            .iter()
                            .any(|o| matches!(o.payload, Payload::DeploySucceeded(_)))
                });
                return RunStatus::VerificationFailed {
                    environment: env,
                    rolled_back,
                };
            }
            Payload::DeploySucceeded(d) => {
                if Some(env.as_str()) == last_env && !d.rollback {
                    deployed_last = true;
                }
                deployed.insert(env);
            }
            _ => {}
        }
    }
    if let Some(s) = stages
        .iter()
        .find(|s| s.stage == StageName::Verify && !s.status.is_final())
    {
        return RunStatus::Verifying(s.environment.clone().unwrap_or_default());
    }
    if deployed_last {
        return RunStatus::Deployed;
    }
    // A deploy waiting on a hold or a freeze says so.
    if let Some(s) = stages.iter().find(|s| {
        s.stage == StageName::Deploy
            && s.status == StageStatus::Waiting
            && s.progress
                .as_ref()
                .is_some_and(|v| v.get("blocked").is_some())
    }) {
        let env = s.environment.clone().unwrap_or_default();
        let kind = s
            .progress
            .as_ref()
            .and_then(|v| v["blocked"]["kind"].as_str());
        return if kind == Some("hold") {
            RunStatus::Held(env)
        } else {
            RunStatus::Frozen(env)
        };
    }
    // Waiting at the approve stage: the approval is the stage that waits for people.
    if let Some(s) = stages
        .iter()
        .find(|s| s.stage == StageName::Approve && s.status == StageStatus::Waiting)
    {
        return RunStatus::AwaitingApproval(s.environment.clone().unwrap_or_default());
    }
    if let Some(s) = stages.iter().find(|s| s.status == StageStatus::Retrying) {
        return RunStatus::Retrying(s.stage);
    }
    RunStatus::InProgress
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A walk between two cursors of a day lists the keys sharing their time's leading
    /// digits; anything it cannot bound lists the whole day.
    #[test]
    fn walks_list_the_window_between_their_cursors() {
        let day = "2026-11-30";
        let now = DateTime::parse_from_rfc3339("2026-11-30T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let ms = now.timestamp_millis();
        let cursor = |ms: i64| format!("{day}/{ms:013}-0123456789abcdef");
        // From a minute ahead of now down to 2 s ago.
        let w = window(day, None, Some(&cursor(ms - 2_000)), now);
        let (lo, hi) = (
            format!("{:013}", ms - 2_000),
            format!("{:013}", ms + 60_000),
        );
        assert!(lo.starts_with(&w) && hi.starts_with(&w), "{w}");
        assert!(w.len() >= 7, "at most 10^6 ms wide: {w}");
        // Between two cursors.
        let w = window(
            day,
            Some(&cursor(ms + 1_005)),
            Some(&cursor(ms + 1_000)),
            now,
        );
        assert_eq!(w, format!("{:013}", ms + 1_000)[..12]);
        // Another day, no lower bound, or a bound on another day: the whole day.
        assert_eq!(window("2026-11-29", None, Some(&cursor(ms)), now), "");
        assert_eq!(window(day, None, None, now), "");
        assert_eq!(
            window(
                day,
                None,
                Some(&format!("2026-11-29/{:013}-0123456789abcdef", ms)),
                now
            ),
            ""
        );
    }

    /// Every status reads back from the words it prints (summaries kept in the run index
    /// are stored that way); anything else is refused.
    #[test]
    fn statuses_read_back_from_their_words() {
        let env = || "production".to_string();
        let all = [
            RunStatus::Deployed,
            RunStatus::RolledBack(env()),
            RunStatus::Held(env()),
            RunStatus::Frozen(env()),
            RunStatus::AwaitingApproval(env()),
            RunStatus::TestsFailed,
            RunStatus::Rejected(env()),
            RunStatus::Superseded(env()),
            RunStatus::Verifying(env()),
            RunStatus::VerificationFailed {
                environment: env(),
                rolled_back: true,
            },
            RunStatus::VerificationFailed {
                environment: env(),
                rolled_back: false,
            },
            RunStatus::DeployFailed {
                environment: "staging-eu".into(),
                rolled_back: true,
            },
            RunStatus::DeployFailed {
                environment: env(),
                rolled_back: false,
            },
            RunStatus::FailedAt {
                stage: StageName::Deploy,
                environment: Some(env()),
            },
            RunStatus::FailedAt {
                stage: StageName::Test,
                environment: None,
            },
            RunStatus::Retrying(StageName::Verify),
            RunStatus::InProgress,
        ];
        for s in all {
            let words = s.to_string();
            assert_eq!(words.parse::<RunStatus>(), Ok(s.clone()), "{words}");
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(serde_json::from_str::<RunStatus>(&json).unwrap(), s);
        }
        for bad in [
            "",
            "deployed (production)",
            "held",
            "held (production",
            "failed at nowhere",
            "retrying test (production)",
            "in progress!",
        ] {
            assert!(bad.parse::<RunStatus>().is_err(), "{bad:?} was read");
        }
    }
}
