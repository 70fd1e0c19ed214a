//! Embedded adapters: the local default. Directory store, durable bus, store-backed
//! registry, command test runner, manifest deploy target, webhook and log notifiers.
//! They need no cloud account and no daemon.

pub mod blocking;
pub mod bus;
pub mod command;
pub mod manifest;
pub mod notify;
pub mod registry;
pub mod store;

pub use bus::{Delivery, DeliveryReport, DrainOptions, DrainReport, EmbeddedBus, Subscriber};
pub use command::CommandRunner;
pub use manifest::ManifestTarget;
pub use notify::{LogNotifier, WebhookNotifier};
pub use registry::StoreRegistry;
pub use store::DirStore;
