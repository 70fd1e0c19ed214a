//! `baton serve`: the always-on local form of Baton. An HTTP server (axum on hyper) that
//! takes registry webhooks, approval decisions and status queries, and a dispatcher that
//! delivers the embedded bus to the stages.
//!
//! * `POST /hooks/<name>`: a registry notification. Authenticated as its source
//!   documents (401 otherwise, logged without the secret), from the headers alone before
//!   the body is read wherever the scheme allows (all but an HMAC over the body); bodies
//!   over 1 MiB get 413. Malformed bodies get 400 with the reason and are kept under
//!   `deadletters/webhooks/` in the store; accepted ones are written to the durable bus
//!   and answered 202 at once, so a crash after 202 loses nothing.
//! * `GET /approvals`, `POST /approvals/<run>/<env>` (`{"decision": "approve"|"reject",
//!   "comment": …}`): the approver is who the request authenticates as (a per-approver
//!   bearer token, or a trusted proxy's identity header together with the proxy's shared
//!   secret), never the body.
//! * `GET /runs`, `GET /runs/<run>`: JSON status, for approvers and configured readers.
//!   `GET /healthz` answers anyone.
//!
//! Every connection has `serve.request_timeout` to send its headers and then its body;
//! at most `serve.max_connections` are served at once (the rest wait in the backlog).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Notify, Semaphore};

use crate::adapters::embedded::DrainOptions;
use crate::config::secret_env;
use crate::error::{Error, Result};
use crate::ids::{is_name, is_run_prefix};
use crate::pipeline::{approvals, runs};
use crate::policy::approval::{Approver, Verdict};
use crate::ports::{ObjectStore, Precondition};
use crate::reference::excerpt;
use crate::runtime::local::Local;
use crate::stages::approve::{self, Decision};
use crate::webhooks::{Endpoint, RequestParts, same};

use crate::stages::approve::MAX_DECISION_BODY;
use crate::webhooks::MAX_WEBHOOK_BODY;

/// The trusted proxy, with its secret resolved.
struct Proxy {
    user_header: String,
    secret_header: String,
    secret: String,
}

/// The server and its dispatcher.
pub struct Server {
    pub local: Arc<Local>,
    endpoints: Vec<Endpoint>,
    /// (approver, token)
    approvers: Vec<(String, String)>,
    /// (reader, token)
    readers: Vec<(String, String)>,
    proxy: Option<Proxy>,
    max_connections: usize,
    request_timeout: Duration,
    wake: Notify,
}

/// Who a request authenticates as.
enum Caller {
    Approver(Approver),
    Reader(String),
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn error_reply(e: &Error) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    reply(status, json!({ "error": e.to_string(), "kind": e.kind() }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    decision: Verdict,
    #[serde(default)]
    comment: Option<String>,
}

/// Why a body could not be read.
enum BodyError {
    TooLarge,
    TimedOut,
    Broken,
}

impl BodyError {
    fn reply(&self, limit: usize) -> Response {
        match self {
            BodyError::TooLarge => reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({ "error": format!("the body is larger than {limit} bytes") }),
            ),
            BodyError::TimedOut => reply(
                StatusCode::REQUEST_TIMEOUT,
                json!({ "error": "the body did not arrive in time" }),
            ),
            BodyError::Broken => reply(
                StatusCode::BAD_REQUEST,
                json!({ "error": "the body could not be read" }),
            ),
        }
    }
}

impl Server {
    /// Resolves every webhook, approver, reader and proxy secret from the environment;
    /// a missing or empty one is an error naming its variable. `listening` is the
    /// address actually bound: an endpoint without authentication is refused unless it
    /// is a loopback address.
    pub fn new(local: Local, listening: SocketAddr) -> Result<Server> {
        let cfg = local.pipeline.config.serve.clone();
        let endpoints = cfg
            .webhooks
            .iter()
            .map(Endpoint::from_config)
            .collect::<Result<Vec<_>>>()?;
        if let Some(open) = endpoints.iter().find(|e| e.is_open())
            && !listening.ip().is_loopback()
        {
            return Err(Error::invalid(
                format!("webhook {}", open.name),
                format!(
                    "auth: none is allowed only on a loopback address, and baton serve listens on {listening}; configure the registry's authentication (serve.webhooks[].auth)"
                ),
            ));
        }
        let mut approvers = vec![];
        for (who, id) in &cfg.approvers {
            if let Some(var) = &id.token_env {
                let token = secret_env(var, &format!("serve.approvers.{who}.token_env"))?;
                approvers.push((who.clone(), token));
            }
        }
        let mut readers = vec![];
        for (who, r) in &cfg.readers {
            let token = secret_env(&r.token_env, &format!("serve.readers.{who}.token_env"))?;
            readers.push((who.clone(), token));
        }
        let tokens: Vec<&str> = approvers
            .iter()
            .chain(&readers)
            .map(|(_, t)| t.as_str())
            .collect();
        for (i, t) in tokens.iter().enumerate() {
            if tokens[..i].contains(t) {
                return Err(Error::invalid(
                    "serve",
                    "two approvers or readers have the same token; each needs its own",
                ));
            }
        }
        let proxy = match &cfg.trusted_proxy {
            None => None,
            Some(p) => Some(Proxy {
                user_header: p.user_header.clone(),
                secret_header: p.secret_header.clone(),
                secret: secret_env(&p.secret_env, "serve.trusted_proxy.secret_env")?,
            }),
        };
        Ok(Server {
            local: Arc::new(local),
            endpoints,
            approvers,
            readers,
            proxy,
            max_connections: cfg.max_connections.max(1),
            request_timeout: cfg.request_timeout,
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

    /// Serves until `shutdown` completes; the dispatcher runs beside the server. Each
    /// connection is served by hyper with a header read timeout, and at most
    /// `max_connections` at once.
    pub async fn run(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        use hyper_util::rt::{TokioIo, TokioTimer};
        use hyper_util::service::TowerToHyperService;

        let dispatcher = {
            let s = self.clone();
            tokio::spawn(async move { s.dispatch_forever().await })
        };
        let router = self.router();
        let slots = Arc::new(Semaphore::new(self.max_connections));
        let (closing, _) = tokio::sync::watch::channel(false);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            // Wait for a free slot first: further clients wait in the listen backlog.
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = &mut shutdown => break,
            };
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed; retrying");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            let service =
                TowerToHyperService::new(router.clone().layer(axum::Extension(ConnectInfo(peer))));
            let mut closing = closing.subscribe();
            let header_timeout = self.request_timeout;
            tokio::spawn(async move {
                let _permit = permit;
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .keep_alive(true);
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "connection ended");
                        }
                    }
                    _ = closing.changed() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
        let _ = closing.send(true);
        dispatcher.abort();
        Ok(())
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

    /// Who a request authenticates as, if anyone: a bearer token of an approver or a
    /// reader, or the trusted proxy's user header on a request carrying the proxy's
    /// secret. A header without the secret is nobody, whoever sends it.
    fn caller(&self, headers: &HeaderMap) -> Option<Caller> {
        let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        if let Some(token) = header("authorization").and_then(|v| v.strip_prefix("Bearer ")) {
            let token = token.trim().as_bytes();
            if let Some((who, _)) = self
                .approvers
                .iter()
                .find(|(_, t)| same(t.as_bytes(), token))
            {
                return Some(Caller::Approver(
                    self.local.pipeline.config.approver(who, "token"),
                ));
            }
            return self
                .readers
                .iter()
                .find(|(_, t)| same(t.as_bytes(), token))
                .map(|(who, _)| Caller::Reader(who.clone()));
        }
        let proxy = self.proxy.as_ref()?;
        let secret = header(&proxy.secret_header)?;
        if !same(secret.as_bytes(), proxy.secret.as_bytes()) {
            return None;
        }
        let user = header(&proxy.user_header)?.trim();
        (crate::ids::is_label(user, 128))
            .then(|| Caller::Approver(self.local.pipeline.config.approver(user, "proxy")))
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

    /// Reads a body of at most `limit` bytes within the request timeout.
    async fn body(&self, body: Body, limit: usize) -> std::result::Result<Bytes, BodyError> {
        match tokio::time::timeout(self.request_timeout, axum::body::to_bytes(body, limit)).await {
            Err(_) => Err(BodyError::TimedOut),
            Ok(Ok(b)) => Ok(b),
            Ok(Err(e)) => {
                // `to_bytes` reports an over-long body as http-body's "length limit
                // exceeded" somewhere in the chain.
                let mut cur: Option<&dyn std::error::Error> = Some(&e);
                while let Some(err) = cur {
                    if err.to_string().contains("length limit exceeded") {
                        return Err(BodyError::TooLarge);
                    }
                    cur = err.source();
                }
                Err(BodyError::Broken)
            }
        }
    }
}

/// A declared body length over `limit` (refused before reading it).
fn declared_too_large(headers: &HeaderMap, limit: usize) -> bool {
    headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
}

async fn hook(
    State(s): State<Arc<Server>>,
    Path(name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(ep) = s.endpoints.iter().find(|e| e.name == name) else {
        return reply(
            StatusCode::NOT_FOUND,
            json!({ "error": format!("no webhook named {}", excerpt(&name)) }),
        );
    };
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let refused = |why: &str| {
        tracing::warn!(webhook = %name, %peer, reason = %why, "webhook refused");
        reply(StatusCode::UNAUTHORIZED, json!({ "error": "unauthorized" }))
    };
    // Authenticate from the headers before reading a byte of the body where the scheme
    // allows it: an unauthenticated client costs no body buffer.
    if ep.authenticates_before_body()
        && let Err(why) = ep.authenticate(&RequestParts {
            header: &header,
            query: query.as_deref(),
            body: &[],
        })
    {
        return refused(&why.0);
    }
    if declared_too_large(&headers, MAX_WEBHOOK_BODY) {
        tracing::warn!(webhook = %name, %peer, "webhook body over the limit refused");
        return BodyError::TooLarge.reply(MAX_WEBHOOK_BODY);
    }
    let body = match s.body(body, MAX_WEBHOOK_BODY).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(webhook = %name, %peer, "webhook body refused");
            return e.reply(MAX_WEBHOOK_BODY);
        }
    };
    if !ep.authenticates_before_body()
        && let Err(why) = ep.authenticate(&RequestParts {
            header: &header,
            query: query.as_deref(),
            body: &body,
        })
    {
        return refused(&why.0);
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
            match s.local.submit(&trigger).await {
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

fn unauthenticated(what: &str) -> Response {
    reply(
        StatusCode::UNAUTHORIZED,
        json!({ "error": format!("authenticate as {what} (Authorization: Bearer <your token>)") }),
    )
}

async fn list_approvals(State(s): State<Arc<Server>>, headers: HeaderMap) -> Response {
    let Some(Caller::Approver(_)) = s.caller(&headers) else {
        return unauthenticated("an approver");
    };
    match approvals::pending(&s.local.pipeline).await {
        Ok(list) => reply(StatusCode::OK, json!(list)),
        Err(e) => error_reply(&e),
    }
}

/// Checks a run id (or prefix) and an environment name from a path; the refusal (a
/// 400) names the part.
fn path_names(run: &str, env: Option<&str>) -> Option<Response> {
    let why = if !is_run_prefix(run) {
        format!(
            "run: {} is not a run id (4 to 16 lowercase hex digits)",
            excerpt(run)
        )
    } else if let Some(env) = env
        && !is_name(env)
    {
        format!("environment: {} is not an environment name", excerpt(env))
    } else {
        return None;
    };
    Some(reply(StatusCode::BAD_REQUEST, json!({ "error": why })))
}

async fn decide(
    State(s): State<Arc<Server>>,
    Path((run, env)): Path<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(Caller::Approver(who)) = s.caller(&headers) else {
        tracing::warn!(run = %excerpt(&run), env = %excerpt(&env), %peer,
            "approval decision without an approver identity refused");
        return unauthenticated("an approver");
    };
    if let Some(r) = path_names(&run, Some(&env)) {
        return r;
    }
    if declared_too_large(&headers, MAX_DECISION_BODY) {
        return BodyError::TooLarge.reply(MAX_DECISION_BODY);
    }
    let body = match s.body(body, MAX_DECISION_BODY).await {
        Ok(b) => b,
        Err(e) => return e.reply(MAX_DECISION_BODY),
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
    let result = approve::decide(
        &s.local.pipeline,
        Decision {
            run,
            environment: env,
            by: who,
            verdict: parsed.decision,
            comment: parsed.comment,
        },
    )
    .await;
    s.wake.notify_one();
    match result {
        Ok(report) => reply(StatusCode::OK, json!(report)),
        Err(e) => error_reply(&e),
    }
}

async fn list_runs(State(s): State<Arc<Server>>, headers: HeaderMap) -> Response {
    match s.caller(&headers) {
        None => return unauthenticated("an approver or a reader"),
        Some(Caller::Reader(who)) => tracing::debug!(reader = %who, "runs listed"),
        Some(Caller::Approver(a)) => tracing::debug!(approver = %a.name, "runs listed"),
    }
    match runs::list(&s.local.pipeline).await {
        Ok(runs) => reply(StatusCode::OK, json!(runs)),
        Err(e) => error_reply(&e),
    }
}

async fn show_run(
    State(s): State<Arc<Server>>,
    Path(run): Path<String>,
    headers: HeaderMap,
) -> Response {
    if s.caller(&headers).is_none() {
        return unauthenticated("an approver or a reader");
    }
    if let Some(r) = path_names(&run, None) {
        return r;
    }
    let p = &s.local.pipeline;
    let view = async {
        let (app, run) = runs::resolve(p, &run).await?;
        runs::view(p, &app, &run).await
    }
    .await;
    match view {
        Ok(v) => reply(StatusCode::OK, json!(v)),
        Err(e) => error_reply(&e),
    }
}
