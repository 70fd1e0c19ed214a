//! The pipeline under load: `baton serve` (this release build) with 100 apps, each
//! tested by `true` and deployed by manifest to staging and production without approval,
//! takes registry pushes over HTTP on loopback. Prints, and with `--write` puts into the
//! README between its `bench:pipeline` markers, a table of:
//!
//! - **throughput**: runs (push → production deployed) per minute with pushes sent as
//!   fast as the server accepts them, 8 at a time;
//! - **latency**: push sent → production deployed (the deploy's `finished_at`), p50 and
//!   p99, with pushes arriving at a steady rate (10,000/min, or 80% of the measured
//!   throughput when that is lower);
//! - **CPU**: the server's user and system CPU time per run in the throughput phase and
//!   the 5 s after it (when the server packs the segments of the runs gone quiet);
//! - **memory**: resident and peak resident memory of the server after each phase;
//! - **state**: the state directory's growth per run, in file bytes and in disk blocks, once
//!   the runs are quiet (the server packs a quiet run's segments);
//! - **syncs**: `fsync`, `fdatasync` and `syncfs` calls per run, counted by `strace -f`
//!   on a second server taking paced pushes (skipped, and said, without `strace`);
//! - **dashboard**: the board (`GET /` as a page) and a run page, at the same history;
//! - **queries**: `GET /runs?limit=50` latency, first page and deep pages, after the
//!   state holds 100,000 runs (the runs beyond those the phases made are copies of a
//!   finished run, hard-linked, with their own ids and index entries spread over 60 days;
//!   an entry is a copy of its template's, with the summary the server kept there).
//!
//! Run: `cargo bench -p baton-cli --bench pipeline [-- --write]`. Sizes:
//! `BATON_BENCH_RUNS` (throughput pushes, 3,000), `BATON_BENCH_SECONDS` (latency phase,
//! 30), `BATON_BENCH_INDEX_RUNS` (100,000); `BATON_BENCH_RATE` sets the latency phase's pushes
//! per minute (to see the latency of a quiet server, say); `BATON_BENCH_SETTLE` waits that
//! many seconds between the throughput and latency phases (0: none), to tell the server's
//! work on the burst's runs apart from the steady load. The latency phase also prints p50
//! and p99 for each 5 s of it. Figures depend on the machine and its disk.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use baton_testkit::fleet::{self, HOOK_SECRET_ENV, READER_TOKEN_ENV, Usage};
use baton_testkit::{Proc, build, free_port};
use chrono::{DateTime, Utc};
use serde_json::Value;

const APPS: usize = 100;
const SECRET: &str = "bench-hook-secret";
const READER: &str = "bench-reader-token";
const TARGET_RATE: f64 = 10_000.0;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Server {
    _proc: Proc,
    pid: u32,
    base: String,
}

/// Starts `baton serve` in `root`; under `strace -f -c` writing to `trace` when given.
async fn start(root: &Path, trace: Option<&Path>) -> Server {
    let port = free_port();
    let baton = env!("CARGO_BIN_EXE_baton");
    let mut cmd = match trace {
        Some(out) => {
            let mut c = Command::new("strace");
            c.args([
                "-f",
                "-c",
                "-e",
                "trace=fsync,fdatasync,syncfs,sync_file_range",
                "-o",
            ])
            .arg(out)
            .arg(baton);
            c
        }
        None => Command::new(baton),
    };
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(root)
        .env_remove("BATON_CONFIG")
        .env_remove("BATON_STATE_DIR")
        .env(HOOK_SECRET_ENV, SECRET)
        .env(READER_TOKEN_ENV, READER)
        .env("BATON_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(root.join("serve.log")).expect("create serve.log"));
    let child = cmd.spawn().expect("start baton serve");
    let pid = child.id();
    baton_testkit::wait_tcp(port, Duration::from_secs(120), "baton serve").await;
    Server {
        _proc: Proc(child),
        pid,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// The `n`th push of the bench: app `n % APPS`, its own digest and tag.
fn push_of(n: usize) -> (String, String, String) {
    let app = format!("app{}", n % APPS);
    let digest = build::digest(&format!("bench-{n}"));
    let body = build::dist_push(
        &format!("bench/{app}"),
        &format!("1.{}.0", n / APPS),
        &digest,
        "ci",
        Utc::now(),
        &format!("n-{n}"),
    );
    (app, digest, body.to_string())
}

async fn send(client: &reqwest::Client, base: &str, body: String) {
    let r = client
        .post(format!("{base}/hooks/registry"))
        .header("Authorization", SECRET)
        .body(body)
        .send()
        .await
        .expect("push");
    assert_eq!(r.status().as_u16(), 202, "push refused");
}

/// Waits until the server's queue is empty.
async fn idle(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let h: Value = client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .expect("healthz")
            .json()
            .await
            .expect("healthz JSON");
        if h["queue_depth"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the queue did not drain: {h}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// When run `n`'s production deploy finished, from its record.
async fn deployed_at(client: &reqwest::Client, base: &str, n: usize) -> DateTime<Utc> {
    deployed(client, base, n).await.0
}

/// One stage of a run, for the latency breakdown: its name (with the environment) and
/// when it started and finished.
type Span = (String, DateTime<Utc>, DateTime<Utc>);

/// When run `n`'s production deploy finished, and the run's stages.
async fn deployed(client: &reqwest::Client, base: &str, n: usize) -> (DateTime<Utc>, Vec<Span>) {
    let (app, digest, _) = push_of(n);
    let run = baton::ids::run_id(&app, &digest);
    let v: Value = client
        .get(format!("{base}/runs/{run}"))
        .bearer_auth(READER)
        .send()
        .await
        .expect("GET /runs/<run>")
        .json()
        .await
        .expect("run JSON");
    let at = v["stages"].as_array().and_then(|stages| {
        stages.iter().find_map(|s| {
            (s["stage"] == "deploy"
                && s["environment"] == "production"
                && s["status"] == "succeeded")
                .then(|| s["finished_at"].as_str())
                .flatten()
        })
    });
    let done = at
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("run {n} ({app}, {run}) was not deployed to production: {v}"));
    let time = |s: &Value, k: &str| s[k].as_str().and_then(|t| t.parse().ok());
    let mut spans: Vec<Span> = v["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let name = match s["environment"].as_str() {
                Some(env) => format!("{}.{env}", s["stage"].as_str()?),
                None => s["stage"].as_str()?.to_string(),
            };
            Some((name, time(s, "started_at")?, time(s, "finished_at")?))
        })
        .collect();
    spans.sort_by_key(|s| s.1);
    (done, spans)
}

/// Where a run's time went, stage by stage in the order they started: the wait before a
/// stage (from the push, or from the end of the stage before) and its own time, p50 and
/// p99 of each over `runs`.
fn breakdown(runs: &[(DateTime<Utc>, Vec<Span>)]) -> String {
    let ms = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0;
    let mut by_stage: Vec<(String, Vec<f64>, Vec<f64>)> = vec![];
    for (sent, spans) in runs {
        let mut before = *sent;
        for (name, start, end) in spans {
            let row = match by_stage.iter().position(|r| &r.0 == name) {
                Some(i) => i,
                None => {
                    by_stage.push((name.clone(), vec![], vec![]));
                    by_stage.len() - 1
                }
            };
            by_stage[row].1.push(ms(*start - before));
            by_stage[row].2.push(ms(*end - *start));
            before = before.max(*end);
        }
    }
    let mut out = String::new();
    for (name, mut wait, mut work) in by_stage {
        wait.sort_by(f64::total_cmp);
        work.sort_by(f64::total_cmp);
        out.push_str(&format!(
            "    {name:<22} wait p50 {:6.2} p99 {:7.2} ms, own p50 {:6.2} p99 {:7.2} ms\n",
            percentile(&wait, 0.5),
            percentile(&wait, 0.99),
            percentile(&work, 0.5),
            percentile(&work, 0.99),
        ));
    }
    out
}

/// The latencies `lat` of pushes sent at `sent`, p50 and p99 in each 5 s of the phase:
/// whether the slow runs are spread over the phase or bunched (a stall, a backlog).
fn windows(sent: &[DateTime<Utc>], lat: &[f64]) -> String {
    let Some(start) = sent.first() else {
        return String::new();
    };
    let mut by_window: Vec<Vec<f64>> = vec![];
    for (at, l) in sent.iter().zip(lat) {
        let w = ((*at - *start).num_milliseconds().max(0) / 5_000) as usize;
        if by_window.len() <= w {
            by_window.resize(w + 1, vec![]);
        }
        by_window[w].push(*l);
    }
    let mut out = String::new();
    for (w, mut l) in by_window.into_iter().enumerate() {
        l.sort_by(f64::total_cmp);
        out.push_str(&format!(
            "    {:>3}-{:<3} s: {:5} runs, p50 {:7.1} ms, p99 {:7.1} ms, max {:7.1} ms\n",
            w * 5,
            w * 5 + 5,
            l.len(),
            percentile(&l, 0.5),
            percentile(&l, 0.99),
            l.last().copied().unwrap_or(0.0),
        ));
    }
    out
}

/// Sends pushes `from..to` at `per_min`, returning when each was sent.
async fn paced(
    client: &reqwest::Client,
    base: &str,
    from: usize,
    to: usize,
    per_min: f64,
) -> Vec<DateTime<Utc>> {
    let interval = Duration::from_secs_f64(60.0 / per_min);
    let start = tokio::time::Instant::now();
    let mut tasks = vec![];
    for (i, n) in (from..to).enumerate() {
        tokio::time::sleep_until(start + interval * i as u32).await;
        let (client, base) = (client.clone(), base.to_string());
        tasks.push(tokio::spawn(async move {
            let (_, _, body) = push_of(n);
            let at = Utc::now();
            send(&client, &base, body).await;
            at
        }));
    }
    let mut sent = vec![];
    for t in tasks {
        sent.push(t.await.expect("push task"));
    }
    sent
}

/// The CPU time (user and system) process `pid` has used, in ms, from `/proc`; `None`
/// where that cannot be read.
fn cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command's closing parenthesis; utime and stime are the 14th
    // and 15th of the line, the 12th and 13th after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf reads a constant of the running system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 * 1000.0 / hz as f64)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Copies finished runs (hard links: run `i` copies `templates[i % len]`, the finished
/// run of app `i % APPS`, so no file reaches the file system's link limit) as `count`
/// more runs with index entries spread over the 60 days before now, so listings face a
/// long history. Returns the files a run has.
fn seed_history(store: &Path, templates: &[(String, String)], count: usize) -> usize {
    let files_of = |src: &Path| {
        let mut files = vec![];
        let mut stack = vec![src.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)
                .expect("read a template run")
                .flatten()
            {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(src) {
                    files.push(rel.to_path_buf());
                }
            }
        }
        files
    };
    // A template's index entry, with the summary the server kept there (its records
    // are shared by the copies, so the summary's stamp holds for them too).
    let entry_of = |app: &str, run: &str| -> String {
        for d in std::fs::read_dir(store.join("index/runs"))
            .expect("index days")
            .flatten()
        {
            for e in std::fs::read_dir(d.path()).expect("an index day").flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .ends_with(&format!("-{run}"))
                {
                    return std::fs::read_to_string(e.path()).expect("read an index entry");
                }
            }
        }
        format!("{{\"app\":\"{app}\"}}")
    };
    let templates: Vec<(String, PathBuf, Vec<PathBuf>, String)> = templates
        .iter()
        .map(|(app, run)| {
            let src = store.join(format!("runs/{app}/{run}"));
            let files = files_of(&src);
            (app.clone(), src, files, entry_of(app, run))
        })
        .collect();
    let summarized = templates
        .iter()
        .filter(|t| t.3.contains("\"summary\""))
        .count();
    eprintln!(
        "  {summarized} of {} template runs carry a kept summary",
        templates.len()
    );
    let now = Utc::now();
    let step_ms = (60 * 86_400_000 / count.max(1)) as i64;
    let started = Instant::now();
    for i in 0..count {
        let (app, src, files, entry) = &templates[i % templates.len()];
        let run = baton::ids::run_id(app, &build::digest(&format!("history-{i}")));
        let dir = store.join(format!("runs/{app}/{run}"));
        for rel in files {
            let to = dir.join(rel);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).expect("create a run directory");
            }
            std::fs::hard_link(src.join(rel), &to).expect("link a run file");
        }
        let at = now - chrono::Duration::milliseconds(step_ms * (count - i) as i64);
        let key = baton::store::run_index_key(at, run.as_str());
        let path = store.join(&key);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create an index day");
        }
        std::fs::write(&path, entry).expect("write an index entry");
        if let Some(day) = key
            .strip_prefix(baton::store::RUN_INDEX)
            .and_then(|k| k.split('/').next())
        {
            let marker = store.join(format!("{}{day}", baton::store::RUN_INDEX_DAYS));
            if !marker.exists() {
                std::fs::create_dir_all(marker.parent().expect("index/days"))
                    .expect("create index/days");
                std::fs::write(&marker, "{}").expect("write a day marker");
            }
        }
        if (i + 1) % 20_000 == 0 {
            eprintln!(
                "  seeded {} runs ({:.0} s)",
                i + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    templates.first().map_or(0, |t| t.2.len())
}

/// Times `GET /runs?limit=50` on the first page and on pages after `cursors`.
async fn time_pages(
    client: &reqwest::Client,
    base: &str,
    cursors: &[String],
) -> (Vec<f64>, Vec<f64>) {
    let mut first = vec![];
    let mut deep = vec![];
    for i in 0..200 {
        let url = if i % 2 == 0 || cursors.is_empty() {
            format!("{base}/runs?limit=50")
        } else {
            format!("{base}/runs?limit=50&after={}", cursors[i % cursors.len()])
        };
        let t = Instant::now();
        let r = client
            .get(&url)
            .bearer_auth(READER)
            .send()
            .await
            .expect("GET /runs");
        assert_eq!(r.status().as_u16(), 200, "{url}");
        let page: Vec<Value> = r.json().await.expect("a page of runs");
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(page.len(), 50, "{url} returned a full page");
        if url.contains("after=") {
            deep.push(ms);
        } else {
            first.push(ms);
        }
    }
    first.sort_by(f64::total_cmp);
    deep.sort_by(f64::total_cmp);
    (first, deep)
}

/// Times the dashboard's board (`GET /` as a browser asks for it) right after a change
/// (a push: the board is read again), the board again with nothing changed (as read
/// after the last change), and a run page.
async fn time_board(
    client: &reqwest::Client,
    base: &str,
    run: &str,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut changed = vec![];
    let mut board = vec![];
    let mut page = vec![];
    for i in 0..200 {
        match i % 4 {
            // A push the server has seen: accepted (a change), then deduplicated.
            0 => send(client, base, push_of(APPS).2).await,
            // Its delivery was a change too: read once after it, untimed.
            1 => {
                idle(client, base).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = client
                    .get(format!("{base}/"))
                    .bearer_auth(READER)
                    .header("accept", "text/html")
                    .send()
                    .await;
            }
            _ => {}
        }
        let url = if i % 4 == 3 {
            format!("{base}/runs/{run}")
        } else {
            format!("{base}/")
        };
        let t = Instant::now();
        let r = client
            .get(&url)
            .bearer_auth(READER)
            .header("accept", "text/html")
            .send()
            .await
            .expect("a dashboard page");
        assert_eq!(r.status().as_u16(), 200, "{url}");
        let html = r.text().await.expect("the page");
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        assert!(html.contains("<main"), "{url} is a page");
        match i % 4 {
            0 => changed.push(ms),
            3 => page.push(ms),
            _ => board.push(ms),
        }
    }
    for v in [&mut changed, &mut board, &mut page] {
        v.sort_by(f64::total_cmp);
    }
    (changed, board, page)
}

/// Counts sync calls in an `strace -c` summary.
fn syncs_in(trace: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(trace).ok()?;
    if !text.lines().any(|l| l.trim_end().ends_with("total")) {
        return None;
    }
    let mut total = 0;
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if let Some(name) = cols.last()
            && ["fsync", "fdatasync", "syncfs", "sync_file_range"].contains(name)
        {
            // `% time, seconds, usecs/call, calls, [errors,] syscall`
            total += cols.get(3).and_then(|c| c.parse::<u64>().ok())?;
        }
    }
    Some(total)
}

fn strace_available() -> bool {
    Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn write_readme(table: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).expect("read README.md");
    let (begin, end) = (
        "<!-- bench:pipeline:begin -->",
        "<!-- bench:pipeline:end -->",
    );
    let (Some(a), Some(b)) = (readme.find(begin), readme.find(end)) else {
        panic!("README.md has no {begin} … {end} markers");
    };
    let out = format!("{}{begin}\n{table}{}", &readme[..a], &readme[b..]);
    std::fs::write(&path, out).expect("write README.md");
    println!("wrote the table into {}", path.display());
}

#[tokio::main]
async fn main() {
    let write = std::env::args().any(|a| a == "--write");
    let runs = env_usize("BATON_BENCH_RUNS", 3_000);
    let seconds = env_usize("BATON_BENCH_SECONDS", 30);
    let history = env_usize("BATON_BENCH_INDEX_RUNS", 100_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let root: PathBuf = dir.path().to_path_buf();
    fleet::write_config(&root, APPS, "bench");
    let client = reqwest::Client::new();
    let server = start(&root, None).await;
    let base = server.base.clone();
    let state = root.join(".baton");

    // Warm-up: one run per app.
    let mut next = 0usize;
    for n in 0..APPS {
        send(&client, &base, push_of(n).2).await;
    }
    next += APPS;
    idle(&client, &base).await;
    let warm_rss = fleet::proc_kib(server.pid, "VmRSS");

    // Throughput: pushes as fast as accepted, 8 at a time.
    eprintln!("throughput: {runs} pushes");
    let before: Usage = fleet::usage(&state);
    let cpu_before = cpu_ms(server.pid);
    let counter = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut workers = vec![];
    for _ in 0..8 {
        let (client, base, counter) = (client.clone(), base.clone(), counter.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                if i >= runs {
                    break;
                }
                send(&client, &base, push_of(next + i).2).await;
            }
        }));
    }
    for w in workers {
        w.await.expect("push worker");
    }
    let accepted = t0.elapsed();
    idle(&client, &base).await;
    let elapsed = t0.elapsed();
    let per_min = runs as f64 / elapsed.as_secs_f64() * 60.0;
    // The server packs a run's segments once it has been quiet for 2 s (its summarizer
    // walks every 2 s): that work is counted in the CPU per run, and the state measured
    // is what finished runs keep.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cpu_per_run = cpu_before
        .zip(cpu_ms(server.pid))
        .map(|(b, a)| (a - b) / runs as f64);
    eprintln!(
        "  {runs} runs in {:.1} s ({:.1} s to accept): {per_min:.0} runs/min, server CPU {} ms/run",
        elapsed.as_secs_f64(),
        accepted.as_secs_f64(),
        cpu_per_run.map_or("?".into(), |c| format!("{c:.2}"))
    );
    for n in next..next + runs {
        deployed_at(&client, &base, n).await;
    }
    let after: Usage = fleet::usage(&state);
    next += runs;
    let rss_throughput = fleet::proc_kib(server.pid, "VmRSS");
    let per_run = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / runs as f64 / 1024.0;
    let bytes_per_run = per_run(after.bytes, before.bytes);
    let disk_per_run = per_run(after.disk, before.disk);
    let files_per_run = (after.files.saturating_sub(before.files)) as f64 / runs as f64;

    // Latency at a steady arrival rate.
    let rate = std::env::var("BATON_BENCH_RATE")
        .ok()
        .and_then(|r| r.parse::<f64>().ok())
        .filter(|r| *r > 0.0)
        .unwrap_or_else(|| TARGET_RATE.min(per_min * 0.8));
    let count = (rate / 60.0 * seconds as f64) as usize;
    let settle = env_usize("BATON_BENCH_SETTLE", 0);
    if settle > 0 {
        eprintln!("settle: {settle} s");
        tokio::time::sleep(Duration::from_secs(settle as u64)).await;
    }
    eprintln!("latency: {count} pushes at {rate:.0}/min");
    let sent = paced(&client, &base, next, next + count, rate).await;
    idle(&client, &base).await;
    let mut lat = vec![];
    let mut spans = vec![];
    for (i, at) in sent.iter().enumerate() {
        let (done, stages) = deployed(&client, &base, next + i).await;
        lat.push((done - *at).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0);
        spans.push((*at, stages));
    }
    next += count;
    eprint!("{}", windows(&sent, &lat));
    lat.sort_by(f64::total_cmp);
    eprintln!(
        "  p50 {:.1} ms, p99 {:.1} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    eprint!("{}", breakdown(&spans));
    let rss_latency = fleet::proc_kib(server.pid, "VmRSS");
    let peak = fleet::proc_kib(server.pid, "VmHWM");
    let made = next;

    // Queries over a long history.
    drop(server);
    // The first throughput push of each app: finished runs to copy.
    let templates: Vec<(String, String)> = (APPS..2 * APPS)
        .map(|n| {
            let (app, digest, _) = push_of(n);
            let run = baton::ids::run_id(&app, &digest).as_str().to_string();
            (app, run)
        })
        .collect();
    let extra = history.saturating_sub(made);
    eprintln!("history: seeding {extra} runs");
    let linked = seed_history(&state.join("store"), &templates, extra);
    let t_restart = Instant::now();
    let server = start(&root, None).await;
    let restart = t_restart.elapsed();
    let index: Vec<String> = {
        let mut keys = vec![];
        let day_dir = state.join("store/index/runs");
        for d in std::fs::read_dir(&day_dir).expect("index days").flatten() {
            for e in std::fs::read_dir(d.path()).expect("an index day").flatten() {
                keys.push(format!(
                    "{}/{}",
                    d.file_name().to_string_lossy(),
                    e.file_name().to_string_lossy()
                ));
            }
        }
        keys.sort();
        keys
    };
    let total_runs = index.len();
    // The index is sorted oldest first, and a page after a cursor lists older runs: each
    // cursor has at least a page of runs before it.
    let cursors: Vec<String> = (0..100)
        .map(|i| index[50 + (i * 7_919 + 1_000) % (total_runs - 100)].clone())
        .collect();
    let (first, deep) = time_pages(&client, &server.base, &cursors).await;
    let (board_changed, board, run_page) = time_board(&client, &server.base, &templates[0].1).await;
    drop(server);

    // Syncs per run, under strace.
    let syncs = if strace_available() {
        let dir2 = tempfile::tempdir().expect("temp dir");
        fleet::write_config(dir2.path(), APPS, "bench");
        let trace = dir2.path().join("strace.txt");
        let server = start(dir2.path(), Some(&trace)).await;
        let n = 600usize;
        eprintln!("syncs: {n} pushes at {rate:.0}/min under strace");
        paced(&client, &server.base, 0, n, rate).await;
        idle(&client, &server.base).await;
        for i in 0..n {
            deployed_at(&client, &server.base, i).await;
        }
        let one = n;
        send(&client, &server.base, push_of(one).2).await;
        idle(&client, &server.base).await;
        // SIGTERM to baton (strace's child); strace writes its summary when it exits.
        let _ = Command::new("pkill")
            .args(["-TERM", "-P", &server.pid.to_string()])
            .status();
        let mut server = server;
        let _ = server._proc.0.wait();
        syncs_in(&trace).map(|s| s as f64 / (n + 1) as f64)
    } else {
        None
    };

    let table = format!(
        "| figure | value | target |\n|---|---|---|\n\
         | throughput ({runs} pushes, 8 at a time) | {per_min:.0} runs/min | ≥ 10,000 |\n\
         | server CPU per run in that phase and the 5 s after it (user + system) | {} | |\n\
         | push → production deployed at {rate:.0}/min ({count} runs) | p50 {:.1} ms, p99 {:.1} ms | p50 ≤ 10 ms, p99 ≤ 50 ms |\n\
         | RSS after warm-up / throughput / latency phases (peak) | {} / {} / {} ({}) | flat |\n\
         | state per run | {bytes_per_run:.1} KiB in {files_per_run:.1} files, {disk_per_run:.1} KiB on disk | ≤ 16 KB |\n\
         | syncs per run (strace, 601 runs at {rate:.0}/min) | {} | ≤ 15 |\n\
         | `GET /runs?limit=50` at {total_runs} runs, first page | p50 {:.1} ms, p99 {:.1} ms | p99 ≤ 20 ms |\n\
         | the same, 100 deep pages | p50 {:.1} ms, p99 {:.1} ms | p99 ≤ 20 ms |\n\
         | dashboard board (`GET /`, HTML) at {total_runs} runs, right after a change | p50 {:.1} ms, p99 {:.1} ms | ≤ 200 ms at 10,000 runs |\n\
         | the same, nothing changed since the last read | p50 {:.1} ms, p99 {:.1} ms | |\n\
         | dashboard run page at {total_runs} runs | p50 {:.1} ms, p99 {:.1} ms | |\n\
         | restart with {total_runs} runs (until `/healthz` answers) | {:.0} ms | |\n",
        cpu_per_run.map_or("not measured".to_string(), |c| format!("{c:.2} ms")),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        mib(warm_rss),
        mib(rss_throughput),
        mib(rss_latency),
        mib(peak),
        syncs.map_or("not measured (install strace)".to_string(), |s| format!(
            "{s:.1}"
        )),
        percentile(&first, 0.5),
        percentile(&first, 0.99),
        percentile(&deep, 0.5),
        percentile(&deep, 0.99),
        percentile(&board_changed, 0.5),
        percentile(&board_changed, 0.99),
        percentile(&board, 0.5),
        percentile(&board, 0.99),
        percentile(&run_page, 0.5),
        percentile(&run_page, 0.99),
        restart.as_secs_f64() * 1000.0,
    );
    println!(
        "\nbaton serve, release build, {APPS} apps, {} CPUs, {} (history runs link {linked} files each)\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        Utc::now().format("%Y-%m-%d"),
    );
    print!("{table}");
    if write {
        write_readme(&table);
    }
}
