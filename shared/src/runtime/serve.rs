//! `baton serve`: the always-on local form of Baton. It serves the HTTP API
//! ([`crate::runtime::api`]: registry webhooks, approval decisions and status queries)
//! and the web dashboard ([`crate::runtime::dashboard`]) on hyper, and a dispatcher
//! delivers the embedded bus to the stages.
//!
//! As the API's host it authenticates approvers and readers by bearer token (each their
//! own, from `serve.approvers.<who>.token_env` and `serve.readers.<who>.token_env`), or
//! a trusted proxy's identity header together with the proxy's shared secret; queues an
//! accepted webhook on the durable bus and answers 202 at once (so a crash after 202
//! loses nothing); and keeps a malformed webhook's body under `deadletters/webhooks/`.
//!
//! Every connection has `serve.request_timeout` to send its headers and then its body;
//! at most `serve.max_connections` are served at once (the rest wait in the backlog).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{Extensions, HeaderMap};
use chrono::Utc;
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, Semaphore};

use crate::adapters::embedded::DrainOptions;
use crate::config::secret_env;
use crate::error::{Error, Result};
use crate::pipeline::Pipeline;
use crate::ports::{ObjectStore, Precondition};
use crate::runtime::api::{self, Caller, Denied, Host, Routes};
use crate::runtime::dashboard::{self, Board, Web};
use crate::runtime::local::{Local, LocalPorts};
use crate::triggers::Parsed;
use crate::webhooks::{Endpoint, same};

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
    wake: Arc<Notify>,
    dispatcher: std::sync::Mutex<Dispatcher>,
    metrics: crate::runtime::metrics::Metrics,
    slack: Option<crate::slack::SlackEndpoint>,
    web: Web,
    /// Wakes the background DORA computation the first time the dashboard asks.
    dora_wanted: Notify,
}

/// What the dispatcher last did, for `/healthz`.
#[derive(Debug, Clone, Default)]
struct Dispatcher {
    running: bool,
    /// Another process holds the state directory's delivery lock.
    refused: Option<String>,
    /// The last drain's error, until a later drain succeeds.
    error: Option<String>,
}

/// Marks the dispatcher stopped however its task ends (a panic or an abort too, even
/// before it first ran).
struct Running(Arc<Server>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.set_dispatcher(|d| d.running = false);
    }
}

/// How many index entries a walk of the summarizer reads: few while messages wait or
/// are delivered (a walk is then short, and the next one waits, see [`summary_pace`]),
/// more when the bus is idle.
fn summary_scan(busy: bool) -> usize {
    if busy { 32 } else { 256 }
}

/// How long the summarizer waits after a walk that took `took`: 2 s once it reached
/// the runs known summarized (`more` false). While more is to walk, as long as the walk
/// took when the bus is idle (half its time: requests, a restart's first walk over a long
/// history, are served beside it), twice as long while messages wait or are delivered,
/// so that packing and summarizing a backlog (the runs of a burst going quiet) takes at
/// most a third of its time and the deliveries of runs in flight are not held behind it.
fn summary_pace(busy: bool, more: bool, took: Duration) -> Duration {
    const EVERY: Duration = Duration::from_secs(2);
    if !more {
        return EVERY;
    }
    took.saturating_mul(if busy { 2 } else { 1 })
        .clamp(Duration::from_millis(10), EVERY)
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
            .map(|w| Endpoint::from_config_in(w, &local.pipeline.config.base_dir))
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
            wake: Arc::new(Notify::new()),
            dispatcher: Default::default(),
            metrics: Default::default(),
            slack: cfg
                .slack
                .as_ref()
                .map(crate::slack::SlackEndpoint::from_config)
                .transpose()?,
            // A session cookie goes over plain HTTP only on loopback.
            web: Web::new(!listening.ip().is_loopback())?,
            dora_wanted: Notify::new(),
        })
    }

    /// The webhook endpoints, for the start-up banner.
    pub fn endpoints(&self) -> impl Iterator<Item = (&str, &'static str)> {
        self.endpoints
            .iter()
            .map(|e| (e.name.as_str(), e.source.as_str()))
    }

    /// The HTTP API and the dashboard, with this server as their host.
    pub fn router(self: &Arc<Self>) -> Router {
        dashboard::combine(api::router(self.clone()), dashboard::router(self.clone())).layer(
            axum::middleware::from_fn_with_state(self.clone(), durable_before_answer),
        )
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
            // Running from now: /healthz may be asked before the task first runs.
            self.set_dispatcher(|d| d.running = true);
            let running = Running(self.clone());
            // The guard lives in the task's future: dropped when it ends or is aborted.
            tokio::spawn(async move { running.0.dispatch_forever().await })
        };
        let retention = {
            let s = self.clone();
            tokio::spawn(async move { s.retain_forever().await })
        };
        let dora = {
            let s = self.clone();
            tokio::spawn(async move { s.dora_forever().await })
        };
        let summaries = {
            let s = self.clone();
            tokio::spawn(async move { s.summarize_forever().await })
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
        retention.abort();
        dora.abort();
        summaries.abort();
        Ok(())
    }

    /// Applies the run retention every `retention.every` (never when it is 0s).
    async fn retain_forever(&self) {
        let every = self.local.pipeline.config.retention.every;
        if every.is_zero() {
            return;
        }
        loop {
            tokio::time::sleep(every).await;
            match self.local.gc(false).await {
                Ok(r) if !r.removed.is_empty() || r.history_removed > 0 => {
                    tracing::info!(
                        removed = r.removed.len(),
                        history_removed = r.history_removed,
                        kept = r.kept,
                        bytes = r.bytes_freed,
                        "retention removed finished runs"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention failed; trying again later"),
            }
        }
    }

    /// Keeps the summaries of quiet runs in the run index (pages of runs then read one
    /// small entry per run): walks from the newest run down to where every run is known
    /// summarized (the whole history at first, for a state directory from before
    /// summaries), paced by [`summary_pace`] so that it gives way to deliveries.
    async fn summarize_forever(&self) {
        let mut summarizer = crate::pipeline::runs::Summarizer::default();
        // The first walk at once: a restart finds the runs that ended just before the
        // last stop unsummarized, and pages would read each of them until it ran.
        loop {
            let busy = self.local.pipeline.ports.bus.pending() > 0;
            let started = std::time::Instant::now();
            let more = match summarizer
                .step(&self.local.pipeline, summary_scan(busy))
                .await
            {
                Ok(r) => {
                    if r.wrote > 100 {
                        tracing::info!(wrote = r.wrote, "kept the summaries of runs");
                    }
                    r.cut.is_some()
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not keep run summaries; trying again later");
                    false
                }
            };
            tokio::time::sleep(summary_pace(busy, more, started.elapsed())).await;
        }
    }

    /// Computes the DORA figures (they read every run record in the window) beside the
    /// requests once the dashboard has asked for them, then each minute, so a board never
    /// waits for them; live boards refresh when they are ready. (A scrape of `/metrics`
    /// computes them itself when they are older than a minute.)
    async fn dora_forever(&self) {
        self.dora_wanted.notified().await;
        loop {
            match self.metrics.dora(&self.local.pipeline).await {
                Ok(_) => self.web.changed(),
                Err(e) => {
                    tracing::warn!(error = %e, "DORA figures not computed; trying again in a minute")
                }
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    }

    fn set_dispatcher(&self, f: impl FnOnce(&mut Dispatcher)) {
        f(&mut self.dispatcher.lock().unwrap_or_else(|p| p.into_inner()));
    }

    async fn dispatch_forever(&self) {
        let mut warned = false;
        let opts = DrainOptions {
            concurrency: self.local.pipeline.config.bus.concurrency,
            wake: Some(self.wake.clone()),
            ..DrainOptions::default()
        };
        loop {
            let result = self
                .local
                .drain(&opts, |d| {
                    self.metrics.observe(d);
                    self.web.changed();
                    tracing::info!(subscription = %d.subscription, id = %d.message.id,
                        outcome = ?d.outcome, ms = d.elapsed.as_millis() as u64, "delivered");
                })
                .await;
            match result {
                Ok(_) => {
                    warned = false;
                    self.set_dispatcher(|d| (d.refused, d.error) = (None, None));
                }
                Err(Error::Refused(msg)) => {
                    if !warned {
                        tracing::warn!(%msg, "not delivering for now");
                        warned = true;
                    }
                    self.set_dispatcher(|d| d.refused = Some(msg));
                }
                Err(e) => {
                    tracing::error!(error = %e, "dispatcher error; retrying");
                    self.set_dispatcher(|d| d.error = Some(e.to_string()));
                }
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
    fn identify(&self, headers: &HeaderMap) -> Option<Caller> {
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
}

/// A request that may have written (any method but GET and HEAD) is answered only once
/// what it wrote is on disk: the store defers its syncs to the bus's appends and to this.
async fn durable_before_answer(
    axum::extract::State(server): axum::extract::State<Arc<Server>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let writes = !matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    let response = next.run(request).await;
    if writes && let Err(e) = server.local.flush().await {
        tracing::error!(error = %e, "could not make a request's writes durable");
        return api::reply(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({
                "error": format!("the state directory could not be synced ({e}); nothing is confirmed, send the request again"),
                "kind": "unavailable",
            }),
        );
    }
    response
}

impl Host for Server {
    type Ports = LocalPorts;

    fn pipeline(&self) -> &Pipeline<LocalPorts> {
        &self.local.pipeline
    }

    fn routes(&self) -> Routes {
        Routes {
            hooks: true,
            decisions: true,
            line: true,
            queries: true,
        }
    }

    fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    fn caller(
        &self,
        headers: &HeaderMap,
        _extensions: &Extensions,
    ) -> std::result::Result<Caller, Denied> {
        self.identify(headers).ok_or(Denied::Anonymous)
    }

    fn how_to_authenticate(&self) -> &'static str {
        "Authorization: Bearer <your token>"
    }

    fn body_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Queues the notification on the durable bus for ingest; the dispatcher takes it.
    async fn accept(&self, webhook: &str, parsed: Parsed) -> Result<Map<String, Value>> {
        let id = self.local.submit_parsed(&parsed).await?;
        self.wake.notify_one();
        self.web.changed();
        tracing::info!(%webhook, %id, "webhook queued");
        let mut fields = Map::new();
        fields.insert("queued".into(), json!(true));
        fields.insert("id".into(), json!(id));
        Ok(fields)
    }

    async fn malformed(&self, webhook: &str, body: &[u8], error: &Error) {
        self.dead_letter(webhook, body, error).await;
    }

    fn decided(&self) {
        self.wake.notify_one();
        self.web.changed();
    }

    fn slack(&self) -> Option<&crate::slack::SlackEndpoint> {
        self.slack.as_ref()
    }

    async fn metrics(&self) -> Option<Result<String>> {
        Some(self.metrics.render(&self.local.pipeline).await)
    }

    /// Healthy when the dispatcher runs without error and the state directory takes a
    /// write; the queue depth is reported either way.
    async fn health(&self) -> (bool, Value) {
        let d = self
            .dispatcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let dir = self.local.state_dir().to_path_buf();
        let probe = tokio::task::spawn_blocking(move || {
            let path = dir.join(".healthz");
            std::fs::write(&path, b"ok").and_then(|_| std::fs::remove_file(&path))
        })
        .await;
        let state_dir = match probe {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("cannot write the state directory: {e}")),
            Err(e) => Err(format!("the probe did not finish: {e}")),
        };
        let dispatcher = if !d.running {
            "stopped".to_string()
        } else if d.error.is_some() {
            // /healthz answers anyone: the error (paths, runs) stays in the log.
            "failing: see the server's log".to_string()
        } else if let Some(r) = &d.refused {
            format!("waiting: {r}")
        } else {
            "running".to_string()
        };
        let healthy = d.running && d.error.is_none() && state_dir.is_ok();
        (
            healthy,
            json!({
                "status": if healthy { "ok" } else { "unhealthy" },
                "dispatcher": dispatcher,
                "queue_depth": self.local.pipeline.ports.bus.pending(),
                "state_dir": match &state_dir { Ok(()) => "writable".to_string(), Err(e) => e.clone() },
            }),
        )
    }
}

impl Board for Server {
    fn web(&self) -> &Web {
        &self.web
    }

    async fn dora(&self) -> Option<Vec<crate::pipeline::dora::Figures>> {
        let figures = self.metrics.dora_cached();
        if figures.is_none() {
            self.dora_wanted.notify_one();
        }
        figures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The summarizer walks long and half the time when the bus is idle, short and a
    /// third of the time when deliveries wait (pauses of at least 10 ms, at most 2 s), and
    /// every 2 s once it has walked down to the runs known summarized.
    #[test]
    fn the_summarizer_gives_way_to_deliveries() {
        let ms = Duration::from_millis;
        assert!(summary_scan(true) < summary_scan(false));
        assert_eq!(summary_pace(false, true, ms(300)), ms(300));
        assert_eq!(summary_pace(false, true, ms(2)), ms(10));
        assert_eq!(summary_pace(true, true, ms(40)), ms(80));
        assert_eq!(summary_pace(true, true, ms(1)), ms(10));
        assert_eq!(summary_pace(true, true, ms(5_000)), ms(2_000));
        assert_eq!(summary_pace(true, true, Duration::MAX), ms(2_000));
        for busy in [false, true] {
            assert_eq!(summary_pace(busy, false, ms(3)), ms(2_000));
        }
    }
}
