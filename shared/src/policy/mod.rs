//! Pure decisions: filter policies, tag policies and ordering, approval rules.
//! No I/O here; every function is tested in microseconds.

pub mod approval;
pub mod filter;
pub mod freeze;
pub mod tags;

pub use filter::FilterPolicy;
pub use tags::{OrderKey, TagPolicy, TagPolicySpec};
