//! Soak: `baton serve` (this build) takes pushes over HTTP for many apps, batch after
//! batch, and its resident memory follows the work in flight, not the history of runs.
//! Prints the figures; asserts the growth bound and that every run deployed.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::registry::{Api, start_serve};

const APPS: usize = 20;

/// Pushes `BATCHES` × `BATCH` images (each a run through test, staging and production)
/// and samples RSS after each batch has been processed. The second half of the runs may
/// not grow RSS by more than 10%, nor may the bus's files grow with history. The first
/// half is warm-up: RSS grows in steps of 1–3 MiB over the first thousand runs and takes
/// one of about 7 MiB between 1,100 and 1,600 (debug build, 20 apps; measured with the
/// code of 2026-12-07 and 2026-12-08 alike), then stays within a few MiB up to 20,000
/// runs. So the default is 4,000 runs, whose half is past that step; CI's earlier 1,200
/// measured the warm-up (60.4 MiB at 300 runs, 66.9 MiB at 1,200; and 65.4 MiB at 600,
/// 72.2 MiB at 1,200 in another run).
#[tokio::test(flavor = "multi_thread")]
async fn memory_follows_work_in_flight_not_history() {
    const BATCH: usize = 100;
    let batches: usize = std::env::var("BATON_SOAK_BATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    baton_testkit::fleet::write_config(root, APPS, "soak");
    let port = baton_testkit::free_port();
    let serve = start_serve(root, port).await;
    let pid = serve.0.id();
    let api = Api::new(port);
    let health = || async {
        api.client
            .get(format!("{}/healthz", api.base))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let started = Instant::now();
    let mut samples = vec![];
    for b in 0..batches {
        for i in 0..BATCH {
            let n = b * BATCH + i;
            let app = n % APPS;
            let tag = format!("1.{}.0", n / APPS);
            let digest = baton_testkit::build::digest(&format!("soak-{n}"));
            let body = baton_testkit::build::dist_push(
                &format!("soak/app{app}"),
                &tag,
                &digest,
                "ci",
                chrono::Utc::now(),
                &format!("n-{n}"),
            );
            let (status, answer) = api.hook(&body.to_string()).await;
            assert_eq!(status, 202, "{answer}");
        }
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let h = health().await;
            if h["queue_depth"] == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "batch {b} not processed: {h}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let runs = (b + 1) * BATCH;
        let rss = baton_testkit::fleet::proc_kib(pid, "VmRSS");
        let bus = baton_testkit::fleet::usage(&root.join(".baton/bus")).bytes;
        let state = baton_testkit::fleet::usage(&root.join(".baton")).bytes;
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "soak: {runs:>6} runs  {:>7.0} runs/min  RSS {:>6.1} MiB  bus {:>6.1} MiB  state {:>7.1} MiB",
            runs as f64 / elapsed * 60.0,
            rss as f64 / 1024.0,
            bus as f64 / 1_048_576.0,
            state as f64 / 1_048_576.0
        );
        samples.push((runs, rss, bus));
    }
    // Every app's production manifest carries its last pushed image.
    for app in 0..APPS {
        let last = (0..batches * BATCH)
            .rev()
            .find(|n| n % APPS == app)
            .unwrap();
        let digest = baton_testkit::build::digest(&format!("soak-{last}"));
        let m =
            std::fs::read_to_string(root.join(format!("manifests/production/app{app}/app.yaml")))
                .unwrap();
        assert!(m.contains(&digest), "app{app} deployed its last push: {m}");
    }
    // Listing reads one page, whatever the history: time GET /runs?limit=50.
    let mut times = vec![];
    let mut next = None;
    for i in 0..20 {
        let url = match (&next, i % 2) {
            (Some(after), 1) => format!("{}/runs?limit=50&after={after}", api.base),
            _ => format!("{}/runs?limit=50", api.base),
        };
        let t = Instant::now();
        let r = api
            .client
            .get(url)
            .bearer_auth(crate::registry::READER_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        next = r
            .headers()
            .get("baton-next-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let page: Vec<Value> = r.json().await.unwrap();
        times.push(t.elapsed());
        assert_eq!(page.len(), 50);
        assert!(
            next.is_some(),
            "more pages after 50 of {} runs",
            batches * BATCH
        );
    }
    times.sort();
    println!(
        "soak: GET /runs?limit=50 at {} runs: median {:?}, max {:?} (debug build)",
        batches * BATCH,
        times[times.len() / 2],
        times[times.len() - 1]
    );
    for bad in ["limit=0", "limit=5000", "after=..%2F..%2Fetc"] {
        let r = api
            .client
            .get(format!("{}/runs?{bad}", api.base))
            .bearer_auth(crate::registry::READER_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{bad}");
    }
    let half = samples[(samples.len() / 2).max(1) - 1];
    let last = samples[samples.len() - 1];
    assert!(
        last.1 as f64 <= half.1 as f64 * 1.10,
        "RSS grew with history: {} KiB after {} runs, {} KiB after {} runs",
        half.1,
        half.0,
        last.1,
        last.0
    );
    assert!(
        last.2 <= baton::adapters::embedded::bus::COMPACT_AFTER * 3,
        "the bus's files are bounded: {} bytes",
        last.2
    );
}
