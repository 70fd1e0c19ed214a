//! Baton events as read from the bus (a trust boundary): refused or parsed, never a
//! panic; what parses serializes and parses back to the same event.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(event) = baton::event::Event::from_json(text) {
        let again = serde_json::to_string(&event).expect("an event serializes");
        let back = baton::event::Event::from_json(&again).expect("an event reads back");
        assert_eq!(back.id, event.id);
        assert_eq!(back.ctx(), event.ctx());
    }
});
