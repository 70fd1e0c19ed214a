//! `clusters[]`: the Kubernetes clusters deploy targets and test Jobs use, by name.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A Kubernetes cluster and how to reach it: exactly one of `kubeconfig`,
/// `in_cluster`, `eks` or `url`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub name: String,
    /// A kubeconfig file (`path`, default `$KUBECONFIG` or `~/.kube/config`) and context.
    #[serde(default)]
    pub kubeconfig: Option<KubeconfigAccess>,
    /// The pod's service account (Baton running inside the cluster).
    #[serde(default)]
    pub in_cluster: Option<InCluster>,
    /// EKS from a Lambda: a bearer token presigned with the function's own AWS
    /// credentials; endpoint and CA from here.
    #[serde(default)]
    pub eks: Option<EksAccess>,
    /// A plain API URL without credentials (`kubectl proxy`, test servers).
    #[serde(default)]
    pub url: Option<String>,
}

/// Kubeconfig access.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeconfigAccess {
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub context: Option<String>,
}

/// In-cluster access (no settings).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InCluster {}

/// EKS access.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EksAccess {
    /// The EKS cluster name (signed into the token).
    pub cluster: String,
    pub region: String,
    /// The API server endpoint (`https://….eks.amazonaws.com`).
    pub endpoint: String,
    /// The cluster CA, base64 of the PEM, as in kubeconfig `certificate-authority-data`.
    pub ca_data: String,
}

impl ClusterConfig {
    /// This cluster's problems (`at` is `clusters[i]`).
    pub(super) fn check(&self, at: &str, p: &mut Vec<String>) {
        let ways = [
            self.kubeconfig.is_some(),
            self.in_cluster.is_some(),
            self.eks.is_some(),
            self.url.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if ways != 1 {
            p.push(format!(
                "{at}: set exactly one of kubeconfig, in_cluster, eks, url"
            ));
        }
        if let Some(u) = &self.url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            p.push(format!("{at}.url: {u:?} must be an http(s) URL"));
        }
        if let Some(e) = &self.eks {
            if !e.endpoint.starts_with("https://") {
                p.push(format!(
                    "{at}.eks.endpoint: {:?} must be an https URL",
                    e.endpoint
                ));
            }
            if e.cluster.is_empty() || e.region.is_empty() || e.ca_data.is_empty() {
                p.push(format!(
                    "{at}.eks: cluster, region and ca_data are required"
                ));
            }
        }
    }
}
