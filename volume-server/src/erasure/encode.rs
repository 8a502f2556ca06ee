//! Encoding this server's sealed copy of
//! a volume into `k + m` shards written to their holders.
//!
//! The encode, step by step (see ARCHITECTURE.md, "Erasure-coded volumes"):
//!
//! 1. The copy must be sealed; its data file's length now is what is
//!    encoded (deletes append tombstones past it; they count through the
//!    index, step 4).
//! 2. One `EcWriteShard` stream a holder, opened with the layout. The data
//!    file is read stripe by stripe on a blocking thread, throttled; each
//!    stripe's `k + m` slices go to their streams (bounded channels: memory
//!    is a few stripes, whatever the volume's size).
//! 3. The last message of each stream carries the encoder's digest: a
//!    holder renames its shard into place only once it is whole, fsynced and
//!    its digest matches, and answers with it.
//! 4. Every holder gets `EcInstall`: the manifest with every digest, the
//!    index as it is now (with the deletes made during the encode), the
//!    state file. A holder serves the volume from then on.
//!
//! The copy here is untouched: the caller records the layout and only then
//! removes copies, so there is never a moment with fewer than the promised
//! copies. A failure at any step leaves temp files or unused shards on the
//! holders (removed by `EcDrop` or the next attempt), never a half shard
//! that counts.

use std::sync::Arc;

use hayloft_proto::{EcEncodeProgress, EcInstallRequest, EcWriteShardRequest, ServerLocation};
use hayloft_storage::erasure::{Code, EcManifest, Encoder, Layout, MAX_BLOCK_LEN};
use hayloft_storage::{Store, Throttle, VolumeId};
use tokio::sync::mpsc;
use tonic::Status;

use crate::error::grpc_status;
use crate::replicate::Replication;

/// Stripes in flight between the reader thread and the holders' streams.
const STRIPES_IN_FLIGHT: usize = 2;

/// A holder's shard stream: its address, the sender of its messages, and
/// the task awaiting its answer.
type ShardStream = (
    String,
    mpsc::Sender<EcWriteShardRequest>,
    tokio::task::JoinHandle<Result<hayloft_proto::EcWriteShardResponse, Status>>,
);

/// What an encode needs to know.
#[derive(Debug, Clone)]
pub struct EncodeRequest {
    /// The volume (a sealed copy must be on this server).
    pub volume: VolumeId,
    /// The code.
    pub code: Code,
    /// Largest block (0: 1 GiB).
    pub max_block: u64,
    /// The gRPC address of each shard's holder, shard by shard.
    pub holders: Vec<String>,
    /// Bytes a second read from the copy (0: unlimited).
    pub rate: u64,
}

/// Encodes the sealed copy of `request.volume` held here into shards on
/// their holders (steps above), sending progress to `progress`. Returns
/// the manifest every holder now has.
pub async fn encode(
    store: Arc<Store>,
    replication: Arc<Replication>,
    request: EncodeRequest,
    progress: mpsc::Sender<Result<EcEncodeProgress, Status>>,
) -> Result<EcManifest, Status> {
    let id = request.volume;
    let code = request.code;
    if request.holders.len() != code.shards() {
        return Err(Status::invalid_argument(format!(
            "a {code} code needs {} holders, not {}",
            code.shards(),
            request.holders.len()
        )));
    }
    let volume = store.volume(id).map_err(|e| grpc_status(&e, None))?;
    if !volume.is_sealed() {
        return Err(Status::failed_precondition(format!(
            "volume {id} is not sealed: seal it before encoding"
        )));
    }
    let (dat, idx, meta) = hayloft_storage::volume::volume_paths(volume.dir(), id);
    let source = SourceFiles {
        dat,
        idx,
        meta,
        data_len: volume.data_len(),
    };
    encode_files(&replication, &request, source, false, progress).await
}

/// The sealed data file an encode reads, its index and state file.
#[derive(Debug, Clone)]
pub struct SourceFiles {
    /// The data file.
    pub dat: std::path::PathBuf,
    /// Its index (sent to every holder as it is after the encode).
    pub idx: std::path::PathBuf,
    /// Its state file.
    pub meta: std::path::PathBuf,
    /// The data file's length: what is encoded.
    pub data_len: u64,
}

/// Steps 2-4 of an encode from `source`; with `staged`, the holders stage
/// the shards and files as the next generation of a volume being
/// re-encoded (served only after `EcSwap`).
pub async fn encode_files(
    replication: &Replication,
    request: &EncodeRequest,
    source: SourceFiles,
    staged: bool,
    progress: mpsc::Sender<Result<EcEncodeProgress, Status>>,
) -> Result<EcManifest, Status> {
    let id = request.volume;
    let code = request.code;
    if request.holders.len() != code.shards() {
        return Err(Status::invalid_argument(format!(
            "a {code} code needs {} holders, not {}",
            code.shards(),
            request.holders.len()
        )));
    }
    let max_block = if request.max_block == 0 {
        MAX_BLOCK_LEN
    } else {
        request.max_block
    };
    let layout = Layout::plan(code, source.data_len, max_block);
    let SourceFiles { dat, idx, meta, .. } = source;

    // Step 2: a stream to each holder, opened with the layout.
    let mut streams = Vec::with_capacity(code.shards());
    for (shard, addr) in request.holders.iter().enumerate() {
        let (tx, rx) = mpsc::channel::<EcWriteShardRequest>(STRIPES_IN_FLIGHT);
        let mut client = replication.client(&ServerLocation {
            server_id: addr.clone(),
            grpc_addr: addr.clone(),
            ..ServerLocation::default()
        })?;
        let first = EcWriteShardRequest {
            volume_id: id.0,
            shard: shard as u32,
            code: code.to_string(),
            data_len: layout.data_len,
            block_len: layout.block_len,
            staged,
            ..EcWriteShardRequest::default()
        };
        tx.send(first)
            .await
            .map_err(|_| Status::internal("shard stream closed before it opened"))?;
        let answer = tokio::spawn(async move {
            client
                .ec_write_shard(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map(tonic::Response::into_inner)
        });
        streams.push((addr.clone(), tx, answer));
    }

    let (stripes_tx, mut stripes) = mpsc::channel(STRIPES_IN_FLIGHT);
    let rate = request.rate;
    let reader = tokio::task::spawn_blocking(move || {
        let mut encoder = Encoder::open(&dat, layout)?;
        let mut throttle = Throttle::new(rate);
        while let Some(stripe) = encoder.next_stripe()? {
            throttle.block_for(stripe.slices[0].len() as u64 * u64::from(layout.code.data));
            if stripes_tx.blocking_send(stripe).is_err() {
                // The sending side gave up (a holder failed): stop reading.
                break;
            }
        }
        Ok::<_, hayloft_storage::Error>(encoder.digests())
    });

    let total = layout.body_len();
    while let Some(stripe) = stripes.recv().await {
        let done = stripe.offset + stripe.slices[0].len() as u64;
        let mut failed = None;
        for ((addr, tx, _), slice) in streams.iter().zip(stripe.slices) {
            let message = EcWriteShardRequest {
                data: slice.into(),
                ..EcWriteShardRequest::default()
            };
            if tx.send(message).await.is_err() {
                failed = Some(addr.clone());
                break;
            }
        }
        if let Some(addr) = failed {
            drop(stripes);
            return Err(holder_failed(&addr, streams).await);
        }
        // The caller gone (its leader died): stop, so that the encode it
        // runs again is the only one writing these shards.
        if progress
            .send(Ok(EcEncodeProgress {
                done,
                total,
                ..EcEncodeProgress::default()
            }))
            .await
            .is_err()
        {
            drop(stripes);
            return Err(Status::cancelled(format!(
                "the encode of volume {id} was given up by its caller"
            )));
        }
    }
    let digests = reader
        .await
        .map_err(|e| Status::internal(format!("encoder task failed: {e}")))?
        .map_err(|e| grpc_status(&e, None))?;

    // Step 3: the digests; each holder answers once its shard is in place.
    for ((addr, tx, answer), digest) in streams.into_iter().zip(&digests) {
        let last = EcWriteShardRequest {
            digest: Some(*digest),
            ..EcWriteShardRequest::default()
        };
        let sent = tx.send(last).await;
        drop(tx);
        let reply = answer
            .await
            .map_err(|e| Status::internal(format!("shard stream task failed: {e}")))?
            .map_err(|e| Status::new(e.code(), format!("shard holder {addr}: {}", e.message())))?;
        if sent.is_err() || reply.digest != *digest {
            return Err(Status::data_loss(format!(
                "shard holder {addr} wrote a shard whose digest differs"
            )));
        }
    }

    // Step 4: every holder takes the volume in.
    let manifest = EcManifest::new(layout, digests);
    let encoded = manifest.encode().map_err(|e| grpc_status(&e, None))?;
    let (index, meta) = tokio::task::spawn_blocking(move || {
        Ok::<_, std::io::Error>((std::fs::read(&idx)?, std::fs::read(&meta)?))
    })
    .await
    .map_err(|e| Status::internal(format!("reading the index failed: {e}")))?
    .map_err(|e| Status::internal(format!("reading the index of volume {id}: {e}")))?;
    for addr in &request.holders {
        let mut client = replication.client(&ServerLocation {
            server_id: addr.clone(),
            grpc_addr: addr.clone(),
            ..ServerLocation::default()
        })?;
        client
            .ec_install(EcInstallRequest {
                volume_id: id.0,
                manifest: encoded.clone(),
                index: index.clone(),
                meta: meta.clone(),
                tombstones: Vec::new(),
                holders: request.holders.clone(),
                staged,
            })
            .await
            .map_err(|e| Status::new(e.code(), format!("shard holder {addr}: {}", e.message())))?;
    }
    tracing::info!(volume = %id, %code, holders = ?request.holders, staged, "volume encoded");
    Ok(manifest)
}

/// The error of the first holder whose stream ended early.
async fn holder_failed(addr: &str, streams: Vec<ShardStream>) -> Status {
    for (holder, tx, answer) in streams {
        drop(tx);
        if holder == addr
            && let Ok(Err(status)) = answer.await
        {
            return Status::new(
                status.code(),
                format!("shard holder {addr}: {}", status.message()),
            );
        }
    }
    Status::unavailable(format!("shard holder {addr} closed its stream"))
}
