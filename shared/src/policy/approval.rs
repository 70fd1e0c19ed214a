//! Approval rules as pure functions: who may decide, N-of-M, no self-approval, expiry.
//! The approvals record (what the store keeps) lives here too, so the rules and the
//! record cannot drift apart.

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

/// The rules in force for one request, copied from the configuration when the request
/// was made, so a decision is judged by the rules the requester saw.
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
}

/// One recorded decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub by: String,
    pub verdict: Verdict,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
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

/// Checks one decision against the rules and the decisions so far. `Err` is the refusal,
/// one line that says why.
pub fn check(
    rules: &ApprovalRules,
    status: ApprovalStatus,
    decisions: &[DecisionRecord],
    who: &str,
    verdict: Verdict,
    now: DateTime<Utc>,
) -> Result<Check, String> {
    if who.trim().is_empty() {
        return Err("an approver identity is required".into());
    }
    if !rules.may_decide(who) {
        return Err(format!(
            "{who} may not decide this approval (allowed: {})",
            rules.allowed_description()
        ));
    }
    if status != ApprovalStatus::Pending {
        return Err(format!("this approval is already {}", status.as_str()));
    }
    if now >= rules.expires_at {
        return Err(format!(
            "this approval expired at {}",
            rules
                .expires_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
    }
    if verdict == Verdict::Approve
        && !rules.allow_self_approval
        && rules.pushed_by.as_deref() == Some(who)
    {
        return Err(format!(
            "{who} pushed this image and may not approve it (no self-approval)"
        ));
    }
    if decisions
        .iter()
        .any(|d| d.by == who && d.verdict == verdict)
    {
        return Ok(Check::AlreadyRecorded);
    }
    Ok(Check::Record)
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
        }
    }

    fn dec(by: &str, verdict: Verdict) -> DecisionRecord {
        DecisionRecord {
            by: by.into(),
            verdict,
            at: Utc::now(),
            comment: None,
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
                "alice",
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
                "bob",
                Verdict::Approve,
                now
            ),
            Ok(Check::Record)
        );
        let e = check(
            &r,
            ApprovalStatus::Pending,
            &[],
            "mallory",
            Verdict::Approve,
            now,
        )
        .unwrap_err();
        assert!(
            e.contains("mallory may not") && e.contains("alice") && e.contains("sre"),
            "{e}"
        );
        assert!(check(&r, ApprovalStatus::Pending, &[], " ", Verdict::Approve, now).is_err());
    }

    #[test]
    fn no_self_approval_unless_allowed() {
        let mut r = rules(1);
        let now = Utc::now();
        let e = check(
            &r,
            ApprovalStatus::Pending,
            &[],
            "carol",
            Verdict::Approve,
            now,
        )
        .unwrap_err();
        assert!(e.contains("self-approval"), "{e}");
        // the pusher may still reject their own image
        assert_eq!(
            check(
                &r,
                ApprovalStatus::Pending,
                &[],
                "carol",
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
                "carol",
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
            "alice",
            Verdict::Approve,
            late,
        )
        .unwrap_err();
        assert!(e.contains("expired"), "{e}");
        let e = check(
            &r,
            ApprovalStatus::Granted,
            &[],
            "alice",
            Verdict::Approve,
            Utc::now(),
        )
        .unwrap_err();
        assert!(e.contains("already granted"), "{e}");
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
                "alice",
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
}
