//! Runtimes: where the pipeline runs. `local` (the embedded adapters under a state
//! directory, and the dispatcher), `api` (the HTTP API both `serve` and the function URLs
//! serve), `serve` (its HTTP server), `dashboard` (its web pages), `lambda` (the function handler on AWS) and
//! `function` (the entry point every function binary calls).

#[cfg(feature = "http")]
pub mod api;
#[cfg(feature = "serve")]
pub mod dashboard;
#[cfg(feature = "aws")]
pub mod function;
#[cfg(feature = "aws")]
pub mod lambda;
pub mod local;
#[cfg(feature = "serve")]
pub mod metrics;
#[cfg(feature = "serve")]
pub mod serve;
