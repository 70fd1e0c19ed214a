//! The manifest rewriter: for any text, setting a workload's image either refuses
//! (not YAML, no such container, an image that is not a one-line scalar) or changes
//! exactly that scalar: every byte before and after it stays, the result parses, and the
//! workload's image reads back as exactly the reference written (nothing else can be
//! injected). Never a panic.
#![no_main]

use baton::adapters::embedded::manifest::{image_in, rewrite_text};
use baton::config::WorkloadRef;
use baton::reference::ImageRef;
use libfuzzer_sys::fuzz_target;

const IMAGES: [&str; 3] = [
    "localhost:5000/demo/web@sha256:89c8ddc0798381cf38663148bbe53b2133096cd87368441fc997d6a7c2a17405",
    "123456789012.dkr.ecr.us-east-1.amazonaws.com/team/app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
    "ghcr.io/o/r@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
];

fuzz_target!(|data: &[u8]| {
    // The first byte picks the image and the workload's container name.
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let image: ImageRef = IMAGES[usize::from(pick) % IMAGES.len()]
        .parse()
        .expect("a valid image reference");
    let w: WorkloadRef = serde_json::from_value(serde_json::json!({
        "name": if pick & 0x80 == 0 { "web" } else { "app" },
        "container": if pick & 0x40 == 0 { "app" } else { "web" },
    }))
    .expect("a valid workload");
    if let Ok(Some((out, before, after))) = rewrite_text(text, &w, &image) {
        assert_eq!(
            out[..after.start],
            text[..before.start],
            "bytes before the image kept"
        );
        assert_eq!(
            out[after.end..],
            text[before.end..],
            "bytes after the image kept"
        );
        let read = image_in(&out, &w).expect("the rewritten manifest parses");
        assert_eq!(
            read,
            Some(image.to_string()),
            "the image reads back exactly:\n{out}"
        );
    }
});
