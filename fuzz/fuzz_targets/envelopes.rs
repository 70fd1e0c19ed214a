//! The AWS envelopes a function is handed: SNS notifications, SQS batches, function URL
//! requests, and the document identification that routes them. Refusals are fine;
//! panics are not.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = baton::envelopes::event_from_sns_notification(text);
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = baton::envelopes::identify(&v);
        if let Ok(batch) = baton::envelopes::events_from_sqs(&v) {
            for (_, event) in batch {
                let _ = event;
            }
        }
        let _ = baton::envelopes::function_url_request(&v);
    }
});
