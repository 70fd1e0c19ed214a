//! Approval records: `approvals/<app>/<run>/<env>.json`, one per request, holding the
//! rules in force (taken from the configuration, never from the event that asked) and
//! every decision. Only the approve stage writes them; deploy acts on a non-`auto`
//! environment only after [`verify`] found its record granted.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::event::{Event, Image, Payload, RunContext};
use crate::pipeline::Pipeline;
use crate::policy::approval::{ApprovalRules, ApprovalStatus, DecisionRecord};
use crate::ports::{ObjectStore, Ports};
use crate::store::{OPEN_APPROVALS, get_json};

/// An approval request and its decisions, at `approvals/<app>/<run>/<env>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    pub app: String,
    pub run: crate::ids::RunId,
    pub environment: String,
    pub status: ApprovalStatus,
    /// The `approval.requested` event this record answers.
    pub request: Event,
    pub rules: ApprovalRules,
    pub decisions: Vec<DecisionRecord>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The rules of a request, from the configuration of its environment. The expiry is
/// the one the request names, but never later than the policy allows from now.
pub fn rules_from_config(
    config: &Config,
    ctx: &crate::event::RunContext,
    env: &str,
    requested_expiry: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<ApprovalRules> {
    let environment = config.app(&ctx.app)?.environment(env)?;
    let crate::config::ApprovalPolicy::Manual(m) = &environment.approval else {
        return Err(Error::Refused(format!(
            "{env} of {} is approved automatically (approval: auto); an approval.requested for it is not the gate's",
            ctx.app
        )));
    };
    let longest = now
        .checked_add_signed(
            chrono::Duration::from_std(m.expires_after).unwrap_or(chrono::Duration::days(1)),
        )
        .unwrap_or(now);
    Ok(ApprovalRules {
        approvers: m.approvers.clone(),
        groups: m
            .groups
            .iter()
            .map(|g| (g.clone(), config.groups.get(g).cloned().unwrap_or_default()))
            .collect(),
        required: m.required,
        expires_at: requested_expiry.min(longest),
        allow_self_approval: m.allow_self_approval,
        pushed_by: ctx.pushed_by.clone(),
        unknown_pusher: m.unknown_pusher,
    })
}

/// An approval waiting for decisions (`GET /approvals`).
#[derive(Debug, Clone, Serialize)]
pub struct PendingApproval {
    pub app: String,
    pub run: crate::ids::RunId,
    pub environment: String,
    pub image: Image,
    pub approvals: u32,
    pub required: u32,
    pub approvers: Vec<String>,
    pub groups: Vec<String>,
    pub expires_at: DateTime<Utc>,
    pub pushed_by: Option<String>,
    /// How no-self-approval stands: checked against the pusher, allowed, or (when the
    /// source did not say who pushed) refused or not checked, as the policy says.
    pub self_approval: String,
    pub url: Option<String>,
}

/// The record keys of the approval requests open now: from the markers of the days
/// that have not passed yet (up to the longest `expires_after` configured ahead), so
/// the cost follows the requests of those days, not the history.
async fn open_record_keys<P: Ports>(p: &Pipeline<P>, now: DateTime<Utc>) -> Result<Vec<String>> {
    let longest = p
        .config
        .apps
        .iter()
        .flat_map(|a| &a.environments)
        .filter_map(|e| match &e.approval {
            crate::config::ApprovalPolicy::Manual(m) => Some(m.expires_after),
            crate::config::ApprovalPolicy::Auto => None,
        })
        .max()
        .unwrap_or_default();
    let days = longest.as_secs().div_ceil(86_400) as i64;
    let mut keys = BTreeSet::new();
    for d in 0..=days {
        let Some(day) = now.checked_add_signed(chrono::Duration::days(d)) else {
            break;
        };
        let prefix = format!("{OPEN_APPROVALS}{}/", day.format("%Y-%m-%d"));
        for marker in p.ports.store().list(&prefix).await? {
            if let Some(rest) = marker[prefix.len()..].strip_suffix(".json") {
                keys.insert(format!("approvals/{rest}.json"));
            }
        }
    }
    Ok(keys.into_iter().collect())
}

/// Approvals still waiting for decisions, oldest first.
pub async fn pending<P: Ports>(p: &Pipeline<P>) -> Result<Vec<PendingApproval>> {
    let store = p.ports.store();
    let now = p.ports.now();
    let mut out = vec![];
    for key in open_record_keys(p, now).await? {
        let Some((rec, _)) = get_json::<_, ApprovalRecord>(store, &key).await? else {
            continue;
        };
        if rec.status != crate::policy::approval::ApprovalStatus::Pending
            || rec.rules.expires_at <= now
        {
            continue;
        }
        let approvals = rec
            .decisions
            .iter()
            .filter(|d| d.verdict == crate::policy::approval::Verdict::Approve)
            .map(|d| d.by.as_str())
            .collect::<BTreeSet<_>>()
            .len() as u32;
        let url = match &rec.request.payload {
            Payload::ApprovalRequested(r) => r.url.clone(),
            _ => None,
        };
        let self_approval = crate::policy::approval::self_approval_rule(&rec.rules);
        out.push(PendingApproval {
            image: rec.request.ctx().image.clone(),
            app: rec.app,
            run: rec.run,
            environment: rec.environment,
            approvals,
            required: rec.rules.required,
            approvers: rec.rules.approvers,
            groups: rec.rules.groups.into_iter().map(|(g, _)| g).collect(),
            expires_at: rec.rules.expires_at,
            self_approval,
            pushed_by: rec.rules.pushed_by,
            url,
        });
    }
    out.sort_by_key(|a| a.expires_at);
    Ok(out)
}

/// Checks the approvals record behind an `approval.granted` for a manual environment;
/// a refusal names what is wrong and nothing is deployed.
pub async fn verify<P: Ports>(
    p: &Pipeline<P>,
    input: &Event,
    ctx: &RunContext,
    env: &str,
    m: &crate::config::ManualApproval,
) -> Result<()> {
    let refuse = |why: String| {
        tracing::error!(run = %ctx.run, app = %ctx.app, env = %env, event = %input.id,
            source = %input.source, %why, "approval.granted refused: not backed by a valid approvals record");
        Error::Refused(format!(
            "deploy of run {} to {env} refused: {why}; nothing was deployed",
            ctx.run
        ))
    };
    if let Payload::ApprovalGranted(g) = &input.payload
        && g.policy == crate::event::GrantPolicy::Auto
    {
        return Err(refuse(format!(
            "the event claims automatic approval, but {env} requires approvers"
        )));
    }
    let key = crate::store::approval_key(&ctx.app, &ctx.run, env);
    let Some((rec, _)) = get_json::<_, ApprovalRecord>(p.ports.store(), &key).await? else {
        return Err(refuse(format!("there is no approvals record ({key})")));
    };
    if rec.app != ctx.app || rec.run != ctx.run || rec.environment != env {
        return Err(refuse(format!(
            "the approvals record at {key} is for {}/{} in {}",
            rec.app, rec.run, rec.environment
        )));
    }
    if rec.request.ctx().image.digest != ctx.image.digest {
        return Err(refuse(format!(
            "the approvals record is for {}, not {}",
            rec.request.ctx().image.short_digest(),
            ctx.image.short_digest()
        )));
    }
    let eligible = p.config.eligible(m);
    crate::policy::approval::verify_granted(
        &rec.rules,
        rec.status,
        &rec.decisions,
        &eligible,
        m.required,
    )
    .map(|by| {
        tracing::info!(run = %ctx.run, env = %env, approvers = %by.join(", "), "approval verified");
    })
    .map_err(refuse)
}
