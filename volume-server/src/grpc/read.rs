//! Reads and stats: from memory, from disk on the bounded pool, or cold.

#[allow(unused_imports)]
use super::*;

/// The gRPC status of a failed cold read (see [`cold_grpc_status`]).
pub(super) fn cold_status(error: ColdReadError, blob: BlobId) -> Status {
    cold_grpc_status(&error, blob)
}

/// Metadata served for a blob.
pub fn blob_info(blob: BlobId, needle: &hayloft_storage::Needle) -> BlobInfo {
    BlobInfo {
        blob_id: blob.to_string(),
        size: needle.data.len() as u64,
        content_type: needle.meta.content_type.clone(),
        file_name: needle.meta.file_name.clone(),
        last_modified: needle.meta.last_modified,
        expires_at: needle.meta.expires_at.unwrap_or(0),
        etag: etag(needle.checksum, needle.data.len() as u64),
    }
}

/// A blob's bytes as `Read` streams them: metadata first, 1 MiB chunks.
pub(super) fn read_stream(info: BlobInfo, data: Bytes) -> ReadStream {
    let chunk_len = hayloft_proto::CHUNK_BYTES;
    let chunks = data.len().div_ceil(chunk_len).max(1);
    let mut info = Some(info);
    Box::pin(tokio_stream::iter((0..chunks).map(move |i| {
        let start = i * chunk_len;
        let stop = (start + chunk_len).min(data.len());
        Ok(ReadResponse {
            info: info.take(),
            chunk: data.slice(start..stop),
        })
    })))
}

impl VolumeService {
    /// Reads a needle: from the page cache, from disk on the bounded pool
    /// (RESOURCE_EXHAUSTED at its bound), or with one ranged GET for a
    /// cold volume.
    pub(super) async fn read_needle(
        &self,
        blob: BlobId,
    ) -> Result<hayloft_storage::Needle, Status> {
        self.tiering.reads.record(blob.volume());
        let started = std::time::Instant::now();
        let handle = self
            .store
            .handle(blob.volume())
            .map_err(|e| grpc_status(&e, Some(blob)))?;
        let (needle, source) = match handle {
            hayloft_storage::Handle::Local(volume) => self.read_local(&volume, blob).await?,
            hayloft_storage::Handle::Cold(cold) => {
                match self
                    .tiering
                    .read_cold(&cold, blob.needle, blob.cookie)
                    .await
                {
                    Ok(needle) => (needle, Source::Cold),
                    // A restore may have committed meanwhile (the object is
                    // gone, the volume local again): read it here.
                    Err(ColdReadError::Unavailable(reason)) => {
                        let volume = self.store.volume(blob.volume()).map_err(|_| {
                            cold_status(ColdReadError::Unavailable(reason.clone()), blob)
                        })?;
                        self.read_local(&volume, blob)
                            .await
                            .map_err(|_| cold_status(ColdReadError::Unavailable(reason), blob))?
                    }
                    Err(e) => return Err(cold_status(e, blob)),
                }
            }
        };
        crate::disk_reads::observe_read(source, started);
        Ok(needle)
    }

    pub(super) async fn read_local(
        &self,
        volume: &hayloft_storage::Volume,
        blob: BlobId,
    ) -> Result<(hayloft_storage::Needle, Source), Status> {
        self.disk
            .read(volume, blob.needle, blob.cookie, self.verify_up_to)
            .await
            .map_err(|e| match e {
                ReadError::Busy => {
                    let mut status = Status::resource_exhausted(
                        "too many reads from disk in flight; retry shortly or read another copy",
                    );
                    status
                        .metadata_mut()
                        .insert("retry-after", tonic::metadata::MetadataValue::from(1));
                    status
                }
                ReadError::Storage(e) => grpc_status(&e, Some(blob)),
            })
    }

    pub(super) async fn read_inner(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<ReadStream>, Status> {
        let blob = parse_blob_id(&request.get_ref().blob_id)?;
        self.require_on(request.extensions(), Op::Read, blob)?;
        let request = request.into_inner();
        let needle = self.read_needle(blob).await?;
        let size = needle.data.len() as u64;
        if request.offset > size || (request.offset == size && size > 0) {
            return Err(Status::out_of_range(format!(
                "offset {} is past the end of the {size}-byte blob",
                request.offset
            )));
        }
        let end = match request.length {
            0 => size,
            length => request.offset.saturating_add(length).min(size),
        };
        let info = blob_info(blob, &needle);
        let data = needle.data.slice(request.offset as usize..end as usize);
        metrics::bytes_out("grpc", data.len() as u64);
        Ok(Response::new(read_stream(info, data)))
    }

    pub(super) async fn stat_inner(
        &self,
        request: Request<StatRequest>,
    ) -> Result<Response<StatResponse>, Status> {
        let blob = parse_blob_id(&request.get_ref().blob_id)?;
        self.require_on(request.extensions(), Op::Read, blob)?;
        let needle = self.read_needle(blob).await?;
        Ok(Response::new(StatResponse {
            info: Some(blob_info(blob, &needle)),
        }))
    }
}
