//! `S3Store`: the object store on S3, with the same keys as the local directory and
//! real conditional writes: `If-None-Match: *` for claims, `If-Match: <etag>` for
//! compare-and-swap. A failed precondition (412, or 409 for a concurrent conditional
//! write) is `Error::Conflict`.

use aws_sdk_s3::primitives::ByteStream;

use crate::error::{Error, Message, Result};
use crate::ports::{Object, ObjectStore, Precondition};

/// A bucket (and optional key prefix) as the object store.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: crate::adapters::aws::Lazy<aws_sdk_s3::Client>,
    bucket: String,
    prefix: String,
}

impl S3Store {
    pub fn new(
        client: impl Into<crate::adapters::aws::Lazy<aws_sdk_s3::Client>>,
        bucket: impl Into<String>,
    ) -> S3Store {
        S3Store {
            client: client.into(),
            bucket: bucket.into(),
            prefix: String::new(),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

fn status_of<E>(e: &aws_sdk_s3::error::SdkError<E>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

fn transient<E: std::fmt::Debug>(what: String, e: &aws_sdk_s3::error::SdkError<E>) -> Error {
    let detail = match e {
        aws_sdk_s3::error::SdkError::ServiceError(s) => {
            format!("HTTP {}", s.raw().status().as_u16())
        }
        other => format!("{other:?}").chars().take(200).collect(),
    };
    Error::transient(what, Message(detail))
}

impl ObjectStore for S3Store {
    async fn get(&self, key: &str) -> Result<Option<Object>> {
        let what = format!("get s3://{}/{}", self.bucket, self.key(key));
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .send()
            .await
        {
            Ok(out) => {
                let etag = out.e_tag().unwrap_or_default().to_string();
                let bytes = out
                    .body
                    .collect()
                    .await
                    .map_err(|e| Error::transient(what.clone(), Message(e.to_string())))?
                    .into_bytes()
                    .to_vec();
                Ok(Some(Object { bytes, etag }))
            }
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(transient(what, &e)),
        }
    }

    async fn put(&self, key: &str, bytes: Vec<u8>, cond: Precondition) -> Result<String> {
        let full = self.key(key);
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .content_type("application/json")
            .body(ByteStream::from(bytes));
        req = match &cond {
            Precondition::None => req,
            Precondition::IfNoneMatch => req.if_none_match("*"),
            Precondition::IfMatch(etag) => req.if_match(etag),
        };
        match req.send().await {
            Ok(out) => Ok(out.e_tag().unwrap_or_default().to_string()),
            Err(e) if matches!(status_of(&e), Some(412) | Some(409)) => Err(Error::Conflict {
                key: key.to_string(),
            }),
            // A missing object under If-Match is a lost race too.
            Err(e) if status_of(&e) == Some(404) && matches!(cond, Precondition::IfMatch(_)) => {
                Err(Error::Conflict {
                    key: key.to_string(),
                })
            }
            Err(e) => Err(transient(format!("put s3://{}/{full}", self.bucket), &e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .send()
            .await
            .map_err(|e| transient(format!("delete s3://{}/{}", self.bucket, self.key(key)), &e))?;
        Ok(())
    }

    /// `DeleteObjects`, up to 1,000 keys a request (the port's default would send one
    /// `DeleteObject` per key: about 25 a run). A key S3 could not remove fails the
    /// call, naming it; the keys of that batch that did go stay gone, and the gc, run
    /// again, removes the rest.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        crate::ports::whole_prefix(prefix)?;
        let keys = self.list(prefix).await?;
        for batch in keys.chunks(1000) {
            let objects = batch
                .iter()
                .map(|k| ObjectIdentifier::builder().key(self.key(k)).build())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::invalid("store key", e.to_string()))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| Error::invalid("store prefix", e.to_string()))?;
            // Boxed: the SDK's request future is large, and this one sits inside the
            // gc's for every prefix it removes.
            let out = Box::pin(
                self.client
                    .delete_objects()
                    .bucket(&self.bucket)
                    .delete(delete)
                    .send(),
            )
            .await
            .map_err(|e| {
                transient(
                    format!(
                        "delete {} objects under s3://{}/{}",
                        batch.len(),
                        self.bucket,
                        self.key(prefix)
                    ),
                    &e,
                )
            })?;
            if let Some(failed) = out.errors().first() {
                return Err(Error::transient(
                    format!(
                        "delete s3://{}/{}",
                        self.bucket,
                        failed.key().unwrap_or_default()
                    ),
                    Message(format!(
                        "{} of {} keys under {prefix} were not removed; first: {} {}",
                        out.errors().len(),
                        batch.len(),
                        failed.code().unwrap_or("error"),
                        failed.message().unwrap_or_default()
                    )),
                ));
            }
        }
        Ok(0)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut keys = vec![];
        let mut token: Option<String> = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(self.key(prefix))
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(|e| transient(format!("list s3://{}/{prefix}", self.bucket), &e))?;
            for o in out.contents() {
                if let Some(k) = o.key() {
                    keys.push(k[self.prefix.len()..].to_string());
                }
            }
            match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        keys.sort();
        Ok(keys)
    }
}
