//! The cold tier's object stores behind one interface: S3 (any
//! S3-compatible server, any storage class, Glacier restores) through
//! aws-sdk-s3, and a local directory for the embedded default, so that
//! `hayloft server` runs with nothing else installed.
//!
//! Why one file of ~650 lines: the object-store interface and both of its
//! implementations (S3 with Glacier restores, a local directory for tests and
//! small deployments) must keep the same semantics, so they are read side by
//! side.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, RestoreRequest, StorageClass};
use bytes::Bytes;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

/// What went wrong talking to an object store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ObjectError {
    /// The object is in an archive class (GLACIER, DEEP_ARCHIVE) and must be
    /// restored before it can be read.
    #[error("object is archived; restore it first")]
    Archived,
    /// No such object (or bucket).
    #[error("no such object: {0}")]
    NotFound(String),
    /// The multipart upload is gone (aborted, or the store lost it).
    #[error("no such multipart upload")]
    NoSuchUpload,
    /// The store could not be reached or timed out.
    #[error("object store unreachable: {0}")]
    Unreachable(String),
    /// Anything else the store answered.
    #[error("object store error: {0}")]
    Other(String),
}

impl ObjectError {
    /// True if retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ObjectError::Unreachable(_) | ObjectError::Other(_))
    }
}

/// Result with an [`ObjectError`].
pub type Result<T, E = ObjectError> = std::result::Result<T, E>;

/// Where an archived object's restore stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restore {
    /// Not in an archive class: readable.
    NotNeeded,
    /// Archived and not restored.
    Archived,
    /// A restore is running.
    InProgress,
    /// Restored: readable until the restored copy expires.
    Done,
}

/// What a HEAD of an object tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Length in bytes.
    pub len: u64,
    /// ETag, without quotes.
    pub etag: String,
    /// Storage class (`STANDARD` when the store does not say).
    pub storage_class: String,
    /// Restore state for archive classes.
    pub restore: Restore,
}

/// True for the storage classes whose objects must be restored before a read.
pub fn needs_restore(storage_class: &str) -> bool {
    matches!(storage_class, "GLACIER" | "DEEP_ARCHIVE")
}

/// The storage classes a policy may name.
pub const STORAGE_CLASSES: &[&str] = &[
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "GLACIER",
    "DEEP_ARCHIVE",
];

/// How to reach the cold tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ObjectStoreConfig {
    /// An S3-compatible server.
    S3 {
        /// Endpoint URL (`http://127.0.0.1:9000`); AWS's regional endpoint if unset.
        #[serde(default)]
        endpoint: Option<String>,
        /// Region.
        #[serde(default = "default_region")]
        region: String,
        /// Access key id; the AWS default chain (env, profile) if unset.
        #[serde(default)]
        access_key_id: Option<String>,
        /// Secret access key.
        #[serde(default)]
        secret_access_key: Option<String>,
        /// Path-style addressing (`endpoint/bucket/key`), for most non-AWS servers.
        #[serde(default = "default_true")]
        force_path_style: bool,
        /// Timeout of one request attempt.
        #[serde(default = "default_timeout", with = "humantime_serde")]
        timeout: Duration,
    },
    /// A local directory (bucket = subdirectory): the embedded default.
    Local {
        /// The directory.
        path: PathBuf,
    },
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_true() -> bool {
    true
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// An object store.
#[derive(Debug, Clone)]
pub enum ObjectStore {
    /// S3 through aws-sdk-s3.
    S3(aws_sdk_s3::Client),
    /// A local directory.
    Local(PathBuf),
}

fn classify<E, R>(error: SdkError<E, R>) -> ObjectError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    if matches!(
        error,
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_)
    ) {
        return ObjectError::Unreachable(DisplayErrorContext(&error).to_string());
    }
    let status = match &error {
        SdkError::ServiceError(e) => format!("{:?}", e.raw()),
        _ => String::new(),
    };
    match error.code() {
        Some("InvalidObjectState") => ObjectError::Archived,
        Some("NoSuchKey" | "NotFound") => {
            ObjectError::NotFound(error.code().unwrap_or_default().to_owned())
        }
        // Not "no such object": the store is misconfigured, or a server
        // that came back has not got its buckets back yet. Retried a few
        // times like any answered failure, then reported as it is.
        Some("NoSuchBucket") => {
            ObjectError::Other("NoSuchBucket: the bucket does not exist".into())
        }
        Some("NoSuchUpload") => ObjectError::NoSuchUpload,
        _ if status.contains("status: StatusCode(404)") => ObjectError::NotFound("404".into()),
        _ => ObjectError::Other(DisplayErrorContext(&error).to_string()),
    }
}

/// Times one store request into `hayloft_s3_requests_total` and
/// `hayloft_s3_request_duration_seconds`.
async fn measured<T>(
    op: &'static str,
    request: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let started = Instant::now();
    let result = request.await;
    let status = match &result {
        Ok(_) => "ok",
        Err(ObjectError::Archived) => "archived",
        Err(ObjectError::NotFound(_)) => "not_found",
        Err(ObjectError::NoSuchUpload) => "no_such_upload",
        Err(ObjectError::Unreachable(_)) => "unreachable",
        Err(ObjectError::Other(_)) => "error",
    };
    metrics::counter!("hayloft_s3_requests_total", "op" => op, "status" => status).increment(1);
    metrics::histogram!("hayloft_s3_request_duration_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
    result
}

fn unquote(etag: &str) -> String {
    etag.trim_matches('"').to_owned()
}

/// The ETag S3 gives a multipart upload: MD5 of the parts' MD5s, `-N`.
pub fn multipart_etag(part_md5s: &[[u8; 16]]) -> String {
    let mut hasher = Md5::new();
    for md5 in part_md5s {
        hasher.update(md5);
    }
    format!("{}-{}", hex::encode(hasher.finalize()), part_md5s.len())
}

/// MD5 of a part.
pub fn md5_of(bytes: &[u8]) -> [u8; 16] {
    Md5::digest(bytes).into()
}

impl ObjectStore {
    /// Connects to the store the configuration names (no request is made).
    pub async fn connect(config: &ObjectStoreConfig) -> std::io::Result<ObjectStore> {
        match config {
            ObjectStoreConfig::Local { path } => {
                std::fs::create_dir_all(path)?;
                Ok(ObjectStore::Local(path.clone()))
            }
            ObjectStoreConfig::S3 {
                endpoint,
                region,
                access_key_id,
                secret_access_key,
                force_path_style,
                timeout,
            } => {
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(region.clone()));
                if let (Some(id), Some(secret)) = (access_key_id, secret_access_key) {
                    loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                        id, secret, None, None, "hayloft",
                    ));
                }
                let shared = loader.load().await;
                let mut builder = aws_sdk_s3::config::Builder::from(&shared)
                    .force_path_style(*force_path_style)
                    .timeout_config(
                        aws_config::timeout::TimeoutConfig::builder()
                            .connect_timeout(Duration::from_secs(3))
                            .operation_attempt_timeout(*timeout)
                            .build(),
                    )
                    .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3));
                if let Some(endpoint) = endpoint {
                    builder = builder.endpoint_url(endpoint);
                }
                Ok(ObjectStore::S3(aws_sdk_s3::Client::from_conf(
                    builder.build(),
                )))
            }
        }
    }

    /// Starts a multipart upload; returns its id.
    pub async fn create_upload(&self, bucket: &str, key: &str, class: &str) -> Result<String> {
        measured("create_upload", async {
            match self {
                ObjectStore::S3(client) => {
                    let out = client
                        .create_multipart_upload()
                        .bucket(bucket)
                        .key(key)
                        .storage_class(StorageClass::from(class))
                        .send()
                        .await
                        .map_err(classify)?;
                    out.upload_id()
                        .map(str::to_owned)
                        .ok_or_else(|| ObjectError::Other("no upload id".into()))
                }
                ObjectStore::Local(root) => {
                    let id = format!("{:x}", rand_id());
                    let dir = local_upload_dir(root, &id);
                    std::fs::create_dir_all(&dir).map_err(local_err)?;
                    std::fs::write(dir.join("target"), format!("{bucket}/{key}\n{class}"))
                        .map_err(local_err)?;
                    Ok(id)
                }
            }
        })
        .await
    }

    /// Uploads one part; returns its ETag (unquoted).
    pub async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<String> {
        measured("upload_part", async {
            match self {
                ObjectStore::S3(client) => {
                    let out = client
                        .upload_part()
                        .bucket(bucket)
                        .key(key)
                        .upload_id(upload_id)
                        .part_number(number)
                        .body(ByteStream::from(body))
                        .send()
                        .await
                        .map_err(classify)?;
                    Ok(unquote(out.e_tag().unwrap_or_default()))
                }
                ObjectStore::Local(root) => {
                    let dir = local_upload_dir(root, upload_id);
                    if !dir.exists() {
                        return Err(ObjectError::NoSuchUpload);
                    }
                    write_synced(&dir.join(format!("{number:05}")), &body)?;
                    Ok(hex::encode(md5_of(&body)))
                }
            }
        })
        .await
    }

    /// Completes a multipart upload from its parts, in order.
    pub async fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> Result<()> {
        measured("complete_upload", async {
            match self {
                ObjectStore::S3(client) => {
                    let completed = CompletedMultipartUpload::builder()
                        .set_parts(Some(
                            parts
                                .iter()
                                .map(|(n, etag)| {
                                    CompletedPart::builder()
                                        .part_number(*n)
                                        .e_tag(format!("\"{etag}\""))
                                        .build()
                                })
                                .collect(),
                        ))
                        .build();
                    client
                        .complete_multipart_upload()
                        .bucket(bucket)
                        .key(key)
                        .upload_id(upload_id)
                        .multipart_upload(completed)
                        .send()
                        .await
                        .map_err(classify)?;
                    Ok(())
                }
                ObjectStore::Local(root) => {
                    let dir = local_upload_dir(root, upload_id);
                    if !dir.exists() {
                        return Err(ObjectError::NoSuchUpload);
                    }
                    let target = std::fs::read_to_string(dir.join("target")).map_err(local_err)?;
                    let class = target.lines().nth(1).unwrap_or("STANDARD").to_owned();
                    let path = local_object(root, bucket, key);
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent).map_err(local_err)?;
                    }
                    let mut whole = Vec::new();
                    let mut md5s = Vec::new();
                    for (n, _) in parts {
                        let part = std::fs::read(dir.join(format!("{n:05}"))).map_err(local_err)?;
                        md5s.push(md5_of(&part));
                        whole.extend_from_slice(&part);
                    }
                    let tmp = path.with_extension("part");
                    write_synced(&tmp, &whole)?;
                    std::fs::write(
                        class_path(&path),
                        format!("{class}\n{}", multipart_etag(&md5s)),
                    )
                    .map_err(local_err)?;
                    std::fs::rename(&tmp, &path).map_err(local_err)?;
                    let _ = std::fs::remove_dir_all(&dir);
                    Ok(())
                }
            }
        })
        .await
    }

    /// Aborts a multipart upload (its parts are dropped).
    pub async fn abort_upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<()> {
        measured("abort_upload", async {
            match self {
                ObjectStore::S3(client) => {
                    client
                        .abort_multipart_upload()
                        .bucket(bucket)
                        .key(key)
                        .upload_id(upload_id)
                        .send()
                        .await
                        .map_err(classify)?;
                    Ok(())
                }
                ObjectStore::Local(root) => {
                    let _ = std::fs::remove_dir_all(local_upload_dir(root, upload_id));
                    Ok(())
                }
            }
        })
        .await
    }

    /// Length, ETag, class and restore state of an object.
    pub async fn head(&self, bucket: &str, key: &str) -> Result<ObjectInfo> {
        measured("head", async {
            match self {
                ObjectStore::S3(client) => {
                    let out = client
                        .head_object()
                        .bucket(bucket)
                        .key(key)
                        .send()
                        .await
                        .map_err(classify)?;
                    let storage_class = out
                        .storage_class()
                        .map_or("STANDARD".to_owned(), |c| c.as_str().to_owned());
                    let restore = match out.restore() {
                        Some(r) if r.contains("ongoing-request=\"true\"") => Restore::InProgress,
                        Some(_) => Restore::Done,
                        None if needs_restore(&storage_class) => Restore::Archived,
                        None => Restore::NotNeeded,
                    };
                    Ok(ObjectInfo {
                        len: out.content_length().unwrap_or(0).max(0) as u64,
                        etag: unquote(out.e_tag().unwrap_or_default()),
                        storage_class,
                        restore,
                    })
                }
                ObjectStore::Local(root) => {
                    let path = local_object(root, bucket, key);
                    let len = std::fs::metadata(&path)
                        .map_err(|_| ObjectError::NotFound(key.to_owned()))?
                        .len();
                    let sidecar = std::fs::read_to_string(class_path(&path)).unwrap_or_default();
                    let mut lines = sidecar.lines();
                    Ok(ObjectInfo {
                        len,
                        storage_class: lines.next().unwrap_or("STANDARD").to_owned(),
                        etag: lines.next().unwrap_or_default().to_owned(),
                        restore: Restore::NotNeeded,
                    })
                }
            }
        })
        .await
    }

    /// Reads `range` of an object: one ranged GET.
    pub async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        measured("get_range", async {
            match self {
                ObjectStore::S3(client) => {
                    let out = client
                        .get_object()
                        .bucket(bucket)
                        .key(key)
                        .range(format!("bytes={}-{}", range.start, range.end - 1))
                        // A reader waits for one attempt: an unreachable
                        // store answers 503 at once, not after backoffs.
                        .customize()
                        .config_override(aws_sdk_s3::config::Builder::new().retry_config(
                            aws_config::retry::RetryConfig::standard().with_max_attempts(1),
                        ))
                        .send()
                        .await
                        .map_err(classify)?;
                    let body = out
                        .body
                        .collect()
                        .await
                        .map_err(|e| ObjectError::Unreachable(e.to_string()))?;
                    Ok(body.into_bytes())
                }
                ObjectStore::Local(root) => {
                    use std::os::unix::fs::FileExt;
                    let path = local_object(root, bucket, key);
                    let file = std::fs::File::open(&path)
                        .map_err(|_| ObjectError::NotFound(key.to_owned()))?;
                    let len = file.metadata().map_err(local_err)?.len();
                    let end = range.end.min(len);
                    let mut buf = vec![0u8; end.saturating_sub(range.start) as usize];
                    file.read_exact_at(&mut buf, range.start)
                        .map_err(local_err)?;
                    Ok(Bytes::from(buf))
                }
            }
        })
        .await
    }

    /// Starts a restore of an archived object for `days`. A restore already
    /// running is not an error.
    pub async fn restore(&self, bucket: &str, key: &str, days: i32) -> Result<()> {
        measured("restore", async {
            match self {
                ObjectStore::S3(client) => {
                    let result = client
                        .restore_object()
                        .bucket(bucket)
                        .key(key)
                        .restore_request(RestoreRequest::builder().days(days).build())
                        .send()
                        .await;
                    match result {
                        Ok(_) => Ok(()),
                        Err(e) if e.code() == Some("RestoreAlreadyInProgress") => Ok(()),
                        Err(e) => Err(classify(e)),
                    }
                }
                ObjectStore::Local(_) => Ok(()),
            }
        })
        .await
    }

    /// Deletes an object (a missing object is fine).
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<()> {
        measured("delete", async {
            match self {
                ObjectStore::S3(client) => {
                    client
                        .delete_object()
                        .bucket(bucket)
                        .key(key)
                        .send()
                        .await
                        .map_err(classify)?;
                    Ok(())
                }
                ObjectStore::Local(root) => {
                    let path = local_object(root, bucket, key);
                    let _ = std::fs::remove_file(class_path(&path));
                    match std::fs::remove_file(&path) {
                        Ok(()) => Ok(()),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                        Err(e) => Err(local_err(e)),
                    }
                }
            }
        })
        .await
    }
}

fn local_upload_dir(root: &Path, upload_id: &str) -> PathBuf {
    root.join(".uploads").join(upload_id)
}

fn local_object(root: &Path, bucket: &str, key: &str) -> PathBuf {
    root.join(bucket).join(key)
}

fn class_path(object: &Path) -> PathBuf {
    let mut name = object.as_os_str().to_owned();
    name.push(".class");
    PathBuf::from(name)
}

fn local_err(e: std::io::Error) -> ObjectError {
    ObjectError::Other(e.to_string())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).map_err(local_err)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(local_err)
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_store_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::connect(&ObjectStoreConfig::Local {
            path: dir.path().to_owned(),
        })
        .await
        .unwrap();
        let upload = store
            .create_upload("b", "k/1.dat", "GLACIER")
            .await
            .unwrap();
        let a = Bytes::from(vec![1u8; 100]);
        let b = Bytes::from(vec![2u8; 50]);
        let ea = store
            .upload_part("b", "k/1.dat", &upload, 1, a.clone())
            .await
            .unwrap();
        let eb = store
            .upload_part("b", "k/1.dat", &upload, 2, b.clone())
            .await
            .unwrap();
        store
            .complete_upload("b", "k/1.dat", &upload, &[(1, ea), (2, eb)])
            .await
            .unwrap();
        let info = store.head("b", "k/1.dat").await.unwrap();
        assert_eq!(info.len, 150);
        assert_eq!(info.etag, multipart_etag(&[md5_of(&a), md5_of(&b)]));
        assert_eq!(info.storage_class, "GLACIER");
        let got = store.get_range("b", "k/1.dat", 98..102).await.unwrap();
        assert_eq!(&got[..], &[1, 1, 2, 2]);
        store.delete("b", "k/1.dat").await.unwrap();
        assert!(matches!(
            store.head("b", "k/1.dat").await,
            Err(ObjectError::NotFound(_))
        ));
    }
}
