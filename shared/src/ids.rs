//! Deterministic identifiers: run ids from (app, digest), output event ids from
//! (input id, stage, output type, attempt). Pure functions, no I/O.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::reference::{ParseError, string_type};

string_type!(
    /// A run id: 16 lowercase hex digits, derived from (app, image digest), so the same
    /// digest pushed under two tags is one run.
    RunId,
    "RunId",
    "^[0-9a-f]{16}$",
    16,
    |s| {
        if is_run_id(s) {
            Ok(())
        } else {
            Err(ParseError::new(s, "a run id (16 lowercase hex digits)"))
        }
    }
);

fn sha256_hex(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    hex::encode(h.finalize())
}

/// Whether `s` is a run id: 16 lowercase hex digits.
pub fn is_run_id(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `s` is a run id or a prefix of one of at least 4 digits (what operators type).
pub fn is_run_prefix(s: &str) -> bool {
    (4..=16).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `s` is a name Baton uses in keys and paths (apps, environments, reactions,
/// webhooks): a DNS label, lowercase letters, digits and dashes, at most 63.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is a short printable label (an id a registry chose, a user name): 1 to
/// `max` bytes, no control characters.
pub fn is_label(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && !s.chars().any(char::is_control)
}

/// The run id of an image of an app: the same digest pushed under two tags is one run.
pub fn run_id(app: &str, digest: &str) -> RunId {
    RunId(sha256_hex(&["run", app, digest])[..16].to_string())
}

/// The id of an event a stage publishes. A re-run of the same attempt after a crash
/// republishes the same id, so consumers drop the duplicate; an explicit retry (attempt
/// 2, 3, …) gets fresh ids.
pub fn output_event_id(input_id: &str, stage: &str, output_type: &str, attempt: u32) -> String {
    let attempt = attempt.to_string();
    let parts: Vec<&str> = if attempt == "1" {
        vec!["event", input_id, stage, output_type]
    } else {
        vec!["event", input_id, stage, output_type, &attempt]
    };
    as_uuid(&sha256_hex(&parts))
}

/// A stable id for an arbitrary key (trigger ids, decision ids).
pub fn stable_id(parts: &[&str]) -> String {
    as_uuid(&sha256_hex(parts))
}

/// Formats 32 hex digits as an RFC 4122 name-based (version 8) UUID.
fn as_uuid(hex: &str) -> String {
    let h = &hex[..32];
    format!(
        "{}-{}-8{}-{:x}{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        (u8::from_str_radix(&h[16..17], 16).unwrap_or(0) & 0x3) | 0x8,
        &h[17..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn run_id_is_deterministic_per_app_and_digest() {
        assert_eq!(run_id("web", D1), run_id("web", D1));
        assert_ne!(run_id("web", D1), run_id("web", D2));
        assert_ne!(run_id("web", D1), run_id("api", D1));
        assert_eq!(run_id("web", D1).len(), 16);
    }

    /// Ids are stored in S3 keys, events and records, and deduplication compares them:
    /// a release that computed other ids would start every run again. These values are
    /// fixed; the sample events of `events/baton/` carry the same run id.
    #[test]
    fn ids_are_stable_across_releases() {
        assert_eq!(run_id("web", D1), "6d119607d11e3085");
        assert_eq!(
            run_id(
                "web",
                "sha256:89c8ddc0798381cf38663148bbe53b2133096cd87368441fc997d6a7c2a17405"
            ),
            "ab781cee5e2f2eae"
        );
        assert_eq!(
            output_event_id("in-1", "test", "tests.passed", 1),
            "8eaf10b9-26b6-8242-b1a8-110fc2589357"
        );
        assert_eq!(
            output_event_id("in-1", "test", "tests.passed", 2),
            "b0b87f92-50d5-835b-9739-0ed30ffd170f"
        );
        assert_eq!(
            stable_id(&["trigger", "x"]),
            "8dec32c6-ff15-8ce1-835e-b6f6a126b503"
        );
        assert!("6d119607d11e3085".parse::<RunId>().is_ok());
        assert!("6D119607D11E3085".parse::<RunId>().is_err());
        assert!("6d119607d11e308".parse::<RunId>().is_err());
    }

    #[test]
    fn output_ids_depend_on_every_input() {
        let a = output_event_id("in-1", "test", "tests.passed", 1);
        assert_eq!(a, output_event_id("in-1", "test", "tests.passed", 1));
        assert_ne!(a, output_event_id("in-2", "test", "tests.passed", 1));
        assert_ne!(a, output_event_id("in-1", "gate", "tests.passed", 1));
        assert_ne!(a, output_event_id("in-1", "test", "tests.failed", 1));
        assert_ne!(a, output_event_id("in-1", "test", "tests.passed", 2));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8");
    }
}
