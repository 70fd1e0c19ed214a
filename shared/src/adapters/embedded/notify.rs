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
#[derive(Debug, Clone)]
pub struct WebhookNotifier {
    client: Http,
    url: String,
    timeout: Duration,
}

impl WebhookNotifier {
    pub fn new(client: Http, url: String, timeout: Duration) -> Self {
        WebhookNotifier {
            client,
            url,
            timeout,
        }
    }
}

impl Notifier for WebhookNotifier {
    async fn notify(&self, reaction: &str, event: &Event) -> Result<()> {
        let body = serde_json::json!({
            "text": format!("[baton] {}", event.summary()),
            "reaction": reaction,
            "event": event.to_envelope(),
        });
        let what = format!("webhook of reaction {reaction}");
        let resp = self
            .client
            .client()?
            .post(&self.url)
            .timeout(self.timeout)
            .json(&body)
            .send()
            .await
            // reqwest errors include the URL; keep only the kind of failure.
            .map_err(|e| Error::transient(what.clone(), Message(describe(&e))))?;
        let status = resp.status();
        if status.is_success() {
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
