//! Approve from Slack: the interaction callback of the Approve/Reject buttons that the
//! `slack` webhook format puts on `approval.requested`. Pure functions: Slack's request
//! signature (v0: `v0=` + hex HMAC-SHA256 of `v0:<timestamp>:<raw body>` with the app's
//! signing secret; the timestamp within five minutes), and the `block_actions` payload
//! read into a typed decision. The caller refuses replays, maps the Slack user to an
//! approver and applies every approval rule through the approve stage.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::error::{Error, Result};
use crate::ids::{is_name, is_run_prefix};
use crate::policy::approval::Verdict;
use crate::reference::excerpt;

// The buttons are drawn by the `slack` chat format.
pub use crate::adapters::chat::{APPROVE, REJECT, button_value};
/// How far a request's timestamp may be from now.
pub const MAX_SKEW_SECS: i64 = 5 * 60;

/// The callback's configuration with its secret resolved.
#[derive(Clone)]
pub struct SlackEndpoint {
    secret: String,
    users: std::collections::BTreeMap<String, String>,
    response_urls: Vec<String>,
    http: crate::adapters::http::Http,
}

impl std::fmt::Debug for SlackEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackEndpoint")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl SlackEndpoint {
    /// Resolves the signing secret from the environment (an error names the variable).
    pub fn from_config(c: &crate::config::SlackConfig) -> Result<SlackEndpoint> {
        Ok(SlackEndpoint {
            secret: crate::config::secret_env(
                &c.signing_secret_env,
                "serve.slack.signing_secret_env",
            )?,
            users: c.users.clone(),
            response_urls: c.response_urls.clone(),
            http: crate::adapters::http::Http::new(),
        })
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The approver a Slack user is, if any.
    pub fn approver(&self, user: &str) -> Option<&str> {
        self.users.get(user).map(String::as_str)
    }

    /// Posts `message` to the callback's `response_url`, when it is one of the allowed
    /// prefixes (anything else is not contacted: the URL comes from the request).
    pub async fn respond(&self, response_url: Option<&str>, message: serde_json::Value) {
        let Some(url) = response_url else { return };
        if !self
            .response_urls
            .iter()
            .any(|p| url.starts_with(p.as_str()))
        {
            tracing::warn!("Slack response_url outside serve.slack.response_urls: not contacted");
            return;
        }
        let Ok(client) = self.http.client() else {
            return;
        };
        let sent = client
            .post(url)
            .timeout(std::time::Duration::from_secs(10))
            .json(&message)
            .send()
            .await;
        if let Err(e) = sent.and_then(|r| r.error_for_status()) {
            tracing::warn!(error = %e.without_url(), "updating the Slack message failed");
        }
    }
}

/// Why a callback is refused before anything is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

/// Checks `X-Slack-Signature` over the raw body at `X-Slack-Request-Timestamp`.
pub fn verify(
    secret: &str,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_secs: i64,
) -> std::result::Result<i64, Refused> {
    let ts: i64 = timestamp
        .ok_or_else(|| Refused("no X-Slack-Request-Timestamp".into()))?
        .trim()
        .parse()
        .map_err(|_| Refused("X-Slack-Request-Timestamp is not a number".into()))?;
    if now_secs
        .checked_sub(ts)
        .is_none_or(|d| d.abs() > MAX_SKEW_SECS)
    {
        return Err(Refused(
            "the request's timestamp is more than five minutes away".into(),
        ));
    }
    let sig = signature.ok_or_else(|| Refused("no X-Slack-Signature".into()))?;
    let hex = sig
        .strip_prefix("v0=")
        .ok_or_else(|| Refused("X-Slack-Signature is not a v0 signature".into()))?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .map_err(|_| Refused("signing secret unusable".into()))?;
    mac.update(format!("v0:{ts}:").as_bytes());
    mac.update(body);
    let want = ::hex::decode(hex).map_err(|_| Refused("X-Slack-Signature is not hex".into()))?;
    mac.verify_slice(&want)
        .map_err(|_| Refused("X-Slack-Signature does not match".into()))?;
    Ok(ts)
}

/// A button press, read from the callback.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    /// The Slack user who pressed it (`U012AB3CD`).
    pub user: String,
    pub verdict: Verdict,
    pub run: String,
    pub environment: String,
    /// Where the message is updated with the outcome.
    pub response_url: Option<String>,
}

#[derive(Deserialize)]
struct Payload {
    #[serde(rename = "type")]
    ty: String,
    user: User,
    #[serde(default)]
    actions: Vec<ActionJson>,
    #[serde(default)]
    response_url: Option<String>,
}
#[derive(Deserialize)]
struct User {
    id: String,
}
#[derive(Deserialize)]
struct ActionJson {
    action_id: String,
    #[serde(default)]
    value: Option<String>,
}

/// Reads the form body Slack posts (`payload=<JSON>`); errors name the field.
pub fn parse(body: &[u8]) -> Result<Action> {
    const WHAT: &str = "Slack interaction";
    let payload = form_field(body, "payload")
        .ok_or_else(|| Error::invalid(WHAT, "payload: missing (a form field holding JSON)"))?;
    let p: Payload =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(&payload))
            .map_err(|e| Error::invalid(WHAT, format!("payload.{}: {}", e.path(), e.inner())))?;
    if p.ty != "block_actions" {
        return Err(Error::invalid(
            WHAT,
            format!("payload.type: {} is not block_actions", excerpt(&p.ty)),
        ));
    }
    let valid_user = !p.user.id.is_empty()
        && p.user.id.len() <= 32
        && p.user
            .id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    if !valid_user {
        return Err(Error::invalid(
            WHAT,
            format!(
                "payload.user.id: {} is not a Slack user id",
                excerpt(&p.user.id)
            ),
        ));
    }
    let a = p
        .actions
        .first()
        .ok_or_else(|| Error::invalid(WHAT, "payload.actions: no action"))?;
    let verdict = match a.action_id.as_str() {
        APPROVE => Verdict::Approve,
        REJECT => Verdict::Reject,
        other => {
            return Err(Error::invalid(
                WHAT,
                format!(
                    "payload.actions[0].action_id: {} is not a Baton button",
                    excerpt(other)
                ),
            ));
        }
    };
    let value = a.value.as_deref().unwrap_or_default();
    let (run, env) = value
        .split_once('/')
        .filter(|(r, e)| is_run_prefix(r) && r.len() == 16 && is_name(e))
        .ok_or_else(|| {
            Error::invalid(
                WHAT,
                format!(
                    "payload.actions[0].value: {} is not <run>/<environment>",
                    excerpt(value)
                ),
            )
        })?;
    Ok(Action {
        user: p.user.id,
        verdict,
        run: run.into(),
        environment: env.into(),
        response_url: p.response_url,
    })
}

/// One field of an `application/x-www-form-urlencoded` body, decoded.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slacks_documented_example_signature_verifies() {
        // From Slack's "Verifying requests from Slack" documentation.
        let secret = "8f742231b10e8888abcd99yyyzzz85a5";
        let ts = "1531420618";
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let sig = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        assert_eq!(
            verify(secret, Some(ts), Some(sig), body, 1531420618),
            Ok(1531420618)
        );
        assert!(verify(secret, Some(ts), Some(sig), b"token=x", 1531420618).is_err());
        assert!(verify("other", Some(ts), Some(sig), body, 1531420618).is_err());
        let stale = verify(secret, Some(ts), Some(sig), body, 1531420618 + 301).unwrap_err();
        assert!(stale.0.contains("five minutes"), "{stale:?}");
        assert!(verify(secret, None, Some(sig), body, 1531420618).is_err());
        assert!(verify(secret, Some(ts), Some("a2114d57"), body, 1531420618).is_err());
    }

    fn form(payload: serde_json::Value) -> Vec<u8> {
        let json = payload.to_string();
        let mut out = String::from("payload=");
        for b in json.bytes() {
            if b.is_ascii_alphanumeric() {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out.into_bytes()
    }

    #[test]
    fn a_button_press_is_read_into_a_decision_or_refused_naming_the_field() {
        let ok = serde_json::json!({"type": "block_actions", "user": {"id": "U012AB3CD"},
            "actions": [{"action_id": APPROVE, "value": "0123456789abcdef/production"}],
            "response_url": "https://hooks.slack.com/actions/T/1/x"});
        let a = parse(&form(ok.clone())).unwrap();
        assert_eq!(
            (
                a.user.as_str(),
                a.verdict,
                a.run.as_str(),
                a.environment.as_str()
            ),
            (
                "U012AB3CD",
                Verdict::Approve,
                "0123456789abcdef",
                "production"
            )
        );
        for (path, value, want) in [
            (
                "/type",
                serde_json::json!("view_submission"),
                "payload.type",
            ),
            ("/user/id", serde_json::json!("u1;drop"), "payload.user.id"),
            (
                "/actions/0/action_id",
                serde_json::json!("other"),
                "action_id",
            ),
            (
                "/actions/0/value",
                serde_json::json!("../../x/production"),
                "payload.actions[0].value",
            ),
            (
                "/actions/0/value",
                serde_json::json!("0123456789abcdef/Prod uction"),
                "payload.actions[0].value",
            ),
        ] {
            let mut v = ok.clone();
            *v.pointer_mut(path).unwrap() = value;
            let e = parse(&form(v)).unwrap_err().to_string();
            assert!(e.contains(want), "{path}: {e}");
        }
        assert!(
            parse(b"nothing=here")
                .unwrap_err()
                .to_string()
                .contains("payload: missing")
        );
    }
}
