//! Registry webhooks: authenticating a request the way its source documents, and turning
//! its body into a [`Trigger`]. Pure functions over request parts, so `baton serve` and
//! ingest's function URL in AWS share them. Secrets are resolved from the environment
//! once, compared in constant time, and never logged.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::{WebhookAuth, WebhookConfigEntry};
use crate::error::{Error, Result};
use crate::triggers::{Parsed, Trigger, TriggerKind};

/// Largest webhook body taken (registry notifications are a few KB).
pub const MAX_WEBHOOK_BODY: usize = 1024 * 1024;

/// The parts of an HTTP request a webhook check needs.
#[derive(Clone, Copy)]
pub struct RequestParts<'a> {
    /// Header lookup by (case-insensitive) name.
    pub header: &'a dyn Fn(&str) -> Option<String>,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    pub body: &'a [u8],
}

/// A webhook endpoint with its secret resolved.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    pub source: TriggerKind,
    auth: Resolved,
}

#[derive(Debug, Clone)]
enum Resolved {
    Header { name: String, secret: String },
    Hmac { header: String, secret: String },
    Basic { username: String, password: String },
    QueryToken { param: String, secret: String },
    GoogleOidc(crate::oidc::GoogleOidc),
    None,
}

/// Why a request was refused (for the log; the response only says 401).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unauthorized(pub String);

fn secret(var: &str, endpoint: &str) -> Result<String> {
    crate::config::secret_env(var, &format!("webhook {endpoint}"))
}

/// Constant-time comparison.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Endpoint {
    /// Resolves the endpoint's secret from the environment; a missing variable is an
    /// error naming it.
    pub fn from_config(cfg: &WebhookConfigEntry) -> Result<Endpoint> {
        Endpoint::from_config_in(cfg, std::path::Path::new("."))
    }

    /// [`Endpoint::from_config`] with files (a JWKS) relative to `base`.
    pub fn from_config_in(cfg: &WebhookConfigEntry, base: &std::path::Path) -> Result<Endpoint> {
        let auth = match &cfg.auth {
            WebhookAuth::GoogleOidc {
                audience,
                jwks_file,
                email,
            } => Resolved::GoogleOidc(crate::oidc::GoogleOidc::from_file(
                &base.join(jwks_file),
                audience,
                email.as_deref(),
            )?),
            WebhookAuth::Header { name, secret_env } => Resolved::Header {
                name: name.clone(),
                secret: secret(secret_env, &cfg.name)?,
            },
            WebhookAuth::Hmac { header, secret_env } => Resolved::Hmac {
                header: header.clone(),
                secret: secret(secret_env, &cfg.name)?,
            },
            WebhookAuth::Basic {
                username,
                password_env,
            } => Resolved::Basic {
                username: username.clone(),
                password: secret(password_env, &cfg.name)?,
            },
            WebhookAuth::QueryToken { param, secret_env } => Resolved::QueryToken {
                param: param.clone(),
                secret: secret(secret_env, &cfg.name)?,
            },
            WebhookAuth::None => Resolved::None,
        };
        Ok(Endpoint {
            name: cfg.name.clone(),
            source: cfg.source,
            auth,
        })
    }

    /// Builds an endpoint with a known secret (tests, AWS secret stores).
    pub fn with_secret(
        name: &str,
        source: TriggerKind,
        auth: &WebhookAuth,
        secret: &str,
    ) -> Endpoint {
        let s = secret.to_string();
        let auth = match auth {
            WebhookAuth::Header { name, .. } => Resolved::Header {
                name: name.clone(),
                secret: s,
            },
            WebhookAuth::Hmac { header, .. } => Resolved::Hmac {
                header: header.clone(),
                secret: s,
            },
            WebhookAuth::Basic { username, .. } => Resolved::Basic {
                username: username.clone(),
                password: s,
            },
            WebhookAuth::QueryToken { param, .. } => Resolved::QueryToken {
                param: param.clone(),
                secret: s,
            },
            WebhookAuth::GoogleOidc { audience, .. } => {
                Resolved::GoogleOidc(crate::oidc::GoogleOidc::with_keys(vec![], audience, None))
            }
            WebhookAuth::None => Resolved::None,
        };
        Endpoint {
            name: name.into(),
            source,
            auth,
        }
    }

    /// Whether the request can be authenticated from its headers and query alone, so
    /// the body is read only after it is (every scheme but an HMAC over the body).
    pub fn authenticates_before_body(&self) -> bool {
        !matches!(self.auth, Resolved::Hmac { .. })
    }

    /// Whether the endpoint takes requests without authentication (`auth: none`).
    pub fn is_open(&self) -> bool {
        matches!(self.auth, Resolved::None)
    }

    /// Checks the request's authentication.
    pub fn authenticate(&self, req: &RequestParts<'_>) -> std::result::Result<(), Unauthorized> {
        let no = |why: &str| Err(Unauthorized(why.to_string()));
        match &self.auth {
            Resolved::None => Ok(()),
            Resolved::Header { name, secret } => match (req.header)(name) {
                Some(v) if same(v.as_bytes(), secret.as_bytes()) => Ok(()),
                Some(_) => no(&format!("header {name} does not match")),
                None => no(&format!("header {name} missing")),
            },
            Resolved::Hmac { header, secret } => {
                let Some(sig) = (req.header)(header) else {
                    return no(&format!("signature header {header} missing"));
                };
                let hex_sig = sig.strip_prefix("sha256=").unwrap_or(&sig);
                let Ok(given) = hex::decode(hex_sig.trim()) else {
                    return no("signature is not hex");
                };
                let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
                    return no("unusable secret");
                };
                mac.update(req.body);
                mac.verify_slice(&given)
                    .map_err(|_| Unauthorized("signature does not match the body".into()))
            }
            Resolved::Basic { username, password } => {
                let Some(v) = (req.header)("authorization") else {
                    return no("basic credentials missing");
                };
                let Some(b64) = v
                    .strip_prefix("Basic ")
                    .or_else(|| v.strip_prefix("basic "))
                else {
                    return no("authorization is not basic");
                };
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .unwrap_or_default();
                let expected = format!("{username}:{password}");
                if same(&decoded, expected.as_bytes()) {
                    Ok(())
                } else {
                    no("basic credentials do not match")
                }
            }
            Resolved::GoogleOidc(oidc) => {
                let Some(v) = (req.header)("authorization") else {
                    return no("no bearer token (Pub/Sub's OIDC token)");
                };
                let Some(token) = v
                    .strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
                else {
                    return no("authorization is not a bearer token");
                };
                oidc.verify(token.trim(), chrono::Utc::now().timestamp())
                    .map_err(Unauthorized)
            }
            Resolved::QueryToken { param, secret } => {
                let given = form_urlencoded::parse(req.query.unwrap_or("").as_bytes())
                    .find(|(k, _)| k == param)
                    .map(|(_, v)| v.into_owned());
                match given {
                    Some(v) if same(v.as_bytes(), secret.as_bytes()) => Ok(()),
                    Some(_) => no(&format!("query parameter {param} does not match")),
                    None => no(&format!("query parameter {param} missing")),
                }
            }
        }
    }

    /// Parses the body into a trigger; malformed bodies are `Error::Invalid` naming the
    /// field.
    pub fn trigger(
        &self,
        body: &[u8],
        received_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(Trigger, Parsed)> {
        let payload: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
            Error::invalid(
                format!("{} webhook", self.source.as_str()),
                format!("body is not JSON: {e}"),
            )
        })?;
        let trigger = Trigger {
            kind: self.source,
            received_at,
            payload,
        };
        let parsed = trigger.parse()?;
        Ok((trigger, parsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(
        h: &'a dyn Fn(&str) -> Option<String>,
        query: Option<&'a str>,
        body: &'a [u8],
    ) -> RequestParts<'a> {
        RequestParts {
            header: h,
            query,
            body,
        }
    }

    #[test]
    fn header_secret() {
        let e = Endpoint::with_secret(
            "d",
            TriggerKind::Distribution,
            &WebhookAuth::Header {
                name: "Authorization".into(),
                secret_env: String::new(),
            },
            "Bearer s3cret",
        );
        let good = |n: &str| (n == "Authorization").then(|| "Bearer s3cret".to_string());
        let bad = |n: &str| (n == "Authorization").then(|| "Bearer nope".to_string());
        let none = |_: &str| None;
        assert!(e.authenticate(&parts(&good, None, b"{}")).is_ok());
        assert!(e.authenticate(&parts(&bad, None, b"{}")).is_err());
        assert!(e.authenticate(&parts(&none, None, b"{}")).is_err());
    }

    #[test]
    fn hmac_signature_over_the_body() {
        let e = Endpoint::with_secret(
            "g",
            TriggerKind::Ghcr,
            &WebhookAuth::Hmac {
                header: "X-Hub-Signature-256".into(),
                secret_env: String::new(),
            },
            "It's a Secret to Everybody",
        );
        // GitHub's documented example: body "Hello, World!" with this secret.
        let sig =
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".to_string();
        let h = move |n: &str| (n == "X-Hub-Signature-256").then(|| sig.clone());
        assert!(e.authenticate(&parts(&h, None, b"Hello, World!")).is_ok());
        assert!(e.authenticate(&parts(&h, None, b"Hello, World?")).is_err());
    }

    #[test]
    fn basic_and_query_token() {
        let e = Endpoint::with_secret(
            "q",
            TriggerKind::Quay,
            &WebhookAuth::Basic {
                username: "quay".into(),
                password_env: String::new(),
            },
            "pw",
        );
        let good = |n: &str| (n == "authorization").then(|| "Basic cXVheTpwdw==".to_string());
        let bad = |n: &str| (n == "authorization").then(|| "Basic cXVheTpwYQ==".to_string());
        assert!(e.authenticate(&parts(&good, None, b"")).is_ok());
        assert!(e.authenticate(&parts(&bad, None, b"")).is_err());
        let e = Endpoint::with_secret(
            "h",
            TriggerKind::Dockerhub,
            &WebhookAuth::QueryToken {
                param: "token".into(),
                secret_env: String::new(),
            },
            "abc",
        );
        let none = |_: &str| None;
        assert!(
            e.authenticate(&parts(&none, Some("x=1&token=abc"), b""))
                .is_ok()
        );
        assert!(
            e.authenticate(&parts(&none, Some("token=abd"), b""))
                .is_err()
        );
        assert!(e.authenticate(&parts(&none, None, b"")).is_err());
    }

    #[test]
    fn constant_time_equality() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
