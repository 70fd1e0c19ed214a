//! The one stage harness every stage runs under: claim the stage record with a
//! conditional create (dedupe), run the stage, derive output event ids from (input id,
//! stage, output type, attempt), append them to the run log, publish, and record the
//! outcome. Transient errors go back to the bus for a retry; permanent ones publish
//! `stage.failed` with the reason (when the stage reports failures). A stage that waits
//! records its progress and asks the bus to deliver again later. The harness is generic
//! over [`Stage`] and names no stage; stages never copy any of this.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::event::{Event, Payload, StageFailed};
use crate::ids::output_event_id;
use crate::pipeline::Pipeline;
use crate::pipeline::stage::{Input, RecordKey, Stage, StageCtx, StageName, Step};
use crate::ports::{BusMessage, EventBus, Ports, Precondition};
use crate::store::{Change, Swapped, compare_and_swap, create_or_swap, event_key, put_json};

/// Where a stage record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageStatus {
    /// Claimed; the stage is running (until `lease_until`).
    Running,
    /// The stage asked to be checked again later (long test, rollout, approval).
    Waiting,
    /// A transient error; the bus will deliver again.
    Retrying,
    /// Outputs are decided and being published (a crash here republishes them).
    Publishing,
    Succeeded,
    /// Stopped on a permanent error; `baton retry` re-runs it.
    Failed,
}

impl StageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StageStatus::Running => "running",
            StageStatus::Waiting => "waiting",
            StageStatus::Retrying => "retrying",
            StageStatus::Publishing => "publishing",
            StageStatus::Succeeded => "succeeded",
            StageStatus::Failed => "failed",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, StageStatus::Succeeded | StageStatus::Failed)
    }
}

/// A recorded error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedError {
    pub kind: String,
    pub message: String,
}

impl From<&Error> for RecordedError {
    fn from(e: &Error) -> Self {
        RecordedError {
            kind: e.kind().into(),
            message: e.to_string(),
        }
    }
}

/// One transition in a stage record's life, for the timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub at: DateTime<Utc>,
    pub attempt: u32,
    pub status: StageStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The stage record: claim, progress and outcome of one stage for one run (and
/// environment). Stored at `runs/<app>/<run>/stages/<stage>[.<env>].json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub stage: StageName,
    pub app: String,
    pub run: crate::ids::RunId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    pub status: StageStatus,
    pub attempt: u32,
    /// The input this record was claimed for; `baton retry` re-runs from it.
    pub input: Input,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_until: Option<DateTime<Utc>>,
    /// The worker holding the lease (`host/pid/start` for local processes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Output events (ids fixed before publishing).
    #[serde(default)]
    pub outputs: Vec<Event>,
    /// Stage-owned progress of a waiting stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RecordedError>,
    #[serde(default)]
    pub history: Vec<Transition>,
}

impl StageRecord {
    fn transition(&mut self, status: StageStatus, now: DateTime<Utc>, note: Option<String>) {
        self.status = status;
        self.updated_at = now;
        self.history.push(Transition {
            at: now,
            attempt: self.attempt,
            status,
            note: note.clone(),
        });
        if note.is_some() {
            self.note = note;
        }
        if status.is_final() {
            self.finished_at = Some(now);
            self.lease_until = None;
        }
    }

    /// Starts a new attempt, claimed by `owner` until `lease_until`.
    fn restart(
        &mut self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        owner: &str,
        note: String,
    ) {
        self.attempt += 1;
        self.outputs.clear();
        self.progress = None;
        self.error = None;
        self.finished_at = None;
        self.note = None;
        self.lease_until = Some(lease_until);
        self.owner = Some(owner.to_string());
        self.transition(StageStatus::Running, now, Some(note));
    }

    /// Wall time from the first claim to the final outcome (or to `now`).
    pub fn duration(&self, now: DateTime<Utc>) -> chrono::Duration {
        self.finished_at.unwrap_or(now) - self.started_at
    }
}

/// How a delivery reached the harness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A bus delivery (or a re-delivery).
    Deliver,
    /// `baton retry`: re-run a failed stage from its recorded input with a new attempt.
    Retry,
}

/// What the bus should do with the delivery.
#[derive(Debug)]
pub enum Disposition {
    /// Acknowledge: done, a duplicate, or a permanent failure already reported.
    Done,
    /// Deliver again after this long (a waiting stage).
    Later(Duration),
    /// Deliver again with backoff (transient error).
    Retry(Error),
}

/// The result of one harness invocation.
#[derive(Debug)]
pub struct Handled {
    pub disposition: Disposition,
    /// Record key, when the stage had work to do.
    pub record: Option<String>,
    pub status: Option<StageStatus>,
    pub outputs: Vec<Event>,
    /// True when the input was a duplicate and nothing ran.
    pub duplicate: bool,
    pub note: Option<String>,
}

impl Handled {
    fn ack(note: impl Into<String>, duplicate: bool, record: Option<String>) -> Handled {
        Handled {
            disposition: Disposition::Done,
            record,
            status: None,
            outputs: vec![],
            duplicate,
            note: Some(note.into()),
        }
    }
}

/// How long a claim holds before another worker may take it over.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// A worker identity unique in this process: `owner#n`.
pub fn worker_id(owner: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    format!(
        "{owner}#{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Runs `stage` on `input` under the harness.
pub async fn handle<S: Stage<P>, P: Ports>(
    p: &Pipeline<P>,
    input: Input,
    mode: Mode,
) -> Result<Handled> {
    let stage = S::SPEC.name;
    let ctx = input.ctx().clone();
    let Some(record) = S::record(p, &input)? else {
        return Ok(Handled::ack(
            format!("{stage}: nothing to do for {}", input.describe()),
            false,
            None,
        ));
    };
    let key = record.key.clone();
    let (mut rec, mut etag) = match claim::<S, P>(p, &record, &input, mode).await? {
        Claim::Claimed(rec, etag) => (*rec, etag),
        Claim::Skip(h) => return Ok(h),
    };
    p.fail_point(stage.as_str(), "claimed");

    // A crash after the outputs were fixed: publish them again, do not re-run.
    if rec.status == StageStatus::Publishing {
        return finish_publishing(p, &key, rec, etag).await;
    }

    let sctx = StageCtx {
        stage,
        attempt: rec.attempt,
        input_id: input.id(),
        progress: rec.progress.clone(),
        now: p.ports.now(),
        worker: worker_id(&p.settings.owner),
    };
    let span = tracing::info_span!("stage", stage = %stage, run = %ctx.run, app = %ctx.app,
        env = ctx.environment.as_deref().unwrap_or("-"), attempt = rec.attempt);
    // On the heap: a stage's future (deploy's holds a rollout, a lease and records) is
    // large, and the harness's callers run on threads with small stacks.
    // The claim is renewed while the stage runs, however long it takes; each renewal
    // moves the etag the final save must match.
    let claim_state = std::sync::Mutex::new((etag, rec.lease_until));
    let result = {
        let work = Box::pin(S::run(p, &input, &sctx)).instrument(span);
        let renew = Box::pin(renew_claim(p, &key, &rec, &claim_state));
        tokio::select! {
            r = work => r,
            never = renew => match never {},
        }
    };
    (etag, rec.lease_until) = claim_state.into_inner().unwrap_or_else(|p| p.into_inner());
    let now = p.ports.now();
    match result {
        Ok(Step::Done { outputs, note }) => {
            rec.outputs = outputs
                .into_iter()
                .map(|p| output_event(stage, &input, rec.attempt, p, now))
                .collect();
            rec.error = None;
            rec.progress = None;
            rec.transition(StageStatus::Publishing, now, note);
            etag = save(p, &key, &rec, etag).await?;
            p.fail_point(stage.as_str(), "outputs_fixed");
            finish_publishing(p, &key, rec, etag).await
        }
        Ok(Step::Wait {
            after,
            progress,
            note,
            notices,
        }) => {
            // Published before the record says the stage waits: a crash in between
            // publishes them again, under the same ids.
            let events: Vec<Event> = notices
                .into_iter()
                .map(|n| notice_event(stage, &input, rec.attempt, n, now))
                .collect();
            publish(p, &events).await?;
            rec.progress = Some(progress);
            rec.lease_until = None;
            rec.transition(StageStatus::Waiting, now, Some(note.clone()));
            save(p, &key, &rec, etag).await?;
            tracing::info!(%key, after_ms = after.as_millis() as u64, %note, "stage waiting");
            Ok(Handled {
                disposition: Disposition::Later(after),
                record: Some(key),
                status: Some(StageStatus::Waiting),
                outputs: vec![],
                duplicate: false,
                note: Some(note),
            })
        }
        Err(e) if e.is_retryable() => {
            tracing::warn!(%key, error = %e, kind = e.kind(), "stage failed transiently; will retry");
            rec.error = Some((&e).into());
            rec.lease_until = None;
            rec.transition(StageStatus::Retrying, now, None);
            save(p, &key, &rec, etag).await?;
            Ok(Handled {
                disposition: Disposition::Retry(e),
                record: Some(key),
                status: Some(StageStatus::Retrying),
                outputs: vec![],
                duplicate: false,
                note: None,
            })
        }
        Err(e) => {
            tracing::error!(%key, error = %e, kind = e.kind(), "stage failed permanently");
            rec.error = Some((&e).into());
            rec.progress = None;
            rec.outputs = if !S::SPEC.reports_failures {
                vec![]
            } else {
                let failed = Payload::StageFailed(StageFailed {
                    ctx: ctx.clone(),
                    stage: stage.as_str().into(),
                    error_kind: e.kind().into(),
                    reason: e.to_string(),
                });
                vec![output_event(stage, &input, rec.attempt, failed, now)]
            };
            rec.transition(StageStatus::Publishing, now, None);
            etag = save(p, &key, &rec, etag).await?;
            finish_publishing(p, &key, rec, etag).await
        }
    }
}

/// Builds an output event: id derived from the input, causation and attempt set.
fn output_event(
    stage: StageName,
    input: &Input,
    attempt: u32,
    mut payload: Payload,
    now: DateTime<Utc>,
) -> Event {
    let input_id = input.id();
    {
        let ctx = payload.ctx_mut();
        ctx.causation = input_id.clone();
        ctx.attempt = attempt;
    }
    let id = output_event_id(
        &input_id,
        stage.as_str(),
        payload.event_type().as_str(),
        attempt,
    );
    Event::new(id, stage.as_str(), now, payload)
}

/// The event of a waiting stage's notice: its id from the input, the attempt and the
/// notice's key.
fn notice_event(
    stage: StageName,
    input: &Input,
    attempt: u32,
    notice: crate::pipeline::stage::Notice,
    now: DateTime<Utc>,
) -> Event {
    let mut e = output_event(stage, input, attempt, notice.payload, now);
    e.id = output_event_id(
        &input.id(),
        stage.as_str(),
        &format!("{}.{}", e.event_type(), notice.key),
        attempt,
    );
    e
}

/// Appends events to their run logs and publishes them, in order.
pub async fn publish<P: Ports>(p: &Pipeline<P>, events: &[Event]) -> Result<()> {
    for e in events {
        let ctx = e.ctx();
        let key = event_key(&ctx.app, &ctx.run, &e.id);
        match put_json(p.ports.store(), &key, e, Precondition::IfNoneMatch).await {
            Ok(_) | Err(Error::Conflict { .. }) => {}
            Err(err) => return Err(err.context(format!("append {} to run log", e.id))),
        }
        let source = e.source.trim_start_matches("/baton/");
        p.fail_point(source, "appended");
        p.ports
            .bus()
            .publish(&BusMessage::from_event(e))
            .await
            .map_err(|err| err.context(format!("publish {} {}", e.event_type(), e.id)))?;
        p.fail_point(source, "published");
        tracing::info!(event = %e.event_type(), id = %e.id, run = %ctx.run, "published");
    }
    Ok(())
}

async fn finish_publishing<P: Ports>(
    p: &Pipeline<P>,
    key: &str,
    mut rec: StageRecord,
    etag: String,
) -> Result<Handled> {
    if let Err(e) = publish(p, &rec.outputs).await {
        // Leave the record in `publishing` with its lease released: the next
        // delivery republishes the same events at once.
        rec.lease_until = None;
        if let Err(save) = save(p, key, &rec, etag).await {
            tracing::warn!(%key, error = %save, "could not release the claim; it expires by itself");
        }
        return Ok(Handled {
            disposition: Disposition::Retry(e),
            record: Some(key.to_string()),
            status: Some(StageStatus::Publishing),
            outputs: vec![],
            duplicate: false,
            note: None,
        });
    }
    let now = p.ports.now();
    let status = if rec.error.is_some() {
        StageStatus::Failed
    } else {
        StageStatus::Succeeded
    };
    rec.transition(status, now, None);
    save(p, key, &rec, etag).await?;
    p.fail_point(rec.stage.as_str(), "recorded");
    Ok(Handled {
        disposition: Disposition::Done,
        record: Some(key.to_string()),
        status: Some(status),
        outputs: rec.outputs,
        duplicate: false,
        note: rec.note,
    })
}

/// Renews a claim every third of the lease while its stage runs (never returns; stops
/// renewing when another worker took the record over, whose save then wins).
async fn renew_claim<P: Ports>(
    p: &Pipeline<P>,
    key: &str,
    rec: &StageRecord,
    state: &std::sync::Mutex<(String, Option<DateTime<Utc>>)>,
) -> std::convert::Infallible {
    let every = (p.settings.lease / 3).max(Duration::from_millis(20));
    let mut rec = rec.clone();
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        tokio::time::sleep(every).await;
        let now = p.ports.now();
        let Some(until) = chrono::Duration::from_std(p.settings.lease)
            .ok()
            .and_then(|l| now.checked_add_signed(l))
        else {
            return std::future::pending().await;
        };
        rec.lease_until = Some(until);
        let etag = lock().0.clone();
        match put_json(p.ports.store(), key, &rec, Precondition::IfMatch(etag)).await {
            Ok(etag) => *lock() = (etag, Some(until)),
            Err(Error::Conflict { .. }) => {
                tracing::warn!(%key, "the claim was taken over by another worker; no longer renewing it");
                return std::future::pending().await;
            }
            Err(e) => {
                tracing::warn!(%key, error = %e, "could not renew the claim; trying again");
            }
        }
    }
}

async fn save<P: Ports>(
    p: &Pipeline<P>,
    key: &str,
    rec: &StageRecord,
    etag: String,
) -> Result<String> {
    put_json(p.ports.store(), key, rec, Precondition::IfMatch(etag))
        .await
        .map_err(|e| match e {
            // Someone else took the record over (an expired lease): let the bus retry.
            Error::Conflict { key } => Error::transient(
                format!("stage record {key}"),
                crate::error::Message("changed by another worker".into()),
            ),
            other => other,
        })
}

async fn claim<S: Stage<P>, P: Ports>(
    p: &Pipeline<P>,
    record: &RecordKey,
    input: &Input,
    mode: Mode,
) -> Result<Claim> {
    let stage = S::SPEC.name;
    let key = record.key.as_str();
    let lease = chrono::Duration::from_std(p.settings.lease)
        .map_err(|_| Error::invalid("settings", "the lease time is out of range"))?;
    let decide = |cur: Option<StageRecord>| {
        let now = p.ports.now();
        let lease_until = now
            .checked_add_signed(lease)
            .ok_or_else(|| Error::invalid("settings", "the lease time is out of range"))?;
        let Some(mut rec) = cur else {
            if mode == Mode::Retry {
                return Err(Error::not_found("stage record", key.to_string()));
            }
            let ctx = input.ctx();
            let mut rec = StageRecord {
                stage,
                app: ctx.app.clone(),
                run: ctx.run.clone(),
                environment: record.environment.clone(),
                status: StageStatus::Running,
                attempt: 1,
                input: input.clone(),
                started_at: now,
                updated_at: now,
                finished_at: None,
                lease_until: Some(lease_until),
                owner: Some(p.settings.owner.clone()),
                outputs: vec![],
                progress: None,
                note: None,
                error: None,
                history: vec![],
            };
            rec.transition(StageStatus::Running, now, None);
            return Ok(Change::Write(rec));
        };
        // A lease ends at its time, or at once when its local owner process died.
        let lease_live = rec.lease_until.is_some_and(|l| l > now)
            && !rec.owner.as_deref().is_some_and(crate::process::is_dead);
        if mode == Mode::Retry {
            match rec.status {
                // A stage whose outcome was a failure (tests failed, a deploy
                // failed) may run again: a flaky suite, a fixed cluster.
                StageStatus::Succeeded if !S::may_retry(&rec.outputs) => {
                    return Err(Error::Refused(format!(
                        "{stage} already succeeded for run {} ({}) without a failure; nothing to retry",
                        rec.run,
                        rec.environment.as_deref().unwrap_or("all environments")
                    )));
                }
                StageStatus::Running | StageStatus::Publishing if lease_live => {
                    return Err(Error::Refused(format!(
                        "{stage} is running for run {} right now (lease until {}); retry after it ends",
                        rec.run,
                        rec.lease_until.map(|l| l.to_rfc3339()).unwrap_or_default()
                    )));
                }
                _ => {}
            }
            rec.restart(
                now,
                lease_until,
                &p.settings.owner,
                "retried by operator".into(),
            );
            return Ok(Change::Write(rec));
        }
        // An input a rule refused (a forged approval.granted, say) does not hold the
        // stage's record against a later input: the genuine one takes the record over.
        if rec.input.id() != input.id()
            && rec.status == StageStatus::Failed
            && rec.error.as_ref().is_some_and(|e| e.kind == "refused")
        {
            let note = format!("takes over from the refused {}", rec.input.describe());
            rec.input = input.clone();
            rec.restart(now, lease_until, &p.settings.owner, note);
            return Ok(Change::Write(rec));
        }
        if rec.input.id() != input.id() {
            return Ok(Change::Stop(Handled::ack(
                format!(
                    "{stage}: run {} already handled by {}; {} is a duplicate",
                    rec.run,
                    rec.input.describe(),
                    input.describe()
                ),
                true,
                Some(key.to_string()),
            )));
        }
        match rec.status {
            StageStatus::Succeeded | StageStatus::Failed => {
                return Ok(Change::Stop(Handled::ack(
                    format!(
                        "{stage}: duplicate delivery of {} ignored",
                        input.describe()
                    ),
                    true,
                    Some(key.to_string()),
                )));
            }
            // Another worker is on it (a duplicate delivery, or the redelivery of a
            // crashed worker's message before its lease ran out): look again once the
            // lease would end. A wait, not a failure: it spends none of the message's
            // receives (a crash and two such checks would otherwise dead-letter it).
            StageStatus::Running | StageStatus::Publishing if lease_live => {
                let until = rec.lease_until.unwrap_or(now);
                let left = until
                    .signed_duration_since(now)
                    .to_std()
                    .unwrap_or_default();
                // The other worker usually finishes well before its lease ends (a
                // duplicate delivered beside its original): look again at least every
                // twelfth of the lease (5 s of the default 60 s).
                let check = (p.settings.lease / 12)
                    .max(Duration::from_millis(250))
                    .min(p.settings.lease);
                let after = left.saturating_add(Duration::from_millis(50)).min(check);
                return Ok(Change::Stop(Handled {
                    disposition: Disposition::Later(after),
                    record: Some(key.to_string()),
                    status: Some(rec.status),
                    outputs: vec![],
                    duplicate: true,
                    note: Some(format!(
                        "{stage} for run {} is in progress under another worker's lease (until {}); looking again in {} ms",
                        rec.run,
                        until.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                        after.as_millis()
                    )),
                }));
            }
            _ => {}
        }
        // Waiting, retrying, or an expired lease: take it (same attempt).
        rec.lease_until = Some(lease_until);
        rec.owner = Some(p.settings.owner.clone());
        if rec.status != StageStatus::Publishing {
            rec.transition(StageStatus::Running, now, None);
        }
        Ok(Change::Write(rec))
    };
    let (store, what) = (p.ports.store(), "stage record");
    // A delivery usually finds no record (the first one): its claim is one create.
    let swapped = match mode {
        Mode::Deliver => create_or_swap(store, key, what, decide).await?,
        Mode::Retry => compare_and_swap(store, key, what, decide).await?,
    };
    Ok(match swapped {
        Swapped::Written(rec, etag) => Claim::Claimed(Box::new(rec), etag),
        Swapped::Stopped(handled) => Claim::Skip(handled),
    })
}

enum Claim {
    Claimed(Box<StageRecord>, String),
    Skip(Handled),
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;
    use crate::adapters::memory::MemPorts;
    use crate::pipeline::stage::{Consumes, StageSpec, per_image};
    use crate::stages::testing::{pipeline, sample};

    /// A stage that runs until the test lets it finish.
    struct Slow;

    fn go() -> &'static tokio::sync::Notify {
        static GO: OnceLock<tokio::sync::Notify> = OnceLock::new();
        GO.get_or_init(tokio::sync::Notify::new)
    }

    static SLOW: StageSpec = StageSpec {
        name: StageName::Test,
        consumes: Consumes::Events(&[]),
        per_environment: false,
        reports_failures: true,
        may_hold: &[],
        never: "",
    };

    impl Stage<MemPorts> for Slow {
        const SPEC: &'static StageSpec = &SLOW;

        fn record(_p: &Pipeline<MemPorts>, input: &Input) -> Result<Option<RecordKey>> {
            Ok(Some(per_image(StageName::Test, input.ctx())))
        }

        async fn run(_p: &Pipeline<MemPorts>, _input: &Input, _ctx: &StageCtx) -> Result<Step> {
            go().notified().await;
            Ok(Step::publish(vec![]))
        }
    }

    /// A stage running longer than its lease keeps its claim: the claim is renewed while
    /// it runs, a second delivery meanwhile is told to come back when the lease would
    /// end (a wait, not a failure that spends a receive), and the stage's final save
    /// matches the renewed record.
    #[tokio::test]
    async fn a_claim_is_renewed_while_its_stage_runs() {
        let mut p = pipeline();
        p.settings.lease = Duration::from_millis(150);
        let input = Input::Event(sample("image.built", |_| {}));
        let key = per_image(StageName::Test, input.ctx()).key;
        let drive = async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            // Far beyond the lease taken at the claim.
            p.ports.advance(chrono::Duration::minutes(10));
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (rec, _): (StageRecord, String) = crate::store::get_json(p.ports.store(), &key)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(rec.status, StageStatus::Running);
            assert!(
                rec.lease_until.is_some_and(|l| l > p.ports.now()),
                "renewed: {:?} at {}",
                rec.lease_until,
                p.ports.now()
            );
            let second = handle::<Slow, _>(&p, input.clone(), Mode::Deliver).await;
            assert!(
                matches!(
                    &second,
                    Ok(Handled { disposition: Disposition::Later(after), note: Some(n), .. })
                        if n.contains("another worker's lease")
                            && *after > Duration::ZERO
                            && *after <= Duration::from_millis(150)
                ),
                "a second delivery waits (no failure) for the renewed claim to end: {second:?}"
            );
            go().notify_one();
        };
        let (first, ()) = tokio::join!(handle::<Slow, _>(&p, input.clone(), Mode::Deliver), drive);
        let first = first.unwrap();
        assert_eq!(first.status, Some(StageStatus::Succeeded), "{first:?}");
        let (rec, _): (StageRecord, String) = crate::store::get_json(p.ports.store(), &key)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rec.status, StageStatus::Succeeded);
    }
}
