//! Notifiers: `WebhookNotifier` POSTs the event as JSON (with a Slack-compatible `text`
//! line) to a URL; `LogNotifier` appends one line per event to a file. The webhook URL
//! is a secret (Slack URLs are): it never appears in errors or logs.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use crate::adapters::http::Http;
use crate::error::{Error, Message, Result};
use crate::event::Event;
use crate::ports::Notifier;

/// POSTs events to a webhook.
#[derive(Clone)]
pub struct WebhookNotifier {
    client: Http,
    url: String,
    timeout: Duration,
    format: crate::config::ChatFormat,
    /// DingTalk/Feishu signing secret.
    secret: Option<String>,
    template: Option<String>,
    /// Base URL of `baton serve`, for the run's link.
    link_base: Option<String>,
    /// Send CDEvents as CloudEvents (binary mode) instead of a chat body.
    cdevents: bool,
}

impl std::fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL and the secret are secrets.
        f.debug_struct("WebhookNotifier")
            .field("format", &self.format)
            .field("signed", &self.secret.is_some())
            .finish_non_exhaustive()
    }
}

impl WebhookNotifier {
    pub fn new(client: Http, url: String, timeout: Duration) -> Self {
        WebhookNotifier {
            client,
            url,
            timeout,
            format: crate::config::ChatFormat::Generic,
            secret: None,
            template: None,
            link_base: None,
            cdevents: false,
        }
    }

    /// A CDEvents sink: each event with a CDEvents counterpart goes out as a CloudEvent
    /// in HTTP binary mode; the others are not sent.
    pub fn cdevents(client: Http, url: String, timeout: Duration) -> Self {
        WebhookNotifier {
            cdevents: true,
            ..WebhookNotifier::new(client, url, timeout)
        }
    }

    /// The body shape, its signing secret and template, and where runs are linked.
    pub fn with_format(
        mut self,
        format: crate::config::ChatFormat,
        secret: Option<String>,
        template: Option<String>,
        link_base: Option<String>,
    ) -> Self {
        self.format = format;
        self.secret = secret;
        self.template = template;
        self.link_base = link_base;
        self
    }
}

impl Notifier for WebhookNotifier {
    async fn notify(&self, reaction: &str, event: &Event) -> Result<()> {
        use crate::config::ChatFormat;
        if self.cdevents {
            return self.send_cdevent(reaction, event).await;
        }
        let link = self
            .link_base
            .as_ref()
            .map(|b| format!("{}/runs/{}", b.trim_end_matches('/'), event.ctx().run));
        let mut body = crate::adapters::chat::body(
            self.format,
            reaction,
            event,
            link.as_deref(),
            self.template.as_deref(),
        )?;
        let mut url = self.url.clone();
        if let Some(secret) = &self.secret {
            let now = chrono::Utc::now();
            match self.format {
                ChatFormat::Dingtalk => {
                    let ts = now.timestamp_millis();
                    let sign = crate::adapters::chat::dingtalk_sign(secret, ts);
                    let mut u = reqwest::Url::parse(&url).map_err(|e| {
                        Error::permanent(
                            format!("webhook of reaction {reaction}"),
                            format!("URL: {e}"),
                        )
                    })?;
                    u.query_pairs_mut()
                        .append_pair("timestamp", &ts.to_string())
                        .append_pair("sign", &sign);
                    url = u.to_string();
                }
                ChatFormat::Feishu => {
                    let ts = now.timestamp();
                    body["timestamp"] = serde_json::json!(ts.to_string());
                    body["sign"] =
                        serde_json::json!(crate::adapters::chat::feishu_sign(secret, ts));
                }
                _ => {}
            }
        }
        let what = format!("webhook of reaction {reaction}");
        let resp = self
            .client
            .client()?
            .post(&url)
            .timeout(self.timeout)
            .json(&body)
            .send()
            .await
            // reqwest errors include the URL; keep only the kind of failure.
            .map_err(|e| Error::transient(what.clone(), Message(describe(&e))))?;
        let status = resp.status();
        if status.is_success() {
            // DingTalk and Feishu answer 200 and put a refusal (a bad signature, a
            // keyword filter) in the body.
            if matches!(self.format, ChatFormat::Dingtalk | ChatFormat::Feishu) {
                let v: serde_json::Value = resp.json().await.unwrap_or_default();
                let (code, msg) = match self.format {
                    ChatFormat::Dingtalk => (&v["errcode"], &v["errmsg"]),
                    _ => (&v["code"], &v["msg"]),
                };
                if code.as_i64().is_some_and(|c| c != 0) {
                    return Err(Error::permanent(
                        what,
                        format!(
                            "the robot refused the message: {code} {}",
                            crate::reference::excerpt(msg.as_str().unwrap_or_default())
                        ),
                    ));
                }
            }
            Ok(())
        } else if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
            Err(Error::transient(what, Message(format!("HTTP {status}"))))
        } else {
            Err(Error::permanent(
                what,
                format!("HTTP {status}: the endpoint refused the notification"),
            ))
        }
    }
}

impl WebhookNotifier {
    async fn send_cdevent(&self, reaction: &str, event: &Event) -> Result<()> {
        let Some(cd) = crate::cdevents::cdevent(event) else {
            return Ok(());
        };
        let what = format!("CDEvents sink of reaction {reaction}");
        let mut req = self
            .client
            .client()?
            .post(&self.url)
            .timeout(self.timeout)
            .header("content-type", "application/json");
        for (h, v) in crate::cdevents::cloudevent_headers(&cd) {
            req = req.header(h, v);
        }
        let resp = req
            .body(cd.to_string())
            .send()
            .await
            .map_err(|e| Error::transient(what.clone(), Message(describe(&e))))?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
            Err(Error::transient(what, Message(format!("HTTP {status}"))))
        } else {
            Err(Error::permanent(
                what,
                format!("HTTP {status}: the sink refused the CloudEvent"),
            ))
        }
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "could not connect".into()
    } else {
        "request failed".into()
    }
}

/// Appends one line per event to a file.
#[derive(Debug, Clone)]
pub struct LogNotifier {
    pub path: PathBuf,
}

impl Notifier for LogNotifier {
    async fn notify(&self, reaction: &str, event: &Event) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::io("open", &self.path, e))?;
        writeln!(
            f,
            "{} [{reaction}] {}",
            event
                .time
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            event.summary()
        )
        .map_err(|e| Error::io("append to", &self.path, e))?;
        Ok(())
    }
}
