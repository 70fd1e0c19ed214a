//! `AwsPorts`: the ports of the Lambda functions. SNS bus, S3 store, ECR (or a
//! distribution registry for configured hosts), Lambda and Kubernetes targets and test
//! runners. Built once per container from the environment the stack sets:
//! `BATON_BUCKET`, `BATON_TOPIC_ARN`, and the configuration from `BATON_CONFIG_S3`
//! (`s3://bucket/key`) or `BATON_CONFIG` (a file).

use std::sync::Arc;

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
use crate::ports::{ObjectStore, Ports, Registry, Resolved};
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

/// The AWS clients and adapters.
pub struct AwsPorts {
    pub bus: SnsBus,
    pub store: S3Store,
    pub registry: AwsRegistry,
    lambda: aws_sdk_lambda::Client,
    http: Http,
    config: Arc<Config>,
    clusters: crate::adapters::Clusters,
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

/// Clients for one SDK configuration.
pub struct Clients {
    pub s3: aws_sdk_s3::Client,
    pub sns: aws_sdk_sns::Client,
    pub ecr: aws_sdk_ecr::Client,
    pub lambda: aws_sdk_lambda::Client,
}

impl Clients {
    pub fn new(conf: &aws_config::SdkConfig) -> Clients {
        // Path-style S3 addressing works with every endpoint, emulators included.
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(conf)
                .force_path_style(true)
                .build(),
        );
        Clients {
            s3,
            sns: aws_sdk_sns::Client::new(conf),
            ecr: aws_sdk_ecr::Client::new(conf),
            lambda: aws_sdk_lambda::Client::new(conf),
        }
    }
}

/// Loads the configuration named by the environment.
pub async fn load_config(s3: &aws_sdk_s3::Client) -> Result<Config> {
    if let Ok(url) = std::env::var("BATON_CONFIG_S3") {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            Error::invalid("BATON_CONFIG_S3", format!("{url:?} is not s3://bucket/key"))
        })?;
        let (bucket, key) = rest.split_once('/').ok_or_else(|| {
            Error::invalid("BATON_CONFIG_S3", format!("{url:?} is not s3://bucket/key"))
        })?;
        let obj = S3Store::new(s3.clone(), bucket)
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
        return Config::from_yaml(&text, std::path::Path::new("/tmp"), &url);
    }
    Config::load(std::path::Path::new(
        &std::env::var("BATON_CONFIG").unwrap_or_else(|_| "baton.yaml".into()),
    ))
}

impl AwsPorts {
    /// Builds the ports from clients, a bucket and a topic.
    pub fn new(
        clients: &Clients,
        bucket: &str,
        topic_arn: &str,
        config: Arc<Config>,
    ) -> Result<AwsPorts> {
        let http = Http::new();
        let remote = config
            .registries
            .iter()
            .map(|r| DistributionRegistry::from_config(r, http.clone()))
            .collect::<Result<Vec<_>>>()?;
        Ok(AwsPorts {
            bus: SnsBus::new(clients.sns.clone(), topic_arn),
            store: S3Store::new(clients.s3.clone(), bucket),
            registry: AwsRegistry {
                ecr: EcrRegistry::new(clients.ecr.clone()),
                remote,
            },
            lambda: clients.lambda.clone(),
            http,
            clusters: crate::adapters::Clusters::new(&config, std::path::Path::new("/tmp")),
            config,
        })
    }

    /// Builds the ports from the function's environment.
    pub async fn from_env(clients: &Clients, config: Arc<Config>) -> Result<AwsPorts> {
        AwsPorts::new(
            clients,
            &env("BATON_BUCKET")?,
            &env("BATON_TOPIC_ARN")?,
            config,
        )
    }
}

impl Ports for AwsPorts {
    type Bus = SnsBus;
    type Store = S3Store;
    type Registry = AwsRegistry;
    type Tests = AnyTestRunner;
    type Target = AnyTarget;
    type Notifier = LocalNotifier;

    fn bus(&self) -> &SnsBus {
        &self.bus
    }
    fn store(&self) -> &S3Store {
        &self.store
    }
    fn registry(&self) -> &AwsRegistry {
        &self.registry
    }
    fn test_runner(&self, app: &AppConfig) -> Result<AnyTestRunner> {
        match &app.test {
            TestConfig::Lambda(l) => Ok(AnyTestRunner::Lambda(LambdaTestRunner::new(
                self.lambda.clone(),
                l,
            ))),
            // A command shipped with the test function's package.
            TestConfig::Command(c) => Ok(AnyTestRunner::Command(CommandRunner::from_config(
                c,
                &self.config.base_dir,
            ))),
            TestConfig::KubernetesJob(j) => self.clusters.test_runner(j),
        }
    }
    fn deploy_target(&self, _app: &AppConfig, env: &EnvironmentConfig) -> Result<AnyTarget> {
        match &env.deploy {
            DeployConfig::Lambda(l) => Ok(AnyTarget::Lambda(LambdaDeployTarget::new(
                self.lambda.clone(),
                l,
            ))),
            DeployConfig::Kubernetes(k) => self.clusters.target(k),
            DeployConfig::Manifest(_) => Err(Error::permanent(
                format!("environment {}", env.name),
                "the manifest target writes a local directory; in AWS use lambda or kubernetes",
            )),
        }
    }
    fn notifier(&self, reaction: &ReactionConfig) -> Result<LocalNotifier> {
        match &reaction.notify {
            NotifyConfig::Webhook(w) => Ok(LocalNotifier::Webhook(crate::adapters::webhook(
                &self.http, reaction, w,
            )?)),
            NotifyConfig::Log(_) => Err(Error::permanent(
                format!("reaction {}", reaction.name),
                "log reactions are local; in AWS use a webhook, or an SNS e-mail subscription (`NotificationEmail`)",
            )),
        }
    }
}
