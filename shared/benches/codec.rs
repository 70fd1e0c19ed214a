//! How long the JSON of events and stage records takes to write and read: every
//! delivery reads an event and writes its stage record three times (claim, publishing,
//! final). Prints nanoseconds per operation, the median of 9 rounds.
//!
//! `cargo bench -p baton --bench codec`

use std::path::Path;
use std::time::Instant;

use baton::event::Event;
use baton::pipeline::harness::StageRecord;
use serde_json::{Value, json};

/// Nanoseconds per call of `f`: the median of 9 rounds of `n` calls.
fn time<T>(n: u32, mut f: impl FnMut() -> T) -> f64 {
    let mut rounds: Vec<f64> = (0..9)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..n {
                std::hint::black_box(f());
            }
            start.elapsed().as_nanos() as f64 / f64::from(n)
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[4]
}

fn sample(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../events/baton")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn main() {
    let names = [
        "image.built.json",
        "tests.passed.json",
        "approval.granted.auto.json",
        "deploy.succeeded.json",
        "verification.passed.json",
        "image.promoted.json",
    ];
    let texts: Vec<String> = names.iter().map(|n| sample(n)).collect();
    let events: Vec<Event> = texts
        .iter()
        .map(|t| Event::from_json(t).unwrap_or_else(|e| panic!("a sample: {e}")))
        .collect();
    // As a deploy leaves it: claimed for approval.granted, one deploy.succeeded out.
    let input: Value = serde_json::from_str(&texts[2]).unwrap_or_default();
    let output: Value = serde_json::from_str(&texts[3]).unwrap_or_default();
    let at = "2026-12-07T10:00:00.123456789Z";
    let record: StageRecord = serde_json::from_value(json!({
        "stage": "deploy", "app": "web", "run": output["data"]["run"],
        "environment": "staging", "status": "succeeded", "attempt": 1,
        "input": {"event": input},
        "started_at": at, "updated_at": at, "finished_at": at,
        "owner": "host/1234/1765101600",
        "outputs": [output],
        "note": "staging: rewrote 1 image",
        "history": [
            {"at": at, "attempt": 1, "status": "running"},
            {"at": at, "attempt": 1, "status": "publishing"},
            {"at": at, "attempt": 1, "status": "succeeded", "note": "staging: rewrote 1 image"}
        ]
    }))
    .unwrap_or_else(|e| panic!("the stage record: {e}"));
    let record_bytes = serde_json::to_vec(&record).unwrap_or_default();

    let n = 20_000;
    let write_event = time(n, || {
        events.iter().map(|e| e.to_json().len()).sum::<usize>()
    }) / events.len() as f64;
    let read_event = time(n, || {
        texts.iter().filter(|t| Event::from_json(t).is_ok()).count()
    }) / texts.len() as f64;
    let write_record = time(n, || serde_json::to_vec(&record).map(|v| v.len()));
    let read_record = time(n, || {
        serde_json::from_slice::<StageRecord>(&record_bytes).map(|r| r.attempt)
    });
    println!("codec: ns per operation (median of 9 rounds)");
    println!(
        "  event → JSON          {write_event:>8.0} ns (mean of {} samples)",
        events.len()
    );
    println!("  JSON → event          {read_event:>8.0} ns");
    println!(
        "  stage record → JSON   {write_record:>8.0} ns ({} bytes)",
        record_bytes.len()
    );
    println!("  JSON → stage record   {read_record:>8.0} ns");
}
