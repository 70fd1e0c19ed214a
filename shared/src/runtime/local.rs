//! The local runtime: the pipeline on embedded adapters under one state directory
//! (`.baton/` by default), and the dispatcher that delivers bus messages to stages.
//! `baton demo`, the CLI commands and the tests use it; the stage code is the same as
//! in AWS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::adapters::embedded::{
    CommandRunner, Delivery, DirStore, DrainOptions, DrainReport, EmbeddedBus, LogNotifier,
    ManifestTarget, StoreRegistry, Subscriber, WebhookNotifier,
};
use crate::adapters::http::Http;
use crate::adapters::registry::DistributionRegistry;
use crate::adapters::{AnyTarget, AnyTestRunner};
use crate::config::{
    AppConfig, Config, DeployConfig, EnvironmentConfig, NotifyConfig, ReactionConfig, TestConfig,
};
use crate::error::{Error, Result};
use crate::event::{AttrValue, Event};
use crate::pipeline::harness::{Disposition, Mode};
use crate::pipeline::stage::{Input, ReactionInput};
use crate::pipeline::{Pipeline, Settings, StageName};
use crate::ports::{
    BusMessage, Notifier, NotifyPorts, Ports, Registry, RegistryPorts, TargetPorts, TestPorts,
};
use crate::stages::subscriptions::{REGISTRY_PUSH, Subscription, all_subscriptions};
use crate::triggers::{Parsed, Trigger};

pub use crate::adapters::embedded::bus::DeliveryReport;
pub use crate::pipeline::retention::GcReport;

/// The queue registry notifications are sent to.
pub const INGEST_QUEUE: &str = "ingest";

/// Embedded notifiers.
#[derive(Debug, Clone)]
pub enum LocalNotifier {
    Webhook(WebhookNotifier),
    Log(LogNotifier),
    Email(Box<crate::adapters::email::EmailNotifier>),
}

impl Notifier for LocalNotifier {
    async fn notify(&self, reaction: &str, event: &Event) -> Result<()> {
        match self {
            LocalNotifier::Webhook(n) => n.notify(reaction, event).await,
            LocalNotifier::Log(n) => n.notify(reaction, event).await,
            LocalNotifier::Email(n) => n.notify(reaction, event).await,
        }
    }
}

/// The registry port of local mode: configured hosts over the distribution HTTP API,
/// every other host in the embedded registry.
pub struct LocalRegistry {
    pub embedded: StoreRegistry<DirStore>,
    pub remote: Vec<DistributionRegistry>,
}

impl LocalRegistry {
    fn remote(&self, host: &str) -> Option<&DistributionRegistry> {
        self.remote.iter().find(|r| r.host() == host)
    }

    /// Records a push in the embedded registry (hosts reached over HTTP keep their own).
    pub async fn record_push(
        &self,
        image: &crate::event::Image,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<()> {
        if self.remote(&image.registry).is_some() {
            return Ok(());
        }
        self.embedded.record_push(image, at).await
    }

    /// The digest a tag points at, if any.
    pub async fn tag(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
    ) -> Result<Option<crate::reference::Digest>> {
        match self.remote(registry) {
            Some(r) => match r.resolve(registry, repository, tag).await {
                Ok(x) => Ok(Some(x.digest)),
                Err(Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            },
            None => self.embedded.tag(registry, repository, tag).await,
        }
    }
}

impl Registry for LocalRegistry {
    async fn resolve(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
    ) -> Result<crate::ports::Resolved> {
        match self.remote(registry) {
            Some(r) => r.resolve(registry, repository, tag).await,
            None => self.embedded.resolve(registry, repository, tag).await,
        }
    }

    async fn retag(&self, image: &crate::event::Image, tag: &crate::reference::Tag) -> Result<()> {
        match self.remote(&image.registry) {
            Some(r) => r.retag(image, tag).await,
            None => self.embedded.retag(image, tag).await,
        }
    }
}

/// The embedded ports.
pub struct LocalPorts {
    pub state_dir: PathBuf,
    pub bus: EmbeddedBus,
    pub store: DirStore,
    pub registry: LocalRegistry,
    config: Arc<Config>,
    http: Http,
    probe: crate::adapters::probe::HttpProbe,
    clusters: crate::adapters::Clusters,
}

fn aws_only(what: &str) -> Error {
    Error::permanent(
        what.to_string(),
        "runs in the AWS functions (AwsPorts), not on the embedded runtime",
    )
}

impl Ports for LocalPorts {
    type Bus = EmbeddedBus;
    type Store = DirStore;

    fn bus(&self) -> &EmbeddedBus {
        &self.bus
    }
    fn store(&self) -> &DirStore {
        &self.store
    }
}

impl RegistryPorts for LocalPorts {
    type Registry = LocalRegistry;
    fn registry(&self) -> &LocalRegistry {
        &self.registry
    }
}

impl TestPorts for LocalPorts {
    type Tests = AnyTestRunner;
    fn test_runner(&self, test: &TestConfig) -> Result<AnyTestRunner> {
        match test {
            TestConfig::Command(c) => Ok(AnyTestRunner::Command(CommandRunner::from_config(
                c,
                &self.config.base_dir,
            ))),
            TestConfig::KubernetesJob(j) => self.clusters.test_runner(j),
            TestConfig::Lambda(_) => Err(aws_only("the lambda test runner")),
        }
    }
}

impl crate::ports::VerifyPorts for LocalPorts {
    type Probe = crate::adapters::probe::HttpProbe;
    fn probe(&self) -> &Self::Probe {
        &self.probe
    }
}

impl TargetPorts for LocalPorts {
    type Target = AnyTarget;
    fn deploy_target(&self, _app: &AppConfig, env: &EnvironmentConfig) -> Result<AnyTarget> {
        match &env.deploy {
            DeployConfig::Manifest(m) => {
                Ok(AnyTarget::Manifest(ManifestTarget::from_config(m, |p| {
                    self.config.resolve(p)
                })))
            }
            DeployConfig::Kubernetes(k) => self.clusters.target(k),
            DeployConfig::Lambda(_) => Err(aws_only("the lambda deploy target")),
        }
    }
}

impl NotifyPorts for LocalPorts {
    type Notifier = LocalNotifier;
    fn notifier(&self, reaction: &ReactionConfig) -> Result<LocalNotifier> {
        match &reaction.notify {
            NotifyConfig::Log(l) => Ok(LocalNotifier::Log(LogNotifier {
                path: if l.path.is_absolute() {
                    l.path.clone()
                } else {
                    self.state_dir.join(&l.path)
                },
            })),
            NotifyConfig::Webhook(w) => Ok(LocalNotifier::Webhook(crate::adapters::webhook(
                &self.http,
                reaction,
                w,
                Some(self.config.serve.public_url()),
            )?)),
            NotifyConfig::Cdevents(c) => Ok(LocalNotifier::Webhook(crate::adapters::cdevents(
                &self.http, reaction, c,
            )?)),
            NotifyConfig::Email(e) => {
                let serve = &self.config.serve;
                let link = serve
                    .public_url
                    .clone()
                    .unwrap_or_else(|| format!("http://{}", serve.listen));
                Ok(LocalNotifier::Email(Box::new(
                    crate::adapters::email::EmailNotifier::new(
                        &reaction.name,
                        e,
                        &self.config.base_dir,
                        Some(link),
                    )?,
                )))
            }
        }
    }
}

/// The pipeline on embedded adapters, plus its dispatcher. Cheap to clone (the
/// dispatcher hands each delivery's task a copy): clones share everything.
#[derive(Clone)]
pub struct Local {
    pub pipeline: Arc<Pipeline<LocalPorts>>,
    subscriptions: Arc<[Subscription]>,
}

impl Local {
    /// Opens the state directory (creating it) for this configuration.
    pub fn open(config: Config, state_dir: &Path, mut settings: Settings) -> Result<Local> {
        if settings.approvals_url.is_none() {
            settings.approvals_url = Some(config.serve.public_url());
        }
        let config = Arc::new(config);
        std::fs::create_dir_all(state_dir)
            .map_err(|e| Error::io("create state directory", state_dir, e))?;
        let subscriptions = all_subscriptions(&config);
        let bus_subs: Vec<_> = subscriptions
            .iter()
            .map(|s| (s.name.clone(), s.filter.clone()))
            .collect();
        let bus_dir = state_dir.join("bus");
        std::fs::create_dir_all(&bus_dir)
            .map_err(|e| Error::io("create bus directory", &bus_dir, e))?;
        let mut store = DirStore::open(state_dir.join("store"))?;
        // One durability point for both: a stage's store writes are made durable by the
        // bus append that acknowledges or publishes after them.
        let durability = store.defer_syncs_to(&bus_dir);
        // New runs are admitted after the stages of runs in progress (see `open_sharing`).
        let bus = EmbeddedBus::open_sharing(
            bus_dir,
            bus_subs,
            config.bus.clone(),
            durability,
            &[INGEST_QUEUE],
        )?;
        let http = Http::new();
        let remote = config
            .registries
            .iter()
            .map(|r| DistributionRegistry::from_config(r, http.clone()))
            .collect::<Result<Vec<_>>>()?;
        let ports = LocalPorts {
            state_dir: state_dir.to_path_buf(),
            bus,
            registry: LocalRegistry {
                embedded: StoreRegistry::new(store.clone()),
                remote,
            },
            store,
            clusters: crate::adapters::Clusters::new(&config, &config.base_dir),
            config: config.clone(),
            probe: crate::adapters::probe::HttpProbe::new(http.clone()),
            http,
        };
        Ok(Local {
            pipeline: Arc::new(Pipeline::new(ports, config, settings)),
            subscriptions: subscriptions.into(),
        })
    }

    pub fn state_dir(&self) -> &Path {
        &self.pipeline.ports.state_dir
    }

    /// Makes every write to the state directory so far durable; `baton serve` calls it
    /// before answering a request that wrote (the bus's appends do it themselves).
    pub async fn flush(&self) -> Result<()> {
        self.pipeline.ports.store.flush().await
    }

    /// Parses a registry notification and queues its pushes for ingest (durable once
    /// this returns); a malformed notification is refused here, naming the field, and
    /// nothing is queued.
    pub async fn submit(&self, trigger: &Trigger) -> Result<String> {
        self.submit_parsed(&trigger.parse()?).await
    }

    /// Queues the pushes of a parsed notification for ingest (durable once this
    /// returns). The queue holds exactly what was parsed: what is acknowledged can be
    /// processed.
    pub async fn submit_parsed(&self, parsed: &Parsed) -> Result<String> {
        let body = serde_json::to_string(parsed).map_err(|e| Error::invalid("pushes", e))?;
        let id = crate::ids::stable_id(&["pushes", &body]);
        let mut attributes = crate::event::Attributes::new();
        attributes.insert("type".into(), AttrValue::String(REGISTRY_PUSH.into()));
        if let Some(kind) = parsed.pushes.first().map(|p| p.trigger) {
            attributes.insert("trigger".into(), AttrValue::String(kind.as_str().into()));
        }
        self.pipeline
            .ports
            .bus
            .send_to(
                INGEST_QUEUE,
                &BusMessage {
                    id: id.clone(),
                    attributes,
                    body,
                },
            )
            .await?;
        Ok(id)
    }

    /// Delivers queued messages to their stages until nothing is due.
    /// Applies the configuration's run retention: removes the records of the runs it
    /// lets go (nothing with `dry_run`) and says what it decided.
    pub async fn gc(&self, dry_run: bool) -> Result<GcReport> {
        self.gc_at(chrono::Utc::now(), dry_run).await
    }

    /// [`Local::gc`] as if the time were `now`.
    pub async fn gc_at(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        dry_run: bool,
    ) -> Result<GcReport> {
        crate::pipeline::retention::gc(&self.pipeline, now, dry_run).await
    }

    pub async fn drain(
        &self,
        opts: &DrainOptions,
        progress: impl FnMut(&DeliveryReport),
    ) -> Result<DrainReport> {
        self.pipeline.ports.bus.drain(self, opts, progress).await
    }

    async fn deliver_event(
        &self,
        stage: StageName,
        reaction: Option<&str>,
        msg: &BusMessage,
    ) -> Delivery {
        let event = match Event::from_json(&msg.body) {
            Ok(e) => e,
            Err(e) => return Delivery::Dead(format!("unreadable event {}: {e}", msg.id)),
        };
        let input = match reaction {
            Some(r) => Input::Reaction(ReactionInput {
                reaction: r.to_string(),
                event,
            }),
            None => Input::Event(event),
        };
        match crate::stages::handle(&self.pipeline, stage, input, Mode::Deliver).await {
            Ok(h) => match h.disposition {
                Disposition::Done => Delivery::Done,
                Disposition::Later(d) => Delivery::Later(d, h.note.unwrap_or_default()),
                Disposition::Retry(e) => Delivery::Retry(e.to_string()),
            },
            Err(e) if e.is_retryable() => Delivery::Retry(e.to_string()),
            Err(e) => Delivery::Dead(e.to_string()),
        }
    }
}

impl Subscriber for Local {
    async fn deliver(&self, subscription: &str, msg: &BusMessage) -> Delivery {
        if subscription == INGEST_QUEUE {
            let parsed: Parsed = match serde_json::from_str(&msg.body) {
                Ok(t) => t,
                Err(e) => return Delivery::Dead(format!("unreadable queued pushes: {e}")),
            };
            return match crate::stages::ingest::ingest_parsed(&self.pipeline, parsed).await {
                Ok(report) => {
                    for reason in &report.ignored {
                        tracing::info!(%reason, "ignored");
                    }
                    for a in report.accepted.iter().filter(|a| !a.duplicate) {
                        // Indexed as started when its ingest record says, as a rebuild of
                        // the index from the records would: the same key either way, so
                        // a page read during the first ingest never lists the run twice.
                        let at =
                            crate::store::get_json::<_, crate::pipeline::harness::StageRecord>(
                                &self.pipeline.ports.store,
                                &crate::store::stage_key(&a.app, a.run.as_str(), "ingest", None),
                            )
                            .await
                            .ok()
                            .flatten()
                            .map(|(r, _)| r.started_at)
                            .unwrap_or_else(|| self.pipeline.ports.now());
                        if let Err(e) =
                            crate::pipeline::runs::index(&self.pipeline, &a.app, &a.run, at).await
                        {
                            // The run goes on; the index is rebuilt from the records
                            // only when empty, so this run may be missing from pages.
                            tracing::warn!(run = %a.run, error = %e, "could not index the run");
                        }
                    }
                    Delivery::Done
                }
                Err(e) if e.is_retryable() => Delivery::Retry(e.to_string()),
                // Malformed notifications are kept in the dead-letter list, not lost.
                Err(e) => Delivery::Dead(e.to_string()),
            };
        }
        let Some(sub) = self.subscriptions.iter().find(|s| s.name == subscription) else {
            return Delivery::Dead(format!(
                "no subscriber named {subscription} in this configuration"
            ));
        };
        self.deliver_event(sub.stage, sub.reaction.as_deref(), msg)
            .await
    }
}
