//! [`Blobs`] over an Amazon S3 bucket.

use async_trait::async_trait;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use aws_sdk_s3::Client;

use crate::ports::{limits, BlobError, BlobSize, Blobs, Measure, Oversize};

/// `DeleteObjects` takes at most 1,000 keys.
const MAX_DELETE: usize = 1000;

pub struct S3Blobs {
    client: Client,
    bucket: String,
}

/// Keys are checked as the embedded blobs check them, in the same order: empty, too long
/// ([`limits`]), then characters S3 or the SDK cannot carry.
fn check_key(key: &str) -> Result<(), BlobError> {
    if key.is_empty() {
        return Err(BlobError::InvalidKey(key.to_owned()));
    }
    limits::check_object_key(key).map_err(BlobError::TooLarge)?;
    if key.contains('\0') || key.starts_with('/') {
        return Err(BlobError::InvalidKey(key.to_owned()));
    }
    Ok(())
}

/// A key and an object a `PutObject` can take.
fn check_put(key: &str, bytes: &[u8]) -> Result<(), BlobError> {
    check_key(key)?;
    limits::check_object(bytes.len() as u64).map_err(BlobError::TooLarge)
}

/// S3's own refusal of an object's size (`EntityTooLarge`), reported as ours would be.
fn too_large<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>, bytes: usize) -> Option<BlobError> {
    (e.code() == Some("EntityTooLarge")).then(|| {
        BlobError::TooLarge(Oversize {
            what: "object (by S3's count)".into(),
            size: bytes as u64,
            limit: limits::MAX_OBJECT_BYTES,
            measure: Measure::Bytes,
        })
    })
}

fn backend<E, R>(what: &str, key: &str, e: SdkError<E, R>) -> BlobError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    BlobError::Backend(format!("{what} {key}: {}", DisplayErrorContext(&e)))
}

fn http_status<E, R: HasStatus>(e: &SdkError<E, R>) -> Option<u16> {
    e.raw_response().map(HasStatus::status)
}

/// The HTTP status of a raw response, whatever the SDK calls its response type.
trait HasStatus {
    fn status(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status(&self) -> u16 {
        self.status().as_u16()
    }
}

impl S3Blobs {
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn read(&self, key: &str, range: Option<String>) -> Result<Option<Vec<u8>>, BlobError> {
        check_key(key)?;
        let result = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_range(range)
            .send()
            .await;
        match result {
            Ok(out) => {
                let bytes = out
                    .body
                    .collect()
                    .await
                    .map_err(|e| BlobError::Backend(format!("GetObject {key}: {e}")))?;
                Ok(Some(bytes.into_bytes().to_vec()))
            }
            Err(e) if e.code() == Some("NoSuchKey") || http_status(&e) == Some(404) => Ok(None),
            // The range starts past the end: the object exists and has no such bytes.
            Err(e) if e.code() == Some("InvalidRange") || http_status(&e) == Some(416) => {
                Ok(Some(Vec::new()))
            }
            Err(e) => Err(backend("GetObject", key, e)),
        }
    }

    async fn list_objects(&self, prefix: &str) -> Result<Vec<BlobSize>, BlobError> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| backend("ListObjectsV2", prefix, e))?;
            for object in page.contents() {
                if let Some(key) = object.key() {
                    out.push(BlobSize {
                        key: key.to_owned(),
                        size: object.size().unwrap_or(0).max(0) as u64,
                    });
                }
            }
            token = page.next_continuation_token;
            if token.is_none() {
                break;
            }
        }
        out.sort();
        Ok(out)
    }

    /// Deletes many objects in `DeleteObjects` calls of up to 1,000 keys.
    pub async fn delete_many(&self, keys: &[String]) -> Result<(), BlobError> {
        for chunk in keys.chunks(MAX_DELETE) {
            let objects = chunk
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| BlobError::Backend(e.to_string()))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| BlobError::Backend(e.to_string()))?;
            self.client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| backend("DeleteObjects", &chunk[0], e))?;
        }
        Ok(())
    }
}

#[async_trait]
impl Blobs for S3Blobs {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
        check_put(key, &bytes)?;
        let len = bytes.len();
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| too_large(&e, len).unwrap_or_else(|| backend("PutObject", key, e)))?;
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
        check_put(key, &bytes)?;
        let len = bytes.len();
        match self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .if_none_match("*")
            .body(ByteStream::from(bytes))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.code() == Some("PreconditionFailed")
                    || e.code() == Some("ConditionalRequestConflict")
                    || http_status(&e) == Some(412) =>
            {
                Err(BlobError::AlreadyExists(key.to_owned()))
            }
            Err(e) => Err(too_large(&e, len).unwrap_or_else(|| backend("PutObject", key, e))),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
        self.read(key, None).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        Ok(self
            .list_objects(prefix)
            .await?
            .into_iter()
            .map(|b| b.key)
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        check_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| backend("DeleteObject", key, e))?;
        Ok(())
    }

    async fn get_range(
        &self,
        key: &str,
        start: u64,
        end: u64,
    ) -> Result<Option<Vec<u8>>, BlobError> {
        if end <= start {
            // An empty range: only whether the object exists.
            check_key(key)?;
            return match self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
            {
                Ok(_) => Ok(Some(Vec::new())),
                Err(e) if http_status(&e) == Some(404) || e.code() == Some("NotFound") => Ok(None),
                Err(e) => Err(backend("HeadObject", key, e)),
            };
        }
        self.read(key, Some(format!("bytes={start}-{}", end - 1)))
            .await
    }

    async fn list_sizes(&self, prefix: &str) -> Result<Vec<BlobSize>, BlobError> {
        self.list_objects(prefix).await
    }
}
