//! `DirStore`: the object store as a directory, with the same keys as S3 and atomic
//! conditional writes, laid out to keep months of runs on a small disk.
//!
//! - **A run's objects** (`runs/<app>/<run>/…` and `approvals/<app>/<run>/…`) live in one
//!   append-only segment file in the run's directory (`.segment`); so do a deployment's
//!   lease and live record (`deployments/<app>/<env>/{lease,current}.json`), and its deploy
//!   history, a segment a day (`deployments/<app>/<env>/history/<day>/…`). A write appends a
//!   record (name, value, CRC-32); the newest record of a name wins; values are deflated.
//!   Once the records appended since the last pack reach [`PACK_AFTER`] bytes, the live
//!   ones are packed into one deflated frame, written aside, made durable and renamed over
//!   the segment. A writer killed mid-append leaves a torn tail: it fails its checksum,
//!   readers stop before it and the next writer cuts it off.
//! - **Every other key** (holds, the run index, the registry) is a file of its own,
//!   written aside in `.tmp/`, synced, and linked (create) or renamed (replace) into
//!   place.
//! - **Group commit** for segments: a write returns once a sync of the store's filesystem
//!   (`syncfs`) that began after the write finished has returned; writes that finish
//!   together share one. Nothing is acknowledged before it is on disk.
//! - **Deferred** ([`DirStore::defer_syncs_to`], as `baton serve` and the CLI open a state
//!   directory): segment writes do not wait; the embedded bus's next append syncs the
//!   filesystem for both (a [`Durability`]), and so do [`DirStore::flush`] and the last
//!   handle going.
//! - Conditional writes run under one of [`LOCK_STRIPES`] lock files (by segment or key),
//!   so separate `baton` processes are safe too. File work runs on tokio's blocking pool,
//!   never on an async worker.
//! - Objects that earlier versions wrote one file per key are still read; a write of such
//!   a key moves it into the segment.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use sha2::{Digest, Sha256};

use crate::adapters::embedded::blocking;
use crate::error::{Error, Result};
use crate::ports::{Object, ObjectStore, Precondition, Put};

/// A directory-backed object store.
#[derive(Debug, Clone)]
pub struct DirStore {
    root: PathBuf,
    sync: Arc<GroupSync>,
    cache: Arc<SegmentCache>,
    /// The lock files, opened once each and kept: one per stripe, each behind a mutex
    /// (`flock` excludes other processes; threads of this one share the open file, so
    /// the mutex excludes them).
    locks: Arc<[Mutex<Option<File>>]>,
    /// Writes to segments do not sync themselves: the state directory's next
    /// [`Durability::sync`] (the embedded bus's appends) or [`DirStore::flush`] covers
    /// them. See [`DirStore::defer_syncs_to`].
    deferred: bool,
}

/// The durability point of a state directory whose store defers its syncs: one `syncfs`
/// of its filesystem, shared by every caller arriving together, makes everything the
/// store and the embedded bus wrote before the call durable.
#[derive(Debug, Clone)]
pub struct Durability(Arc<GroupSync>);

impl Durability {
    /// Returns once everything written to the filesystem before the call is on disk.
    pub fn sync(&self) -> Result<()> {
        #[cfg(target_os = "linux")]
        {
            self.0.group()
        }
        #[cfg(not(target_os = "linux"))]
        {
            Err(Error::permanent(
                "store",
                "a shared durability point needs syncfs (Linux)",
            ))
        }
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// How many parsed segments a store keeps in memory (the runs in flight, their
/// approvals and deployments), and in how many bytes at most: bounds, so memory does not
/// grow with history.
const CACHED_SEGMENTS: usize = 64;
const CACHED_BYTES: usize = 2 << 20;

/// What identifies a segment file's content: every write appends (its length and times
/// change) or packs (a new inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileId {
    fn of(m: &fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// Parsed segments by path, each checked against its file's [`FileId`] when read, so a
/// run's segment is not read and inflated again for each of its objects.
#[derive(Debug, Default)]
struct SegmentCache {
    kept: Mutex<Kept>,
    tick: AtomicU64,
}

#[derive(Debug, Default)]
struct Kept {
    /// By path: the file it was parsed from, the segment, its weight, and when it was
    /// last used.
    map: std::collections::HashMap<PathBuf, (FileId, Arc<Segment>, usize, u64)>,
    /// The weights of the segments in `map`, summed.
    total: usize,
}

impl Kept {
    fn remove(&mut self, path: &Path) {
        if let Some((_, _, weight, _)) = self.map.remove(path) {
            self.total = self.total.saturating_sub(weight);
        }
    }
}

impl Segment {
    /// About the memory a parsed segment holds.
    fn weight(&self) -> usize {
        self.names
            .iter()
            .map(|(n, v)| 64 + n.len() + v.as_ref().map_or(0, |v| v.len()))
            .sum()
    }
}

impl SegmentCache {
    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, path: &Path, id: FileId) -> Option<Arc<Segment>> {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        match self.kept().map.get_mut(path) {
            Some((cached, seg, _, used)) if *cached == id => {
                *used = tick;
                Some(seg.clone())
            }
            _ => None,
        }
    }

    fn put(&self, path: &Path, id: FileId, seg: Arc<Segment>) {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let weight = seg.weight();
        let mut kept = self.kept();
        kept.remove(path);
        if weight > CACHED_BYTES / 8 {
            return;
        }
        // The least recently used go first, until the new one fits both bounds.
        while !kept.map.is_empty()
            && (kept.map.len() >= CACHED_SEGMENTS
                || kept.total.saturating_add(weight) > CACHED_BYTES)
        {
            let Some(oldest) = kept
                .map
                .iter()
                .min_by_key(|(_, (_, _, _, used))| *used)
                .map(|(p, _)| p.clone())
            else {
                break;
            };
            kept.remove(&oldest);
        }
        kept.total = kept.total.saturating_add(weight);
        kept.map.insert(path.to_path_buf(), (id, seg, weight, tick));
    }

    fn forget(&self, path: &Path) {
        self.kept().remove(path);
    }
}

/// How many lock files a store has.
const LOCK_STRIPES: u16 = 128;

/// A stripe's lock, held: its mutex, and its file locked (unlocked when dropped).
struct Locked<'a>(std::sync::MutexGuard<'a, Option<File>>);

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.0.as_ref() {
            let _ = f.unlock();
        }
    }
}

/// The file of a segment, in the directory whose objects it holds.
const SEGMENT: &str = ".segment";
/// The first bytes of a segment file.
const MAGIC: &[u8; 8] = b"BTNSEG1\n";
/// Records appended since the last pack, in bytes, that make the next write pack the
/// segment. `baton serve` packs a run's segments once it is quiet ([`ObjectStore::compact`]), so
/// in flight a run only appends.
pub const PACK_AFTER: usize = 64 * 1024;
/// Values longer than this are deflated in their record. Most of a run's values (stage
/// records, events: 0.5–3 KiB of JSON) are not: deflating each on its own cost more CPU
/// than it saved, and the pack that ends a run deflates them all together.
const DEFLATE_OVER: usize = 4096;
/// The largest value or pack a segment may inflate to.
const INFLATE_LIMIT: usize = 256 << 20;

/// Record kinds (the first byte of a record's body).
const PUT: u8 = 1;
const PUT_DEFLATED: u8 = 2;
const DELETE: u8 = 3;
const PACK: u8 = 4;

fn etag_of(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..16])
}

/// Where a key is kept: in the segment of the directory `dir` (a key prefix ending in
/// `/`: a run's, its approvals', a deployment's, or a day of a deployment's history)
/// under `name`, or (`None`) in a file of its own.
fn segment_of(key: &str) -> Option<(&str, &str)> {
    let top = key.split('/').next()?;
    // How many `/` the segment's directory has.
    let depth = match top {
        "runs" => 3,
        "approvals" if !key.starts_with("approvals/_open/") => 3,
        "deployments" => {
            // `deployments/<app>/<env>/<name>`: the lease and the live record;
            // `deployments/<app>/<env>/history/<day>/<name>`: a day's deploys. A history
            // entry right under `history/` was written one file each by an earlier version.
            let rest = key.splitn(4, '/').nth(3)?;
            match rest.matches('/').count() {
                0 => 3,
                2 if rest.starts_with("history/") => 5,
                _ => return None,
            }
        }
        _ => return None,
    };
    let (i, _) = key.match_indices('/').nth(depth - 1)?;
    let name = &key[i + 1..];
    (!name.is_empty()).then(|| (&key[..=i], name))
}

/// Whether the segment directory `dir` is a day of a deployment's history.
fn is_history_day(dir: &str) -> bool {
    dir.starts_with("deployments/") && dir.matches('/').count() == 5
}

/// A segment read: the newest record of each name (`None`: deleted).
#[derive(Debug, Default, Clone)]
struct Segment {
    /// Values shared, so a write's copy of the segment copies no value.
    names: BTreeMap<String, Option<Arc<[u8]>>>,
    /// Bytes of the file up to the end of its last whole record.
    valid: u64,
    /// Bytes of the records appended since the last pack.
    loose: usize,
}

impl Segment {
    /// Parses a segment file's bytes; a torn tail (a short or failing record) ends it.
    fn parse(bytes: &[u8], path: &Path) -> Result<Segment> {
        let mut seg = Segment::default();
        if bytes.len() < MAGIC.len() {
            // Empty, or a header cut short by a crash: nothing was written after it.
            if MAGIC.starts_with(bytes) {
                return Ok(seg);
            }
            return Err(corrupt(path, "it does not start as a segment"));
        }
        if &bytes[..MAGIC.len()] != MAGIC {
            return Err(corrupt(path, "it does not start as a segment"));
        }
        let mut at = MAGIC.len();
        while let Some((body, next)) = frame_at(bytes, at) {
            if body.first() == Some(&PACK) {
                let inner =
                    miniz_oxide::inflate::decompress_to_vec_with_limit(&body[1..], INFLATE_LIMIT)
                        .map_err(|e| corrupt(path, &format!("a pack does not inflate: {e:?}")))?;
                let mut i = 0;
                while i < inner.len() {
                    let (body, next) = frame_at(&inner, i)
                        .ok_or_else(|| corrupt(path, "a pack holds a broken record"))?;
                    seg.apply(body, path)?;
                    i = next;
                }
                seg.loose = 0;
            } else {
                seg.apply(body, path)?;
                seg.loose = seg.loose.saturating_add(next - at);
            }
            at = next;
        }
        seg.valid = at as u64;
        Ok(seg)
    }

    fn apply(&mut self, body: &[u8], path: &Path) -> Result<()> {
        let (&kind, rest) = body
            .split_first()
            .ok_or_else(|| corrupt(path, "an empty record"))?;
        let (name, value) = split_name(rest).ok_or_else(|| corrupt(path, "a record's name"))?;
        let value = match kind {
            PUT => Some(Arc::from(value)),
            PUT_DEFLATED => Some(Arc::from(
                miniz_oxide::inflate::decompress_to_vec_with_limit(value, INFLATE_LIMIT)
                    .map_err(|e| corrupt(path, &format!("a value does not inflate: {e:?}")))?,
            )),
            DELETE => None,
            other => return Err(corrupt(path, &format!("unknown record kind {other}"))),
        };
        self.names.insert(name.to_string(), value);
        Ok(())
    }

    /// The segment's file with only its live objects, in one pack.
    fn packed(&self) -> Result<Vec<u8>> {
        let mut inner = vec![];
        for (name, value) in &self.names {
            if let Some(value) = value {
                push_frame(&mut inner, PUT, name, value)?;
            }
        }
        let mut body = vec![PACK];
        body.extend(miniz_oxide::deflate::compress_to_vec(&inner, 6));
        let mut out = MAGIC.to_vec();
        push_body(&mut out, &body)?;
        Ok(out)
    }
}

fn corrupt(path: &Path, what: &str) -> Error {
    Error::permanent(
        "store",
        format!(
            "{} is damaged: {what}; restore it from a backup or remove the run's directory",
            path.display()
        ),
    )
}

/// The body of the record at `at` and where the next one starts; `None` at the end or
/// at a torn record.
fn frame_at(bytes: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let head = bytes.get(at..at.checked_add(8)?)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let start = at + 8;
    let end = start.checked_add(len)?;
    let body = bytes.get(start..end)?;
    (crc32fast::hash(body) == crc).then_some((body, end))
}

fn split_name(rest: &[u8]) -> Option<(&str, &[u8])> {
    let n = u16::from_le_bytes([*rest.first()?, *rest.get(1)?]) as usize;
    let name = std::str::from_utf8(rest.get(2..2 + n)?).ok()?;
    Some((name, &rest[2 + n..]))
}

fn push_body(out: &mut Vec<u8>, body: &[u8]) -> Result<()> {
    let len = u32::try_from(body.len())
        .map_err(|_| Error::invalid("store object", "larger than 4 GiB"))?;
    out.extend(len.to_le_bytes());
    out.extend(crc32fast::hash(body).to_le_bytes());
    out.extend(body);
    Ok(())
}

fn push_frame(out: &mut Vec<u8>, kind: u8, name: &str, value: &[u8]) -> Result<()> {
    let n = u16::try_from(name.len())
        .map_err(|_| Error::invalid("store key", format!("{name:?} is too long")))?;
    let mut body = Vec::with_capacity(3 + name.len() + value.len());
    body.push(kind);
    body.extend(n.to_le_bytes());
    body.extend(name.as_bytes());
    body.extend(value);
    push_body(out, &body)
}

/// One record setting `name` to `value` (deflated when that is shorter), or deleting it.
fn record(name: &str, value: Option<&[u8]>) -> Result<Vec<u8>> {
    let mut out = vec![];
    match value {
        None => push_frame(&mut out, DELETE, name, &[])?,
        Some(v) if v.len() > DEFLATE_OVER => {
            let small = miniz_oxide::deflate::compress_to_vec(v, 1);
            if small.len() < v.len() {
                push_frame(&mut out, PUT_DEFLATED, name, &small)?;
            } else {
                push_frame(&mut out, PUT, name, v)?;
            }
        }
        Some(v) => push_frame(&mut out, PUT, name, v)?,
    }
    Ok(out)
}

/// Group commit: [`GroupSync::durable`] returns once everything written before it was
/// called is on disk; callers that arrive while a sync runs share the next one.
#[derive(Debug)]
struct GroupSync {
    /// The store's root directory, for `syncfs`.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    root: File,
    state: Mutex<SyncState>,
    done: Condvar,
    syncs: AtomicU64,
}

#[derive(Debug, Default)]
struct SyncState {
    /// Tickets handed out (one per caller).
    issued: u64,
    /// Every ticket up to this one is durable.
    durable: u64,
    /// A sync is running.
    leading: bool,
}

impl Drop for GroupSync {
    /// Deferred writes not yet covered by a sync are made durable when the last handle
    /// goes (a `baton` command ending).
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        {
            let pending = {
                let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                st.durable < st.issued
            };
            if pending && let Err(e) = self.group() {
                tracing::error!(error = %e, "could not make the last writes to the state directory durable");
            }
        }
    }
}

impl GroupSync {
    fn new(root: &Path) -> Result<GroupSync> {
        Ok(GroupSync {
            root: File::open(root).map_err(|e| Error::io("open", root, e))?,
            state: Mutex::new(SyncState::default()),
            done: Condvar::new(),
            syncs: AtomicU64::new(0),
        })
    }

    /// Makes `paths` (what this caller wrote) durable: on Linux by one `syncfs` of the
    /// store's filesystem shared with every caller waiting at the same time; elsewhere by
    /// syncing each path.
    fn durable(&self, paths: &[&Path]) -> Result<()> {
        #[cfg(target_os = "linux")]
        {
            let _ = paths;
            self.group()
        }
        #[cfg(not(target_os = "linux"))]
        {
            for p in paths {
                File::open(p)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| Error::io("sync", p, e))?;
                self.syncs.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }
    }

    /// A deferred write finished: the next sync covers it.
    fn written(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.issued += 1;
    }

    /// Makes the deferred writes durable (nothing to do when a sync since covered them).
    #[cfg(target_os = "linux")]
    fn flush(&self) -> Result<()> {
        {
            let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.durable >= st.issued {
                return Ok(());
            }
        }
        self.group()
    }

    #[cfg(target_os = "linux")]
    fn group(&self) -> Result<()> {
        use std::os::fd::AsRawFd;
        let lock = || self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = lock();
        st.issued += 1;
        let ticket = st.issued;
        loop {
            if st.durable >= ticket {
                return Ok(());
            }
            if !st.leading {
                st.leading = true;
                let upto = st.issued;
                drop(st);
                // SAFETY: `syncfs` only reads the descriptor, which `self.root` keeps open.
                let rc = unsafe { libc::syncfs(self.root.as_raw_fd()) };
                let err = (rc != 0).then(std::io::Error::last_os_error);
                self.syncs.fetch_add(1, Ordering::Relaxed);
                st = lock();
                st.leading = false;
                if err.is_none() {
                    st.durable = st.durable.max(upto);
                }
                self.done.notify_all();
                if let Some(e) = err {
                    // Those waiting try again themselves; this caller reports it.
                    return Err(Error::io("sync", Path::new("the state directory"), e));
                }
                continue;
            }
            st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl DirStore {
    /// Opens (and creates) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<DirStore> {
        let root = root.into();
        let locks = root.join(".locks");
        fs::create_dir_all(&locks).map_err(|e| Error::io("create store", &root, e))?;
        let tmp = root.join(".tmp");
        fs::create_dir_all(&tmp).map_err(|e| Error::io("create store", &root, e))?;
        // Files are written in `.tmp/` and linked or renamed into place; a process killed
        // mid-write leaves its file there. Those of processes that are gone are removed
        // (a live process's are its writes in progress).
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
        let sync = Arc::new(GroupSync::new(&root)?);
        Ok(DirStore {
            root,
            sync,
            cache: Arc::default(),
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(None)).collect(),
            deferred: false,
        })
    }

    /// Stops segment writes from syncing themselves, when `other` (the embedded bus's
    /// directory) is on the store's filesystem: the [`Durability`] returned is then the
    /// one sync both use, and a write is durable at the next [`Durability::sync`] or
    /// [`DirStore::flush`], or when the last handle goes. `None` (nothing changed) where
    /// they are apart, or without `syncfs` (Linux only).
    ///
    /// Whoever acknowledges work must sync first: the bus before a delivery's outcome or a
    /// publish, `baton serve` before answering a request that wrote.
    pub fn defer_syncs_to(&mut self, other: &Path) -> Option<Durability> {
        if !cfg!(target_os = "linux") {
            return None;
        }
        use std::os::unix::fs::MetadataExt;
        let dev = |p: &Path| fs::metadata(p).map(|m| m.dev()).ok();
        let (Some(mine), Some(theirs)) = (dev(&self.root), dev(other)) else {
            return None;
        };
        if mine != theirs {
            tracing::info!(
                store = %self.root.display(),
                other = %other.display(),
                "the store and the bus are on different filesystems: each write syncs on its own"
            );
            return None;
        }
        self.deferred = true;
        Some(Durability(self.sync.clone()))
    }

    /// Makes every deferred write durable (one shared `syncfs`; nothing to do when none is
    /// pending or the store does not defer).
    pub async fn flush(&self) -> Result<()> {
        if !self.deferred {
            return Ok(());
        }
        self.blocking(|s| {
            #[cfg(target_os = "linux")]
            {
                s.sync.flush()
            }
            #[cfg(not(target_os = "linux"))]
            {
                let _ = s;
                Ok(())
            }
        })
        .await
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many syncs this handle (and its clones) made.
    pub fn syncs(&self) -> u64 {
        self.sync.syncs.load(Ordering::Relaxed)
    }

    /// The file behind a key kept in a file of its own (keys are `/`-separated relative
    /// paths; no part may be empty or start with `.`).
    pub fn path_of(&self, key: &str) -> Result<PathBuf> {
        if key.is_empty()
            || key.starts_with('/')
            || key.split('/').any(|s| s.is_empty() || s.starts_with('.'))
        {
            return Err(Error::invalid(
                "store key",
                format!("{key:?} is not a valid key"),
            ));
        }
        Ok(self.root.join(key))
    }

    /// Writes `bytes` to a new file in `.tmp/` (the object's directory is created for the
    /// link or rename that follows).
    fn write_temp(&self, dir: &Path, bytes: &[u8]) -> Result<PathBuf> {
        fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join(".tmp")
            .join(format!(".tmp-{}-{n}", std::process::id()));
        let mut f = File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        if let Err(e) = f.write_all(bytes) {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io("write", &tmp, e));
        }
        Ok(tmp)
    }

    /// The lock of a key or segment: one of [`LOCK_STRIPES`] files, so the locks stay a
    /// fixed handful of files whatever the number of keys (keys sharing a stripe wait for
    /// each other's write, a few microseconds).
    fn lock(&self, key: &str) -> Result<Locked<'_>> {
        let hash = Sha256::digest(key.as_bytes());
        let stripe = u16::from_be_bytes([hash[0], hash[1]]) % LOCK_STRIPES;
        let path = || self.root.join(".locks").join(format!("{stripe:03}"));
        let mut held = self.locks[usize::from(stripe)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let file = match held.take() {
            Some(f) => f,
            None => OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path())
                .map_err(|e| Error::io("open lock", &path(), e))?,
        };
        file.lock().map_err(|e| Error::io("lock", &path(), e))?;
        *held = Some(file);
        Ok(Locked(held))
    }

    /// The segment file of the run directory `dir` (a key prefix ending in `/`).
    fn segment_path(&self, dir: &str) -> PathBuf {
        self.root.join(dir).join(SEGMENT)
    }

    /// A segment, parsed (from the cache while its file is unchanged).
    fn read_segment(&self, path: &Path) -> Result<Arc<Segment>> {
        self.read_segment_kept(path, true)
    }

    /// A segment, parsed (from the cache while its file is unchanged); a segment read
    /// from its file is kept in the cache when `keep`.
    fn read_segment_kept(&self, path: &Path, keep: bool) -> Result<Arc<Segment>> {
        let id = match fs::metadata(path) {
            Ok(m) => FileId::of(&m),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Arc::default()),
            Err(e) => return Err(Error::io("stat", path, e)),
        };
        if let Some(seg) = self.cache.get(path, id) {
            return Ok(seg);
        }
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Arc::default()),
            Err(e) => return Err(Error::io("read", path, e)),
        };
        let seg = Arc::new(Segment::parse(&bytes, path)?);
        // Appended to between the stat and the read: parsed, but not kept under `id`.
        if keep && bytes.len() as u64 == id.len {
            self.cache.put(path, id, seg.clone());
        }
        Ok(seg)
    }

    /// Keeps what a write just made of a segment (its lock still held).
    fn remember(&self, path: &Path, seg: Segment) {
        match fs::metadata(path) {
            Ok(m) if m.len() == seg.valid => self.cache.put(path, FileId::of(&m), Arc::new(seg)),
            _ => self.cache.forget(path),
        }
    }

    fn read_file(path: &Path) -> Result<Option<Vec<u8>>> {
        match fs::read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", path, e)),
        }
    }

    fn get_sync(&self, key: &str) -> Result<Option<Object>> {
        let path = self.path_of(key)?;
        let bytes = match segment_of(key) {
            Some((dir, name)) => {
                match self.read_segment(&self.segment_path(dir))?.names.get(name) {
                    Some(value) => value.as_deref().map(<[u8]>::to_vec),
                    // Written one file per key by an earlier version.
                    None => Self::read_file(&path)?,
                }
            }
            None => Self::read_file(&path)?,
        };
        Ok(bytes.map(|bytes| Object {
            etag: etag_of(&bytes),
            bytes,
        }))
    }

    fn check(key: &str, cond: &Precondition, current: Option<&[u8]>) -> Result<()> {
        let ok = match cond {
            Precondition::None => true,
            Precondition::IfNoneMatch => current.is_none(),
            Precondition::IfMatch(expected) => current.is_some_and(|c| etag_of(c) == *expected),
        };
        if ok {
            Ok(())
        } else {
            Err(Error::Conflict { key: key.into() })
        }
    }

    fn put_sync(&self, key: &str, bytes: Vec<u8>, cond: Precondition) -> Result<String> {
        let path = self.path_of(key)?;
        let etag = etag_of(&bytes);
        match segment_of(key) {
            Some((dir, name)) => {
                self.write_segment(key, dir, name, Some(&bytes), &cond, &path)?;
            }
            None => self.put_file(key, &path, &bytes, cond)?,
        }
        Ok(etag)
    }

    /// Sets (or, with `None`, deletes) `name` in the segment of `dir` when `cond` holds;
    /// durable when it returns. `legacy` is the key's file of its own, read when the
    /// segment has no record of it and removed by a delete.
    fn write_segment(
        &self,
        key: &str,
        dir: &str,
        name: &str,
        value: Option<&[u8]>,
        cond: &Precondition,
        legacy: &Path,
    ) -> Result<()> {
        let path = self.segment_path(dir);
        let guard = self.lock(dir)?;
        // A day of deploy history is written once a deploy and read by few (a rollback, an
        // environment's page): it does not take the place of the segments of runs in
        // flight in the cache.
        let keep = !is_history_day(dir);
        let seg = self.read_segment_kept(&path, keep)?;
        let current = match seg.names.get(name) {
            Some(v) => v.clone(),
            None => Self::read_file(legacy)?.map(Arc::from),
        };
        Self::check(key, cond, current.as_deref())?;
        if value.is_none() && current.is_none() {
            return Ok(());
        }
        let rec = record(name, value)?;
        let parent = path.parent().unwrap_or(&self.root).to_path_buf();
        // A segment read whole has its directory already (no `mkdir` per write).
        if seg.valid == 0 {
            fs::create_dir_all(&parent).map_err(|e| Error::io("create", &parent, e))?;
        }
        if seg.loose.saturating_add(rec.len()) >= PACK_AFTER {
            // Pack: the live objects in one deflated frame, written aside, made durable,
            // then renamed over the segment (a reader holds the old file or the new).
            let mut next = Segment::clone(&seg);
            next.names.insert(name.to_string(), value.map(Arc::from));
            let packed = next.packed()?;
            let tmp = self.write_temp(&parent, &packed)?;
            let moved = self
                .sync
                .durable(&[&tmp])
                .and_then(|()| fs::rename(&tmp, &path).map_err(|e| Error::io("pack", &path, e)));
            if moved.is_err() {
                let _ = fs::remove_file(&tmp);
                self.cache.forget(&path);
            }
            moved?;
            // As a read of the packed file would make it: the live objects only.
            next.names.retain(|_, v| v.is_some());
            next.valid = packed.len() as u64;
            next.loose = 0;
            if keep {
                self.remember(&path, next);
            } else {
                self.cache.forget(&path);
            }
        } else {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| Error::io("open", &path, e))?;
            let len = f.metadata().map_err(|e| Error::io("stat", &path, e))?.len();
            let mut out = Vec::with_capacity(MAGIC.len() + rec.len());
            if seg.valid == 0 {
                out.extend(MAGIC);
            }
            out.extend(&rec);
            // A torn tail (a writer killed mid-append) is cut off before appending.
            let appended = (if len != seg.valid {
                f.set_len(seg.valid)
            } else {
                Ok(())
            })
            .and_then(|()| f.write_all(&out));
            if let Err(e) = appended {
                // Leave no half record behind (a reader would stop at it anyway).
                let _ = f.set_len(seg.valid);
                self.cache.forget(&path);
                return Err(Error::io("append", &path, e));
            }
            let mut next = Segment::clone(&seg);
            next.names.insert(name.to_string(), value.map(Arc::from));
            next.valid = seg.valid.saturating_add(out.len() as u64);
            next.loose = seg.loose.saturating_add(rec.len());
            // What the file is now, from the open file (no second lookup of its path).
            match f.metadata() {
                Ok(m) if keep && m.len() == next.valid => {
                    self.cache.put(&path, FileId::of(&m), Arc::new(next));
                }
                _ => self.cache.forget(&path),
            }
        }
        if value.is_none() {
            match fs::remove_file(legacy) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", legacy, e)),
            }
        }
        drop(guard);
        if self.deferred {
            self.sync.written();
            return Ok(());
        }
        self.sync.durable(&[&path, &parent])
    }

    /// Packs the segments of `dirs` that hold records appended since their last pack:
    /// each written aside under its lock, all made durable by one sync, then each renamed
    /// over its segment under its lock again, unless the segment changed in between
    /// (its pack is then dropped: a later call, or the write that reaches
    /// [`PACK_AFTER`], packs it).
    fn pack_all(&self, dirs: &[String]) -> Result<()> {
        let mut aside = vec![];
        let result = (|| {
            for dir in dirs {
                if segment_of(&format!("{dir}x")).is_none_or(|(d, _)| d != dir) {
                    continue;
                }
                let path = self.segment_path(dir);
                let _guard = self.lock(dir)?;
                let seg = self.read_segment(&path)?;
                if seg.loose == 0 {
                    continue;
                }
                let id = match fs::metadata(&path) {
                    Ok(m) if m.len() == seg.valid => FileId::of(&m),
                    // Cut short (a torn tail the next write cuts) or gone: left alone.
                    _ => continue,
                };
                let packed = seg.packed()?;
                let parent = path.parent().unwrap_or(&self.root).to_path_buf();
                let tmp = self.write_temp(&parent, &packed)?;
                let mut next = Segment::clone(&seg);
                next.names.retain(|_, v| v.is_some());
                next.valid = packed.len() as u64;
                next.loose = 0;
                aside.push((dir.as_str(), path, id, tmp, next));
            }
            if aside.is_empty() {
                return Ok(());
            }
            let tmps: Vec<&Path> = aside.iter().map(|a| a.3.as_path()).collect();
            self.sync.durable(&tmps)?;
            for (dir, path, id, tmp, next) in aside.drain(..) {
                let _guard = self.lock(dir)?;
                let unchanged = fs::metadata(&path).is_ok_and(|m| FileId::of(&m) == id);
                if !unchanged {
                    let _ = fs::remove_file(&tmp);
                    continue;
                }
                if let Err(e) = fs::rename(&tmp, &path) {
                    let _ = fs::remove_file(&tmp);
                    self.cache.forget(&path);
                    return Err(Error::io("pack", &path, e));
                }
                self.remember(&path, next);
            }
            Ok(())
        })();
        for (_, _, _, tmp, _) in aside {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// [`ObjectStore::stamp`]: the segments' inode, length and modification time, from
    /// their [`FileId`]s: every write appends to a segment (its length and mtime change)
    /// or packs it (a new inode). Not the ctime, which a link or a `chmod` changes without
    /// changing the content.
    fn stamp_sync(&self, dirs: &[String]) -> Result<Option<crate::ports::Stamp>> {
        let mut token = String::new();
        let mut changed: Option<chrono::DateTime<chrono::Utc>> = None;
        for dir in dirs {
            if segment_of(&format!("{dir}x")).is_none_or(|(d, _)| d != dir) {
                return Ok(None);
            }
            let path = self.segment_path(dir);
            match fs::metadata(&path) {
                Ok(m) => {
                    let id = FileId::of(&m);
                    token.push_str(&format!(
                        "{:x}.{:x}.{:x}.{:x};",
                        id.ino, id.len, id.mtime.0, id.mtime.1
                    ));
                    if let Ok(t) = m.modified() {
                        let t = chrono::DateTime::<chrono::Utc>::from(t);
                        changed = Some(changed.map_or(t, |c| c.max(t)));
                    }
                }
                Err(e) if e.kind() == ErrorKind::NotFound => token.push_str("-;"),
                Err(e) => return Err(Error::io("stat", &path, e)),
            }
        }
        Ok(Some(crate::ports::Stamp { token, changed }))
    }

    /// Makes a file in `.tmp/` durable before it is linked or renamed into place: one
    /// `fdatasync`, or the shared sync where writes are deferred.
    fn sync_temp(&self, tmp: &Path) -> Result<()> {
        #[cfg(target_os = "linux")]
        if self.deferred {
            return self.sync.group();
        }
        File::open(tmp)
            .and_then(|f| f.sync_data())
            .map_err(|e| Error::io("sync", tmp, e))?;
        self.sync.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Writes a key kept in a file of its own: the bytes in `.tmp/`, synced before they
    /// are linked or renamed into place (so the name never points at unwritten bytes).
    fn put_file(&self, key: &str, path: &Path, bytes: &[u8], cond: Precondition) -> Result<()> {
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        // A create over an existing object fails without writing (the link below still
        // decides a race).
        if matches!(cond, Precondition::IfNoneMatch) && path.exists() {
            return Err(Error::Conflict { key: key.into() });
        }
        let tmp = self.write_temp(&dir, bytes)?;
        let result = self
            .sync_temp(&tmp)
            .and_then(|()| self.place(key, path, &tmp, &cond));
        let _ = fs::remove_file(&tmp);
        result
    }

    /// Links or renames `tmp`, a file in `.tmp/` already durable, to `path` when `cond`
    /// holds for `key` (the link decides a race between creators).
    fn place(&self, key: &str, path: &Path, tmp: &Path, cond: &Precondition) -> Result<()> {
        let result = match cond {
            Precondition::IfNoneMatch => match fs::hard_link(tmp, path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    Err(Error::Conflict { key: key.into() })
                }
                Err(e) => Err(Error::io("create", path, e)),
            },
            Precondition::None => fs::rename(tmp, path).map_err(|e| Error::io("replace", path, e)),
            Precondition::IfMatch(_) => {
                let _guard = self.lock(key)?;
                Self::check(key, cond, Self::read_file(path)?.as_deref())?;
                fs::rename(tmp, path).map_err(|e| Error::io("replace", path, e))
            }
        };
        if result.is_ok() && self.deferred {
            // The new name is durable at the next sync.
            self.sync.written();
        }
        result
    }

    /// [`ObjectStore::put_many`]: the objects kept in files of their own are written
    /// aside, made durable by one sync, then each put in place under its precondition;
    /// objects kept in segments are written one by one (an append each).
    fn put_many_sync(&self, writes: Vec<Put>) -> Result<Vec<Result<String>>> {
        let mut out: Vec<Option<Result<String>>> = (0..writes.len()).map(|_| None).collect();
        // (position, key, path, temp file, precondition, etag)
        let mut aside = vec![];
        let result = (|| {
            for (i, Put { key, bytes, cond }) in writes.into_iter().enumerate() {
                let path = match self.path_of(&key) {
                    Ok(p) => p,
                    Err(e) => {
                        out[i] = Some(Err(e));
                        continue;
                    }
                };
                if segment_of(&key).is_some() {
                    out[i] = Some(self.put_sync(&key, bytes, cond));
                    continue;
                }
                if matches!(cond, Precondition::IfNoneMatch) && path.exists() {
                    out[i] = Some(Err(Error::Conflict { key }));
                    continue;
                }
                let dir = path.parent().unwrap_or(&self.root).to_path_buf();
                let tmp = self.write_temp(&dir, &bytes)?;
                aside.push((i, key, path, tmp, cond, etag_of(&bytes)));
            }
            if aside.is_empty() {
                return Ok(());
            }
            let tmps: Vec<&Path> = aside.iter().map(|a| a.3.as_path()).collect();
            self.sync.durable(&tmps)?;
            for (i, key, path, tmp, cond, etag) in aside.drain(..) {
                out[i] = Some(self.place(&key, &path, &tmp, &cond).map(|()| etag));
                let _ = fs::remove_file(&tmp);
            }
            Ok(())
        })();
        for a in aside {
            let _ = fs::remove_file(&a.3);
        }
        result?;
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::invalid("store write", "not attempted"))))
            .collect())
    }

    /// The keys under `prefix`, with their bytes when `values`: every directory that can
    /// hold such a key is read, its segment and its files.
    fn scan(&self, prefix: &str, values: bool) -> Result<BTreeMap<String, Option<Vec<u8>>>> {
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
        let mut found = BTreeMap::new();
        let mut deleted = BTreeSet::new();
        let mut read_segment = |dir_key: &str, path: &Path| -> Result<()> {
            for (n, v) in &self.read_segment(path)?.names {
                let full = format!("{dir_key}{n}");
                if !full.starts_with(prefix) {
                    continue;
                }
                match v {
                    Some(v) => {
                        found.insert(full, values.then(|| v.to_vec()));
                    }
                    None => {
                        deleted.insert(full);
                    }
                }
            }
            Ok(())
        };
        // A prefix inside a run's directory: the walk starts below the run's segment.
        let inside = segment_of(prefix).map(|(dir, _)| dir);
        if let Some(dir) = inside {
            read_segment(dir, &self.segment_path(dir))?;
        }
        let mut files = vec![];
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            // The key of this directory, ending in `/` (empty for the root): an entry's
            // key is it and the entry's name.
            let dir_key = match dir.strip_prefix(&self.root) {
                Ok(rel) if rel.as_os_str().is_empty() => String::new(),
                Ok(rel) => format!("{}/", rel.to_string_lossy().replace('\\', "/")),
                Err(_) => continue,
            };
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e)
                    if e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::NotADirectory =>
                {
                    continue;
                }
                Err(e) => return Err(Error::io("list", &dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name == SEGMENT {
                    if inside != Some(dir_key.as_str()) {
                        read_segment(&dir_key, &entry.path())?;
                    }
                    continue;
                }
                if name.starts_with('.') {
                    continue;
                }
                let key = format!("{dir_key}{name}");
                // Neither a key with the prefix nor a directory that can hold one (a
                // listing of `index/runs/<day>/<ms>` reads only the names it needs).
                if !key.starts_with(prefix) && !prefix.starts_with(&key) {
                    continue;
                }
                let path = entry.path();
                let ft = entry.file_type().map_err(|e| Error::io("stat", &path, e))?;
                if ft.is_dir() {
                    // Only directories that can hold keys with the prefix: a listing of
                    // `runs/web/ab12` reads `runs/web` and the runs starting `ab12`.
                    let dir = format!("{key}/");
                    if dir.starts_with(prefix) || prefix.starts_with(&dir) {
                        stack.push(path);
                    }
                } else if key.starts_with(prefix) {
                    files.push((key, path));
                }
            }
        }
        // Files of their own written by earlier versions, unless a segment has the key.
        for (key, path) in files {
            if found.contains_key(&key) || deleted.contains(&key) {
                continue;
            }
            if values {
                if let Some(bytes) = Self::read_file(&path)? {
                    found.insert(key, Some(bytes));
                }
            } else {
                found.insert(key, None);
            }
        }
        Ok(found)
    }
}

impl DirStore {
    /// Runs `f` on a copy of this handle where it may block (see [`blocking`]).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(DirStore) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.clone();
        blocking::run("store", move || f(store)).await
    }

    /// Removes one object (absent is fine).
    pub async fn remove(&self, key: &str) -> Result<()> {
        let key = key.to_string();
        self.blocking(move |s| {
            let path = s.path_of(&key)?;
            match segment_of(&key) {
                Some((dir, name)) => {
                    s.write_segment(&key, dir, name, None, &Precondition::None, &path)
                }
                None => match fs::remove_file(&path) {
                    Ok(()) => {
                        if s.deferred {
                            s.sync.written();
                        }
                        Ok(())
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(Error::io("remove", &path, e)),
                },
            }
        })
        .await
    }

    /// Removes every object under `prefix` (a key prefix ending in `/`: a run's
    /// directory, its segment and any files); the bytes freed. Nothing under it may be
    /// written meanwhile (retention removes only finished runs).
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

    async fn put_many(&self, writes: Vec<Put>) -> Result<Vec<Result<String>>> {
        self.blocking(move |s| s.put_many_sync(writes)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix = prefix.to_string();
        self.blocking(move |s| Ok(s.scan(&prefix, false)?.into_keys().collect()))
            .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        DirStore::remove(self, key).await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        DirStore::remove_prefix(self, prefix).await
    }

    /// See [`DirStore::stamp_sync`].
    async fn stamp(&self, dirs: &[String]) -> Result<Option<crate::ports::Stamp>> {
        let dirs = dirs.to_vec();
        self.blocking(move |s| s.stamp_sync(&dirs)).await
    }

    async fn stamps(&self, sets: &[Vec<String>]) -> Result<Vec<Option<crate::ports::Stamp>>> {
        let sets = sets.to_vec();
        self.blocking(move |s| sets.iter().map(|dirs| s.stamp_sync(dirs)).collect())
            .await
    }

    /// One trip to the blocking pool.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Object>>> {
        let keys = keys.to_vec();
        self.blocking(move |s| keys.iter().map(|key| s.get_sync(key)).collect())
            .await
    }

    async fn compact(&self, dirs: &[String]) -> Result<()> {
        let dirs = dirs.to_vec();
        self.blocking(move |s| s.pack_all(&dirs)).await
    }

    /// One trip to the blocking pool, and one read of a run's segment.
    async fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, Object)>> {
        let prefix = prefix.to_string();
        self.blocking(move |s| {
            Ok(s.scan(&prefix, true)?
                .into_iter()
                .filter_map(|(key, bytes)| {
                    bytes.map(|bytes| {
                        let etag = etag_of(&bytes);
                        (key, Object { bytes, etag })
                    })
                })
                .collect())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_under(dir: &Path) -> Vec<String> {
        let mut out = vec![];
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    /// `compact` packs a segment with records since its last pack into one record of its
    /// live objects (what reads give is unchanged, a deleted object stays deleted, and
    /// another store handle reads the packed file), leaves a packed segment as it is, and
    /// ignores directories that have no segment.
    #[tokio::test]
    async fn compact_packs_the_segments_that_have_loose_records() {
        let dir = tempfile::tempdir().unwrap();
        let s = DirStore::open(dir.path()).unwrap();
        let run = "runs/web/0123456789abcdef/";
        let long = "x".repeat(2_000);
        for i in 0..5 {
            s.put(
                &format!("{run}stages/test.json"),
                format!("{{\"n\":{i},\"pad\":\"{long}\"}}").into_bytes(),
                Precondition::None,
            )
            .await
            .unwrap();
        }
        s.put(
            &format!("{run}gone.json"),
            b"1".to_vec(),
            Precondition::None,
        )
        .await
        .unwrap();
        s.remove(&format!("{run}gone.json")).await.unwrap();
        let seg = dir.path().join(run).join(SEGMENT);
        let before = fs::metadata(&seg).unwrap();
        let dirs = vec![run.to_string(), "approvals/web/0123456789abcdef/".into()];
        s.compact(&dirs).await.unwrap();
        let after = fs::metadata(&seg).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_ne!(
            before.ino(),
            after.ino(),
            "the segment was packed (a new file)"
        );
        assert!(
            after.len() < before.len() / 2,
            "{} -> {}",
            before.len(),
            after.len()
        );
        let check = |s: DirStore| {
            let (run, long) = (run.to_string(), long.clone());
            async move {
                let got = s
                    .get(&format!("{run}stages/test.json"))
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(
                    got.bytes,
                    format!("{{\"n\":4,\"pad\":\"{long}\"}}").into_bytes()
                );
                assert!(s.get(&format!("{run}gone.json")).await.unwrap().is_none());
                assert_eq!(
                    s.list(&run).await.unwrap(),
                    vec![format!("{run}stages/test.json")]
                );
            }
        };
        check(s.clone()).await;
        check(DirStore::open(dir.path()).unwrap()).await;
        // Packed already: nothing to do.
        s.compact(&dirs).await.unwrap();
        assert_eq!(fs::metadata(&seg).unwrap().ino(), after.ino());
        assert!(!dir.path().join("approvals").exists());
        let tmp = dir.path().join(".tmp");
        assert!(!tmp.exists() || files_under(&tmp).is_empty());
    }

    /// The same conditional writes hold for keys kept in files of their own and for keys
    /// kept in a run's segment.
    #[tokio::test]
    async fn conditional_writes() {
        for base in ["a", "runs/app/0123456789abcdef"] {
            let dir = tempfile::tempdir().unwrap();
            let s = DirStore::open(dir.path()).unwrap();
            let b = format!("{base}/b.json");
            let e1 = s
                .put(&b, b"1".to_vec(), Precondition::IfNoneMatch)
                .await
                .unwrap();
            assert!(matches!(
                s.put(&b, b"2".to_vec(), Precondition::IfNoneMatch).await,
                Err(Error::Conflict { .. })
            ));
            assert!(matches!(
                s.put(&b, b"2".to_vec(), Precondition::IfMatch("nope".into()))
                    .await,
                Err(Error::Conflict { .. })
            ));
            let e2 = s
                .put(&b, b"2".to_vec(), Precondition::IfMatch(e1.clone()))
                .await
                .unwrap();
            assert_ne!(e1, e2);
            let got = s.get(&b).await.unwrap().unwrap();
            assert_eq!((got.bytes.as_slice(), got.etag), (&b"2"[..], e2));
            assert!(matches!(
                s.put(&b, b"3".to_vec(), Precondition::IfMatch(e1)).await,
                Err(Error::Conflict { .. })
            ));
            assert!(s.get(&format!("{base}/missing")).await.unwrap().is_none());
            s.put(
                &format!("{base}/c/d.json"),
                b"x".to_vec(),
                Precondition::None,
            )
            .await
            .unwrap();
            s.put(&format!("{base}b.json"), b"x".to_vec(), Precondition::None)
                .await
                .unwrap();
            assert_eq!(
                s.list(&format!("{base}/")).await.unwrap(),
                vec![b.clone(), format!("{base}/c/d.json")]
            );
            assert_eq!(
                s.list(base).await.unwrap(),
                vec![
                    b.clone(),
                    format!("{base}/c/d.json"),
                    format!("{base}b.json")
                ]
            );
            let all = s.get_prefix(&format!("{base}/")).await.unwrap();
            assert_eq!(all.len(), 2);
            assert_eq!(all[0].1.bytes, b"2");
            // Prefixes below the run's directory, and a key as its own prefix.
            assert_eq!(
                s.list(&format!("{base}/c/")).await.unwrap(),
                vec![format!("{base}/c/d.json")]
            );
            assert_eq!(s.list(&b).await.unwrap(), vec![b.clone()]);
            assert_eq!(s.get_prefix(&b).await.unwrap()[0].1.bytes, b"2");
            s.remove(&b).await.unwrap();
            assert!(s.get(&b).await.unwrap().is_none());
            assert_eq!(
                s.list(&format!("{base}/")).await.unwrap(),
                vec![format!("{base}/c/d.json")]
            );
            // A deleted key can be created again.
            s.put(&b, b"4".to_vec(), Precondition::IfNoneMatch)
                .await
                .unwrap();
            for bad in [
                "../x",
                "a/../x",
                ".locks/x",
                "runs/app/r/.segment",
                "a//b",
                "/a",
            ] {
                assert!(
                    s.put(bad, vec![], Precondition::None).await.is_err(),
                    "{bad}"
                );
            }
            assert_eq!(fs::read_dir(dir.path().join(".tmp")).unwrap().count(), 0);
            assert!(s.syncs() > 0, "writes are made durable");
        }
    }

    /// A run's objects are one file however often they are rewritten, packed and
    /// deflated: far smaller than the bytes written.
    #[tokio::test]
    async fn a_runs_objects_are_one_small_file_however_often_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let s = DirStore::open(dir.path()).unwrap();
        let run = "runs/web/0123456789abcdef";
        let mut written = 0;
        let record = |stage: &str, i: usize| {
            format!(
                "{{\"stage\":\"{stage}\",\"attempt\":{i},\"history\":[{}]}}",
                "{\"at\":\"2026-11-29T21:09:49.767221199Z\",\"status\":\"running\"},".repeat(20)
            )
            .into_bytes()
        };
        for i in 0..30 {
            for stage in ["ingest", "test", "gate.staging", "deploy.staging"] {
                let v = record(stage, i);
                written += v.len();
                s.put(&format!("{run}/stages/{stage}.json"), v, Precondition::None)
                    .await
                    .unwrap();
            }
        }
        assert_eq!(files_under(&dir.path().join(run)), vec![SEGMENT]);
        let size = fs::metadata(dir.path().join(run).join(SEGMENT))
            .unwrap()
            .len() as usize;
        assert!(
            size < PACK_AFTER + 4096,
            "{size} bytes for {written} written"
        );
        for stage in ["ingest", "test", "gate.staging", "deploy.staging"] {
            let got = s
                .get(&format!("{run}/stages/{stage}.json"))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got.bytes, record(stage, 29));
        }
        assert_eq!(s.list(&format!("{run}/")).await.unwrap().len(), 4);
    }

    /// A writer killed mid-append leaves half a record: readers see the object as it was,
    /// and the next write cuts the half record off and appends after the last whole one.
    #[tokio::test]
    async fn a_torn_append_is_ignored_then_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let s = DirStore::open(dir.path()).unwrap();
        let key = "runs/web/0123456789abcdef/stages/test.json";
        let e1 = s
            .put(key, b"one".to_vec(), Precondition::None)
            .await
            .unwrap();
        let seg = dir.path().join("runs/web/0123456789abcdef").join(SEGMENT);
        let whole = fs::read(&seg).unwrap();
        let next = record("stages/test.json", Some(b"two")).unwrap();
        for cut in [1, 7, next.len() - 1] {
            let mut torn = whole.clone();
            torn.extend(&next[..cut]);
            fs::write(&seg, &torn).unwrap();
            let got = s.get(key).await.unwrap().unwrap();
            assert_eq!(
                (got.bytes.as_slice(), got.etag.as_str()),
                (&b"one"[..], e1.as_str())
            );
        }
        // A flipped byte in the last record fails its checksum the same way.
        let mut flipped = whole.clone();
        flipped.extend(&next);
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        fs::write(&seg, &flipped).unwrap();
        assert_eq!(s.get(key).await.unwrap().unwrap().bytes, b"one");
        s.put(key, b"three".to_vec(), Precondition::IfMatch(e1))
            .await
            .unwrap();
        let mut expected = whole.clone();
        expected.extend(record("stages/test.json", Some(b"three")).unwrap());
        assert_eq!(
            fs::read(&seg).unwrap(),
            expected,
            "the torn record was cut off"
        );
        assert_eq!(s.get(key).await.unwrap().unwrap().bytes, b"three");
        // Bytes that are not a segment at all are an error naming the file, not empty.
        fs::write(&seg, b"{\"not\": \"a segment\"}").unwrap();
        let err = s.get(key).await.unwrap_err().to_string();
        assert!(err.contains(".segment") && err.contains("damaged"), "{err}");
    }

    /// A state directory from before segments (a file per key) is read as it is; a write
    /// moves a key into the segment and a delete removes the old file.
    #[tokio::test]
    async fn objects_kept_one_file_per_key_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let run = "runs/web/0123456789abcdef";
        fs::create_dir_all(dir.path().join(run).join("stages")).unwrap();
        fs::create_dir_all(dir.path().join(run).join("events")).unwrap();
        fs::write(dir.path().join(run).join("stages/test.json"), "old test").unwrap();
        fs::write(dir.path().join(run).join("events/e1.json"), "e1").unwrap();
        let s = DirStore::open(dir.path()).unwrap();
        let test = format!("{run}/stages/test.json");
        let old = s.get(&test).await.unwrap().unwrap();
        assert_eq!(old.bytes, b"old test");
        assert!(matches!(
            s.put(&test, b"x".to_vec(), Precondition::IfNoneMatch).await,
            Err(Error::Conflict { .. })
        ));
        s.put(&test, b"new test".to_vec(), Precondition::IfMatch(old.etag))
            .await
            .unwrap();
        assert_eq!(s.get(&test).await.unwrap().unwrap().bytes, b"new test");
        let all = s.get_prefix(&format!("{run}/")).await.unwrap();
        let all: Vec<_> = all
            .iter()
            .map(|(k, o)| (k.as_str(), o.bytes.as_slice()))
            .collect();
        assert_eq!(
            all,
            vec![
                (format!("{run}/events/e1.json").as_str(), &b"e1"[..]),
                (test.as_str(), &b"new test"[..])
            ]
        );
        s.remove(&format!("{run}/events/e1.json")).await.unwrap();
        assert!(!dir.path().join(run).join("events/e1.json").exists());
        assert_eq!(s.list(&format!("{run}/")).await.unwrap(), vec![test]);
    }

    /// Writes that finish together share syncs, and each is durable when it returns
    /// (elsewhere than Linux each segment is synced on its own).
    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writes_share_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let s = DirStore::open(dir.path()).unwrap();
        let before = s.syncs();
        let writes: Vec<_> = (0..64)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    s.put(
                        &format!("runs/web/{i:016x}/stages/test.json"),
                        format!("{i}").into_bytes(),
                        Precondition::IfNoneMatch,
                    )
                    .await
                })
            })
            .collect();
        for w in writes {
            w.await.unwrap().unwrap();
        }
        let syncs = s.syncs() - before;
        eprintln!("64 concurrent writes: {syncs} syncs");
        assert!(syncs < 64, "{syncs} syncs for 64 writes");
        for i in 0..64 {
            let got = s
                .get(&format!("runs/web/{i:016x}/stages/test.json"))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got.bytes, format!("{i}").into_bytes());
        }
    }

    /// A batch of writes to objects kept in files of their own shares one sync; each
    /// write keeps its own precondition and outcome, and nothing is left in `.tmp/`.
    #[tokio::test]
    async fn a_batch_of_writes_shares_one_sync() {
        let dir = tempfile::tempdir().unwrap();
        let s = DirStore::open(dir.path()).unwrap();
        let key = |i: usize| format!("index/runs/2026-12-07/{i:02}.json");
        let mut etags = vec![];
        for i in 0..14 {
            etags.push(
                s.put(&key(i), b"old".to_vec(), Precondition::IfNoneMatch)
                    .await
                    .unwrap(),
            );
        }
        let seg_key = "runs/web/0123456789abcdef/stages/test.json";
        let put = |key: String, bytes: &[u8], cond| Put {
            key,
            bytes: bytes.to_vec(),
            cond,
        };
        let mut writes: Vec<Put> = (0..12)
            .map(|i| put(key(i), b"new", Precondition::IfMatch(etags[i].clone())))
            .collect();
        writes.extend([
            put(key(12), b"stale", Precondition::IfMatch(etag_of(b"older"))),
            put(key(13), b"again", Precondition::IfNoneMatch),
            put(key(14), b"created", Precondition::IfNoneMatch),
            put(seg_key.into(), b"in a segment", Precondition::None),
            put("../escape".into(), b"x", Precondition::None),
        ]);
        let before = s.syncs();
        let out = s.put_many(writes).await.unwrap();
        assert_eq!(
            s.syncs() - before,
            2,
            "one for the 13 files, one for the segment's append"
        );
        assert_eq!(out.len(), 17);
        for (i, r) in out.iter().enumerate().take(12) {
            assert_eq!(r.as_ref().unwrap(), &etag_of(b"new"), "write {i}");
            assert_eq!(s.get(&key(i)).await.unwrap().unwrap().bytes, b"new");
        }
        assert!(matches!(out[12], Err(Error::Conflict { .. })));
        assert!(matches!(out[13], Err(Error::Conflict { .. })));
        assert_eq!(s.get(&key(12)).await.unwrap().unwrap().bytes, b"old");
        assert_eq!(s.get(&key(13)).await.unwrap().unwrap().bytes, b"old");
        assert_eq!(out[14].as_ref().unwrap(), &etag_of(b"created"));
        assert_eq!(s.get(&key(14)).await.unwrap().unwrap().bytes, b"created");
        assert_eq!(
            s.get(seg_key).await.unwrap().unwrap().bytes,
            b"in a segment"
        );
        assert!(
            matches!(out[16], Err(Error::Invalid { .. })),
            "{:?}",
            out[16]
        );
        assert!(
            fs::read_dir(dir.path().join(".tmp"))
                .unwrap()
                .next()
                .is_none()
        );
    }

    /// Reads of several objects and stamps at once answer as one read each would, in
    /// order, with `None` for what is absent.
    #[tokio::test]
    async fn many_reads_answer_as_one_read_each() {
        let dir = tempfile::tempdir().unwrap();
        let s = DirStore::open(dir.path()).unwrap();
        let keys: Vec<String> = [
            "index/runs/2026-12-07/01.json",
            "runs/web/0123456789abcdef/stages/test.json",
            "index/runs/2026-12-07/absent.json",
            "runs/web/fedcba9876543210/stages/test.json",
        ]
        .map(String::from)
        .to_vec();
        for (i, k) in keys.iter().enumerate().filter(|(i, _)| *i != 2) {
            s.put(k, format!("{i}").into_bytes(), Precondition::None)
                .await
                .unwrap();
        }
        let got = s.get_many(&keys).await.unwrap();
        assert_eq!(got.len(), 4);
        for (k, g) in keys.iter().zip(&got) {
            assert_eq!(g.as_ref(), s.get(k).await.unwrap().as_ref(), "{k}");
        }
        assert!(got[2].is_none());
        assert_eq!(got[3].as_ref().unwrap().bytes, b"3");
        let sets = vec![
            vec!["runs/web/0123456789abcdef/".to_string()],
            vec!["runs/web/0000000000000000/".to_string()],
            vec!["index/".to_string()],
        ];
        let stamps = s.stamps(&sets).await.unwrap();
        for (dirs, st) in sets.iter().zip(&stamps) {
            assert_eq!(st, &s.stamp(dirs).await.unwrap(), "{dirs:?}");
        }
        assert!(stamps[0].is_some() && stamps[2].is_none());
    }

    /// A segment kept parsed in memory is read again once another process (another
    /// handle, with its own memory) changed the file, by an append or a pack.
    #[tokio::test]
    async fn a_kept_segment_follows_writes_by_another_process() {
        let dir = tempfile::tempdir().unwrap();
        let a = DirStore::open(dir.path()).unwrap();
        let b = DirStore::open(dir.path()).unwrap();
        let key = "runs/web/0123456789abcdef/stages/test.json";
        a.put(key, b"1".to_vec(), Precondition::IfNoneMatch)
            .await
            .unwrap();
        assert_eq!(a.get(key).await.unwrap().unwrap().bytes, b"1");
        for i in 2..200u32 {
            // b appends (and packs, every 64 KiB); a reads each change and writes under
            // the etag it read.
            let etag = b.get(key).await.unwrap().unwrap().etag;
            let big = format!("{i}-{}", "x".repeat(400));
            b.put(key, big.clone().into_bytes(), Precondition::IfMatch(etag))
                .await
                .unwrap();
            let seen = a.get(key).await.unwrap().unwrap();
            assert_eq!(seen.bytes, big.as_bytes(), "write {i}");
            a.put(key, seen.bytes.clone(), Precondition::IfMatch(seen.etag))
                .await
                .unwrap();
        }
        assert_eq!(a.list("runs/web/").await.unwrap(), vec![key.to_string()]);
    }

    /// A deployment's lease and live record share one segment; its history is a segment
    /// a day (an entry an earlier version wrote as a file of its own is still read);
    /// listings see all of them, and a lease released is gone.
    #[tokio::test]
    async fn a_deployments_lease_and_live_record_are_one_segment() {
        let dir = tempfile::tempdir().unwrap();
        let s = DirStore::open(dir.path()).unwrap();
        let d = "deployments/web/staging";
        s.put(
            &format!("{d}/lease.json"),
            b"l".to_vec(),
            Precondition::IfNoneMatch,
        )
        .await
        .unwrap();
        s.put(
            &format!("{d}/current.json"),
            b"c".to_vec(),
            Precondition::None,
        )
        .await
        .unwrap();
        // Written one file each by an earlier version: still a file of its own.
        s.put(
            &format!("{d}/history/0000000000001-0123456789abcdef.json"),
            b"h".to_vec(),
            Precondition::IfNoneMatch,
        )
        .await
        .unwrap();
        // A day's deploys: one segment (not kept in the cache).
        let entry = format!("{d}/history/2026-12-07/x.json");
        let (day, _) = segment_of(&entry).unwrap();
        assert!(is_history_day(day), "{day}");
        let lease = format!("{d}/lease.json");
        assert!(!is_history_day(segment_of(&lease).unwrap().0));
        for (ms, run) in [(2, "1123456789abcdef"), (3, "2123456789abcdef")] {
            s.put(
                &format!("{d}/history/2026-12-07/000000000000{ms}-{run}.json"),
                run.as_bytes().to_vec(),
                Precondition::None,
            )
            .await
            .unwrap();
        }
        assert!(matches!(
            s.put(
                &format!("{d}/lease.json"),
                b"x".to_vec(),
                Precondition::IfNoneMatch
            )
            .await,
            Err(Error::Conflict { .. })
        ));
        let mut files = files_under(&dir.path().join(d));
        files.sort();
        assert_eq!(
            files,
            vec![
                SEGMENT.to_string(),
                "history/0000000000001-0123456789abcdef.json".into(),
                format!("history/2026-12-07/{SEGMENT}"),
            ]
        );
        let history = [
            format!("{d}/history/0000000000001-0123456789abcdef.json"),
            format!("{d}/history/2026-12-07/0000000000002-1123456789abcdef.json"),
            format!("{d}/history/2026-12-07/0000000000003-2123456789abcdef.json"),
        ];
        let mut all = vec![format!("{d}/current.json")];
        all.extend(history.iter().cloned());
        all.push(format!("{d}/lease.json"));
        assert_eq!(s.list("deployments/web/").await.unwrap(), all);
        assert_eq!(s.list(&format!("{d}/history/")).await.unwrap(), history);
        assert_eq!(
            s.list(&format!("{d}/history/2026-12-07/")).await.unwrap(),
            history[1..]
        );
        assert_eq!(
            s.get(&history[2]).await.unwrap().unwrap().bytes,
            b"2123456789abcdef"
        );
        s.remove(&format!("{d}/lease.json")).await.unwrap();
        assert!(s.get(&format!("{d}/lease.json")).await.unwrap().is_none());
        assert_eq!(
            s.get(&format!("{d}/current.json"))
                .await
                .unwrap()
                .unwrap()
                .bytes,
            b"c"
        );
    }

    /// Deferred to a shared durability point, segment writes make no sync of their own;
    /// one sync (the bus's, or a flush) covers all of them, a flush with nothing pending
    /// makes none; without a shared point each write syncs.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn deferred_writes_are_made_durable_by_the_shared_sync() {
        let dir = tempfile::tempdir().unwrap();
        let bus = dir.path().join("bus");
        fs::create_dir_all(&bus).unwrap();
        let mut s = DirStore::open(dir.path().join("store")).unwrap();
        let durability = s.defer_syncs_to(&bus).expect("one filesystem");
        for i in 0..20 {
            s.put(
                &format!("runs/web/0123456789abcdef/stages/s{i}.json"),
                b"{}".to_vec(),
                Precondition::None,
            )
            .await
            .unwrap();
        }
        assert_eq!(s.syncs(), 0, "segment writes wait for the shared sync");
        durability.sync().unwrap();
        assert_eq!(s.syncs(), 1);
        s.flush().await.unwrap();
        assert_eq!(s.syncs(), 1, "nothing pending: no sync");
        s.put(
            "runs/web/0123456789abcdef/stages/last.json",
            b"{}".to_vec(),
            Precondition::None,
        )
        .await
        .unwrap();
        s.flush().await.unwrap();
        assert_eq!(s.syncs(), 2, "a flush covers the write before it");
        // A file of its own is synced before it is linked (the shared sync), and its
        // name is covered by the next one.
        s.put(
            "holds/web/production.json",
            b"{}".to_vec(),
            Precondition::IfNoneMatch,
        )
        .await
        .unwrap();
        assert_eq!(s.syncs(), 3);
        s.flush().await.unwrap();
        assert_eq!(s.syncs(), 4);
        // Without a shared point (the default), each write syncs.
        let s = DirStore::open(dir.path().join("other")).unwrap();
        s.put(
            "runs/web/0123456789abcdef/x",
            b"1".to_vec(),
            Precondition::None,
        )
        .await
        .unwrap();
        assert_eq!(s.syncs(), 1);
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
        for key in ["claim.json", "runs/web/0123456789abcdef/stages/test.json"] {
            let dir = tempfile::tempdir().unwrap();
            let s = DirStore::open(dir.path()).unwrap();
            let mut handles = vec![];
            for i in 0..8 {
                let s = s.clone();
                handles.push(tokio::task::spawn_blocking(move || {
                    s.put_sync(key, format!("{i}").into_bytes(), Precondition::IfNoneMatch)
                        .is_ok()
                }));
            }
            let mut wins = 0;
            for h in handles {
                if h.await.unwrap() {
                    wins += 1;
                }
            }
            assert_eq!(wins, 1, "{key}");
        }
    }
}
