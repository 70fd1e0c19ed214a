//! E-mail reactions over SMTP (lettre, rustls): subject and body rendered from minijinja
//! templates over the event's fields, sent through the configured server with STARTTLS
//! (required), TLS from the first byte, or (only on loopback, never with a password)
//! none. The password comes from the environment. A 4xx answer or a failed connection is
//! transient (the bus retries, then dead-letters); a 5xx answer is permanent.

use std::path::Path;

use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{EmailConfig, SmtpTls};
use crate::error::{Error, Message as Text, Result};
use crate::event::Event;
use crate::ports::Notifier;

const DEFAULT_SUBJECT: &str = "[baton] {{ summary }}";
const DEFAULT_BODY: &str = "{{ summary }}\n\n\
{% if link %}Run: {{ link }}\n{% endif %}\
App: {{ app }}\n\
{% if environment %}Environment: {{ environment }}\n{% endif %}\
Image: {{ image }}\n\
Event: {{ type }} at {{ time }}\n";

/// Sends one e-mail per event.
#[derive(Clone)]
pub struct EmailNotifier {
    cfg: EmailConfig,
    password: Option<secrecy::SecretString>,
    /// PEM of the CA to trust instead of the platform's store.
    ca: Option<Vec<u8>>,
    /// Base URL of `baton serve` (`serve.public_url`), for the run's link.
    link_base: Option<String>,
}

impl std::fmt::Debug for EmailNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailNotifier")
            .field("to", &self.cfg.to)
            .field("host", &self.cfg.smtp.host)
            .finish()
    }
}

impl EmailNotifier {
    /// Resolves the password variable and reads the CA file (relative to `base_dir`);
    /// a missing one is an error naming it.
    pub fn new(
        reaction: &str,
        cfg: &EmailConfig,
        base_dir: &Path,
        link_base: Option<String>,
    ) -> Result<EmailNotifier> {
        let what = format!("e-mail reaction {reaction}");
        let password = match &cfg.smtp.password_env {
            None => None,
            Some(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Some(secrecy::SecretString::from(v)),
                _ => {
                    return Err(Error::permanent(
                        what,
                        format!("the SMTP password variable {var} is not set"),
                    ));
                }
            },
        };
        let ca = match &cfg.smtp.ca_file {
            None => None,
            Some(f) => {
                let path = if f.is_absolute() {
                    f.clone()
                } else {
                    base_dir.join(f)
                };
                Some(std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?)
            }
        };
        Ok(EmailNotifier {
            cfg: cfg.clone(),
            password,
            ca,
            link_base,
        })
    }

    fn render(&self, event: &Event) -> Result<(String, String)> {
        let ctx = event.ctx();
        let link = self
            .link_base
            .as_ref()
            .map(|b| format!("{}/runs/{}", b.trim_end_matches('/'), ctx.run));
        let fields = crate::adapters::chat::fields(event, link.as_deref());
        let env = minijinja::Environment::new();
        let render = |field: &str, t: &str| {
            env.render_str(t, &fields)
                .map_err(|e| Error::permanent(format!("e-mail {field} template"), e))
        };
        let subject = render(
            "subject",
            self.cfg.subject.as_deref().unwrap_or(DEFAULT_SUBJECT),
        )?;
        let body = render("body", self.cfg.body.as_deref().unwrap_or(DEFAULT_BODY))?;
        // A header is one line.
        Ok((subject.lines().next().unwrap_or("").to_string(), body))
    }

    fn transport(&self, what: &str) -> Result<AsyncSmtpTransport<Tokio1Executor>> {
        let smtp = &self.cfg.smtp;
        let tls = || -> Result<TlsParameters> {
            let mut b = TlsParameters::builder(smtp.host.clone());
            if let Some(pem) = &self.ca {
                let cert = Certificate::from_pem(pem)
                    .map_err(|e| Error::permanent(what.to_string(), format!("ca_file: {e}")))?;
                b = b.add_root_certificate(cert);
            }
            b.build_rustls()
                .map_err(|e| Error::permanent(what.to_string(), format!("TLS: {e}")))
        };
        let mut t = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
            .port(smtp.port())
            .timeout(Some(smtp.timeout));
        t = match smtp.tls {
            SmtpTls::Starttls => t.tls(Tls::Required(tls()?)),
            SmtpTls::Tls => t.tls(Tls::Wrapper(tls()?)),
            SmtpTls::None => t.tls(Tls::None),
        };
        if let (Some(user), Some(pass)) = (&smtp.username, &self.password) {
            use secrecy::ExposeSecret;
            t = t.credentials(Credentials::new(
                user.clone(),
                pass.expose_secret().to_string(),
            ));
        }
        Ok(t.build())
    }
}

impl Notifier for EmailNotifier {
    async fn notify(&self, reaction: &str, event: &Event) -> Result<()> {
        let what = format!("e-mail of reaction {reaction}");
        let (subject, body) = self.render(event)?;
        let bad_address = |a: &str, e: lettre::address::AddressError| {
            Error::permanent(what.clone(), format!("{a:?}: {e}"))
        };
        let mut m = Message::builder()
            .from(
                self.cfg
                    .from
                    .parse()
                    .map_err(|e| bad_address(&self.cfg.from, e))?,
            )
            .subject(subject);
        for to in &self.cfg.to {
            m = m.to(to.parse().map_err(|e| bad_address(to, e))?);
        }
        let message = m
            .body(body)
            .map_err(|e| Error::permanent(what.clone(), e))?;
        let transport = self.transport(&what)?;
        match transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(Error::permanent(
                what,
                format!("the SMTP server refused it: {e}"),
            )),
            Err(e) => Err(Error::transient(what, Text(e.to_string()))),
        }
    }
}
