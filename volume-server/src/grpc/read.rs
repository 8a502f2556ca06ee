//! Reads and stats: from memory, from disk on the bounded pool, or cold.

#[allow(unused_imports)]
use super::*;

use hayloft_storage::{Hint, NeedleInfo, NeedlePart, Part};

/// The gRPC status of a failed cold read (see [`cold_grpc_status`]).
pub(super) fn cold_status(error: ColdReadError, blob: BlobId) -> Status {
    cold_grpc_status(&error, blob)
}

/// Metadata served for a blob.
pub fn blob_info(blob: BlobId, needle: &hayloft_storage::Needle) -> BlobInfo {
    info_of(blob, needle, needle.data.len() as u64)
}

/// Metadata served for a blob of `size` bytes, `needle` holding all or part
/// of its data.
fn info_of(blob: BlobId, needle: &hayloft_storage::Needle, size: u64) -> BlobInfo {
    BlobInfo {
        blob_id: blob.to_string(),
        size,
        content_type: needle.meta.content_type.clone(),
        file_name: needle.meta.file_name.clone(),
        last_modified: needle.meta.last_modified,
        expires_at: needle.meta.expires_at.unwrap_or(0),
        etag: etag(needle.checksum, size),
    }
}

/// The bytes `offset..` (`length` of them, 0 = to the end) of a blob of
/// `size` bytes, or `None` if `offset` is past its end.
fn read_span(size: u64, offset: u64, length: u64) -> Option<(u64, u64)> {
    if offset > size || (offset == size && size > 0) {
        return None;
    }
    let end = match length {
        0 => size,
        length => offset.saturating_add(length).min(size),
    };
    Some((offset, end))
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
    /// (RESOURCE_EXHAUSTED at its bound; only what `want` asks for, see
    /// `DiskReads::read_part`), or with one ranged GET for a cold volume
    /// (the whole needle).
    pub(super) async fn read_needle(
        &self,
        blob: BlobId,
        hint: Hint,
        want: impl FnOnce(&NeedleInfo<'_>) -> Part + Send + 'static,
    ) -> Result<NeedlePart, Status> {
        self.tiering.reads.record(blob.volume());
        let started = std::time::Instant::now();
        let handle = match self.store.handle(blob.volume()) {
            Ok(handle) => handle,
            Err(e) => {
                // An erasure-coded volume held here: from its shards.
                let erasure = self
                    .store
                    .erasure(blob.volume())
                    .map_err(|_| grpc_status(&e, Some(blob)))?;
                let (needle, from) = self
                    .erasure
                    .read(&erasure, blob)
                    .await
                    .map_err(|e| grpc_status(&e, Some(blob)))?;
                crate::disk_reads::observe_read(from.source(), started);
                return Ok(NeedlePart::whole(needle));
            }
        };
        let (needle, source) = match handle {
            hayloft_storage::Handle::Local(volume) => {
                self.read_local(&volume, blob, hint, want).await?
            }
            hayloft_storage::Handle::Cold(cold) => {
                match self
                    .tiering
                    .read_cold(&cold, blob.needle, blob.cookie)
                    .await
                {
                    Ok(needle) => (NeedlePart::whole(needle), Source::Cold),
                    // A restore may have committed meanwhile (the object is
                    // gone, the volume local again): read it here.
                    Err(ColdReadError::Unavailable(reason)) => {
                        let volume = self.store.volume(blob.volume()).map_err(|_| {
                            cold_status(ColdReadError::Unavailable(reason.clone()), blob)
                        })?;
                        self.read_local(&volume, blob, hint, want)
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
        hint: Hint,
        want: impl FnOnce(&NeedleInfo<'_>) -> Part + Send + 'static,
    ) -> Result<(NeedlePart, Source), Status> {
        self.disk
            .read_part(
                volume,
                (blob.needle, blob.cookie),
                self.verify_up_to,
                hint,
                want,
            )
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
        let (offset, length) = {
            let request = request.into_inner();
            (request.offset, request.length)
        };
        if self.reads_elsewhere(blob) {
            return self.read_foreign(blob, offset, length).await;
        }
        // Part of a blob: from disk, only its chunks are read.
        let hint = if offset > 0 || length > 0 {
            Hint::Range
        } else {
            Hint::Whole
        };
        let part = self
            .read_needle(blob, hint, move |info| {
                match read_span(info.size, offset, length) {
                    Some((start, end)) => Part::Bytes { start, end },
                    None => Part::Nothing,
                }
            })
            .await?;
        let size = part.size;
        let Some((start, end)) = read_span(size, offset, length) else {
            return Err(Status::out_of_range(format!(
                "offset {offset} is past the end of the {size}-byte blob"
            )));
        };
        let info = info_of(blob, &part.needle, size);
        let data = part
            .bytes(start, end)
            .ok_or_else(|| Status::internal("a part read lacks the bytes asked for"))?;
        metrics::bytes_out("grpc", data.len() as u64);
        Ok(Response::new(read_stream(info, data)))
    }

    pub(super) async fn stat_inner(
        &self,
        request: Request<StatRequest>,
    ) -> Result<Response<StatResponse>, Status> {
        let blob = parse_blob_id(&request.get_ref().blob_id)?;
        self.require_on(request.extensions(), Op::Read, blob)?;
        // No data: from disk, the header and tail alone are read.
        let part = self
            .read_needle(blob, Hint::Head, |_| Part::Nothing)
            .await?;
        Ok(Response::new(StatResponse {
            info: Some(info_of(blob, &part.needle, part.size)),
        }))
    }
}
