//! The adapter families, dispatched by configuration: every test runner and every deploy
//! target behind one enum each, so the embedded runtime and the AWS functions choose
//! from the same set (each ports implementation refuses what it cannot run).

use crate::embedded::{CommandRunner, ManifestTarget};
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
    KubeJob(crate::k8s::KubeJobRunner),
    #[cfg(feature = "aws")]
    Lambda(crate::aws::lambda::LambdaTestRunner),
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
    Kube(crate::k8s::KubeDeployTarget),
    #[cfg(feature = "aws")]
    Lambda(crate::aws::lambda::LambdaDeployTarget),
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
