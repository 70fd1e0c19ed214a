//! Cluster access: a `kube::Client` per configured cluster, built once and shared,
//! from a kubeconfig (path and context), the in-cluster service account, an EKS bearer
//! token presigned with this process's own AWS credentials (refreshed before it
//! expires), or a plain URL (`kubectl proxy`, test servers).
//!
//! A kubeconfig and the in-cluster account are files of the machine Baton runs on
//! ([`from_files`], with kube's whole authentication: exec plugins, auth providers,
//! refreshed token files); the CLI and `baton serve` pass that reader. A Lambda function
//! has no such files and does not, so it links neither a kubeconfig (YAML) reader nor
//! that authentication (with its JSONPath and regex engines), and a cluster configured
//! that way is refused with what to use instead. `eks` and `url` clusters are reached
//! through [`direct_client`]: kube's HTTP stack with the bearer token as a header.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use futures::future::BoxFuture;
use tokio::sync::Mutex;

use crate::adapters::k8s::eks;
use crate::config::ClusterConfig;
use crate::error::{Error, Result};

/// EKS tokens live 15 minutes; clients are rebuilt well before that.
const EKS_CLIENT_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// Builds a client for a cluster reached through this machine's files: its kubeconfig,
/// or the in-cluster service account (with the timeouts applied).
pub type FileAccess =
    for<'a> fn(&'a ClusterConfig, &'a Path, Timeouts) -> BoxFuture<'a, Result<kube::Client>>;

/// Connect, read and write timeouts of every Kubernetes call: a hung API server fails
/// the check (retried by the bus) instead of holding the stage forever.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
}

const TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(10),
    read: Duration::from_secs(60),
    write: Duration::from_secs(60),
};

impl Timeouts {
    fn apply(self, config: &mut kube::Config) {
        config.connect_timeout = Some(self.connect);
        config.read_timeout = Some(self.read);
        config.write_timeout = Some(self.write);
    }
}

/// One cluster and its (lazily built) client.
pub struct Cluster {
    pub cfg: ClusterConfig,
    base_dir: PathBuf,
    files: Option<FileAccess>,
    client: Mutex<Option<(Instant, kube::Client)>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.cfg.name)
            .finish()
    }
}

fn access_error(cluster: &str, e: impl std::fmt::Display) -> Error {
    Error::permanent(format!("cluster {cluster}"), e)
}

impl Cluster {
    /// A cluster reached by `eks` or `url`, or through `files` (a kubeconfig, the
    /// in-cluster account) where this process has them.
    pub fn new(cfg: ClusterConfig, base_dir: PathBuf, files: Option<FileAccess>) -> Cluster {
        Cluster {
            cfg,
            base_dir,
            files,
            client: Mutex::new(None),
        }
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// The client, built on first use (and rebuilt when an EKS token nears expiry).
    pub async fn client(&self) -> Result<kube::Client> {
        let mut guard = self.client.lock().await;
        if let Some((built, client)) = guard.as_ref()
            && (self.cfg.eks.is_none() || built.elapsed() < EKS_CLIENT_LIFETIME)
        {
            return Ok(client.clone());
        }
        let name = &self.cfg.name;
        let client = if self.cfg.in_cluster.is_some() || self.cfg.kubeconfig.is_some() {
            let Some(files) = self.files else {
                return Err(access_error(
                    name,
                    "a kubeconfig or the in-cluster account is not available to a Lambda function; reach the cluster with eks: {cluster, region, endpoint, ca_data} (or url:)",
                ));
            };
            files(&self.cfg, &self.base_dir, TIMEOUTS).await?
        } else {
            let mut config = self.direct_config()?;
            TIMEOUTS.apply(&mut config);
            direct_client(config).map_err(|e| access_error(name, e))?
        };
        *guard = Some((Instant::now(), client.clone()));
        Ok(client)
    }

    /// The configuration of a cluster reached by `url` or `eks`.
    fn direct_config(&self) -> Result<kube::Config> {
        let name = &self.cfg.name;
        if let Some(url) = &self.cfg.url {
            let uri = url
                .parse()
                .map_err(|e| access_error(name, format!("url {url:?}: {e}")))?;
            return Ok(kube::Config::new(uri));
        }
        if let Some(e) = &self.cfg.eks {
            let uri = e.endpoint.parse().map_err(|err| {
                access_error(name, format!("eks.endpoint {:?}: {err}", e.endpoint))
            })?;
            let mut config = kube::Config::new(uri);
            config.root_cert = Some(
                pem_certificates(&e.ca_data)
                    .map_err(|m| access_error(name, format!("eks.ca_data: {m}")))?,
            );
            let creds = eks::AwsCredentials::from_env().map_err(|m| access_error(name, m))?;
            let token = eks::token(&e.cluster, &e.region, &creds, SystemTime::now())?;
            config.auth_info.token = Some(secrecy::SecretString::from(token));
            return Ok(config);
        }
        Err(access_error(name, "no access method configured"))
    }
}

/// A client over kube's HTTP stack (TLS, timeouts, the cluster's base URI) that sends
/// `config`'s bearer token, if any, as `Authorization`: what `kube::Client::try_from`
/// builds, less everything kubeconfig users may need (exec plugins, auth providers,
/// token files, client certificates), which no `eks` or `url` cluster uses. The server
/// is verified against `config.root_cert` when set (an EKS cluster's CA), else against
/// the platform's trust store, as kube does.
pub fn direct_client(config: kube::Config) -> std::result::Result<kube::Client, String> {
    use kube::client::ConfigExt;
    use rustls_platform_verifier::BuilderVerifierExt;
    use secrecy::ExposeSecret;
    use tower::ServiceExt;

    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // The process's provider, as kube installs it; a race to install is harmless.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
    let tls = match &config.root_cert {
        Some(roots) => {
            let mut store = rustls::RootCertStore::empty();
            for der in roots {
                store
                    .add(rustls::pki_types::CertificateDer::from(der.as_slice()))
                    .map_err(|e| format!("a CA certificate is not usable: {e}"))?;
            }
            rustls::ClientConfig::builder().with_root_certificates(store)
        }
        None => rustls::ClientConfig::builder()
            .with_platform_verifier()
            .map_err(|e| format!("the platform's trust store: {e}"))?,
    }
    .with_no_client_auth();
    let mut plain = hyper_util::client::legacy::connect::HttpConnector::new();
    plain.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(plain);
    let mut connector = hyper_timeout::TimeoutConnector::new(https);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    let client: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Builder::new(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    let bearer = match &config.auth_info.token {
        Some(t) => {
            let mut v = http::HeaderValue::from_str(&format!("Bearer {}", t.expose_secret()))
                .map_err(|_| "the bearer token is not a valid header value".to_string())?;
            v.set_sensitive(true);
            Some(v)
        }
        None => None,
    };
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .service(client)
        .map_request(move |mut req: http::Request<kube::client::Body>| {
            if let Some(v) = &bearer {
                req.headers_mut()
                    .insert(http::header::AUTHORIZATION, v.clone());
            }
            req
        })
        .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) });
    Ok(kube::Client::new(service, config.default_namespace))
}

/// The [`FileAccess`] of a process that has files: the in-cluster service account, or a
/// kubeconfig (its path relative to `base_dir`, else `$KUBECONFIG` or `~/.kube/config`)
/// with its context; the client is kube's own, with all its authentication.
pub fn from_files<'a>(
    cfg: &'a ClusterConfig,
    base_dir: &'a Path,
    timeouts: Timeouts,
) -> BoxFuture<'a, Result<kube::Client>> {
    Box::pin(async move {
        let mut config = files_config(cfg, base_dir).await?;
        timeouts.apply(&mut config);
        kube::Client::try_from(config).map_err(|e| access_error(&cfg.name, e))
    })
}

async fn files_config(cfg: &ClusterConfig, base_dir: &Path) -> Result<kube::Config> {
    {
        let name = &cfg.name;
        if cfg.in_cluster.is_some() {
            return kube::Config::incluster()
                .map_err(|e| access_error(name, format!("in-cluster: {e}")));
        }
        let Some(k) = &cfg.kubeconfig else {
            return Err(access_error(
                name,
                "no kubeconfig or in-cluster access configured",
            ));
        };
        let kubeconfig = match &k.path {
            Some(p) => {
                let p = if p.is_absolute() {
                    p.clone()
                } else {
                    base_dir.join(p)
                };
                kube::config::Kubeconfig::read_from(&p)
                    .map_err(|e| access_error(name, format!("kubeconfig {}: {e}", p.display())))?
            }
            None => kube::config::Kubeconfig::read().map_err(|e| {
                access_error(
                    name,
                    format!("kubeconfig ($KUBECONFIG or ~/.kube/config): {e}"),
                )
            })?,
        };
        let options = kube::config::KubeConfigOptions {
            context: k.context.clone(),
            ..Default::default()
        };
        kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|e| access_error(name, format!("kubeconfig: {e}")))
    }
}

/// DER certificates from base64 of a PEM bundle (kubeconfig's
/// `certificate-authority-data`).
pub fn pem_certificates(b64: &str) -> std::result::Result<Vec<Vec<u8>>, String> {
    let engine = base64::engine::general_purpose::STANDARD;
    let pem = engine
        .decode(b64.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    let pem = String::from_utf8(pem).map_err(|_| "not a PEM text".to_string())?;
    let mut certs = vec![];
    for block in pem.split("-----BEGIN CERTIFICATE-----").skip(1) {
        let body = block
            .split("-----END CERTIFICATE-----")
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect::<String>();
        certs.push(
            engine
                .decode(body)
                .map_err(|e| format!("certificate is not base64: {e}"))?,
        );
    }
    if certs.is_empty() {
        return Err("no certificate in the PEM".into());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_bundle_to_der() {
        let engine = base64::engine::general_purpose::STANDARD;
        let der1 = b"first certificate bytes";
        let der2 = b"second";
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            engine.encode(der1),
            engine.encode(der2)
        );
        let certs = pem_certificates(&engine.encode(pem)).unwrap();
        assert_eq!(certs, vec![der1.to_vec(), der2.to_vec()]);
        assert!(pem_certificates("!!").is_err());
        assert!(pem_certificates(&engine.encode("nothing")).is_err());
    }
}
