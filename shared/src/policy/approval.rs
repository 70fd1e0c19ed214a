//! Approval rules as pure functions: who may decide, N-of-M, no self-approval, expiry,
//! and what happens when the pusher is unknown. The approvals record (what the store
//! keeps) lives here too, so the rules and the record cannot drift apart; so does the
//! check deploy makes of a record before it acts ([`verify_granted`]).

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A decision an approver can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Approve,
    Reject,
}

/// Where an approval request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalStatus {
    Pending,
    Granted,
    Rejected,
    Expired,
}

impl ApprovalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Granted => "granted",
            ApprovalStatus::Rejected => "rejected",
            ApprovalStatus::Expired => "expired",
        }
    }
}

/// What a policy does when the pusher is unknown (declared with the event contract,
/// whose `approval.requested` carries it).
pub use crate::event::UnknownPusher;

/// The rules in force for one request, taken from the configuration (never from the
/// event that asked) when the request was made, so a decision is judged by the rules
/// the requester saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRules {
    pub approvers: Vec<String>,
    /// Group name → members, resolved at request time.
    pub groups: Vec<(String, Vec<String>)>,
    pub required: u32,
    pub expires_at: DateTime<Utc>,
    pub allow_self_approval: bool,
    /// Who pushed the image, when the registry said.
    pub pushed_by: Option<String>,
    /// What to do when `pushed_by` is unknown.
    #[serde(default)]
    pub unknown_pusher: UnknownPusher,
}

/// Who decides: an approver's configured name, and every identity that stands for them
/// (their IAM user ARN and name, the session names their roles enforce), for the
/// self-approval check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approver {
    pub name: String,
    pub identities: Vec<String>,
    /// How the identity was established (`token`, `proxy`, an IAM ARN, `cli`).
    pub principal: String,
}

impl Approver {
    /// An approver known by name only.
    pub fn named(name: &str) -> Approver {
        Approver {
            name: name.to_string(),
            identities: vec![],
            principal: "cli".into(),
        }
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str())
            .chain(self.identities.iter().map(String::as_str))
            .chain(std::iter::once(self.principal.as_str()))
    }
}

/// The names a pusher identity stands for: itself, and for an IAM ARN the user name or
/// the role session name (`arn:aws:sts::1:assumed-role/Dev/alice` → `alice`).
pub fn pusher_names(pushed_by: &str) -> Vec<String> {
    let mut out = vec![pushed_by.to_string()];
    if let Some(resource) = pushed_by
        .strip_prefix("arn:")
        .and_then(|r| r.splitn(5, ':').nth(4))
    {
        if let Some(rest) = resource.strip_prefix("assumed-role/")
            && let Some(session) = rest.split('/').nth(1)
        {
            out.push(session.to_string());
        } else if let Some(rest) = resource.strip_prefix("user/")
            && let Some(user) = rest.rsplit('/').next()
        {
            out.push(user.to_string());
        }
    }
    out
}

/// Whether `who` is (or may be) the pusher.
fn is_pusher(rules: &ApprovalRules, name: &str, others: &[&str]) -> bool {
    let Some(pusher) = rules.pushed_by.as_deref() else {
        return false;
    };
    let pushers = pusher_names(pusher);
    std::iter::once(name)
        .chain(others.iter().copied())
        .any(|n| pushers.iter().any(|p| p.eq_ignore_ascii_case(n)))
}

/// One recorded decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub by: String,
    pub verdict: Verdict,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// How the approver authenticated (`token`, `proxy`, the IAM ARN, `cli`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
}

/// What checking a decision concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Record the decision.
    Record,
    /// The same person already made the same decision: nothing to do.
    AlreadyRecorded,
}

/// The outcome of the decisions so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pending { have: u32, need: u32 },
    Granted { by: Vec<String> },
    Rejected { by: String, reason: String },
    Expired,
}

impl ApprovalRules {
    /// Whether `who` may decide: listed by name, or a member of a listed group.
    pub fn may_decide(&self, who: &str) -> bool {
        self.approvers.iter().any(|a| a == who)
            || self.groups.iter().any(|(_, m)| m.iter().any(|x| x == who))
    }

    fn allowed_description(&self) -> String {
        let mut parts = vec![];
        if !self.approvers.is_empty() {
            parts.push(format!("approvers {}", self.approvers.join(", ")));
        }
        for (g, m) in &self.groups {
            parts.push(format!("group {g} ({})", m.join(", ")));
        }
        parts.join("; ")
    }
}

/// Why a decision is not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A rule says no (who may decide, self-approval, expiry).
    NotAllowed(String),
    /// The approval is already granted, rejected or expired.
    Settled(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotAllowed(m) | Refusal::Settled(m) => f.write_str(m),
        }
    }
}

/// Checks one decision against the rules and the decisions so far. `Err` is the refusal,
/// one line that says why.
pub fn check(
    rules: &ApprovalRules,
    status: ApprovalStatus,
    decisions: &[DecisionRecord],
    who: &Approver,
    verdict: Verdict,
    now: DateTime<Utc>,
) -> Result<Check, Refusal> {
    let no = Refusal::NotAllowed;
    let name = who.name.as_str();
    if name.trim().is_empty() {
        return Err(no("an approver identity is required".into()));
    }
    if !rules.may_decide(name) {
        return Err(no(format!(
            "{name} may not decide this approval (allowed: {})",
            rules.allowed_description()
        )));
    }
    if status != ApprovalStatus::Pending {
        return Err(Refusal::Settled(format!(
            "this approval is already {}",
            status.as_str()
        )));
    }
    if now >= rules.expires_at {
        return Err(no(format!(
            "this approval expired at {}",
            rules
                .expires_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )));
    }
    if verdict == Verdict::Approve && !rules.allow_self_approval {
        let others: Vec<&str> = who.names().collect();
        if is_pusher(rules, name, &others) {
            return Err(no(format!(
                "{name} pushed this image and may not approve it (no self-approval)"
            )));
        }
        if rules.pushed_by.is_none() && rules.unknown_pusher == UnknownPusher::Refuse {
            return Err(no(UNKNOWN_PUSHER_REFUSED.into()));
        }
    }
    if decisions
        .iter()
        .any(|d| d.by == name && d.verdict == verdict)
    {
        return Ok(Check::AlreadyRecorded);
    }
    Ok(Check::Record)
}

/// How the no-self-approval rule stands for a request, in words (approval listings).
pub fn self_approval_rule(rules: &ApprovalRules) -> String {
    match (&rules.pushed_by, rules.allow_self_approval, rules.unknown_pusher) {
        (_, true, _) => "allowed: the pusher may approve (allow_self_approval)".into(),
        (Some(p), false, _) => format!("checked: {p} pushed and may not approve"),
        (None, false, UnknownPusher::Refuse) => {
            "refused: the source did not say who pushed, so no approval is taken (unknown_pusher: refuse)".into()
        }
        (None, false, UnknownPusher::Allow) => {
            "not checked: the source did not say who pushed (unknown_pusher: allow)".into()
        }
    }
}

/// Why no one may approve when the pusher is unknown and the policy refuses.
pub const UNKNOWN_PUSHER_REFUSED: &str = "the registry did not say who pushed this image, so no-self-approval cannot be checked, and this environment's policy refuses approvals then (approval.unknown_pusher: refuse); reject it, use a trigger that names the pusher (ECR: the CloudTrail PutImage event), or set unknown_pusher: allow";

/// What deploy checks before it acts on an `approval.granted` for an environment that
/// is not `auto`: the record is granted, nobody rejected, and at least `required`
/// distinct approvers who are `eligible` now (the configuration's approvers and group
/// members) approved before the request expired, none of them the pusher unless
/// self-approval is allowed, and the pusher rule was met. Returns who approved.
pub fn verify_granted(
    rules: &ApprovalRules,
    status: ApprovalStatus,
    decisions: &[DecisionRecord],
    eligible: &BTreeSet<String>,
    required: u32,
) -> Result<Vec<String>, String> {
    if status != ApprovalStatus::Granted {
        return Err(format!(
            "the approval record is {}, not granted",
            status.as_str()
        ));
    }
    if let Some(r) = decisions.iter().find(|d| d.verdict == Verdict::Reject) {
        return Err(format!("the approval record holds a rejection by {}", r.by));
    }
    if rules.pushed_by.is_none()
        && rules.unknown_pusher == UnknownPusher::Refuse
        && !rules.allow_self_approval
    {
        return Err(UNKNOWN_PUSHER_REFUSED.into());
    }
    let mut by: Vec<String> = vec![];
    for d in decisions.iter().filter(|d| d.verdict == Verdict::Approve) {
        let principal: Vec<&str> = d.principal.as_deref().into_iter().collect();
        let counts = d.at < rules.expires_at
            && eligible.contains(&d.by)
            && (rules.allow_self_approval || !is_pusher(rules, &d.by, &principal));
        if counts && !by.contains(&d.by) {
            by.push(d.by.clone());
        }
    }
    let need = required.max(rules.required).max(1);
    if (by.len() as u32) < need {
        return Err(format!(
            "{} valid approval(s) in the record, {need} required (approvers allowed now: {})",
            by.len(),
            eligible.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(by)
}

/// Evaluates the decisions: one rejection rejects; `required` distinct approvals grant.
pub fn outcome(rules: &ApprovalRules, decisions: &[DecisionRecord], now: DateTime<Utc>) -> Outcome {
    if let Some(r) = decisions.iter().find(|d| d.verdict == Verdict::Reject) {
        return Outcome::Rejected {
            by: r.by.clone(),
            reason: r
                .comment
                .clone()
                .unwrap_or_else(|| format!("rejected by {}", r.by)),
        };
    }
    let mut by: Vec<String> = vec![];
    for d in decisions.iter().filter(|d| d.verdict == Verdict::Approve) {
        if !by.contains(&d.by) {
            by.push(d.by.clone());
        }
    }
    if by.len() as u32 >= rules.required {
        return Outcome::Granted { by };
    }
    if now >= rules.expires_at {
        return Outcome::Expired;
    }
    Outcome::Pending {
        have: by.len() as u32,
        need: rules.required,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn rules(required: u32) -> ApprovalRules {
        ApprovalRules {
            approvers: vec!["alice".into()],
            groups: vec![("sre".into(), vec!["bob".into(), "carol".into()])],
            required,
            expires_at: Utc::now() + Duration::hours(1),
            allow_self_approval: false,
            pushed_by: Some("carol".into()),
            unknown_pusher: UnknownPusher::Refuse,
        }
    }

    fn dec(by: &str, verdict: Verdict) -> DecisionRecord {
        DecisionRecord {
            by: by.into(),
            verdict,
            at: Utc::now(),
            comment: None,
            principal: None,
        }
    }

    #[test]
    fn listed_approvers_and_group_members_may_decide() {
        let r = rules(1);
        let now = Utc::now();
        assert_eq!(
            check(
                &r,
                ApprovalStatus::Pending,
                &[],
                &Approver::named("alice"),
                Verdict::Approve,
                now
            ),
            Ok(Check::Record)
        );
        assert_eq!(
            check(
                &r,
                ApprovalStatus::Pending,
                &[],
                &Approver::named("bob"),
                Verdict::Approve,
                now
            ),
            Ok(Check::Record)
        );
        let e = check(
            &r,
            ApprovalStatus::Pending,
            &[],
            &Approver::named("mallory"),
            Verdict::Approve,
            now,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("mallory may not") && e.contains("alice") && e.contains("sre"),
            "{e}"
        );
        assert!(
            check(
                &r,
                ApprovalStatus::Pending,
                &[],
                &Approver::named(" "),
                Verdict::Approve,
                now
            )
            .is_err()
        );
    }

    #[test]
    fn no_self_approval_unless_allowed() {
        let mut r = rules(1);
        let now = Utc::now();
        let e = check(
            &r,
            ApprovalStatus::Pending,
            &[],
            &Approver::named("carol"),
            Verdict::Approve,
            now,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("self-approval"), "{e}");
        // the pusher may still reject their own image
        assert_eq!(
            check(
                &r,
                ApprovalStatus::Pending,
                &[],
                &Approver::named("carol"),
                Verdict::Reject,
                now
            ),
            Ok(Check::Record)
        );
        r.allow_self_approval = true;
        assert_eq!(
            check(
                &r,
                ApprovalStatus::Pending,
                &[],
                &Approver::named("carol"),
                Verdict::Approve,
                now
            ),
            Ok(Check::Record)
        );
    }

    #[test]
    fn expired_and_decided_requests_refuse() {
        let r = rules(1);
        let late = r.expires_at + Duration::seconds(1);
        let e = check(
            &r,
            ApprovalStatus::Pending,
            &[],
            &Approver::named("alice"),
            Verdict::Approve,
            late,
        )
        .unwrap_err();
        assert!(
            matches!(&e, Refusal::NotAllowed(m) if m.contains("expired")),
            "{e:?}"
        );
        let e = check(
            &r,
            ApprovalStatus::Granted,
            &[],
            &Approver::named("alice"),
            Verdict::Approve,
            Utc::now(),
        )
        .unwrap_err();
        assert_eq!(
            e,
            Refusal::Settled("this approval is already granted".into())
        );
        assert_eq!(outcome(&r, &[], late), Outcome::Expired);
    }

    #[test]
    fn n_of_m_counts_distinct_approvers() {
        let r = rules(2);
        let now = Utc::now();
        let d = vec![dec("alice", Verdict::Approve)];
        assert_eq!(outcome(&r, &d, now), Outcome::Pending { have: 1, need: 2 });
        assert_eq!(
            check(
                &r,
                ApprovalStatus::Pending,
                &d,
                &Approver::named("alice"),
                Verdict::Approve,
                now
            ),
            Ok(Check::AlreadyRecorded)
        );
        let d = vec![
            dec("alice", Verdict::Approve),
            dec("alice", Verdict::Approve),
        ];
        assert_eq!(outcome(&r, &d, now), Outcome::Pending { have: 1, need: 2 });
        let d = vec![dec("alice", Verdict::Approve), dec("bob", Verdict::Approve)];
        assert_eq!(
            outcome(&r, &d, now),
            Outcome::Granted {
                by: vec!["alice".into(), "bob".into()]
            }
        );
    }

    #[test]
    fn one_rejection_rejects() {
        let r = rules(2);
        let d = vec![dec("alice", Verdict::Approve), dec("bob", Verdict::Reject)];
        assert!(matches!(outcome(&r, &d, Utc::now()), Outcome::Rejected { by, .. } if by == "bob"));
    }

    #[test]
    fn an_unknown_pusher_never_switches_self_approval_off_silently() {
        let mut r = rules(1);
        r.pushed_by = None;
        let now = Utc::now();
        let e = check(
            &r,
            ApprovalStatus::Pending,
            &[],
            &Approver::named("alice"),
            Verdict::Approve,
            now,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown_pusher"), "{e}");
        // rejecting stays possible
        assert_eq!(
            check(
                &r,
                ApprovalStatus::Pending,
                &[],
                &Approver::named("alice"),
                Verdict::Reject,
                now
            ),
            Ok(Check::Record)
        );
        r.unknown_pusher = UnknownPusher::Allow;
        assert_eq!(
            check(
                &r,
                ApprovalStatus::Pending,
                &[],
                &Approver::named("alice"),
                Verdict::Approve,
                now
            ),
            Ok(Check::Record)
        );
    }

    #[test]
    fn a_pusher_known_by_iam_arn_is_the_approver_with_that_identity() {
        let mut r = rules(1);
        r.pushed_by = Some("arn:aws:sts::123456789012:assumed-role/Developers/Alice".into());
        let now = Utc::now();
        let alice = Approver {
            name: "alice".into(),
            identities: vec!["arn:aws:iam::123456789012:user/alice".into()],
            principal: "arn:aws:iam::123456789012:user/alice".into(),
        };
        let e = check(
            &r,
            ApprovalStatus::Pending,
            &[],
            &alice,
            Verdict::Approve,
            now,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("self-approval"),
            "session name alice is alice: {e}"
        );
        assert_eq!(
            pusher_names("arn:aws:iam::1:user/team/bob"),
            vec!["arn:aws:iam::1:user/team/bob".to_string(), "bob".into()]
        );
    }

    #[test]
    fn deploy_verifies_the_record_it_acts_on() {
        let r = rules(2);
        let eligible: BTreeSet<String> = ["alice", "bob", "carol"].map(String::from).into();
        let two = vec![dec("alice", Verdict::Approve), dec("bob", Verdict::Approve)];
        assert_eq!(
            verify_granted(&r, ApprovalStatus::Granted, &two, &eligible, 2),
            Ok(vec!["alice".to_string(), "bob".into()])
        );
        // a record that is not granted, one approval short, or approved by someone the
        // configuration no longer lists, does not deploy
        assert!(verify_granted(&r, ApprovalStatus::Pending, &two, &eligible, 2).is_err());
        let one = vec![
            dec("alice", Verdict::Approve),
            dec("alice", Verdict::Approve),
        ];
        assert!(verify_granted(&r, ApprovalStatus::Granted, &one, &eligible, 2).is_err());
        let mallory = vec![
            dec("alice", Verdict::Approve),
            dec("mallory", Verdict::Approve),
        ];
        assert!(verify_granted(&r, ApprovalStatus::Granted, &mallory, &eligible, 2).is_err());
        // the pusher's own approval does not count
        let carol = vec![
            dec("alice", Verdict::Approve),
            dec("carol", Verdict::Approve),
        ];
        assert!(verify_granted(&r, ApprovalStatus::Granted, &carol, &eligible, 2).is_err());
        // after expiry nothing counts; a rejection voids it
        let mut late = dec("bob", Verdict::Approve);
        late.at = r.expires_at + Duration::seconds(1);
        let d = vec![dec("alice", Verdict::Approve), late];
        assert!(verify_granted(&r, ApprovalStatus::Granted, &d, &eligible, 2).is_err());
        let d = vec![
            dec("alice", Verdict::Approve),
            dec("bob", Verdict::Approve),
            dec("carol", Verdict::Reject),
        ];
        assert!(verify_granted(&r, ApprovalStatus::Granted, &d, &eligible, 2).is_err());
        // the configuration's count wins over a smaller one in the record
        let r1 = rules(1);
        let d = vec![dec("alice", Verdict::Approve)];
        assert!(verify_granted(&r1, ApprovalStatus::Granted, &d, &eligible, 2).is_err());
    }
}
