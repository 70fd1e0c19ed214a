//! One HTTP client for the registry and webhook adapters, built on first use.
//!
//! Building a `reqwest::Client` loads and parses the platform's root certificates
//! (several milliseconds); functions that never talk to a remote registry or a webhook
//! (gate, approve, promote to ECR, …) never pay for it. The client is built at most once
//! per process and shared by every adapter holding a clone of [`Http`].

use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};

/// Longest wait for a TCP and TLS connection to a registry or webhook.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest a whole request may take (a request can set a shorter one).
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A lazily built, shared `reqwest::Client`, with connect and request timeouts.
#[derive(Clone, Default)]
pub struct Http(Arc<OnceLock<std::result::Result<reqwest::Client, String>>>);

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0.get() {
            None => "Http(not built)",
            Some(Ok(_)) => "Http(built)",
            Some(Err(_)) => "Http(failed)",
        })
    }
}

impl Http {
    /// A client that is built on the first request.
    pub fn new() -> Http {
        Http::default()
    }

    /// Wraps an already built client.
    pub fn from_client(client: reqwest::Client) -> Http {
        let cell = OnceLock::new();
        let _ = cell.set(Ok(client));
        Http(Arc::new(cell))
    }

    /// The client, built now if this is the first use. A failure (no root certificates
    /// on the machine, for one) is reported to every caller, naming the cause.
    pub fn client(&self) -> Result<&reqwest::Client> {
        self.0
            .get_or_init(|| {
                reqwest::Client::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .timeout(REQUEST_TIMEOUT)
                    .build()
                    .map_err(|e| format!("{e}: {}", source_chain(&e)))
            })
            .as_ref()
            .map_err(|why| {
                Error::permanent(
                    "HTTP client",
                    format!(
                        "cannot build the HTTPS client ({why}); check the machine's root certificates (SSL_CERT_FILE, SSL_CERT_DIR)"
                    ),
                )
            })
    }

    /// Whether the client has been built (for tests and diagnostics).
    pub fn is_built(&self) -> bool {
        self.0.get().is_some()
    }
}

pub(crate) fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = vec![];
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_once_on_first_use_and_shared_by_clones() {
        let http = Http::new();
        let other = http.clone();
        assert!(
            !http.is_built(),
            "nothing is built before the first request"
        );
        let a = http.client().unwrap() as *const reqwest::Client;
        assert!(other.is_built(), "clones share the client");
        let b = other.client().unwrap() as *const reqwest::Client;
        assert_eq!(a, b, "one client per process, not per adapter");
    }
}
