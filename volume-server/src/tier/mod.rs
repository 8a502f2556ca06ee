//! Tier moves and cold reads on a volume server.
//!
//! A move is a job persisted beside the volume (`hayloft_storage::moves`):
//! copy, verify, switch, delete the source. Local moves (hot <-> warm) run in
//! the storage engine; this module adds the object-store legs:
//!
//! - **to cold**: seal, multipart upload of the data file (each part
//!   recorded in the job file, so a crash or an unreachable store resumes
//!   where it stopped), verify the object's length and ETag against MD5s
//!   computed locally, switch (the manifest), delete the local data file;
//! - **from cold**: restore first if the class needs it, download, verify
//!   the ETag, switch back, delete the object.
//!
//! A cold read is one ranged GET of one record, verified by its checksum.
//! For archive classes the read answers "retry after" and starts one restore.
//!
//! The rooms: `upload` (to cold), `download` (back from cold), `share`
//! (copies sharing one cold object), `staged` (an erasure-coded volume's
//! data file uploaded and staged as cold copies), `cold_read` (reads and
//! deletes of cold needles); this file holds the jobs and their runner.

mod cold_read;
mod download;
mod share;
mod staged;
mod upload;

#[allow(unused_imports)]
use cold_read::*;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hayloft_proto::{MoveJobStatus, MoveVolumeRequest, Tier as ProtoTier, VolumeState};
use hayloft_storage::cold::{ColdManifest, ColdVolume};
use hayloft_storage::moves::{MoveJob, UploadedPart, moving_paths};
use hayloft_storage::volume::{unix_now, volume_paths};
use hayloft_storage::{Cookie, Error, Handle, Needle, NeedleId, Store, Tier, VolumeId};
use hayloft_tiering::object::{ObjectError, ObjectStore, Restore, md5_of, multipart_etag};
use parking_lot::Mutex;

use crate::reads::ReadStats;
/// Tiering settings of a volume server.
#[derive(Debug, Clone)]
pub struct TierSettings {
    /// Bytes per multipart part (and per download request).
    pub part_size: u64,
    /// Copy rate limit of a move (0 = unlimited).
    pub bytes_per_sec: u64,
    /// `Retry-After` for reads of an archived volume.
    pub restore_retry_after: Duration,
    /// Days a restored copy stays readable.
    pub restore_days: i32,
    /// How often a move waiting for a restore checks on it.
    pub restore_poll: Duration,
    /// What this server presents to the others (a cold copy's files are
    /// fetched from the server holding it).
    pub credential: hayloft_proto::Credential,
}

/// Why a read of a cold needle failed.
#[derive(Debug)]
pub enum ColdReadError {
    /// A storage error (not found, wrong cookie, corrupt, ...).
    Storage(Error),
    /// The object is archived: a restore was started; retry after this long.
    Archived(Duration),
    /// The object store is unreachable or failed.
    Unavailable(String),
}

impl From<Error> for ColdReadError {
    fn from(e: Error) -> Self {
        ColdReadError::Storage(e)
    }
}

/// A move's progress, as `ListMoves` reports it.
#[derive(Debug)]
pub struct JobState {
    volume: VolumeId,
    from: Tier,
    target: Tier,
    storage_class: String,
    step: Mutex<&'static str>,
    error: Mutex<String>,
    done: AtomicU64,
    total: AtomicU64,
    finished: AtomicBool,
    started_at: u64,
    attempts: AtomicU32,
}

impl JobState {
    fn new(volume: VolumeId, from: Tier, target: Tier, storage_class: &str) -> Arc<Self> {
        Arc::new(JobState {
            volume,
            from,
            target,
            storage_class: storage_class.to_owned(),
            step: Mutex::new("queued"),
            error: Mutex::new(String::new()),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            finished: AtomicBool::new(false),
            started_at: unix_now(),
            attempts: AtomicU32::new(0),
        })
    }

    fn step(&self, step: &'static str) {
        tracing::info!(volume = %self.volume, step, "move");
        *self.step.lock() = step;
    }

    fn status(&self) -> MoveJobStatus {
        MoveJobStatus {
            volume_id: self.volume.0,
            from: ProtoTier::from(self.from) as i32,
            target: ProtoTier::from(self.target) as i32,
            step: (*self.step.lock()).to_owned(),
            done_bytes: self.done.load(Ordering::Relaxed),
            total_bytes: self.total.load(Ordering::Relaxed),
            error: self.error.lock().clone(),
            finished: self.finished.load(Ordering::Relaxed),
            started_at: self.started_at,
            attempts: self.attempts.load(Ordering::Relaxed),
            storage_class: self.storage_class.clone(),
        }
    }
}

/// Why a move failed.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// A storage error.
    #[error(transparent)]
    Storage(#[from] Error),
    /// The object store failed.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// The uploaded or downloaded bytes did not match the source.
    #[error("checksum mismatch: {0}; the source is kept")]
    Mismatch(String),
    /// The request cannot be carried out.
    #[error("{0}")]
    Invalid(String),
}

/// Tiering on one volume server.
pub struct Tiering {
    store: Arc<Store>,
    objects: Option<ObjectStore>,
    settings: TierSettings,
    jobs: Mutex<HashMap<VolumeId, Arc<JobState>>>,
    /// Archived volumes whose restore this server started, and when.
    restores: Mutex<HashMap<VolumeId, Instant>>,
    /// Read counts per volume.
    pub reads: Arc<ReadStats>,
    heartbeat_now: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Tiering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tiering").finish_non_exhaustive()
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(Error::io("", std::io::Error::other(e))))
}

struct MoveRequest {
    target: Tier,
    bucket: String,
    prefix: String,
    class: String,
    rate: u64,
    /// Share the object of the cold copy on this server (gRPC address).
    share_cold_from: String,
    /// From cold: keep the object.
    keep_object: bool,
}

/// Waits between attempts of an object-store call: 200 ms doubling to 5 s.
fn object_store_waits() -> backon::ExponentialBuilder {
    hayloft_proto::retry::doubling(Duration::from_millis(200), Duration::from_secs(5))
}

/// Retries an object-store call while it fails transiently (the store is
/// down or slow), with capped backoff; other errors return at once.
async fn retry_transient<T, F, Fut>(job: &JobState, call: F) -> Result<T, ObjectError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ObjectError>>,
{
    use backon::Retryable;
    let mut errors = 0;
    let result = call
        .retry(object_store_waits())
        .sleep(tokio::time::sleep)
        // An unreachable store is waited for; other errors get a few tries.
        .when(|e| {
            let again =
                matches!(e, ObjectError::Unreachable(_)) || (e.is_transient() && errors < 5);
            if again {
                errors += 1;
            }
            again
        })
        .notify(|e, backoff| {
            job.attempts.fetch_add(1, Ordering::Relaxed);
            *job.error.lock() = format!("retrying: {e}");
            tracing::warn!(volume = %job.volume, error = %e, ?backoff, "object store call failed; retrying");
        })
        .await;
    if result.is_ok() {
        job.error.lock().clear();
    }
    result
}

impl Tiering {
    /// Tiering over `store`; `objects` is the cold tier, if configured.
    pub fn new(
        store: Arc<Store>,
        objects: Option<ObjectStore>,
        settings: TierSettings,
        reads: Arc<ReadStats>,
        heartbeat_now: Arc<tokio::sync::Notify>,
    ) -> Arc<Self> {
        Arc::new(Tiering {
            store,
            objects,
            settings,
            jobs: Mutex::new(HashMap::new()),
            restores: Mutex::new(HashMap::new()),
            reads,
            heartbeat_now,
        })
    }

    fn objects(&self) -> Result<&ObjectStore, MoveError> {
        self.objects
            .as_ref()
            .ok_or_else(|| MoveError::Invalid("no cold store configured ([cold] section)".into()))
    }

    /// State a volume is in from tiering's point of view, for heartbeats.
    pub fn volume_state(&self, id: VolumeId, cold: bool) -> VolumeState {
        if self
            .jobs
            .lock()
            .get(&id)
            .is_some_and(|j| !j.finished.load(Ordering::Relaxed))
        {
            VolumeState::Moving
        } else if cold && self.restores.lock().contains_key(&id) {
            VolumeState::Restoring
        } else if cold {
            VolumeState::Cold
        } else {
            VolumeState::Unspecified
        }
    }

    /// Every move since the server started.
    pub fn list(&self) -> Vec<MoveJobStatus> {
        let mut jobs: Vec<_> = self.jobs.lock().values().map(|j| j.status()).collect();
        jobs.sort_by_key(|j| j.volume_id);
        jobs
    }

    /// Starts a move; it runs in the background (see [`Tiering::list`]).
    pub fn start(self: &Arc<Self>, request: MoveVolumeRequest) -> Result<(), MoveError> {
        let id = VolumeId(request.volume_id);
        let target = match hayloft_proto::Tier::try_from(request.target) {
            Ok(hayloft_proto::Tier::Hot) => Tier::Hot,
            Ok(hayloft_proto::Tier::Warm) => Tier::Warm,
            Ok(hayloft_proto::Tier::Cold) => Tier::Cold,
            _ => {
                return Err(MoveError::Invalid(
                    "target tier must be hot, warm or cold".into(),
                ));
            }
        };
        let handle = self.store.handle(id)?;
        let from = match &handle {
            Handle::Local(v) => v.tier(),
            Handle::Cold(_) => Tier::Cold,
        };
        let sharing = !request.share_cold_from.is_empty();
        if sharing && (target != Tier::Cold || from == Tier::Cold) {
            return Err(MoveError::Invalid(
                "share_cold_from takes a local copy to cold".into(),
            ));
        }
        let class = if sharing {
            self.objects()?;
            String::new()
        } else if target == Tier::Cold {
            let class = if request.storage_class.is_empty() {
                "STANDARD".to_owned()
            } else {
                request.storage_class.clone()
            };
            if !hayloft_tiering::object::STORAGE_CLASSES.contains(&class.as_str()) {
                return Err(MoveError::Invalid(format!("unknown storage class {class}")));
            }
            if request.bucket.is_empty() {
                return Err(MoveError::Invalid("a move to cold needs a bucket".into()));
            }
            self.objects()?;
            class
        } else {
            String::new()
        };
        if from == target {
            return Ok(());
        }
        if from == Tier::Cold {
            self.objects()?;
        }
        let job = JobState::new(id, from, target, &class);
        {
            let mut jobs = self.jobs.lock();
            if jobs
                .get(&id)
                .is_some_and(|j| !j.finished.load(Ordering::Relaxed))
            {
                return Err(MoveError::Invalid(format!("volume {id} is already moving")));
            }
            jobs.insert(id, Arc::clone(&job));
        }
        let rate = if request.bytes_per_sec > 0 {
            request.bytes_per_sec
        } else {
            self.settings.bytes_per_sec
        };
        let this = Arc::clone(self);
        let request = MoveRequest {
            target,
            bucket: request.bucket,
            prefix: request.prefix,
            class,
            rate,
            share_cold_from: request.share_cold_from,
            keep_object: request.keep_object,
        };
        tokio::spawn(async move { this.run(job, request, None).await });
        Ok(())
    }

    /// Resumes the moves the store found interrupted when it opened.
    pub fn resume_pending(self: &Arc<Self>) {
        for pending in self.store.take_pending_moves() {
            let id = pending.volume();
            let (from, target, class) = match &pending {
                MoveJob::ToCold { storage_class, .. } => {
                    (Tier::Warm, Tier::Cold, storage_class.clone())
                }
                MoveJob::FromCold { .. } => (Tier::Cold, Tier::Warm, String::new()),
                MoveJob::Local { to_tier, .. } => (Tier::Hot, *to_tier, String::new()),
            };
            let from = match self.store.handle(id) {
                Ok(Handle::Local(v)) => v.tier(),
                _ => from,
            };
            tracing::info!(volume = %id, "resuming interrupted move");
            let job = JobState::new(id, from, target, &class);
            self.jobs.lock().insert(id, Arc::clone(&job));
            let this = Arc::clone(self);
            let request = MoveRequest {
                target,
                bucket: String::new(),
                prefix: String::new(),
                class,
                rate: self.settings.bytes_per_sec,
                share_cold_from: String::new(),
                keep_object: false,
            };
            tokio::spawn(async move { this.run(job, request, Some(pending)).await });
        }
    }

    async fn run(
        self: Arc<Self>,
        job: Arc<JobState>,
        request: MoveRequest,
        resume: Option<MoveJob>,
    ) {
        self.heartbeat_now.notify_one();
        let started = Instant::now();
        let result = self.run_inner(&job, &request, resume).await;
        let outcome = match &result {
            Ok(()) => "ok",
            Err(_) => "error",
        };
        metrics::counter!("hayloft_tier_moves_total",
            "target" => request.target.as_str(), "result" => outcome)
        .increment(1);
        metrics::counter!("hayloft_tier_moved_bytes_total", "target" => request.target.as_str())
            .increment(job.done.load(Ordering::Relaxed));
        match result {
            Ok(()) => {
                job.step("done");
                tracing::info!(volume = %job.volume, target = %request.target,
                    seconds = started.elapsed().as_secs_f64(), "move finished");
            }
            Err(error) => {
                tracing::error!(volume = %job.volume, %error, "move failed");
                *job.error.lock() = error.to_string();
                job.step("failed");
            }
        }
        job.finished.store(true, Ordering::Relaxed);
        self.heartbeat_now.notify_one();
    }

    async fn run_inner(
        &self,
        job: &Arc<JobState>,
        request: &MoveRequest,
        resume: Option<MoveJob>,
    ) -> Result<(), MoveError> {
        match resume {
            Some(pending @ MoveJob::ToCold { .. }) => return self.upload(job, pending).await,
            Some(pending @ MoveJob::FromCold { .. }) => {
                return self.finish_from_cold(job, &pending).await;
            }
            Some(MoveJob::Local { .. }) | None => {}
        }
        let id = job.volume;
        match (self.store.handle(id)?, request.target) {
            (Handle::Local(_), Tier::Cold) if !request.share_cold_from.is_empty() => {
                self.share_cold(job, &request.share_cold_from).await
            }
            (Handle::Local(_), Tier::Cold) => self.to_cold(job, request).await,
            (Handle::Local(volume), target) => {
                job.step("copying");
                job.total.store(volume.data_len(), Ordering::Relaxed);
                let store = Arc::clone(&self.store);
                let progress = Arc::clone(job);
                let rate = request.rate;
                blocking(move || store.move_local(id, target, rate, &progress.done)).await?;
                Ok(())
            }
            (Handle::Cold(cold), target) => {
                self.bring_back(job, &cold, request).await?;
                // The data comes back to the disk the volume left from; a
                // local move then takes it where it was asked to go.
                if self.store.volume(id)?.tier() != target {
                    job.step("copying");
                    let store = Arc::clone(&self.store);
                    let progress = Arc::clone(job);
                    let rate = request.rate;
                    blocking(move || store.move_local(id, target, rate, &progress.done)).await?;
                }
                Ok(())
            }
        }
    }

    fn settings_rate(&self, _job: &JobState) -> u64 {
        self.settings.bytes_per_sec
    }

    /// Deletes a whole volume (retention): local files, or the local index
    /// and the cold object (unless `keep_object`: another copy reads it).
    pub async fn delete_volume(&self, id: VolumeId, keep_object: bool) -> Result<(), MoveError> {
        if self
            .jobs
            .lock()
            .get(&id)
            .is_some_and(|j| !j.finished.load(Ordering::Relaxed))
        {
            return Err(MoveError::Invalid(format!("volume {id} is moving")));
        }
        let store = Arc::clone(&self.store);
        let handle = blocking(move || store.delete_volume(id)).await?;
        if let (Handle::Cold(cold), false) = (handle, keep_object) {
            let manifest = cold.manifest();
            self.objects()?
                .delete(&manifest.bucket, &manifest.key)
                .await?;
        }
        tracing::info!(volume = %id, "volume deleted");
        self.heartbeat_now.notify_one();
        Ok(())
    }
}
