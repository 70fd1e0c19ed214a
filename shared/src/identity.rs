//! Approver identities that are authenticated principals, never names a caller picks.
//!
//! On AWS the approve function URL uses `AWS_IAM` auth: Lambda puts the caller's verified
//! ARN in the request context. An approver is mapped to full principals in the
//! configuration (`serve.approvers.<name>.iam`):
//!
//! * an IAM user ARN (`arn:aws:iam::123456789012:user/alice`), matched exactly;
//! * a role ARN and the session name that role enforces
//!   (`{role: arn:aws:iam::123456789012:role/Approvers, session: alice}`): the caller's
//!   `arn:aws:sts::123456789012:assumed-role/Approvers/alice` matches when partition,
//!   account, role name and session all match. The role's trust policy must make the
//!   session name the person (`sts:RoleSessionName` = `${aws:username}`, or the
//!   identity provider's user name): anyone who can assume the role otherwise chooses it.
//!
//! Any identity not mapped is refused; so is a caller ARN whose account differs from the
//! account Lambda reports.

use std::sync::LazyLock;

use regex_lite::Regex;
use serde::{Deserialize, Serialize};

static USER_ARN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^arn:(aws|aws-cn|aws-us-gov):iam::([0-9]{12}):user/(?:[\x21-\x7e]+/)?([\w+=,.@-]{1,64})$",
    )
    .unwrap_or_else(|e| panic!("user ARN grammar: {e}"))
});
static ROLE_ARN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^arn:(aws|aws-cn|aws-us-gov):iam::([0-9]{12}):role/(?:[\x21-\x7e]+/)?([\w+=,.@-]{1,64})$",
    )
    .unwrap_or_else(|e| panic!("role ARN grammar: {e}"))
});
static ASSUMED_ROLE_ARN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^arn:(aws|aws-cn|aws-us-gov):sts::([0-9]{12}):assumed-role/([\w+=,.@-]{1,64})/([\w+=,.@-]{2,64})$")
        .unwrap_or_else(|e| panic!("assumed-role ARN grammar: {e}"))
});
static SESSION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[\w+=,.@-]{2,64}$").unwrap_or_else(|e| panic!("session grammar: {e}"))
});

/// One IAM principal that authenticates as an approver, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IamPrincipal {
    /// An IAM user ARN.
    User(String),
    /// A role ARN and the session name the role's trust policy enforces.
    Role { role: String, session: String },
}

impl IamPrincipal {
    /// Why this principal is not usable, if it is not.
    pub fn problem(&self) -> Option<String> {
        match self {
            IamPrincipal::User(arn) if !USER_ARN.is_match(arn) => Some(format!(
                "{arn:?} is not an IAM user ARN (arn:aws:iam::<account>:user/<name>); for a role give {{role, session}}"
            )),
            IamPrincipal::Role { role, .. } if !ROLE_ARN.is_match(role) => Some(format!(
                "role {role:?} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)"
            )),
            IamPrincipal::Role { session, .. } if !SESSION.is_match(session) => Some(format!(
                "session {session:?} is not a role session name (2 to 64 of letters, digits, +=,.@_-)"
            )),
            _ => None,
        }
    }

    /// Whether the verified caller ARN (and the account Lambda reports, when it does)
    /// is this principal.
    pub fn matches(&self, caller_arn: &str, caller_account: Option<&str>) -> bool {
        let account_ok = |acct: &str| caller_account.is_none_or(|a| a == acct);
        match self {
            IamPrincipal::User(arn) => {
                caller_arn == arn
                    && USER_ARN
                        .captures(caller_arn)
                        .is_some_and(|c| account_ok(&c[2]))
            }
            IamPrincipal::Role { role, session } => {
                let (Some(want), Some(got)) = (
                    ROLE_ARN.captures(role),
                    ASSUMED_ROLE_ARN.captures(caller_arn),
                ) else {
                    return false;
                };
                want[1] == got[1]
                    && want[2] == got[2]
                    && account_ok(&got[2])
                    && want[3] == got[3]
                    && session == &got[4]
            }
        }
    }

    /// Names that stand for the person behind this principal (for no-self-approval).
    pub fn names(&self) -> Vec<String> {
        match self {
            IamPrincipal::User(arn) => {
                let mut out = vec![arn.clone()];
                if let Some(c) = USER_ARN.captures(arn) {
                    out.push(c[3].to_string());
                }
                out
            }
            IamPrincipal::Role { session, .. } => vec![session.clone()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCT: &str = "123456789012";

    #[test]
    fn users_match_exactly() {
        let p = IamPrincipal::User(format!("arn:aws:iam::{ACCT}:user/alice"));
        assert!(p.problem().is_none());
        assert!(p.matches(&format!("arn:aws:iam::{ACCT}:user/alice"), Some(ACCT)));
        assert!(!p.matches(&format!("arn:aws:iam::{ACCT}:user/alice2"), Some(ACCT)));
        assert!(!p.matches("arn:aws:iam::999999999999:user/alice", None));
        assert!(!p.matches(
            &format!("arn:aws:iam::{ACCT}:user/alice"),
            Some("999999999999")
        ));
        assert_eq!(p.names()[1], "alice");
    }

    #[test]
    fn a_role_matches_only_with_its_account_role_and_session() {
        let p = IamPrincipal::Role {
            role: format!("arn:aws:iam::{ACCT}:role/teams/Approvers"),
            session: "alice".into(),
        };
        assert!(p.problem().is_none());
        let arn = |acct: &str, role: &str, s: &str| {
            format!("arn:aws:sts::{acct}:assumed-role/{role}/{s}")
        };
        assert!(p.matches(&arn(ACCT, "Approvers", "alice"), Some(ACCT)));
        // the attack: any role, a session named alice
        assert!(!p.matches(&arn(ACCT, "Deployer", "alice"), Some(ACCT)));
        assert!(!p.matches(&arn("999999999999", "Approvers", "alice"), None));
        assert!(!p.matches(&arn(ACCT, "Approvers", "mallory"), Some(ACCT)));
        assert!(!p.matches(&format!("arn:aws:iam::{ACCT}:user/alice"), Some(ACCT)));
    }

    #[test]
    fn malformed_principals_are_named() {
        assert!(IamPrincipal::User("alice".into()).problem().is_some());
        assert!(
            IamPrincipal::User(format!("arn:aws:sts::{ACCT}:assumed-role/A/alice"))
                .problem()
                .is_some()
        );
        let p = IamPrincipal::Role {
            role: format!("arn:aws:iam::{ACCT}:role/A"),
            session: "a".into(),
        };
        assert!(p.problem().unwrap().contains("session"));
    }
}
