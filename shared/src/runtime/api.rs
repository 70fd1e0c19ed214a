//! The HTTP API: one axum [`Router`] that `baton serve` and the AWS function URLs both
//! serve. What differs between them is its [`Host`]: who a request authenticates as
//! (bearer tokens and a trusted proxy for `baton serve`; the verified IAM principal a
//! function URL hands over), what an accepted webhook becomes (queued on the durable bus;
//! ingested at once by the ingest function), and which routes it serves.
//!
//! * `POST /hooks/<name>`: a registry notification. Authenticated as its source
//!   documents (401 otherwise, logged without the secret), from the headers alone before
//!   the body is read wherever the scheme allows (all but an HMAC over the body); bodies
//!   over 1 MiB get 413. Malformed bodies get 400 with the reason (`baton serve` keeps
//!   them under `deadletters/webhooks/` in the store); accepted ones get 202.
//! * `POST /approvals/<run>/<env>` (`{"decision": "approve"|"reject", "comment": …}`), or
//!   `POST /` with `{"run", "environment", "decision", "comment"}`: a decision. The
//!   approver is who the request authenticates as, never the body.
//! * `GET /approvals`, `GET /runs`, `GET /runs/<run>`: JSON status (`baton serve`).
//! * `GET /healthz` answers anyone.
//!
//! Errors are JSON `{"error", "kind"}` with the status [`Error::http_status`] gives: the
//! one place a refusal becomes a 403 and an approval already settled a 409.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{Extensions, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::ids::{is_name, is_run_prefix};
use crate::pipeline::holds;
use crate::pipeline::{Pipeline, approvals, runs};
use crate::policy::approval::{Approver, Verdict};
use crate::ports::{ObjectStore, Ports};
use crate::reference::excerpt;
use crate::stages::approve::{self, Decision, MAX_DECISION_BODY};
use crate::triggers::Parsed;
use crate::webhooks::{Endpoint, MAX_WEBHOOK_BODY, RequestParts};

/// Who a request authenticates as.
pub enum Caller {
    Approver(Approver),
    Reader(String),
}

/// Why a request is nobody.
pub enum Denied {
    /// It carries no identity (401).
    Anonymous,
    /// It carries an identity that is no approver or reader (403, saying why).
    Unknown(String),
}

/// The routes a host serves besides `/healthz`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Routes {
    /// `POST /hooks/<name>`.
    pub hooks: bool,
    /// `POST /approvals/<run>/<env>` and `POST /`.
    pub decisions: bool,
    /// `POST /freeze`, `/unfreeze`, `/holds/release`, `/break-glass[/approve]` (with
    /// `decisions`): where the host may write those records (`baton serve`; on AWS the
    /// operator's `baton freeze --stack`, not the approve function).
    pub line: bool,
    /// `GET /approvals`, `GET /runs`, `GET /runs/<run>`.
    pub queries: bool,
}

/// What the HTTP API needs from the runtime serving it.
pub trait Host: Send + Sync + 'static {
    type Ports: Ports;

    fn pipeline(&self) -> &Pipeline<Self::Ports>;

    fn routes(&self) -> Routes;

    /// The webhook endpoints, with their resolved secrets.
    fn endpoints(&self) -> &[Endpoint];

    /// Who the request with these headers and extensions authenticates as.
    fn caller(
        &self,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) -> std::result::Result<Caller, Denied>;

    /// How to authenticate, for a 401 (`Authorization: Bearer <your token>`).
    fn how_to_authenticate(&self) -> &'static str;

    /// The longest a client may take to send its body.
    fn body_timeout(&self) -> Duration;

    /// Takes an authenticated, parsed webhook that names pushes; the fields it returns
    /// join the 202 answer.
    fn accept(
        &self,
        webhook: &str,
        parsed: Parsed,
    ) -> impl std::future::Future<Output = Result<Map<String, Value>>> + Send;

    /// Keeps the body of a malformed webhook, where the host has somewhere to.
    fn malformed(
        &self,
        _webhook: &str,
        _body: &[u8],
        _error: &Error,
    ) -> impl std::future::Future<Output = ()> + Send {
        async {}
    }

    /// A decision was recorded (`baton serve` wakes its dispatcher).
    fn decided(&self) {}

    /// Slack's interaction callback, where the host takes it.
    fn slack(&self) -> Option<&crate::slack::SlackEndpoint> {
        None
    }

    /// `GET /metrics`: the exposition, where the host keeps metrics (`baton serve`).
    fn metrics(&self) -> impl std::future::Future<Output = Option<Result<String>>> + Send {
        async { None }
    }

    /// What `GET /healthz` reports: healthy or not (503), and the details.
    fn health(&self) -> impl std::future::Future<Output = (bool, Value)> + Send {
        async { (true, json!({ "status": "ok" })) }
    }
}

/// The router of `host`.
pub fn router<H: Host>(host: Arc<H>) -> Router {
    let routes = host.routes();
    let mut r = Router::new().route("/healthz", get(healthz::<H>));
    if routes.hooks {
        r = r.route("/hooks/{name}", post(hook::<H>));
    }
    if routes.decisions {
        r = r
            .route("/", post(decide_body::<H>))
            .route("/approvals/{run}/{env}", post(decide_path::<H>))
            .route("/slack/interactions", post(slack_interaction::<H>));
        for path in [
            "/freeze",
            "/unfreeze",
            "/holds/release",
            "/break-glass",
            "/break-glass/approve",
        ] {
            r = if routes.line {
                r.route(path, post(stop_line::<H>))
            } else {
                r.route(
                    path,
                    post(|| async {
                        reply(
                            StatusCode::NOT_FOUND,
                            json!({ "error": "freezes, holds and break-glass are not set through this endpoint: use `baton freeze`, `unfreeze`, `hold release` or `break-glass` with --stack NAME" }),
                        )
                    }),
                )
            };
        }
    }
    if routes.queries {
        r = r
            .route("/approvals", get(list_approvals::<H>))
            .route("/api/environments", get(list_environments::<H>))
            .route("/metrics", get(metrics::<H>))
            .route("/runs", get(list_runs::<H>))
            .route("/runs/{run}", get(show_run::<H>));
    }
    r.fallback(|| async {
        reply(
            StatusCode::NOT_FOUND,
            json!({ "error": "no such endpoint" }),
        )
    })
    .with_state(host)
}

/// A JSON answer.
pub fn reply(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// An error as its status and `{"error", "kind"}`.
pub fn error_reply(e: &Error) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    reply(status, json!({ "error": e.to_string(), "kind": e.kind() }))
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

/// Reads a body of at most `limit` bytes within `timeout`.
async fn read_body(
    body: Body,
    limit: usize,
    timeout: Duration,
) -> std::result::Result<Bytes, BodyError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
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

/// A declared body length over `limit` (refused before reading it).
fn declared_too_large(headers: &HeaderMap, limit: usize) -> bool {
    headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
}

/// The peer a request came from, for logs (`0.0.0.0:0` when unknown).
pub fn peer_of(extensions: &Extensions) -> SocketAddr {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
}

fn unauthenticated<H: Host>(h: &H, what: &str, denied: Denied) -> Response {
    match denied {
        Denied::Anonymous => reply(
            StatusCode::UNAUTHORIZED,
            json!({ "error": format!("authenticate as {what} ({})", h.how_to_authenticate()) }),
        ),
        Denied::Unknown(why) => reply(StatusCode::FORBIDDEN, json!({ "error": why })),
    }
}

/// `GET /healthz`: anyone may ask; 503 when the host is not healthy.
async fn healthz<H: Host>(State(h): State<Arc<H>>) -> Response {
    let (healthy, details) = h.health().await;
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    reply(status, details)
}

async fn hook<H: Host>(
    State(h): State<Arc<H>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let (headers, peer) = (&parts.headers, peer_of(&parts.extensions));
    let Some(ep) = h.endpoints().iter().find(|e| e.name == name) else {
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
    if declared_too_large(headers, MAX_WEBHOOK_BODY) {
        tracing::warn!(webhook = %name, %peer, "webhook body over the limit refused");
        return BodyError::TooLarge.reply(MAX_WEBHOOK_BODY);
    }
    let body = match read_body(body, MAX_WEBHOOK_BODY, h.body_timeout()).await {
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
    let (_, parsed) = match ep.trigger(&body, Utc::now()) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(webhook = %name, error = %e, "malformed webhook");
            h.malformed(&name, &body, &e).await;
            return error_reply(&e);
        }
    };
    // A handshake (Event Grid's subscription validation) is answered, not queued.
    if let Some(answer) = parsed.respond {
        tracing::info!(webhook = %name, "webhook handshake answered");
        return reply(StatusCode::OK, answer);
    }
    let pushes: Vec<Value> = parsed
        .pushes
        .iter()
        .map(|p| json!({ "repository": p.repository, "tag": p.tag, "registry": p.registry }))
        .collect();
    let mut answer = Map::new();
    answer.insert("pushes".into(), json!(pushes));
    answer.insert("ignored".into(), json!(parsed.ignored));
    if pushes.is_empty() {
        answer.insert("queued".into(), json!(false));
        return reply(StatusCode::ACCEPTED, Value::Object(answer));
    }
    match h.accept(&name, parsed).await {
        Ok(fields) => {
            tracing::info!(webhook = %name, pushes = pushes.len(), "webhook accepted");
            answer.extend(fields);
            reply(StatusCode::ACCEPTED, Value::Object(answer))
        }
        Err(e) if e.is_retryable() => {
            tracing::error!(webhook = %name, error = %e, "could not take the webhook");
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "error": "could not take the notification; retry", "kind": e.kind() }),
            )
        }
        Err(e) => error_reply(&e),
    }
}

async fn list_approvals<H: Host>(
    State(h): State<Arc<H>>,
    request: axum::extract::Request,
) -> Response {
    match h.caller(request.headers(), request.extensions()) {
        Ok(Caller::Approver(_)) => {}
        Ok(Caller::Reader(_)) => return unauthenticated(&*h, "an approver", Denied::Anonymous),
        Err(d) => return unauthenticated(&*h, "an approver", d),
    }
    match approvals::pending(h.pipeline()).await {
        Ok(list) => reply(StatusCode::OK, json!(list)),
        Err(e) => error_reply(&e),
    }
}

/// Checks a run id (or prefix) and an environment name; the refusal (a 400) names the
/// part.
fn check_names(run: &str, env: Option<&str>) -> Option<Response> {
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

/// `POST /approvals/<run>/<env>`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PathDecision {
    decision: Verdict,
    #[serde(default)]
    comment: Option<String>,
    /// An approval that also releases the environment's rollback hold.
    #[serde(default)]
    release_hold: bool,
}

/// `POST /`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BodyDecision {
    run: String,
    environment: String,
    decision: Verdict,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    release_hold: bool,
}

/// The approver a decision request authenticates as, or the answer that refuses it.
fn approver<H: Host>(
    h: &H,
    parts: &axum::http::request::Parts,
    what: &str,
) -> std::result::Result<Approver, Box<Response>> {
    match h.caller(&parts.headers, &parts.extensions) {
        Ok(Caller::Approver(who)) => Ok(who),
        Ok(Caller::Reader(_)) => Err(Box::new(unauthenticated(
            h,
            "an approver",
            Denied::Anonymous,
        ))),
        Err(denied) => {
            tracing::warn!(request = %what, peer = %peer_of(&parts.extensions),
                "approval decision without an approver identity refused");
            Err(Box::new(unauthenticated(h, "an approver", denied)))
        }
    }
}

/// A decision's body, or the answer that refuses it.
async fn decision_body<H: Host>(
    h: &H,
    headers: &HeaderMap,
    body: Body,
) -> std::result::Result<Bytes, Response> {
    if declared_too_large(headers, MAX_DECISION_BODY) {
        return Err(BodyError::TooLarge.reply(MAX_DECISION_BODY));
    }
    read_body(body, MAX_DECISION_BODY, h.body_timeout())
        .await
        .map_err(|e| e.reply(MAX_DECISION_BODY))
}

async fn decide_path<H: Host>(
    State(h): State<Arc<H>>,
    Path((run, env)): Path<(String, String)>,
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let what = format!("{}/{}", excerpt(&run), excerpt(&env));
    let who = match approver(&*h, &parts, &what) {
        Ok(who) => who,
        Err(r) => return *r,
    };
    if let Some(r) = check_names(&run, Some(&env)) {
        return r;
    }
    let body = match decision_body(&*h, &parts.headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let parsed: PathDecision = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({ "error": format!("body: {e} (expected {{\"decision\": \"approve\"|\"reject\", \"comment\": …}})") }),
            );
        }
    };
    decide(
        &*h,
        who,
        run,
        env,
        parsed.decision,
        parsed.comment,
        parsed.release_hold,
    )
    .await
}

async fn decide_body<H: Host>(
    State(h): State<Arc<H>>,
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let who = match approver(&*h, &parts, "POST /") {
        Ok(who) => who,
        Err(r) => return *r,
    };
    let body = match decision_body(&*h, &parts.headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let parsed: BodyDecision = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({ "error": format!("body: {e} (expected {{\"run\", \"environment\", \"decision\": \"approve\"|\"reject\", \"comment\"?}})") }),
            );
        }
    };
    if let Some(r) = check_names(&parsed.run, Some(&parsed.environment)) {
        return r;
    }
    decide(
        &*h,
        who,
        parsed.run,
        parsed.environment,
        parsed.decision,
        parsed.comment,
        parsed.release_hold,
    )
    .await
}

/// The body of `POST /freeze`, `/unfreeze` and `/holds/release`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LineRequest {
    /// Break-glass: the run (an id or a unique prefix).
    #[serde(default)]
    run: Option<String>,
    #[serde(default)]
    app: Option<String>,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /freeze` (stop the line: `{app?, environment?, reason}`), `POST /unfreeze`
/// (`{app?, environment?, reason?}`) and `POST /holds/release` (`{app, environment,
/// reason?}`), by an approver; recorded with who and why.
async fn stop_line<H: Host>(State(h): State<Arc<H>>, request: axum::extract::Request) -> Response {
    let path = request.uri().path().to_string();
    let (parts, body) = request.into_parts();
    let who = match approver(&*h, &parts, &path) {
        Ok(who) => who,
        Err(r) => return *r,
    };
    let body = match decision_body(&*h, &parts.headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let req: LineRequest = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({ "error": format!("body: {e} (expected {{\"app\"?, \"environment\"?, \"reason\"}})") }),
            );
        }
    };
    for (field, name) in [("app", &req.app), ("environment", &req.environment)] {
        if let Some(n) = name
            && !is_name(n)
        {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({ "error": format!("{field}: {} is not a name", excerpt(n)) }),
            );
        }
    }
    let p = h.pipeline();
    let (app, env, reason) = (
        req.app.as_deref(),
        req.environment.as_deref(),
        req.reason.as_deref(),
    );
    let result = match path.as_str() {
        "/freeze" => holds::freeze(p, app, env, &who.name, reason.unwrap_or(""))
            .await
            .map(|r| json!(r)),
        "/unfreeze" => holds::unfreeze(p, app, env, &who.name, reason)
            .await
            .map(|r| json!(r)),
        "/break-glass" | "/break-glass/approve" => match (&req.run, env) {
            (Some(run), Some(env)) => {
                if let Some(r) = check_names(run, Some(env)) {
                    return r;
                }
                match runs::resolve(p, run).await {
                    Err(e) => Err(e),
                    Ok((app, run)) if path == "/break-glass" => {
                        holds::request_override(p, &app, &run, env, &who.name, reason.unwrap_or(""))
                            .await
                            .map(|r| json!(r))
                    }
                    Ok((app, run)) => {
                        holds::approve_override(p, &app, run.as_str(), env, &who.name)
                            .await
                            .map(|r| json!(r))
                    }
                }
            }
            _ => Err(Error::invalid(
                "body",
                "a break-glass names {\"run\", \"environment\"} (and a \"reason\" when asked for)",
            )),
        },
        _ => match (app, env) {
            (Some(a), Some(e)) => holds::release(p, a, e, &who.name, reason)
                .await
                .map(|r| json!(r)),
            _ => Err(Error::invalid(
                "body",
                "a hold is released for one app's environment: {\"app\", \"environment\"}",
            )),
        },
    };
    tracing::info!(request = %path, approver = %who.name, ok = result.is_ok(), "line control");
    h.decided();
    match result {
        Ok(v) => reply(StatusCode::OK, v),
        Err(e) => error_reply(&e),
    }
}

async fn decide<H: Host>(
    h: &H,
    by: Approver,
    run: String,
    environment: String,
    verdict: Verdict,
    comment: Option<String>,
    release_hold: bool,
) -> Response {
    let result = approve::decide(
        h.pipeline(),
        Decision {
            run,
            environment,
            by,
            verdict,
            comment,
            release_hold,
        },
    )
    .await;
    h.decided();
    match result {
        Ok(report) => reply(StatusCode::OK, json!(report)),
        Err(e) => error_reply(&e),
    }
}

/// `GET /metrics`: Prometheus/OpenMetrics text, for approvers and readers (a scrape
/// config's `authorization: {credentials: <reader token>}`).
async fn metrics<H: Host>(State(h): State<Arc<H>>, request: axum::extract::Request) -> Response {
    if let Err(d) = h.caller(request.headers(), request.extensions()) {
        return unauthenticated(&*h, "an approver or a reader", d);
    }
    match h.metrics().await {
        None => reply(
            StatusCode::NOT_FOUND,
            json!({ "error": "this endpoint keeps no metrics" }),
        ),
        Some(Err(e)) => error_reply(&e),
        Some(Ok(text)) => (
            StatusCode::OK,
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
    }
}

/// `GET /api/environments`: what is live where ([`crate::pipeline::environments`]), for
/// approvers and readers.
async fn list_environments<H: Host>(
    State(h): State<Arc<H>>,
    request: axum::extract::Request,
) -> Response {
    if let Err(d) = h.caller(request.headers(), request.extensions()) {
        return unauthenticated(&*h, "an approver or a reader", d);
    }
    match crate::pipeline::environments::view(h.pipeline()).await {
        Ok(v) => reply(StatusCode::OK, json!(v)),
        Err(e) => error_reply(&e),
    }
}

/// `GET /runs?limit=&after=`: a page of runs, newest first (`limit` 1 to 1000, 50 by
/// default); the next page's cursor is in the `Baton-Next-After` header.
async fn list_runs<H: Host>(State(h): State<Arc<H>>, request: axum::extract::Request) -> Response {
    match h.caller(request.headers(), request.extensions()) {
        Err(d) => return unauthenticated(&*h, "an approver or a reader", d),
        Ok(Caller::Reader(who)) => tracing::debug!(reader = %who, "runs listed"),
        Ok(Caller::Approver(a)) => tracing::debug!(approver = %a.name, "runs listed"),
    }
    let mut limit = 50usize;
    let mut after = None;
    for (k, v) in form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes()) {
        match &*k {
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=1000).contains(&n) => limit = n,
                _ => {
                    return error_reply(&Error::invalid(
                        "limit",
                        "must be a number from 1 to 1000",
                    ));
                }
            },
            "after" if runs::is_cursor(&v) => after = Some(v.into_owned()),
            "after" => {
                return error_reply(&Error::invalid(
                    "after",
                    "must be a cursor from the Baton-Next-After header of the previous page",
                ));
            }
            _ => {}
        }
    }
    match runs::page(h.pipeline(), limit, after.as_deref()).await {
        Ok(page) => {
            let mut r = reply(StatusCode::OK, json!(page.runs));
            if let Some(next) = page.next
                && let Ok(v) = axum::http::HeaderValue::from_str(&next)
            {
                r.headers_mut().insert("baton-next-after", v);
            }
            r
        }
        Err(e) => error_reply(&e),
    }
}

async fn show_run<H: Host>(
    State(h): State<Arc<H>>,
    Path(run): Path<String>,
    request: axum::extract::Request,
) -> Response {
    if let Err(d) = h.caller(request.headers(), request.extensions()) {
        return unauthenticated(&*h, "an approver or a reader", d);
    }
    if let Some(r) = check_names(&run, None) {
        return r;
    }
    let p = h.pipeline();
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

/// `POST /slack/interactions`: an Approve or Reject button pressed in Slack. Signed by
/// Slack (v0 HMAC over the raw body, timestamp within five minutes; 401 otherwise, and
/// for a signature seen before: a replay). The Slack user must map to an approver
/// (`serve.slack.users`); then the decision goes through the approve stage with every
/// rule (N of M, no self-approval, expiry), and the message is updated with the outcome
/// through the callback's `response_url`. Refusals are told to the presser alone.
async fn slack_interaction<H: Host>(
    State(h): State<Arc<H>>,
    request: axum::extract::Request,
) -> Response {
    let Some(slack) = h.slack() else {
        return reply(
            StatusCode::NOT_FOUND,
            json!({ "error": "Slack approvals are not configured (serve.slack)" }),
        );
    };
    const LIMIT: usize = 64 * 1024;
    let (parts, body) = request.into_parts();
    if declared_too_large(&parts.headers, LIMIT) {
        return BodyError::TooLarge.reply(LIMIT);
    }
    let body = match read_body(body, LIMIT, h.body_timeout()).await {
        Ok(b) => b,
        Err(e) => return e.reply(LIMIT),
    };
    let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok());
    let signature = header("x-slack-signature").unwrap_or_default().to_string();
    if let Err(why) = crate::slack::verify(
        slack.secret(),
        header("x-slack-request-timestamp"),
        header("x-slack-signature"),
        &body,
        Utc::now().timestamp(),
    ) {
        tracing::warn!(peer = %peer_of(&parts.extensions), reason = %why.0, "Slack callback refused");
        return reply(StatusCode::UNAUTHORIZED, json!({ "error": "unauthorized" }));
    }
    // A signed request is taken once: the same signature again is a replay.
    let p = h.pipeline();
    let seen = format!(
        "slack/replay/{}.json",
        crate::ids::stable_id(&["slack", &signature])
    );
    match p
        .ports
        .store()
        .put(
            &seen,
            json!({ "at": Utc::now() }).to_string().into_bytes(),
            crate::ports::Precondition::IfNoneMatch,
        )
        .await
    {
        Ok(_) => {}
        Err(Error::Conflict { .. }) => {
            tracing::warn!("Slack callback replayed: refused");
            return reply(StatusCode::UNAUTHORIZED, json!({ "error": "unauthorized" }));
        }
        Err(e) => return error_reply(&e),
    }
    let action = match crate::slack::parse(&body) {
        Ok(a) => a,
        Err(e) => return error_reply(&e),
    };
    let tell = |text: String| json!({ "response_type": "ephemeral", "replace_original": false, "text": text });
    let Some(name) = slack.approver(&action.user) else {
        slack
            .respond(
                action.response_url.as_deref(),
                tell(format!(
                    "Slack user {} is not mapped to an approver (serve.slack.users); nothing was decided",
                    action.user
                )),
            )
            .await;
        return reply(StatusCode::OK, json!({ "decided": false }));
    };
    let by = Approver {
        name: name.to_string(),
        identities: vec![],
        principal: format!("slack:{}", action.user),
    };
    let decision = Decision {
        run: action.run.clone(),
        environment: action.environment.clone(),
        by,
        verdict: action.verdict,
        comment: Some("from Slack".into()),
        release_hold: false,
    };
    match approve::decide(p, decision).await {
        Ok(report) => {
            h.decided();
            let verb = match action.verdict {
                Verdict::Approve => "approved",
                Verdict::Reject => "rejected",
            };
            let text = format!(
                "{} {} of {} {verb} by {name} in Slack: {} ({} of {} approvals)",
                report.environment,
                report.run,
                report.app,
                format!("{:?}", report.status).to_lowercase(),
                report.approvals,
                report.required
            );
            slack
                .respond(
                    action.response_url.as_deref(),
                    json!({ "replace_original": true, "text": text }),
                )
                .await;
            reply(StatusCode::OK, json!({ "decided": true, "text": text }))
        }
        Err(e) => {
            slack
                .respond(
                    action.response_url.as_deref(),
                    tell(format!("not taken: {e}")),
                )
                .await;
            reply(
                StatusCode::OK,
                json!({ "decided": false, "error": e.to_string() }),
            )
        }
    }
}
