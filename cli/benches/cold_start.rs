//! Cold start of every function binary next to a minimal `lambda_runtime` function:
//! the time from process start to its first poll of the Lambda Runtime API
//! (`GET /2018-06-01/runtime/invocation/next`, the end of Lambda's init phase), the time
//! to the response to its first invocation (what a caller of a cold function waits),
//! and the peak RSS. Prints a table.
//!
//! Run: `cargo bench -p baton-cli --bench cold_start` (builds the release binaries
//! first). Figures depend on the machine; compare the ratio.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const RUNS: usize = 101;
/// One function per stage: `baton-fn-<stage>`.
const FUNCTIONS: [baton::pipeline::StageName; 8] = baton::pipeline::StageName::ALL;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Peak resident set size of a process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Reads one HTTP/1.1 request (head and body) from a connection; `None` at its end.
fn read_request(reader: &mut BufReader<&TcpStream>) -> Option<String> {
    let mut head = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(head)
}

/// What the loopback Runtime API saw.
enum Seen {
    Polled(Instant),
    Answered(Instant, bool),
}

/// One connection of the function to the loopback Runtime API: the first poll gets the
/// invocation, its response (or error) is acknowledged, later polls wait, as in Lambda.
fn serve(
    stream: TcpStream,
    tx: mpsc::Sender<Seen>,
    payload: &'static str,
    handed: Arc<AtomicBool>,
) {
    let mut reader = BufReader::new(&stream);
    let mut writer = &stream;
    while let Some(head) = read_request(&mut reader) {
        let now = Instant::now();
        let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
        if target.ends_with("/runtime/invocation/next") {
            let _ = tx.send(Seen::Polled(now));
            if handed.swap(true, Ordering::SeqCst) {
                // The next invocation never comes; the benchmark ends the process.
                std::thread::sleep(Duration::from_secs(5));
                return;
            }
            let deadline = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() + 60_000)
                .unwrap_or(0);
            let _ = write!(
                writer,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nlambda-runtime-aws-request-id: bench-1\r\nlambda-runtime-deadline-ms: {deadline}\r\nlambda-runtime-invoked-function-arn: arn:aws:lambda:us-east-1:123456789012:function:bench\r\nlambda-runtime-trace-id: Root=1-00000000-000000000000000000000000\r\ncontent-length: {}\r\n\r\n{payload}",
                payload.len()
            );
        } else {
            let _ = tx.send(Seen::Answered(now, target.ends_with("/response")));
            let _ = write!(
                writer,
                "HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
            );
        }
    }
}

/// One cold start of `bin` against a loopback Runtime API.
struct Start {
    /// Process start → first `GET …/invocation/next`.
    first_poll: Duration,
    /// Process start → the first invocation's response posted.
    first_response: Duration,
    /// Peak RSS after the first invocation, KiB.
    rss_kib: u64,
}

/// Starts `bin`, hands it `payload` as its first invocation and times both.
fn measure(bin: &Path, env: &[(&str, String)], payload: &'static str) -> Start {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = mpsc::channel();
    let handed = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let acceptor = {
        let done = done.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                let (tx, handed) = (tx.clone(), handed.clone());
                std::thread::spawn(move || serve(stream, tx, payload, handed));
            }
        })
    };
    let mut cmd = Command::new(bin);
    cmd.env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{port}"))
        .env("AWS_LAMBDA_FUNCTION_NAME", "bench")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn");
    let wait = |what: &str| {
        rx.recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("{}: no {what} within 10 s", bin.display()))
    };
    let Seen::Polled(polled) = wait("Runtime API poll") else {
        panic!("{}: answered before polling", bin.display());
    };
    let Seen::Answered(answered, ok) = wait("response to the first invocation") else {
        panic!("{}: polled again without answering", bin.display());
    };
    assert!(
        ok,
        "{}: the first invocation failed (run it by hand with the same environment to see why)",
        bin.display()
    );
    let rss_kib = peak_rss_kib(child.id()).unwrap_or(0);
    let _ = child.kill();
    let _ = child.wait();
    // Wake the acceptor so that it ends with this start (its connection threads end
    // when the process's connections close).
    done.store(true, Ordering::SeqCst);
    let _ = TcpStream::connect(("127.0.0.1", port));
    let _ = acceptor.join();
    Start {
        first_poll: polled - start,
        first_response: answered - start,
        rss_kib,
    }
}

/// The `q` quantile (0–1) of some durations.
fn quantile(mut v: Vec<Duration>, q: f64) -> Duration {
    v.sort();
    let i = ((v.len().saturating_sub(1)) as f64 * q).round() as usize;
    v.get(i).copied().unwrap_or_default()
}

/// Environment variables for a function.
type Env = [(&'static str, String)];

/// One binary's figures over all rounds.
struct Stats {
    poll: Duration,
    poll_p90: Duration,
    response: Duration,
    rss_kib: u64,
}

impl Stats {
    fn of(runs: Vec<Start>) -> Stats {
        let polls: Vec<Duration> = runs.iter().map(|r| r.first_poll).collect();
        Stats {
            poll: quantile(polls.clone(), 0.5),
            poll_p90: quantile(polls, 0.9),
            response: quantile(runs.iter().map(|r| r.first_response).collect(), 0.5),
            rss_kib: runs.iter().map(|r| r.rss_kib).max().unwrap_or(0),
        }
    }
}

fn main() {
    // One build for the functions and the baseline example, so every crate is built
    // once with the workspace's features.
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--workspace",
            "--bins",
            "--examples",
            "--quiet",
        ])
        .current_dir(root())
        .status()
        .expect("cargo build");
    assert!(status.success());
    let dir = std::env::temp_dir().join(format!("baton-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cfg = dir.join("baton.yaml");
    std::fs::write(
        &cfg,
        "apps:\n  - name: web\n    repository: demo/web\n    tags: { semver: \"*\" }\n    test: { command: { run: [\"true\"] } }\n    environments:\n      - { name: staging, approval: auto, deploy: { lambda: { function: web } } }\n",
    )
    .expect("config");
    let env = [
        ("BATON_CONFIG", cfg.display().to_string()),
        ("BATON_BUCKET", "state".to_string()),
        (
            "BATON_TOPIC_ARN",
            "arn:aws:sns:us-east-1:123456789012:events".to_string(),
        ),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ACCESS_KEY_ID", "bench".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "bench".to_string()),
    ];
    let release = root().join("target/release");
    let baseline_bin = release.join("examples/minimal_lambda");
    // The first invocation: an (empty) SQS batch, which every function answers once its
    // configuration is read (it calls no AWS service, so no SDK client is built: they
    // are built on first use); the minimal function echoes it.
    const FIRST: &str = r#"{"Records":[]}"#;
    // Rounds: each round starts the minimal function and every Baton function once,
    // so a change in the machine's load during the benchmark shows on both sides of a
    // ratio rather than on one of them.
    let bins: Vec<(String, PathBuf, &Env)> =
        std::iter::once(("minimal_lambda".to_string(), baseline_bin, &[][..]))
            .chain(FUNCTIONS.iter().map(|f| {
                (
                    format!("baton-fn-{f}"),
                    release.join(format!("baton-fn-{f}")),
                    &env[..],
                )
            }))
            .collect();
    let mut runs: Vec<Vec<Start>> = bins.iter().map(|_| Vec::new()).collect();
    let mut order: Vec<usize> = (0..bins.len()).collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..RUNS {
        // A new order every round: what ran just before a start (a large process
        // still being torn down, a warm cache) falls on every binary alike.
        for i in (1..order.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            order.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        for &i in &order {
            let (_, bin, env) = &bins[i];
            runs[i].push(measure(bin, env, FIRST));
        }
    }
    let stats: Vec<Stats> = runs.into_iter().map(Stats::of).collect();
    let base = &stats[0];
    println!("cold start, {RUNS} rounds (release build; medians, and the 90th percentile):");
    println!("  first poll     = process start → first Runtime API poll (the init phase)");
    println!("  first response = process start → response to the first invocation");
    println!(
        "{:<18} {:>11} {:>9} {:>6} {:>15} {:>6} {:>10} {:>8}",
        "function", "first poll", "p90", "ratio", "first response", "ratio", "peak RSS", "size"
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for ((name, bin, _), s) in bins.iter().zip(&stats) {
        // The stripped binary's size and the peak RSS, in MiB.
        let size = std::fs::metadata(bin).map_or(0.0, |m| m.len() as f64 / 1_048_576.0);
        println!(
            "{:<18} {:>9.2}ms {:>7.2}ms {:>6.2} {:>13.2}ms {:>6.2} {:>6.1} MiB {:>5.1} MiB",
            name,
            ms(s.poll),
            ms(s.poll_p90),
            ms(s.poll) / ms(base.poll),
            ms(s.response),
            ms(s.response) / ms(base.response),
            s.rss_kib as f64 / 1024.0,
            size
        );
    }
    // What each binary links of the heavy dependencies, read from the source paths its
    // panic locations keep (`…/kube-client-5.0.0/src/…`) even when stripped.
    const HEAVY: [&str; 6] = [
        "kube-client",
        "k8s-openapi",
        "aws-sdk-lambda",
        "aws-sdk-ecr",
        "aws-sdk-iam",
        "regex-automata",
    ];
    println!("links (of {}):", HEAVY.join(", "));
    for (name, bin, _) in &bins {
        let bytes = std::fs::read(bin).unwrap_or_default();
        let linked: Vec<&str> = HEAVY
            .iter()
            .copied()
            .filter(|c| {
                let needle = format!("/{c}-");
                bytes
                    .windows(needle.len() + 1)
                    .any(|w| w.starts_with(needle.as_bytes()) && w[needle.len()].is_ascii_digit())
            })
            .collect();
        let linked = if linked.is_empty() {
            "none".to_string()
        } else {
            linked.join(", ")
        };
        println!("  {name:<18} {linked}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
