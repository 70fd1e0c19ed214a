//! Integration tests of the library API: the whole pipeline on the embedded adapters in
//! a temporary state directory, driven the way the bus drives it.

#[cfg(feature = "aws")]
mod aws;
mod cdevents;
mod chat;
mod email;
#[cfg(feature = "aws")]
mod filter_differential;
mod freeze;
mod infra;
#[cfg(feature = "kube")]
mod k8s;
mod layout;
mod pipeline;
mod samples;
mod verify;

use std::path::{Path, PathBuf};

use baton::adapters::embedded::{Delivery, DrainOptions, Subscriber};
use baton::config::Config;
use baton::event::{Event, EventType, Image};
use baton::pipeline::Settings;
use baton::ports::BusMessage;
use baton::runtime::local::Local;
use baton::triggers::{Trigger, TriggerKind};
use chrono::{DateTime, Utc};
use tempfile::TempDir;

pub use baton_testkit::build::{
    Setup, WEB_MANIFEST as STAGING_MANIFEST, digest, dist_push, write_manifests,
};

/// A configured pipeline in a temporary directory.
pub struct Env {
    pub dir: TempDir,
    pub local: Local,
}

pub fn setup(s: Setup) -> Env {
    setup_with(s, "")
}

/// [`setup`] with top-level configuration sections appended to the file.
pub fn setup_with(s: Setup, extra: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    write_manifests(dir.path());
    std::fs::write(dir.path().join("baton.yaml"), s.config() + extra).unwrap();
    let config = Config::load(&dir.path().join("baton.yaml")).unwrap();
    let local = Local::open(config, &dir.path().join("state"), Settings::default()).unwrap();
    Env { dir, local }
}

pub fn open(root: &Path, s: &Setup) -> Local {
    std::fs::write(root.join("baton.yaml"), s.config()).unwrap();
    let config = Config::load(&root.join("baton.yaml")).unwrap();
    Local::open(config, &root.join("state"), Settings::default()).unwrap()
}

impl Env {
    pub fn root(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Pushes `tag` (digest derived from the tag) into the embedded registry and queues
    /// the registry's notification. Returns the image.
    pub async fn push(&self, tag: &str, actor: &str, at: DateTime<Utc>) -> Image {
        let image = baton::event::Image::parse(
            "localhost:5000",
            "demo/web",
            tag,
            &digest(&format!("web {tag}")),
        )
        .unwrap();
        self.local
            .pipeline
            .ports
            .registry
            .record_push(&image, at)
            .await
            .unwrap();
        let payload = dist_push(
            "demo/web",
            tag,
            &image.digest,
            actor,
            at,
            &format!("notif-{tag}"),
        );
        self.local
            .submit(&Trigger {
                kind: TriggerKind::Distribution,
                received_at: Utc::now(),
                payload,
            })
            .await
            .unwrap();
        image
    }

    pub async fn drain(&self) {
        let rep = self
            .local
            .drain(&DrainOptions::default(), |_| {})
            .await
            .unwrap();
        if rep.dead > 0 {
            let dead = self.local.pipeline.ports.bus.dead_letters().await;
            panic!("nothing may be dead-lettered: {dead:?}");
        }
    }

    pub fn run_of(&self, image: &Image) -> baton::ids::RunId {
        baton::ids::run_id("web", &image.digest)
    }

    pub async fn events(&self, image: &Image) -> Vec<Event> {
        baton::pipeline::runs::view(&self.local.pipeline, "web", &self.run_of(image))
            .await
            .unwrap()
            .events
    }

    pub async fn status(&self, image: &Image) -> String {
        baton::pipeline::runs::view(&self.local.pipeline, "web", &self.run_of(image))
            .await
            .unwrap()
            .status
            .to_string()
    }

    /// An object of the state directory's store, as a string (panics when absent).
    pub async fn object(&self, key: &str) -> String {
        use baton::ports::ObjectStore;
        let obj = self.local.pipeline.ports.store.get(key).await.unwrap();
        String::from_utf8(obj.unwrap_or_else(|| panic!("no object {key}")).bytes).unwrap()
    }

    pub fn manifest(&self, env: &str) -> String {
        std::fs::read_to_string(self.root().join("manifests").join(env).join("web.yaml")).unwrap()
    }
}

/// `type` or `type[env]` of each event, in log order.
pub fn sequence(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| match &e.ctx().environment {
            Some(env) if e.event_type() != EventType::ImageBuilt => {
                format!("{}[{env}]", e.event_type())
            }
            _ => e.event_type().to_string(),
        })
        .collect()
}

/// Delivers every message `n` times in a row (at-least-once delivery at its worst).
#[derive(Clone)]
pub struct Repeat {
    pub inner: Local,
    pub n: usize,
}

impl Subscriber for Repeat {
    async fn deliver(&self, sub: &str, msg: &BusMessage) -> Delivery {
        let mut last = Delivery::Done;
        for _ in 0..self.n {
            last = self.inner.deliver(sub, msg).await;
        }
        last
    }
}
