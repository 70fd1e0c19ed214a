//! `EcrRegistry`: ECR as the registry port. Resolves a tag with BatchGetImage and its
//! push time with DescribeImages; retags by PutImage of the same manifest bytes under the
//! environment tag (ImageAlreadyExists means it is done).

use chrono::{DateTime, Utc};

use crate::error::{Error, Message, Result};
use crate::event::Image;
use crate::ports::{Registry, Resolved};

/// Manifest media types BatchGetImage may return.
const ACCEPTED: [&str; 4] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// ECR repositories of one account and region.
#[derive(Debug, Clone)]
pub struct EcrRegistry {
    client: crate::adapters::aws::Lazy<aws_sdk_ecr::Client>,
}

/// The account id of `123456789012.dkr.ecr.<region>.amazonaws.com`.
pub fn registry_id(host: &str) -> Option<String> {
    let account = host.split('.').next()?;
    (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()))
        .then(|| account.to_string())
}

impl EcrRegistry {
    pub fn new(client: impl Into<crate::adapters::aws::Lazy<aws_sdk_ecr::Client>>) -> EcrRegistry {
        EcrRegistry {
            client: client.into(),
        }
    }

    async fn get(
        &self,
        host: &str,
        repository: &str,
        id: aws_sdk_ecr::types::ImageIdentifier,
    ) -> Result<Option<aws_sdk_ecr::types::Image>> {
        let out = self
            .client
            .batch_get_image()
            .set_registry_id(registry_id(host))
            .repository_name(repository)
            .image_ids(id)
            .set_accepted_media_types(Some(ACCEPTED.iter().map(|s| s.to_string()).collect()))
            .send()
            .await
            .map_err(|e| {
                let s = e.into_service_error();
                if s.is_repository_not_found_exception() {
                    Error::permanent(format!("ECR repository {repository}"), "does not exist")
                } else {
                    Error::transient(
                        format!("BatchGetImage {repository}"),
                        Message(s.to_string()),
                    )
                }
            })?;
        Ok(out.images().first().cloned())
    }
}

impl Registry for EcrRegistry {
    async fn resolve(&self, registry: &str, repository: &str, tag: &str) -> Result<Resolved> {
        let id = aws_sdk_ecr::types::ImageIdentifier::builder()
            .image_tag(tag)
            .build();
        let image = self
            .get(registry, repository, id)
            .await?
            .ok_or_else(|| Error::not_found("tag", format!("{registry}/{repository}:{tag}")))?;
        let digest = image
            .image_id()
            .and_then(|i| i.image_digest())
            .ok_or_else(|| {
                Error::permanent(
                    format!("ECR {repository}:{tag}"),
                    "no digest in BatchGetImage",
                )
            })?
            .parse::<crate::reference::Digest>()
            .map_err(|e| Error::permanent(format!("ECR {repository}:{tag}"), e))?;
        let pushed_at = self
            .client
            .describe_images()
            .set_registry_id(registry_id(registry))
            .repository_name(repository)
            .image_ids(
                aws_sdk_ecr::types::ImageIdentifier::builder()
                    .image_digest(digest.as_str())
                    .build(),
            )
            .send()
            .await
            .ok()
            .and_then(|d| {
                d.image_details()
                    .first()
                    .and_then(|i| i.image_pushed_at().cloned())
            })
            .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos()));
        Ok(Resolved { digest, pushed_at })
    }

    async fn retag(&self, image: &Image, tag: &crate::reference::Tag) -> Result<()> {
        let what = format!("retag {} as {tag}", image.reference());
        let id = aws_sdk_ecr::types::ImageIdentifier::builder()
            .image_digest(image.digest.as_str())
            .build();
        let found = self
            .get(&image.registry, &image.repository, id)
            .await?
            .ok_or_else(|| Error::permanent(what.clone(), "manifest unknown to the registry"))?;
        let manifest = found
            .image_manifest()
            .ok_or_else(|| Error::permanent(what.clone(), "BatchGetImage returned no manifest"))?;
        let result = self
            .client
            .put_image()
            .set_registry_id(registry_id(&image.registry))
            .repository_name(image.repository.as_str())
            .image_manifest(manifest)
            .set_image_manifest_media_type(found.image_manifest_media_type().map(str::to_owned))
            .image_tag(tag.as_str())
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                let s = e.into_service_error();
                if s.is_image_already_exists_exception() {
                    Ok(())
                } else {
                    Err(Error::transient(what, Message(s.to_string())))
                }
            }
        }
    }
}
