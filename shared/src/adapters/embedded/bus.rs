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

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use serde::{Deserialize, Serialize};

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

#[derive(Debug, Default)]
struct State {
    msg_offset: u64,
    del_offset: u64,
    next_seq: u64,
    messages: BTreeMap<u64, LoggedMessage>,
    pending: BTreeMap<(u64, String), Entry>,
    dead: BTreeMap<(u64, String), DeadLetter>,
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
}

impl Default for DrainOptions {
    fn default() -> Self {
        DrainOptions {
            max_deliveries: None,
            park_after: Duration::from_secs(30),
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
}

impl EmbeddedBus {
    /// Opens the bus under `dir` with these subscriptions, replaying its log.
    pub fn open(
        dir: impl Into<PathBuf>,
        subscriptions: Vec<(String, FilterPolicy)>,
        retry: BusConfig,
    ) -> Result<EmbeddedBus> {
        Ok(EmbeddedBus(Arc::new(Log::open(
            dir.into(),
            subscriptions,
            retry,
        )?)))
    }

    pub fn dir(&self) -> &Path {
        &self.0.dir
    }

    /// Runs `f` on the log on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Log) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let log = self.0.clone();
        tokio::task::spawn_blocking(move || f(&log))
            .await
            .map_err(|e| Error::permanent("embedded bus", format!("a log task failed: {e}")))?
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
    /// longer than `park_after` are left parked (they resume on the next drain).
    /// Only one process drains at a time: `Error::Refused` when another one is.
    pub async fn drain<S: Subscriber>(
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
        let mut report = DrainReport::default();
        loop {
            if opts.max_deliveries.is_some_and(|m| report.delivered >= m) {
                break;
            }
            self.blocking(Log::refresh).await?;
            let now = Utc::now();
            let next = {
                let st = self.0.state();
                let due = st
                    .pending
                    .iter()
                    .filter(|(_, e)| e.not_before <= now)
                    .min_by_key(|((seq, _), e)| (e.not_before, *seq))
                    .map(|((seq, sub), e)| (*seq, sub.clone(), e.attempts));
                match due {
                    // A pending entry always has its message (both come from the same
                    // log); an empty body makes a broken log visible as a dead letter.
                    Some((seq, sub, attempts)) => Some(Ok((
                        seq,
                        sub,
                        attempts,
                        st.messages
                            .get(&seq)
                            .map(|m| m.message.clone())
                            .unwrap_or_else(|| BusMessage {
                                id: format!("missing-{seq}"),
                                attributes: Default::default(),
                                body: String::new(),
                            }),
                    ))),
                    None => {
                        let park = chrono::Duration::from_std(opts.park_after).unwrap_or_default();
                        let soonest = st
                            .pending
                            .values()
                            .filter(|e| !e.waiting || e.not_before - now <= park)
                            .map(|e| e.not_before)
                            .min();
                        match soonest {
                            Some(t) => Some(Err((t - now).to_std().unwrap_or_default())),
                            None => {
                                report.parked = st.pending.len();
                                None
                            }
                        }
                    }
                }
            };
            let (seq, sub, attempts, msg) = match next {
                None => break,
                Some(Err(sleep)) => {
                    tokio::time::sleep(
                        sleep.clamp(Duration::from_millis(5), Duration::from_secs(1)),
                    )
                    .await;
                    continue;
                }
                Some(Ok(found)) => found,
            };
            let started = std::time::Instant::now();
            // A panic in one delivery is that message's failure (retried, then
            // dead-lettered), never the end of the dispatcher.
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
            let attempt = attempts + 1;
            let now = Utc::now();
            let line = |outcome, attempts, not_before, error: Option<&String>| DeliveryLine {
                seq,
                subscription: sub.clone(),
                outcome,
                attempts,
                not_before,
                error: error.cloned(),
                at: now,
            };
            let after = |d: Duration| Some(now + chrono::Duration::from_std(d).unwrap_or_default());
            let line = match &outcome {
                Delivery::Done => line(Outcome::Done, attempt, None, None),
                Delivery::Retry(err) if attempt >= self.0.retry.max_attempts => {
                    tracing::error!(subscription = %sub, id = %msg.id, attempts = attempt, error = %err, "dead-lettered");
                    line(Outcome::Dead, attempt, None, Some(err))
                }
                Delivery::Retry(err) => line(
                    Outcome::Retry,
                    attempt,
                    after(self.0.backoff(attempt)),
                    Some(err),
                ),
                Delivery::Later(wait, _) => line(Outcome::Wait, attempts, after(*wait), None),
                Delivery::Dead(err) => {
                    tracing::error!(subscription = %sub, id = %msg.id, error = %err, "dead-lettered");
                    line(Outcome::Dead, attempt, None, Some(err))
                }
            };
            let dead = line.outcome == Outcome::Dead;
            self.blocking(move |log| log.record(line)).await?;
            report.delivered += 1;
            if dead {
                report.dead += 1;
            }
            progress(&DeliveryReport {
                subscription: sub,
                message: msg,
                outcome,
                attempt,
                elapsed: started.elapsed(),
            });
        }
        drop(guard);
        Ok(report)
    }
}

impl Log {
    fn open(
        dir: PathBuf,
        subscriptions: Vec<(String, FilterPolicy)>,
        retry: BusConfig,
    ) -> Result<Log> {
        fs::create_dir_all(&dir).map_err(|e| Error::io("create bus directory", &dir, e))?;
        let bus = Log {
            dir,
            subscriptions,
            retry,
            state: Mutex::new(State::default()),
        };
        {
            let _lock = bus.lock_file("lock")?;
            // A crash mid-append leaves a partial last line: it was never acknowledged.
            truncate_partial_line(&bus.dir.join("messages.jsonl"))?;
            truncate_partial_line(&bus.dir.join("deliveries.jsonl"))?;
            bus.refresh()?;
        }
        Ok(bus)
    }

    fn lock_file(&self, name: &str) -> Result<File> {
        let path = self.dir.join(name);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        f.lock().map_err(|e| Error::io("lock", &path, e))?;
        Ok(f)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves state that the log can rebuild.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads log lines appended since the last read (by this or another process).
    fn refresh(&self) -> Result<()> {
        let mut st = self.state();
        let msgs = read_new_lines(&self.dir.join("messages.jsonl"), &mut st.msg_offset)?;
        for line in msgs {
            match serde_json::from_str::<LoggedMessage>(&line) {
                Ok(m) => {
                    st.next_seq = st.next_seq.max(m.seq + 1);
                    for s in &m.subscriptions {
                        st.pending.insert(
                            (m.seq, s.clone()),
                            Entry {
                                attempts: 0,
                                not_before: m.at,
                                waiting: false,
                            },
                        );
                    }
                    st.messages.insert(m.seq, m);
                }
                Err(e) => {
                    tracing::error!(error = %e, "skipping unreadable line in bus/messages.jsonl")
                }
            }
        }
        let dels = read_new_lines(&self.dir.join("deliveries.jsonl"), &mut st.del_offset)?;
        for line in dels {
            match serde_json::from_str::<DeliveryLine>(&line) {
                Ok(d) => apply_delivery(&mut st, d),
                Err(e) => {
                    tracing::error!(error = %e, "skipping unreadable line in bus/deliveries.jsonl")
                }
            }
        }
        Ok(())
    }

    /// Appends one line; the caller holds the log's lock. A partial line left by a
    /// writer that died mid-append (it held the lock, so it is gone) is cut first, so
    /// the new line is never merged into it.
    fn append(&self, file: &str, line: &str) -> Result<()> {
        let path = self.dir.join(file);
        let mut f = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        cut_torn_tail(&mut f, &path)?;
        f.write_all(format!("{line}\n").as_bytes())
            .map_err(|e| Error::io("append to", &path, e))?;
        f.sync_data().map_err(|e| Error::io("sync", &path, e))?;
        Ok(())
    }

    fn record(&self, line: DeliveryLine) -> Result<()> {
        let _lock = self.lock_file("lock")?;
        self.refresh()?;
        let text = serde_json::to_string(&line).map_err(|e| Error::permanent("bus record", e))?;
        self.append("deliveries.jsonl", &text)?;
        self.refresh()
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

    fn append_message(&self, msg: &BusMessage, subscriptions: Vec<String>) -> Result<u64> {
        let _lock = self.lock_file("lock")?;
        self.refresh()?;
        let seq = self.state().next_seq;
        let logged = LoggedMessage {
            seq,
            at: Utc::now(),
            message: msg.clone(),
            subscriptions,
        };
        let text =
            serde_json::to_string(&logged).map_err(|e| Error::permanent("bus publish", e))?;
        self.append("messages.jsonl", &text)?;
        self.refresh()?;
        Ok(seq)
    }

    fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        self.refresh()?;
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
            st.pending.remove(&key);
        }
        Outcome::Retry | Outcome::Wait => {
            if let Some(e) = st.pending.get_mut(&key) {
                e.attempts = d.attempts;
                e.not_before = d.not_before.unwrap_or(d.at);
                e.waiting = d.outcome == Outcome::Wait;
            }
        }
        Outcome::Dead => {
            st.pending.remove(&key);
            let msg = st.messages.get(&d.seq);
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
                st.pending.insert(
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

/// Reads complete lines after `offset`, advancing it past them.
fn read_new_lines(path: &Path, offset: &mut u64) -> Result<Vec<String>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io("open", path, e)),
    };
    f.seek(SeekFrom::Start(*offset))
        .map_err(|e| Error::io("seek", path, e))?;
    let mut buf = String::new();
    f.read_to_string(&mut buf)
        .map_err(|e| Error::io("read", path, e))?;
    let complete = match buf.rfind('\n') {
        Some(i) => i + 1,
        None => return Ok(vec![]),
    };
    *offset += complete as u64;
    Ok(buf[..complete]
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect())
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

    fn recorder(fail_b: usize) -> Recorder {
        Recorder {
            seen: Mutex::new(vec![]),
            fail_b: AtomicUsize::new(fail_b),
        }
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
        let p = Panics(AtomicUsize::new(0));
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
        let w = Waiter(AtomicUsize::new(0));
        let rep = bus
            .drain(&w, &DrainOptions::default(), |_| {})
            .await
            .unwrap();
        assert_eq!(rep.parked, 1, "a waits an hour: parked");
        assert_eq!(w.0.load(Ordering::SeqCst), 2, "b waited 20ms and finished");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = BusConfig {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
        };
        let bus = EmbeddedBus::open(dir.path(), subs(), cfg).unwrap();
        assert_eq!(bus.0.backoff(1), Duration::from_millis(100));
        assert_eq!(bus.0.backoff(2), Duration::from_millis(200));
        assert_eq!(bus.0.backoff(3), Duration::from_millis(400));
        assert_eq!(bus.0.backoff(4), Duration::from_millis(500));
    }
}
