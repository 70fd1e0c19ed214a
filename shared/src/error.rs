//! The one error type of Baton's library. Each variant tells the caller what to do:
//! `Invalid` (bad input: do not retry), `Transient` (retry with backoff), `Permanent`
//! (stop and report), `Refused` (a rule said no), `NotFound` and `Conflict`.
//! Must not depend on any adapter.

use std::fmt;

/// A boxed error kept as the `#[source]` of a variant.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result with Baton's error by default.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure Baton's library reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input that can never be processed as sent (malformed event, bad config).
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },

    /// A failure that may pass on its own (network, throttling, a held lease).
    #[error("{context}: {source}")]
    Transient {
        context: String,
        #[source]
        source: BoxError,
    },

    /// A failure that will not pass by retrying (missing workload, policy violation).
    #[error("{context}: {message}")]
    Permanent { context: String, message: String },

    /// A rule refused the request (approver not allowed, self-approval, expired).
    #[error("{0}")]
    Refused(String),

    /// The request came too late: what it acts on is already settled (an approval
    /// already granted, rejected or expired).
    #[error("{0}")]
    Settled(String),

    /// A named thing does not exist (run, stage, environment, object).
    #[error("{what} not found: {name}")]
    NotFound { what: &'static str, name: String },

    /// A conditional write lost its race (`If-None-Match` / `If-Match` failed).
    #[error("precondition failed on {key}")]
    Conflict { key: String },
}

impl Error {
    /// Stable machine-readable kind; doubles as Lambda `errorType` and log field.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Invalid { .. } => "invalid_input",
            Error::Transient { .. } => "transient",
            Error::Permanent { .. } => "permanent",
            Error::Refused(_) => "refused",
            Error::Settled(_) => "settled",
            Error::NotFound { .. } => "not_found",
            Error::Conflict { .. } => "conflict",
        }
    }

    /// The HTTP status an error answers with, for `baton serve` and the function URLs
    /// alike: 400 bad input, 403 refused, 404 not found, 409 already settled, 503 try
    /// again, 500 otherwise.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::Invalid { .. } => 400,
            Error::Refused(_) => 403,
            Error::NotFound { .. } => 404,
            Error::Settled(_) => 409,
            Error::Transient { .. } | Error::Conflict { .. } => 503,
            Error::Permanent { .. } => 500,
        }
    }

    /// Whether the delivery that produced this error should be retried.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Transient { .. } | Error::Conflict { .. })
    }

    pub fn invalid(what: impl Into<String>, reason: impl fmt::Display) -> Self {
        Error::Invalid {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    pub fn transient(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Transient {
            context: context.into(),
            source: source.into(),
        }
    }

    pub fn permanent(context: impl Into<String>, message: impl fmt::Display) -> Self {
        Error::Permanent {
            context: context.into(),
            message: message.to_string(),
        }
    }

    pub fn not_found(what: &'static str, name: impl Into<String>) -> Self {
        Error::NotFound {
            what,
            name: name.into(),
        }
    }

    /// Wraps an I/O error on `path`: missing files are permanent, the rest transient.
    pub fn io(action: &str, path: &std::path::Path, err: std::io::Error) -> Self {
        let context = format!("{action} {}", path.display());
        match err.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                Error::permanent(context, err)
            }
            _ => Error::transient(context, err),
        }
    }

    /// Prefixes the error's context with `ctx` (which run, which stage, which object).
    pub fn context(self, ctx: impl fmt::Display) -> Self {
        match self {
            Error::Transient { context, source } => Error::Transient {
                context: format!("{ctx}: {context}"),
                source,
            },
            Error::Permanent { context, message } => Error::Permanent {
                context: format!("{ctx}: {context}"),
                message,
            },
            Error::Invalid { what, reason } => Error::Invalid {
                what: format!("{what} ({ctx})"),
                reason,
            },
            other => other,
        }
    }
}

/// A plain message as an error source.
#[derive(Debug)]
pub struct Message(pub String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

impl From<String> for Message {
    fn from(s: String) -> Self {
        Message(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_stable_and_retry_follows_kind() {
        let t = Error::transient("put runs/a", Message("timeout".into()));
        assert_eq!(t.kind(), "transient");
        assert!(t.is_retryable());
        let p = Error::permanent("deploy staging", "no manifest");
        assert_eq!(p.kind(), "permanent");
        assert!(!p.is_retryable());
        assert_eq!(
            p.context("run abc").to_string(),
            "run abc: deploy staging: no manifest"
        );
        assert_eq!(Error::invalid("event", "x").kind(), "invalid_input");
    }
}
