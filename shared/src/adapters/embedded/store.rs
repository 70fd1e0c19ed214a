//! `DirStore`: the object store as a directory, with the same keys as S3 and atomic
//! conditional writes. Create-if-absent links a fully written temp file into place (so a
//! reader never sees half an object and two creators cannot both win); compare-and-swap
//! runs under an exclusive file lock, so separate `baton` processes are safe too. The
//! file work (locks, `fsync`) runs on tokio's blocking pool, never on an async worker.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::ports::{Object, ObjectStore, Precondition};

/// A directory-backed object store.
#[derive(Debug, Clone)]
pub struct DirStore {
    root: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// How many lock files a store has.
const LOCK_STRIPES: u16 = 128;

fn etag_of(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..16])
}

impl DirStore {
    /// Opens (and creates) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<DirStore> {
        let root = root.into();
        let locks = root.join(".locks");
        fs::create_dir_all(&locks).map_err(|e| Error::io("create store", &root, e))?;
        let tmp = root.join(".tmp");
        fs::create_dir_all(&tmp).map_err(|e| Error::io("create store", &root, e))?;
        // Objects are written in `.tmp/` and linked or renamed into place; a process
        // killed mid-write leaves its file there. Those of processes that are gone are
        // removed (a live process's are its writes in progress).
        if let Ok(entries) = fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let name = e.file_name();
                let pid = name
                    .to_str()
                    .and_then(|n| n.strip_prefix(".tmp-"))
                    .and_then(|n| n.split('-').next())
                    .and_then(|p| p.parse::<u32>().ok());
                if pid.is_none_or(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        // Earlier versions kept a lock file per key: removed (best effort).
        if let Ok(entries) = fs::read_dir(&locks) {
            for e in entries.flatten() {
                if e.file_name().len() != 3 {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(DirStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file behind a key (keys are `/`-separated relative paths).
    pub fn path_of(&self, key: &str) -> Result<PathBuf> {
        if key.is_empty()
            || key.starts_with('/')
            || key
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == ".." || s.starts_with(".tmp-"))
            || key.starts_with(".locks")
            || key.starts_with(".tmp")
        {
            return Err(Error::invalid(
                "store key",
                format!("{key:?} is not a valid key"),
            ));
        }
        Ok(self.root.join(key))
    }

    /// Writes and syncs `bytes` to a new file in `.tmp/` (the object's directory is
    /// created for the link or rename that follows).
    fn write_temp(&self, dir: &Path, bytes: &[u8]) -> Result<PathBuf> {
        fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join(".tmp")
            .join(format!(".tmp-{}-{n}", std::process::id()));
        let mut f = File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| Error::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| Error::io("sync", &tmp, e))?;
        Ok(tmp)
    }

    /// The lock of a key: one of [`LOCK_STRIPES`] files, so the locks stay a fixed
    /// handful of files whatever the number of keys (keys sharing a stripe wait for
    /// each other's compare-and-swap, a few microseconds).
    fn lock(&self, key: &str) -> Result<File> {
        let hash = Sha256::digest(key.as_bytes());
        let stripe = u16::from_be_bytes([hash[0], hash[1]]) % LOCK_STRIPES;
        let path = self.root.join(".locks").join(format!("{stripe:03}"));
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open lock", &path, e))?;
        f.lock().map_err(|e| Error::io("lock", &path, e))?;
        Ok(f)
    }

    fn get_sync(&self, key: &str) -> Result<Option<Object>> {
        let path = self.path_of(key)?;
        match fs::read(&path) {
            Ok(bytes) => {
                let etag = etag_of(&bytes);
                Ok(Some(Object { bytes, etag }))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", &path, e)),
        }
    }

    fn put_sync(&self, key: &str, bytes: Vec<u8>, cond: Precondition) -> Result<String> {
        let path = self.path_of(key)?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        let etag = etag_of(&bytes);
        // A create over an existing object fails without writing (the link below still
        // decides a race).
        if matches!(cond, Precondition::IfNoneMatch) && path.exists() {
            return Err(Error::Conflict { key: key.into() });
        }
        let tmp = self.write_temp(&dir, &bytes)?;
        let result = match cond {
            Precondition::IfNoneMatch => match fs::hard_link(&tmp, &path) {
                Ok(()) => Ok(etag),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    Err(Error::Conflict { key: key.into() })
                }
                Err(e) => Err(Error::io("create", &path, e)),
            },
            Precondition::None => fs::rename(&tmp, &path)
                .map(|_| etag)
                .map_err(|e| Error::io("replace", &path, e)),
            Precondition::IfMatch(expected) => {
                let _guard = self.lock(key)?;
                match self.get_sync(key)? {
                    Some(cur) if cur.etag == expected => fs::rename(&tmp, &path)
                        .map(|_| etag)
                        .map_err(|e| Error::io("replace", &path, e)),
                    _ => Err(Error::Conflict { key: key.into() }),
                }
            }
        };
        let _ = fs::remove_file(&tmp);
        result
    }

    fn list_sync(&self, prefix: &str) -> Result<Vec<String>> {
        // Walk from the deepest directory the prefix names.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.root.join(dir_part)
        };
        let mut out = vec![];
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("list", &dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(".tmp") || name == ".locks" {
                    continue;
                }
                let path = entry.path();
                let ft = entry.file_type().map_err(|e| Error::io("stat", &path, e))?;
                let Ok(rel) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let key = rel.to_string_lossy().replace('\\', "/");
                if ft.is_dir() {
                    // Only directories that can hold keys with the prefix: a listing of
                    // `runs/web/ab12` reads `runs/web` and the runs starting `ab12`.
                    let dir = format!("{key}/");
                    if dir.starts_with(prefix) || prefix.starts_with(&dir) {
                        stack.push(path);
                    }
                } else if key.starts_with(prefix) {
                    out.push(key);
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

impl DirStore {
    /// Runs `f` on a copy of this handle on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(DirStore) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(store))
            .await
            .map_err(|e| Error::permanent("store", format!("a file task failed: {e}")))?
    }

    /// Removes one object (absent is fine).
    pub async fn remove(&self, key: &str) -> Result<()> {
        let path = self.path_of(key)?;
        self.blocking(move |_| match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &path, e)),
        })
        .await
    }

    /// Removes every object under `prefix` (a key prefix ending in `/`); the bytes
    /// freed. Nothing under it may be written meanwhile (retention removes only
    /// finished runs).
    pub async fn remove_prefix(&self, prefix: &str) -> Result<u64> {
        let Some(dir_key) = prefix.strip_suffix('/') else {
            return Err(Error::invalid(
                "store prefix",
                format!("{prefix:?} does not end with /"),
            ));
        };
        let dir = self.path_of(dir_key)?;
        self.blocking(move |_| {
            let mut bytes = 0u64;
            let mut stack = vec![dir.clone()];
            while let Some(d) = stack.pop() {
                let entries = match fs::read_dir(&d) {
                    Ok(e) => e,
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io("list", &d, e)),
                };
                for entry in entries.flatten() {
                    match entry.metadata() {
                        Ok(m) if m.is_dir() => stack.push(entry.path()),
                        Ok(m) => bytes = bytes.saturating_add(m.len()),
                        Err(_) => {}
                    }
                }
            }
            match fs::remove_dir_all(&dir) {
                Ok(()) => Ok(bytes),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(bytes),
                Err(e) => Err(Error::io("remove", &dir, e)),
            }
        })
        .await
    }
}

impl ObjectStore for DirStore {
    async fn get(&self, key: &str) -> Result<Option<Object>> {
        let key = key.to_string();
        self.blocking(move |s| s.get_sync(&key)).await
    }

    async fn put(&self, key: &str, bytes: Vec<u8>, cond: Precondition) -> Result<String> {
        let key = key.to_string();
        self.blocking(move |s| s.put_sync(&key, bytes, cond)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix = prefix.to_string();
        self.blocking(move |s| s.list_sync(&prefix)).await
    }

    /// One trip to the blocking pool for the listing and every read.
    async fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, Object)>> {
        let prefix = prefix.to_string();
        self.blocking(move |s| {
            let mut out = vec![];
            for key in s.list_sync(&prefix)? {
                if let Some(obj) = s.get_sync(&key)? {
                    out.push((key, obj));
                }
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conditional_writes() {
        let dir = tempfile::tempdir().unwrap();
        let s = DirStore::open(dir.path()).unwrap();
        let e1 = s
            .put("a/b.json", b"1".to_vec(), Precondition::IfNoneMatch)
            .await
            .unwrap();
        assert!(matches!(
            s.put("a/b.json", b"2".to_vec(), Precondition::IfNoneMatch)
                .await,
            Err(Error::Conflict { .. })
        ));
        assert!(matches!(
            s.put(
                "a/b.json",
                b"2".to_vec(),
                Precondition::IfMatch("nope".into())
            )
            .await,
            Err(Error::Conflict { .. })
        ));
        let e2 = s
            .put("a/b.json", b"2".to_vec(), Precondition::IfMatch(e1.clone()))
            .await
            .unwrap();
        assert_ne!(e1, e2);
        assert_eq!(s.get("a/b.json").await.unwrap().unwrap().bytes, b"2");
        assert!(matches!(
            s.put("a/b.json", b"3".to_vec(), Precondition::IfMatch(e1))
                .await,
            Err(Error::Conflict { .. })
        ));
        assert!(s.get("a/missing").await.unwrap().is_none());
        s.put("a/c/d.json", b"x".to_vec(), Precondition::None)
            .await
            .unwrap();
        s.put("ab.json", b"x".to_vec(), Precondition::None)
            .await
            .unwrap();
        assert_eq!(s.list("a/").await.unwrap(), vec!["a/b.json", "a/c/d.json"]);
        assert_eq!(
            s.list("a").await.unwrap(),
            vec!["a/b.json", "a/c/d.json", "ab.json"]
        );
        assert!(s.put("../x", vec![], Precondition::None).await.is_err());
        // no temp files left behind
        assert_eq!(fs::read_dir(dir.path().join("a")).unwrap().count(), 2);
        assert_eq!(fs::read_dir(dir.path().join(".tmp")).unwrap().count(), 0);
    }

    /// A process killed mid-write leaves its temp file; the next open removes it, and
    /// leaves the files of processes still running.
    #[test]
    fn temp_files_of_dead_processes_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        DirStore::open(dir.path()).unwrap();
        let tmp = dir.path().join(".tmp");
        let dead = tmp.join(".tmp-4194999-7");
        let mine = tmp.join(format!(".tmp-{}-7", std::process::id()));
        fs::write(&dead, "half a record").unwrap();
        fs::write(&mine, "a write in progress").unwrap();
        DirStore::open(dir.path()).unwrap();
        assert!(!dead.exists(), "a dead process's temp file is removed");
        assert!(mine.exists(), "a live process's temp file stays");
    }

    #[tokio::test]
    async fn concurrent_creators_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let s = DirStore::open(dir.path()).unwrap();
        let mut handles = vec![];
        for i in 0..8 {
            let s = s.clone();
            handles.push(tokio::task::spawn_blocking(move || {
                s.put_sync(
                    "claim.json",
                    format!("{i}").into_bytes(),
                    Precondition::IfNoneMatch,
                )
                .is_ok()
            }));
        }
        let mut wins = 0;
        for h in handles {
            if h.await.unwrap() {
                wins += 1;
            }
        }
        assert_eq!(wins, 1);
    }
}
