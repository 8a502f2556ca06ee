//! Fetching a batch of needles from another copy in one round trip
//! (`FetchNeedles`), for a follower whose source is a region away: one
//! request per batch instead of one per needle, the records written here
//! byte for byte as they stream in, and made durable together (their
//! finishes run at once and share the volume's group commit).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hayloft_proto::{BlobInfo, FetchNeedlesRequest, NeedleRef, ServerLocation};
use hayloft_storage::{BlobId, Cookie, NeedleId, NeedleWriter, Volume};
use tonic::Status;

use crate::blocking::blocking;
use crate::error::{etag, grpc_status};

/// How long the source may be silent in the middle of a batch.
const SILENCE: Duration = Duration::from_secs(30);

/// Finishes (each waiting for its needle to be durable) in flight at once.
const FINISHING: usize = 64;

/// One needle being written here: the writer (none if it is deleted here
/// already: its bytes are read and dropped), what the source said of it.
struct Receiving {
    blob: BlobId,
    info: BlobInfo,
    writer: Option<NeedleWriter>,
}

/// Fetches `wanted` (in one `FetchNeedles`) from the copy `client` talks
/// to and writes each here as the copy holds it; returns the needles and
/// bytes written (needles skipped, not there or deleted here, count
/// nothing). Every needle written is durable when it returns.
///
/// # Errors
/// The source failed or went silent, or a record's checksum here differs
/// from the source's (DATA_LOSS): what was written stays (each record is
/// whole and checked), the caller tries the batch again.
pub(crate) async fn fetch_needles(
    volume: &Arc<Volume>,
    client: &mut hayloft_proto::volume_client::VolumeClient<hayloft_proto::AuthChannel>,
    source: &ServerLocation,
    wanted: &[(NeedleId, Cookie)],
) -> Result<(u64, u64), Status> {
    let silent =
        || Status::unavailable(format!("{} went silent in FetchNeedles", source.server_id));
    let request = FetchNeedlesRequest {
        volume_id: volume.id().0,
        needles: wanted
            .iter()
            .map(|(id, cookie)| NeedleRef {
                needle_id: id.0,
                cookie: cookie.0,
            })
            .collect(),
    };
    let mut stream = tokio::time::timeout(SILENCE, client.fetch_needles(request))
        .await
        .map_err(|_| silent())??
        .into_inner();
    let mut next = wanted.iter();
    let mut current: Option<Receiving> = None;
    let mut finishing = FuturesUnordered::new();
    let mut written = (0u64, 0u64);
    let mut count = |size: u64| {
        if size > 0 {
            written.0 += 1;
            written.1 += size;
        }
    };
    loop {
        let message = tokio::time::timeout(SILENCE, stream.message())
            .await
            .map_err(|_| silent())??;
        let Some(message) = message else { break };
        if message.info.is_some() || !message.missing.is_empty() {
            if let Some(done) = current.take() {
                if finishing.len() >= FINISHING {
                    count(finishing.next().await.unwrap_or(Ok(0))?);
                }
                finishing.push(finish(Arc::clone(volume), done));
            }
            let Some(&(id, cookie)) = next.next() else {
                return Err(Status::data_loss(
                    "FetchNeedles answered more needles than asked",
                ));
            };
            if !message.missing.is_empty() {
                tracing::debug!(volume = %volume.id(), needle = %id, why = %message.missing,
                    "a needle the log named is not served by its source; skipped");
                continue;
            }
            let Some(info) = message.info else { continue };
            let blob = BlobId { needle: id, cookie };
            if info.blob_id != blob.to_string() {
                return Err(Status::data_loss(format!(
                    "FetchNeedles answered {} for {blob}",
                    info.blob_id
                )));
            }
            current = Some(begin(volume, blob, info).await?);
        }
        let Some(receiving) = current.as_mut() else {
            if !message.chunk.is_empty() {
                return Err(Status::data_loss("FetchNeedles sent bytes of no needle"));
            }
            continue;
        };
        if message.chunk.is_empty() {
            continue;
        }
        if let Some(writer) = receiving.writer.take() {
            if writer.written() + message.chunk.len() as u64 > receiving.info.size {
                return Err(Status::data_loss("fetched needle longer than announced"));
            }
            let chunk = message.chunk;
            let blob = receiving.blob;
            receiving.writer = Some(
                blocking(move || {
                    let mut writer = writer;
                    writer.write(&chunk).map(|()| writer)
                })
                .await?
                .map_err(|e| grpc_status(&e, Some(blob)))?,
            );
        }
    }
    if let Some(done) = current.take() {
        finishing.push(finish(Arc::clone(volume), done));
    }
    while let Some(finished) = finishing.next().await {
        count(finished?);
    }
    Ok(written)
}

/// Starts writing the needle `info` describes (none if deleted here).
async fn begin(volume: &Arc<Volume>, blob: BlobId, info: BlobInfo) -> Result<Receiving, Status> {
    let meta = crate::antientropy::meta_of(&info);
    let size = info.size;
    let target = Arc::clone(volume);
    let writer =
        match blocking(move || target.begin_copy(blob.needle, blob.cookie, size, meta)).await? {
            Ok(writer) => Some(writer),
            Err(hayloft_storage::Error::NeedleDeleted { .. }) => None,
            Err(e) => return Err(grpc_status(&e, Some(blob))),
        };
    Ok(Receiving { blob, info, writer })
}

/// Makes a received needle durable and checks it against the source's
/// checksum: its size, or 0 if it was skipped (deleted here).
async fn finish(volume: Arc<Volume>, done: Receiving) -> Result<u64, Status> {
    let Receiving { blob, info, writer } = done;
    let Some(writer) = writer else {
        return Ok(0);
    };
    if writer.written() != info.size {
        return Err(Status::unavailable("fetched needle cut short"));
    }
    let receipt = blocking(move || writer.finish())
        .await?
        .map_err(|e| grpc_status(&e, Some(blob)))?;
    if etag(receipt.checksum, info.size) != info.etag {
        tracing::error!(volume = %volume.id(), needle = %blob.needle,
            "fetched needle's checksum differs from its source's");
        return Err(Status::data_loss(format!(
            "copy of {blob} does not match its source"
        )));
    }
    Ok(info.size)
}
