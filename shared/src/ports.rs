//! Ports: the traits stage logic talks through. Adapters are named after their
//! technology (`DirStore`, `EmbeddedBus`, `ManifestTarget`; later `S3Store`, `SnsBus`,
//! `KubeDeployTarget`). Every method returns `Send` futures so stages run on tokio.
//!
//! # Errors
//! Adapters report `Error::Transient` for what may pass by retrying (network, throttling,
//! contention), `Error::Permanent` for what will not (missing workload or manifest),
//! `Error::Conflict` when a conditional write loses, and never put secrets in messages.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{AppConfig, EnvironmentConfig, HttpUrl, ReactionConfig, TestConfig};
use crate::error::Result;
use crate::event::{Attributes, Event, Image};

/// A message on the bus: SNS's shape (attributes to filter on, a string body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BusMessage {
    pub id: String,
    pub attributes: Attributes,
    pub body: String,
}

impl BusMessage {
    pub fn from_event(e: &Event) -> BusMessage {
        BusMessage {
            id: e.id.clone(),
            attributes: e.attributes(),
            body: e.to_json(),
        }
    }
}

/// Publishes messages to every subscription whose filter policy matches.
pub trait EventBus: Send + Sync {
    fn publish(&self, msg: &BusMessage) -> impl Future<Output = Result<()>> + Send;
}

/// An object and its entity tag.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub bytes: Vec<u8>,
    pub etag: String,
}

/// Conditions of a write (S3's `If-None-Match: *` and `If-Match`).
#[derive(Debug, Clone, PartialEq)]
pub enum Precondition {
    /// Write unconditionally.
    None,
    /// Create only if absent (claims).
    IfNoneMatch,
    /// Replace only if the current etag is this one (compare-and-swap).
    IfMatch(String),
}

/// A prefix [`ObjectStore::delete_prefix`] takes: one ending in `/`, so it never
/// reaches a sibling that only starts with the same letters (`runs/a/r1` and `r10`).
pub(crate) fn whole_prefix(prefix: &str) -> Result<()> {
    if prefix.ends_with('/') {
        Ok(())
    } else {
        Err(crate::error::Error::invalid(
            "store prefix",
            format!("{prefix:?} does not end with /"),
        ))
    }
}

/// A key-value object store with conditional writes: S3 in AWS, a directory locally.
pub trait ObjectStore: Send + Sync {
    /// The object, or `None` when absent.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Object>>> + Send;
    /// Writes and returns the new etag; `Error::Conflict` when the precondition fails.
    fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        cond: Precondition,
    ) -> impl Future<Output = Result<String>> + Send;
    /// Writes several objects, each under its own precondition: `Err` when the batch
    /// as a whole failed (nothing of it can be counted on), else each write's outcome
    /// in order (`Error::Conflict` for a precondition that failed). Where each write is
    /// made durable by a sync of its own (the local store's objects kept in files),
    /// the batch shares one; the default writes each in turn (S3).
    fn put_many(
        &self,
        writes: Vec<Put>,
    ) -> impl Future<Output = Result<Vec<Result<String>>>> + Send {
        async move {
            let mut out = Vec::with_capacity(writes.len());
            for w in writes {
                out.push(self.put(&w.key, w.bytes, w.cond).await);
            }
            Ok(out)
        }
    }
    /// Keys starting with `prefix`, sorted.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// Removes one object (an absent one is not an error). Only retention removes
    /// objects: `baton gc`, with the operator's credentials on a stack.
    fn delete(&self, key: &str) -> impl Future<Output = Result<()>> + Send;
    /// Removes every object under `prefix` (ending in `/`); the bytes freed where the
    /// store can tell (the local store), else 0 (S3). Nothing under it may be written
    /// meanwhile (retention removes only finished runs).
    fn delete_prefix(&self, prefix: &str) -> impl Future<Output = Result<u64>> + Send {
        async move {
            whole_prefix(prefix)?;
            for key in self.list(prefix).await? {
                self.delete(&key).await?;
            }
            Ok(0)
        }
    }
    /// Every object under `prefix` with its key, sorted by key (a run's records at
    /// once). Objects removed between the listing and the read are left out.
    fn get_prefix(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<(String, Object)>>> + Send {
        async move {
            let mut out = vec![];
            for key in self.list(prefix).await? {
                if let Some(obj) = self.get(&key).await? {
                    out.push((key, obj));
                }
            }
            Ok(out)
        }
    }

    /// Several objects (`None` where absent), in the order of `keys`: one trip to the
    /// blocking pool in the local store; the default reads 16 at a time (S3).
    fn get_many(
        &self,
        keys: &[String],
    ) -> impl Future<Output = Result<Vec<Option<Object>>>> + Send {
        async move {
            let mut out = Vec::with_capacity(keys.len());
            for some in keys.chunks(16) {
                let reads: Vec<_> = some.iter().map(|key| self.get(key)).collect();
                out.extend(futures::future::try_join_all(reads).await?);
            }
            Ok(out)
        }
    }

    /// [`ObjectStore::stamp`] of each set of directories, in order (one trip in the
    /// local store).
    fn stamps(
        &self,
        sets: &[Vec<String>],
    ) -> impl Future<Output = Result<Vec<Option<Stamp>>>> + Send {
        async move {
            let mut out = Vec::with_capacity(sets.len());
            for dirs in sets {
                out.push(self.stamp(dirs).await?);
            }
            Ok(out)
        }
    }

    /// A token that changes whenever an object under one of `dirs` (key prefixes ending
    /// in `/`: a run's directories) is written, and when that last happened, where the
    /// store can give them cheaply (the local store: its segments' inode, length and
    /// modification time); `None` where it cannot (S3). Lets a summary kept elsewhere be
    /// checked against its source.
    fn stamp(&self, dirs: &[String]) -> impl Future<Output = Result<Option<Stamp>>> + Send {
        let _ = dirs;
        async { Ok(None) }
    }

    /// Compacts what the store keeps of these directories (`dir/` prefixes of
    /// [`ObjectStore::stamp`]'s kind) once nothing is being written there: the local
    /// store packs their segments (superseded records dropped, the rest deflated), so a
    /// run in flight only appends and is packed once, when it is quiet. A no-op where
    /// there is nothing to compact (S3).
    fn compact(&self, dirs: &[String]) -> impl Future<Output = Result<()>> + Send {
        let _ = dirs;
        async { Ok(()) }
    }
}

/// One write of [`ObjectStore::put_many`].
#[derive(Debug, Clone)]
pub struct Put {
    pub key: String,
    pub bytes: Vec<u8>,
    pub cond: Precondition,
}

/// See [`ObjectStore::stamp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub token: String,
    /// The last write under the directories (`None`: nothing written).
    pub changed: Option<DateTime<Utc>>,
}

/// What a registry says about a tag.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub digest: crate::reference::Digest,
    pub pushed_at: Option<DateTime<Utc>>,
}

/// A container registry: resolve tags, retag images.
pub trait Registry: Send + Sync {
    /// The digest a tag points at; `Error::NotFound` when the tag does not exist.
    fn resolve(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
    ) -> impl Future<Output = Result<Resolved>> + Send;
    /// Points `tag` at `image.digest` (same manifest); already so is success.
    fn retag(
        &self,
        image: &Image,
        tag: &crate::reference::Tag,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// The last `limit` bytes of a test's output, on a character boundary, as runners keep
/// it (the end is where failures are).
pub fn bound_output(output: &str, limit: usize) -> String {
    if output.len() <= limit {
        return output.to_string();
    }
    let mut start = output.len() - limit;
    while !output.is_char_boundary(start) {
        start += 1;
    }
    format!("[… {} bytes cut …]\n{}", start, &output[start..])
}

/// What to test.
#[derive(Debug, Clone)]
pub struct TestRequest {
    pub app: String,
    pub run: crate::ids::RunId,
    pub image: Image,
    pub attempt: u32,
    /// Set when a runner runs a verify check rather than the app's tests.
    pub check: Option<CheckTarget>,
}

/// Which verify check a runner runs: the environment just deployed and the check's name
/// (`BATON_ENVIRONMENT`, `BATON_CHECK` for a command; part of a Job's name).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckTarget {
    pub environment: String,
    pub check: String,
}

/// The result of a finished test.
#[derive(Debug, Clone, PartialEq)]
pub struct TestOutcome {
    pub passed: bool,
    /// One line: `exit code 0`, `deadline exceeded after 10m`.
    pub summary: String,
    pub exit_code: Option<i32>,
    /// Captured output, already bounded by the runner.
    pub output: String,
}

/// Where a test stands.
#[derive(Debug, Clone, PartialEq)]
pub enum TestProgress {
    Finished(TestOutcome),
    /// Still running: check again after `check_after` with `state`.
    Running {
        state: Value,
        check_after: Duration,
        note: String,
    },
}

/// Runs an image's tests, pinned by digest, in a sandbox.
pub trait TestRunner: Send + Sync {
    fn kind(&self) -> &'static str;
    fn start(&self, req: &TestRequest) -> impl Future<Output = Result<TestProgress>> + Send;
    fn check(
        &self,
        req: &TestRequest,
        state: &Value,
    ) -> impl Future<Output = Result<TestProgress>> + Send;
}

/// What to deploy where.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    pub app: String,
    pub environment: String,
    pub run: crate::ids::RunId,
    pub image: Image,
    /// Change cause recorded with the change (run, tag, who).
    pub cause: String,
}

/// The image a workload's container had before a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadImage {
    /// `Kind/name:container`.
    pub workload: String,
    pub image: String,
}

/// What applying a deploy did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub previous: Vec<WorkloadImage>,
    /// False when every workload already ran the digest.
    pub changed: bool,
    pub detail: String,
}

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Rollout {
    Complete {
        detail: String,
    },
    Progressing {
        detail: String,
        check_after: Duration,
    },
    Failed {
        reason: String,
    },
}

/// A deploy target: sets the image by digest, follows the rollout, restores on failure.
pub trait DeployTarget: Send + Sync {
    fn kind(&self) -> &'static str;
    /// Sets every configured workload's container image to `req.image.reference()`.
    fn apply(&self, req: &DeployRequest) -> impl Future<Output = Result<Applied>> + Send;
    /// Where the rollout of `req` stands.
    fn rollout(&self, req: &DeployRequest) -> impl Future<Output = Result<Rollout>> + Send;
    /// Puts the previous images back (rollback after a failed rollout).
    fn restore(
        &self,
        req: &DeployRequest,
        previous: &[WorkloadImage],
    ) -> impl Future<Output = Result<()>> + Send;
}

/// What an HTTP check saw.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpAnswer {
    pub status: u16,
    /// The body (at most 64 KiB, lossily decoded).
    pub body: String,
    pub elapsed: Duration,
}

/// One sample of a PromQL result: its labels (`{job="web"}`) and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: String,
    pub value: f64,
}

/// Looks at a deployed service from outside: HTTP checks and Prometheus queries.
pub trait Probe: Send + Sync {
    /// `GET url`; an error when no answer came within `timeout`.
    fn http_get(
        &self,
        url: &HttpUrl,
        timeout: Duration,
    ) -> impl Future<Output = Result<HttpAnswer>> + Send;
    /// An instant query against a Prometheus server's HTTP API; the samples of a vector
    /// or scalar result (empty: no data).
    fn prometheus_query(
        &self,
        server: &HttpUrl,
        query: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<Sample>>> + Send;
}

/// Sends a notification for an event.
pub trait Notifier: Send + Sync {
    fn notify(&self, reaction: &str, event: &Event) -> impl Future<Output = Result<()>> + Send;
}

/// The adapters every stage uses: the bus and the store. A deployment of Baton chooses
/// them once at start-up; a stage that needs more asks for one of the traits below, so
/// a function links only the adapters its stage uses.
pub trait Ports: Send + Sync + 'static {
    type Bus: EventBus;
    type Store: ObjectStore;

    fn bus(&self) -> &Self::Bus;
    fn store(&self) -> &Self::Store;
    /// Now. Tests may pin it.
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A registry to resolve tags and retag images (ingest, promote).
pub trait RegistryPorts: Ports {
    type Registry: Registry;
    fn registry(&self) -> &Self::Registry;
}

/// Test runners (test).
pub trait TestPorts: Ports {
    type Tests: TestRunner;
    /// The runner for a test configuration (an app's tests, a verify check's runner).
    fn test_runner(&self, test: &TestConfig) -> Result<Self::Tests>;
}

/// Test runners and a probe (verify).
pub trait VerifyPorts: TestPorts {
    type Probe: Probe;
    fn probe(&self) -> &Self::Probe;
}

/// Deploy targets (deploy, rollback).
pub trait TargetPorts: Ports {
    type Target: DeployTarget;
    /// The deploy target configured for an environment.
    fn deploy_target(&self, app: &AppConfig, env: &EnvironmentConfig) -> Result<Self::Target>;
}

/// Notifiers (notify).
pub trait NotifyPorts: Ports {
    type Notifier: Notifier;
    /// The notifier of a reaction.
    fn notifier(&self, reaction: &ReactionConfig) -> Result<Self::Notifier>;
}

/// Every adapter: what runs every stage (the local runtime, the CLI).
pub trait AllPorts: RegistryPorts + VerifyPorts + TargetPorts + NotifyPorts {}

impl<P: RegistryPorts + VerifyPorts + TargetPorts + NotifyPorts> AllPorts for P {}

#[cfg(test)]
mod tests {
    #[test]
    fn bound_output_keeps_the_tail_on_char_boundaries() {
        assert_eq!(super::bound_output("abc", 10), "abc");
        let b = super::bound_output("ééééé", 3);
        assert!(b.ends_with('é') && b.contains("cut"), "{b}");
    }
}
