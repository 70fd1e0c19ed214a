//! The web dashboard of `baton serve`, at `/`: what is live where, runs with their stage
//! timeline, events and test output, approvals to decide, each environment's history
//! with a rollback button, and DORA's four keys. Server-rendered HTML ([`pages`]) with
//! one small script for live updates (server-sent events at `/ui/events`); nothing is
//! fetched from another origin, so it works in an air-gapped network.
//!
//! Every page answers JSON to `Accept: application/json` (`/runs`, `/runs/<run>` and
//! `/approvals` are the API's own answers; `/` and `/environments/<app>/<env>` are the
//! dashboard's).
//!
//! Who looks: a bearer token or the trusted proxy, as for the API, or a session made by
//! signing in with one's approver or reader token at `/login` (a random id in an
//! `HttpOnly`, `SameSite=Strict` cookie, `Secure` unless `baton serve` listens on
//! loopback; sessions live in memory for 12 hours and end with the process). Readers see
//! everything but cannot decide or roll back. Every form carries a token bound to the
//! session (or the proxy's user) and is refused without it, or from another origin.
//! Pages send a content security policy that allows only this origin's own script and
//! style, and no framing.

pub mod pages;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use hmac::{Hmac, Mac};
use maud::Markup;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::ids::{is_name, is_run_prefix};
use crate::pipeline::approvals::{self, PendingApproval};
use crate::pipeline::dora::Figures;
use crate::pipeline::{deployments, environments, runs};
use crate::policy::approval::{ApprovalStatus, Approver, Verdict};
use crate::ports::ObjectStore;
use crate::reference::excerpt;
use crate::runtime::api::{Caller, Host, error_reply, reply};
use crate::runtime::local::LocalPorts;
use crate::stages::approve::{self, Decision};
use crate::webhooks::same;

use pages::{Flash, Viewing};

/// The session cookie's name.
const COOKIE: &str = "baton_session";
/// How long a session lasts.
const SESSION_HOURS: i64 = 12;
/// Sessions kept at most (expired ones are dropped first).
const MAX_SESSIONS: usize = 10_000;
/// Failed sign-ins an address may make per [`SIGN_IN_WINDOW`].
const SIGN_IN_FAILURES: u32 = 10;
const SIGN_IN_WINDOW: Duration = Duration::from_secs(60);
/// The largest form body taken.
const MAX_FORM: usize = 16 * 1024;
/// Lines of the test output shown on a run page.
const OUTPUT_LINES: usize = 80;
/// Runs on the board.
const BOARD_RUNS: usize = 20;
/// Runs the board looks through for each environment's last failed deploy (`baton envs`
/// looks through 200).
const BOARD_FAILURE_RUNS: usize = 50;

const CSS: &str = include_str!("app.css");
const JS: &str = include_str!("app.js");

/// What the dashboard needs from its host (`baton serve`).
pub trait Board: Host<Ports = LocalPorts> {
    fn web(&self) -> &Web;

    /// DORA's four keys over the last 30 days as the host last computed them (none
    /// before its first computation).
    fn dora(&self) -> impl std::future::Future<Output = Option<Vec<Figures>>> + Send;
}

/// Who a session belongs to.
#[derive(Debug, Clone)]
enum Who {
    Approver(String),
    Reader(String),
}

#[derive(Debug, Clone)]
struct Session {
    who: Who,
    expires: chrono::DateTime<Utc>,
}

/// What the board shows but DORA: read once per change and shared by every viewer.
struct BoardData {
    envs: Vec<environments::EnvironmentView>,
    pending: Vec<PendingApproval>,
    recent: Vec<runs::RunSummary>,
}

struct BoardCache {
    /// The change counter when it was read.
    generation: u64,
    at: std::time::Instant,
    data: Arc<BoardData>,
}

/// The board is read again after any change, and at least this often (expiries, windows).
const BOARD_TTL: Duration = Duration::from_secs(10);

/// The dashboard's state: sessions, the key its form tokens are made with, the change
/// counter live pages follow, and the board as last read.
pub struct Web {
    key: [u8; 32],
    /// By the SHA-256 of the session id (the id itself is only in the cookie).
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    changes: tokio::sync::watch::Sender<u64>,
    secure_cookies: bool,
    /// Failed sign-ins by address: (failures, since when).
    failures: Mutex<HashMap<std::net::IpAddr, (u32, std::time::Instant)>>,
    /// One reader at a time: viewers refreshing after the same change share one read.
    board: tokio::sync::Mutex<Option<BoardCache>>,
}

impl Web {
    /// `secure_cookies`: mark the session cookie `Secure` (anything but loopback).
    pub fn new(secure_cookies: bool) -> Result<Web> {
        use aws_lc_rs::rand::SecureRandom;
        let mut key = [0u8; 32];
        aws_lc_rs::rand::SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| Error::permanent("dashboard", "no random numbers from the system"))?;
        Ok(Web {
            key,
            sessions: Mutex::new(HashMap::new()),
            changes: tokio::sync::watch::channel(0).0,
            secure_cookies,
            board: tokio::sync::Mutex::new(None),
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// The board's data: as read after the last change (within [`BOARD_TTL`]), else
    /// read now.
    async fn board_data(
        &self,
        p: &crate::pipeline::Pipeline<LocalPorts>,
    ) -> Result<Arc<BoardData>> {
        let mut cache = self.board.lock().await;
        let generation = *self.changes.borrow();
        if let Some(c) = cache.as_ref()
            && c.generation == generation
            && c.at.elapsed() < BOARD_TTL
        {
            return Ok(c.data.clone());
        }
        let (envs, mut recent) = environments::view_and_recent(p, BOARD_FAILURE_RUNS).await?;
        recent.truncate(BOARD_RUNS);
        let pending = approvals::pending(p).await?;
        let data = Arc::new(BoardData {
            envs,
            pending,
            recent,
        });
        *cache = Some(BoardCache {
            generation,
            at: std::time::Instant::now(),
            data: data.clone(),
        });
        Ok(data)
    }

    /// Something changed (a delivery, a decision, a push): live pages refresh.
    pub fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new session for `who`: the cookie value.
    fn open(&self, who: Who) -> Result<String> {
        use aws_lc_rs::rand::SecureRandom;
        let mut id = [0u8; 32];
        aws_lc_rs::rand::SystemRandom::new()
            .fill(&mut id)
            .map_err(|_| Error::permanent("dashboard", "no random numbers from the system"))?;
        let now = Utc::now();
        let mut sessions = self.sessions();
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, s| s.expires > now);
        }
        if sessions.len() >= MAX_SESSIONS {
            return Err(Error::transient(
                "dashboard",
                "too many sessions are open; try again later",
            ));
        }
        sessions.insert(
            Sha256::digest(id).into(),
            Session {
                who,
                expires: now + chrono::Duration::hours(SESSION_HOURS),
            },
        );
        Ok(hex::encode(id))
    }

    /// The live session a cookie value names, with its key.
    fn session(&self, cookie: &str) -> Option<([u8; 32], Who)> {
        let id = hex::decode(cookie).ok().filter(|b| b.len() == 32)?;
        let key: [u8; 32] = Sha256::digest(&id).into();
        let mut sessions = self.sessions();
        match sessions.get(&key) {
            Some(s) if s.expires > Utc::now() => Some((key, s.who.clone())),
            Some(_) => {
                sessions.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Whether `ip` may try to sign in now: at most [`SIGN_IN_FAILURES`] failures per
    /// [`SIGN_IN_WINDOW`], after which it waits out the window (a correct token too).
    fn may_sign_in(&self, ip: std::net::IpAddr) -> bool {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match f.get(&ip) {
            Some((n, since)) if since.elapsed() < SIGN_IN_WINDOW => *n < SIGN_IN_FAILURES,
            Some(_) => {
                f.remove(&ip);
                true
            }
            None => true,
        }
    }

    /// Counts a failed sign-in from `ip`.
    fn failed_sign_in(&self, ip: std::net::IpAddr) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() >= MAX_SESSIONS {
            f.retain(|_, (_, since)| since.elapsed() < SIGN_IN_WINDOW);
        }
        let e = f.entry(ip).or_insert((0, std::time::Instant::now()));
        if e.1.elapsed() >= SIGN_IN_WINDOW {
            *e = (0, std::time::Instant::now());
        }
        e.0 = e.0.saturating_add(1);
    }

    fn close(&self, key: &[u8; 32]) {
        self.sessions().remove(key);
    }

    /// The form token bound to `binding` (a session, or a proxy user).
    fn csrf(&self, binding: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(b"baton dashboard form\0");
        mac.update(binding.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    fn cookie(&self, value: &str, max_age: i64) -> String {
        format!(
            "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
            if self.secure_cookies { "; Secure" } else { "" }
        )
    }
}

/// Who looks at a page.
struct Viewer {
    name: String,
    /// Set for an approver.
    approver: Option<Approver>,
    csrf: String,
    /// The session's key, when signed in by session.
    session: Option<[u8; 32]>,
    /// The change counter as the request came in.
    generation: u64,
}

impl Viewer {
    fn viewing(&self, waiting: usize) -> Viewing<'_> {
        Viewing {
            name: &self.name,
            approver: self.approver.is_some(),
            csrf: &self.csrf,
            waiting,
            generation: self.generation,
            now: Utc::now(),
        }
    }
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn viewer<B: Board>(b: &B, parts: &axum::http::request::Parts) -> Option<Viewer> {
    let web = b.web();
    let generation = *web.changes.borrow();
    if let Ok(c) = b.caller(&parts.headers, &parts.extensions) {
        return Some(match c {
            Caller::Approver(a) => Viewer {
                csrf: web.csrf(&format!("approver:{}", a.name)),
                name: a.name.clone(),
                approver: Some(a),
                session: None,
                generation,
            },
            Caller::Reader(r) => Viewer {
                csrf: web.csrf(&format!("reader:{r}")),
                name: r,
                approver: None,
                session: None,
                generation,
            },
        });
    }
    let (key, who) = web.session(cookie_value(&parts.headers, COOKIE)?)?;
    let csrf = web.csrf(&format!("session:{}", hex::encode(key)));
    Some(match who {
        Who::Approver(name) => Viewer {
            approver: Some(
                b.pipeline()
                    .config
                    .approver(&name, "token (dashboard session)"),
            ),
            name,
            csrf,
            session: Some(key),
            generation,
        },
        Who::Reader(name) => Viewer {
            name,
            approver: None,
            csrf,
            session: Some(key),
            generation,
        },
    })
}

/// Whether the client asked for HTML (a browser) rather than JSON.
pub fn wants_html(headers: &HeaderMap) -> bool {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    accept.contains("text/html") && !accept.starts_with("application/json")
}

/// Whether a request is the dashboard's: its own paths, and the pages a browser asks for
/// where the API answers JSON.
pub fn is_page(method: &Method, path: &str, headers: &HeaderMap) -> bool {
    if path.starts_with("/ui/")
        || path == "/login"
        || path == "/favicon.ico"
        || path.starts_with("/environments/")
    {
        return true;
    }
    if method != Method::GET && method != Method::HEAD {
        return false;
    }
    path == "/"
        || (wants_html(headers)
            && (path == "/runs" || path == "/approvals" || path.starts_with("/runs/")))
}

/// The dashboard's routes.
pub fn router<B: Board>(b: Arc<B>) -> Router {
    Router::new()
        .route("/", get(board::<B>))
        .route("/login", get(login_page))
        .route("/runs", get(runs_page::<B>))
        .route("/runs/{run}", get(run_page::<B>))
        .route("/approvals", get(approvals_page::<B>))
        .route("/environments/{app}/{env}", get(environment_page::<B>))
        .route(
            "/environments/{app}/{env}/rollback",
            get(confirm_rollback::<B>),
        )
        .route("/ui/login", post(login::<B>))
        .route("/ui/logout", post(logout::<B>))
        .route("/ui/approve/{run}/{env}", post(decide::<B>))
        .route("/ui/rollback/{app}/{env}", post(rollback::<B>))
        .route("/ui/events", get(events::<B>))
        .route("/ui/app.css", get(|| async { asset("text/css", CSS) }))
        .route("/ui/app.js", get(|| async { asset("text/javascript", JS) }))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .fallback(|| async {
            html_page(
                StatusCode::NOT_FOUND,
                pages::problem(None, "Not found", "There is no such page."),
            )
        })
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(b)
}

async fn secure_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn html_page(status: StatusCode, m: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        m.into_string(),
    )
        .into_response()
}

fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

/// A local path to go back to after signing in; anything else is `/`.
fn local_path(next: &str) -> &str {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && next.len() <= 512
        && next.bytes().all(|b| b.is_ascii_graphic());
    if ok { next } else { "/" }
}

/// The answer to a request without an identity: the sign-in page for a browser, 401
/// for a script.
fn sign_in_first(parts: &axum::http::request::Parts) -> Response {
    if wants_html(&parts.headers) {
        let next = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let mut to = String::from("/login?next=");
        to.extend(form_urlencoded::byte_serialize(local_path(next).as_bytes()));
        see_other(&to)
    } else {
        reply(
            StatusCode::UNAUTHORIZED,
            json!({ "error": "authenticate as an approver or a reader (Authorization: Bearer <your token>), or sign in at /login" }),
        )
    }
}

/// A refusal as a page (or JSON): the API's words and status.
fn refusal(parts: &axum::http::request::Parts, v: Option<&Viewer>, e: &Error) -> Response {
    if !wants_html(&parts.headers) {
        return error_reply(e);
    }
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    html_page(
        status,
        pages::problem(v.map(|v| v.viewing(0)).as_ref(), "Not done", &e.to_string()),
    )
}

/// Pending approvals split into those `who` may still decide and the rest.
fn split_pending<B: Board>(
    b: &B,
    who: Option<&str>,
    list: Vec<PendingApproval>,
) -> (Vec<PendingApproval>, Vec<PendingApproval>) {
    let cfg = &b.pipeline().config;
    list.into_iter().partition(|a| {
        who.is_some_and(|w| {
            a.approvers.iter().any(|x| x == w)
                || a.groups
                    .iter()
                    .any(|g| cfg.groups.get(g).is_some_and(|m| m.iter().any(|x| x == w)))
        })
    })
}

async fn waiting_for<B: Board>(b: &B, v: &Viewer) -> usize {
    if v.approver.is_none() {
        return 0;
    }
    match approvals::pending(b.pipeline()).await {
        Ok(list) => split_pending(b, Some(&v.name), list).0.len(),
        Err(_) => 0,
    }
}

/// `GET /`: the board (HTML), or `{environments, approvals, runs, dora}` as JSON.
async fn board<B: Board>(State(b): State<Arc<B>>, request: axum::extract::Request) -> Response {
    let (parts, _) = request.into_parts();
    let Some(v) = viewer(&*b, &parts) else {
        return sign_in_first(&parts);
    };
    let data = match b.web().board_data(b.pipeline()).await {
        Ok(d) => d,
        Err(e) => return refusal(&parts, Some(&v), &e),
    };
    let dora = b.dora().await;
    if !wants_html(&parts.headers) {
        return reply(
            StatusCode::OK,
            json!({ "environments": data.envs, "approvals": data.pending, "runs": data.recent, "dora": dora }),
        );
    }
    let (mine, _) = split_pending(
        &*b,
        v.approver.as_ref().map(|a| a.name.as_str()),
        data.pending.clone(),
    );
    html_page(
        StatusCode::OK,
        pages::board(
            &v.viewing(mine.len()),
            &data.envs,
            &mine,
            &data.recent,
            dora.as_deref(),
        ),
    )
}

/// The query parameter `name` of `uri`, decoded.
fn query_param(uri: &axum::http::Uri, name: &str) -> Option<String> {
    form_urlencoded::parse(uri.query()?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

async fn login_page(request: axum::extract::Request) -> Response {
    let next = query_param(request.uri(), "next").unwrap_or_else(|| "/".into());
    html_page(StatusCode::OK, pages::login(local_path(&next), None))
}

/// Refuses a form posted from another site: the `Origin` (or `Sec-Fetch-Site`) must be
/// this server's own.
fn same_origin(headers: &HeaderMap) -> bool {
    let value = |n: header::HeaderName| headers.get(n).and_then(|v| v.to_str().ok());
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && site != "same-origin"
        && site != "none"
    {
        return false;
    }
    match (value(header::ORIGIN), value(header::HOST)) {
        (None, _) => true,
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host)),
        (Some(_), None) => false,
    }
}

/// Reads a form body (at most [`MAX_FORM`] bytes) into its fields.
async fn form<B: Board>(b: &B, body: Body) -> std::result::Result<HashMap<String, String>, Error> {
    let bytes = tokio::time::timeout(b.body_timeout(), axum::body::to_bytes(body, MAX_FORM))
        .await
        .map_err(|_| Error::invalid("form", "the body did not arrive in time"))?
        .map_err(|_| Error::invalid("form", format!("larger than {MAX_FORM} bytes")))?;
    Ok(form_urlencoded::parse(&bytes).into_owned().collect())
}

/// The checks every form post passes: same origin, a viewer, and its form token.
fn checked_form(
    parts: &axum::http::request::Parts,
    v: Option<Viewer>,
    fields: &HashMap<String, String>,
) -> std::result::Result<Viewer, Box<Response>> {
    if !same_origin(&parts.headers) {
        tracing::warn!(path = %parts.uri.path(), "dashboard form from another origin refused");
        return Err(Box::new(html_page(
            StatusCode::FORBIDDEN,
            pages::problem(None, "Refused", "This form was posted from another site."),
        )));
    }
    let Some(v) = v else {
        return Err(Box::new(sign_in_first(parts)));
    };
    let token = fields.get("csrf").map(String::as_str).unwrap_or("");
    if !same(token.as_bytes(), v.csrf.as_bytes()) {
        tracing::warn!(viewer = %v.name, path = %parts.uri.path(), "dashboard form without its token refused");
        return Err(Box::new(html_page(
            StatusCode::FORBIDDEN,
            pages::problem(
                Some(&v.viewing(0)),
                "Refused",
                "The form's token is missing or stale: reload the page and try again.",
            ),
        )));
    }
    Ok(v)
}

/// A form an approver posts: its fields, who posted it, and as which approver; or the
/// answer refusing it (no form token, another origin, not signed in, a reader: `what`
/// says what readers cannot do).
async fn approver_form<B: Board>(
    b: &B,
    parts: &axum::http::request::Parts,
    body: Body,
    what: &str,
) -> std::result::Result<(HashMap<String, String>, Viewer, Approver), Box<Response>> {
    let fields = form(b, body)
        .await
        .map_err(|e| Box::new(refusal(parts, None, &e)))?;
    let v = checked_form(parts, viewer(b, parts), &fields)?;
    match v.approver.clone() {
        Some(a) => Ok((fields, v, a)),
        None => Err(Box::new(refusal(
            parts,
            Some(&v),
            &Error::Refused(format!("{} is a reader; only approvers {what}", v.name)),
        ))),
    }
}

/// `POST /ui/login` (`token`, `next`): a session for the approver or reader whose token it is.
async fn login<B: Board>(State(b): State<Arc<B>>, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    if !same_origin(&parts.headers) {
        return html_page(
            StatusCode::FORBIDDEN,
            pages::problem(None, "Refused", "This form was posted from another site."),
        );
    }
    let ip = crate::runtime::api::peer_of(&parts.extensions).ip();
    if !b.web().may_sign_in(ip) {
        tracing::warn!(%ip, "dashboard sign-in refused: too many failures from this address");
        return html_page(
            StatusCode::TOO_MANY_REQUESTS,
            pages::login(
                "/",
                Some("Too many failed sign-ins from your address: wait a minute and try again."),
            ),
        );
    }
    let fields = match form(&*b, body).await {
        Ok(f) => f,
        Err(e) => {
            return html_page(
                StatusCode::BAD_REQUEST,
                pages::login("/", Some(&e.to_string())),
            );
        }
    };
    let next = local_path(fields.get("next").map(String::as_str).unwrap_or("/")).to_string();
    let token = fields.get("token").map(|t| t.trim()).unwrap_or("");
    let mut headers = HeaderMap::new();
    let who = HeaderValue::from_str(&format!("Bearer {token}"))
        .ok()
        .filter(|_| !token.is_empty())
        .and_then(|h| {
            headers.insert(header::AUTHORIZATION, h);
            b.caller(&headers, &axum::http::Extensions::new()).ok()
        });
    let who = match who {
        Some(Caller::Approver(a)) => Who::Approver(a.name),
        Some(Caller::Reader(r)) => Who::Reader(r),
        None => {
            b.web().failed_sign_in(ip);
            tracing::warn!(%ip, "dashboard sign-in with an unknown token refused");
            return html_page(
                StatusCode::UNAUTHORIZED,
                pages::login(&next, Some("That token belongs to no approver or reader.")),
            );
        }
    };
    let name = match &who {
        Who::Approver(n) | Who::Reader(n) => n.clone(),
    };
    match b.web().open(who) {
        Ok(id) => {
            tracing::info!(who = %name, "signed in to the dashboard");
            let mut r = see_other(&next);
            if let Ok(c) = HeaderValue::from_str(&b.web().cookie(&id, SESSION_HOURS * 3600)) {
                r.headers_mut().insert(header::SET_COOKIE, c);
            }
            r
        }
        Err(e) => html_page(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::login(&next, Some(&e.to_string())),
        ),
    }
}

/// `POST /ui/logout`: ends the session.
async fn logout<B: Board>(State(b): State<Arc<B>>, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    let fields = form(&*b, body).await.unwrap_or_default();
    let v = match checked_form(&parts, viewer(&*b, &parts), &fields) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if let Some(key) = v.session {
        b.web().close(&key);
    }
    let mut r = see_other("/login");
    if let Ok(c) = HeaderValue::from_str(&b.web().cookie("", 0)) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

/// `GET /runs?after=` as a page.
async fn runs_page<B: Board>(State(b): State<Arc<B>>, request: axum::extract::Request) -> Response {
    let (parts, _) = request.into_parts();
    let Some(v) = viewer(&*b, &parts) else {
        return sign_in_first(&parts);
    };
    let after = query_param(&parts.uri, "after");
    if let Some(a) = &after
        && !runs::is_cursor(a)
    {
        return refusal(
            &parts,
            Some(&v),
            &Error::invalid("after", "must be a cursor from the previous page"),
        );
    }
    match runs::page(b.pipeline(), 50, after.as_deref()).await {
        Ok(page) => {
            let waiting = waiting_for(&*b, &v).await;
            html_page(
                StatusCode::OK,
                pages::runs(&v.viewing(waiting), &page.runs, page.next.as_deref()),
            )
        }
        Err(e) => refusal(&parts, Some(&v), &e),
    }
}

/// `GET /approvals` as a page.
async fn approvals_page<B: Board>(
    State(b): State<Arc<B>>,
    request: axum::extract::Request,
) -> Response {
    let (parts, _) = request.into_parts();
    let Some(v) = viewer(&*b, &parts) else {
        return sign_in_first(&parts);
    };
    match approvals::pending(b.pipeline()).await {
        Ok(list) => {
            let (mine, others) =
                split_pending(&*b, v.approver.as_ref().map(|a| a.name.as_str()), list);
            html_page(
                StatusCode::OK,
                pages::approvals(&v.viewing(mine.len()), &mine, &others, None),
            )
        }
        Err(e) => refusal(&parts, Some(&v), &e),
    }
}

/// The last [`OUTPUT_LINES`] lines of a run's test output, without control characters.
fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(OUTPUT_LINES);
    lines[from..]
        .iter()
        .map(|l| {
            l.chars()
                .filter(|c| !c.is_control() || *c == '\t')
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn render_run<B: Board>(
    b: &B,
    v: &Viewer,
    run: &str,
    flash: Option<&Flash>,
) -> Result<Markup> {
    let p = b.pipeline();
    let (app, run) = runs::resolve(p, run).await?;
    let view = runs::view(p, &app, &run).await?;
    let output = p
        .ports
        .store
        .get(&crate::store::test_output_key(&app, run.as_str()))
        .await?
        .map(|o| tail(&o.bytes));
    let mut decidable = vec![];
    if let Some(a) = &v.approver {
        for rec in &view.approvals {
            let decided = rec.decisions.iter().any(|d| d.by == a.name);
            if rec.status == ApprovalStatus::Pending && !decided {
                let held = crate::pipeline::holds::active_hold(p, &app, &rec.environment)
                    .await?
                    .is_some();
                decidable.push((rec.environment.clone(), held));
            }
        }
    }
    let waiting = waiting_for(b, v).await;
    Ok(pages::run(
        &v.viewing(waiting),
        &view,
        &decidable,
        output.as_deref(),
        flash,
    ))
}

/// `GET /runs/<run>` as a page.
async fn run_page<B: Board>(
    State(b): State<Arc<B>>,
    Path(run): Path<String>,
    request: axum::extract::Request,
) -> Response {
    let (parts, _) = request.into_parts();
    let Some(v) = viewer(&*b, &parts) else {
        return sign_in_first(&parts);
    };
    if !is_run_prefix(&run) {
        return refusal(
            &parts,
            Some(&v),
            &Error::invalid("run", format!("{} is not a run id", excerpt(&run))),
        );
    }
    match render_run(&*b, &v, &run, None).await {
        Ok(m) => html_page(StatusCode::OK, m),
        Err(e) => refusal(&parts, Some(&v), &e),
    }
}

/// `POST /ui/approve/<run>/<env>` (`decision`, `comment`, `release_hold`, `csrf`): a
/// decision through the approve stage with every rule, as `POST /approvals/<run>/<env>`.
async fn decide<B: Board>(
    State(b): State<Arc<B>>,
    Path((run, env)): Path<(String, String)>,
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let (fields, v, by) = match approver_form(&*b, &parts, body, "decide").await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if !is_run_prefix(&run) || !is_name(&env) {
        return refusal(
            &parts,
            Some(&v),
            &Error::invalid("run/environment", "not a run id and an environment name"),
        );
    }
    let verdict = match fields.get("decision").map(String::as_str) {
        Some("approve") => Verdict::Approve,
        Some("reject") => Verdict::Reject,
        _ => {
            return refusal(
                &parts,
                Some(&v),
                &Error::invalid("decision", "approve or reject"),
            );
        }
    };
    let comment = fields
        .get("comment")
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty());
    let result = approve::decide(
        b.pipeline(),
        Decision {
            run: run.clone(),
            environment: env.clone(),
            by,
            verdict,
            comment,
            release_hold: fields.get("release_hold").is_some_and(|v| v == "true"),
        },
    )
    .await;
    b.decided();
    b.web().changed();
    tracing::info!(approver = %v.name, %run, environment = %env, ok = result.is_ok(), "decision from the dashboard");
    match result {
        Ok(report) => see_other(&format!("/runs/{}", report.run)),
        Err(e) => {
            let status =
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let flash = Flash::Refused(e.to_string());
            match render_run(&*b, &v, &run, Some(&flash)).await {
                Ok(m) => html_page(status, m),
                Err(_) => refusal(&parts, Some(&v), &e),
            }
        }
    }
}

/// The environment `app`/`env` with its history, checked against the configuration.
async fn environment_data<B: Board>(
    b: &B,
    app: &str,
    env: &str,
) -> Result<(
    environments::EnvironmentView,
    Vec<deployments::HistoryEntry>,
)> {
    if !is_name(app) || !is_name(env) {
        return Err(Error::invalid(
            "app/environment",
            format!("{}/{} are not names", excerpt(app), excerpt(env)),
        ));
    }
    let p = b.pipeline();
    p.config.app(app)?.environment(env)?;
    let view = environments::view(p)
        .await?
        .into_iter()
        .find(|e| e.app == app && e.environment == env)
        .ok_or_else(|| Error::not_found("environment", format!("{app}/{env}")))?;
    let history = deployments::history(p, app, env).await?;
    Ok((view, history))
}

/// `GET /environments/<app>/<env>`: what is live there and its history (HTML), or
/// `{environment, history}`.
async fn environment_page<B: Board>(
    State(b): State<Arc<B>>,
    Path((app, env)): Path<(String, String)>,
    request: axum::extract::Request,
) -> Response {
    let (parts, _) = request.into_parts();
    let Some(v) = viewer(&*b, &parts) else {
        return sign_in_first(&parts);
    };
    match environment_data(&*b, &app, &env).await {
        Ok((view, history)) if !wants_html(&parts.headers) => reply(
            StatusCode::OK,
            json!({ "environment": view, "history": history }),
        ),
        Ok((view, history)) => {
            let waiting = waiting_for(&*b, &v).await;
            html_page(
                StatusCode::OK,
                pages::environment(&v.viewing(waiting), &view, &history, None),
            )
        }
        Err(e) => refusal(&parts, Some(&v), &e),
    }
}

/// The `to` of a rollback form: a digest from the environment's history.
fn history_entry<'a>(
    history: &'a [deployments::HistoryEntry],
    to: &str,
) -> Result<&'a deployments::HistoryEntry> {
    history
        .iter()
        .rev()
        .find(|h| h.image.digest.as_str() == to)
        .ok_or_else(|| Error::invalid("to", format!("{} was never deployed here", excerpt(to))))
}

/// `GET /environments/<app>/<env>/rollback?to=<digest>`: the confirmation page.
async fn confirm_rollback<B: Board>(
    State(b): State<Arc<B>>,
    Path((app, env)): Path<(String, String)>,
    request: axum::extract::Request,
) -> Response {
    let (parts, _) = request.into_parts();
    let Some(v) = viewer(&*b, &parts) else {
        return sign_in_first(&parts);
    };
    if v.approver.is_none() {
        return refusal(
            &parts,
            Some(&v),
            &Error::Refused(format!("{} is a reader; only approvers roll back", v.name)),
        );
    }
    let to = query_param(&parts.uri, "to").unwrap_or_default();
    let result = async {
        let (view, history) = environment_data(&*b, &app, &env).await?;
        let entry = history_entry(&history, &to)?.clone();
        Ok::<_, Error>((view, entry))
    }
    .await;
    match result {
        Ok((view, entry)) => html_page(
            StatusCode::OK,
            pages::confirm_rollback(&v.viewing(0), &view, &entry),
        ),
        Err(e) => refusal(&parts, Some(&v), &e),
    }
}

/// `POST /ui/rollback/<app>/<env>` (`to`, `reason`, `csrf`): `baton rollback` by the
/// signed-in approver, with the reason recorded; the environment is then held.
async fn rollback<B: Board>(
    State(b): State<Arc<B>>,
    Path((app, env)): Path<(String, String)>,
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let (fields, v, _) = match approver_form(&*b, &parts, body, "roll back").await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let reason = fields.get("reason").map(|r| r.trim()).unwrap_or("");
    let to = fields.get("to").map(String::as_str).unwrap_or("");
    let result = async {
        if reason.is_empty() || reason.chars().count() > 500 {
            return Err(Error::invalid(
                "reason",
                "say why, in at most 500 characters",
            ));
        }
        let (_, history) = environment_data(&*b, &app, &env).await?;
        history_entry(&history, to)?;
        crate::stages::deploy::rollback(
            b.pipeline(),
            &app,
            &env,
            Some(to),
            Some(&v.name),
            Some(reason),
        )
        .await
    }
    .await;
    b.decided();
    b.web().changed();
    tracing::info!(approver = %v.name, %app, environment = %env, ok = result.is_ok(), "rollback from the dashboard");
    let flash = match &result {
        Ok(r) => Flash::Done(format!(
            "Rolled back to {}; {env} is held on it until the hold is released.",
            r.to
        )),
        Err(e) => Flash::Refused(e.to_string()),
    };
    let status = match &result {
        Ok(_) => StatusCode::OK,
        Err(e) => {
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        }
    };
    match environment_data(&*b, &app, &env).await {
        Ok((view, history)) => html_page(
            status,
            pages::environment(&v.viewing(0), &view, &history, Some(&flash)),
        ),
        Err(e) => refusal(&parts, Some(&v), &e),
    }
}

/// `GET /ui/events?since=<n>`: server-sent events, one `changed` each time something
/// changed (coalesced to at most one every 250 ms), for the signed-in; at once when
/// something changed since the page's counter `since`.
async fn events<B: Board>(State(b): State<Arc<B>>, request: axum::extract::Request) -> Response {
    let (parts, _) = request.into_parts();
    if viewer(&*b, &parts).is_none() {
        return reply(
            StatusCode::UNAUTHORIZED,
            json!({ "error": "sign in at /login" }),
        );
    }
    let since = query_param(&parts.uri, "since").and_then(|v| v.parse::<u64>().ok());
    let mut rx = b.web().changes.subscribe();
    // A receiver starts out "seen": mark it unseen when the page is behind already.
    if since.is_some_and(|s| s != *rx.borrow()) {
        rx.mark_changed();
    }
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        tokio::time::sleep(Duration::from_millis(250)).await;
        let n = *rx.borrow_and_update();
        Some((
            Ok::<_, std::convert::Infallible>(
                SseEvent::default().event("changed").data(n.to_string()),
            ),
            rx,
        ))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// One router for `baton serve`: dashboard requests ([`is_page`]) go to `pages`, the
/// rest to `api`.
pub fn combine(api: Router, pages: Router) -> Router {
    use tower::ServiceExt;
    Router::new().fallback_service(tower::service_fn(move |req: axum::extract::Request| {
        let to_pages = is_page(req.method(), req.uri().path(), req.headers());
        let target = if to_pages { pages.clone() } else { api.clone() };
        async move { target.oneshot(req).await }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(local_path("/runs/abcd"), "/runs/abcd");
        assert_eq!(local_path("/runs?after=x"), "/runs?after=x");
        for bad in [
            "//evil.example/",
            "/\\evil.example",
            "https://evil.example/",
            "javascript:alert(1)",
            "/a b",
            "",
        ] {
            assert_eq!(local_path(bad), "/", "{bad}");
        }
    }

    #[test]
    fn forms_from_another_origin_are_refused() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8080")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
            ("sec-fetch-site", "same-origin"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "null"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("sec-fetch-site", "cross-site"),
        ])));
    }

    #[test]
    fn browsers_get_pages_and_scripts_get_the_api() {
        let html = headers(&[("accept", "text/html,application/xhtml+xml,*/*;q=0.8")]);
        let json = headers(&[("accept", "application/json")]);
        let none = HeaderMap::new();
        assert!(is_page(&Method::GET, "/", &json));
        assert!(is_page(&Method::GET, "/runs/abcd1234", &html));
        assert!(!is_page(&Method::GET, "/runs/abcd1234", &json));
        assert!(!is_page(&Method::GET, "/runs", &none));
        assert!(!is_page(&Method::POST, "/", &html));
        assert!(!is_page(&Method::POST, "/approvals/abcd/production", &html));
        assert!(is_page(&Method::POST, "/ui/approve/abcd/production", &none));
        assert!(is_page(&Method::GET, "/environments/web/staging", &json));
        assert!(!is_page(&Method::GET, "/metrics", &html));
    }

    #[test]
    fn sessions_open_expire_and_close() {
        let web = Web::new(false).unwrap();
        let id = web.open(Who::Reader("ci".into())).unwrap();
        let (key, who) = web.session(&id).unwrap();
        assert!(matches!(who, Who::Reader(n) if n == "ci"));
        assert!(web.session("00").is_none());
        assert!(web.session(&"0".repeat(64)).is_none());
        // Another session's form token is not this one's.
        let other = web.open(Who::Approver("alice".into())).unwrap();
        let (other_key, _) = web.session(&other).unwrap();
        assert_ne!(
            web.csrf(&format!("session:{}", hex::encode(key))),
            web.csrf(&format!("session:{}", hex::encode(other_key)))
        );
        web.sessions().get_mut(&key).unwrap().expires = Utc::now() - chrono::Duration::seconds(1);
        assert!(web.session(&id).is_none(), "an expired session is gone");
        web.close(&other_key);
        assert!(web.session(&other).is_none());
        assert!(web.cookie("x", 1).contains("HttpOnly; SameSite=Strict"));
        assert!(!web.cookie("x", 1).contains("Secure"));
        assert!(Web::new(true).unwrap().cookie("x", 1).ends_with("; Secure"));
    }

    #[test]
    fn an_address_that_keeps_failing_to_sign_in_waits() {
        let web = Web::new(false).unwrap();
        let (a, b) = (
            std::net::IpAddr::from([10, 0, 0, 1]),
            std::net::IpAddr::from([10, 0, 0, 2]),
        );
        for _ in 0..SIGN_IN_FAILURES {
            assert!(web.may_sign_in(a));
            web.failed_sign_in(a);
        }
        assert!(!web.may_sign_in(a), "the eleventh try waits");
        assert!(web.may_sign_in(b), "another address does not");
        // The window passed: it may try again.
        web.failures.lock().unwrap().get_mut(&a).unwrap().1 =
            std::time::Instant::now() - SIGN_IN_WINDOW;
        assert!(web.may_sign_in(a));
    }

    #[test]
    fn the_output_tail_keeps_the_last_lines_without_control_characters() {
        let mut s = String::new();
        for i in 0..200 {
            s.push_str(&format!("line {i}\x1b[31m red\x07\n"));
        }
        let t = tail(s.as_bytes());
        assert_eq!(t.lines().count(), OUTPUT_LINES);
        assert!(t.starts_with("line 120[31m red"), "{t}");
        assert!(!t.contains('\x1b') && !t.contains('\x07'));
    }
}
