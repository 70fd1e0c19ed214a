//! Cold start of every function binary: the time from process start to its first poll
//! of the Lambda Runtime API (`GET /2018-06-01/runtime/invocation/next`), and its peak
//! RSS at that moment, next to a minimal `lambda_runtime` function. Prints a table.
//!
//! Run: `cargo bench -p baton-cli --bench cold_start` (builds the release binaries
//! first). Figures depend on the machine; compare the ratio.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const RUNS: usize = 15;
const FUNCTIONS: [&str; 7] = [
    "ingest", "test", "gate", "approve", "deploy", "promote", "notify",
];

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

/// Starts `bin` against a loopback Runtime API; returns (time to first poll, peak RSS).
fn measure(bin: &Path, env: &[(&str, String)]) -> (Duration, u64) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((stream, _)) = listener.accept() {
            let mut line = String::new();
            let _ = BufReader::new(&stream).read_line(&mut line);
            if line.contains("/runtime/invocation/next") {
                let _ = tx.send(Instant::now());
            }
            // Hold the connection open: the function waits for work, as in Lambda.
            std::thread::sleep(Duration::from_secs(2));
        }
    });
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
    let polled = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the function never polled the Runtime API");
    let rss = peak_rss_kib(child.id()).unwrap_or(0);
    let _ = child.kill();
    let _ = child.wait();
    (polled - start, rss)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--workspace", "--bins", "--quiet"])
        .current_dir(root())
        .status()
        .expect("cargo build");
    assert!(status.success());
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "baton-shared",
            "--features",
            "aws",
            "--example",
            "minimal_lambda",
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
    let env = vec![
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
    let base: Vec<(Duration, u64)> = (0..RUNS).map(|_| measure(&baseline_bin, &[])).collect();
    let base_median = median(base.iter().map(|x| x.0).collect());
    let base_rss = base.iter().map(|x| x.1).max().unwrap_or(0);
    println!(
        "cold start: process start → first Runtime API poll, median of {RUNS} runs (release build)"
    );
    println!(
        "{:<18} {:>10} {:>8} {:>12} {:>10}",
        "function", "median", "ratio", "peak RSS", "size"
    );
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len() as f64 / 1_048_576.0)
            .unwrap_or(0.0)
    };
    println!(
        "{:<18} {:>8.2}ms {:>8} {:>9.1} MB {:>7.1} MB",
        "minimal_lambda",
        base_median.as_secs_f64() * 1000.0,
        "1.00",
        base_rss as f64 / 1024.0,
        size(&baseline_bin)
    );
    for f in FUNCTIONS {
        let bin = release.join(format!("baton-fn-{f}"));
        let runs: Vec<(Duration, u64)> = (0..RUNS).map(|_| measure(&bin, &env)).collect();
        let m = median(runs.iter().map(|x| x.0).collect());
        let rss = runs.iter().map(|x| x.1).max().unwrap_or(0);
        println!(
            "{:<18} {:>8.2}ms {:>8.2} {:>9.1} MB {:>7.1} MB",
            format!("baton-fn-{f}"),
            m.as_secs_f64() * 1000.0,
            m.as_secs_f64() / base_median.as_secs_f64(),
            rss as f64 / 1024.0,
            size(&bin)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
