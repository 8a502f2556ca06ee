//! gRPC `Read` of a blob whose volume another region allocated and this
//! server holds no copy of: looked up in that region's directory group
//! (through the origin's [`crate::proxy::RemoteReader`], cached the same
//! way) and read from a copy there with the cluster credential (one key
//! ring per deployment), streamed through as it arrives.
//!
//! A copy's answer that is about the blob (NOT_FOUND, OUT_OF_RANGE, a bad
//! cookie...) is passed on as it is; a copy that does not answer, or
//! answers UNAVAILABLE or RESOURCE_EXHAUSTED, is skipped for the next
//! (looked up once more when all fail). The region's directory or every
//! copy unreachable: UNAVAILABLE naming the region.

#[allow(unused_imports)]
use super::*;

use crate::proxy::RemoteMiss;

/// Codes of a copy's answer that say nothing of the blob: the next copy
/// is asked.
fn try_next(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::ResourceExhausted
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::Unauthenticated
    )
}

impl VolumeService {
    /// Whether reads of `blob` go to another region: its volume is not
    /// held here and another configured region allocated it.
    /// Also when this server holds a copy of the volume that lacks the
    /// needle (not shipped here yet, nor deleted here).
    pub(super) fn reads_elsewhere(&self, blob: BlobId) -> bool {
        if !self
            .remote
            .as_ref()
            .is_some_and(|remote| remote.is_foreign(blob.volume().0))
        {
            return false;
        }
        match self.store.volume(blob.volume()) {
            Ok(volume) => !volume.holds(blob.needle) && !volume.is_deleted(blob.needle),
            Err(_) => {
                self.store.handle(blob.volume()).is_err()
                    && self.store.erasure(blob.volume()).is_err()
            }
        }
    }

    /// Reads `blob` (`offset`, `length` as asked) from a copy in the region
    /// that allocated its volume.
    pub(super) async fn read_foreign(
        &self,
        blob: BlobId,
        offset: u64,
        length: u64,
    ) -> Result<Response<ReadStream>, Status> {
        let Some(remote) = &self.remote else {
            return Err(Status::not_found(format!(
                "volume {} is not here",
                blob.volume()
            )));
        };
        let started = Instant::now();
        let volume = blob.volume().0;
        let mut last = None;
        for refresh in [false, true] {
            let (region, copies) = match remote.foreign_copies(volume, refresh).await {
                Ok(found) => found,
                Err(RemoteMiss::Unreachable) => {
                    return Err(Status::unavailable(format!(
                        "volume {volume} belongs to another region, whose directory does not answer"
                    )));
                }
                Err(RemoteMiss::Unknown) => {
                    return Err(Status::not_found(format!(
                        "volume {volume} is unknown in the region that allocated it"
                    )));
                }
            };
            for copy in &copies {
                let mut client = self.replication.client(copy)?;
                let request = hayloft_proto::ReadRequest {
                    blob_id: blob.to_string(),
                    offset,
                    length,
                };
                let answer = match client.read(request).await {
                    Ok(answer) => answer.into_inner(),
                    Err(status) if try_next(status.code()) => {
                        tracing::debug!(%region, server = %copy.server_id,
                            error = %status.message(), "read from another region failed");
                        last = Some((region.clone(), status));
                        continue;
                    }
                    Err(status) => return Err(status),
                };
                let mut answer = answer;
                // The first message decides: a copy that fails before any
                // byte is skipped; after it, the stream is this read's.
                let first = match answer.message().await {
                    Ok(Some(first)) => first,
                    Ok(None) => {
                        return Err(Status::internal(format!(
                            "a copy in region {region} answered an empty read"
                        )));
                    }
                    Err(status) if try_next(status.code()) => {
                        last = Some((region.clone(), status));
                        continue;
                    }
                    Err(status) => return Err(status),
                };
                crate::disk_reads::observe_read(Source::Region, started);
                metrics::bytes_out("grpc", first.chunk.len() as u64);
                let rest = futures::stream::unfold(answer, |mut answer| async move {
                    match answer.message().await {
                        Ok(Some(message)) => {
                            metrics::bytes_out("grpc", message.chunk.len() as u64);
                            Some((Ok(message), answer))
                        }
                        Ok(None) => None,
                        Err(status) => Some((Err(status), answer)),
                    }
                });
                let stream = futures::StreamExt::chain(
                    futures::stream::iter([Ok::<_, Status>(first)]),
                    rest,
                );
                return Ok(Response::new(Box::pin(stream)));
            }
        }
        Err(match last {
            Some((region, status)) => Status::unavailable(format!(
                "no copy of volume {volume} in region {region} answers: {}",
                status.message()
            )),
            None => Status::unavailable(format!("no copy of volume {volume} answers")),
        })
    }

    /// Whether a delete of `blob` that found no needle here goes to the
    /// region that created its volume: another region's, and not deleted
    /// here.
    pub(super) fn deletes_elsewhere(&self, blob: BlobId) -> bool {
        self.remote
            .as_ref()
            .is_some_and(|remote| remote.is_foreign(blob.volume().0))
            && self
                .store
                .volume(blob.volume())
                .map_or(true, |volume| !volume.is_deleted(blob.needle))
    }

    /// Deletes `blob` on a copy in the region that created its volume (as
    /// a forwarded delete: that copy checks the cookie; its region's other
    /// copies and every region keeping the volume take the tombstone from
    /// its log).
    pub(super) async fn delete_foreign(
        &self,
        blob: BlobId,
    ) -> Result<Response<hayloft_proto::DeleteResponse>, Status> {
        let Some(remote) = &self.remote else {
            return Err(Status::not_found(format!("blob {blob} not found")));
        };
        let volume = blob.volume().0;
        let (region, copies) = match remote.foreign_copies(volume, false).await {
            Ok(found) => found,
            Err(RemoteMiss::Unreachable) => {
                return Err(Status::unavailable(format!(
                    "blob {blob} is not here yet and the region that created it does not answer; try again"
                )));
            }
            Err(RemoteMiss::Unknown) => {
                return Err(Status::not_found(format!("blob {blob} not found")));
            }
        };
        let mut last = None;
        for copy in &copies {
            let mut client = self.replication.client(copy)?;
            let request = hayloft_proto::DeleteRequest {
                blob_id: blob.to_string(),
                forwarded: true,
                ..Default::default()
            };
            match client.delete(request).await {
                Ok(answer) => return Ok(answer),
                Err(status) if try_next(status.code()) => last = Some(status),
                Err(status) => return Err(status),
            }
        }
        Err(Status::unavailable(format!(
            "no copy of volume {volume} in region {region} answers{}",
            last.map(|s| format!(": {}", s.message()))
                .unwrap_or_default()
        )))
    }
}
