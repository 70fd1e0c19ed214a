//! The store's key layout (the same in S3 and in the local directory) and typed JSON
//! helpers over any [`ObjectStore`].
//!
//! ```text
//! runs/<app>/<run>/events/<event-id>.json        append-only event log
//! runs/<app>/<run>/stages/<stage>[.<env>].json    stage records (claims)
//! runs/<app>/<run>/notifications/<reaction>/<event-id>.json
//! runs/<app>/<run>/tests/output.log               bounded test output
//! approvals/<app>/<run>/<env>.json                approval requests and decisions
//! deployments/<app>/<env>/current.json            what is live
//! deployments/<app>/<env>/history/<day>/<ms>-<run>.json deploy history (rollback)
//! deployments/<app>/<env>/lease.json              deploy lease
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::ports::{ObjectStore, Precondition};

pub fn run_prefix(app: &str, run: &str) -> String {
    format!("runs/{app}/{run}/")
}
pub fn event_key(app: &str, run: &str, id: &str) -> String {
    format!("runs/{app}/{run}/events/{id}.json")
}
pub fn stage_key(app: &str, run: &str, stage: &str, env: Option<&str>) -> String {
    match env {
        Some(e) => format!("runs/{app}/{run}/stages/{stage}.{e}.json"),
        None => format!("runs/{app}/{run}/stages/{stage}.json"),
    }
}
pub fn notification_key(app: &str, run: &str, reaction: &str, event_id: &str) -> String {
    format!("runs/{app}/{run}/notifications/{reaction}/{event_id}.json")
}
pub fn test_output_key(app: &str, run: &str) -> String {
    format!("runs/{app}/{run}/tests/output.log")
}
pub fn approval_key(app: &str, run: &str, env: &str) -> String {
    format!("approvals/{app}/{run}/{env}.json")
}

/// Where open approval requests are found without reading history: a marker per request
/// under the UTC day it expires, `approvals/_open/<YYYY-MM-DD>/<app>/<run>/<env>.json`
/// (`_` is in no app name). Pending approvals are listed from the days not yet past.
pub const OPEN_APPROVALS: &str = "approvals/_open/";

/// The open-request marker of `app`'s `run` in `env`, expiring at `expires_at`.
pub fn open_approval_key(
    expires_at: chrono::DateTime<chrono::Utc>,
    app: &str,
    run: &str,
    env: &str,
) -> String {
    format!(
        "{OPEN_APPROVALS}{}/{app}/{run}/{env}.json",
        expires_at.format("%Y-%m-%d")
    )
}
pub fn current_key(app: &str, env: &str) -> String {
    format!("deployments/{app}/{env}/current.json")
}
pub fn history_prefix(app: &str, env: &str) -> String {
    format!("deployments/{app}/{env}/history/")
}
/// A deploy's history entry, under the UTC day it was made (the local store keeps a
/// day's entries in one segment), ordered by time.
pub fn history_key(app: &str, env: &str, at: chrono::DateTime<chrono::Utc>, run: &str) -> String {
    format!("deployments/{app}/{env}/history/{}-{run}.json", dated(at))
}
/// `<YYYY-MM-DD>/<ms>` of `at` (UTC; milliseconds 13 digits, so keys sort by time): where
/// keys filed by day and time go.
fn dated(at: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "{}/{:013}",
        at.format("%Y-%m-%d"),
        at.timestamp_millis().max(0)
    )
}
/// The run index: one entry a run, under the day it started, ordered by time.
pub fn run_index_key(at: chrono::DateTime<chrono::Utc>, run: &str) -> String {
    format!("index/runs/{}-{run}", dated(at))
}
/// The run index's days, one marker each.
pub const RUN_INDEX_DAYS: &str = "index/days/";
pub const RUN_INDEX: &str = "index/runs/";
pub fn lease_key(app: &str, env: &str) -> String {
    format!("deployments/{app}/{env}/lease.json")
}

/// Reads and parses a JSON object with its etag.
pub async fn get_json<S: ObjectStore, T: DeserializeOwned>(
    store: &S,
    key: &str,
) -> Result<Option<(T, String)>> {
    match store.get(key).await? {
        None => Ok(None),
        Some(obj) => Ok(Some((json_of(key, &obj.bytes)?, obj.etag))),
    }
}

/// Parses the stored object `key`.
pub fn json_of<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::permanent(
            format!("read {key}"),
            format!("stored object is not valid: {e}"),
        )
    })
}

/// Serializes and writes a JSON object under a precondition.
pub async fn put_json<S: ObjectStore, T: Serialize>(
    store: &S,
    key: &str,
    value: &T,
    cond: Precondition,
) -> Result<String> {
    store.put(key, bytes_of(key, value)?, cond).await
}

/// The bytes [`put_json`] stores for `value` under `key`.
pub fn bytes_of<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::permanent(format!("write {key}"), e))
}

/// What [`compare_and_swap`]'s `decide` wants done with the current value.
pub enum Change<T, R> {
    /// Write this value (create it when there was none, else replace the one read).
    Write(T),
    /// Write nothing; return this.
    Stop(R),
}

/// How a [`compare_and_swap`] ended.
pub enum Swapped<T, R> {
    /// The value was written; its new etag.
    Written(T, String),
    /// `decide` stopped.
    Stopped(R),
}

/// The one compare-and-swap loop: reads `key`, lets `decide` choose from the current
/// value (`None` when absent), and writes the choice conditionally (`If-None-Match` for
/// a create, `If-Match` the etag read for a replace). A lost race reads again, up to five
/// times; then it is a transient error (`what` names the object).
pub async fn compare_and_swap<S, T, R>(
    store: &S,
    key: &str,
    what: &str,
    mut decide: impl FnMut(Option<T>) -> Result<Change<T, R>>,
) -> Result<Swapped<T, R>>
where
    S: ObjectStore,
    T: Serialize + DeserializeOwned,
{
    for _ in 0..5 {
        let current: Option<(T, String)> = get_json(store, key).await?;
        let (value, etag) = match current {
            Some((v, etag)) => (Some(v), Some(etag)),
            None => (None, None),
        };
        let next = match decide(value)? {
            Change::Stop(r) => return Ok(Swapped::Stopped(r)),
            Change::Write(next) => next,
        };
        let cond = match etag {
            Some(etag) => Precondition::IfMatch(etag),
            None => Precondition::IfNoneMatch,
        };
        match put_json(store, key, &next, cond).await {
            Ok(etag) => return Ok(Swapped::Written(next, etag)),
            Err(Error::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::transient(
        what.to_string(),
        crate::error::Message(format!("{key}: too much contention")),
    ))
}

/// [`compare_and_swap`] for an object this call usually creates (a stage's first
/// claim): what `decide` makes of no object is written with `If-None-Match` first,
/// without a read, and only when that loses (the object exists) is the current value
/// read and decided on. One store request instead of two on the usual path; the same
/// outcome on every path, since a create cannot overwrite anything.
pub async fn create_or_swap<S, T, R>(
    store: &S,
    key: &str,
    what: &str,
    mut decide: impl FnMut(Option<T>) -> Result<Change<T, R>>,
) -> Result<Swapped<T, R>>
where
    S: ObjectStore,
    T: Serialize + DeserializeOwned,
{
    // Stopping or an error on no object is decided again on what is read.
    if let Ok(Change::Write(new)) = decide(None) {
        match put_json(store, key, &new, Precondition::IfNoneMatch).await {
            Ok(etag) => return Ok(Swapped::Written(new, etag)),
            Err(Error::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    compare_and_swap(store, key, what, decide).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys filed by day and time: the UTC day, then 13-digit milliseconds (they sort by
    /// time), then the run.
    #[test]
    fn dated_keys_are_filed_by_utc_day_then_time() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-07T23:59:59.123+01:00")
            .unwrap()
            .to_utc();
        assert_eq!(
            run_index_key(at, "ab12"),
            "index/runs/2026-12-07/1796684399123-ab12"
        );
        assert_eq!(
            history_key("web", "staging", at, "ab12"),
            "deployments/web/staging/history/2026-12-07/1796684399123-ab12.json"
        );
    }
}
