//! Tag policies (which pushed tags start runs) and newer-wins ordering (which of two
//! images is newer). Pure functions with exhaustive tests.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

/// A tag policy as written in the configuration: exactly one of the three.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum TagPolicySpec {
    /// A semver range (`>=1.0.0`, `^2`, `*`); a leading `v` on tags is accepted.
    Semver(String),
    /// A glob over the whole tag (`release-*`, `v1.?.*`).
    Glob(String),
    /// A regular expression that must match the whole tag (`release-[0-9]+`).
    Regex(String),
}

/// A compiled tag policy: the configuration holds it compiled (it is read from and
/// written as its [`TagPolicySpec`]), so a push never recompiles a pattern.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "TagPolicySpec", into = "TagPolicySpec")]
pub struct TagPolicy {
    spec: TagPolicySpec,
    matcher: Matcher,
}

#[derive(Debug, Clone)]
enum Matcher {
    Semver(semver::VersionReq),
    Glob(String),
    Regex(regex_lite::Regex),
}

impl TagPolicy {
    /// Compiles the policy; the error says what is wrong with the pattern.
    pub fn compile(spec: &TagPolicySpec) -> Result<TagPolicy, String> {
        let matcher = match spec {
            TagPolicySpec::Semver(r) => {
                Matcher::Semver(semver::VersionReq::parse(r).map_err(|e| {
                    format!("{r:?} is not a semver range ({e}); e.g. \">=1.2.0, <2\" or \"*\"")
                })?)
            }
            TagPolicySpec::Glob(g) => {
                check_glob(g)
                    .map_err(|e| format!("{g:?} is not a glob ({e}); e.g. \"release-*\""))?;
                Matcher::Glob(g.clone())
            }
            TagPolicySpec::Regex(r) => Matcher::Regex(
                regex_lite::Regex::new(&format!("^(?:{r})$"))
                    .map_err(|e| format!("{r:?} is not a regular expression: {e}"))?,
            ),
        };
        Ok(TagPolicy {
            spec: spec.clone(),
            matcher,
        })
    }

    pub fn spec(&self) -> &TagPolicySpec {
        &self.spec
    }

    /// Whether a push of `tag` may start a run.
    pub fn matches(&self, tag: &str) -> bool {
        match &self.matcher {
            Matcher::Semver(req) => parse_version(tag).is_some_and(|v| req.matches(&v)),
            Matcher::Glob(g) => glob_match::glob_match(g, tag),
            Matcher::Regex(r) => r.is_match(tag),
        }
    }

    /// The version used for newer-wins ordering: only under a semver policy.
    pub fn version_of(&self, tag: &str) -> Option<semver::Version> {
        match self.matcher {
            Matcher::Semver(_) => parse_version(tag),
            _ => None,
        }
    }

    /// Human description for messages.
    pub fn describe(&self) -> String {
        match &self.spec {
            TagPolicySpec::Semver(r) => format!("semver {r}"),
            TagPolicySpec::Glob(g) => format!("glob {g}"),
            TagPolicySpec::Regex(r) => format!("regex {r}"),
        }
    }
}

impl TryFrom<TagPolicySpec> for TagPolicy {
    type Error = String;
    fn try_from(spec: TagPolicySpec) -> Result<TagPolicy, String> {
        TagPolicy::compile(&spec).map_err(|e| {
            let key = match spec {
                TagPolicySpec::Semver(_) => "semver",
                TagPolicySpec::Glob(_) => "glob",
                TagPolicySpec::Regex(_) => "regex",
            };
            format!("{key}: {e}")
        })
    }
}

impl From<TagPolicy> for TagPolicySpec {
    fn from(p: TagPolicy) -> TagPolicySpec {
        p.spec
    }
}

/// Checks a glob's brackets and braces (`glob_match` takes any text and matches a broken
/// glob against nothing, silently): every `[` and `{` closes, and nothing is left open
/// by a trailing `\`.
fn check_glob(g: &str) -> Result<(), &'static str> {
    let mut chars = g.chars();
    let mut braces = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.next().is_none() => return Err("it ends in an escape"),
            '\\' => {}
            '[' => {
                // A class: `[!…]`/`[^…]`, a `]` first is a literal, then up to the `]`.
                let mut first = true;
                loop {
                    match chars.next() {
                        None => return Err("a [ is not closed"),
                        Some('!' | '^') if first => {}
                        Some(']') if !first => break,
                        Some('\\') => {
                            chars.next();
                        }
                        Some(_) => {}
                    }
                    first = false;
                }
            }
            '{' => braces += 1,
            '}' if braces == 0 => return Err("a } closes nothing"),
            '}' => braces -= 1,
            _ => {}
        }
    }
    if braces > 0 {
        return Err("a { is not closed");
    }
    Ok(())
}

/// Parses `1.2.3` or `v1.2.3` as a semantic version.
pub fn parse_version(tag: &str) -> Option<semver::Version> {
    let t = tag.strip_prefix('v').unwrap_or(tag);
    semver::Version::parse(t).ok()
}

/// What newer-wins compares: the semantic version when the app's tag policy is semver
/// and both tags parse, otherwise the push sequence (push time in milliseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderKey {
    pub version: Option<semver::Version>,
    pub sequence: u64,
}

impl OrderKey {
    pub fn compare(&self, other: &OrderKey) -> Ordering {
        match (&self.version, &other.version) {
            (Some(a), Some(b)) => a.cmp(b).then(self.sequence.cmp(&other.sequence)),
            _ => self.sequence.cmp(&other.sequence),
        }
    }
}

/// Whether `candidate` may replace `live` without an explicit rollback.
pub fn may_replace(candidate: &OrderKey, live: &OrderKey) -> bool {
    candidate.compare(live) != Ordering::Less
}

#[cfg(test)]
mod tests {
    use super::*;

    fn semver(r: &str) -> TagPolicy {
        TagPolicy::compile(&TagPolicySpec::Semver(r.into())).unwrap()
    }

    #[test]
    fn semver_ranges() {
        let p = semver(">=1.0.0, <2");
        assert!(p.matches("1.0.0"));
        assert!(p.matches("v1.9.3"));
        assert!(!p.matches("2.0.0"));
        assert!(!p.matches("0.9.0"));
        assert!(!p.matches("latest"));
        assert!(!p.matches("1.0"), "not a full version");
        assert!(
            !p.matches("1.5.0-rc.1"),
            "pre-releases need an explicit range"
        );
        assert!(semver("*").matches("3.1.4"));
        assert_eq!(p.version_of("v1.2.3"), Some(semver::Version::new(1, 2, 3)));
    }

    #[test]
    fn glob_policy() {
        let p = TagPolicy::compile(&TagPolicySpec::Glob("release-*".into())).unwrap();
        assert!(p.matches("release-42"));
        assert!(p.matches("release-"));
        assert!(!p.matches("hotfix-1"));
        assert!(!p.matches("xrelease-1"));
        assert_eq!(p.version_of("release-1"), None);
        let p = TagPolicy::compile(&TagPolicySpec::Glob("v1.?.{0,1}".into())).unwrap();
        assert!(p.matches("v1.2.0") && p.matches("v1.3.1"));
        assert!(!p.matches("v1.2.2") && !p.matches("v1.22.0"));
        let p = TagPolicy::compile(&TagPolicySpec::Glob("rc[0-9]-[!x]*".into())).unwrap();
        assert!(p.matches("rc1-a") && !p.matches("rc1-x") && !p.matches("rca-a"));
    }

    #[test]
    fn regex_policy_matches_whole_tag() {
        let p = TagPolicy::compile(&TagPolicySpec::Regex("v[0-9]+".into())).unwrap();
        assert!(p.matches("v12"));
        assert!(!p.matches("v12-dirty"));
        assert!(!p.matches("xv12"));
    }

    #[test]
    fn bad_patterns_explain() {
        let e = TagPolicy::compile(&TagPolicySpec::Semver("~>1".into())).unwrap_err();
        assert!(e.contains("~>1") && e.contains("semver"), "{e}");
        let e = TagPolicy::compile(&TagPolicySpec::Regex("(".into())).unwrap_err();
        assert!(e.contains("regular expression"), "{e}");
        for bad in ["[", "release-[0-9", "{a,b", "a}", "v1\\"] {
            let e = TagPolicy::compile(&TagPolicySpec::Glob(bad.into())).unwrap_err();
            assert!(e.contains("glob"), "{bad}: {e}");
        }
    }

    fn key(v: Option<&str>, seq: u64) -> OrderKey {
        OrderKey {
            version: v.and_then(parse_version),
            sequence: seq,
        }
    }

    #[test]
    fn newer_wins_by_version_then_sequence() {
        // 1.2.0 pushed first, 1.1.0 pushed later: 1.1.0 must not replace 1.2.0.
        assert!(!may_replace(
            &key(Some("1.1.0"), 200),
            &key(Some("1.2.0"), 100)
        ));
        assert!(may_replace(
            &key(Some("1.2.0"), 100),
            &key(Some("1.1.0"), 200)
        ));
        // equal version: later push wins (a rebuilt image under the same version)
        assert!(may_replace(
            &key(Some("1.2.0"), 200),
            &key(Some("1.2.0"), 100)
        ));
        assert!(!may_replace(
            &key(Some("1.2.0"), 100),
            &key(Some("1.2.0"), 200)
        ));
        // no versions (glob/regex policies): push order decides
        assert!(may_replace(&key(None, 200), &key(None, 100)));
        assert!(!may_replace(&key(None, 100), &key(None, 200)));
        // mixed: fall back to push order
        assert!(!may_replace(&key(Some("9.0.0"), 100), &key(None, 200)));
        // the same key may be re-applied (idempotent)
        assert!(may_replace(&key(Some("1.0.0"), 5), &key(Some("1.0.0"), 5)));
    }
}
