//! `serve`: `baton serve`'s address, webhooks, approvers, readers and limits (the
//! webhooks and approvers also serve the AWS function URLs).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{duration, is_dns_label};

/// `baton serve` settings (webhooks and approvers also serve the AWS function URLs).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to listen on, `ip:port`.
    #[serde(default = "default_listen", deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// URL users reach Baton at (approval links); `http://<listen>` when absent.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Webhook endpoints, one per registry source: `POST /hooks/<name>`.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfigEntry>,
    /// Approvers: a bearer token from the environment (`baton serve`) and/or IAM
    /// principals (the approve function URL on AWS).
    #[serde(default)]
    pub approvers: BTreeMap<String, ApproverIdentity>,
    /// Readers who may see runs over HTTP (`GET /runs`) without being approvers, each
    /// with a bearer token from the environment.
    #[serde(default)]
    pub readers: BTreeMap<String, ReaderToken>,
    /// A reverse proxy that authenticates approvers and names them in a header. The
    /// header is believed only on requests that also carry the proxy's shared secret.
    #[serde(default)]
    pub trusted_proxy: Option<TrustedProxy>,
    /// Replaced by `trusted_proxy`: a bare identity header can be forged by any local
    /// process. Refused at load with what to write instead.
    #[serde(default, skip_serializing)]
    pub identity_header: Option<String>,
    /// Most connections served at once; more wait in the listen queue.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, and then its body.
    #[serde(default = "default_request_timeout", with = "duration")]
    pub request_timeout: Duration,
    /// Approve from Slack: `POST /slack/interactions` takes the Approve/Reject buttons
    /// of `approval.requested` messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<SlackConfig>,
}

/// Slack's interaction callback.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// The variable holding the Slack app's signing secret.
    pub signing_secret_env: String,
    /// Slack user id → approver name (as the approval policies name approvers); a user
    /// not listed decides nothing.
    pub users: BTreeMap<String, String>,
    /// Where message updates may be sent (the callback's `response_url` must start with
    /// one of these).
    #[serde(default = "default_slack_response_urls")]
    pub response_urls: Vec<String>,
}

fn default_slack_response_urls() -> Vec<String> {
    vec!["https://hooks.slack.com/".into()]
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: default_listen(),
            public_url: None,
            webhooks: vec![],
            approvers: BTreeMap::new(),
            readers: BTreeMap::new(),
            trusted_proxy: None,
            identity_header: None,
            max_connections: default_max_connections(),
            request_timeout: default_request_timeout(),
            slack: None,
        }
    }
}

fn default_max_connections() -> usize {
    256
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}

impl ServeConfig {
    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
            .trim_end_matches('/')
            .to_string()
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn socket_addr<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "{} is not an address like 127.0.0.1:8080",
            crate::reference::excerpt(&s)
        ))
    })
}

/// A webhook endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfigEntry {
    /// Path segment: the endpoint is `POST /hooks/<name>`.
    pub name: String,
    /// `distribution`, `dockerhub`, `harbor`, `ghcr` or `quay`.
    pub source: crate::triggers::TriggerKind,
    /// How requests prove they come from the registry.
    pub auth: WebhookAuth,
}

/// Webhook authentication. Each source has its documented one: distribution sends
/// configured headers, Harbor an auth header, GitHub an HMAC signature, Quay basic auth
/// in the URL, Docker Hub only the URL (so a token in the query).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum WebhookAuth {
    /// A header whose whole value must equal the secret (e.g. `Authorization`,
    /// value `Bearer <secret>`).
    Header { name: String, secret_env: String },
    /// HMAC-SHA256 of the body, hex, in a header (`X-Hub-Signature-256: sha256=<hex>`).
    Hmac {
        #[serde(default = "default_hmac_header")]
        header: String,
        secret_env: String,
    },
    /// HTTP basic auth.
    Basic {
        username: String,
        password_env: String,
    },
    /// A token in the query string (`?token=<secret>`).
    QueryToken {
        #[serde(default = "default_token_param")]
        param: String,
        secret_env: String,
    },
    /// Google's OIDC token that a Pub/Sub push subscription attaches
    /// (`Authorization: Bearer <JWT>`): RS256-signed by one of Google's keys (a JWKS file:
    /// https://www.googleapis.com/oauth2/v3/certs, refreshed by you), issued by
    /// accounts.google.com, for `audience`, not expired, and, with `email`, for that
    /// service account with a verified e-mail.
    GoogleOidc {
        audience: String,
        jwks_file: std::path::PathBuf,
        #[serde(default)]
        email: Option<String>,
    },
    /// No authentication: refused unless `baton serve` listens on loopback only, and
    /// never accepted by the ingest function URL.
    None,
}

fn default_hmac_header() -> String {
    "X-Hub-Signature-256".into()
}
fn default_token_param() -> String {
    "token".into()
}

/// How an approver authenticates: a bearer token for `baton serve`, IAM principals for
/// the approve function URL. At least one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproverIdentity {
    /// Environment variable holding the approver's bearer token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// IAM principals that are this approver: user ARNs, or `{role, session}` where the
    /// role's trust policy enforces the session name.
    #[serde(default)]
    pub iam: Vec<crate::identity::IamPrincipal>,
}

/// A reader's bearer token, from the environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReaderToken {
    pub token_env: String,
}

/// A reverse proxy (oauth2-proxy, an SSO gateway) that authenticates approvers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedProxy {
    /// The header naming the authenticated user (`X-Forwarded-User`).
    pub user_header: String,
    /// The header carrying the shared secret the proxy adds to every request.
    #[serde(default = "default_proxy_secret_header")]
    pub secret_header: String,
    /// Environment variable holding that secret.
    pub secret_env: String,
}

fn default_proxy_secret_header() -> String {
    "X-Baton-Proxy-Secret".into()
}

impl ServeConfig {
    /// This section's problems (`at` is `serve`).
    pub(super) fn check(&self, at: &str, p: &mut Vec<String>) {
        let mut hooks = BTreeSet::new();
        let loopback = self.listen.ip().is_loopback();
        for (i, w) in self.webhooks.iter().enumerate() {
            let at = format!("{at}.webhooks[{i}]");
            if !is_dns_label(&w.name) {
                p.push(format!(
                    "{at}.name: {:?} must be lowercase letters, digits and dashes",
                    w.name
                ));
            }
            if !hooks.insert(w.name.clone()) {
                p.push(format!("{at}.name: {:?} is declared twice", w.name));
            }
            if w.source == crate::triggers::TriggerKind::Ecr {
                p.push(format!(
                    "{at}.source: ecr pushes arrive through EventBridge, not a webhook (allowed: distribution, dockerhub, harbor, ghcr, quay, cdevents, pubsub, eventgrid, acr)"
                ));
            }
            if w.auth == WebhookAuth::None && !loopback {
                p.push(format!(
                    "{at}.auth: none is allowed only when serve.listen is a loopback address (it is {}); anyone who reaches the port could start runs",
                    self.listen
                ));
            }
        }
        let mut principals: BTreeMap<String, &str> = BTreeMap::new();
        for (who, id) in &self.approvers {
            let at = format!("{at}.approvers.{who}");
            if !crate::ids::is_label(who, 128) || who.trim() != who {
                p.push(format!("{at}: {who:?} is not an approver name"));
            }
            if id.token_env.is_none() && id.iam.is_empty() {
                p.push(format!(
                    "{at}: give token_env (baton serve) or iam (the AWS approve URL)"
                ));
            }
            for (k, principal) in id.iam.iter().enumerate() {
                if let Some(why) = principal.problem() {
                    p.push(format!("{at}.iam[{k}]: {why}"));
                }
                let key = serde_json::to_string(principal).unwrap_or_default();
                if let Some(other) = principals.insert(key, who) {
                    p.push(format!("{at}.iam[{k}]: already maps to approver {other}"));
                }
            }
        }
        for who in self.readers.keys() {
            if !crate::ids::is_label(who, 128) {
                p.push(format!("{at}.readers.{who}: not a reader name"));
            }
        }
        if self.identity_header.is_some() {
            p.push(format!(
                "{at}.identity_header: no longer honoured, since any local process could send it; use serve.trusted_proxy: {{user_header: X-Forwarded-User, secret_env: BATON_PROXY_SECRET}} and have the proxy send the secret in X-Baton-Proxy-Secret"
            ));
        }
        if let Some(tp) = &self.trusted_proxy
            && (tp.user_header.is_empty()
                || tp.secret_header.is_empty()
                || tp.secret_env.is_empty())
        {
            p.push(format!(
                "{at}.trusted_proxy: user_header, secret_header and secret_env must not be empty"
            ));
        }
        if let Some(s) = &self.slack {
            let at = format!("{at}.slack");
            if s.signing_secret_env.is_empty() {
                p.push(format!("{at}.signing_secret_env: name the variable"));
            }
            for (user, name) in &s.users {
                let id_ok = !user.is_empty()
                    && user.len() <= 32
                    && user
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
                if !id_ok {
                    p.push(format!(
                        "{at}.users.{user}: not a Slack user id (like U012AB3CD)"
                    ));
                }
                if !crate::ids::is_label(name, 128) || name.trim() != name {
                    p.push(format!(
                        "{at}.users.{user}: {name:?} is not an approver name"
                    ));
                }
            }
            for (i, u) in s.response_urls.iter().enumerate() {
                if !(u.starts_with("https://") || u.starts_with("http://127.0.0.1:"))
                    || !u.ends_with('/')
                {
                    p.push(format!(
                        "{at}.response_urls[{i}]: {u:?} must be an https URL prefix ending in / (http only to 127.0.0.1)"
                    ));
                }
            }
        }
        if self.max_connections == 0 {
            p.push(format!("{at}.max_connections: must be at least 1"));
        }
        if self.request_timeout.is_zero() {
            p.push(format!("{at}.request_timeout: must be more than 0"));
        }
    }
}
