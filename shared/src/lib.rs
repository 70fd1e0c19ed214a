//! Baton's library. The function crates (`functions/<stage>`) and the `baton` CLI are
//! thin wrappers around it. By role, from the bottom up:
//!
//! | layer | modules | what |
//! |---|---|---|
//! | core (no I/O) | [`reference`], [`ids`], [`event`], [`error`] | image reference parts parsed to the OCI grammar; run and event ids; the CloudEvents contract; the error type |
//! | | [`config`], [`identity`], [`policy`] | the validated `baton.yaml`; approvers as IAM principals; pure decisions (filter and tag policies, newer wins, approvals) |
//! | | [`triggers`], [`envelopes`], [`webhooks`], [`oidc`], [`cdevents`], [`slack`] | registry notifications (one file per source), AWS envelopes, webhook authentication (Google's OIDC tokens among them), CDEvents from Baton's events, Slack's approval callback |
//! | | [`ports`], [`store`] | the traits stages use (bus, store, registry, tests, targets, notifiers) and the store's key layout |
//! | pipeline | [`pipeline`] | `Pipeline` (ports, configuration, settings); the `Stage` trait; the harness (claim, run, publish, record); approval records; what is live where; run queries |
//! | | [`stages`] | the eight stages, one file each: declaration, record, logic |
//! | adapters | [`adapters`] | embedded (directory store, durable bus, manifest target, command runner), AWS, Kubernetes, the distribution registry, the sandbox for user commands |
//! | runtimes | [`runtime`] | `local` (the embedded adapters and the dispatcher), `serve` (HTTP), `lambda` (the function handler), `function` (every function's `main`) |
//! | tools | [`audit`], [`schema`], [`process`] | `baton audit` over the stack and RBAC; the events' JSON Schemas; who holds a claim |
//!
//! A stage reads only through ports, so the same stage code runs on the embedded
//! adapters (`baton demo`, `baton serve`, the tests) and in its Lambda function, where it
//! links only the adapters its stage needs.

pub mod adapters;
pub mod audit;
pub mod cdevents;
pub mod config;
pub mod envelopes;
pub mod error;
pub mod event;
pub mod identity;
pub mod ids;
pub mod oidc;
pub mod pipeline;
pub mod policy;
pub mod ports;
pub mod process;
pub mod reference;
pub mod runtime;
pub mod schema;
pub mod slack;
pub mod stages;
pub mod store;
pub mod triggers;
pub mod webhooks;

pub use error::{Error, Result};
