//! A re-encode's target (`EcDecode` step REENCODE): the copy a BUILD
//! step staged here (the sealed data file restored from the shards, every
//! needle the holders' journals named written as deleted) is compacted by
//! the storage engine (deleted needles' bytes dropped), then encoded under
//! the same code onto the same holders as the volume's *next generation*:
//! each holder stages it beside the generation it serves (`EcWriteShard`
//! and `EcInstall` with `staged`), to serve it only at `EcSwap`, after the
//! directory committed the new layout. The last message carries the new
//! manifest. The staged copy stays here until the directory's ABORT.

use std::sync::Arc;

use hayloft_proto::{EcDecodeProgress, EcEncodeProgress};
use hayloft_storage::erasure::Code;
use hayloft_storage::{Store, VolumeId};
use tokio::sync::mpsc;
use tonic::Status;

use super::decode::DecodeRequest;
use super::encode::{EncodeRequest, SourceFiles, encode_files};
use crate::blocking::blocking;
use crate::error::grpc_status;
use crate::replicate::Replication;

/// Compacts the staged copy of `request.volume` and encodes it as the
/// next generation under `code` (blocks at most `max_block`) onto
/// `request.holders` (every one needed), forwarding progress.
pub async fn reencode(
    store: Arc<Store>,
    replication: Arc<Replication>,
    request: DecodeRequest,
    (code, max_block): (Code, u64),
    progress: mpsc::Sender<Result<EcDecodeProgress, Status>>,
) -> Result<EcDecodeProgress, Status> {
    let id: VolumeId = request.volume;
    if let Some(shard) = request.holders.iter().position(String::is_empty) {
        return Err(Status::failed_precondition(format!(
            "shard {shard} of volume {id} has no live holder: every holder must take the new generation"
        )));
    }
    let compacting = Arc::clone(&store);
    let copy = blocking(move || compacting.compact_decoded(id))
        .await?
        .map_err(|e| grpc_status(&e, None))?;
    tracing::info!(volume = %id, before = copy.bytes_before, after = copy.data_len,
        needles = copy.needles, "staged copy compacted for a re-encode");
    let (encoded_tx, mut encoded) = mpsc::channel::<Result<EcEncodeProgress, Status>>(4);
    let forwarding = tokio::spawn(async move {
        while let Some(Ok(step)) = encoded.recv().await {
            let _ = progress
                .send(Ok(EcDecodeProgress {
                    done: step.done,
                    total: step.total,
                    ..EcDecodeProgress::default()
                }))
                .await;
        }
    });
    let job = EncodeRequest {
        volume: id,
        code,
        max_block,
        holders: request.holders.clone(),
        rate: request.rate,
    };
    let source = SourceFiles {
        dat: copy.dat.clone(),
        idx: copy.idx.clone(),
        meta: copy.meta.clone(),
        data_len: copy.data_len,
    };
    let manifest = encode_files(&replication, &job, source, true, encoded_tx).await;
    let _ = forwarding.await;
    let manifest = manifest?;
    let total = manifest
        .layout(std::path::Path::new("<new manifest>"))
        .map_err(|e| grpc_status(&e, None))?
        .body_len();
    Ok(EcDecodeProgress {
        done: total,
        total,
        finished: true,
        needles: copy.needles,
        manifest: manifest.encode().map_err(|e| grpc_status(&e, None))?,
        ..EcDecodeProgress::default()
    })
}
