//! `reactions[]`: notifications attached to events by a filter policy.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{duration, is_dns_label};
use crate::policy::FilterPolicy;

/// A reaction: a notification attached to events by a filter policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReactionConfig {
    pub name: String,
    /// SNS filter policy on the attributes `type`, `app`, `environment`, `attempt`.
    pub on: FilterPolicy,
    pub notify: NotifyConfig,
}

/// Where a reaction sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum NotifyConfig {
    /// POST the event as JSON to a URL (Slack-compatible `text` field included).
    Webhook(WebhookConfig),
    /// Append one line per event to a file under the state directory.
    Log(LogConfig),
}

/// A webhook: the URL inline (not secret) or the name of the variable holding it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    #[serde(default)]
    pub url: Option<String>,
    /// Environment variable holding the URL (Slack URLs are secrets).
    #[serde(default)]
    pub url_env: Option<String>,
    #[serde(default = "default_webhook_timeout", with = "duration")]
    pub timeout: Duration,
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(10)
}

/// A log file reaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// File name under the state directory.
    #[serde(default = "default_log_path")]
    pub path: PathBuf,
}

fn default_log_path() -> PathBuf {
    PathBuf::from("notifications.log")
}

impl ReactionConfig {
    /// This reaction's problems (`at` is `reactions[i]`).
    pub(super) fn check(&self, at: &str, p: &mut Vec<String>) {
        if !is_dns_label(&self.name) {
            p.push(format!(
                "{at}.name: {:?} must be lowercase letters, digits and dashes",
                self.name
            ));
        }
        if let NotifyConfig::Webhook(w) = &self.notify {
            match (&w.url, &w.url_env) {
                (Some(_), Some(_)) | (None, None) => p.push(format!(
                    "{at}.notify.webhook: set exactly one of url or url_env"
                )),
                (Some(u), None) if !(u.starts_with("http://") || u.starts_with("https://")) => p
                    .push(format!(
                        "{at}.notify.webhook.url: {u:?} must be an http(s) URL"
                    )),
                (None, Some(v)) if v.is_empty() => {
                    p.push(format!("{at}.notify.webhook.url_env: must name a variable"))
                }
                _ => {}
            }
        }
    }
}
