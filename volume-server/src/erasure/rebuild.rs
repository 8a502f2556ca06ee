//! Rebuilding a lost shard on this server, and the holders' delete
//! journals kept in step.
//!
//! A rebuild (`EcRebuild`), step by step:
//!
//! 1. Not a holder yet (a new server, or a wiped disk): the volume's files
//!    (manifest, index, state, journal, holders) are fetched from a holder
//!    (`EcFiles`) and installed, manifest last.
//! 2. The shard's body is restored front to back in steps of 1 MiB: each
//!    step is the same range of the other shards, the first `k` to answer,
//!    through the codec; throttled; written to `<id>.ecNN.tmp`.
//! 3. The shard is finished only if its digest equals the manifest's (the
//!    shard as encoded, byte for byte): fsynced, renamed into place, served.
//!    Anything else (a source that lied, a crash) leaves no shard: a temp
//!    file, removed on the next open.
//!
//! The journals: a delete is acknowledged once every holder journaled it;
//! one that failed midway left it on some holders only. Every holder pulls
//! the journals of the others now and then (`EcJournal`) and journals what
//! it lacks, so a holder that was down when a blob was deleted stops
//! serving it once it has caught up, and a rebuilt holder starts from the
//! journal of the holder it was installed from.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use hayloft_proto::background::{Failed, Step, Worker};
use hayloft_proto::{EcFilesRequest, EcJournalRequest, EcRebuildProgress, ServerLocation};
use hayloft_storage::erasure::{EcManifest, EcVolume, Piece, STEP_LEN};
use hayloft_storage::{NeedleId, Store, Throttle, VolumeId};
use tokio::sync::mpsc;
use tonic::Status;

use super::ErasureReads;
use crate::blocking::blocking;
use crate::error::grpc_status;
use crate::replicate::Replication;

fn location(addr: &str) -> ServerLocation {
    ServerLocation {
        server_id: addr.to_owned(),
        grpc_addr: addr.to_owned(),
        ..ServerLocation::default()
    }
}

/// What a rebuild needs to know.
#[derive(Debug, Clone)]
pub struct RebuildRequest {
    /// The volume.
    pub volume: VolumeId,
    /// The shard to rebuild here.
    pub shard: u8,
    /// A holder to fetch the volume's files from, if not held here.
    pub source: String,
    /// Bytes a second written (0: unlimited).
    pub rate: u64,
}

/// The shards being rebuilt on this server: a second `EcRebuild` of one
/// while the first runs (a directory that restarted and resumes its job)
/// is refused, as two writers of one temp file would mix their bytes.
#[derive(Debug, Default)]
pub struct Rebuilding(parking_lot::Mutex<HashSet<(VolumeId, u8)>>);

/// Holds a shard in [`Rebuilding`] until dropped.
#[derive(Debug)]
pub struct RebuildingGuard {
    rebuilding: Arc<Rebuilding>,
    shard: (VolumeId, u8),
}

impl Rebuilding {
    /// Marks shard `shard` of `volume` as being rebuilt here; ABORTED if
    /// it already is.
    pub fn start(self: &Arc<Self>, volume: VolumeId, shard: u8) -> Result<RebuildingGuard, Status> {
        if !self.0.lock().insert((volume, shard)) {
            return Err(Status::aborted(format!(
                "a rebuild of shard {shard} of volume {volume} is under way here: try again once it ends"
            )));
        }
        Ok(RebuildingGuard {
            rebuilding: Arc::clone(self),
            shard: (volume, shard),
        })
    }
}

impl Drop for RebuildingGuard {
    fn drop(&mut self) {
        self.rebuilding.0.lock().remove(&self.shard);
    }
}

/// Rebuilds a shard here (steps above), fetching the volume's files from
/// the request's source if this server does not hold it yet.
pub async fn rebuild(
    store: Arc<Store>,
    (replication, reads): (Arc<Replication>, Arc<ErasureReads>),
    request: RebuildRequest,
    progress: mpsc::Sender<Result<EcRebuildProgress, Status>>,
) -> Result<(), Status> {
    let RebuildRequest {
        volume: id,
        shard,
        source,
        rate,
    } = request;
    let source = source.as_str();
    // Step 1.
    let volume = match store.erasure(id) {
        Ok(volume) => volume,
        Err(_) => {
            if source.is_empty() {
                return Err(Status::failed_precondition(format!(
                    "volume {id} is not held here: name a holder to fetch it from"
                )));
            }
            let files = replication
                .client(&location(source))?
                .ec_files(EcFilesRequest { volume_id: id.0 })
                .await
                .map_err(|e| Status::new(e.code(), format!("holder {source}: {}", e.message())))?
                .into_inner();
            let holders = files.holders.clone();
            let installing = Arc::clone(&store);
            let volume = blocking(move || {
                let label = std::path::Path::new("<EcFiles>");
                let manifest = EcManifest::decode(&files.manifest, label)?;
                let entries = hayloft_storage::sealed::parse_index(&files.index, id, label)?;
                let meta = hayloft_storage::meta::VolumeMeta::decode(&files.meta, label)?;
                let deleted = hayloft_storage::sealed::parse_tombs(&files.tombstones);
                installing.install_erasure(id, &manifest, &entries, &meta, &deleted)
            })
            .await?
            .map_err(|e| grpc_status(&e, None))?;
            reads.set_holders(&volume, holders);
            volume
        }
    };
    let layout = volume.layout();
    if usize::from(shard) >= layout.code.shards() {
        return Err(Status::invalid_argument(format!(
            "no shard {shard} in a {} code",
            layout.code
        )));
    }
    if volume.shard(shard).is_some() {
        return Ok(());
    }
    let digest = volume.manifest().digests[usize::from(shard)];
    // Step 2.
    let writing = Arc::clone(&store);
    let mut writer = blocking(move || writing.shard_writer(id, shard, layout))
        .await?
        .map_err(|e| grpc_status(&e, None))?;
    let total = layout.body_len();
    let mut throttle = Throttle::new(rate);
    let mut offset = 0;
    while offset < total {
        let len = STEP_LEN.min(total - offset);
        let piece = Piece { shard, offset, len };
        let bytes = reads
            .restore(&volume, piece)
            .await
            .map_err(|e| grpc_status(&e, None))?;
        let pause = throttle.delay_for(len);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        let (back, written) = blocking(move || {
            let result = writer.append(&bytes);
            (writer, result)
        })
        .await?;
        writer = back;
        written.map_err(|e| grpc_status(&e, None))?;
        offset += len;
        let _ = progress
            .send(Ok(EcRebuildProgress {
                done: offset,
                total,
            }))
            .await;
    }
    // Step 3.
    let finishing = Arc::clone(&store);
    blocking(move || finishing.finish_shard(id, shard, writer, digest))
        .await?
        .map_err(|e| match e {
            hayloft_storage::Error::Corrupt { .. } => Status::data_loss(format!(
                "shard {shard} of volume {id} rebuilt with another digest than encoded: not kept"
            )),
            e => grpc_status(&e, None),
        })?;
    tracing::info!(volume = %id, shard, "shard rebuilt");
    Ok(())
}

/// Pulls the other holders' delete journals and journals what this
/// holder lacks, one volume a step.
pub struct JournalSync {
    store: Arc<Store>,
    replication: Arc<Replication>,
    reads: Arc<ErasureReads>,
    interval: Duration,
    pass: Vec<Arc<EcVolume>>,
    last: Option<VolumeId>,
}

impl JournalSync {
    /// Every `interval`, through `replication`'s connections, to the
    /// holders `reads` knows.
    pub fn new(
        store: Arc<Store>,
        replication: Arc<Replication>,
        reads: Arc<ErasureReads>,
        interval: Duration,
    ) -> Self {
        JournalSync {
            store,
            replication,
            reads,
            interval,
            pass: Vec::new(),
            last: None,
        }
    }

    /// Brings `volume`'s journal here up to the union of its holders';
    /// returns the deletes it journaled.
    pub async fn sync(
        store_reads: (&Replication, &ErasureReads),
        volume: &Arc<EcVolume>,
    ) -> Result<usize, Status> {
        let (replication, reads) = store_reads;
        let mut added = 0;
        let mut seen = HashSet::new();
        for addr in reads.holders_of(volume) {
            if addr.is_empty() || !seen.insert(addr.clone()) {
                continue;
            }
            let Ok(mut client) = replication.client(&location(&addr)) else {
                continue;
            };
            let reply = match client
                .ec_journal(EcJournalRequest {
                    volume_id: volume.id().0,
                })
                .await
            {
                Ok(reply) => reply.into_inner(),
                // A holder down or without the volume: the next pass.
                Err(_) => continue,
            };
            let ids: Vec<NeedleId> = hayloft_storage::sealed::parse_tombs(&reply.tombstones);
            let volume = Arc::clone(volume);
            added += blocking(move || {
                let mut added = 0;
                for id in ids {
                    match volume.delete(id) {
                        Ok(()) => added += 1,
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(added)
            })
            .await?
            .map_err(|e| grpc_status(&e, None))?;
        }
        Ok(added)
    }
}

impl Worker for JournalSync {
    fn name(&self) -> String {
        "erasure-journals".into()
    }

    fn progress(&self) -> String {
        self.last
            .map(|id| format!("volume {id}"))
            .unwrap_or_default()
    }

    fn starts_busy(&self) -> bool {
        true
    }

    fn interval(&self) -> Option<Duration> {
        Some(self.interval)
    }

    async fn work(&mut self) -> Result<Step, Failed> {
        if self.pass.is_empty() {
            self.pass = self.store.erasure_volumes();
            self.pass.reverse();
        }
        let Some(volume) = self.pass.pop() else {
            return Ok(Step::Idle);
        };
        self.last = Some(volume.id());
        match Self::sync((&self.replication, &self.reads), &volume).await {
            Ok(0) => {}
            Ok(added) => {
                tracing::info!(volume = %volume.id(), added, "deletes journaled from other holders")
            }
            Err(status) => return Err(Failed::new(status.message())),
        }
        Ok(if self.pass.is_empty() {
            Step::Idle
        } else {
            Step::Busy
        })
    }
}

/// Reads every shard held here front to back now and then, checking each
/// 64 KiB chunk against the shard's table; a chunk that fails is restored
/// from `k` other shards and written back only if it then matches the
/// table. One shard a step.
pub struct ShardScrub {
    store: Arc<Store>,
    reads: Arc<ErasureReads>,
    interval: Duration,
    rate: u64,
    pass: Vec<(Arc<EcVolume>, u8)>,
    last: Option<(VolumeId, u8)>,
}

impl ShardScrub {
    /// Every `interval`, reading at most `rate` bytes a second (0:
    /// unlimited).
    pub fn new(store: Arc<Store>, reads: Arc<ErasureReads>, interval: Duration, rate: u64) -> Self {
        ShardScrub {
            store,
            reads,
            interval,
            rate,
            pass: Vec::new(),
            last: None,
        }
    }

    /// Scrubs shard `shard` of `volume`: the chunks mended, or an error
    /// naming those that could not be.
    pub async fn scrub(&self, volume: &Arc<EcVolume>, shard: u8) -> Result<usize, Status> {
        let Some(file) = volume.shard(shard) else {
            return Ok(0);
        };
        let rate = self.rate;
        let scrubbed = Arc::clone(&file);
        let bad = blocking(move || scrubbed.scrub(&mut Throttle::new(rate)))
            .await?
            .map_err(|e| grpc_status(&e, None))?;
        let mut mended = 0;
        let mut failed = Vec::new();
        for chunk in bad {
            tracing::error!(volume = %volume.id(), shard, chunk, "shard chunk fails its checksum");
            let piece = Piece {
                shard,
                offset: chunk * hayloft_storage::erasure::CHUNK_LEN,
                len: hayloft_storage::erasure::CHUNK_LEN,
            };
            let restored = match self.reads.restore(volume, piece).await {
                Ok(bytes) => bytes,
                Err(error) => {
                    failed.push(format!("chunk {chunk}: {error}"));
                    continue;
                }
            };
            let file = Arc::clone(&file);
            match blocking(move || file.repair_chunk(chunk, &restored)).await? {
                Ok(()) => {
                    tracing::info!(volume = %volume.id(), shard, chunk, "shard chunk mended");
                    mended += 1;
                }
                Err(error) => failed.push(format!("chunk {chunk}: {error}")),
            }
        }
        if failed.is_empty() {
            Ok(mended)
        } else {
            Err(Status::data_loss(format!(
                "shard {shard} of volume {}: {}",
                volume.id(),
                failed.join("; ")
            )))
        }
    }
}

impl Worker for ShardScrub {
    fn name(&self) -> String {
        "shard-scrub".into()
    }

    fn progress(&self) -> String {
        self.last
            .map(|(id, shard)| format!("volume {id} shard {shard}"))
            .unwrap_or_default()
    }

    fn interval(&self) -> Option<Duration> {
        Some(self.interval)
    }

    async fn work(&mut self) -> Result<Step, Failed> {
        if self.pass.is_empty() {
            for volume in self.store.erasure_volumes() {
                for shard in volume.held() {
                    self.pass.push((Arc::clone(&volume), shard));
                }
            }
            self.pass.reverse();
        }
        let Some((volume, shard)) = self.pass.pop() else {
            return Ok(Step::Idle);
        };
        self.last = Some((volume.id(), shard));
        let then = if self.pass.is_empty() {
            Step::Idle
        } else {
            Step::Busy
        };
        match self.scrub(&volume, shard).await {
            Ok(_) => Ok(then),
            Err(status) => Err(Failed {
                error: status.message().to_owned(),
                then,
            }),
        }
    }
}
