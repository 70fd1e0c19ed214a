//! Fault suite: `baton serve` (this build) is killed with SIGKILL right after each side
//! effect of each stage (`BATON_FAIL_POINT=<stage>:<point>`: the claim, the outputs
//! fixed in the record, the deploy target changed, the event appended to the run log,
//! the event published, the record finished, the delivery acknowledged), then started
//! again on the same state directory. Every time the run must end deployed to both
//! environments with exactly one effect of each kind: one deploy per environment in the
//! history, one event of each type per environment in the run log, every stage record
//! finished, nothing left queued and nothing dead-lettered.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::registry::{Api, start_serve, start_serve_with};

const STAGE_POINTS: [&str; 6] = [
    "claimed",
    "outputs_fixed",
    "appended",
    "published",
    "recorded",
    "acked",
];

async fn crash_and_recover(stage: &str, point: &str) {
    let what = format!("{stage}:{point}");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    baton_testkit::fleet::write_config(root, 1, "faults");
    let digest = baton_testkit::build::digest(&format!("faults-{what}"));
    let body = baton_testkit::build::dist_push(
        "faults/app0",
        "1.0.0",
        &digest,
        "ci",
        chrono::Utc::now(),
        "n-1",
    );

    let port = baton_testkit::free_port();
    let mut serve = start_serve_with(root, port, &[("BATON_FAIL_POINT", &what)]).await;
    // Deliveries start as soon as the push is stored, so the fail point may end the
    // process before it answered (early in ingest; or, on a loaded machine, anywhere
    // once the deliveries outrun the answer): the push is then stored but unanswered,
    // and the restart must still process it (a sender would retry, and be
    // deduplicated). The process must then be ending at the fail point, not hanging.
    let unanswered = match Api::new(port).try_hook(&body.to_string()).await {
        Ok((status, answer)) => {
            assert_eq!(status, 202, "{what}: {answer}");
            None
        }
        Err(e) => Some(e),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if serve.0.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the fail point was never reached{}",
            unanswered
                .as_ref()
                .map(|e| format!(", and the push was not answered ({e})"))
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(serve);

    let port = baton_testkit::free_port();
    let _serve = start_serve(root, port).await;
    let api = Api::new(port);
    api.wait_status(&digest, "deployed").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let h = api.get("/healthz", "").await;
        if h["queue_depth"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{what}: work left queued: {h}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check_one_effect_each(root, &what, &digest);
}

fn check_one_effect_each(root: &Path, what: &str, digest: &str) {
    let run = baton::ids::run_id("app0", digest);
    for env in ["staging", "production"] {
        let manifest =
            std::fs::read_to_string(root.join(format!("manifests/{env}/app0/app.yaml"))).unwrap();
        assert!(manifest.contains(digest), "{what}: {env} manifest deployed");
        let deploys: Vec<Value> =
            crate::stored_under(root, &format!("deployments/app0/{env}/history/"))
                .into_iter()
                .map(|(_, text)| serde_json::from_str::<Value>(&text).unwrap())
                .filter(|h| h["run"] == run.as_str())
                .collect();
        assert_eq!(
            deploys.len(),
            1,
            "{what}: one deploy to {env}: {deploys:#?}"
        );
    }
    let objects = |under: &str| -> Vec<Value> {
        crate::stored_under(root, &format!("runs/app0/{run}/{under}/"))
            .into_iter()
            .map(|(_, text)| serde_json::from_str(&text).unwrap())
            .collect()
    };
    let mut kinds: Vec<(String, String)> = objects("events")
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_string(),
                e["data"]["environment"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    kinds.sort();
    let mut unique = kinds.clone();
    unique.dedup();
    assert_eq!(
        kinds,
        unique,
        "{what}: each event once in the run log: {:#?}",
        objects("events")
            .iter()
            .map(|e| format!(
                "{} {} {} caused by {} attempt {}",
                e["id"], e["type"], e["source"], e["data"]["causation"], e["data"]["attempt"]
            ))
            .collect::<Vec<_>>()
    );
    assert!(
        kinds.contains(&("deploy.succeeded".into(), "production".into())),
        "{what}: {kinds:?}"
    );
    for rec in objects("stages") {
        assert_eq!(
            rec["status"],
            "succeeded",
            "{what}: every stage finished: {} {} is {}\n{}",
            rec["stage"],
            rec["environment"],
            rec["status"],
            std::fs::read_to_string(root.join("serve.log")).unwrap_or_default()
        );
    }
    // What the killed process was writing is gone; nothing stray among the records.
    let store = root.join(".baton/store");
    let stray: Vec<_> = std::fs::read_dir(store.join(".tmp"))
        .unwrap()
        .flatten()
        .collect();
    assert!(stray.is_empty(), "{what}: temp files left: {stray:?}");
    let mut dirs = vec![store.join("runs"), store.join("deployments")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            assert!(
                !name.starts_with('.') || name == ".segment",
                "{what}: stray file {}",
                e.path().display()
            );
            if e.path().is_dir() {
                dirs.push(e.path());
            }
        }
    }
    let out = crate::baton(root, &["--json", "dlq", "list"]);
    assert!(out.status.success(), "{what}: {out:?}");
    let dead: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        dead.as_array().map(Vec::len),
        Some(0),
        "{what}: nothing dead-lettered: {dead}"
    );
}

async fn each_point(stage: &str, points: &[&str]) {
    for point in points {
        crash_and_recover(stage, point).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_in_ingest_loses_and_repeats_nothing() {
    each_point("ingest", &STAGE_POINTS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_in_test_loses_and_repeats_nothing() {
    each_point("test", &STAGE_POINTS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_in_gate_loses_and_repeats_nothing() {
    each_point("gate", &STAGE_POINTS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_in_deploy_loses_and_repeats_nothing() {
    let mut points = STAGE_POINTS.to_vec();
    points.insert(1, "applied");
    // Between the live record and its history entry (the entry is written again, once).
    points.insert(2, "live_recorded");
    each_point("deploy", &points).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_in_promote_loses_and_repeats_nothing() {
    // Promotion is off in this configuration: it publishes nothing.
    each_point(
        "promote",
        &["claimed", "outputs_fixed", "recorded", "acked"],
    )
    .await;
}
