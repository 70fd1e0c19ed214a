//! `registries[]`: registries Baton talks to over the distribution HTTP API.

use serde::{Deserialize, Serialize};

/// A registry reached over the distribution HTTP API v2.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// The host images name (`localhost:5000`, `docker.io`, `ghcr.io`).
    pub host: crate::reference::RegistryHost,
    /// API base URL; `https://<host>` when absent.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub auth: RegistryAuth,
    /// Token services (`https://auth.example.com`, origins only) besides https on the
    /// registry's own host that may receive the basic credentials when a registry's
    /// bearer challenge names them. Any other realm gets an anonymous token request.
    #[serde(default)]
    pub token_realms: Vec<String>,
}

impl RegistryConfig {
    pub fn base_url(&self) -> String {
        self.url
            .clone()
            .unwrap_or_else(|| format!("https://{}", self.host))
    }
}

/// Registry credentials; secrets come from the environment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RegistryAuth {
    #[default]
    None,
    /// Basic auth (also used to fetch bearer tokens when the registry asks for them).
    Basic {
        username: String,
        password_env: String,
    },
    /// A static bearer token.
    Bearer { token_env: String },
}

impl RegistryConfig {
    /// This registry's problems (`at` is `registries[i]`).
    pub(super) fn check(&self, at: &str, p: &mut Vec<String>) {
        if let Some(u) = &self.url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            p.push(format!("{at}.url: {u:?} must be an http(s) URL"));
        }
        for (j, o) in self.token_realms.iter().enumerate() {
            let origin = reqwest::Url::parse(o)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .map(|u| u.origin().ascii_serialization());
            if origin.as_deref() != Some(o.trim_end_matches('/')) {
                p.push(format!(
                    "{at}.token_realms[{j}]: {o:?} must be an origin like https://auth.example.com (scheme, host and port only)"
                ));
            }
        }
    }
}
