//! In-memory ports: a store with S3's conditional writes, a bus that keeps what was
//! published, and a clock that stands still until moved. Stage logic runs on them
//! through the same harness as everywhere, in microseconds and without a file, which
//! is what the stages' own tests use; the integration tests use the real adapters.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::event::Event;
use crate::ports::{BusMessage, EventBus, Object, ObjectStore, Ports, Precondition};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep using it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An object store in memory, with `If-None-Match` and `If-Match` as S3 has them.
#[derive(Debug, Default)]
pub struct MemStore {
    objects: Mutex<BTreeMap<String, Object>>,
}

impl MemStore {
    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        lock(&self.objects).keys().cloned().collect()
    }

    /// Removes an object (tests: an object lost to a cleanup or a restore).
    pub fn remove(&self, key: &str) {
        lock(&self.objects).remove(key);
    }
}

impl ObjectStore for MemStore {
    async fn delete(&self, key: &str) -> Result<()> {
        self.remove(key);
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Object>> {
        Ok(lock(&self.objects).get(key).cloned())
    }

    async fn put(&self, key: &str, bytes: Vec<u8>, cond: Precondition) -> Result<String> {
        let mut objects = lock(&self.objects);
        let current = objects.get(key).map(|o| o.etag.as_str());
        let holds = match (&cond, current) {
            (Precondition::None, _) => true,
            (Precondition::IfNoneMatch, found) => found.is_none(),
            (Precondition::IfMatch(want), found) => found == Some(want.as_str()),
        };
        if !holds {
            return Err(Error::Conflict { key: key.into() });
        }
        let etag = hex::encode(&Sha256::digest(&bytes)[..16]);
        objects.insert(
            key.to_string(),
            Object {
                bytes,
                etag: etag.clone(),
            },
        );
        Ok(etag)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(lock(&self.objects)
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect())
    }
}

/// A bus that keeps every published message, in order.
#[derive(Debug, Default)]
pub struct MemBus {
    published: Mutex<Vec<BusMessage>>,
}

impl MemBus {
    /// Every message published so far.
    pub fn published(&self) -> Vec<BusMessage> {
        lock(&self.published).clone()
    }

    /// The events published so far (messages that are not events are left out).
    pub fn events(&self) -> Vec<Event> {
        lock(&self.published)
            .iter()
            .filter_map(|m| Event::from_json(&m.body).ok())
            .collect()
    }
}

impl EventBus for MemBus {
    async fn publish(&self, msg: &BusMessage) -> Result<()> {
        lock(&self.published).push(msg.clone());
        Ok(())
    }
}

/// The bus, the store and a clock, in memory.
#[derive(Debug)]
pub struct MemPorts {
    pub bus: MemBus,
    pub store: MemStore,
    clock: Mutex<DateTime<Utc>>,
}

impl MemPorts {
    /// Empty ports whose clock reads `now` until moved.
    pub fn at(now: DateTime<Utc>) -> MemPorts {
        MemPorts {
            bus: MemBus::default(),
            store: MemStore::default(),
            clock: Mutex::new(now),
        }
    }

    /// Moves the clock by `by`.
    pub fn advance(&self, by: chrono::Duration) {
        let mut clock = lock(&self.clock);
        *clock = clock.checked_add_signed(by).unwrap_or(*clock);
    }
}

impl Ports for MemPorts {
    type Bus = MemBus;
    type Store = MemStore;

    fn bus(&self) -> &MemBus {
        &self.bus
    }

    fn store(&self) -> &MemStore {
        &self.store
    }

    fn now(&self) -> DateTime<Utc> {
        *lock(&self.clock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conditional_writes_and_listing_behave_as_s3() {
        let s = MemStore::default();
        let etag = s
            .put("a/1", b"x".to_vec(), Precondition::IfNoneMatch)
            .await
            .unwrap();
        assert!(matches!(
            s.put("a/1", b"y".to_vec(), Precondition::IfNoneMatch).await,
            Err(Error::Conflict { .. })
        ));
        assert!(matches!(
            s.put("a/1", b"y".to_vec(), Precondition::IfMatch("stale".into()))
                .await,
            Err(Error::Conflict { .. })
        ));
        s.put("a/1", b"y".to_vec(), Precondition::IfMatch(etag))
            .await
            .unwrap();
        s.put("a/2", b"z".to_vec(), Precondition::None)
            .await
            .unwrap();
        s.put("b/1", b"z".to_vec(), Precondition::None)
            .await
            .unwrap();
        assert_eq!(s.list("a/").await.unwrap(), ["a/1", "a/2"]);
        assert_eq!(s.get("a/1").await.unwrap().unwrap().bytes, b"y");
        assert_eq!(s.get("c").await.unwrap(), None);
    }
}
