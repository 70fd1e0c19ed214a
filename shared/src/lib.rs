//! Baton's library: the event contract, configuration, the stage harness, the logic of
//! every stage over ports, and the adapters. Function crates and the `baton` CLI are thin
//! wrappers around it.
//!
//! * [`event`], [`triggers`]: what travels (CloudEvents, registry notifications, AWS
//!   envelopes) and their parsers.
//! * [`config`]: the validated pipeline configuration.
//! * [`policy`]: pure decisions (filter policies, tag policies, newer-wins, approvals).
//! * [`ports`]: the traits stages use; [`embedded`]: the local adapters.
//! * [`harness`]: claim, run, publish, record, for every stage; [`stages`]: the stages.
//! * [`local`]: the pipeline on embedded adapters with its dispatcher.

pub mod adapters;
pub mod audit;
pub mod config;
pub mod envelopes;
pub mod error;
pub mod event;
pub mod identity;
pub mod ids;
pub mod pipeline;
pub mod policy;
pub mod ports;
pub mod process;
pub mod reference;
pub mod runtime;
pub mod schema;
pub mod stages;
pub mod store;
pub mod triggers;
pub mod webhooks;

pub use error::{Error, Result};
