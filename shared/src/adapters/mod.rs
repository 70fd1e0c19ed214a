//! The adapter families, dispatched by configuration: every test runner and every deploy
//! target behind one enum each, so the embedded runtime and the AWS functions choose
//! from the same set (each ports implementation refuses what it cannot run).

#[cfg(feature = "aws")]
pub mod aws;
pub mod chat;
pub mod email;
pub mod embedded;
pub mod http;
#[cfg(feature = "kube")]
pub mod k8s;
pub mod memory;
pub mod probe;
pub mod registry;
pub mod sandbox;

use crate::adapters::embedded::{CommandRunner, ManifestTarget};
use crate::error::Result;
use crate::ports::{
    Applied, DeployRequest, DeployTarget, Rollout, TestProgress, TestRequest, TestRunner,
    WorkloadImage,
};

/// Every test runner, dispatched by configuration.
#[derive(Debug, Clone)]
pub enum AnyTestRunner {
    Command(CommandRunner),
    #[cfg(feature = "kube")]
    KubeJob(crate::adapters::k8s::KubeJobRunner),
    #[cfg(feature = "aws")]
    Lambda(crate::adapters::aws::lambda::LambdaTestRunner),
}

impl TestRunner for AnyTestRunner {
    fn kind(&self) -> &'static str {
        match self {
            AnyTestRunner::Command(r) => r.kind(),
            #[cfg(feature = "kube")]
            AnyTestRunner::KubeJob(r) => r.kind(),
            #[cfg(feature = "aws")]
            AnyTestRunner::Lambda(r) => r.kind(),
        }
    }
    async fn start(&self, req: &TestRequest) -> Result<TestProgress> {
        match self {
            AnyTestRunner::Command(r) => r.start(req).await,
            #[cfg(feature = "kube")]
            AnyTestRunner::KubeJob(r) => r.start(req).await,
            #[cfg(feature = "aws")]
            AnyTestRunner::Lambda(r) => r.start(req).await,
        }
    }
    async fn check(&self, req: &TestRequest, state: &serde_json::Value) -> Result<TestProgress> {
        match self {
            AnyTestRunner::Command(r) => r.check(req, state).await,
            #[cfg(feature = "kube")]
            AnyTestRunner::KubeJob(r) => r.check(req, state).await,
            #[cfg(feature = "aws")]
            AnyTestRunner::Lambda(r) => r.check(req, state).await,
        }
    }
}

/// Every deploy target, dispatched by configuration.
#[derive(Debug, Clone)]
pub enum AnyTarget {
    Manifest(ManifestTarget),
    #[cfg(feature = "kube")]
    Kube(crate::adapters::k8s::KubeDeployTarget),
    #[cfg(feature = "aws")]
    Lambda(crate::adapters::aws::lambda::LambdaDeployTarget),
}

impl DeployTarget for AnyTarget {
    fn kind(&self) -> &'static str {
        match self {
            AnyTarget::Manifest(t) => t.kind(),
            #[cfg(feature = "kube")]
            AnyTarget::Kube(t) => t.kind(),
            #[cfg(feature = "aws")]
            AnyTarget::Lambda(t) => t.kind(),
        }
    }
    async fn apply(&self, req: &DeployRequest) -> Result<Applied> {
        match self {
            AnyTarget::Manifest(t) => t.apply(req).await,
            #[cfg(feature = "kube")]
            AnyTarget::Kube(t) => t.apply(req).await,
            #[cfg(feature = "aws")]
            AnyTarget::Lambda(t) => t.apply(req).await,
        }
    }
    async fn rollout(&self, req: &DeployRequest) -> Result<Rollout> {
        match self {
            AnyTarget::Manifest(t) => t.rollout(req).await,
            #[cfg(feature = "kube")]
            AnyTarget::Kube(t) => t.rollout(req).await,
            #[cfg(feature = "aws")]
            AnyTarget::Lambda(t) => t.rollout(req).await,
        }
    }
    async fn restore(&self, req: &DeployRequest, previous: &[WorkloadImage]) -> Result<()> {
        match self {
            AnyTarget::Manifest(t) => t.restore(req, previous).await,
            #[cfg(feature = "kube")]
            AnyTarget::Kube(t) => t.restore(req, previous).await,
            #[cfg(feature = "aws")]
            AnyTarget::Lambda(t) => t.restore(req, previous).await,
        }
    }
}

/// The clusters of a configuration, each with its lazily built client, and the
/// Kubernetes adapters built on them (an error naming the feature when it is off).
#[derive(Debug, Default)]
pub struct Clusters {
    #[cfg(feature = "kube")]
    clusters: Vec<std::sync::Arc<crate::adapters::k8s::Cluster>>,
}

impl Clusters {
    /// The configured clusters, for a process on a machine with files: a kubeconfig
    /// (paths relative to `base_dir`) and the in-cluster account are readable.
    pub fn new(config: &crate::config::Config, base_dir: &std::path::Path) -> Clusters {
        #[cfg(feature = "kube")]
        return Clusters::with(config, base_dir, Some(crate::adapters::k8s::from_files));
        #[cfg(not(feature = "kube"))]
        {
            let _ = (config, base_dir);
            Clusters {}
        }
    }

    /// The configured clusters, for a Lambda function: reached by `eks` or `url` only
    /// (no kubeconfig reader is linked).
    pub fn for_function(config: &crate::config::Config) -> Clusters {
        #[cfg(feature = "kube")]
        return Clusters::with(config, std::path::Path::new("/tmp"), None);
        #[cfg(not(feature = "kube"))]
        {
            let _ = config;
            Clusters {}
        }
    }

    #[cfg(feature = "kube")]
    fn with(
        config: &crate::config::Config,
        base_dir: &std::path::Path,
        files: Option<crate::adapters::k8s::FileAccess>,
    ) -> Clusters {
        Clusters {
            clusters: config
                .clusters
                .iter()
                .map(|c| {
                    std::sync::Arc::new(crate::adapters::k8s::Cluster::new(
                        c.clone(),
                        base_dir.to_path_buf(),
                        files,
                    ))
                })
                .collect(),
        }
    }

    #[cfg(feature = "kube")]
    fn cluster(&self, name: &str) -> Result<std::sync::Arc<crate::adapters::k8s::Cluster>> {
        self.clusters
            .iter()
            .find(|c| c.name() == name)
            .cloned()
            .ok_or_else(|| crate::error::Error::not_found("cluster", name))
    }

    /// The `kubernetes_job` test runner.
    pub fn test_runner(&self, job: &crate::config::KubeJobTest) -> Result<AnyTestRunner> {
        #[cfg(feature = "kube")]
        return Ok(AnyTestRunner::KubeJob(
            crate::adapters::k8s::KubeJobRunner::new(job.clone(), self.cluster(&job.cluster)?),
        ));
        #[cfg(not(feature = "kube"))]
        return Err(no_kube(&format!(
            "kubernetes_job test runner on cluster {}",
            job.cluster
        )));
    }

    /// The `kubernetes` deploy target.
    pub fn target(&self, deploy: &crate::config::KubeDeploy) -> Result<AnyTarget> {
        #[cfg(feature = "kube")]
        return Ok(AnyTarget::Kube(
            crate::adapters::k8s::KubeDeployTarget::from_config(
                deploy,
                self.cluster(&deploy.cluster)?,
            ),
        ));
        #[cfg(not(feature = "kube"))]
        return Err(no_kube(&format!(
            "kubernetes deploy target on cluster {}",
            deploy.cluster
        )));
    }
}

#[cfg(not(feature = "kube"))]
fn no_kube(what: &str) -> crate::error::Error {
    crate::error::Error::permanent(
        what.to_string(),
        "this build of Baton has no Kubernetes support (feature `kube`)",
    )
}

/// A webhook notifier; the URL inline or from the variable `url_env` names (a secret).
/// A reaction's URL: inline, or from the variable that holds it (a secret).
fn reaction_url(
    reaction: &crate::config::ReactionConfig,
    kind: &str,
    url: Option<&str>,
    url_env: Option<&str>,
) -> Result<String> {
    match (url, url_env) {
        (Some(u), _) => Ok(u.to_string()),
        (None, Some(var)) => crate::config::secret_env(
            var,
            &format!("reaction {} (notify.{kind}.url_env)", reaction.name),
        ),
        (None, None) => Err(crate::error::Error::invalid(
            format!("reaction {}", reaction.name),
            format!("{kind} has no url"),
        )),
    }
}

/// The notifier of a `cdevents` reaction.
pub fn cdevents(
    http: &crate::adapters::http::Http,
    reaction: &crate::config::ReactionConfig,
    c: &crate::config::CdeventsConfig,
) -> Result<crate::adapters::embedded::WebhookNotifier> {
    let url = reaction_url(reaction, "cdevents", c.url.as_deref(), c.url_env.as_deref())?;
    Ok(crate::adapters::embedded::WebhookNotifier::cdevents(
        http.clone(),
        url,
        c.timeout,
    ))
}

pub fn webhook(
    http: &crate::adapters::http::Http,
    reaction: &crate::config::ReactionConfig,
    w: &crate::config::WebhookConfig,
    link_base: Option<String>,
) -> Result<crate::adapters::embedded::WebhookNotifier> {
    let secret = w
        .secret_env
        .as_deref()
        .map(|var| {
            crate::config::secret_env(
                var,
                &format!("reaction {} (notify.webhook.secret_env)", reaction.name),
            )
        })
        .transpose()?;
    let url = reaction_url(reaction, "webhook", w.url.as_deref(), w.url_env.as_deref())?;
    Ok(
        crate::adapters::embedded::WebhookNotifier::new(http.clone(), url, w.timeout).with_format(
            w.format,
            secret,
            w.template.clone(),
            link_base,
        ),
    )
}
