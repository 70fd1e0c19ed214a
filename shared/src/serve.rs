//! `baton serve`: the always-on local form of Baton. An HTTP server (axum) that takes
//! registry webhooks, approval decisions and status queries, and a dispatcher that
//! delivers the embedded bus to the stages.
//!
//! * `POST /hooks/<name>`: a registry notification. Authenticated as its source
//!   documents (401 otherwise, logged without the secret); malformed bodies get 400 with
//!   the reason and are kept under `deadletters/webhooks/` in the store; accepted ones are
//!   written to the durable bus and answered 202 at once, so a crash after 202 loses
//!   nothing.
//! * `GET /approvals`, `POST /approvals/<run>/<env>` (`{"decision": "approve"|"reject",
//!   "comment": …}`): the approver is who the request authenticates as (a per-approver
//!   bearer token, or a trusted proxy's identity header from loopback), never the body.
//! * `GET /runs`, `GET /runs/<run>`: JSON status. `GET /healthz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Notify;

use crate::embedded::DrainOptions;
use crate::error::{Error, Result};
use crate::local::Local;
use crate::policy::approval::Verdict;
use crate::ports::{ObjectStore, Precondition};
use crate::stages::approve::Decision;
use crate::webhooks::{Endpoint, RequestParts, same};

/// The server and its dispatcher.
pub struct Server {
    pub local: Arc<Local>,
    endpoints: Vec<Endpoint>,
    approvers: Vec<(String, String)>,
    identity_header: Option<String>,
    wake: Notify,
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn error_reply(e: &Error) -> Response {
    let status = match e {
        Error::Invalid { .. } => StatusCode::BAD_REQUEST,
        Error::NotFound { .. } => StatusCode::NOT_FOUND,
        Error::Refused(m) if m.contains("already") => StatusCode::CONFLICT,
        Error::Refused(_) => StatusCode::FORBIDDEN,
        Error::Transient { .. } | Error::Conflict { .. } => StatusCode::SERVICE_UNAVAILABLE,
        Error::Permanent { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    reply(status, json!({ "error": e.to_string(), "kind": e.kind() }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    decision: Verdict,
    #[serde(default)]
    comment: Option<String>,
}

impl Server {
    /// Resolves every webhook and approver secret from the environment; a missing one
    /// is an error naming its variable.
    pub fn new(local: Local) -> Result<Server> {
        let cfg = local.pipeline.config.serve.clone();
        let endpoints = cfg
            .webhooks
            .iter()
            .map(Endpoint::from_config)
            .collect::<Result<Vec<_>>>()?;
        let approvers = cfg
            .approvers
            .iter()
            .map(|(who, t)| {
                std::env::var(&t.token_env)
                    .map(|tok| (who.clone(), tok))
                    .map_err(|_| {
                        Error::invalid(
                            format!("approver {who}"),
                            format!("environment variable {} (serve.approvers.{who}.token_env) is not set", t.token_env),
                        )
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Server {
            local: Arc::new(local),
            endpoints,
            approvers,
            identity_header: cfg.identity_header,
            wake: Notify::new(),
        })
    }

    /// The webhook endpoints, for the start-up banner.
    pub fn endpoints(&self) -> impl Iterator<Item = (&str, &'static str)> {
        self.endpoints
            .iter()
            .map(|e| (e.name.as_str(), e.source.as_str()))
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/hooks/{name}", post(hook))
            .route("/approvals", get(list_approvals))
            .route("/approvals/{run}/{env}", post(decide))
            .route("/runs", get(list_runs))
            .route("/runs/{run}", get(show_run))
            .with_state(self.clone())
    }

    /// Serves until `shutdown` completes; the dispatcher runs beside the server.
    pub async fn run(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let dispatcher = {
            let s = self.clone();
            tokio::spawn(async move { s.dispatch_forever().await })
        };
        let app = self
            .router()
            .into_make_service_with_connect_info::<SocketAddr>();
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| Error::transient("serve HTTP", e));
        dispatcher.abort();
        result
    }

    async fn dispatch_forever(&self) {
        let mut warned = false;
        loop {
            let result = self
                .local
                .drain(&DrainOptions::default(), |d| {
                    tracing::info!(subscription = %d.subscription, id = %d.message.id,
                        outcome = ?d.outcome, ms = d.elapsed.as_millis() as u64, "delivered");
                })
                .await;
            match result {
                Ok(_) => warned = false,
                Err(Error::Refused(msg)) => {
                    if !warned {
                        tracing::warn!(%msg, "not delivering for now");
                        warned = true;
                    }
                }
                Err(e) => tracing::error!(error = %e, "dispatcher error; retrying"),
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Who a request authenticates as, if anyone.
    fn identity(&self, headers: &HeaderMap, peer: SocketAddr) -> Option<String> {
        if let Some(token) = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            return self
                .approvers
                .iter()
                .find(|(_, t)| same(t.as_bytes(), token.trim().as_bytes()))
                .map(|(who, _)| who.clone());
        }
        let header = self.identity_header.as_ref()?;
        if !peer.ip().is_loopback() {
            return None;
        }
        headers
            .get(header.as_str())
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    async fn dead_letter(&self, webhook: &str, body: &[u8], error: &Error) {
        let now = Utc::now();
        let key = format!(
            "deadletters/webhooks/{webhook}/{:013}-{}.json",
            now.timestamp_millis(),
            &crate::ids::stable_id(&[webhook, &String::from_utf8_lossy(body)])[..8]
        );
        let record = json!({
            "received_at": now,
            "webhook": webhook,
            "error": error.to_string(),
            "body": String::from_utf8_lossy(body),
        });
        let bytes = serde_json::to_vec_pretty(&record).unwrap_or_default();
        if let Err(e) = self
            .local
            .pipeline
            .ports
            .store
            .put(&key, bytes, Precondition::None)
            .await
        {
            tracing::error!(%key, error = %e, "could not keep the malformed webhook body");
        }
    }
}

async fn hook(
    State(s): State<Arc<Server>>,
    Path(name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(ep) = s.endpoints.iter().find(|e| e.name == name) else {
        return reply(
            StatusCode::NOT_FOUND,
            json!({ "error": format!("no webhook named {name}") }),
        );
    };
    let auth = {
        let header = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        ep.authenticate(&RequestParts {
            header: &header,
            query: query.as_deref(),
            body: &body,
        })
    };
    if let Err(why) = auth {
        tracing::warn!(webhook = %name, %peer, reason = %why.0, "webhook refused");
        return reply(StatusCode::UNAUTHORIZED, json!({ "error": "unauthorized" }));
    }
    match ep.trigger(&body, Utc::now()) {
        Err(e) => {
            tracing::warn!(webhook = %name, error = %e, "malformed webhook kept as a dead letter");
            s.dead_letter(&name, &body, &e).await;
            error_reply(&e)
        }
        Ok((trigger, parsed)) => {
            let pushes: Vec<_> = parsed
                .pushes
                .iter()
                .map(
                    |p| json!({ "repository": p.repository, "tag": p.tag, "registry": p.registry }),
                )
                .collect();
            if parsed.pushes.is_empty() {
                return reply(
                    StatusCode::ACCEPTED,
                    json!({ "queued": false, "pushes": pushes, "ignored": parsed.ignored }),
                );
            }
            match s.local.submit(&trigger) {
                Ok(id) => {
                    s.wake.notify_one();
                    tracing::info!(webhook = %name, %id, pushes = pushes.len(), "webhook queued");
                    reply(
                        StatusCode::ACCEPTED,
                        json!({ "queued": true, "id": id, "pushes": pushes, "ignored": parsed.ignored }),
                    )
                }
                Err(e) => {
                    tracing::error!(webhook = %name, error = %e, "could not queue webhook");
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({ "error": "could not queue; retry" }),
                    )
                }
            }
        }
    }
}

fn unauthenticated() -> Response {
    reply(
        StatusCode::UNAUTHORIZED,
        json!({ "error": "authenticate as an approver (Authorization: Bearer <your approver token>)" }),
    )
}

async fn list_approvals(
    State(s): State<Arc<Server>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if s.identity(&headers, peer).is_none() {
        return unauthenticated();
    }
    match s.local.pipeline.pending_approvals().await {
        Ok(list) => reply(StatusCode::OK, json!(list)),
        Err(e) => error_reply(&e),
    }
}

async fn decide(
    State(s): State<Arc<Server>>,
    Path((run, env)): Path<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(who) = s.identity(&headers, peer) else {
        tracing::warn!(%run, %env, %peer, "approval decision without a valid identity refused");
        return unauthenticated();
    };
    let parsed: DecisionBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({ "error": format!("body: {e} (expected {{\"decision\": \"approve\"|\"reject\", \"comment\": …}})") }),
            );
        }
    };
    let result = s
        .local
        .pipeline
        .decide(Decision {
            run,
            environment: env,
            by: who,
            verdict: parsed.decision,
            comment: parsed.comment,
        })
        .await;
    s.wake.notify_one();
    match result {
        Ok(report) => reply(StatusCode::OK, json!(report)),
        Err(e) => error_reply(&e),
    }
}

async fn list_runs(State(s): State<Arc<Server>>) -> Response {
    match s.local.pipeline.runs().await {
        Ok(runs) => reply(StatusCode::OK, json!(runs)),
        Err(e) => error_reply(&e),
    }
}

async fn show_run(State(s): State<Arc<Server>>, Path(run): Path<String>) -> Response {
    let p = &s.local.pipeline;
    let view = async {
        let (app, run) = p.resolve_run(&run).await?;
        p.run_view(&app, &run).await
    }
    .await;
    match view {
        Ok(v) => reply(StatusCode::OK, json!(v)),
        Err(e) => error_reply(&e),
    }
}
