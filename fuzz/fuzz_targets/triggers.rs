//! Registry notifications of every source (ECR and CloudTrail events, distribution,
//! Docker Hub, Harbor, GHCR, Quay, CDEvents, Pub/Sub, Event Grid, Alibaba ACR): the first byte picks the source, the rest is the
//! body. A parse may refuse; it may not panic, and what it accepts survives the trip
//! through the ingest queue (serialized, read back, equal).
#![no_main]

use baton::triggers::{Parsed, Trigger, TriggerKind};
use libfuzzer_sys::fuzz_target;

const KINDS: [TriggerKind; 10] = TriggerKind::ALL;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let Ok(payload) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let trigger = Trigger {
        kind: KINDS[usize::from(pick) % KINDS.len()],
        received_at: chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap_or_default(),
        payload,
    };
    if let Ok(parsed) = trigger.parse() {
        let text = serde_json::to_string(&parsed).expect("a parse serializes");
        let back: Parsed =
            serde_json::from_str(&text).expect("the queue reads back what was accepted");
        assert_eq!(back, parsed);
    }
});
