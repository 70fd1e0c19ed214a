//! `DistributionRegistry`: a registry over the distribution HTTP API v2 (the CNCF
//! registry, Docker Hub, GHCR, Quay, Harbor all speak it). Resolves tags to digests
//! with the Accept headers of OCI and Docker manifests and indexes, and retags by PUT of
//! the same manifest bytes under the new tag. Auth: none, basic, a static bearer token,
//! or the token flow a `WWW-Authenticate: Bearer realm=…` challenge asks for. Basic
//! credentials go to a token realm only over https on the registry's own host, or to a
//! realm the configuration allow-lists (`registries[].token_realms`); any other realm a
//! registry names gets an anonymous token request. Secrets never appear in errors.

use std::sync::Mutex;

use reqwest::{Method, StatusCode, header};
use sha2::{Digest, Sha256};

use crate::adapters::http::Http;
use crate::config::{RegistryAuth, RegistryConfig};
use crate::error::{Error, Message, Result};
use crate::event::Image;
use crate::ports::{Registry, Resolved};
use crate::reference::{Digest as ImageDigest, RegistryHost};

/// Every manifest type Baton accepts, most specific first.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Clone)]
enum Credentials {
    None,
    Basic { username: String, password: String },
    Bearer(String),
}

/// One registry reached over HTTP.
#[derive(Debug)]
pub struct DistributionRegistry {
    host: RegistryHost,
    base: String,
    /// Origins (`scheme://host[:port]`) besides the registry's own https host that may
    /// receive the basic credentials when they issue tokens.
    token_realms: Vec<String>,
    client: Http,
    creds: Credentials,
    /// Token from the last challenge: (scope, token).
    token: Mutex<Option<(String, String)>>,
}

impl DistributionRegistry {
    /// Builds the adapter; credentials are read from the environment now, so a missing
    /// variable is reported at start-up, naming it.
    pub fn from_config(cfg: &RegistryConfig, client: Http) -> Result<DistributionRegistry> {
        let env = |var: &str| crate::config::secret_env(var, &format!("registry {}", cfg.host));
        let creds = match &cfg.auth {
            RegistryAuth::None => Credentials::None,
            RegistryAuth::Basic {
                username,
                password_env,
            } => Credentials::Basic {
                username: username.clone(),
                password: env(password_env)?,
            },
            RegistryAuth::Bearer { token_env } => Credentials::Bearer(env(token_env)?),
        };
        Ok(DistributionRegistry {
            host: cfg.host.clone(),
            base: cfg.base_url().trim_end_matches('/').to_string(),
            token_realms: cfg.token_realms.clone(),
            client,
            creds,
            token: Mutex::new(None),
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Whether the basic credentials may go to this token realm: https on the host of
    /// the registry's own URL, or an allow-listed origin.
    fn may_send_credentials(&self, realm: &reqwest::Url) -> bool {
        let origin = realm.origin().ascii_serialization();
        if self
            .token_realms
            .iter()
            .any(|o| o.trim_end_matches('/') == origin)
        {
            return true;
        }
        let own_host = reqwest::Url::parse(&self.base)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase));
        realm.scheme() == "https"
            && own_host.is_some()
            && realm.host_str().map(str::to_ascii_lowercase) == own_host
    }

    fn cached_token(&self, scope: &str) -> Option<String> {
        let guard = self.token.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .filter(|(s, _)| s == scope)
            .map(|(_, t)| t.clone())
    }

    fn authorize(&self, req: reqwest::RequestBuilder, scope: &str) -> reqwest::RequestBuilder {
        if let Some(t) = self.cached_token(scope) {
            return req.bearer_auth(t);
        }
        match &self.creds {
            Credentials::None => req,
            Credentials::Basic { username, password } => req.basic_auth(username, Some(password)),
            Credentials::Bearer(t) => req.bearer_auth(t),
        }
    }

    /// Sends a request, answering one bearer challenge if the registry makes it.
    async fn send(
        &self,
        method: Method,
        path: &str,
        scope: &str,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let url = format!("{}{path}", self.base);
        let what = format!("{method} {}{path}", self.host);
        let first =
            build(self.authorize(self.client.client()?.request(method.clone(), &url), scope))
                .send()
                .await
                .map_err(|e| transport(&what, &e))?;
        if first.status() != StatusCode::UNAUTHORIZED {
            return Ok(first);
        }
        let challenge = first
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let Some(params) = challenge
            .strip_prefix("Bearer ")
            .or_else(|| challenge.strip_prefix("bearer "))
        else {
            return Err(Error::permanent(
                what,
                "the registry refused the credentials (HTTP 401)",
            ));
        };
        let token = self.fetch_token(params, scope).await?;
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((scope.to_string(), token.clone()));
        let second = build(
            self.client
                .client()?
                .request(method, &url)
                .bearer_auth(token),
        )
        .send()
        .await
        .map_err(|e| transport(&what, &e))?;
        if second.status() == StatusCode::UNAUTHORIZED {
            return Err(Error::permanent(
                what,
                "the registry refused the token it issued (HTTP 401)",
            ));
        }
        Ok(second)
    }

    async fn fetch_token(&self, params: &str, scope: &str) -> Result<String> {
        let p = parse_challenge(params);
        let realm = p
            .iter()
            .find(|(k, _)| k == "realm")
            .map(|(_, v)| v.clone())
            .ok_or_else(|| {
                Error::permanent(
                    format!("registry {}", self.host),
                    "bearer challenge without a realm",
                )
            })?;
        let mut query: Vec<(String, String)> =
            p.into_iter().filter(|(k, _)| k == "service").collect();
        query.push(("scope".into(), scope.to_string()));
        let url = reqwest::Url::parse_with_params(&realm, &query).map_err(|e| {
            Error::permanent(
                format!("registry {}", self.host),
                format!("bad token realm {realm:?}: {e}"),
            )
        })?;
        let mut req = self.client.client()?.get(url.clone());
        if let Credentials::Basic { username, password } = &self.creds {
            if self.may_send_credentials(&url) {
                req = req.basic_auth(username, Some(password));
            } else {
                tracing::warn!(registry = %self.host, realm = %url.origin().ascii_serialization(),
                    "not sending the registry's credentials to a token realm that is neither https on its own host nor in registries[].token_realms; asking for an anonymous token");
            }
        }
        let what = format!("token for {} from {realm}", self.host);
        let resp = req.send().await.map_err(|e| transport(&what, &e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(status_error(&what, status));
        }
        let body: serde_json::Value = resp.json().await.map_err(|e| {
            Error::permanent(what.clone(), format!("unreadable token response: {e}"))
        })?;
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_owned)
            .ok_or_else(|| Error::permanent(what, "the token response has no token"))
    }
}

fn parse_challenge(params: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    let mut rest = params.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim().trim_start_matches(',').trim().to_string();
        let (value, next) = if let Some(stripped) = after.strip_prefix('"') {
            match stripped.find('"') {
                Some(end) => (stripped[..end].to_string(), &stripped[end + 1..]),
                None => (stripped.to_string(), ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (after[..end].to_string(), &after[end..]),
                None => (after.to_string(), ""),
            }
        };
        out.push((key, value));
        rest = next.trim_start_matches(',').trim();
    }
    out
}

fn transport(what: &str, e: &reqwest::Error) -> Error {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    Error::transient(what.to_string(), Message(kind.into()))
}

fn status_error(what: &str, status: StatusCode) -> Error {
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        Error::transient(what.to_string(), Message(format!("HTTP {status}")))
    } else {
        Error::permanent(what.to_string(), format!("HTTP {status}"))
    }
}

fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

impl Registry for DistributionRegistry {
    async fn resolve(&self, _registry: &str, repository: &str, tag: &str) -> Result<Resolved> {
        let path = format!("/v2/{repository}/manifests/{tag}");
        let scope = pull_scope(repository);
        let resp = self
            .send(Method::GET, &path, &scope, |r| {
                r.header(header::ACCEPT, MANIFEST_ACCEPT)
            })
            .await?;
        let what = format!("resolve {}/{repository}:{tag}", self.host);
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => {
                return Err(Error::not_found(
                    "tag",
                    format!("{}/{repository}:{tag}", self.host),
                ));
            }
            s => return Err(status_error(&what, s)),
        }
        let header_digest = resp
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.bytes().await.map_err(|e| transport(&what, &e))?;
        let digest: ImageDigest = header_digest
            .unwrap_or_else(|| format!("sha256:{}", hex::encode(Sha256::digest(&body))))
            .parse()
            .map_err(|e| Error::permanent(what, format!("Docker-Content-Digest: {e}")))?;
        Ok(Resolved {
            digest,
            pushed_at: None,
        })
    }

    async fn retag(&self, image: &Image, tag: &crate::reference::Tag) -> Result<()> {
        let repo = &image.repository;
        let what = format!("retag {} as {tag}", image.reference());
        let scope = format!("repository:{repo}:pull,push");
        let resp = self
            .send(
                Method::GET,
                &format!("/v2/{repo}/manifests/{}", image.digest),
                &scope,
                |r| r.header(header::ACCEPT, MANIFEST_ACCEPT),
            )
            .await?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => {
                return Err(Error::permanent(what, "manifest unknown to the registry"));
            }
            s => return Err(status_error(&what, s)),
        }
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/vnd.oci.image.manifest.v1+json")
            .to_string();
        let body = resp.bytes().await.map_err(|e| transport(&what, &e))?;
        let resp = self
            .send(
                Method::PUT,
                &format!("/v2/{repo}/manifests/{tag}"),
                &scope,
                |r| {
                    r.header(header::CONTENT_TYPE, content_type.clone())
                        .body(body.clone())
                },
            )
            .await?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(status_error(&what, status))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::extract::Path;
    use axum::http::{HeaderMap, StatusCode as S};
    use axum::response::IntoResponse;
    use axum::routing::get;

    #[test]
    fn challenge_parameters() {
        let p = parse_challenge(
            r#"realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        );
        assert_eq!(p[0], ("realm".into(), "https://auth.example/token".into()));
        assert_eq!(p[1], ("service".into(), "registry.example".into()));
        assert_eq!(p[2].1, "repository:a/b:pull");
    }

    /// A registry that demands a bearer token obtained with basic credentials.
    #[tokio::test]
    async fn bearer_token_flow_with_basic_credentials() {
        let digest = format!("sha256:{}", "d".repeat(64));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let d2 = digest.clone();
        let app = Router::new()
            .route(
                "/token",
                get(|headers: HeaderMap| async move {
                    // "user:pw" in base64
                    if headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Basic dXNlcjpwdw==") {
                        (S::OK, r#"{"token":"tok-123"}"#).into_response()
                    } else {
                        S::UNAUTHORIZED.into_response()
                    }
                }),
            )
            .route(
                "/v2/{ns}/{name}/manifests/{reference}",
                get(move |headers: HeaderMap, Path((_ns, _name, reference)): Path<(String, String, String)>| {
                    let d = d2.clone();
                    async move {
                        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer tok-123") {
                            let challenge = format!(
                                "Bearer realm=\"http://{addr}/token\",service=\"test\",scope=\"repository:team/web:pull\""
                            );
                            return (S::UNAUTHORIZED, [("www-authenticate", challenge)]).into_response();
                        }
                        if reference != "1.0.0" {
                            return S::NOT_FOUND.into_response();
                        }
                        (S::OK, [("docker-content-digest", d)], "{}").into_response()
                    }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let cfg = RegistryConfig {
            host: "registry.test".parse().unwrap(),
            url: Some(format!("http://{addr}")),
            auth: RegistryAuth::Basic {
                username: "user".into(),
                password_env: "BATON_TEST_DIST_PASSWORD".into(),
            },
            token_realms: vec![format!("http://{addr}")],
        };
        let reg = DistributionRegistry {
            host: cfg.host.clone(),
            base: cfg.base_url(),
            token_realms: cfg.token_realms.clone(),
            client: Http::new(),
            creds: Credentials::Basic {
                username: "user".into(),
                password: "pw".into(),
            },
            token: Mutex::new(None),
        };
        let r = reg
            .resolve("registry.test", "team/web", "1.0.0")
            .await
            .unwrap();
        assert_eq!(r.digest, digest);
        let e = reg
            .resolve("registry.test", "team/web", "9.9.9")
            .await
            .unwrap_err();
        assert_eq!(e.kind(), "not_found");
        let bad = DistributionRegistry {
            creds: Credentials::Basic {
                username: "user".into(),
                password: "wrong".into(),
            },
            token: Mutex::new(None),
            host: cfg.host.clone(),
            base: cfg.base_url(),
            token_realms: cfg.token_realms.clone(),
            client: Http::new(),
        };
        let e = bad
            .resolve("registry.test", "team/web", "1.0.0")
            .await
            .unwrap_err();
        assert_eq!(e.kind(), "permanent");
        assert!(!e.to_string().contains("wrong"), "no secret in errors: {e}");

        // The same registry without the realm allow-listed: its challenge names an http
        // realm, so the credentials stay home and the anonymous token request is refused.
        let unlisted = DistributionRegistry {
            creds: Credentials::Basic {
                username: "user".into(),
                password: "pw".into(),
            },
            token: Mutex::new(None),
            host: cfg.host.clone(),
            base: cfg.base_url(),
            token_realms: vec![],
            client: Http::new(),
        };
        let e = unlisted
            .resolve("registry.test", "team/web", "1.0.0")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("401"), "credentials withheld: {e}");
        let https_own = reqwest::Url::parse("https://registry.test/token").unwrap();
        let https_other = reqwest::Url::parse("https://evil.example/token").unwrap();
        let mut own = DistributionRegistry {
            base: "https://registry.test".into(),
            ..unlisted
        };
        assert!(own.may_send_credentials(&https_own));
        assert!(!own.may_send_credentials(&https_other));
        own.token_realms = vec!["https://evil.example".into()];
        assert!(own.may_send_credentials(&https_other), "allow-listed");
    }
}
