//! `AwsPorts<X>`: the ports of a Lambda function. Every function has the SNS bus, the S3
//! store and the configuration; `X` adds only what its stage uses: a registry (ingest,
//! promote), test runners (test, verify), deploy targets (deploy), notifiers (notify), nothing
//! (gate, approve). So a function links only its own adapters. Built once per container
//! from the environment the stack sets: `BATON_BUCKET`, `BATON_TOPIC_ARN`, and the
//! configuration from `BATON_CONFIG_S3` (`s3://bucket/key`) or `BATON_CONFIG` (a file).

use std::sync::Arc;

use crate::adapters::aws::Clients;
use crate::adapters::aws::ecr::EcrRegistry;
use crate::adapters::aws::lambda::{LambdaDeployTarget, LambdaTestRunner};
use crate::adapters::aws::s3::S3Store;
use crate::adapters::aws::sns::SnsBus;
use crate::adapters::embedded::CommandRunner;
use crate::adapters::http::Http;
use crate::adapters::registry::DistributionRegistry;
use crate::adapters::{AnyTarget, AnyTestRunner};
use crate::config::{
    AppConfig, Config, DeployConfig, EnvironmentConfig, NotifyConfig, ReactionConfig, TestConfig,
};
use crate::error::{Error, Result};
use crate::event::Image;
use crate::ports::{
    NotifyPorts, ObjectStore, Ports, Registry, RegistryPorts, Resolved, TargetPorts, TestPorts,
};
use crate::runtime::local::LocalNotifier;

/// ECR, or the distribution API for hosts listed under `registries:`.
pub struct AwsRegistry {
    pub ecr: EcrRegistry,
    pub remote: Vec<DistributionRegistry>,
}

impl Registry for AwsRegistry {
    async fn resolve(&self, registry: &str, repository: &str, tag: &str) -> Result<Resolved> {
        match self.remote.iter().find(|r| r.host() == registry) {
            Some(r) => r.resolve(registry, repository, tag).await,
            None => self.ecr.resolve(registry, repository, tag).await,
        }
    }

    async fn retag(&self, image: &Image, tag: &crate::reference::Tag) -> Result<()> {
        match self
            .remote
            .iter()
            .find(|r| r.host() == image.registry.as_str())
        {
            Some(r) => r.retag(image, tag).await,
            None => self.ecr.retag(image, tag).await,
        }
    }
}

/// The ports of a function: the bus, the store and the configuration, plus `X`, the
/// adapters its stage needs.
pub struct AwsPorts<X> {
    pub bus: SnsBus,
    pub store: S3Store,
    pub config: Arc<Config>,
    pub extra: X,
}

/// A required variable of the function's environment; set but empty counts as unset.
fn env(var: &str) -> Result<String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(v),
        Ok(_) => Err(Error::invalid(
            "function environment",
            format!("{var} is empty"),
        )),
        Err(_) => Err(Error::invalid(
            "function environment",
            format!("{var} is not set"),
        )),
    }
}

/// Checks that the function's environment names its bucket and topic (cheap; done before
/// the first Runtime API poll so a misconfigured function fails its init).
pub fn check_env() -> Result<()> {
    env("BATON_BUCKET")?;
    env("BATON_TOPIC_ARN")?;
    Ok(())
}

/// Loads the configuration named by the environment.
pub async fn load_config(clients: &Clients) -> Result<Config> {
    if let Ok(url) = std::env::var("BATON_CONFIG_S3") {
        return config_from_s3(clients, &url).await;
    }
    Config::load(std::path::Path::new(
        &std::env::var("BATON_CONFIG").unwrap_or_else(|_| "baton.yaml".into()),
    ))
}

/// The configuration at `url` (`s3://bucket/key`), as the functions read it.
pub async fn config_from_s3(clients: &Clients, url: &str) -> Result<Config> {
    {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            Error::invalid("BATON_CONFIG_S3", format!("{url:?} is not s3://bucket/key"))
        })?;
        let (bucket, key) = rest.split_once('/').ok_or_else(|| {
            Error::invalid("BATON_CONFIG_S3", format!("{url:?} is not s3://bucket/key"))
        })?;
        let obj = S3Store::new(clients.s3.clone(), bucket)
            .get(key)
            .await?
            .ok_or_else(|| {
                Error::invalid(
                    "configuration",
                    format!("{url} does not exist: upload baton.yaml there"),
                )
            })?;
        let text = String::from_utf8(obj.bytes)
            .map_err(|_| Error::invalid("configuration", format!("{url} is not UTF-8")))?;
        Config::from_yaml(&text, std::path::Path::new("/tmp"), url)
    }
}

/// What a function adds to the bus and the store, built from the clients and the
/// configuration.
pub trait Extra: Sized + Send + Sync + 'static {
    fn build(clients: &Clients, config: &Config) -> Result<Self>;
}

/// Nothing more (gate, approve).
impl Extra for () {
    fn build(_: &Clients, _: &Config) -> Result<()> {
        Ok(())
    }
}

impl<X: Extra> AwsPorts<X> {
    /// Builds the ports from clients, a bucket and a topic.
    pub fn new(
        clients: &Clients,
        bucket: &str,
        topic_arn: &str,
        config: Arc<Config>,
    ) -> Result<AwsPorts<X>> {
        Ok(AwsPorts {
            bus: SnsBus::new(clients.sns.clone(), topic_arn),
            store: S3Store::new(clients.s3.clone(), bucket),
            extra: X::build(clients, &config)?,
            config,
        })
    }

    /// Builds the ports from the function's environment.
    pub fn from_env(clients: &Clients, config: Arc<Config>) -> Result<AwsPorts<X>> {
        AwsPorts::new(
            clients,
            &env("BATON_BUCKET")?,
            &env("BATON_TOPIC_ARN")?,
            config,
        )
    }
}

impl<X: Send + Sync + 'static> Ports for AwsPorts<X> {
    type Bus = SnsBus;
    type Store = S3Store;

    fn bus(&self) -> &SnsBus {
        &self.bus
    }
    fn store(&self) -> &S3Store {
        &self.store
    }
}

/// The registry (ingest, promote).
pub struct WithRegistry(pub AwsRegistry);

impl Extra for WithRegistry {
    fn build(clients: &Clients, config: &Config) -> Result<WithRegistry> {
        let http = Http::new();
        let remote = config
            .registries
            .iter()
            .map(|r| DistributionRegistry::from_config(r, http.clone()))
            .collect::<Result<Vec<_>>>()?;
        Ok(WithRegistry(AwsRegistry {
            ecr: EcrRegistry::new(clients.ecr()),
            remote,
        }))
    }
}

impl RegistryPorts for AwsPorts<WithRegistry> {
    type Registry = AwsRegistry;
    fn registry(&self) -> &AwsRegistry {
        &self.extra.0
    }
}

/// Test runners (test, verify): a test Lambda, a Kubernetes Job, or a command shipped
/// with the function's package; and the HTTP probe of verify's checks (built on its
/// first use only).
pub struct WithTests {
    lambda: crate::adapters::aws::Lazy<aws_sdk_lambda::Client>,
    clusters: crate::adapters::Clusters,
    probe: crate::adapters::probe::HttpProbe,
}

impl Extra for WithTests {
    fn build(clients: &Clients, config: &Config) -> Result<WithTests> {
        Ok(WithTests {
            lambda: clients.lambda(),
            clusters: crate::adapters::Clusters::for_function(config),
            probe: crate::adapters::probe::HttpProbe::new(Http::new()),
        })
    }
}

impl crate::ports::VerifyPorts for AwsPorts<WithTests> {
    type Probe = crate::adapters::probe::HttpProbe;
    fn probe(&self) -> &Self::Probe {
        &self.extra.probe
    }
}

impl TestPorts for AwsPorts<WithTests> {
    type Tests = AnyTestRunner;
    fn test_runner(&self, test: &TestConfig) -> Result<AnyTestRunner> {
        match test {
            TestConfig::Lambda(l) => Ok(AnyTestRunner::Lambda(LambdaTestRunner::new(
                self.extra.lambda.clone(),
                l,
            ))),
            TestConfig::Command(c) => Ok(AnyTestRunner::Command(CommandRunner::from_config(
                c,
                &self.config.base_dir,
            ))),
            TestConfig::KubernetesJob(j) => self.extra.clusters.test_runner(j),
        }
    }
}

/// Deploy targets (deploy): Lambda functions and Kubernetes workloads.
pub struct WithTargets {
    lambda: crate::adapters::aws::Lazy<aws_sdk_lambda::Client>,
    clusters: crate::adapters::Clusters,
}

impl Extra for WithTargets {
    fn build(clients: &Clients, config: &Config) -> Result<WithTargets> {
        Ok(WithTargets {
            lambda: clients.lambda(),
            clusters: crate::adapters::Clusters::for_function(config),
        })
    }
}

impl TargetPorts for AwsPorts<WithTargets> {
    type Target = AnyTarget;
    fn deploy_target(&self, _app: &AppConfig, env: &EnvironmentConfig) -> Result<AnyTarget> {
        match &env.deploy {
            DeployConfig::Lambda(l) => Ok(AnyTarget::Lambda(LambdaDeployTarget::new(
                self.extra.lambda.clone(),
                l,
            ))),
            DeployConfig::Kubernetes(k) => self.extra.clusters.target(k),
            DeployConfig::Manifest(_) => Err(Error::permanent(
                format!("environment {}", env.name),
                "the manifest target writes a local directory; in AWS use lambda or kubernetes",
            )),
        }
    }
}

/// Notifiers (notify): webhooks. E-mail is an SNS e-mail subscription.
pub struct WithNotifier {
    http: Http,
}

impl Extra for WithNotifier {
    fn build(_: &Clients, _: &Config) -> Result<WithNotifier> {
        Ok(WithNotifier { http: Http::new() })
    }
}

impl NotifyPorts for AwsPorts<WithNotifier> {
    type Notifier = LocalNotifier;
    fn notifier(&self, reaction: &ReactionConfig) -> Result<LocalNotifier> {
        match &reaction.notify {
            NotifyConfig::Webhook(w) => Ok(LocalNotifier::Webhook(crate::adapters::webhook(
                &self.extra.http,
                reaction,
                w,
                self.config.serve.public_url.clone(),
            )?)),
            NotifyConfig::Cdevents(c) => Ok(LocalNotifier::Webhook(crate::adapters::cdevents(
                &self.extra.http,
                reaction,
                c,
            )?)),
            NotifyConfig::Email(e) => Ok(LocalNotifier::Email(Box::new(
                crate::adapters::email::EmailNotifier::new(
                    &reaction.name,
                    e,
                    std::path::Path::new("."),
                    self.config.serve.public_url.clone(),
                )?,
            ))),
            NotifyConfig::Log(_) => Err(Error::permanent(
                format!("reaction {}", reaction.name),
                "log reactions are local; in AWS use a webhook, or an SNS e-mail subscription (`NotificationEmail`)",
            )),
        }
    }
}
