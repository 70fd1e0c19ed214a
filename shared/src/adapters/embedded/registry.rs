//! `StoreRegistry`: the embedded default registry: a tag table kept in the state store
//! (`registry/<host>/<repository>/…`). `baton demo` records its sample push here; promote
//! retags here. Real registries have their own adapters (distribution HTTP API, ECR).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::event::Image;
use crate::ports::{ObjectStore, Precondition, Registry, Resolved};
use crate::reference::Digest;
use crate::store::{get_json, put_json};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TagRecord {
    digest: Digest,
    pushed_at: DateTime<Utc>,
}

/// The embedded registry over an object store.
#[derive(Debug, Clone)]
pub struct StoreRegistry<S> {
    store: S,
}

fn host_dir(registry: &str) -> String {
    if registry.is_empty() {
        "_".into()
    } else {
        registry.replace(':', "_")
    }
}

fn tag_key(registry: &str, repository: &str, tag: &str) -> String {
    format!(
        "registry/{}/{repository}/tags/{tag}.json",
        host_dir(registry)
    )
}

fn manifest_key(registry: &str, repository: &str, digest: &str) -> String {
    format!(
        "registry/{}/{repository}/manifests/{}.json",
        host_dir(registry),
        digest.replace(':', "_")
    )
}

impl<S: ObjectStore> StoreRegistry<S> {
    pub fn new(store: S) -> Self {
        StoreRegistry { store }
    }

    /// Records a push (what a registry does when it receives an image).
    pub async fn record_push(&self, image: &Image, pushed_at: DateTime<Utc>) -> Result<()> {
        let rec = TagRecord {
            digest: image.digest.clone(),
            pushed_at,
        };
        put_json(
            &self.store,
            &manifest_key(&image.registry, &image.repository, &image.digest),
            &rec,
            Precondition::None,
        )
        .await?;
        put_json(
            &self.store,
            &tag_key(&image.registry, &image.repository, &image.tag),
            &rec,
            Precondition::None,
        )
        .await?;
        Ok(())
    }

    /// The digest a tag points at, if any.
    pub async fn tag(&self, registry: &str, repository: &str, tag: &str) -> Result<Option<Digest>> {
        Ok(
            get_json::<_, TagRecord>(&self.store, &tag_key(registry, repository, tag))
                .await?
                .map(|(t, _)| t.digest),
        )
    }
}

impl<S: ObjectStore> Registry for StoreRegistry<S> {
    async fn resolve(&self, registry: &str, repository: &str, tag: &str) -> Result<Resolved> {
        match get_json::<_, TagRecord>(&self.store, &tag_key(registry, repository, tag)).await? {
            Some((t, _)) => Ok(Resolved {
                digest: t.digest,
                pushed_at: Some(t.pushed_at),
            }),
            None => Err(Error::not_found(
                "tag",
                format!("{registry}/{repository}:{tag}"),
            )),
        }
    }

    async fn retag(&self, image: &Image, tag: &crate::reference::Tag) -> Result<()> {
        let Some((m, _)) = get_json::<_, TagRecord>(
            &self.store,
            &manifest_key(&image.registry, &image.repository, &image.digest),
        )
        .await?
        else {
            return Err(Error::permanent(
                format!("retag {}", image.reference()),
                "manifest unknown to the registry",
            ));
        };
        let rec = TagRecord {
            digest: image.digest.clone(),
            pushed_at: m.pushed_at,
        };
        put_json(
            &self.store,
            &tag_key(&image.registry, &image.repository, tag),
            &rec,
            Precondition::None,
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::embedded::DirStore;

    fn image(tag: &str, hex: char) -> Image {
        Image::parse(
            "localhost:5000",
            "team/web",
            tag,
            &format!("sha256:{}", hex.to_string().repeat(64)),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn resolve_and_retag() {
        let dir = tempfile::tempdir().unwrap();
        let reg = StoreRegistry::new(DirStore::open(dir.path()).unwrap());
        let img = image("1.0.0", 'a');
        let e = reg
            .resolve("localhost:5000", "team/web", "1.0.0")
            .await
            .unwrap_err();
        assert_eq!(e.kind(), "not_found");
        reg.record_push(&img, Utc::now()).await.unwrap();
        let r = reg
            .resolve("localhost:5000", "team/web", "1.0.0")
            .await
            .unwrap();
        assert_eq!(r.digest, img.digest);
        reg.retag(&img, &"staging".parse().unwrap()).await.unwrap();
        reg.retag(&img, &"staging".parse().unwrap()).await.unwrap();
        assert_eq!(
            reg.tag("localhost:5000", "team/web", "staging")
                .await
                .unwrap(),
            Some(img.digest.clone())
        );
        let e = reg
            .retag(&image("2.0.0", 'b'), &"staging".parse().unwrap())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("manifest unknown"), "{e}");
        assert_eq!(
            reg.tag("localhost:5000", "team/web", "staging")
                .await
                .unwrap(),
            Some(img.digest)
        );
    }
}
