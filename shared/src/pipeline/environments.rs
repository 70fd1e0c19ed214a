//! What is live where (`baton envs`, `GET /api/environments`): for each app and
//! environment, the live image, since when, by which run and whose approval (or which
//! rollback), what waits for approval there, and what stops the line (a freeze by hand
//! or by window, a rollback hold), and the last failed deploy among recent runs.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::Result;
use crate::event::Image;
use crate::pipeline::Pipeline;
use crate::pipeline::approvals::{self, ApprovalRecord};
use crate::pipeline::deployments::{self, DeployKind};
use crate::pipeline::holds;
use crate::pipeline::runs::{self, RunStatus};
use crate::pipeline::stage::StageName;
use crate::policy::approval::Verdict;
use crate::ports::Ports;
use crate::store::{approval_key, get_json};

/// Runs looked at for the last failure of each environment (newest first).
const RECENT_RUNS: usize = 200;

/// One app's environment.
#[derive(Debug, Clone, Serialize)]
pub struct EnvironmentView {
    pub app: String,
    pub environment: String,
    pub live: Option<Live>,
    /// Approvals waiting for decisions here, oldest first.
    pub pending: Vec<Pending>,
    /// Why deploys wait here now, when they do (a freeze, a window, a hold).
    pub stopped: Option<String>,
    pub held: Option<Held>,
    /// The newest of the recent runs whose deploy here failed.
    pub last_failure: Option<Failure>,
}

/// What runs in an environment.
#[derive(Debug, Clone, Serialize)]
pub struct Live {
    pub image: Image,
    pub since: DateTime<Utc>,
    pub run: crate::ids::RunId,
    /// `deploy`, or `rollback` when an operator put it back.
    pub kind: DeployKind,
    /// Who approved it (`["auto"]` under an auto policy).
    pub approved_by: Vec<String>,
}

/// An approval waiting here.
#[derive(Debug, Clone, Serialize)]
pub struct Pending {
    pub run: crate::ids::RunId,
    pub image: Image,
    pub approvals: u32,
    pub required: u32,
    pub expires_at: DateTime<Utc>,
}

/// A rollback hold.
#[derive(Debug, Clone, Serialize)]
pub struct Held {
    pub on: Image,
    pub since: DateTime<Utc>,
    pub by: Option<String>,
    pub reason: Option<String>,
}

/// A failed deploy.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub run: crate::ids::RunId,
    pub image: Option<Image>,
    pub status: RunStatus,
    pub at: Option<DateTime<Utc>>,
}

/// Every configured app × environment, in configuration order.
pub async fn view<P: Ports>(p: &Pipeline<P>) -> Result<Vec<EnvironmentView>> {
    Ok(view_and_recent(p, RECENT_RUNS).await?.0)
}

/// [`view`] with the last failures looked for among the newest `recent` runs, and those
/// runs (newest first), for a caller that shows both (the dashboard's board, which looks
/// at fewer: reading a run's records is what a view costs). The cells are read side by
/// side.
pub async fn view_and_recent<P: Ports>(
    p: &Pipeline<P>,
    recent: usize,
) -> Result<(Vec<EnvironmentView>, Vec<runs::RunSummary>)> {
    use futures::StreamExt;
    let now = p.ports.now();
    let pending = approvals::pending(p).await?;
    let recent = runs::page(p, recent.max(1), None).await?.runs;
    // By index: a stream of futures over borrowed configuration trips the compiler's
    // higher-ranked lifetime check where the handler must be Send.
    let cells: Vec<(usize, usize)> = p
        .config
        .apps
        .iter()
        .enumerate()
        .flat_map(|(a, app)| (0..app.environments.len()).map(move |e| (a, e)))
        .collect();
    let (pending_ref, recent_ref) = (&pending, &recent);
    let out: Vec<Result<EnvironmentView>> = futures::stream::iter(cells)
        .map(|(a, e)| {
            let app = &p.config.apps[a];
            cell(p, app, &app.environments[e], now, pending_ref, recent_ref)
        })
        .buffered(16)
        .collect()
        .await;
    Ok((out.into_iter().collect::<Result<Vec<_>>>()?, recent))
}

async fn cell<P: Ports>(
    p: &Pipeline<P>,
    app: &crate::config::AppConfig,
    env: &crate::config::EnvironmentConfig,
    now: DateTime<Utc>,
    pending: &[approvals::PendingApproval],
    recent: &[runs::RunSummary],
) -> Result<EnvironmentView> {
    let name = env.name.as_str();
    let live = match deployments::live(p, &app.name, name).await? {
        None => None,
        Some(l) => {
            let approved_by = match &env.approval {
                crate::config::ApprovalPolicy::Auto => vec!["auto".to_string()],
                crate::config::ApprovalPolicy::Manual(_) => {
                    let key = approval_key(&app.name, &l.run, name);
                    get_json::<_, ApprovalRecord>(p.ports.store(), &key)
                        .await?
                        .map(|(r, _)| {
                            r.decisions
                                .into_iter()
                                .filter(|d| d.verdict == Verdict::Approve)
                                .map(|d| d.by)
                                .collect()
                        })
                        .unwrap_or_default()
                }
            };
            Some(Live {
                image: l.image,
                since: l.deployed_at,
                run: l.run,
                kind: l.kind,
                approved_by,
            })
        }
    };
    let held = holds::active_hold(p, &app.name, name).await?.map(|h| Held {
        on: h.image,
        since: h.at,
        by: h.by,
        reason: h.reason,
    });
    let windows = p.config.freeze_windows(env);
    let stopped = match holds::active_freezes(p, &app.name, name).await?.first() {
        Some(f) => Some(format!("{} frozen by {}: {}", f.scope(), f.by, f.reason)),
        None => crate::policy::freeze::by_windows(&windows, now)
            .map(|f| f.reason)
            .or_else(|| {
                held.as_ref()
                    .map(|h| format!("held on {} after a rollback", h.on.tagged()))
            }),
    };
    let last_failure = recent
        .iter()
        .filter(|r| r.app == app.name)
        .find(|r| match &r.status {
            RunStatus::DeployFailed { environment, .. }
            | RunStatus::VerificationFailed { environment, .. } => environment == name,
            RunStatus::FailedAt {
                stage: StageName::Deploy,
                environment: Some(e),
            } => e == name,
            _ => false,
        })
        .map(|r| Failure {
            run: r.run.clone(),
            image: r.image.clone(),
            status: r.status.clone(),
            at: r.updated_at,
        });
    Ok(EnvironmentView {
        app: app.name.clone(),
        environment: name.to_string(),
        live,
        pending: pending
            .iter()
            .filter(|a| a.app == app.name && a.environment == name)
            .map(|a| Pending {
                run: a.run.clone(),
                image: a.image.clone(),
                approvals: a.approvals,
                required: a.required,
                expires_at: a.expires_at,
            })
            .collect(),
        stopped,
        held,
        last_failure,
    })
}
