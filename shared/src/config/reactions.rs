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
    /// Send an e-mail through an SMTP server (no cloud account needed).
    Email(EmailConfig),
    /// Send CDEvents v0.5.1 as CloudEvents to a sink (`url` or `url_env`, `timeout`).
    Cdevents(CdeventsConfig),
}

/// A CDEvents sink.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdeventsConfig {
    #[serde(default)]
    pub url: Option<String>,
    /// Environment variable holding the URL, when it carries a credential.
    #[serde(default)]
    pub url_env: Option<String>,
    #[serde(default = "default_webhook_timeout", with = "duration")]
    pub timeout: Duration,
}

/// An e-mail reaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// Recipients (`ops@example.com`, `Ops <ops@example.com>`).
    pub to: Vec<String>,
    pub from: String,
    /// Subject template (minijinja) over the event's fields: `summary`, `type`, `app`,
    /// `environment`, `run`, `image`, `tag`, `digest`, `time`, `link`, `event` (the
    /// whole envelope). Default `[baton] {{ summary }}`.
    #[serde(default)]
    pub subject: Option<String>,
    /// Body template, same fields; by default the summary, the run's link and the
    /// event's fields.
    #[serde(default)]
    pub body: Option<String>,
    pub smtp: SmtpConfig,
}

/// The SMTP server an e-mail reaction sends through.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    /// Default 587 with `starttls`, 465 with `tls`, 25 with `none`.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: SmtpTls,
    #[serde(default)]
    pub username: Option<String>,
    /// Environment variable holding the password (never in this file).
    #[serde(default)]
    pub password_env: Option<String>,
    /// Trust only this CA (PEM) for the server's certificate (a private relay); the
    /// platform's trust store otherwise.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_webhook_timeout", with = "duration")]
    pub timeout: Duration,
}

/// How the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which is required.
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS).
    Tls,
    /// No TLS: only to a server on this machine's loopback, and never with a password.
    None,
}

impl SmtpConfig {
    /// The port, by default the one of its TLS mode.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        })
    }
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
    /// The body's shape: what the receiving chat tool accepts.
    #[serde(default)]
    pub format: ChatFormat,
    /// DingTalk and Feishu: the variable holding the robot's signing secret; the
    /// request then carries the signature those tools check.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// `format: template`: a minijinja template over the event's fields rendering the
    /// JSON body.
    #[serde(default)]
    pub template: Option<String>,
}

/// Webhook body formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatFormat {
    /// `{"text", "reaction", "event"}` (Slack accepts it as plain text).
    #[default]
    Generic,
    /// Slack Block Kit with the run's link and outcome.
    Slack,
    /// A Microsoft Teams message with an Adaptive Card.
    Teams,
    /// A DingTalk robot `markdown` message (signed with `secret_env`).
    Dingtalk,
    /// A Feishu/Lark robot interactive card (signed with `secret_env`).
    Feishu,
    /// A Discord message with an embed.
    Discord,
    /// The user's `template`.
    Template,
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
        if let NotifyConfig::Email(e) = &self.notify {
            let at = format!("{at}.notify.email");
            if e.to.is_empty() {
                p.push(format!("{at}.to: at least one recipient"));
            }
            for (i, a) in e.to.iter().enumerate() {
                if let Err(err) = a.parse::<lettre::message::Mailbox>() {
                    p.push(format!(
                        "{at}.to[{i}]: {a:?} is not an e-mail address ({err})"
                    ));
                }
            }
            if let Err(err) = e.from.parse::<lettre::message::Mailbox>() {
                p.push(format!(
                    "{at}.from: {:?} is not an e-mail address ({err})",
                    e.from
                ));
            }
            let env = minijinja::Environment::new();
            for (field, t) in [("subject", &e.subject), ("body", &e.body)] {
                if let Some(t) = t
                    && let Err(err) = env.template_from_str(t)
                {
                    p.push(format!("{at}.{field}: not a template: {err}"));
                }
            }
            let loopback = matches!(e.smtp.host.as_str(), "localhost" | "127.0.0.1" | "::1");
            if e.smtp.tls == SmtpTls::None && !loopback {
                p.push(format!(
                    "{at}.smtp.tls: none is allowed only to a server on loopback (localhost, 127.0.0.1, ::1); use starttls or tls for {}",
                    e.smtp.host
                ));
            }
            if e.smtp.tls == SmtpTls::None && e.smtp.password_env.is_some() {
                p.push(format!(
                    "{at}.smtp.password_env: a password is never sent without TLS; use starttls or tls"
                ));
            }
            if e.smtp.username.is_some() != e.smtp.password_env.is_some() {
                p.push(format!("{at}.smtp: username and password_env go together"));
            }
        }
        if let NotifyConfig::Cdevents(c) = &self.notify {
            check_url(&format!("{at}.notify.cdevents"), &c.url, &c.url_env, p);
        }
        if let NotifyConfig::Webhook(w) = &self.notify {
            check_url(&format!("{at}.notify.webhook"), &w.url, &w.url_env, p);
            match (w.format, &w.template) {
                (ChatFormat::Template, None) => p.push(format!(
                    "{at}.notify.webhook.template: format template needs a template"
                )),
                (ChatFormat::Template, Some(t)) => {
                    if let Err(err) = minijinja::Environment::new().template_from_str(t) {
                        p.push(format!(
                            "{at}.notify.webhook.template: not a template: {err}"
                        ));
                    }
                }
                (f, Some(_)) => p.push(format!(
                    "{at}.notify.webhook.template: only for format template (this one is {f:?})"
                )),
                _ => {}
            }
            if w.secret_env.is_some()
                && !matches!(w.format, ChatFormat::Dingtalk | ChatFormat::Feishu)
            {
                p.push(format!(
                    "{at}.notify.webhook.secret_env: signing is for dingtalk and feishu; other formats put their secret in the URL (url_env)"
                ));
            }
        }
    }
}

/// Exactly one of `url` (http or https) and `url_env` (a variable name).
fn check_url(at: &str, url: &Option<String>, url_env: &Option<String>, p: &mut Vec<String>) {
    match (url, url_env) {
        (Some(_), Some(_)) | (None, None) => {
            p.push(format!("{at}: set exactly one of url or url_env"))
        }
        (Some(u), None) => {
            if let Err(why) = u.parse::<crate::config::HttpUrl>() {
                p.push(format!("{at}.url: {why}"))
            }
        }
        (None, Some(v)) if v.is_empty() => p.push(format!("{at}.url_env: must name a variable")),
        _ => {}
    }
}
