//! Decoding an erasure-coded volume back to a replicated copy on this
//! server (a decode's target), one step a call of `EcDecode`:
//!
//! - **build**: the volume's files (manifest, index, state) from a holder
//!   (`EcFiles`; this server's own if it holds the volume); the data shards'
//!   bodies front to back, `STEP_LEN` at a time, each from the shard held
//!   here or its holder (`EcReadShard`, chunk-verified); a shard that does
//!   not answer (holder down, a chunk failing its table) is restored from
//!   parity with `k` others, and asked no more. Each data shard's digest is
//!   computed on the way and must equal the manifest's: the data file is
//!   then byte for byte the one encoded. It is staged (storage's
//!   `erasure::decode`: fsynced, not served) with every needle deleted
//!   in the journals of the holders reached written as deleted.
//! - **journals**: the holders' journals read again (the directory has
//!   fenced deletes at the holders by then) and applied.
//! - **activate**: the staged copy served (the replica set is committed).
//! - **abort**: the staged copy removed.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use futures::future::join_all;
use hayloft_proto::{
    EcDecodeProgress, EcFilesRequest, EcInstallRequest, EcJournalRequest, EcReadShardRequest,
    ServerLocation,
};
use hayloft_storage::erasure::codec;
use hayloft_storage::erasure::decode::DecodedCounts;
use hayloft_storage::erasure::{BodyDigest, EcManifest, Layout, STEP_LEN};
use hayloft_storage::{NeedleId, Store, Throttle, VolumeId};
use tokio::sync::mpsc;
use tonic::Status;

use super::PIECE_TIMEOUT;
use crate::blocking::blocking;
use crate::error::grpc_status;
use crate::replicate::Replication;

/// What a decode step needs to know.
#[derive(Debug, Clone)]
pub struct DecodeRequest {
    /// The volume.
    pub volume: VolumeId,
    /// The gRPC address of each shard's holder, shard by shard.
    pub holders: Vec<String>,
    /// Bytes a second restored (0: unlimited).
    pub rate: u64,
}

fn location(addr: &str) -> ServerLocation {
    ServerLocation {
        server_id: addr.to_owned(),
        grpc_addr: addr.to_owned(),
        ..ServerLocation::default()
    }
}

/// Distinct non-empty holder addresses, in shard order.
fn distinct(holders: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    holders
        .iter()
        .filter(|a| !a.is_empty() && seen.insert(a.as_str()))
        .cloned()
        .collect()
}

/// The volume's files: this server's own if it holds the volume, else
/// those of the first holder that answers.
async fn files(
    store: &Arc<Store>,
    replication: &Replication,
    request: &DecodeRequest,
) -> Result<EcInstallRequest, Status> {
    let id = request.volume;
    if let Ok(volume) = store.erasure(id) {
        return blocking(move || {
            let dir = volume.dir();
            let (manifest, index, journal) = hayloft_storage::erasure::ec_paths(dir, id);
            let meta = hayloft_storage::erasure::volume::ec_meta_path(dir, id);
            let read = |path: &std::path::Path| {
                std::fs::read(path).map_err(|e| hayloft_storage::Error::io(path, e))
            };
            Ok::<_, hayloft_storage::Error>(EcInstallRequest {
                volume_id: id.0,
                manifest: read(&manifest)?,
                index: read(&index)?,
                meta: read(&meta)?,
                tombstones: read(&journal)?,
                holders: Vec::new(),
                staged: false,
            })
        })
        .await?
        .map_err(|e| grpc_status(&e, None));
    }
    let mut errors = Vec::new();
    for addr in distinct(&request.holders) {
        let answer = match replication.client(&location(&addr)) {
            Ok(mut client) => client.ec_files(EcFilesRequest { volume_id: id.0 }).await,
            Err(status) => Err(status),
        };
        match answer {
            Ok(files) => return Ok(files.into_inner()),
            Err(status) => errors.push(format!("{addr}: {}", status.message())),
        }
    }
    Err(Status::unavailable(format!(
        "no holder of volume {id} answered with its files: {}",
        errors.join("; ")
    )))
}

/// The union of the journals of every holder reached, with the holders
/// read and those not reached.
pub async fn journals(
    store: &Arc<Store>,
    replication: &Replication,
    request: &DecodeRequest,
) -> Result<(BTreeSet<NeedleId>, Vec<String>, Vec<String>), Status> {
    let id = request.volume;
    let mut deleted = BTreeSet::new();
    let (mut read, mut unreachable) = (Vec::new(), Vec::new());
    let reads = distinct(&request.holders)
        .into_iter()
        .map(|addr| async move {
            let answer = match replication.client(&location(&addr)) {
                Ok(mut client) => client
                    .ec_journal(EcJournalRequest { volume_id: id.0 })
                    .await
                    .map(|r| r.into_inner().tombstones),
                Err(status) => Err(status),
            };
            (addr, answer)
        });
    for (addr, answer) in join_all(reads).await {
        match answer {
            Ok(tombstones) => {
                deleted.extend(hayloft_storage::sealed::parse_tombs(&tombstones));
                read.push(addr);
            }
            Err(status) => {
                tracing::warn!(volume = %id, holder = %addr, %status, "holder's journal not read");
                unreachable.push(addr);
            }
        }
    }
    // This server's own journal too, if it holds the volume (its address
    // may be written otherwise in the list).
    if let Ok(volume) = store.erasure(id) {
        let (_, _, journal) = hayloft_storage::erasure::ec_paths(volume.dir(), id);
        let own = blocking(move || hayloft_storage::sealed::read_tomb_file(&journal))
            .await?
            .map_err(|e| grpc_status(&e, None))?;
        deleted.extend(own);
    }
    Ok((deleted, read, unreachable))
}

/// Reads `len` bytes of shard `shard` at `offset`, chunk-verified, from
/// here or its holder; `None` if neither gives them.
async fn read_shard(
    store: &Arc<Store>,
    replication: &Replication,
    request: &DecodeRequest,
    shard: u8,
    offset: u64,
    len: u64,
) -> Option<Vec<u8>> {
    let id = request.volume;
    if let Some(file) = store.erasure(id).ok().and_then(|v| v.shard(shard)) {
        match blocking(move || file.read_verified(file.chunks_of(offset, len))).await {
            Ok(Ok(bytes)) if bytes.len() as u64 == len => return Some(bytes),
            Ok(Ok(_)) => tracing::warn!(volume = %id, shard, "short shard read here"),
            Ok(Err(error)) => tracing::warn!(volume = %id, shard, %error, "shard read failed"),
            Err(status) => tracing::warn!(volume = %id, shard, %status, "shard read task failed"),
        }
    }
    let addr = request
        .holders
        .get(usize::from(shard))
        .filter(|a| !a.is_empty())?;
    let mut client = replication.client(&location(addr)).ok()?;
    let asked = client.ec_read_shard(EcReadShardRequest {
        volume_id: id.0,
        shard: u32::from(shard),
        offset,
        length: len,
        verified: true,
    });
    match tokio::time::timeout(PIECE_TIMEOUT * 4, asked).await {
        Ok(Ok(reply)) if reply.get_ref().data.len() as u64 == len => {
            Some(reply.into_inner().data.to_vec())
        }
        Ok(Ok(_)) => None,
        Ok(Err(status)) => {
            tracing::warn!(volume = %id, shard, holder = %addr, %status, "shard not read from its holder");
            None
        }
        Err(_) => {
            tracing::warn!(volume = %id, shard, holder = %addr, "holder did not answer in time");
            None
        }
    }
}

/// The data shards' slices of one step: read, the missing ones restored
/// from parity. `lost` gathers shards that did not answer (not asked
/// again).
async fn step_slices(
    (store, replication): (&Arc<Store>, &Replication),
    request: &DecodeRequest,
    layout: Layout,
    (offset, len): (u64, u64),
    lost: &mut BTreeSet<u8>,
) -> Result<Vec<Vec<u8>>, Status> {
    let k = layout.code.data;
    let shards = layout.code.shards() as u8;
    let mut have: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
    let mut next = 0u8;
    // Data shards first (no decoding needed), then parity until k answer.
    while (have.len() as u8) < k && next < shards {
        let wanted: Vec<u8> = (next..shards)
            .filter(|s| !lost.contains(s))
            .take(usize::from(k) - have.len())
            .collect();
        let Some(&last) = wanted.last() else { break };
        next = last + 1;
        let reads = wanted.iter().map(|&shard| async move {
            (
                shard,
                read_shard(store, replication, request, shard, offset, len).await,
            )
        });
        for (shard, bytes) in join_all(reads).await {
            match bytes {
                Some(bytes) => {
                    have.insert(shard, bytes);
                }
                None => {
                    lost.insert(shard);
                }
            }
        }
    }
    let missing: Vec<u8> = (0..k).filter(|s| !have.contains_key(s)).collect();
    if missing.is_empty() {
        return Ok((0..k).filter_map(|s| have.remove(&s)).collect());
    }
    let slices: BTreeMap<u8, &[u8]> = have.iter().map(|(&s, v)| (s, v.as_slice())).collect();
    let restored = codec::restore(layout.code, &slices, &missing).map_err(|e| {
        Status::unavailable(format!(
            "volume {}: data shards {missing:?} cannot be restored: {e}",
            request.volume
        ))
    })?;
    let mut restored = missing
        .iter()
        .copied()
        .zip(restored)
        .collect::<BTreeMap<_, _>>();
    Ok((0..k)
        .map(|s| {
            have.remove(&s)
                .or_else(|| restored.remove(&s))
                .unwrap_or_default()
        })
        .collect())
}

/// The build step (see the module's doc): stages the copy and answers
/// its counts, the journals read and the data shards restored.
pub async fn build(
    store: Arc<Store>,
    replication: Arc<Replication>,
    request: DecodeRequest,
    progress: mpsc::Sender<Result<EcDecodeProgress, Status>>,
) -> Result<EcDecodeProgress, Status> {
    let id = request.volume;
    let files = files(&store, &replication, &request).await?;
    let label = std::path::Path::new("<EcFiles>");
    let manifest = EcManifest::decode(&files.manifest, label).map_err(|e| grpc_status(&e, None))?;
    let layout = manifest.layout(label).map_err(|e| grpc_status(&e, None))?;
    let entries = hayloft_storage::sealed::parse_index(&files.index, id, label)
        .map_err(|e| grpc_status(&e, None))?;
    let meta = hayloft_storage::meta::VolumeMeta::decode(&files.meta, label)
        .map_err(|e| grpc_status(&e, None))?;
    if request.holders.len() != layout.code.shards() {
        return Err(Status::invalid_argument(format!(
            "a {} code needs {} holders, not {}",
            layout.code,
            layout.code.shards(),
            request.holders.len()
        )));
    }
    let creating = Arc::clone(&store);
    let writer = blocking(move || creating.decoded_writer(id, layout.data_len))
        .await?
        .map_err(|e| grpc_status(&e, None))?;
    let writer = Arc::new(writer);
    let k = layout.code.data;
    let mut digests: Vec<BodyDigest> = (0..k).map(|_| BodyDigest::default()).collect();
    let mut lost = BTreeSet::new();
    let mut throttle = Throttle::new(request.rate);
    let total = layout.body_len() * u64::from(k);
    let mut offset = 0;
    let built = async {
        while offset < layout.body_len() {
            let len = STEP_LEN.min(layout.body_len() - offset);
            let slices = step_slices(
                (&store, &replication),
                &request,
                layout,
                (offset, len),
                &mut lost,
            )
            .await?;
            for (shard, slice) in slices.iter().enumerate() {
                digests[shard].update(slice);
            }
            let writing = Arc::clone(&writer);
            blocking(move || {
                for (shard, slice) in slices.iter().enumerate() {
                    let mut at = 0u64;
                    while at < len {
                        let range = layout.data_range(shard as u8, offset + at, len - at);
                        let step =
                            (layout.block_len - (offset + at) % layout.block_len).min(len - at);
                        if range.start < range.end {
                            writing.write_at(
                                range.start,
                                &slice[at as usize..(at + range.end - range.start) as usize],
                            )?;
                        }
                        at += step;
                    }
                }
                Ok::<_, hayloft_storage::Error>(())
            })
            .await?
            .map_err(|e| grpc_status(&e, None))?;
            let pause = throttle.delay_for(len * u64::from(k));
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            offset += len;
            let _ = progress
                .send(Ok(EcDecodeProgress {
                    done: offset * u64::from(k),
                    total,
                    ..EcDecodeProgress::default()
                }))
                .await;
        }
        for (shard, digest) in std::mem::take(&mut digests).into_iter().enumerate() {
            let (_, digest) = digest.finish();
            if manifest.digests.get(shard) != Some(&digest) {
                return Err(Status::data_loss(format!(
                    "data shard {shard} of volume {id} restored with another digest than encoded: \
                     nothing kept"
                )));
            }
        }
        Ok(())
    }
    .await;
    if let Err(status) = built {
        let removing = Arc::clone(&store);
        drop(writer);
        let _ = blocking(move || removing.abort_decoded(id)).await;
        return Err(status);
    }
    let (deleted, read, unreachable) = journals(&store, &replication, &request).await?;
    let writer = Arc::try_unwrap(writer)
        .map_err(|_| Status::internal("the decoded data file is still being written"))?;
    let staging = Arc::clone(&store);
    let counts: DecodedCounts =
        blocking(move || staging.stage_decoded(writer, &entries, &meta, &deleted))
            .await?
            .map_err(|e| grpc_status(&e, None))?;
    tracing::info!(volume = %id, needles = counts.needles, deleted = counts.deleted,
        restored = ?lost, "volume decoded and staged");
    Ok(EcDecodeProgress {
        done: total,
        total,
        finished: true,
        needles: counts.needles,
        deleted: counts.deleted,
        journals: read,
        unreachable,
        restored_shards: lost.into_iter().filter(|&s| s < k).map(u32::from).collect(),
        ..EcDecodeProgress::default()
    })
}

/// The journals step: the holders' journals applied to the staged copy.
pub async fn apply_journals(
    store: Arc<Store>,
    replication: Arc<Replication>,
    request: DecodeRequest,
) -> Result<EcDecodeProgress, Status> {
    let id = request.volume;
    let (deleted, read, unreachable) = journals(&store, &replication, &request).await?;
    let counts = blocking(move || store.apply_staged_deletes(id, &deleted))
        .await?
        .map_err(|e| grpc_status(&e, None))?;
    Ok(EcDecodeProgress {
        finished: true,
        needles: counts.needles,
        deleted: counts.deleted,
        journals: read,
        unreachable,
        ..EcDecodeProgress::default()
    })
}

/// A commit this server's copy missed the activation of (the leader died
/// or lost this server between the commit and `ACTIVATE`): every staged
/// copy of a volume the directory now names this server a replica of
/// (`named`, from a heartbeat's answer) is served. A staged copy is named
/// only once the decode is committed, so none is served before.
pub async fn activate_committed(store: &Arc<Store>, named: Vec<u32>) {
    let store = Arc::clone(store);
    let activated = blocking(move || {
        let mut activated = Vec::new();
        for id in store.staged_decodes() {
            if named.contains(&id.0) {
                activated.push((id, store.activate_decoded(id).map(|_| ())));
            }
        }
        activated
    })
    .await;
    for (id, result) in activated.unwrap_or_default() {
        match result {
            Ok(()) => tracing::info!(volume = %id, "decoded copy served (its commit named it)"),
            Err(error) => tracing::warn!(volume = %id, %error, "cannot serve a decoded copy"),
        }
    }
}
