//! The Lambda side of every function: one handler, generic over the function's stage
//! (and the adapters it adds, `X`), that takes the raw invocation payload and routes it
//! by shape. What a stage's function serves besides its queue is its [`Function`] impl.
//!
//! * SQS batches (event source mapping, SNS envelope in each body): each record runs
//!   through the harness; transient failures are reported as `batchItemFailures` (SQS
//!   delivers them again; after `maxReceiveCount` they rest in the DLQ). A wait sends the
//!   message back to its queue as a new message with a delay (at most SQS's 15 minutes;
//!   a longer wait checks in and waits again) and lets the original go, so no function
//!   idles and a long wait (a 40-minute test suite, a soak, a freeze) never counts
//!   towards `maxReceiveCount`; if it cannot be sent, the original's visibility timeout
//!   is set instead. Other records are deleted by Lambda.
//!   Unreadable bodies fail too, so after the queue's `maxReceiveCount` they rest in the
//!   DLQ instead of being lost.
//! * function URL requests: served by the HTTP API's router ([`crate::runtime::api`]),
//!   the same one `baton serve` serves, with the function as its host. Ingest serves the
//!   registry webhooks (`POST /hooks/<name>`, authenticated as `serve.webhooks` says) and
//!   ingests an accepted one at once; approve serves decisions, whose approver is the
//!   configured approver whose IAM principal (`serve.approvers.<name>.iam`) is the
//!   caller's verified ARN (`requestContext.authorizer.iam`), never the body and never a
//!   name the caller picks; an identity no approver maps to is refused (403).
//! * ingest also takes the EventBridge "ECR Image Action" event.

use std::sync::Arc;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use aws_lambda_events::http::{Extensions, HeaderMap, HeaderValue, header::CONTENT_TYPE};
use aws_lambda_events::lambda_function_urls::{
    LambdaFunctionUrlRequest, LambdaFunctionUrlResponse,
};
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use serde_json::{Map, Value, json};

use crate::adapters::aws::{Clients, Lazy};
use crate::config::Config;
use crate::envelopes::{DocumentKind, event_from_sns_notification, identify};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::pipeline::harness::{self, Disposition, Mode};
use crate::pipeline::stage::{Input, ReactionInput, Stage};
use crate::pipeline::{Pipeline, Settings, runs};
use crate::reference::excerpt;
use crate::runtime::api::{self, Caller, Denied, Host, Routes};
use crate::runtime::lambda::ports::{
    AwsPorts, Extra, WithNotifier, WithRegistry, WithTargets, WithTests, load_config,
};
use crate::stages::{Approve, Deploy, Gate, Ingest, Notify, Promote, Test, ingest};
use crate::triggers::{Parsed, Trigger, TriggerKind};
use crate::webhooks::Endpoint;

/// What a stage's function does with each kind of invocation besides its queue's
/// batches, which every function takes.
pub trait Function<X: Extra>: Stage<AwsPorts<X>> + Sized {
    /// The webhook endpoints its URL serves (ingest).
    fn endpoints(_config: &Config) -> Result<Vec<Endpoint>> {
        Ok(vec![])
    }

    /// The inputs an event from its queue becomes (notify: one per matching reaction).
    fn inputs(_config: &Config, event: Event) -> Vec<Input> {
        vec![Input::Event(event)]
    }

    /// The routes of the HTTP API its function URL serves (none: every path is 404).
    fn routes() -> Routes {
        Routes::default()
    }

    /// An authenticated webhook that names pushes (ingest ingests it).
    fn accept(
        _pipeline: &Pipeline<AwsPorts<X>>,
        _parsed: Parsed,
    ) -> impl std::future::Future<Output = Result<Map<String, Value>>> + Send {
        async {
            Err(Error::not_found(
                "webhook endpoint",
                format!("the {} function takes no webhooks", Self::SPEC.name),
            ))
        }
    }

    /// Any other payload (ingest: an ECR event from EventBridge).
    fn other(
        _app: &App<Self, X>,
        _payload: Value,
    ) -> impl std::future::Future<Output = Result<Value>> + Send {
        async {
            Err(Error::invalid(
                "invocation",
                format!(
                    "the {} function takes SQS batches and retry requests",
                    Self::SPEC.name
                ),
            ))
        }
    }
}

impl Function<WithRegistry> for Ingest {
    fn endpoints(config: &Config) -> Result<Vec<Endpoint>> {
        let endpoints = config
            .serve
            .webhooks
            .iter()
            .map(|w| Endpoint::from_config_in(w, &config.base_dir))
            .collect::<Result<Vec<_>>>()?;
        // The function URL is public: an endpoint without authentication would let
        // anyone start runs.
        if let Some(open) = endpoints.iter().find(|e| e.is_open()) {
            return Err(Error::invalid(
                format!("webhook {}", open.name),
                "auth: none is refused on the ingest function URL, which anyone on the internet can call; configure the registry's authentication",
            ));
        }
        Ok(endpoints)
    }

    fn routes() -> Routes {
        Routes {
            hooks: true,
            ..Routes::default()
        }
    }

    async fn accept(
        pipeline: &Pipeline<AwsPorts<WithRegistry>>,
        parsed: Parsed,
    ) -> Result<Map<String, Value>> {
        let report = ingest::ingest_parsed(pipeline, parsed).await?;
        let mut fields = Map::new();
        fields.insert("accepted".into(), json!(report.accepted));
        fields.insert("ignored".into(), json!(report.ignored));
        Ok(fields)
    }

    async fn other(app: &App<Self, WithRegistry>, payload: Value) -> Result<Value> {
        match identify(&payload) {
            Some(DocumentKind::Trigger(TriggerKind::Ecr)) => {
                let report = ingest::ingest(
                    &app.pipeline,
                    &Trigger {
                        kind: TriggerKind::Ecr,
                        received_at: chrono::Utc::now(),
                        payload,
                    },
                )
                .await?;
                Ok(json!({ "accepted": report.accepted, "ignored": report.ignored }))
            }
            _ => Err(Error::invalid(
                "invocation",
                "the ingest function takes ECR events and webhooks",
            )),
        }
    }
}

impl Function<()> for Approve {
    fn routes() -> Routes {
        Routes {
            decisions: true,
            ..Routes::default()
        }
    }
}

impl Function<WithNotifier> for Notify {
    fn inputs(config: &Config, event: Event) -> Vec<Input> {
        let attrs = event.attributes();
        config
            .reactions
            .iter()
            .filter(|r| {
                // Log reactions are local files; webhooks and e-mail go out from here.
                r.on.matches(&attrs) && !matches!(r.notify, crate::config::NotifyConfig::Log(_))
            })
            .map(|r| {
                Input::Reaction(ReactionInput {
                    reaction: r.name.clone(),
                    event: event.clone(),
                })
            })
            .collect()
    }
}

impl Function<WithTests> for Test {}
impl Function<WithTests> for crate::stages::Verify {}
impl Function<()> for Gate {}
impl Function<WithTargets> for Deploy {}
impl Function<WithRegistry> for Promote {}

/// Everything a function keeps between invocations (built once per container).
pub struct App<S, X: Extra> {
    pub pipeline: Arc<Pipeline<AwsPorts<X>>>,
    sqs: Lazy<aws_sdk_sqs::Client>,
    /// The HTTP API, for function URL requests.
    router: axum::Router,
    stage: std::marker::PhantomData<fn() -> S>,
}

/// The function as the HTTP API's host.
struct FunctionHost<S, X: Extra> {
    pipeline: Arc<Pipeline<AwsPorts<X>>>,
    endpoints: Vec<Endpoint>,
    /// The approve function's Slack callback (its unauthenticated URL on the stack).
    slack: Option<crate::slack::SlackEndpoint>,
    stage: std::marker::PhantomData<fn() -> S>,
}

/// The IAM principal Lambda verified for a function URL request (`AWS_IAM` auth).
#[derive(Debug, Clone)]
struct IamCaller {
    arn: String,
    account: Option<String>,
}

impl<S: Function<X>, X: Extra> Host for FunctionHost<S, X> {
    type Ports = AwsPorts<X>;

    fn pipeline(&self) -> &Pipeline<AwsPorts<X>> {
        &self.pipeline
    }

    fn routes(&self) -> Routes {
        S::routes()
    }

    fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The approver whose `serve.approvers.<name>.iam` principal is the verified caller.
    fn caller(
        &self,
        _headers: &HeaderMap,
        extensions: &Extensions,
    ) -> std::result::Result<Caller, Denied> {
        let Some(iam) = extensions.get::<IamCaller>() else {
            return Err(Denied::Anonymous);
        };
        let config = &self.pipeline.config;
        match config.approver_for_iam(&iam.arn, iam.account.as_deref()) {
            Some(name) => Ok(Caller::Approver(config.approver(name, &iam.arn))),
            None => {
                tracing::warn!(caller = %excerpt(&iam.arn), "a request from an IAM identity no approver maps to");
                Err(Denied::Unknown(format!(
                    "{} is not an approver: map it under serve.approvers.<name>.iam (an IAM user ARN, or a role ARN with the session name the role enforces)",
                    excerpt(&iam.arn)
                )))
            }
        }
    }

    fn how_to_authenticate(&self) -> &'static str {
        "call the function URL with AWS_IAM (SigV4) credentials"
    }

    fn body_timeout(&self) -> std::time::Duration {
        // Lambda hands the whole body over at once.
        std::time::Duration::from_secs(10)
    }

    async fn accept(&self, _webhook: &str, parsed: Parsed) -> Result<Map<String, Value>> {
        S::accept(&self.pipeline, parsed).await
    }

    fn slack(&self) -> Option<&crate::slack::SlackEndpoint> {
        self.slack.as_ref()
    }
}

impl<S: Function<X>, X: Extra> App<S, X> {
    /// Builds the app from the function's environment and configuration.
    pub async fn from_env() -> Result<App<S, X>> {
        let conf = crate::adapters::aws::function_sdk_config();
        let clients = Clients::new(&conf);
        let config = Arc::new(load_config(&clients).await?);
        let ports = AwsPorts::from_env(&clients, config.clone())?;
        App::new(ports, config, clients.sqs.clone())
    }

    pub fn new(
        ports: AwsPorts<X>,
        config: Arc<Config>,
        sqs: impl Into<Lazy<aws_sdk_sqs::Client>>,
    ) -> Result<App<S, X>> {
        Self::with_settings(ports, config, sqs, |_| {})
    }

    /// [`App::new`] with its settings edited (tests: a short lease, a fail point).
    pub fn with_settings(
        ports: AwsPorts<X>,
        config: Arc<Config>,
        sqs: impl Into<Lazy<aws_sdk_sqs::Client>>,
        edit: impl FnOnce(&mut Settings),
    ) -> Result<App<S, X>> {
        let endpoints = S::endpoints(&config)?;
        let mut settings = Settings {
            approvals_url: config.serve.public_url.clone(),
            ..Settings::default()
        };
        edit(&mut settings);
        let pipeline = Arc::new(Pipeline::new(ports, config, settings));
        // The function that takes decisions takes Slack's too, when its signing secret is
        // in the function's environment (the stack's SlackSigningSecret); without it the
        // callback is answered 404 and the start says why.
        let slack = match (&pipeline.config.serve.slack, S::routes().decisions) {
            (Some(c), true) => match crate::slack::SlackEndpoint::from_config(c) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "serve.slack is configured but this function cannot verify Slack's requests; Slack callbacks are refused");
                    None
                }
            },
            _ => None,
        };
        let router = api::router(Arc::new(FunctionHost::<S, X> {
            pipeline: pipeline.clone(),
            endpoints,
            slack,
            stage: std::marker::PhantomData,
        }));
        Ok(App {
            pipeline,
            sqs: sqs.into(),
            router,
            stage: std::marker::PhantomData,
        })
    }

    /// Handles one invocation payload.
    pub async fn handle(&self, payload: Value) -> Result<Value> {
        let stage = S::SPEC.name;
        // `baton retry RUN STAGE --stack …` invokes the stage's own function with this.
        if payload.get("baton").and_then(Value::as_str) == Some("retry") {
            let run = payload["run"]
                .as_str()
                .ok_or_else(|| Error::invalid("retry request", "run: missing"))?;
            let env = payload["environment"].as_str();
            let rec = runs::retry_record(&self.pipeline, run, S::SPEC, env).await?;
            let handled =
                harness::handle::<S, AwsPorts<X>>(&self.pipeline, rec.input, Mode::Retry).await?;
            return Ok(json!({
                "stage": stage.as_str(),
                "status": handled.status.map(|s| s.as_str()),
                "outputs": handled.outputs.iter().map(|e| json!({"type": e.event_type().as_str(), "id": e.id})).collect::<Vec<_>>(),
                "retry_later": matches!(handled.disposition, Disposition::Retry(_)),
            }));
        }
        if payload.get("Records").is_some() {
            let ev: SqsEvent =
                serde_json::from_value(payload).map_err(|e| Error::invalid("SQS event", e))?;
            let resp = self.sqs_batch(ev).await;
            return serde_json::to_value(resp)
                .map_err(|e| Error::permanent("SQS batch response", e));
        }
        if payload.get("requestContext").is_some() && payload.get("rawPath").is_some() {
            let response = match crate::envelopes::function_url_request(&payload) {
                Err(e) => http(400, json!({ "error": e.to_string() })),
                Ok(req) => function_url(&self.router, req).await,
            };
            return serde_json::to_value(response)
                .map_err(|e| Error::permanent("function URL response", e));
        }
        S::other(self, payload).await
    }

    async fn sqs_batch(&self, ev: SqsEvent) -> SqsBatchResponse {
        let mut failures = vec![];
        for record in ev.records {
            let id = record.message_id.clone().unwrap_or_default();
            let outcome = self.record(record.body.as_deref().unwrap_or("")).await;
            let retry = match outcome {
                Ok(None) => false,
                Ok(Some(after)) => {
                    // Back to the queue as a new message with a delay: its receive count
                    // starts again, so however long the wait it is never dead-lettered.
                    let sent = match (&record.event_source_arn, &record.body) {
                        (Some(arn), Some(body)) => self.requeue(arn, body, after).await,
                        _ => Err(Error::invalid("SQS record", "no queue or body")),
                    };
                    match sent {
                        Ok(()) => false,
                        Err(e) => {
                            // The original instead, back after the delay (it counts as a
                            // receive).
                            tracing::warn!(%id, error = %e, "could not send the message back; delaying the original");
                            if let (Some(arn), Some(handle)) =
                                (&record.event_source_arn, &record.receipt_handle)
                                && let Err(e) = self.delay(arn, handle, after).await
                            {
                                tracing::warn!(%id, error = %e, "could not set the visibility timeout; the queue's default applies");
                            }
                            true
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(%id, error = %e, kind = e.kind(), "record failed; SQS will deliver it again");
                    true
                }
            };
            if retry {
                let mut f = BatchItemFailure::default();
                f.item_identifier = id;
                failures.push(f);
            }
        }
        let mut resp = SqsBatchResponse::default();
        resp.batch_item_failures = failures;
        resp
    }

    /// Runs one record; `Ok(Some(delay))` asks for a re-delivery after `delay`.
    async fn record(&self, body: &str) -> Result<Option<std::time::Duration>> {
        let event = event_from_sns_notification(body)?;
        let inputs = S::inputs(&self.pipeline.config, event);
        let mut later = None;
        for input in inputs {
            let handled =
                harness::handle::<S, AwsPorts<X>>(&self.pipeline, input, Mode::Deliver).await?;
            match handled.disposition {
                Disposition::Done => {}
                Disposition::Later(d) => {
                    later = Some(later.map_or(d, |x: std::time::Duration| x.min(d)))
                }
                Disposition::Retry(e) => return Err(e),
            }
        }
        Ok(later)
    }

    /// The URL of the queue `queue_arn` names.
    async fn queue_url(&self, queue_arn: &str) -> Result<String> {
        let mut parts = queue_arn.split(':');
        let (Some(account), Some(name)) = (parts.nth(4), parts.next()) else {
            return Err(Error::invalid("eventSourceARN", queue_arn.to_string()));
        };
        Ok(self
            .sqs
            .get_queue_url()
            .queue_name(name)
            .queue_owner_aws_account_id(account)
            .send()
            .await
            .map_err(|e| crate::adapters::aws::call_failed("get queue url", e))?
            .queue_url()
            .unwrap_or_default()
            .to_string())
    }

    /// Sends `body` to the queue again, delivered after `after` (SQS delays at most 15
    /// minutes; rounded up, so a message back early only checks and waits again).
    async fn requeue(&self, queue_arn: &str, body: &str, after: std::time::Duration) -> Result<()> {
        let url = self.queue_url(queue_arn).await?;
        let secs = after.as_secs_f64().ceil().clamp(0.0, 900.0) as i32;
        self.sqs
            .send_message()
            .queue_url(url)
            .message_body(body)
            .delay_seconds(secs)
            .send()
            .await
            .map_err(|e| crate::adapters::aws::call_failed("send the message back", e))?;
        Ok(())
    }

    async fn delay(
        &self,
        queue_arn: &str,
        receipt: &str,
        after: std::time::Duration,
    ) -> Result<()> {
        let url = self.queue_url(queue_arn).await?;
        // SQS allows at most 12 hours; longer waits check in again and wait more.
        // Rounded up: a message back early only checks, finds it too soon and waits again.
        let secs = after.as_secs_f64().ceil().clamp(1.0, 43_200.0) as i32;
        self.sqs
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(receipt)
            .visibility_timeout(secs)
            .send()
            .await
            .map_err(|e| crate::adapters::aws::call_failed("change message visibility", e))?;
        Ok(())
    }
}

/// Serves a function URL request through the HTTP API's router: the request becomes an
/// HTTP request (method, path, query, headers, body; the verified IAM caller and the
/// source address as extensions) and the router's answer the function URL response.
async fn function_url(
    router: &axum::Router,
    req: LambdaFunctionUrlRequest,
) -> LambdaFunctionUrlResponse {
    use tower::ServiceExt;

    let limit = crate::webhooks::MAX_WEBHOOK_BODY.max(crate::stages::approve::MAX_DECISION_BODY);
    // Base64 makes a body a third longer; anything twice the limit is refused unread.
    if req.body.as_deref().map_or(0, str::len) > 2 * limit {
        return http(413, json!({ "error": "the body is too large" }));
    }
    let body = match body_of(&req) {
        Ok(b) => b,
        Err(why) => return http(400, json!({ "error": why })),
    };
    let path = req.raw_path.as_deref().unwrap_or("/");
    let uri = match req.raw_query_string.as_deref().filter(|q| !q.is_empty()) {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let method = req.request_context.http.method.as_deref().unwrap_or("GET");
    let mut request = match axum::http::Request::builder()
        .method(method)
        .uri(&uri)
        .body(axum::body::Body::from(body))
    {
        Ok(r) => r,
        Err(e) => {
            return http(
                400,
                json!({ "error": format!("{} {}: not an HTTP request ({e})", excerpt(method), excerpt(&uri)) }),
            );
        }
    };
    *request.headers_mut() = req.headers;
    let peer = req
        .request_context
        .http
        .source_ip
        .as_deref()
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
        .map_or_else(
            || std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            |ip| std::net::SocketAddr::new(ip, 0),
        );
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(peer));
    if let Some(iam) = req
        .request_context
        .authorizer
        .as_ref()
        .and_then(|a| a.iam.as_ref())
        && let Some(arn) = &iam.user_arn
    {
        request.extensions_mut().insert(IamCaller {
            arn: arn.clone(),
            account: iam.account_id.clone(),
        });
    }
    let response = match router.clone().oneshot(request).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, 4 * limit).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the HTTP API's answer");
            return http(500, json!({ "error": "the answer could not be read" }));
        }
    };
    let mut out = LambdaFunctionUrlResponse::default();
    out.status_code = i64::from(parts.status.as_u16());
    out.headers = parts.headers;
    out.body = Some(String::from_utf8_lossy(&bytes).into_owned());
    out
}

/// The body of a function URL request (base64-decoded when Lambda encoded it).
fn body_of(req: &LambdaFunctionUrlRequest) -> std::result::Result<Vec<u8>, &'static str> {
    use base64::Engine;
    let body = req.body.as_deref().unwrap_or("");
    if req.is_base64_encoded {
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| "the body is not valid base64")
    } else {
        Ok(body.as_bytes().to_vec())
    }
}

fn http(status: u16, body: Value) -> LambdaFunctionUrlResponse {
    let mut response = LambdaFunctionUrlResponse::default();
    response.status_code = i64::from(status);
    response
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.body = Some(body.to_string());
    response
}

/// The app of a running function. Building it (SDK clients, which load the root
/// certificates; the configuration, perhaps from S3) starts at process start on a thread
/// of its own, in parallel with the first Runtime API poll; the first invocation waits
/// for it. That thread runs in the idle scheduling class ([`lower_priority`]), so on a
/// small machine it takes only the CPU time that the poll, the kernel's network
/// processing and the Runtime API leave. It is built once per container; if building
/// fails, the invocation reports why and the next one tries again.
/// The app being built on the start thread.
type Building<S, X> = tokio::sync::oneshot::Receiver<Result<App<S, X>>>;

struct Starting<S, X: Extra> {
    pending: std::sync::Mutex<Option<Building<S, X>>>,
    app: tokio::sync::OnceCell<App<S, X>>,
}

impl<S: Function<X>, X: Extra> Starting<S, X> {
    fn start() -> Starting<S, X> {
        let rt = tokio::runtime::Handle::current();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("baton-start".into())
            .spawn(move || {
                lower_priority();
                // The runtime's own thread drives the I/O (it is in `block_on`).
                let _ = tx.send(rt.block_on(Box::pin(App::from_env())));
            });
        let pending = match spawned {
            Ok(_) => Some(rx),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a thread to build the app; the first invocation builds it");
                None
            }
        };
        Starting {
            pending: std::sync::Mutex::new(pending),
            app: tokio::sync::OnceCell::new(),
        }
    }

    async fn get(&self) -> Result<&App<S, X>> {
        self.app
            .get_or_try_init(|| async {
                let pending = self.pending.lock().ok().and_then(|mut p| p.take());
                let built = match pending {
                    Some(rx) => rx.await.map_err(|_| {
                        Error::permanent(
                            format!("{} function start", S::SPEC.name),
                            "the thread building the app ended without a result",
                        )
                    })?,
                    None => Box::pin(App::from_env()).await,
                };
                built.inspect_err(|e| {
                    tracing::error!(error = %e, kind = e.kind(), "cannot start; the next invocation tries again")
                })
            })
            .await
    }
}

/// Gives the calling thread the idle scheduling class (`SCHED_IDLE`, Linux): it runs
/// only on a CPU nothing else wants, and any other thread that wakes up (the function's
/// own runtime thread, the kernel's network processing, the Runtime API) takes the CPU
/// from it at once. With a lower nice value instead, a waking thread could wait a whole
/// scheduler slice (about 3 ms) for it. Where that is refused, nice 10.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `sched_setscheduler` reads `param`, which lives across the call, and
        // `setpriority` takes plain integers; with pid/who 0 both change the calling
        // thread only. Failing is harmless (the thread keeps its priority).
        unsafe {
            if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
                libc::setpriority(libc::PRIO_PROCESS, 0, 10);
            }
        }
    }
}

/// Runs the function under the Lambda Runtime API: the app is built once (see
/// [`Starting`]), then every invocation goes to [`App::handle`]. Logs are JSON lines.
/// A function whose environment lacks `BATON_BUCKET` or `BATON_TOPIC_ARN` stops at once,
/// naming the variable.
pub async fn run<S: Function<X>, X: Extra>() -> std::result::Result<(), lambda_runtime::Error> {
    // `RUST_LOG` as targets and levels (`info`, `baton=debug,info`); no regex engine.
    let targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing_subscriber::filter::Targets>().ok())
        .unwrap_or_else(|| {
            tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO)
        });
    let _ = tracing_subscriber::fmt()
        .json()
        .with_current_span(false)
        .without_time()
        .finish()
        .with(targets)
        .try_init();
    crate::runtime::lambda::ports::check_env().map_err(|e| {
        tracing::error!(error = %e, kind = e.kind(), "cannot start");
        Box::new(e) as lambda_runtime::Error
    })?;
    let starting = Arc::new(Starting::<S, X>::start());
    lambda_runtime::run(lambda_runtime::service_fn(
        move |ev: lambda_runtime::LambdaEvent<Value>| {
            let starting = starting.clone();
            async move {
                // Boxed: the handler's future is deep (every stage's logic under the
                // harness), and a box here keeps the runtime's future shallow.
                let result = match starting.get().await {
                    Ok(app) => Box::pin(app.handle(ev.payload)).await,
                    Err(e) => Err(e),
                };
                result.map_err(|e| {
                    tracing::error!(error = %e, kind = e.kind(), "invocation failed");
                    Box::new(e) as lambda_runtime::Error
                })
            }
        },
    ))
    .await
}
