//! Image reference parts as types, parsed once at the edge to the grammar of the OCI
//! distribution spec (`distribution/reference`): a registry host `host[:port]`, a
//! repository path of lowercase components, a tag `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`,
//! a digest `algorithm:hex`, and a whole reference `[host/]path[:tag][@digest]`.
//!
//! Whatever the source (a registry notification, a webhook, an event on the bus, the
//! configuration, a registry's answer, a manifest or a cluster), a value that is not
//! one of these never becomes one, so nothing unparsed reaches a manifest, a store key,
//! a path or a command. Every character these types admit is safe in a YAML scalar
//! (see [`yaml_scalar`]), a store key segment and an environment variable. Errors quote
//! at most the first 64 characters of the offending value, escaped.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// Why a value is not a reference part. The message names what was expected and
/// quotes a bounded, escaped excerpt of the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{excerpt} is not {expected}")]
pub struct ParseError {
    excerpt: String,
    expected: &'static str,
}

impl ParseError {
    pub(crate) fn new(value: &str, expected: &'static str) -> ParseError {
        ParseError {
            excerpt: excerpt(value),
            expected,
        }
    }
}

/// A value as an error, a log line or an HTTP response may quote it: a plain token
/// (letters, digits, `._-/:@+`, at most 64) as it is; anything else `{:?}`-escaped and cut
/// to its first 64 characters, with its length when cut.
pub fn excerpt(value: &str) -> String {
    const MAX: usize = 64;
    let count = value.chars().count();
    if (1..=MAX).contains(&count)
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:@+".contains(&b))
    {
        value.to_string()
    } else if count <= MAX {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(MAX).collect();
        format!("{head:?}… ({count} characters)")
    }
}

/// Host and port grammar: domain components (`[a-zA-Z0-9]` or
/// `[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`) joined by dots, or an IPv6 literal in brackets,
/// then an optional `:port`.
const HOST: &str = r"(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*|\[[a-fA-F0-9:]+\])(?::[0-9]{1,5})?";
/// One path component: lowercase alphanumerics separated by `.`, `_`, `__` or dashes.
const COMPONENT: &str = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*";
const TAG: &str = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}";
const DIGEST: &str = r"(?:sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})";

// The grammars above, matched by hand: every event and record read parses its image's
// parts, and a regular expression engine took a few percent of the dispatcher's CPU.
// The unit test `the_hand_written_grammar_matches_the_patterns` holds each to its
// pattern (which the JSON Schemas publish) on generated strings.

fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// `HOST`: dot-joined labels, or an IPv6 literal in brackets; then `:` and 1 to 5 digits.
fn is_host(s: &str) -> bool {
    let port = if let Some(rest) = s.strip_prefix('[') {
        let Some(end) = rest.find(']') else {
            return false;
        };
        let inner = &rest[..end];
        if inner.is_empty() || !inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        &rest[end + 1..]
    } else {
        let end = s.find(':').unwrap_or(s.len());
        let label = |l: &str| {
            let b = l.as_bytes();
            b.first().is_some_and(|&c| is_alnum(c))
                && b.last().is_some_and(|&c| is_alnum(c))
                && b.iter().all(|&c| is_alnum(c) || c == b'-')
        };
        if !s[..end].split('.').all(label) {
            return false;
        }
        &s[end..]
    };
    port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `COMPONENT`: runs of `[a-z0-9]`, separated by `.`, `_`, `__` or dashes.
fn is_component(c: &str) -> bool {
    let b = c.as_bytes();
    let lower = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        let run = i;
        while i < b.len() && lower(b[i]) {
            i += 1;
        }
        if i == run {
            return false;
        }
        if i == b.len() {
            return true;
        }
        let sep = i;
        while i < b.len() && !lower(b[i]) {
            i += 1;
        }
        let sep = &c[sep..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
}

/// Components joined by `/`.
fn is_path(s: &str) -> bool {
    s.split('/').all(is_component)
}

/// `TAG`.
fn is_tag(s: &str) -> bool {
    let b = s.as_bytes();
    b.first().is_some_and(|&c| is_alnum(c) || c == b'_')
        && b.len() <= 128
        && b.iter()
            .all(|&c| is_alnum(c) || matches!(c, b'_' | b'.' | b'-'))
}

/// `DIGEST`.
fn is_digest(s: &str) -> bool {
    let hex = |h: &str, n: usize| {
        h.len() == n
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match s.split_once(':') {
        Some(("sha256", h)) => hex(h, 64),
        Some(("sha512", h)) => hex(h, 128),
        _ => false,
    }
}

/// Longest repository path (with its host), as the distribution spec allows.
const MAX_NAME: usize = 255;

macro_rules! string_type {
    ($(#[$doc:meta])* $name:ident, $schema_name:literal, $pattern:expr, $max:expr, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                let check: fn(&str) -> Result<(), ParseError> = $check;
                check(s)?;
                Ok($name(s.to_string()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = ParseError;
            fn try_from(s: String) -> Result<Self, ParseError> {
                let check: fn(&str) -> Result<(), ParseError> = $check;
                check(&s)?;
                Ok($name(s))
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl JsonSchema for $name {
            fn inline_schema() -> bool {
                true
            }
            fn schema_name() -> Cow<'static, str> {
                Cow::Borrowed($schema_name)
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "type": "string",
                    "pattern": $pattern,
                    "maxLength": $max,
                })
            }
        }
    };
}

/// Declares a string type checked once when built or deserialized (used by
/// [`crate::ids::RunId`] too).
pub(crate) use string_type;

string_type!(
    /// A registry host, `host[:port]` (`localhost:5000`, `ghcr.io`,
    /// `123456789012.dkr.ecr.eu-west-1.amazonaws.com`).
    RegistryHost,
    "RegistryHost",
    format!("^(?:{HOST})$"),
    260,
    |s| {
        let port_ok = match s.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') && !p.contains(']') => {
                p.parse::<u16>().is_ok_and(|n| n > 0)
            }
            _ => true,
        };
        if s.len() <= 260 && is_host(s) && port_ok {
            Ok(())
        } else {
            Err(ParseError::new(s, "a registry host (host[:port])"))
        }
    }
);

string_type!(
    /// A repository path inside a registry (`team/web`): lowercase components of
    /// letters and digits, separated by `.`, `_`, `__` or dashes, joined by `/`.
    Repository,
    "Repository",
    format!("^{COMPONENT}(?:/{COMPONENT})*$"),
    255,
    |s| {
        if s.len() <= MAX_NAME && is_path(s) {
            Ok(())
        } else {
            Err(ParseError::new(
                s,
                "a repository path (lowercase components like team/web, at most 255 characters)",
            ))
        }
    }
);

string_type!(
    /// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    Tag,
    "Tag",
    format!("^{TAG}$"),
    128,
    |s| {
        if is_tag(s) {
            Ok(())
        } else {
            Err(ParseError::new(
                s,
                "a tag (letters, digits, _ . -, not starting with . or -, at most 128 characters)",
            ))
        }
    }
);

string_type!(
    /// A content digest: `sha256:` and 64, or `sha512:` and 128, lowercase hex digits.
    Digest,
    "Digest",
    format!("^{DIGEST}$"),
    135,
    |s| {
        if is_digest(s) {
            Ok(())
        } else {
            Err(ParseError::new(
                s,
                "a digest (sha256: and 64 lowercase hex digits, or sha512: and 128)",
            ))
        }
    }
);

impl Digest {
    /// The hex digits after the algorithm.
    pub fn hex(&self) -> &str {
        self.0.split_once(':').map_or(&self.0, |(_, h)| h)
    }

    /// The first 12 hex digits, for display.
    pub fn short(&self) -> &str {
        let h = self.hex();
        &h[..h.len().min(12)]
    }
}

/// A whole image reference, `[host/]path[:tag][@digest]`, as found in manifests,
/// workloads and function configurations. Displaying it gives back the same text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageRef {
    pub registry: Option<RegistryHost>,
    pub repository: Repository,
    pub tag: Option<Tag>,
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// `host/path@digest`: the digest-pinned form Baton deploys.
    pub fn pinned(registry: &RegistryHost, repository: &Repository, digest: &Digest) -> ImageRef {
        ImageRef {
            registry: Some(registry.clone()),
            repository: repository.clone(),
            tag: None,
            digest: Some(digest.clone()),
        }
    }
}

impl FromStr for ImageRef {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<ImageRef, ParseError> {
        let bad = || ParseError::new(s, "an image reference ([host/]path[:tag][@digest])");
        if s.len() > MAX_NAME + 1 + 128 + 1 + 135 {
            return Err(bad());
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d.parse::<Digest>().map_err(|_| bad())?)),
            None => (s, None),
        };
        // A tag follows the last ':' after the last '/'; an earlier ':' is a port.
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (
                    &name_tag[..at],
                    Some(name_tag[at + 1..].parse::<Tag>().map_err(|_| bad())?),
                )
            }
            None => (name_tag, None),
        };
        // The first component is a host when it has a dot or a port, or is localhost
        // (or an IPv6 literal), as in distribution/reference.
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.')
                    || first.contains(':')
                    || first.starts_with('[')
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (
                    Some(first.parse::<RegistryHost>().map_err(|_| bad())?),
                    rest,
                )
            }
            _ => (None, name),
        };
        let repository: Repository = path.parse().map_err(|_| bad())?;
        if registry.as_ref().map_or(0, |r| r.len() + 1) + repository.len() > MAX_NAME {
            return Err(bad());
        }
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl TryFrom<String> for ImageRef {
    type Error = ParseError;
    fn try_from(s: String) -> Result<ImageRef, ParseError> {
        s.parse()
    }
}

impl From<ImageRef> for String {
    fn from(r: ImageRef) -> String {
        r.to_string()
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(r) = &self.registry {
            write!(f, "{r}/")?;
        }
        f.write_str(&self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl JsonSchema for ImageRef {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("ImageRef")
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "maxLength": 521 })
    }
}

/// How a YAML scalar is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarStyle {
    Plain,
    SingleQuoted,
    DoubleQuoted,
}

/// The text of `r` as a YAML scalar replacing one of `style` (without its quotes for
/// quoted styles): always a single token that reads back as exactly `r`. A reference
/// admits only `[A-Za-z0-9._/:@[]-]`, none of which needs escaping inside quotes; the one
/// plain scalar YAML would misread is one that starts with `[` (an IPv6 host), which is
/// returned single-quoted, with `requoted` set.
pub fn yaml_scalar(r: &ImageRef, style: ScalarStyle) -> (String, bool) {
    let text = r.to_string();
    debug_assert!(
        text.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/:@[]-".contains(&b))
    );
    if style == ScalarStyle::Plain && text.starts_with('[') {
        (format!("'{text}'"), true)
    } else {
        (text, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written matchers agree with the published patterns on every string
    /// generated: 400,000 of them from the characters that matter (and some that must
    /// not pass), shaped around valid values, so each branch is taken both ways.
    #[test]
    fn the_hand_written_grammar_matches_the_patterns() {
        let anchored =
            |body: &str| regex_lite::Regex::new(&format!("^(?:{body})$")).expect("a pattern");
        type Grammar = (
            &'static str,
            regex_lite::Regex,
            fn(&str) -> bool,
            &'static [&'static str],
        );
        let grammars: [Grammar; 4] = [
            (
                "host",
                anchored(HOST),
                is_host,
                &["localhost:5000", "a.b-c.io", "[::1]:443", "127.0.0.1"],
            ),
            (
                "path",
                anchored(&format!("{COMPONENT}(?:/{COMPONENT})*")),
                is_path,
                &["team/web", "a.b__c--d/e_f", "x0-9"],
            ),
            (
                "tag",
                anchored(TAG),
                is_tag,
                &["v1.2.3-rc_1", "_x", "latest"],
            ),
            (
                "digest",
                anchored(DIGEST),
                is_digest,
                &["sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"],
            ),
        ];
        const CHARS: &[u8] = b"aZz09.-_:/[]@fF ";
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for (name, re, hand, samples) in &grammars {
            let mut agreed = [0usize; 2];
            for i in 0..100_000 {
                let s: String = if i % 2 == 0 {
                    let len = next(12);
                    (0..len).map(|_| CHARS[next(CHARS.len())] as char).collect()
                } else {
                    // A valid sample with one to three characters changed, added or cut.
                    let mut b = samples[next(samples.len())].as_bytes().to_vec();
                    for _ in 0..1 + next(3) {
                        let at = next(b.len() + 1);
                        match next(3) {
                            0 if at < b.len() => b[at] = CHARS[next(CHARS.len())],
                            1 => b.insert(at, CHARS[next(CHARS.len())]),
                            _ if at < b.len() => {
                                b.remove(at);
                            }
                            _ => {}
                        }
                    }
                    String::from_utf8_lossy(&b).into_owned()
                };
                let (want, got) = (re.is_match(&s), hand(&s));
                assert_eq!(got, want, "{name}: {s:?}");
                agreed[usize::from(want)] += 1;
            }
            assert!(
                agreed[0] > 1_000 && agreed[1] > 1_000,
                "{name}: both outcomes are exercised: {agreed:?}"
            );
        }
    }

    #[test]
    fn hosts() {
        for ok in [
            "localhost",
            "localhost:5000",
            "ghcr.io",
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
            "127.0.0.1:5000",
            "[::1]:5000",
            "registry-1.docker.io",
        ] {
            assert!(ok.parse::<RegistryHost>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "evil\nsecurityContext:",
            "host/path",
            "-lead.example",
            "trail-.example",
            "a b",
            "host:99999",
            "host:0",
            "host:",
            "ex\"ample",
            &"a".repeat(300),
        ] {
            assert!(bad.parse::<RegistryHost>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn repositories() {
        for ok in ["web", "team/web", "a/b/c", "my-app", "my__app", "a.b_c--d"] {
            assert!(ok.parse::<Repository>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Team/web",
            "team//web",
            "/web",
            "web/",
            "team/web:1.0",
            "team/web@sha256:x",
            "-web",
            "web\n",
            "../etc",
            "a/../b",
            &"a".repeat(256),
        ] {
            assert!(bad.parse::<Repository>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tags() {
        for ok in ["1.0.0", "latest", "_x", "v1.2.3-rc.1", &"a".repeat(128)] {
            assert!(ok.parse::<Tag>().is_ok(), "{ok}");
        }
        let long = "a".repeat(200_000);
        for bad in [
            "",
            ".x",
            "-x",
            "a b",
            "a:b",
            "a/b",
            "x\ny",
            &"a".repeat(129),
            &long,
        ] {
            assert!(bad.parse::<Tag>().is_err(), "{}", excerpt(bad));
        }
        let e = long.parse::<Tag>().unwrap_err().to_string();
        assert!(e.len() < 200, "errors quote a bounded excerpt: {e}");
        assert!(e.contains("200000 characters"), "{e}");
    }

    #[test]
    fn digests() {
        let d: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        assert_eq!(d.short(), "abababababab");
        assert_eq!(d.hex().len(), 64);
        assert!(
            format!("sha512:{}", "0".repeat(128))
                .parse::<Digest>()
                .is_ok()
        );
        for bad in [
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("md5:{}", "a".repeat(32)),
            "sha256:abc".to_string(),
            format!("sha256:{}\n", "a".repeat(64)),
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn references_round_trip() {
        let d = format!("sha256:{}", "c".repeat(64));
        for ok in [
            "nginx".to_string(),
            "nginx:1.25".to_string(),
            "example/app:0.0.1".to_string(),
            "localhost:5000/demo/web".to_string(),
            format!("localhost:5000/demo/web@{d}"),
            format!("127.0.0.1:5000/demo/web:1.0.0@{d}"),
            format!("[::1]:5000/web@{d}"),
        ] {
            let r: ImageRef = ok.parse().unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(r.to_string(), ok);
        }
        let r: ImageRef = format!("localhost:5000/demo/web@{d}").parse().unwrap();
        assert_eq!(r.registry.as_ref().unwrap().as_str(), "localhost:5000");
        assert_eq!(r.repository.as_str(), "demo/web");
        assert!(r.tag.is_none());
        for bad in [
            "",
            "a b",
            "Web",
            "web:",
            "web@sha256:1",
            "evil\n  securityContext:\n    privileged: true\nx/web",
            "host/web:tag with space",
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn yaml_scalars_are_single_tokens() {
        let d = format!("sha256:{}", "c".repeat(64));
        let r: ImageRef = format!("localhost:5000/demo/web@{d}").parse().unwrap();
        assert_eq!(yaml_scalar(&r, ScalarStyle::Plain), (r.to_string(), false));
        let v6: ImageRef = format!("[::1]:5000/web@{d}").parse().unwrap();
        let (text, requoted) = yaml_scalar(&v6, ScalarStyle::Plain);
        assert!(requoted);
        let back: serde_json::Value = serde_yaml_ng::from_str(&format!("image: {text}")).unwrap();
        assert_eq!(back["image"], v6.to_string());
    }

    #[test]
    fn serde_parses_at_deserialization() {
        let ok: Tag = serde_json::from_str("\"1.0.0\"").unwrap();
        assert_eq!(ok, "1.0.0");
        let e = serde_json::from_str::<Tag>("\"1.0.0\\nprivileged: true\"").unwrap_err();
        assert!(e.to_string().contains("is not a tag"), "{e}");
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"1.0.0\"");
    }
}
