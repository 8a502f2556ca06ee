//! Uploads: one blob (whole or streamed from a file) to its id's primary copy.

#[allow(unused_imports)]
use crate::prelude::*;

/// How to store an upload.
#[derive(Debug, Clone, Default)]
pub struct UploadOptions {
    /// MIME type to serve it with.
    pub content_type: String,
    /// File name for `Content-Disposition`.
    pub file_name: String,
    /// Collection to write into.
    pub collection: String,
    /// Expire the blob after this long.
    pub ttl: Option<Duration>,
    /// Id to log this upload under on every server (`x-request-id`);
    /// a random one if `None`.
    pub request_id: Option<String>,
}

/// A stored blob.
#[derive(Debug, Clone)]
pub struct Uploaded {
    /// Its id.
    pub blob_id: String,
    /// Its size.
    pub size: u64,
    /// Its strong ETag (quoted).
    pub etag: String,
    /// Its URL on the volume server's HTTP origin.
    pub url: String,
    /// The id the servers logged the upload under.
    pub request_id: String,
    /// The region that stored it (and whose id it is): `default` for a
    /// client of one region.
    pub region: String,
}

/// Attempts per upload (each with a fresh id) and per download.
pub(crate) const ATTEMPTS: usize = 4;

/// The pauses between the attempts of an upload (or a batch's rounds),
/// each with fresh ids: 100 ms, doubling, one fewer than [`ATTEMPTS`]
/// (100, 200, 400 ms). When they run out, the upload gives up.
pub(crate) fn upload_pauses() -> impl Iterator<Item = Duration> {
    backon::BackoffBuilder::build(
        hayloft_proto::retry::doubling(Duration::from_millis(100), Duration::from_secs(1))
            .with_max_times(ATTEMPTS - 1),
    )
}

/// The last failure of an upload that was tried [`ATTEMPTS`] times, each
/// with a fresh id: the same code, and a message that says so and names the
/// server of the last attempt ("Unavailable: tcp connect error" alone does
/// not say which server, nor that it was retried).
pub(crate) fn gave_up(error: Error, server_id: &str, addr: &str) -> Error {
    match error {
        Error::Status(status) => Error::Status(tonic::Status::new(
            status.code(),
            format!(
                "upload failed {ATTEMPTS} times, each with a new id; the last attempt, on \
                 server {server_id} ({addr}): {}",
                status.message()
            ),
        )),
        other => other,
    }
}

/// The messages of one `Write` call: the header, then the chunks.
///
/// A task reads the source into a channel of two messages, so memory stays
/// bounded and the stream handed to tonic is `Sync` whatever the source is.
/// A local read error ends the stream early (so the server discards the
/// partial blob) and is handed back through `errors`.
/// The header of a write of `size` bytes under a reserved id.
pub(crate) fn write_header(slot: &Slot, size: u64, options: &UploadOptions) -> WriteHeader {
    WriteHeader {
        blob_id: slot.blob.blob_id.clone(),
        size,
        content_type: options.content_type.clone(),
        file_name: options.file_name.clone(),
        // Counted from the write, not from when the id was reserved.
        expires_at: options
            .ttl
            .map_or(0, |ttl| unix_now().saturating_add(ttl.as_secs().max(1))),
        last_modified: 0,
        // The primary forwards the blob to every other copy.
        replicas: slot.locations.clone(),
        forwarded: false,
        grant: slot.blob.grant.clone(),
    }
}

pub(crate) use hayloft_storage::unix_now;

pub(crate) fn write_requests(
    header: WriteHeader,
    body: Body,
    errors: tokio::sync::oneshot::Sender<std::io::Error>,
) -> Either<stream::Iter<std::vec::IntoIter<WriteRequest>>, ReceiverStream<WriteRequest>> {
    let header = WriteRequest {
        part: Some(Part::Header(header)),
    };
    let mut chunks = match body {
        // Nothing to read and nothing that can fail: the messages go out
        // as they are (no task, no channel: a small upload costs one call).
        Body::Memory(data) => {
            let mut messages = vec![header];
            for start in (0..data.len()).step_by(hayloft_proto::CHUNK_BYTES) {
                let end = (start + hayloft_proto::CHUNK_BYTES).min(data.len());
                messages.push(WriteRequest {
                    part: Some(Part::Chunk(data.slice(start..end))),
                });
            }
            return Either::Left(stream::iter(messages));
        }
        Body::Stream(chunks) => chunks,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        if tx.send(header).await.is_err() {
            return;
        }
        while let Some(chunk) = chunks.next().await {
            match chunk {
                Ok(chunk) => {
                    if tx
                        .send(WriteRequest {
                            part: Some(Part::Chunk(chunk)),
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = errors.send(e);
                    return;
                }
            }
        }
    });
    Either::Right(ReceiverStream::new(rx))
}

/// The bytes of an upload: in memory, or read as they are sent (a read
/// error ends the upload with that error).
pub(crate) enum Body {
    Memory(Bytes),
    Stream(BoxStream<'static, std::io::Result<Bytes>>),
}

/// A file's contents as a stream of chunks.
pub(crate) fn file_chunks(path: std::path::PathBuf) -> BoxStream<'static, std::io::Result<Bytes>> {
    let state = (None::<tokio::fs::File>, path, false);
    Box::pin(stream::unfold(state, |(file, path, done)| async move {
        if done {
            return None;
        }
        let mut file = match file {
            Some(file) => file,
            None => match tokio::fs::File::open(&path).await {
                Ok(file) => file,
                Err(e) => return Some((Err(e), (None, path, true))),
            },
        };
        let mut buffer = BytesMut::with_capacity(hayloft_proto::CHUNK_BYTES);
        while buffer.len() < hayloft_proto::CHUNK_BYTES {
            match file.read_buf(&mut buffer).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Some((Err(e), (None, path, true))),
            }
        }
        if buffer.is_empty() {
            None
        } else {
            Some((Ok(buffer.freeze()), (Some(file), path, false)))
        }
    }))
}

impl Client {
    /// Uploads bytes held in memory.
    pub async fn upload(&self, data: Bytes, options: &UploadOptions) -> Result<Uploaded> {
        let size = data.len() as u64;
        self.upload_from(size, options, move || Body::Memory(data.clone()))
            .await
    }

    /// Uploads a file, streaming it in chunks (bounded memory for any size).
    pub async fn upload_file(&self, path: &Path, options: &UploadOptions) -> Result<Uploaded> {
        let size = tokio::fs::metadata(path).await?.len();
        let path = path.to_owned();
        self.upload_from(size, options, move || {
            Body::Stream(file_chunks(path.clone()))
        })
        .await
    }

    /// Uploads `size` bytes from a source that can be restarted (`body` is
    /// called again for each attempt), in the first region that takes it:
    /// a region that fails every attempt (its directory or its servers
    /// unreachable) is skipped, and the upload is made whole again in the
    /// next one, with an id of that region. An id is returned only once
    /// its region acknowledged the write (durable on every copy there).
    pub(crate) async fn upload_from(
        &self,
        size: u64,
        options: &UploadOptions,
        body: impl Fn() -> Body + Send + Sync,
    ) -> Result<Uploaded> {
        let request_id = options
            .request_id
            .clone()
            .unwrap_or_else(hayloft_proto::new_request_id);
        self.in_regions(|region| self.upload_in(region, size, options, &body, &request_id))
            .await
    }

    /// One upload in `region`: up to [`ATTEMPTS`] attempts, each with a
    /// fresh id.
    async fn upload_in(
        &self,
        region: usize,
        size: u64,
        options: &UploadOptions,
        body: &(impl Fn() -> Body + Send + Sync),
        request_id: &str,
    ) -> Result<Uploaded, Miss> {
        let mut pauses = upload_pauses();
        let mut attempt = 0;
        loop {
            let slot = self
                .take_id_in(region, &options.collection, request_id)
                .await
                .map_err(Miss::directory)?;
            let header = write_header(&slot, size, options);
            let Slot {
                blob, locations, ..
            } = slot;
            let location = &locations[0];
            let (errors_tx, mut errors_rx) = tokio::sync::oneshot::channel();
            let requests = write_requests(header, body(), errors_tx);
            let result = match self.volume_client(&location.grpc_addr) {
                Ok(mut client) => client
                    .write(hayloft_proto::with_request_id(requests, request_id))
                    .await
                    .map_err(Error::from),
                Err(e) => Err(e),
            };
            if let Ok(local) = errors_rx.try_recv() {
                return Err(Miss::Answer(Error::Io(local)));
            }
            match result {
                Ok(response) => {
                    let response = response.into_inner();
                    return Ok(Uploaded {
                        url: format!("{}/{}", location.origin_url(), response.blob_id),
                        blob_id: response.blob_id,
                        size: response.size,
                        etag: response.etag,
                        request_id: request_id.to_owned(),
                        region: self.regions[region].name.clone(),
                    });
                }
                Err(error) if retry_upload(&error) => {
                    self.forget_reserved(region, &options.collection, blob.volume_id)
                        .await;
                    let Some(pause) = pauses.next() else {
                        // Every attempt failed: this region takes no
                        // uploads now (the next one is tried).
                        return Err(Miss::Down(gave_up(
                            error,
                            &location.server_id,
                            &location.grpc_addr,
                        )));
                    };
                    // With other regions to go to: if the region's
                    // directory takes no connection either, the region is
                    // down (a refused connection says so at once, where
                    // asking it for new ids would wait the failover
                    // patience). A server cut off mid-stream answers
                    // UNKNOWN ("transport error"), so any failure is checked.
                    if self.multi_region()
                        && let Err(down) = self.check_region(&self.regions[region]).await
                    {
                        return Err(Miss::Down(down));
                    }
                    tracing::warn!(server = %location.server_id, %error, attempt, "upload failed; retrying with a new id");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(error) => return Err(Miss::Answer(error)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_waits_100_200_400_ms_between_its_four_attempts() {
        // backon's doubling is in floating point: to the millisecond.
        let pauses: Vec<u128> = upload_pauses().map(|p| p.as_millis()).collect();
        assert_eq!(pauses, [100, 200, 400], "{ATTEMPTS} attempts");
    }
}
