//! Kubernetes adapters (feature `kube`): the `kubernetes` deploy target, the
//! `kubernetes_job` test runner, cluster access (kubeconfig, in-cluster, EKS), and the
//! live audit of each stage's permissions.

pub mod audit;
pub mod cluster;
pub mod deploy;
pub mod eks;
pub mod job;

pub use cluster::{Cluster, FileAccess, Timeouts, direct_client, from_files};
pub use deploy::KubeDeployTarget;
pub use job::KubeJobRunner;

use crate::error::{Error, Message};

/// Maps an API error: 4xx are permanent (and say what to check), 5xx, 429 and
/// connection failures transient.
pub fn kube_error(what: &str, e: kube::Error) -> Error {
    match e {
        kube::Error::Api(s) => match s.code {
            401 | 403 => Error::permanent(
                what.to_string(),
                format!(
                    "{} (HTTP {}): check the cluster credentials and Baton's RBAC (infra/k8s)",
                    s.message, s.code
                ),
            ),
            404 => Error::permanent(what.to_string(), format!("not found: {}", s.message)),
            408 | 429 | 500..=599 => Error::transient(
                what.to_string(),
                Message(format!("{} (HTTP {})", s.message, s.code)),
            ),
            code => Error::permanent(what.to_string(), format!("{} (HTTP {code})", s.message)),
        },
        other => Error::transient(what.to_string(), Message(other.to_string())),
    }
}
