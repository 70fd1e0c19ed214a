//! `EmbeddedBus`: SNS → SQS on one machine. Subscriptions carry SNS filter policies;
//! a publish fans out to every matching subscription's queue; each queue retries with
//! exponential backoff and moves a message to the dead-letter list after
//! `max_attempts`; a stage may ask for "deliver again in N seconds". Everything is a
//! durable append-only log under `<state>/bus/`, so a restart loses nothing:
//!
//! * `messages.jsonl`: one line per published message, with the subscriptions it
//!   matched at publish time (fan-out happens once, as in SNS);
//! * `deliveries.jsonl`: one line per delivery outcome (done, retry, wait, dead,
//!   redrive).
//!
//! Pending deliveries are the matched subscriptions without a final outcome. Appends
//! hold an exclusive file lock, so several `baton` processes may publish; one process at
//! a time delivers (`dispatch.lock`). Reading and appending the log (locks, `fsync`) runs
//! on tokio's blocking pool, never on an async worker.
//!
//! Memory and disk follow the work in flight, not the history: a process holds only
//! the messages that still have a pending delivery or a dead letter, and once the
//! messages file has grown past [`COMPACT_AFTER`] bytes and what is live is under a
//! quarter of it, the log is compacted: the live messages and their delivery state are
//! written to a new generation (`messages.<n>.jsonl`, `deliveries.<n>.jsonl`), synced,
//! and made current by renaming the `generation` file over the old one; the old
//! generation is then deleted. Every read happens under the lock and reads `generation`
//! first, so no process reads a generation that is being replaced.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use serde::{Deserialize, Serialize};

use crate::adapters::embedded::blocking;
use crate::adapters::embedded::store::Durability;
use crate::config::BusConfig;
use crate::error::{Error, Result};
use crate::policy::FilterPolicy;
use crate::ports::{BusMessage, EventBus};

/// What a subscriber did with a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// Processed (or deliberately dropped): remove from the queue.
    Done,
    /// Failed transiently: deliver again with backoff, up to `max_attempts`.
    Retry(String),
    /// Not finished: deliver again after this long (does not count as an attempt), with
    /// what the stage is waiting for.
    Later(Duration, String),
    /// Can never be processed (malformed): straight to the dead-letter list.
    Dead(String),
}

/// The consumer side: something that processes a delivery for a subscription.
pub trait Subscriber: Send + Sync {
    fn deliver(
        &self,
        subscription: &str,
        msg: &BusMessage,
    ) -> impl Future<Output = Delivery> + Send;
}

impl<S: Subscriber> Subscriber for Arc<S> {
    fn deliver(
        &self,
        subscription: &str,
        msg: &BusMessage,
    ) -> impl Future<Output = Delivery> + Send {
        S::deliver(self, subscription, msg)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LoggedMessage {
    seq: u64,
    at: DateTime<Utc>,
    message: BusMessage,
    subscriptions: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Outcome {
    Done,
    Retry,
    Wait,
    Dead,
    Redrive,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeliveryLine {
    seq: u64,
    subscription: String,
    outcome: Outcome,
    attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_before: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct Entry {
    attempts: u32,
    not_before: DateTime<Utc>,
    waiting: bool,
}

/// A message that exhausted its attempts or could never be processed.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub seq: u64,
    pub subscription: String,
    pub message_id: String,
    pub message_type: Option<String>,
    pub attempts: u32,
    pub error: Option<String>,
    pub at: DateTime<Utc>,
}

/// The messages file size after which the log is compacted, when what is live is under
/// a quarter of it.
pub const COMPACT_AFTER: u64 = 4 * 1024 * 1024;

#[derive(Debug, Default)]
struct State {
    /// The log generation these offsets and entries were read from.
    generation: u64,
    msg_offset: u64,
    del_offset: u64,
    next_seq: u64,
    /// Messages with a pending delivery or a dead letter, and the size of their lines.
    messages: BTreeMap<u64, (LoggedMessage, u64)>,
    /// The sum of the line sizes of `messages`.
    live_bytes: u64,
    pending: BTreeMap<(u64, String), Entry>,
    /// Subscriptions admitted last (see [`EmbeddedBus::open_sharing`]).
    admit_last: Arc<[String]>,
    /// `pending` in the order deliveries fall due: (not before, seq, subscription);
    /// those of the `admit_last` subscriptions in `due_last`, the others in `due`.
    due: std::collections::BTreeSet<(DateTime<Utc>, u64, String)>,
    due_last: std::collections::BTreeSet<(DateTime<Utc>, u64, String)>,
    dead: BTreeMap<(u64, String), DeadLetter>,
}

impl State {
    /// The due order a subscription's deliveries are kept in.
    fn due_of(
        &mut self,
        sub: &str,
    ) -> &mut std::collections::BTreeSet<(DateTime<Utc>, u64, String)> {
        if self.admit_last.iter().any(|s| s == sub) {
            &mut self.due_last
        } else {
            &mut self.due
        }
    }

    /// Sets a pending delivery (keeping the due orders in step).
    fn set_pending(&mut self, key: (u64, String), entry: Entry) {
        let due = (entry.not_before, key.0, key.1.clone());
        let old = self.pending.insert(key, entry).map(|old| old.not_before);
        let set = self.due_of(&due.2);
        if let Some(old) = old {
            set.remove(&(old, due.1, due.2.clone()));
        }
        set.insert(due);
    }

    /// Removes a pending delivery (keeping the due orders in step).
    fn remove_pending(&mut self, key: &(u64, String)) {
        if let Some(old) = self.pending.remove(key) {
            self.due_of(&key.1)
                .remove(&(old.not_before, key.0, key.1.clone()));
        }
    }

    /// Drops a message from memory once no delivery of it is pending or dead.
    fn release(&mut self, seq: u64) {
        let range = (seq, String::new())..(seq.saturating_add(1), String::new());
        if self.pending.range(range.clone()).next().is_none()
            && self.dead.range(range).next().is_none()
            && let Some((_, bytes)) = self.messages.remove(&seq)
        {
            self.live_bytes = self.live_bytes.saturating_sub(bytes);
        }
    }
}

/// One delivery, as reported to a drain's progress callback.
#[derive(Debug, Clone)]
pub struct DeliveryReport {
    pub subscription: String,
    pub message: BusMessage,
    pub outcome: Delivery,
    pub attempt: u32,
    pub elapsed: Duration,
}

/// How long to drain.
#[derive(Debug, Clone)]
pub struct DrainOptions {
    /// Stop after this many deliveries (tests use it to simulate a stop mid-run).
    pub max_deliveries: Option<usize>,
    /// Waits longer than this are parked: the drain returns instead of sleeping.
    pub park_after: Duration,
    /// Deliveries in flight at once (at least 1).
    pub concurrency: usize,
    /// Notified when new work is queued, so an idle drain starts it at once.
    pub wake: Option<Arc<tokio::sync::Notify>>,
}

impl Default for DrainOptions {
    fn default() -> Self {
        DrainOptions {
            max_deliveries: None,
            park_after: Duration::from_secs(30),
            concurrency: 1,
            wake: None,
        }
    }
}

/// What a drain did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DrainReport {
    pub delivered: usize,
    /// Deliveries left waiting for later (approvals, long tests).
    pub parked: usize,
    /// Messages now in the dead-letter list.
    pub dead: usize,
}

/// The embedded bus: a handle on its log (clones share it).
#[derive(Clone)]
pub struct EmbeddedBus(Arc<Log>);

/// The log behind the bus, with its synchronous (blocking) file operations.
struct Log {
    dir: PathBuf,
    subscriptions: Vec<(String, FilterPolicy)>,
    retry: BusConfig,
    state: Mutex<State>,
    /// Publishes waiting for the next group commit.
    group: Mutex<Group>,
    committed: Condvar,
    /// Notified after each message this process appends, before its sync, so its idle
    /// dispatcher starts the message's deliveries at once: a stage's next stage runs
    /// while the stage that published waits for the sync and records its outcome.
    published: tokio::sync::Notify,
    /// Syncs of the log's files by this process.
    syncs: std::sync::atomic::AtomicU64,
    /// Which of this process's appends are on disk: see [`Log::settle`].
    durable: Mutex<Durable>,
    /// Notified when a publish's sync ends.
    synced: Condvar,
    /// The state directory's shared sync, when the store defers its own to it: an append
    /// is made durable by it (covering the store's writes before it) instead of by an
    /// `fdatasync` of the log file.
    durability: Option<Durability>,
    /// The lock file, opened once: its mutex excludes this process's threads, its
    /// `flock` other processes (see [`Log::lock`]).
    lock: Mutex<File>,
    /// The log's files, kept open between reads and appends.
    files: Mutex<Files>,
}

/// The open files of a log: the `generation` file's last reading, and the current
/// generation's logs, for reading (what others appended) and for appending.
#[derive(Default)]
struct Files {
    /// The generation last read from the `generation` file, with that file's identity
    /// then (`None`: there was no file); read again only when the file changes.
    generation: Option<(Option<FileStamp>, u64)>,
    /// The generation the handles below belong to.
    open: u64,
    readers: [Option<File>; 2],
    appenders: [Option<File>; 2],
    /// A read buffer, reused.
    chunk: Vec<u8>,
}

/// What identifies a version of a small file: inode and modification time.
type FileStamp = (u64, i64, i64);

/// The identity of the `generation` file now (`None`: there is none).
fn generation_stamp(path: &Path) -> Result<Option<FileStamp>> {
    use std::os::unix::fs::MetadataExt;
    match fs::metadata(path) {
        Ok(m) => Ok(Some((m.ino(), m.mtime(), m.mtime_nsec()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("stat", path, e)),
    }
}

/// Which messages are known to be on disk: every message below `below` (a sync that
/// began after it was appended has returned); those below `appended` were appended by
/// this process, and while `syncing` publishes are in their sync, one of those covers
/// them.
#[derive(Default)]
struct Durable {
    below: u64,
    appended: u64,
    syncing: usize,
}

/// Lines appended to a log, not yet synced.
#[derive(Clone, Debug)]
struct Unsynced {
    /// A handle on the log file, to sync it where there is no shared sync.
    own: Option<Arc<File>>,
    path: PathBuf,
}

/// The two logs, as indexes into [`Files`]'s handles.
const KINDS: [&str; 2] = ["messages", "deliveries"];

/// The lock over a log's files, held while reading or appending; released (both the
/// `flock` and the mutex) when dropped.
struct LogLock<'a>(std::sync::MutexGuard<'a, File>);

impl Drop for LogLock<'_> {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// Group append of publishes: each publisher queues its message; one of them (the
/// leader) appends everything queued with one write and hands each its sequence
/// number; the others wait for that (an append, not a sync). Each then waits for a sync
/// that covers its message ([`Durability::sync`] shares one `syncfs` among everyone
/// waiting together), so the next batch is appended, and its deliveries start, while
/// this one syncs. Nothing returns before it is on disk.
#[derive(Default)]
struct Group {
    queue: Vec<(u64, BusMessage, Vec<String>)>,
    leading: bool,
    next_ticket: u64,
    /// Results by ticket (errors as text: every publisher of a failed batch gets it).
    /// An appended message is counted in [`Durable::syncing`] until its publisher's sync
    /// ends.
    done: BTreeMap<u64, std::result::Result<(u64, Unsynced), String>>,
}

impl EmbeddedBus {
    /// Opens the bus under `dir` with these subscriptions, replaying its log.
    pub fn open(
        dir: impl Into<PathBuf>,
        subscriptions: Vec<(String, FilterPolicy)>,
        retry: BusConfig,
    ) -> Result<EmbeddedBus> {
        Self::open_sharing(dir, subscriptions, retry, None, &[])
    }

    /// Opens the bus as [`EmbeddedBus::open`], its appends made durable by `durability`
    /// (the store's, see `DirStore::defer_syncs_to`) when given. Deliveries of the
    /// `admit_last` subscriptions (or queues) start only when no other delivery is due:
    /// new work (a push's ingest) is admitted after the work in progress (the later
    /// stages of runs already started), so under a backlog a run waits behind it once,
    /// at admission, instead of before each of its stages. Nothing starves: work in
    /// progress comes only from work admitted, and ends.
    pub fn open_sharing(
        dir: impl Into<PathBuf>,
        subscriptions: Vec<(String, FilterPolicy)>,
        retry: BusConfig,
        durability: Option<Durability>,
        admit_last: &[&str],
    ) -> Result<EmbeddedBus> {
        Ok(EmbeddedBus(Arc::new(Log::open(
            dir.into(),
            subscriptions,
            retry,
            durability,
            admit_last.iter().map(|s| s.to_string()).collect(),
        )?)))
    }

    pub fn dir(&self) -> &Path {
        &self.0.dir
    }

    /// Runs `f` on the log where it may block (see [`blocking`]).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Log) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let log = self.0.clone();
        blocking::run("embedded bus", move || f(&log)).await
    }

    /// Publishes to every subscription whose filter policy matches (SNS publish); the
    /// message's sequence number.
    pub async fn publish_message(&self, msg: &BusMessage) -> Result<u64> {
        let msg = msg.clone();
        self.blocking(move |log| log.publish_message(&msg)).await
    }

    /// Sends to one queue only, bypassing the topic (SQS SendMessage): how registry
    /// notifications reach ingest, as EventBridge and function URLs do in AWS.
    pub async fn send_to(&self, queue: &str, msg: &BusMessage) -> Result<u64> {
        let (queue, msg) = (queue.to_string(), msg.clone());
        self.blocking(move |log| log.append_message(&msg, vec![queue]))
            .await
    }

    /// Deliveries not yet finished (due now, retrying or waiting), as last read.
    pub fn pending(&self) -> usize {
        self.0.state().pending.len()
    }

    /// How many times this process has synced the log's files (appends and
    /// compactions).
    pub fn syncs(&self) -> u64 {
        self.0.syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many messages this process holds in memory: those with a pending delivery
    /// or a dead letter.
    pub fn held(&self) -> usize {
        self.0.state().messages.len()
    }

    /// The dead-letter list.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        self.blocking(Log::dead_letters).await
    }

    /// Moves dead letters (of one subscription, or all) back to their queues.
    pub async fn redrive(&self, subscription: Option<&str>) -> Result<usize> {
        let subscription = subscription.map(str::to_string);
        self.blocking(move |log| log.redrive(subscription.as_deref()))
            .await
    }

    /// Delivers until nothing is due: retries are waited for, short waits too; waits
    /// longer than `park_after` are left parked (they resume on the next drain). Up to
    /// `opts.concurrency` deliveries run at once (as Lambda runs a queue's batches
    /// concurrently; every stage is idempotent and ordered by its records, not by the
    /// queue), each on a thread of its own where its file work runs inline (see
    /// [`blocking`]), so they use every core and go on while outcomes are recorded; the
    /// outcomes of deliveries that finish together are recorded with one append and one
    /// sync. New runs are admitted last (see [`EmbeddedBus::open_sharing`]).
    /// Only one process drains at a time: `Error::Refused` when another one is.
    pub async fn drain<S: Subscriber + Clone + 'static>(
        &self,
        subscriber: &S,
        opts: &DrainOptions,
        mut progress: impl FnMut(&DeliveryReport),
    ) -> Result<DrainReport> {
        let path = self.0.dir.join("dispatch.lock");
        let guard = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        if guard.try_lock().is_err() {
            return Err(Error::Refused(
                "another baton process is delivering on this state directory (e.g. `baton serve`); it will process what was queued".into(),
            ));
        }
        let concurrency = opts.concurrency.max(1);
        let mut report = DrainReport::default();
        // Deliveries run on blocking-pool threads, which cannot be aborted: dropping the
        // set (the drain given up) cancels those not started yet, and one running ends by
        // itself with its outcome unrecorded, so its message is delivered again (its stage
        // record's claim keeps the two from working at once).
        let mut flying = tokio::task::JoinSet::new();
        // At most `concurrency` deliveries: a short list.
        let mut busy: Vec<(u64, String)> = Vec::new();
        let is_busy = |busy: &[(u64, String)], seq: u64, sub: &str| {
            busy.iter().any(|(s, b)| *s == seq && b == sub)
        };
        loop {
            let budget = opts.max_deliveries.map_or(usize::MAX, |m| {
                m.saturating_sub(report.delivered.saturating_add(flying.len()))
            });
            let room = concurrency.saturating_sub(flying.len()).min(budget);
            // How long until something not yet started is due; `None`: nothing is.
            let mut wait = None;
            if room > 0 {
                self.blocking(Log::refresh_if_changed).await?;
                let now = Utc::now();
                let st = self.0.state();
                // The earliest due first, read off the ordered indexes (work in
                // progress before new work admitted last): the work is the deliveries
                // started, not the backlog.
                let mut due: Vec<(u64, String, u32)> = Vec::with_capacity(room);
                'orders: for order in [&st.due, &st.due_last] {
                    for (not_before, seq, sub) in order {
                        if due.len() == room {
                            break 'orders;
                        }
                        if *not_before > now {
                            break;
                        }
                        if is_busy(&busy, *seq, sub) {
                            continue;
                        }
                        let attempts = st
                            .pending
                            .get(&(*seq, sub.clone()))
                            .map_or(0, |e| e.attempts);
                        due.push((*seq, sub.clone(), attempts));
                    }
                }
                for (seq, sub, attempts) in due {
                    // A pending entry always has its message (both come from the same
                    // log); an empty body makes a broken log visible as a dead letter.
                    let msg = st
                        .messages
                        .get(&seq)
                        .map(|(m, _)| m.message.clone())
                        .unwrap_or_else(|| BusMessage {
                            id: format!("missing-{seq}"),
                            attributes: Default::default(),
                            body: String::new(),
                        });
                    busy.push((seq, sub.clone()));
                    flying.spawn_blocking(blocking::on_own_thread(Self::deliver_one(
                        self.0.clone(),
                        subscriber.clone(),
                        seq,
                        sub,
                        attempts,
                        msg,
                    )));
                }
                if flying.len() < concurrency {
                    let park = chrono::Duration::from_std(opts.park_after).unwrap_or_default();
                    // The earliest not started and not parked (each order sorted: the
                    // first found in each).
                    let later = [&st.due, &st.due_last]
                        .into_iter()
                        .filter_map(|order| {
                            order
                                .iter()
                                .filter(|(not_before, seq, sub)| {
                                    !is_busy(&busy, *seq, sub)
                                        && (*not_before - now <= park
                                            || st
                                                .pending
                                                .get(&(*seq, sub.clone()))
                                                .is_some_and(|e| !e.waiting))
                                })
                                .map(|(not_before, _, _)| *not_before)
                                .next()
                        })
                        .min();
                    wait = later.map(|t| (t - now).to_std().unwrap_or_default());
                    if flying.is_empty() && later.is_none() {
                        report.parked = st.pending.len();
                    }
                }
            }
            if flying.is_empty() {
                match wait {
                    Some(d) if budget > 0 => {
                        self.idle(opts, d).await;
                        continue;
                    }
                    _ => break,
                }
            }
            // Wait for a delivery to finish; with a slot free, also for new work.
            let first = if flying.len() < concurrency && budget > flying.len() {
                let d = wait.unwrap_or(Duration::from_secs(1));
                tokio::select! {
                    done = flying.join_next() => done,
                    () = self.idle(opts, d) => None,
                }
            } else {
                flying.join_next().await
            };
            let Some(first) = first else { continue };
            let mut finished = vec![Self::joined(first)?];
            while let Some(more) = flying.try_join_next() {
                finished.push(Self::joined(more)?);
            }
            let lines: Vec<DeliveryLine> = finished.iter().map(|f| self.outcome_line(f)).collect();
            for f in &finished {
                busy.retain(|(s, b)| !(*s == f.seq && *b == f.sub));
            }
            let dead = lines.iter().filter(|l| l.outcome == Outcome::Dead).count();
            // Outcomes are appended, not synced: each delivery's effects (its stage's
            // records and published events) were made durable before it ended, and so
            // was its message (`Log::settle`), so an outcome lost to a power cut only
            // delivers its message again, which its stage record makes a no-op. The next
            // sync of the state directory covers them. This loop does not wait for a sync.
            self.blocking(move |log| log.record_all(lines, false))
                .await?;
            report.delivered += finished.len();
            report.dead += dead;
            for f in finished {
                progress(&DeliveryReport {
                    subscription: f.sub,
                    message: f.msg,
                    outcome: f.outcome,
                    attempt: f.attempts + 1,
                    elapsed: f.elapsed,
                });
            }
        }
        drop(guard);
        Ok(report)
    }

    /// Sleeps `d` (between 5 ms and 1 s), or until woken by new work: a message this
    /// process appended, or `opts.wake`.
    async fn idle(&self, opts: &DrainOptions, d: Duration) {
        let sleep = tokio::time::sleep(d.clamp(Duration::from_millis(5), Duration::from_secs(1)));
        let published = self.0.published.notified();
        match &opts.wake {
            Some(wake) => {
                tokio::select! {
                    () = sleep => {}
                    () = wake.notified() => {}
                    () = published => {}
                }
            }
            None => {
                tokio::select! {
                    () = sleep => {}
                    () = published => {}
                }
            }
        }
    }

    /// A delivery's task, joined. Its panics are caught inside it and its set is never
    /// dropped while this drain runs, so an error here means the runtime is stopping: it
    /// ends the drain (`baton serve` starts another), the message still pending.
    fn joined(r: std::result::Result<Finished, tokio::task::JoinError>) -> Result<Finished> {
        r.map_err(|e| Error::permanent("embedded bus", format!("a delivery task ended: {e}")))
    }

    /// One delivery; a panic in it is that message's failure (retried, then
    /// dead-lettered), never the end of the dispatcher. It ends once its message is on
    /// disk (see [`Log::settle`]; on its own thread, so the dispatcher never waits for it).
    async fn deliver_one<S: Subscriber>(
        log: Arc<Log>,
        subscriber: S,
        seq: u64,
        sub: String,
        attempts: u32,
        msg: BusMessage,
    ) -> Finished {
        let started = std::time::Instant::now();
        let outcome = match std::panic::AssertUnwindSafe(subscriber.deliver(&sub, &msg))
            .catch_unwind()
            .await
        {
            Ok(outcome) => outcome,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic");
                tracing::error!(subscription = %sub, id = %msg.id, panic = %what, "a delivery panicked");
                Delivery::Retry(format!("the delivery panicked: {what}"))
            }
        };
        let outcome = match log.settle(seq) {
            Ok(()) => outcome,
            Err(e) => Delivery::Retry(format!("the message could not be made durable: {e}")),
        };
        Finished {
            seq,
            sub,
            attempts,
            msg,
            outcome,
            elapsed: started.elapsed(),
        }
    }

    /// The log line that records a finished delivery.
    fn outcome_line(&self, f: &Finished) -> DeliveryLine {
        let attempt = f.attempts + 1;
        let now = Utc::now();
        let line = |outcome, attempts, not_before, error: Option<&String>| DeliveryLine {
            seq: f.seq,
            subscription: f.sub.clone(),
            outcome,
            attempts,
            not_before,
            error: error.cloned(),
            at: now,
        };
        let after = |d: Duration| Some(now + chrono::Duration::from_std(d).unwrap_or_default());
        match &f.outcome {
            Delivery::Done => line(Outcome::Done, attempt, None, None),
            Delivery::Retry(err) if attempt >= self.0.retry.max_attempts => {
                tracing::error!(subscription = %f.sub, id = %f.msg.id, attempts = attempt, error = %err, "dead-lettered");
                line(Outcome::Dead, attempt, None, Some(err))
            }
            Delivery::Retry(err) => line(
                Outcome::Retry,
                attempt,
                after(self.0.backoff(attempt)),
                Some(err),
            ),
            Delivery::Later(wait, _) => line(Outcome::Wait, f.attempts, after(*wait), None),
            Delivery::Dead(err) => {
                tracing::error!(subscription = %f.sub, id = %f.msg.id, error = %err, "dead-lettered");
                line(Outcome::Dead, attempt, None, Some(err))
            }
        }
    }
}

/// A delivery that has run.
struct Finished {
    seq: u64,
    sub: String,
    attempts: u32,
    msg: BusMessage,
    outcome: Delivery,
    elapsed: Duration,
}

/// A leader's turn at the group append. Dropped after the append it hands the lead back;
/// dropped by a panic inside it (its `tickets` still set) it also answers every
/// publisher of the batch with an error, so none waits forever and the next publisher
/// leads.
struct Leading<'a> {
    log: &'a Log,
    tickets: Vec<u64>,
    /// Messages appended and counted in [`Durable::syncing`] whose publishers were not
    /// answered yet (uncounted by a panic: none of them will sync).
    counted: usize,
    /// The turn ended normally (answers given, lead handed back, group lock held).
    ended: bool,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        if self.counted > 0 {
            let mut d = self.log.durable();
            d.syncing = d.syncing.saturating_sub(self.counted);
            drop(d);
            self.log.synced.notify_all();
        }
        let mut g = self.log.group();
        g.leading = false;
        for t in self.tickets.drain(..) {
            g.done.insert(
                t,
                Err("the write of this batch of publishes was interrupted (a panic); nothing of it is known to be on disk".into()),
            );
        }
        drop(g);
        self.log.committed.notify_all();
    }
}

/// A publish's sync in progress: when dropped (returned or failed), it is no longer
/// counted, what it covered (`synced`: every message below it) is on disk, and whoever
/// waits for it in [`Log::settle`] is woken.
struct Syncing<'a> {
    log: &'a Log,
    synced: Option<u64>,
}

impl Drop for Syncing<'_> {
    fn drop(&mut self) {
        let mut d = self.log.durable();
        d.syncing = d.syncing.saturating_sub(1);
        if let Some(end) = self.synced {
            d.below = d.below.max(end);
        }
        drop(d);
        self.log.synced.notify_all();
    }
}

impl Log {
    fn open(
        dir: PathBuf,
        subscriptions: Vec<(String, FilterPolicy)>,
        retry: BusConfig,
        durability: Option<Durability>,
        admit_last: Arc<[String]>,
    ) -> Result<Log> {
        fs::create_dir_all(&dir).map_err(|e| Error::io("create bus directory", &dir, e))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io("open", &lock_path, e))?;
        let bus = Log {
            dir,
            subscriptions,
            retry,
            state: Mutex::new(State {
                admit_last,
                ..State::default()
            }),
            group: Mutex::new(Group::default()),
            committed: Condvar::new(),
            published: tokio::sync::Notify::new(),
            syncs: Default::default(),
            durable: Mutex::new(Durable::default()),
            synced: Condvar::new(),
            durability,
            lock: Mutex::new(lock),
            files: Mutex::new(Files::default()),
        };
        {
            let _lock = bus.lock()?;
            let generation = bus.current_generation()?;
            // A crash mid-append leaves a partial last line: it was never acknowledged.
            truncate_partial_line(&bus.file("messages", generation))?;
            truncate_partial_line(&bus.file("deliveries", generation))?;
            bus.remove_other_generations(generation);
            bus.refresh()?;
        }
        Ok(bus)
    }

    /// A log file of a generation: generation 0 is the original `<kind>.jsonl`.
    fn file(&self, kind: &str, generation: u64) -> PathBuf {
        match generation {
            0 => self.dir.join(format!("{kind}.jsonl")),
            n => self.dir.join(format!("{kind}.{n}.jsonl")),
        }
    }

    /// The current generation (`generation` file; 0 when there is none), read again
    /// only when the file changed (a compaction renames a new one in). The caller holds
    /// the lock.
    fn current_generation(&self) -> Result<u64> {
        let path = self.dir.join("generation");
        let stamp = generation_stamp(&path)?;
        let mut files = self.files();
        if let Some((known, generation)) = files.generation
            && known == stamp
        {
            return Ok(generation);
        }
        let generation = self.read_generation(&path)?;
        files.generation = Some((stamp, generation));
        Ok(generation)
    }

    fn read_generation(&self, path: &Path) -> Result<u64> {
        match fs::read_to_string(path) {
            Ok(text) => text.trim().parse().map_err(|e| {
                Error::permanent(
                    "embedded bus",
                    format!(
                        "{} holds {:?}, not a generation number ({e}); restore it from a backup or remove the bus directory",
                        path.display(),
                        crate::reference::excerpt(text.trim())
                    ),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(Error::io("read", path, e)),
        }
    }

    fn files(&self) -> std::sync::MutexGuard<'_, Files> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`for_each_new_line`] of log `i` of the generation `files` hold open (opened
    /// here the first time; one that does not exist yet has no lines).
    fn read_new_lines(
        &self,
        files: &mut Files,
        i: usize,
        offset: &mut u64,
        f: impl FnMut(&[u8]),
    ) -> Result<()> {
        let path = self.file(KINDS[i], files.open);
        if files.readers[i].is_none() {
            match File::open(&path) {
                Ok(file) => files.readers[i] = Some(file),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(Error::io("open", &path, e)),
            }
        }
        if files.chunk.is_empty() {
            files.chunk = vec![0; 64 * 1024];
        }
        let Files { readers, chunk, .. } = files;
        match &readers[i] {
            Some(file) => for_each_new_line(file, &path, chunk, offset, f),
            None => Ok(()),
        }
    }

    /// Deletes the files of generations other than `keep` (left by a compaction that
    /// was interrupted). The caller holds the lock.
    fn remove_other_generations(&self, keep: u64) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let generation = ["messages", "deliveries"].iter().find_map(|kind| {
                if name == format!("{kind}.jsonl") {
                    Some(0)
                } else {
                    name.strip_prefix(&format!("{kind}."))?
                        .strip_suffix(".jsonl")?
                        .parse::<u64>()
                        .ok()
                }
            });
            if generation.is_some_and(|g| g != keep)
                && let Err(e) = fs::remove_file(entry.path())
            {
                tracing::warn!(file = %entry.path().display(), error = %e, "could not remove an old bus generation");
            }
        }
    }

    /// Writes the live messages and their delivery state as the next generation, makes
    /// it current and deletes the old one, when the messages file is mostly history.
    /// The caller holds the lock.
    fn maybe_compact(&self) -> Result<()> {
        let started = std::time::Instant::now();
        // What is live, taken under the state's lock; written (and synced) after it is
        // released, so the dispatcher is not held up by the writes. Appends wait for the
        // log's lock, which the caller holds throughout.
        let (old, next, history_bytes, messages, deliveries) = {
            let st = self.state();
            if st.msg_offset < COMPACT_AFTER || st.live_bytes.saturating_mul(4) > st.msg_offset {
                return Ok(());
            }
            let next = st.generation.saturating_add(1);
            let live =
                |key: &(u64, String)| st.pending.contains_key(key) || st.dead.contains_key(key);
            let mut messages = Vec::new();
            for (seq, (m, _)) in &st.messages {
                let line = LoggedMessage {
                    subscriptions: m
                        .subscriptions
                        .iter()
                        .filter(|s| live(&(*seq, (*s).clone())))
                        .cloned()
                        .collect(),
                    ..m.clone()
                };
                serde_json::to_writer(&mut messages, &line)
                    .map_err(|e| Error::permanent("bus compaction", e))?;
                messages.push(b'\n');
            }
            let mut deliveries = Vec::new();
            let now = Utc::now();
            let lines = st
                .pending
                .iter()
                .filter(|((seq, _), e)| {
                    e.attempts > 0
                        || e.waiting
                        || st
                            .messages
                            .get(seq)
                            .is_none_or(|(m, _)| m.at != e.not_before)
                })
                .map(|((seq, sub), e)| DeliveryLine {
                    seq: *seq,
                    subscription: sub.clone(),
                    outcome: if e.waiting {
                        Outcome::Wait
                    } else {
                        Outcome::Retry
                    },
                    attempts: e.attempts,
                    not_before: Some(e.not_before),
                    error: None,
                    at: now,
                })
                .chain(st.dead.iter().map(|((seq, sub), d)| DeliveryLine {
                    seq: *seq,
                    subscription: sub.clone(),
                    outcome: Outcome::Dead,
                    attempts: d.attempts,
                    not_before: None,
                    error: d.error.clone(),
                    at: d.at,
                }));
            for line in lines {
                serde_json::to_writer(&mut deliveries, &line)
                    .map_err(|e| Error::permanent("bus compaction", e))?;
                deliveries.push(b'\n');
            }
            (st.generation, next, st.msg_offset, messages, deliveries)
        };
        for (kind, bytes) in [("messages", &messages), ("deliveries", &deliveries)] {
            let path = self.file(kind, next);
            let mut f = File::create(&path).map_err(|e| Error::io("create", &path, e))?;
            f.write_all(bytes)
                .and_then(|_| f.sync_all())
                .map_err(|e| Error::io("write", &path, e))?;
        }
        let tmp = self.dir.join("generation.tmp");
        let path = self.dir.join("generation");
        let mut f = File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        f.write_all(next.to_string().as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io("write", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| Error::io("rename", &tmp, e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("sync", &self.dir, e))?;
        for kind in ["messages", "deliveries"] {
            let old = self.file(kind, old);
            if let Err(e) = fs::remove_file(&old) {
                tracing::warn!(file = %old.display(), error = %e, "could not remove the old bus generation");
            }
        }
        // Read the new generation back: the state is rebuilt the way a restart would.
        self.refresh()?;
        tracing::info!(
            generation = next,
            history_bytes,
            live_bytes = messages.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "compacted the bus log"
        );
        Ok(())
    }

    /// Takes the log's lock: first this process's, then the file's (other processes').
    /// Not reentrant.
    fn lock(&self) -> Result<LogLock<'_>> {
        let file = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        file.lock()
            .map_err(|e| Error::io("lock", &self.dir.join("lock"), e))?;
        Ok(LogLock(file))
    }

    fn group(&self) -> std::sync::MutexGuard<'_, Group> {
        self.group.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves state that the log can rebuild.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`Log::refresh_locked`] when the log changed since it was last read: another
    /// process appended (a log is longer than what was read) or compacted (the
    /// `generation` file changed). Checked without the lock, so a dispatcher does not
    /// wait behind a publish's sync only to find what this process already knows.
    fn refresh_if_changed(&self) -> Result<()> {
        let (generation, offsets) = {
            let st = self.state();
            (st.generation, [st.msg_offset, st.del_offset])
        };
        let path = self.dir.join("generation");
        let stamp = generation_stamp(&path)?;
        let unchanged = {
            let files = self.files();
            files.open == generation
                && files.generation.is_some_and(|(known, _)| known == stamp)
                && files.readers.iter().zip(offsets).all(|(reader, offset)| {
                    reader
                        .as_ref()
                        .and_then(|f| f.metadata().ok())
                        .is_some_and(|m| m.len() == offset)
                })
        };
        if unchanged {
            return Ok(());
        }
        self.refresh_locked()
    }

    /// [`Log::refresh`] under the lock.
    fn refresh_locked(&self) -> Result<()> {
        let _lock = self.lock()?;
        self.refresh()
    }

    /// Reads log lines appended since the last read (by this or another process),
    /// starting over when another process compacted the log. The caller holds the lock.
    fn refresh(&self) -> Result<()> {
        let generation = self.current_generation()?;
        let mut st = self.state();
        if generation != st.generation {
            let next_seq = st.next_seq;
            *st = State {
                generation,
                next_seq,
                admit_last: st.admit_last.clone(),
                ..State::default()
            };
        }
        let st = &mut *st;
        let mut files = self.files();
        let files = &mut *files;
        if files.open != generation {
            *files = Files {
                generation: files.generation,
                open: generation,
                chunk: std::mem::take(&mut files.chunk),
                ..Files::default()
            };
        }
        let mut offset = st.msg_offset;
        self.read_new_lines(files, 0, &mut offset, |line| {
            match serde_json::from_slice::<LoggedMessage>(line) {
                Ok(m) => {
                    st.next_seq = st.next_seq.max(m.seq.saturating_add(1));
                    if m.subscriptions.is_empty() {
                        return;
                    }
                    for s in &m.subscriptions {
                        st.set_pending(
                            (m.seq, s.clone()),
                            Entry {
                                attempts: 0,
                                not_before: m.at,
                                waiting: false,
                            },
                        );
                    }
                    let bytes = line.len() as u64;
                    st.live_bytes = st.live_bytes.saturating_add(bytes);
                    if let Some((_, old)) = st.messages.insert(m.seq, (m, bytes)) {
                        st.live_bytes = st.live_bytes.saturating_sub(old);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "skipping unreadable line in the bus's messages")
                }
            }
        })?;
        st.msg_offset = offset;
        let mut offset = st.del_offset;
        self.read_new_lines(files, 1, &mut offset, |line| {
            match serde_json::from_slice::<DeliveryLine>(line) {
                Ok(d) => apply_delivery(st, d),
                Err(e) => {
                    tracing::error!(error = %e, "skipping unreadable line in the bus's deliveries")
                }
            }
        })?;
        st.del_offset = offset;
        Ok(())
    }

    /// Appends lines (each ending in a newline), not yet durable ([`Log::sync`] makes them
    /// so); the caller holds the log's lock. A partial line left by a
    /// writer that died mid-append (it held the lock, so it is gone) is cut first, so
    /// the new line is never merged into it.
    fn append(&self, kind: &str, lines: &str) -> Result<Unsynced> {
        let generation = self.state().generation;
        let path = self.file(kind, generation);
        let i = usize::from(kind != KINDS[0]);
        let mut files = self.files();
        if files.open != generation {
            // `refresh` (which the caller ran) opens the current generation's files.
            return Err(Error::transient(
                "embedded bus",
                format!("{} is not the log's current generation", path.display()),
            ));
        }
        if files.appenders[i].is_none() {
            let f = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&path)
                .map_err(|e| Error::io("open", &path, e))?;
            files.appenders[i] = Some(f);
        }
        let Some(f) = files.appenders[i].as_mut() else {
            return Err(Error::transient("embedded bus", "a log file is not open"));
        };
        cut_torn_tail(f, &path)?;
        f.write_all(lines.as_bytes())
            .map_err(|e| Error::io("append to", &path, e))?;
        let own = match &self.durability {
            Some(_) => None,
            None => Some(Arc::new(
                f.try_clone().map_err(|e| Error::io("open", &path, e))?,
            )),
        };
        Ok(Unsynced { own, path })
    }

    /// Makes an append durable: the state directory's shared sync, or an `fdatasync` of
    /// the log file where there is none.
    fn sync(&self, appended: Unsynced) -> Result<()> {
        match (&self.durability, appended.own) {
            (Some(d), _) => d.sync()?,
            (None, Some(f)) => f
                .sync_data()
                .map_err(|e| Error::io("sync", &appended.path, e))?,
            (None, None) => {}
        }
        self.syncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Records a delivery line made by a caller (a redrive), durable when it returns.
    fn record(&self, line: DeliveryLine) -> Result<()> {
        self.record_all(vec![line], true)
    }

    /// Records delivery lines: one append, synced (once the log's lock is released) when
    /// `sync` says so, else left to the state directory's next sync.
    fn record_all(&self, lines: Vec<DeliveryLine>, sync: bool) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for line in &lines {
            text.push_str(
                &serde_json::to_string(line).map_err(|e| Error::permanent("bus record", e))?,
            );
            text.push('\n');
        }
        let appended = {
            let _lock = self.lock()?;
            self.refresh()?;
            let appended = self.append("deliveries", &text)?;
            self.refresh()?;
            self.maybe_compact()?;
            appended
        };
        // Synced outside the lock, so publishes do not queue behind it.
        if sync {
            self.sync(appended)?;
        }
        for line in &lines {
            crate::process::fail_point(&line.subscription, "acked");
        }
        Ok(())
    }

    fn publish_message(&self, msg: &BusMessage) -> Result<u64> {
        let subscriptions: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|(_, f)| f.matches(&msg.attributes))
            .map(|(n, _)| n.clone())
            .collect();
        self.append_message(msg, subscriptions)
    }

    /// Appends a message (with concurrent publishes, in one write) and makes it durable
    /// (with one sync shared by whoever waits at the same time); its sequence number once
    /// it is on disk.
    fn append_message(&self, msg: &BusMessage, subscriptions: Vec<String>) -> Result<u64> {
        let (seq, appended) = self.append_grouped(msg, subscriptions)?;
        // Counted in `syncing` since the append: whatever happens next, this sync is no
        // longer in progress when this returns.
        let mut turn = Syncing {
            log: self,
            synced: None,
        };
        self.sync(appended)?;
        turn.synced = Some(seq.saturating_add(1));
        Ok(seq)
    }

    /// Appends a message with whatever else is queued (see [`Group`]): its sequence
    /// number, counted in [`Durable::syncing`], and what to sync.
    fn append_grouped(
        &self,
        msg: &BusMessage,
        subscriptions: Vec<String>,
    ) -> Result<(u64, Unsynced)> {
        let ticket = {
            let mut g = self.group();
            let t = g.next_ticket;
            g.next_ticket = t.wrapping_add(1);
            g.queue.push((t, msg.clone(), subscriptions));
            t
        };
        let mut g = self.group();
        loop {
            if let Some(result) = g.done.remove(&ticket) {
                return result
                    .map_err(|e| Error::transient("bus publish", crate::error::Message(e)));
            }
            // Someone leads, or our message is in the batch a leader is writing: wait.
            if g.leading || g.queue.is_empty() {
                g = self.committed.wait(g).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            g.leading = true;
            let batch = std::mem::take(&mut g.queue);
            drop(g);
            let mut turn = Leading {
                log: self,
                tickets: batch.iter().map(|(t, _, _)| *t).collect(),
                counted: 0,
                ended: false,
            };
            let results: Vec<std::result::Result<(u64, Unsynced), String>> =
                match self.commit(batch) {
                    Ok((seqs, appended)) => {
                        turn.counted = seqs.len();
                        seqs.into_iter()
                            .map(|s| Ok((s, appended.clone())))
                            .collect()
                    }
                    Err(e) => vec![Err(e.to_string()); turn.tickets.len()],
                };
            // The answers and the end of the turn in one step: a publisher woken between
            // the two would lead an empty batch.
            g = self.group();
            g.done
                .extend(std::mem::take(&mut turn.tickets).into_iter().zip(results));
            g.leading = false;
            turn.ended = true;
            self.committed.notify_all();
        }
    }

    /// Appends queued messages with one write: their sequence numbers, each counted in
    /// [`Durable::syncing`] (its publisher syncs it), and what to sync.
    ///
    /// The messages are readable, and this process's dispatcher is woken, as soon as they
    /// are appended: their deliveries may start while they sync. That is safe because
    /// nothing is acknowledged on the strength of a message before it is on disk: a
    /// publish returns only after its sync, and a delivery's outcome is recorded only
    /// for a message known to be on disk ([`Log::settle`]). A delivery that ran on a
    /// message a power cut then lost did work that the message's publisher, not
    /// acknowledged either, does again under the same event ids.
    fn commit(&self, batch: Vec<(u64, BusMessage, Vec<String>)>) -> Result<(Vec<u64>, Unsynced)> {
        let lock = self.lock()?;
        self.refresh()?;
        let first = self.state().next_seq;
        let mut text = String::new();
        let mut seqs = vec![];
        for (i, (_, message, subscriptions)) in batch.into_iter().enumerate() {
            let seq = first.saturating_add(i as u64);
            let logged = LoggedMessage {
                seq,
                at: Utc::now(),
                message,
                subscriptions,
            };
            text.push_str(
                &serde_json::to_string(&logged).map_err(|e| Error::permanent("bus publish", e))?,
            );
            text.push('\n');
            seqs.push(seq);
        }
        let appended = self.append("messages", &text)?;
        let end = first.saturating_add(seqs.len() as u64);
        self.refresh()?;
        {
            let mut d = self.durable();
            d.appended = d.appended.max(end);
            d.syncing = d.syncing.saturating_add(seqs.len());
        }
        // Synced outside the lock, by each publisher: outcomes, other processes and this
        // process's next batch append meanwhile.
        drop(lock);
        self.published.notify_one();
        Ok((seqs, appended))
    }

    fn durable(&self) -> std::sync::MutexGuard<'_, Durable> {
        self.durable.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns once message `seq` is on disk, so that an outcome of its delivery may be
    /// recorded: at once when a sync since its append covered it; after the sync of the
    /// publish that appended it when that is still running (as a rule, a delivery that
    /// published nothing and ended before its message's publisher did); else after a
    /// sync of its own (a message another process appended and has not synced yet, or
    /// whose publish failed to sync). An outcome on disk without its message would, after
    /// a power cut, mark whichever message next took that sequence number as delivered.
    fn settle(&self, seq: u64) -> Result<()> {
        {
            let mut d = self.durable();
            loop {
                if seq < d.below {
                    return Ok(());
                }
                if seq >= d.appended || d.syncing == 0 {
                    break;
                }
                d = self.synced.wait(d).unwrap_or_else(|p| p.into_inner());
            }
        }
        let (upto, generation) = {
            let st = self.state();
            (st.next_seq, st.generation)
        };
        match &self.durability {
            Some(d) => d.sync()?,
            None => {
                let path = self.file("messages", generation);
                File::open(&path)
                    .and_then(|f| f.sync_data())
                    .map_err(|e| Error::io("sync", &path, e))?;
            }
        }
        self.syncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut d = self.durable();
        d.below = d.below.max(upto);
        Ok(())
    }

    fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        self.refresh_locked()?;
        Ok(self.state().dead.values().cloned().collect())
    }

    fn redrive(&self, subscription: Option<&str>) -> Result<usize> {
        let dead = self.dead_letters()?;
        let mut n = 0;
        for d in dead
            .iter()
            .filter(|d| subscription.is_none_or(|s| s == d.subscription))
        {
            self.record(DeliveryLine {
                seq: d.seq,
                subscription: d.subscription.clone(),
                outcome: Outcome::Redrive,
                attempts: 0,
                not_before: None,
                error: None,
                at: Utc::now(),
            })?;
            n += 1;
        }
        Ok(n)
    }

    fn backoff(&self, attempts: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(16));
        self.retry
            .initial_backoff
            .saturating_mul(factor)
            .min(self.retry.max_backoff)
    }
}

fn apply_delivery(st: &mut State, d: DeliveryLine) {
    let key = (d.seq, d.subscription.clone());
    match d.outcome {
        Outcome::Done => {
            st.remove_pending(&key);
            st.release(d.seq);
        }
        Outcome::Retry | Outcome::Wait => {
            if st.pending.contains_key(&key) {
                st.set_pending(
                    key,
                    Entry {
                        attempts: d.attempts,
                        not_before: d.not_before.unwrap_or(d.at),
                        waiting: d.outcome == Outcome::Wait,
                    },
                );
            }
        }
        Outcome::Dead => {
            st.remove_pending(&key);
            let msg = st.messages.get(&d.seq).map(|(m, _)| m);
            let dl = DeadLetter {
                seq: d.seq,
                subscription: d.subscription,
                message_id: msg.map(|m| m.message.id.clone()).unwrap_or_default(),
                message_type: msg.and_then(|m| match m.message.attributes.get("type") {
                    Some(crate::event::AttrValue::String(s)) => Some(s.clone()),
                    _ => None,
                }),
                attempts: d.attempts,
                error: d.error,
                at: d.at,
            };
            st.dead.insert(key, dl);
        }
        Outcome::Redrive => {
            if st.dead.remove(&key).is_some() {
                st.set_pending(
                    key,
                    Entry {
                        attempts: 0,
                        not_before: d.at,
                        waiting: false,
                    },
                );
            }
        }
    }
}

/// Hands each complete line of `file` after `offset` to `f` (without its newline),
/// advancing `offset` past it; reads in blocks of `chunk`'s size, so a long log is never
/// held whole. A line still being written is left for a later read.
fn for_each_new_line(
    file: &File,
    path: &Path,
    chunk: &mut [u8],
    offset: &mut u64,
    mut f: impl FnMut(&[u8]),
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let mut emit = |line: &[u8], offset: &mut u64| {
        *offset = offset.saturating_add(line.len() as u64 + 1);
        if !line.iter().all(u8::is_ascii_whitespace) {
            f(line);
        }
    };
    // The start of a line longer than what was read so far.
    let mut partial: Vec<u8> = Vec::new();
    loop {
        let at = offset.saturating_add(partial.len() as u64);
        let n = file
            .read_at(chunk, at)
            .map_err(|e| Error::io("read", path, e))?;
        if n == 0 {
            return Ok(());
        }
        let mut rest = &chunk[..n];
        while let Some(i) = rest.iter().position(|b| *b == b'\n') {
            if partial.is_empty() {
                emit(&rest[..i], offset);
            } else {
                partial.extend_from_slice(&rest[..i]);
                emit(&partial, offset);
                partial.clear();
            }
            rest = &rest[i + 1..];
        }
        partial.extend_from_slice(rest);
    }
}

fn truncate_partial_line(path: &Path) -> Result<()> {
    let mut f = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("open", path, e)),
    };
    cut_torn_tail(&mut f, path)
}

/// Cuts what follows the last newline of a log file (a line whose writer died before
/// finishing it), reading backwards from the end in blocks.
fn cut_torn_tail(f: &mut File, path: &Path) -> Result<()> {
    const BLOCK: u64 = 64 * 1024;
    let len = f.metadata().map_err(|e| Error::io("stat", path, e))?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8; 1];
    f.seek(SeekFrom::Start(len - 1))
        .and_then(|_| f.read_exact(&mut last))
        .map_err(|e| Error::io("read", path, e))?;
    if last[0] == b'\n' {
        return Ok(());
    }
    let mut end = len;
    let mut buf = vec![0u8; BLOCK as usize];
    let keep = loop {
        if end == 0 {
            break 0;
        }
        let start = end.saturating_sub(BLOCK);
        let chunk = &mut buf[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))
            .map_err(|e| Error::io("seek", path, e))?;
        f.read_exact(chunk)
            .map_err(|e| Error::io("read", path, e))?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            break start + i as u64 + 1;
        }
        end = start;
    };
    if keep < len {
        tracing::warn!(path = %path.display(), dropped = len - keep, "dropping a partial line left by a writer that died");
        f.set_len(keep)
            .map_err(|e| Error::io("truncate", path, e))?;
    }
    Ok(())
}

impl EventBus for EmbeddedBus {
    async fn publish(&self, msg: &BusMessage) -> Result<()> {
        self.publish_message(msg).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AttrValue, Attributes};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn msg(id: &str, ty: &str) -> BusMessage {
        let attributes: Attributes = [("type".to_string(), AttrValue::String(ty.into()))]
            .into_iter()
            .collect();
        BusMessage {
            id: id.into(),
            attributes,
            body: "{}".into(),
        }
    }

    fn subs() -> Vec<(String, FilterPolicy)> {
        vec![
            ("a".into(), FilterPolicy::types(["x"])),
            ("b".into(), FilterPolicy::types(["x", "y"])),
        ]
    }

    fn fast() -> BusConfig {
        BusConfig {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            concurrency: 1,
        }
    }

    struct Recorder {
        seen: Mutex<Vec<(String, String)>>,
        fail_b: AtomicUsize,
    }

    impl Subscriber for Recorder {
        async fn deliver(&self, sub: &str, msg: &BusMessage) -> Delivery {
            self.seen.lock().unwrap().push((sub.into(), msg.id.clone()));
            if sub == "b" && self.fail_b.load(Ordering::SeqCst) > 0 {
                self.fail_b.fetch_sub(1, Ordering::SeqCst);
                return Delivery::Retry("boom".into());
            }
            Delivery::Done
        }
    }

    fn recorder(fail_b: usize) -> Arc<Recorder> {
        Arc::new(Recorder {
            seen: Mutex::new(vec![]),
            fail_b: AtomicUsize::new(fail_b),
        })
    }

    /// Deliveries in flight at once follow `DrainOptions::concurrency`
    /// (`bus.concurrency`): one at a time by default, as many as allowed otherwise.
    #[tokio::test]
    async fn deliveries_run_side_by_side_up_to_the_concurrency() {
        struct Overlap {
            now: AtomicUsize,
            most: AtomicUsize,
        }
        impl Subscriber for Overlap {
            async fn deliver(&self, _sub: &str, _msg: &BusMessage) -> Delivery {
                let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
                self.most.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                self.now.fetch_sub(1, Ordering::SeqCst);
                Delivery::Done
            }
        }
        for (concurrency, want) in [(1, 1), (3, 3)] {
            let dir = tempfile::tempdir().unwrap();
            let bus = EmbeddedBus::open(dir.path(), subs(), fast()).unwrap();
            for i in 0..3 {
                // each reaches subscriptions a and b: six deliveries
                bus.publish_message(&msg(&format!("m{i}"), "x"))
                    .await
                    .unwrap();
            }
            let o = Arc::new(Overlap {
                now: AtomicUsize::new(0),
                most: AtomicUsize::new(0),
            });
            let opts = DrainOptions {
                concurrency,
                ..DrainOptions::default()
            };
            let rep = bus.drain(&o, &opts, |_| {}).await.unwrap();
            assert_eq!(rep.delivered, 6);
            assert_eq!(
                o.most.load(Ordering::SeqCst),
                want,
                "concurrency {concurrency}"
            );
        }
    }

    /// A leader that panics while writing its batch answers the batch's publishers with
    /// an error and hands the lead back: nobody waits forever, the next publish works.
    #[tokio::test]
    async fn a_panicking_group_commit_leader_releases_the_lead_and_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(dir.path(), subs(), fast()).unwrap();
        let log = bus.0.clone();
        {
            let mut g = log.group();
            g.leading = true;
            g.done.clear();
        }
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _turn = Leading {
                log: &log,
                tickets: vec![7, 8],
                counted: 0,
                ended: false,
            };
            panic!("the disk went away mid-write");
        }));
        assert!(panicked.is_err());
        {
            let g = log.group();
            assert!(!g.leading, "the lead is handed back");
            assert!(
                matches!(g.done.get(&7), Some(Err(e)) if e.contains("interrupted")),
                "{:?}",
                g.done
            );
            assert!(g.done.contains_key(&8));
        }
        let seq = bus.publish_message(&msg("after", "x")).await.unwrap();
        assert_eq!(seq, 0, "the next publisher leads and commits");
        // A normal turn leaves no answer behind.
        assert!(log.group().done.keys().all(|t| *t == 7 || *t == 8));
    }

    #[tokio::test]
    async fn fans_out_by_filter_and_retries_then_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(dir.path(), subs(), fast()).unwrap();
        bus.publish_message(&msg("m1", "x")).await.unwrap();
        bus.publish_message(&msg("m2", "y")).await.unwrap();
        bus.publish_message(&msg("m3", "z")).await.unwrap();
        let r = recorder(1);
        let rep = bus
            .drain(&r, &DrainOptions::default(), |_| {})
            .await
            .unwrap();
        let seen = r.seen.lock().unwrap().clone();
        assert_eq!(seen.iter().filter(|(s, _)| s == "a").count(), 1);
        // b: m1 failed once and was retried, m2 once
        assert_eq!(
            seen.iter().filter(|(s, id)| s == "b" && id == "m1").count(),
            2
        );
        assert!(
            !seen.iter().any(|(_, id)| id == "m3"),
            "no subscription matches z"
        );
        assert_eq!(rep.dead, 0);
        assert_eq!(bus.pending(), 0);

        bus.publish_message(&msg("m4", "y")).await.unwrap();
        let r = recorder(10);
        let rep = bus
            .drain(&r, &DrainOptions::default(), |_| {})
            .await
            .unwrap();
        assert_eq!(rep.dead, 1);
        let dead = bus.dead_letters().await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].message_id, "m4");
        assert_eq!(dead[0].attempts, 3);
        assert_eq!(dead[0].error.as_deref(), Some("boom"));
        // redrive brings it back
        assert_eq!(bus.redrive(Some("b")).await.unwrap(), 1);
        let r = recorder(0);
        bus.drain(&r, &DrainOptions::default(), |_| {})
            .await
            .unwrap();
        assert_eq!(
            r.seen.lock().unwrap().clone(),
            vec![("b".to_string(), "m4".to_string())]
        );
        assert!(bus.dead_letters().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn survives_a_restart_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        {
            let bus = EmbeddedBus::open(dir.path(), subs(), fast()).unwrap();
            for i in 0..4 {
                bus.publish_message(&msg(&format!("m{i}"), "x"))
                    .await
                    .unwrap();
            }
            let r = recorder(0);
            let opts = DrainOptions {
                max_deliveries: Some(3),
                ..Default::default()
            };
            let rep = bus.drain(&r, &opts, |_| {}).await.unwrap();
            assert_eq!(rep.delivered, 3);
        }
        // a crash mid-append
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("messages.jsonl"))
            .unwrap();
        f.write_all(b"{\"seq\": 99, \"at\":").unwrap();
        drop(f);
        let bus = EmbeddedBus::open(dir.path(), subs(), fast()).unwrap();
        assert_eq!(bus.pending(), 5, "8 deliveries published, 3 done");
        let r = recorder(0);
        bus.drain(&r, &DrainOptions::default(), |_| {})
            .await
            .unwrap();
        assert_eq!(r.seen.lock().unwrap().len(), 5);
        bus.publish_message(&msg("after", "y")).await.unwrap();
        assert_eq!(bus.pending(), 1);
    }

    fn big(id: &str, ty: &str) -> BusMessage {
        BusMessage {
            body: format!("\"{}\"", "b".repeat(64 * 1024)),
            ..msg(id, ty)
        }
    }

    fn log_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".jsonl"))
            .map(|e| e.metadata().unwrap().len())
            .sum()
    }

    /// History leaves memory and disk: delivered messages are dropped from memory at
    /// once, and once the log is mostly history it is compacted to what is live (a dead
    /// letter, a parked wait, an undelivered message), which survives a restart and is
    /// then delivered as before.
    #[tokio::test]
    async fn delivered_history_is_dropped_and_the_log_compacted_keeping_what_is_live() {
        struct Parks;
        impl Subscriber for Parks {
            async fn deliver(&self, _sub: &str, msg: &BusMessage) -> Delivery {
                match msg.id.as_str() {
                    "dead" => Delivery::Dead("malformed".into()),
                    "parked" => Delivery::Later(Duration::from_secs(3600), "approval".into()),
                    _ => Delivery::Done,
                }
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(dir.path(), subs(), fast()).unwrap();
        bus.publish_message(&msg("dead", "y")).await.unwrap();
        bus.publish_message(&msg("parked", "y")).await.unwrap();
        bus.drain(&Arc::new(Parks), &DrainOptions::default(), |_| {})
            .await
            .unwrap();
        assert_eq!(bus.held(), 2, "the dead letter and the parked message");
        let mut peak = 0;
        for i in 0..200 {
            bus.publish_message(&big(&format!("m{i}"), "y"))
                .await
                .unwrap();
            bus.drain(&Arc::new(Parks), &DrainOptions::default(), |_| {})
                .await
                .unwrap();
            assert!(
                bus.held() <= 3,
                "only live messages are held: {}",
                bus.held()
            );
            peak = peak.max(log_bytes(dir.path()));
        }
        // 200 × 64 KiB went through; the log never held much more than the threshold.
        assert!(peak < COMPACT_AFTER + 3 * 64 * 1024, "peak {peak}");
        let generation: u64 = std::fs::read_to_string(dir.path().join("generation"))
            .unwrap()
            .parse()
            .unwrap();
        assert!(generation >= 2, "compacted more than once: {generation}");
        assert!(
            !dir.path().join("messages.jsonl").exists(),
            "generation 0 is gone"
        );
        let files: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".jsonl"))
            .collect();
        assert_eq!(files.len(), 2, "one generation on disk: {files:?}");

        // A restart reads the compacted log: the same dead letter and parked delivery.
        drop(bus);
        let bus = EmbeddedBus::open(dir.path(), subs(), fast()).unwrap();
        assert_eq!(bus.pending(), 1);
        let dead = bus.dead_letters().await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(
            (dead[0].message_id.as_str(), dead[0].error.as_deref()),
            ("dead", Some("malformed"))
        );
        let rep = bus
            .drain(&Arc::new(Parks), &DrainOptions::default(), |_| {})
            .await
            .unwrap();
        assert_eq!(
            (rep.delivered, rep.parked),
            (0, 1),
            "the wait is still parked"
        );
        assert_eq!(bus.redrive(None).await.unwrap(), 1);
        let r = recorder(0);
        bus.drain(&r, &DrainOptions::default(), |_| {})
            .await
            .unwrap();
        assert_eq!(
            r.seen.lock().unwrap().clone(),
            vec![("b".to_string(), "dead".to_string())]
        );
    }

    /// Another process with the bus open (a `baton ingest` next to `baton serve`) keeps
    /// working across a compaction: it notices the new generation and appends there.
    #[tokio::test]
    async fn a_second_process_follows_a_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let a = EmbeddedBus::open(dir.path(), subs(), fast()).unwrap();
        let b = EmbeddedBus::open(dir.path(), subs(), fast()).unwrap();
        b.publish_message(&msg("early", "y")).await.unwrap();
        let r = recorder(0);
        for i in 0..80 {
            a.publish_message(&big(&format!("m{i}"), "y"))
                .await
                .unwrap();
            a.drain(&r, &DrainOptions::default(), |_| {}).await.unwrap();
        }
        assert!(dir.path().join("generation").exists(), "compacted");
        b.publish_message(&msg("late", "y")).await.unwrap();
        a.drain(&r, &DrainOptions::default(), |_| {}).await.unwrap();
        let seen: Vec<String> = r
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, id)| id.clone())
            .collect();
        assert_eq!(seen.first().map(String::as_str), Some("early"));
        assert_eq!(seen.last().map(String::as_str), Some("late"));
        assert_eq!(seen.len(), 82, "each message once");
        assert_eq!(a.pending(), 0);
    }

    /// A publisher that dies mid-append while another process keeps the bus open: the
    /// next append cuts the partial line instead of merging into it, so the next
    /// acknowledged message is delivered.
    #[tokio::test]
    async fn a_torn_append_under_a_running_bus_loses_no_later_message() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(dir.path(), subs(), fast()).unwrap();
        bus.publish_message(&msg("m0", "y")).await.unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("messages.jsonl"))
            .unwrap();
        // Longer than one read block, so the cut is found across blocks.
        f.write_all(format!("{{\"seq\": 7, \"body\": \"{}", "x".repeat(100_000)).as_bytes())
            .unwrap();
        drop(f);
        bus.publish_message(&msg("m1", "y")).await.unwrap();
        let r = recorder(0);
        bus.drain(&r, &DrainOptions::default(), |_| {})
            .await
            .unwrap();
        assert_eq!(
            r.seen.lock().unwrap().clone(),
            vec![
                ("b".to_string(), "m0".to_string()),
                ("b".to_string(), "m1".to_string())
            ]
        );
        let text = std::fs::read_to_string(dir.path().join("messages.jsonl")).unwrap();
        assert!(
            text.ends_with('\n') && !text.contains("xxx"),
            "the torn line is gone"
        );
    }

    /// A panic in one delivery is that message's failure: it is retried and then
    /// dead-lettered, and the dispatcher goes on delivering the others.
    #[tokio::test]
    async fn a_panicking_delivery_is_retried_then_dead_lettered_and_the_rest_go_on() {
        struct Panics(AtomicUsize);
        impl Subscriber for Panics {
            async fn deliver(&self, _sub: &str, msg: &BusMessage) -> Delivery {
                if msg.id == "bad" {
                    panic!("date overflow in {}", msg.id);
                }
                self.0.fetch_add(1, Ordering::SeqCst);
                Delivery::Done
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(dir.path(), subs(), fast()).unwrap();
        bus.publish_message(&msg("bad", "y")).await.unwrap();
        bus.publish_message(&msg("good", "y")).await.unwrap();
        let p = Arc::new(Panics(AtomicUsize::new(0)));
        let rep = bus
            .drain(&p, &DrainOptions::default(), |_| {})
            .await
            .unwrap();
        assert_eq!(
            p.0.load(Ordering::SeqCst),
            1,
            "the good message was delivered"
        );
        assert_eq!(rep.dead, 1);
        let dead = bus.dead_letters().await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].message_id, "bad");
        assert_eq!(dead[0].attempts, 3, "retried like any failure");
        let error = dead[0].error.as_deref().unwrap_or_default();
        assert!(error.contains("panicked: date overflow in bad"), "{error}");
    }

    #[tokio::test]
    async fn long_waits_park_and_short_waits_are_waited_for() {
        struct Waiter(AtomicUsize);
        impl Subscriber for Waiter {
            async fn deliver(&self, sub: &str, _msg: &BusMessage) -> Delivery {
                if sub == "a" {
                    return Delivery::Later(Duration::from_secs(3600), "approval".into());
                }
                if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                    Delivery::Later(Duration::from_millis(20), "rollout".into())
                } else {
                    Delivery::Done
                }
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(dir.path(), subs(), fast()).unwrap();
        bus.publish_message(&msg("m1", "x")).await.unwrap();
        let w = Arc::new(Waiter(AtomicUsize::new(0)));
        let rep = bus
            .drain(&w, &DrainOptions::default(), |_| {})
            .await
            .unwrap();
        assert_eq!(rep.parked, 1, "a waits an hour: parked");
        assert_eq!(w.0.load(Ordering::SeqCst), 2, "b waited 20ms and finished");
    }

    /// A subscriber that takes a while and counts how many deliveries overlap.
    struct Slow {
        now: AtomicUsize,
        most: AtomicUsize,
        seen: Mutex<Vec<String>>,
    }

    impl Subscriber for Slow {
        async fn deliver(&self, sub: &str, msg: &BusMessage) -> Delivery {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(30)).await;
            self.seen.lock().unwrap().push(format!("{sub}/{}", msg.id));
            self.now.fetch_sub(1, Ordering::SeqCst);
            Delivery::Done
        }
    }

    /// A backlog is delivered in the order it falls due (publication order), a retried
    /// delivery after those due before its backoff ends.
    /// Deliveries of a subscription admitted last start only once no other delivery is
    /// due, whatever the order they were published in (new runs wait behind the stages
    /// of runs in progress), and then all of them are delivered, in their order.
    #[tokio::test]
    async fn a_subscription_admitted_last_waits_for_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open_sharing(dir.path(), subs(), fast(), None, &["a"]).unwrap();
        // `x` goes to both a and b, `y` to b only; all of a's are published first.
        for i in 0..5 {
            bus.publish_message(&msg(&format!("x{i}"), "x"))
                .await
                .unwrap();
        }
        for i in 0..5 {
            bus.publish_message(&msg(&format!("y{i}"), "y"))
                .await
                .unwrap();
        }
        let rec = recorder(0);
        let rep = bus
            .drain(&rec, &DrainOptions::default(), |_| {})
            .await
            .unwrap();
        assert_eq!(rep.delivered, 15);
        let seen = rec.seen.lock().unwrap().clone();
        let order = |sub: &str| -> Vec<String> {
            seen.iter()
                .filter(|(s, _)| s == sub)
                .map(|(_, id)| id.clone())
                .collect()
        };
        assert_eq!(
            seen.iter().position(|(s, _)| s == "a"),
            Some(10),
            "every delivery to b before the first to a: {seen:?}"
        );
        assert_eq!(order("a"), ["x0", "x1", "x2", "x3", "x4"]);
        assert_eq!(
            order("b"),
            ["x0", "x1", "x2", "x3", "x4", "y0", "y1", "y2", "y3", "y4"]
        );
        assert_eq!(bus.pending(), 0);
    }

    #[tokio::test]
    async fn a_backlog_is_delivered_in_the_order_it_falls_due() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(dir.path(), subs(), fast()).unwrap();
        for i in 0..200 {
            bus.publish_message(&msg(&format!("m{i:03}"), "y"))
                .await
                .unwrap();
        }
        let rec = recorder(1);
        let rep = bus
            .drain(&rec, &DrainOptions::default(), |_| {})
            .await
            .unwrap();
        assert_eq!(rep.delivered, 201, "200 to b, one of them twice");
        let seen: Vec<String> = rec
            .seen
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .map(|(_, id)| id)
            .collect();
        assert_eq!(seen[0], "m000");
        let mut rest = seen[1..].to_vec();
        let retried = rest
            .iter()
            .position(|id| id == "m000")
            .expect("m000 retried");
        rest.remove(retried);
        let expected: Vec<String> = (1..200).map(|i| format!("m{i:03}")).collect();
        assert_eq!(rest, expected, "the others in publication order");
        assert_eq!(bus.pending(), 0);
    }

    /// A delivery's outcome is recorded only once its message is known to be on disk: a
    /// message another process appended (and this one never saw synced) costs a sync
    /// before its outcome; one this process published was synced by its publish, so its
    /// outcome costs none.
    #[tokio::test]
    async fn an_outcome_is_recorded_only_for_a_message_known_to_be_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let other = EmbeddedBus::open(dir.path(), subs(), fast()).unwrap();
        let bus = EmbeddedBus::open(dir.path(), subs(), fast()).unwrap();
        other.publish_message(&msg("m1", "y")).await.unwrap();
        let rec = recorder(0);
        let before = bus.syncs();
        let rep = bus
            .drain(&rec, &DrainOptions::default(), |_| {})
            .await
            .unwrap();
        assert_eq!(rep.delivered, 1, "m1 to b");
        assert_eq!(
            bus.syncs() - before,
            1,
            "one sync before the outcome of a message appended elsewhere"
        );
        bus.publish_message(&msg("m2", "y")).await.unwrap();
        let before = bus.syncs();
        let rep = bus
            .drain(&rec, &DrainOptions::default(), |_| {})
            .await
            .unwrap();
        assert_eq!(rep.delivered, 1, "m2 to b");
        assert_eq!(bus.syncs() - before, 0, "m2's publish synced it");
        let seen = rec.seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            [
                ("b".to_string(), "m1".to_string()),
                ("b".into(), "m2".into())
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deliveries_run_concurrently_up_to_the_limit_each_once() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(dir.path(), subs(), fast()).unwrap();
        for i in 0..12 {
            bus.publish_message(&msg(&format!("m{i}"), "x"))
                .await
                .unwrap();
        }
        let slow = Arc::new(Slow {
            now: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
            seen: Mutex::new(vec![]),
        });
        let opts = DrainOptions {
            concurrency: 5,
            ..DrainOptions::default()
        };
        let syncs = bus.syncs();
        let rep = bus.drain(&slow, &opts, |_| {}).await.unwrap();
        assert_eq!(rep.delivered, 24, "12 messages × subscriptions a and b");
        let mut seen = slow.seen.lock().unwrap().clone();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 24, "each delivery once");
        assert_eq!(slow.most.load(Ordering::SeqCst), 5, "5 at once, never more");
        assert!(
            bus.syncs() - syncs < 24,
            "outcomes finishing together share an append: {} syncs for 24",
            bus.syncs() - syncs
        );
        assert_eq!(bus.pending(), 0);
        // A limit on deliveries holds with concurrency too.
        for i in 0..4 {
            bus.publish_message(&msg(&format!("n{i}"), "x"))
                .await
                .unwrap();
        }
        let limited = DrainOptions {
            concurrency: 5,
            max_deliveries: Some(3),
            ..DrainOptions::default()
        };
        let slow = Arc::new(Slow {
            now: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
            seen: Mutex::new(vec![]),
        });
        let rep = bus.drain(&slow, &limited, |_| {}).await.unwrap();
        assert_eq!(rep.delivered, 3);
        assert_eq!(bus.pending(), 5);
    }

    #[test]
    fn concurrent_publishes_share_one_sync_and_each_gets_its_own_sequence() {
        let dir = tempfile::tempdir().unwrap();
        // As `baton serve` opens them: the store's and the bus's syncs are one `syncfs`.
        let mut store =
            crate::adapters::embedded::DirStore::open(dir.path().join("store")).unwrap();
        let bus_dir = dir.path().join("bus");
        std::fs::create_dir_all(&bus_dir).unwrap();
        let durability = store.defer_syncs_to(&bus_dir);
        let shared = durability.is_some();
        let bus = EmbeddedBus::open_sharing(&bus_dir, subs(), fast(), durability, &[]).unwrap();
        // Hold the log's lock as another process would: the first publisher leads and
        // waits for it; the next ones queue behind it.
        let held = bus.0.lock().unwrap();
        let before = store.syncs();
        let threads: Vec<_> = (0..10)
            .map(|i| {
                let log = bus.0.clone();
                std::thread::spawn(move || {
                    log.publish_message(&msg(&format!("p{i}"), "x")).unwrap()
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while bus.0.group().queue.len() < 9 {
            assert!(std::time::Instant::now() < deadline, "publishers queued");
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(held);
        let mut seqs: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        seqs.sort();
        seqs.dedup();
        assert_eq!(seqs.len(), 10, "distinct sequence numbers");
        if shared {
            // The leader's own message syncs while the nine queued are appended; they
            // share the sync after it (or that one, had they all arrived before it began).
            let syncs = store.syncs() - before;
            assert!(
                (1..=2).contains(&syncs),
                "ten publishes in two appends share at most two syncs, not {syncs}"
            );
        }
        bus.0.refresh_locked().unwrap();
        assert_eq!(bus.held(), 10);
        assert_eq!(bus.pending(), 20);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = BusConfig {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            concurrency: 1,
        };
        let bus = EmbeddedBus::open(dir.path(), subs(), cfg).unwrap();
        assert_eq!(bus.0.backoff(1), Duration::from_millis(100));
        assert_eq!(bus.0.backoff(2), Duration::from_millis(200));
        assert_eq!(bus.0.backoff(3), Duration::from_millis(400));
        assert_eq!(bus.0.backoff(4), Duration::from_millis(500));
    }
}
