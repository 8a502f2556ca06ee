//! Anti-entropy and repair: a copy of a volume pulls what it lacks from the
//! other copies.
//!
//! Each copy compares a digest per range of 2^[`RANGE_BITS`] needle ids with
//! a source's; for each range that differs it lists the source's needles and
//! copies what it lacks: live needles (byte for byte, the checksum checked
//! on both ends) and tombstones. The merge is one-way per pass and never
//! loses a delete: a tombstone always wins over a live needle (ids are
//! never handed out twice), so no copy ever takes a deleted needle back.
//! Every copy pulling from every other makes them equal.
//!
//! The same pull is the repair: a new (empty) copy of a volume, or a copy on
//! a replaced disk, is filled by `SyncVolume` from the healthy ones; a stale
//! copy catches up the same way. A pass is idempotent, so a sync interrupted
//! by a crash of either side is simply run again and copies only what is
//! still missing. Copies are throttled by `repair_rate`.
//!
//! Scrub: now and then each copy checksums every needle; one that fails is
//! copied again from another copy (the bad record becomes garbage).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use hayloft_proto::background::{Failed, Step, Worker};
use hayloft_proto::{
    FetchNeedleRequest, ListNeedlesRequest, NeedleDigestsRequest, ServerLocation, SyncProgress,
};
use hayloft_storage::Throttle;
use hayloft_storage::{BlobId, Cookie, NeedleId, NeedleMeta, Store, Volume, VolumeId};
use parking_lot::Mutex;
use tonic::Status;

use crate::blocking::blocking;
use crate::error::{etag, grpc_status};
use crate::replicate::Replication;

/// Anti-entropy compares ranges of 2^RANGE_BITS needle ids.
pub const RANGE_BITS: u32 = 12;

/// How long a source may take to answer one anti-entropy call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Small needles a sync fetches at once from one source.
const COPIES_IN_FLIGHT: usize = 16;

/// Needles up to this size are fetched [`COPIES_IN_FLIGHT`] at once.
const SMALL_COPY: u64 = 64 << 10;

/// Pulls missing needles and tombstones from the other copies.
pub struct AntiEntropy {
    store: Arc<Store>,
    replication: Arc<Replication>,
    repair_rate: u64,
    /// One lock per volume: one sync of a volume at a time. The map is held
    /// only to find a volume's lock; the volume's lock is held (async) for
    /// the whole sync.
    running: Mutex<HashMap<u32, Arc<tokio::sync::Mutex<()>>>>,
    /// When each volume was last scrubbed.
    scrubbed: Mutex<HashMap<u32, Instant>>,
}

fn timed_out(what: &str, server: &str) -> Status {
    Status::unavailable(format!(
        "{server} did not answer {what} within {CALL_TIMEOUT:?}"
    ))
}

impl AntiEntropy {
    /// Anti-entropy over `store`, reaching the other copies through
    /// `replication`, copying at most `repair_rate` bytes a second (0 =
    /// unlimited).
    pub fn new(store: Arc<Store>, replication: Arc<Replication>, repair_rate: u64) -> Self {
        AntiEntropy {
            store,
            replication,
            repair_rate,
            running: Mutex::new(HashMap::new()),
            scrubbed: Mutex::new(HashMap::new()),
        }
    }

    /// Brings the local copy of `volume_id` in line with each of `sources`,
    /// sending progress to `progress` as it goes. An unreachable source is
    /// noted in the result and skipped.
    ///
    /// # Errors
    /// The volume is not here, is already syncing, or a local write failed.
    /// `wait`: wait for a sync of the volume already running, rather than
    /// answer ABORTED.
    pub async fn sync(
        &self,
        volume_id: u32,
        sources: &[ServerLocation],
        bytes_per_sec: u64,
        wait: bool,
        progress: Option<&tokio::sync::mpsc::Sender<Result<SyncProgress, Status>>>,
    ) -> Result<SyncProgress, Status> {
        let volume = self
            .store
            .volume(VolumeId(volume_id))
            .map_err(|e| grpc_status(&e, None))?;
        let lock = Arc::clone(self.running.lock().entry(volume_id).or_default());
        // A requested sync (a repair) waits for one running (the periodic
        // pass); the periodic pass skips a volume that is syncing.
        let _syncing = if wait {
            lock.lock_owned().await
        } else {
            lock.try_lock_owned()
                .map_err(|_| Status::aborted(format!("volume {volume_id} is already syncing")))?
        };
        // Tests: a copy that cannot take what the others hold (as a full
        // volume once refused it).
        if hayloft_storage::failpoint::active("sync-copy") {
            return Err(Status::resource_exhausted(format!(
                "failpoint sync-copy: volume {volume_id} cannot take the needles it lacks"
            )));
        }
        let rate = if bytes_per_sec == 0 {
            self.repair_rate
        } else {
            bytes_per_sec
        };
        let mut throttle = Throttle::new(rate);
        let mut report = SyncProgress::default();
        for source in sources {
            if source.server_id == self.replication.server_id() {
                continue;
            }
            if let Err(status) = self
                .pull(&volume, source, &mut throttle, &mut report, progress)
                .await
            {
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                ) {
                    tracing::warn!(volume = volume_id, source = %source.server_id,
                        error = %status.message(), "anti-entropy source unreachable");
                    report.unreachable.push(source.server_id.clone());
                } else {
                    return Err(status);
                }
            }
        }
        metrics::counter!("hayloft_volume_anti_entropy_copied_total", "kind" => "needle")
            .increment(report.needles_copied);
        metrics::counter!("hayloft_volume_anti_entropy_copied_total", "kind" => "tombstone")
            .increment(report.tombstones_copied);
        metrics::counter!("hayloft_volume_repair_bytes_total").increment(report.bytes_copied);
        report.done = true;
        Ok(report)
    }

    /// One pass against one source.
    async fn pull(
        &self,
        volume: &Arc<Volume>,
        source: &ServerLocation,
        throttle: &mut Throttle,
        report: &mut SyncProgress,
        progress: Option<&tokio::sync::mpsc::Sender<Result<SyncProgress, Status>>>,
    ) -> Result<(), Status> {
        let volume_id = volume.id().0;
        let mut client = self.replication.client(source)?;
        let theirs = tokio::time::timeout(
            CALL_TIMEOUT,
            client.needle_digests(NeedleDigestsRequest {
                volume_id,
                range_bits: RANGE_BITS,
            }),
        )
        .await
        .map_err(|_| timed_out("NeedleDigests", &source.server_id))??
        .into_inner()
        .ranges;
        let ours: HashMap<u64, (u64, u64)> = {
            let volume = Arc::clone(volume);
            blocking(move || volume.range_digests(RANGE_BITS))
                .await?
                .into_iter()
                .map(|d| (d.start.0, (d.count, d.hash)))
                .collect()
        };
        for range in theirs {
            report.ranges_compared += 1;
            if ours.get(&range.start) == Some(&(range.count, range.hash)) {
                continue;
            }
            report.ranges_differing += 1;
            let end = range.start.saturating_add(1 << RANGE_BITS);
            let listed = tokio::time::timeout(
                CALL_TIMEOUT,
                client.list_needles(ListNeedlesRequest {
                    volume_id,
                    from: range.start,
                    to: end,
                }),
            )
            .await
            .map_err(|_| timed_out("ListNeedles", &source.server_id))??
            .into_inner()
            .needles;
            let local: HashMap<NeedleId, hayloft_storage::NeedleState> = {
                let volume = Arc::clone(volume);
                blocking(move || volume.needle_states(NeedleId(range.start), NeedleId(end)))
                    .await?
                    .into_iter()
                    .map(|s| (s.id, s))
                    .collect()
            };
            let mut missing = Vec::new();
            for entry in listed {
                let id = NeedleId(entry.needle_id);
                let cookie = Cookie(entry.cookie);
                match (entry.deleted, local.get(&id)) {
                    (_, Some(ours)) if ours.deleted => {}
                    (true, _) => {
                        let volume = Arc::clone(volume);
                        match blocking(move || volume.delete_copied(id, cookie)).await? {
                            Ok(true) => report.tombstones_copied += 1,
                            Ok(false) => {}
                            Err(e) => {
                                tracing::warn!(volume = volume_id, needle = %id, error = %e,
                                    "tombstone from another copy not applied");
                            }
                        }
                    }
                    (false, None) => missing.push((id, cookie, entry.size)),
                    (false, Some(ours)) => {
                        if ours.cookie != cookie || ours.data_len != entry.size {
                            tracing::error!(volume = volume_id, needle = %id, source = %source.server_id,
                                "copies disagree on a needle's cookie or length");
                        }
                    }
                }
            }
            // Small needles several at once, so that their writes share
            // fsyncs (a volume of small blobs would otherwise copy at one
            // needle per fsync); large ones one at a time. A burst is at most
            // COPIES_IN_FLIGHT small needles beyond `repair_rate`.
            let (small, large): (Vec<_>, Vec<_>) = missing
                .into_iter()
                .partition(|(_, _, size)| *size <= SMALL_COPY);
            for (batch, in_flight) in [(small, COPIES_IN_FLIGHT), (large, 1)] {
                let mut copies = futures::stream::iter(batch.into_iter().map(|(id, cookie, _)| {
                    let mut client = client.clone();
                    async move { copy_needle(volume, &mut client, source, id, cookie).await }
                }))
                .buffer_unordered(in_flight);
                while let Some(copied) = copies.next().await {
                    let copied = copied?;
                    if copied > 0 {
                        report.needles_copied += 1;
                        report.bytes_copied += copied;
                        tokio::time::sleep(throttle.delay_for(copied)).await;
                    }
                }
            }
            if let Some(progress) = progress {
                let _ = progress.try_send(Ok(report.clone()));
            }
        }
        Ok(())
    }
}

/// The metadata a copied needle is written with, as its source said.
pub(crate) fn meta_of(info: &hayloft_proto::BlobInfo) -> NeedleMeta {
    NeedleMeta {
        content_type: info.content_type.clone(),
        file_name: info.file_name.clone(),
        last_modified: info.last_modified,
        expires_at: (info.expires_at != 0).then_some(info.expires_at),
    }
}

/// Copies one live needle from `source` into `volume`; returns its size (0
/// if it went away meanwhile: deleted, or refused here as deleted). Used by
/// anti-entropy (followers of other regions fetch batches: `shipping`).
pub(crate) async fn copy_needle(
    volume: &Arc<Volume>,
    client: &mut hayloft_proto::volume_client::VolumeClient<hayloft_proto::AuthChannel>,
    source: &ServerLocation,
    id: NeedleId,
    cookie: Cookie,
) -> Result<u64, Status> {
    let blob = BlobId { needle: id, cookie };
    let fetched = tokio::time::timeout(
        CALL_TIMEOUT,
        client.fetch_needle(FetchNeedleRequest {
            blob_id: blob.to_string(),
        }),
    )
    .await
    .map_err(|_| timed_out("FetchNeedle", &source.server_id))?;
    let mut stream = match fetched {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == tonic::Code::NotFound => return Ok(0),
        Err(status) if status.code() == tonic::Code::DataLoss => {
            tracing::error!(volume = %volume.id(), needle = %id, source = %source.server_id,
                    "source copy of a needle is corrupt; trying the others");
            return Ok(0);
        }
        Err(status) => return Err(status),
    };
    let first = tokio::time::timeout(CALL_TIMEOUT, stream.message())
        .await
        .map_err(|_| timed_out("FetchNeedle", &source.server_id))??
        .ok_or_else(|| Status::data_loss("fetched needle without metadata"))?;
    let info = first
        .info
        .ok_or_else(|| Status::data_loss("fetched needle without metadata"))?;
    let meta = meta_of(&info);
    let size = info.size;
    let writer = {
        let volume = Arc::clone(volume);
        blocking(move || volume.begin_copy(id, cookie, size, meta)).await?
    };
    let mut writer = match writer {
        Ok(writer) => writer,
        Err(hayloft_storage::Error::NeedleDeleted { .. }) => return Ok(0),
        Err(e) => return Err(grpc_status(&e, Some(blob))),
    };
    let mut chunk = first.chunk;
    loop {
        if !chunk.is_empty() {
            if writer.written() + chunk.len() as u64 > size {
                return Err(Status::data_loss("fetched needle longer than announced"));
            }
            writer = blocking(move || writer.write(&chunk).map(|()| writer))
                .await?
                .map_err(|e| grpc_status(&e, Some(blob)))?;
        }
        match tokio::time::timeout(CALL_TIMEOUT, stream.message())
            .await
            .map_err(|_| timed_out("FetchNeedle", &source.server_id))??
        {
            Some(message) => chunk = message.chunk,
            None => break,
        }
    }
    if writer.written() != size {
        return Err(Status::unavailable("fetched needle cut short"));
    }
    let receipt = blocking(move || writer.finish())
        .await?
        .map_err(|e| grpc_status(&e, Some(blob)))?;
    if etag(receipt.checksum, size) != info.etag {
        tracing::error!(volume = %volume.id(), needle = %id, "copied needle's checksum differs from its source's");
        return Err(Status::data_loss(format!(
            "copy of {blob} does not match its source"
        )));
    }
    Ok(size)
}

impl AntiEntropy {
    /// Checksums every needle of `volume` and copies the corrupt ones again
    /// from another copy; returns how many were replaced.
    pub async fn scrub(&self, volume: &Arc<Volume>, sources: &[ServerLocation]) -> u64 {
        let corrupt = {
            let volume = Arc::clone(volume);
            let rate = self.repair_rate;
            match blocking(move || volume.scrub_throttled(rate)).await {
                Ok(report) => report.corrupt,
                Err(_) => return 0,
            }
        };
        let mut replaced = 0;
        for id in corrupt {
            tracing::error!(volume = %volume.id(), needle = %id, "scrub: checksum failed; copying it again");
            for source in sources {
                let Ok(mut client) = self.replication.client(source) else {
                    continue;
                };
                let listed = client
                    .list_needles(ListNeedlesRequest {
                        volume_id: volume.id().0,
                        from: id.0,
                        to: id.0 + 1,
                    })
                    .await;
                let Some(entry) = listed.ok().and_then(|r| r.into_inner().needles.pop()) else {
                    continue;
                };
                if entry.deleted {
                    let volume = Arc::clone(volume);
                    let _ = blocking(move || volume.delete_copied(id, Cookie(entry.cookie))).await;
                    replaced += 1;
                    break;
                }
                if let Ok(n) =
                    copy_needle(volume, &mut client, source, id, Cookie(entry.cookie)).await
                    && n > 0
                {
                    replaced += 1;
                    break;
                }
            }
        }
        metrics::counter!("hayloft_volume_anti_entropy_copied_total", "kind" => "corrupt")
            .increment(replaced);
        replaced
    }
}

/// The periodic pass as a background worker: every `interval`, for each
/// local volume with other copies, pull from each of them (one volume a
/// step); scrub a volume every `scrub_interval`. Not run with an interval
/// of 0.
pub struct AntiEntropyWorker {
    anti_entropy: Arc<AntiEntropy>,
    interval: Duration,
    scrub_interval: Duration,
    /// The volumes of this pass still to visit.
    pass: VecDeque<Arc<Volume>>,
    /// How many the pass found.
    pass_len: usize,
    /// The volume of the last step.
    last: Option<VolumeId>,
}

impl AntiEntropyWorker {
    /// The periodic pass of `anti_entropy`.
    pub fn new(
        anti_entropy: Arc<AntiEntropy>,
        interval: Duration,
        scrub_interval: Duration,
    ) -> Self {
        AntiEntropyWorker {
            anti_entropy,
            interval,
            scrub_interval,
            pass: VecDeque::new(),
            pass_len: 0,
            last: None,
        }
    }

    /// False with an interval of 0: anti-entropy only when asked (`SyncVolume`).
    pub fn enabled(&self) -> bool {
        !self.interval.is_zero()
    }
}

impl Worker for AntiEntropyWorker {
    fn name(&self) -> String {
        "anti-entropy".into()
    }

    fn progress(&self) -> String {
        match self.last {
            Some(id) => format!(
                "volume {id} ({} of {})",
                self.pass_len - self.pass.len(),
                self.pass_len
            ),
            None => String::new(),
        }
    }

    fn interval(&self) -> Option<Duration> {
        Some(self.interval)
    }

    async fn work(&mut self) -> Result<Step, Failed> {
        let this = &self.anti_entropy;
        if self.pass.is_empty() {
            self.pass = this.store.volumes().into();
            self.pass_len = self.pass.len();
        }
        // The next volume with other copies.
        let (volume, others) = loop {
            let Some(volume) = self.pass.pop_front() else {
                return Ok(Step::Idle);
            };
            let others = this.replication.others_of(volume.id().0);
            if !others.is_empty() {
                break (volume, others);
            }
        };
        let id = volume.id().0;
        self.last = Some(volume.id());
        let then = if self.pass.is_empty() {
            Step::Idle
        } else {
            Step::Busy
        };
        let synced = match this.sync(id, &others, 0, false, None).await {
            Ok(report) if report.needles_copied + report.tombstones_copied > 0 => {
                tracing::info!(
                    volume = id,
                    needles = report.needles_copied,
                    tombstones = report.tombstones_copied,
                    "anti-entropy copied what was missing"
                );
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::Aborted => Ok(()),
            Err(status) => {
                tracing::warn!(volume = id, error = %status.message(), "anti-entropy failed");
                Err(Failed::new(format!("volume {id}: {}", status.message())).then(then))
            }
        };
        // The first scrub of a volume comes one scrub_interval after
        // this server started, not all at once at start-up.
        let due = match this.scrubbed.lock().entry(id) {
            std::collections::hash_map::Entry::Occupied(at) => {
                at.get().elapsed() >= self.scrub_interval
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(Instant::now());
                false
            }
        };
        if due && !self.scrub_interval.is_zero() {
            this.scrubbed.lock().insert(id, Instant::now());
            this.scrub(&volume, &others).await;
        }
        synced.map(|()| then)
    }
}
