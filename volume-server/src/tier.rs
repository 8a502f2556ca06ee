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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hayloft_proto::{MoveJobStatus, MoveVolumeRequest, VolumeState};
use hayloft_storage::cold::{ColdManifest, ColdVolume};
use hayloft_storage::moves::{MoveJob, UploadedPart, moving_paths};
use hayloft_storage::volume::{now_unix_secs, volume_paths};
use hayloft_storage::{Cookie, Error, Handle, Needle, NeedleId, Store, Tier, VolumeId};
use hayloft_tiering::object::{ObjectError, ObjectStore, Restore, md5_of, multipart_etag};
use parking_lot::Mutex;

use crate::reads::ReadStats;
use crate::status::proto_tier;

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
            started_at: now_unix_secs(),
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
            from: proto_tier(self.from) as i32,
            target: proto_tier(self.target) as i32,
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

    /// Reads a needle of a cold volume: one ranged GET, verified.
    pub async fn read_cold(
        &self,
        volume: &Arc<ColdVolume>,
        id: NeedleId,
        cookie: Cookie,
    ) -> Result<Needle, ColdReadError> {
        let range = volume.locate(id)?;
        let bytes = self.fetch(volume, range).await?;
        Ok(volume.decode(id, cookie, bytes)?)
    }

    async fn fetch(
        &self,
        volume: &Arc<ColdVolume>,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, ColdReadError> {
        let objects = self
            .objects
            .as_ref()
            .ok_or_else(|| ColdReadError::Unavailable("no cold store configured".into()))?;
        let manifest = volume.manifest();
        match objects
            .get_range(&manifest.bucket, &manifest.key, range)
            .await
        {
            Ok(bytes) => {
                if self.restores.lock().remove(&volume.id()).is_some() {
                    self.heartbeat_now.notify_one();
                }
                Ok(bytes)
            }
            Err(ObjectError::Archived) => {
                self.request_restore(volume).await;
                Err(ColdReadError::Archived(self.settings.restore_retry_after))
            }
            Err(e) => Err(ColdReadError::Unavailable(e.to_string())),
        }
    }

    /// Starts a restore of an archived volume's object, unless this server
    /// started one within the restore's lifetime.
    async fn request_restore(&self, volume: &Arc<ColdVolume>) {
        let Some(objects) = &self.objects else { return };
        let lifetime =
            Duration::from_secs(u64::from(self.settings.restore_days.max(1) as u32) * 86_400);
        {
            let mut restores = self.restores.lock();
            if restores
                .get(&volume.id())
                .is_some_and(|t| t.elapsed() < lifetime)
            {
                return;
            }
            restores.insert(volume.id(), Instant::now());
        }
        let manifest = volume.manifest();
        match objects
            .restore(&manifest.bucket, &manifest.key, self.settings.restore_days)
            .await
        {
            Ok(()) => {
                metrics::counter!("hayloft_tier_restores_started_total").increment(1);
                tracing::info!(volume = %volume.id(), key = %manifest.key, "restore started");
                self.heartbeat_now.notify_one();
            }
            Err(error) => {
                tracing::warn!(volume = %volume.id(), %error, "restore request failed");
                self.restores.lock().remove(&volume.id());
            }
        }
    }

    /// Deletes a needle of a cold volume: the header is fetched to check
    /// the cookie, then the delete is recorded locally.
    pub async fn delete_cold(
        &self,
        volume: &Arc<ColdVolume>,
        id: NeedleId,
        cookie: Cookie,
    ) -> Result<(), ColdReadError> {
        let range = volume.locate(id)?;
        let header_end =
            (range.start + hayloft_storage::format::NEEDLE_HEADER_LEN as u64).min(range.end);
        let bytes = self.fetch(volume, range.start..header_end).await?;
        volume.check_header(id, cookie, &bytes)?;
        let volume = Arc::clone(volume);
        blocking(move || volume.delete(id)).await?;
        Ok(())
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

    async fn to_cold(&self, job: &Arc<JobState>, request: &MoveRequest) -> Result<(), MoveError> {
        let volume = self.store.volume(job.volume)?;
        job.step("sealing");
        let sealing = Arc::clone(&volume);
        blocking(move || sealing.seal()).await?;
        let object_len = volume.data_len();
        let key = format!("{}{}-{}.dat", request.prefix, job.volume, now_unix_secs());
        let pending = MoveJob::ToCold {
            volume: job.volume.0,
            dir: volume.dir().to_owned(),
            bucket: request.bucket.clone(),
            key,
            storage_class: request.class.clone(),
            part_size: self.settings.part_size,
            object_len,
            upload_id: None,
            parts: Vec::new(),
        };
        let stored = pending.clone();
        blocking(move || stored.store()).await?;
        self.upload(job, pending).await
    }

    /// Uploads (or resumes uploading) a volume's data file, verifies it and
    /// switches the volume to cold.
    async fn upload(&self, job: &Arc<JobState>, mut pending: MoveJob) -> Result<(), MoveError> {
        let objects = self.objects()?.clone();
        let MoveJob::ToCold {
            dir,
            bucket,
            key,
            storage_class,
            part_size,
            object_len,
            ..
        } = pending.clone()
        else {
            return Err(MoveError::Invalid("not an upload".into()));
        };
        let id = job.volume;
        let (dat, _, _) = volume_paths(&dir, id);
        let part_count = object_len.div_ceil(part_size).max(1);
        job.total.store(object_len, Ordering::Relaxed);
        job.step("uploading");
        let mut md5s = Vec::with_capacity(part_count as usize);
        let mut throttle = hayloft_storage::moves::Throttle::new(self.settings_rate(job));
        let mut backoff = Duration::from_millis(200);
        let mut other_errors = 0;
        let mut n = 1u64;
        while n <= part_count {
            let start = (n - 1) * part_size;
            let len = part_size.min(object_len - start);
            let path = dat.clone();
            let mut body = blocking(move || read_range(&path, start, len)).await?;
            let md5 = md5_of(&body);
            if n as usize > md5s.len() {
                md5s.push(md5);
            }
            let already = match &pending {
                MoveJob::ToCold { parts, .. } => parts.iter().any(|p| p.number == n as i32),
                _ => false,
            };
            if already {
                job.done.fetch_add(len, Ordering::Relaxed);
                n += 1;
                continue;
            }
            if hayloft_storage::failpoint::active("tier-corrupt-upload")
                && n == 1
                && !body.is_empty()
            {
                let mut bad = body.to_vec();
                bad[0] ^= 0xff;
                body = Bytes::from(bad);
            }
            let attempt = async {
                let upload_id = match &pending {
                    MoveJob::ToCold {
                        upload_id: Some(u), ..
                    } => u.clone(),
                    _ => {
                        let u = objects.create_upload(&bucket, &key, &storage_class).await?;
                        if let MoveJob::ToCold {
                            upload_id, parts, ..
                        } = &mut pending
                        {
                            *upload_id = Some(u.clone());
                            parts.clear();
                        }
                        u
                    }
                };
                objects
                    .upload_part(&bucket, &key, &upload_id, n as i32, body.clone())
                    .await
            };
            match attempt.await {
                Ok(etag) => {
                    if let MoveJob::ToCold { parts, .. } = &mut pending {
                        parts.push(UploadedPart {
                            number: n as i32,
                            etag,
                        });
                    }
                    let stored = pending.clone();
                    blocking(move || stored.store()).await?;
                    job.done.fetch_add(len, Ordering::Relaxed);
                    backoff = Duration::from_millis(200);
                    other_errors = 0;
                    if hayloft_storage::failpoint::active("tier-crash-after-part") {
                        tracing::error!("failpoint tier-crash-after-part: exiting");
                        std::process::exit(86);
                    }
                    tokio::time::sleep(throttle.delay_for(len)).await;
                    n += 1;
                }
                Err(ObjectError::NoSuchUpload) => {
                    tracing::warn!(volume = %id, "multipart upload lost; starting over");
                    if let MoveJob::ToCold {
                        upload_id, parts, ..
                    } = &mut pending
                    {
                        *upload_id = None;
                        parts.clear();
                    }
                    job.done.store(0, Ordering::Relaxed);
                    md5s.clear();
                    n = 1;
                }
                Err(e) if e.is_transient() => {
                    job.attempts.fetch_add(1, Ordering::Relaxed);
                    *job.error.lock() = format!("retrying: {e}");
                    // A store that answers but keeps failing the part may
                    // have lost the upload without saying NoSuchUpload
                    // (some servers answer 500): start a new upload.
                    if matches!(e, ObjectError::Other(_)) {
                        other_errors += 1;
                        if other_errors >= 3 {
                            tracing::warn!(volume = %id, "upload keeps failing; starting a new one");
                            if let MoveJob::ToCold {
                                upload_id: Some(u), ..
                            } = &pending
                            {
                                let _ = objects.abort_upload(&bucket, &key, u).await;
                            }
                            if let MoveJob::ToCold {
                                upload_id, parts, ..
                            } = &mut pending
                            {
                                *upload_id = None;
                                parts.clear();
                            }
                            job.done.store(0, Ordering::Relaxed);
                            md5s.clear();
                            other_errors = 0;
                            n = 1;
                            continue;
                        }
                    }
                    tracing::warn!(volume = %id, part = n, error = %e, ?backoff, "upload part failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e.into()),
            }
        }
        job.error.lock().clear();
        job.step("verifying");
        let (upload_id, parts) = match &pending {
            MoveJob::ToCold {
                upload_id: Some(u),
                parts,
                ..
            } => (u.clone(), parts.clone()),
            _ => return Err(MoveError::Invalid("upload without an id".into())),
        };
        let expected = multipart_etag(&md5s);
        let part_list: Vec<(i32, String)> =
            parts.iter().map(|p| (p.number, p.etag.clone())).collect();
        let completed = retry_transient(job, || {
            objects.complete_upload(&bucket, &key, &upload_id, &part_list)
        })
        .await;
        if let Err(e) = completed {
            // The object may exist from an earlier completion (a crash
            // after completing): the HEAD below decides.
            tracing::warn!(volume = %id, error = %e, "completing the upload failed");
        }
        let info = retry_transient(job, || objects.head(&bucket, &key)).await?;
        if info.len != object_len || info.etag != expected {
            let _ = objects.delete(&bucket, &key).await;
            let _ = pending.remove();
            return Err(MoveError::Mismatch(format!(
                "object {key} has {} bytes, ETag {}; expected {object_len} bytes, ETag {expected}",
                info.len, info.etag
            )));
        }
        if hayloft_storage::failpoint::active("tier-crash-before-switch") {
            tracing::error!("failpoint tier-crash-before-switch: exiting");
            std::process::exit(86);
        }
        job.step("switching");
        let volume = self.store.volume(id)?;
        let manifest = ColdManifest {
            version: hayloft_storage::cold::MANIFEST_VERSION,
            bucket: bucket.clone(),
            key: key.clone(),
            storage_class: info.storage_class.clone(),
            object_len,
            etag: expected,
            part_size,
            uploaded_at: now_unix_secs(),
            expires_at: volume.expires_at(),
        };
        let store = Arc::clone(&self.store);
        blocking(move || store.commit_to_cold(id, &manifest, &pending)).await?;
        Ok(())
    }

    /// Fetches the cold files of the copy of volume `id` on `source`.
    async fn fetch_cold_index(
        &self,
        id: VolumeId,
        source: &str,
    ) -> Result<hayloft_proto::ColdIndexResponse, MoveError> {
        let unreachable = |e: String| MoveError::Invalid(format!("copy on {source}: {e}"));
        let channel = self
            .settings
            .credential
            .endpoint(source)
            .map_err(|e| unreachable(e.message().to_owned()))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(300))
            .connect()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(hayloft_proto::volume_client::VolumeClient::new(
            self.settings.credential.channel(channel),
        )
        .max_decoding_message_size(usize::MAX)
        .cold_index(hayloft_proto::ColdIndexRequest { volume_id: id.0 })
        .await
        .map_err(|e| unreachable(e.message().to_owned()))?
        .into_inner())
    }

    /// A new cold copy of volume `id`, which this server does not hold, on
    /// the object the cold copy on `source` reads: its files are fetched,
    /// the object is checked against the manifest, then the copy is
    /// installed.
    pub async fn install_cold(&self, id: VolumeId, source: &str) -> Result<(), MoveError> {
        let objects = self.objects()?.clone();
        let reply = self.fetch_cold_index(id, source).await?;
        let label = std::path::PathBuf::from(format!("{source}/{id}.cold"));
        let manifest = ColdManifest::decode(&reply.manifest, &label)?;
        let info = objects
            .head(&manifest.bucket, &manifest.key)
            .await
            .map_err(MoveError::Object)?;
        if info.len != manifest.object_len || info.etag != manifest.etag {
            return Err(MoveError::Mismatch(format!(
                "object {} has {} bytes, ETag {}; its manifest says {} bytes, ETag {}",
                manifest.key, info.len, info.etag, manifest.object_len, manifest.etag
            )));
        }
        let tombstones = hayloft_storage::cold::parse_tombs(&reply.tombstones);
        let store = Arc::clone(&self.store);
        blocking(move || store.install_cold(id, &manifest, &reply.index, &tombstones, &reply.meta))
            .await?;
        tracing::info!(volume = %id, %source, "cold copy installed");
        self.heartbeat_now.notify_one();
        Ok(())
    }

    /// A cold copy catches up with the cold copy on `source` (same object):
    /// every needle deleted there is deleted here. Returns how many were.
    pub async fn merge_cold(&self, id: VolumeId, source: &str) -> Result<usize, MoveError> {
        let cold = self.store.cold_volume(id)?;
        let reply = self.fetch_cold_index(id, source).await?;
        let (manifest_path, _, _) = hayloft_storage::cold::cold_paths(cold.dir(), id);
        let theirs = ColdManifest::decode(&reply.manifest, &manifest_path)?;
        let ours = cold.manifest();
        if (&theirs.bucket, &theirs.key, &theirs.etag) != (&ours.bucket, &ours.key, &ours.etag) {
            return Err(MoveError::Invalid(format!(
                "the copy on {source} is cold on another object ({}/{})",
                theirs.bucket, theirs.key
            )));
        }
        let mut deleted = hayloft_storage::cold::parse_tombs(&reply.tombstones);
        let index = hayloft_storage::cold::parse_index(&reply.index, id, &manifest_path)?;
        deleted.extend(index.iter().filter(|e| e.tombstone).map(|e| e.needle_id));
        let live: std::collections::HashSet<NeedleId> = cold.needle_ids().into_iter().collect();
        deleted.retain(|n| live.contains(n));
        let count = deleted.len();
        blocking(move || {
            for needle in deleted {
                match cold.delete(needle) {
                    Err(e) if e.is_not_found() => {}
                    other => other?,
                }
            }
            Ok(())
        })
        .await?;
        tracing::info!(volume = %id, %source, tombstones = count, "cold copy caught up");
        Ok(count)
    }

    /// Takes this local copy of a replicated volume to cold on the object
    /// that the copy on `source` uploaded: its index and tombstones are
    /// fetched, the object is checked against its manifest, and the store
    /// switches only if every needle live here is in that index.
    async fn share_cold(&self, job: &Arc<JobState>, source: &str) -> Result<(), MoveError> {
        let objects = self.objects()?.clone();
        let id = job.volume;
        job.step("fetching index");
        let reply = self.fetch_cold_index(id, source).await?;
        let volume = self.store.volume(id)?;
        let (manifest_path, _, _) = hayloft_storage::cold::cold_paths(volume.dir(), id);
        let manifest = ColdManifest::decode(&reply.manifest, &manifest_path)?;
        let tombstones = hayloft_storage::cold::parse_tombs(&reply.tombstones);
        job.total.store(manifest.object_len, Ordering::Relaxed);
        job.step("checking object");
        let info = retry_transient(job, || objects.head(&manifest.bucket, &manifest.key)).await?;
        if info.len != manifest.object_len || info.etag != manifest.etag {
            return Err(MoveError::Mismatch(format!(
                "object {} has {} bytes, ETag {}; its manifest says {} bytes, ETag {}",
                manifest.key, info.len, info.etag, manifest.object_len, manifest.etag
            )));
        }
        job.step("switching");
        let sealing = Arc::clone(&volume);
        blocking(move || sealing.seal()).await?;
        drop(volume);
        let store = Arc::clone(&self.store);
        blocking(move || store.adopt_cold(id, &manifest, &reply.index, &tombstones)).await?;
        job.done
            .store(job.total.load(Ordering::Relaxed), Ordering::Relaxed);
        Ok(())
    }

    /// A cold copy's manifest, index and tombstones, byte for byte.
    pub fn cold_files(&self, id: VolumeId) -> Result<hayloft_proto::ColdIndexResponse, Error> {
        let cold = self.store.cold_volume(id)?;
        let (manifest, index, tombs) = hayloft_storage::cold::cold_paths(cold.dir(), id);
        let (_, _, meta) = volume_paths(cold.dir(), id);
        let read = |path: &std::path::Path| match std::fs::read(path) {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io(path, e)),
        };
        Ok(hayloft_proto::ColdIndexResponse {
            manifest: read(&manifest)?,
            index: read(&index)?,
            tombstones: read(&tombs)?,
            meta: read(&meta)?,
        })
    }

    fn settings_rate(&self, _job: &JobState) -> u64 {
        self.settings.bytes_per_sec
    }

    async fn bring_back(
        &self,
        job: &Arc<JobState>,
        cold: &Arc<ColdVolume>,
        request: &MoveRequest,
    ) -> Result<(), MoveError> {
        let objects = self.objects()?.clone();
        let manifest = cold.manifest().clone();
        let id = job.volume;
        job.total.store(manifest.object_len, Ordering::Relaxed);
        // Archived objects are restored first; reads meanwhile answer 503.
        loop {
            let info =
                retry_transient(job, || objects.head(&manifest.bucket, &manifest.key)).await?;
            match info.restore {
                Restore::NotNeeded | Restore::Done => break,
                Restore::Archived => {
                    job.step("restoring");
                    self.request_restore(cold).await;
                }
                Restore::InProgress => job.step("restoring"),
            }
            tokio::time::sleep(self.settings.restore_poll).await;
        }
        let pending = MoveJob::FromCold {
            volume: id.0,
            dir: cold.dir().to_owned(),
            bucket: manifest.bucket.clone(),
            key: manifest.key.clone(),
            committed: false,
            keep_object: request.keep_object,
        };
        let stored = pending.clone();
        blocking(move || stored.store()).await?;
        job.step("downloading");
        let (download, _, _) = moving_paths(cold.dir(), id);
        let result = self
            .download(job, &objects, &manifest, &download, request.rate)
            .await;
        if let Err(e) = result {
            let _ = std::fs::remove_file(&download);
            let _ = pending.remove();
            return Err(e);
        }
        job.step("switching");
        let store = Arc::clone(&self.store);
        if let Err(e) = blocking(move || store.commit_from_cold(id)).await {
            let _ = std::fs::remove_file(&download);
            let _ = pending.remove();
            return Err(e.into());
        }
        self.restores.lock().remove(&id);
        self.finish_from_cold(job, &pending).await
    }

    async fn download(
        &self,
        job: &Arc<JobState>,
        objects: &ObjectStore,
        manifest: &ColdManifest,
        path: &std::path::Path,
        rate: u64,
    ) -> Result<(), MoveError> {
        use std::io::Write;
        let mut file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        let mut md5s = Vec::new();
        let mut throttle = hayloft_storage::moves::Throttle::new(rate);
        let mut start = 0;
        while start < manifest.object_len || md5s.is_empty() {
            let end = (start + manifest.part_size).min(manifest.object_len);
            let bytes = retry_transient(job, || {
                objects.get_range(&manifest.bucket, &manifest.key, start..end)
            })
            .await?;
            if bytes.len() as u64 != end - start {
                return Err(MoveError::Mismatch(format!(
                    "short read at {start}: {} bytes",
                    bytes.len()
                )));
            }
            md5s.push(md5_of(&bytes));
            file.write_all(&bytes).map_err(|e| Error::io(path, e))?;
            job.done.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            tokio::time::sleep(throttle.delay_for(bytes.len() as u64)).await;
            start = end;
            if end == manifest.object_len {
                break;
            }
        }
        file.sync_all().map_err(|e| Error::io(path, e))?;
        let etag = multipart_etag(&md5s);
        if etag != manifest.etag {
            return Err(MoveError::Mismatch(format!(
                "downloaded ETag {etag}, manifest says {}",
                manifest.etag
            )));
        }
        Ok(())
    }

    /// After a move back from cold has switched: delete the object, then the job.
    async fn finish_from_cold(
        &self,
        job: &Arc<JobState>,
        pending: &MoveJob,
    ) -> Result<(), MoveError> {
        let MoveJob::FromCold {
            bucket,
            key,
            keep_object,
            ..
        } = pending
        else {
            return Err(MoveError::Invalid("not a move from cold".into()));
        };
        if *keep_object {
            // Other copies of the volume still read the object.
            let pending = pending.clone();
            blocking(move || pending.remove()).await?;
            return Ok(());
        }
        job.step("deleting object");
        let objects = self.objects()?;
        retry_transient(job, || objects.delete(bucket, key)).await?;
        let pending = pending.clone();
        blocking(move || pending.remove()).await?;
        Ok(())
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

/// Retries an object-store call while it fails transiently (the store is
/// down or slow), with capped backoff; other errors return at once.
async fn retry_transient<T, F, Fut>(job: &JobState, mut call: F) -> Result<T, ObjectError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ObjectError>>,
{
    let mut backoff = Duration::from_millis(200);
    let mut errors = 0;
    loop {
        match call().await {
            // An unreachable store is waited for; other errors get a few tries.
            Err(e)
                if matches!(e, ObjectError::Unreachable(_)) || (e.is_transient() && errors < 5) =>
            {
                errors += 1;
                job.attempts.fetch_add(1, Ordering::Relaxed);
                *job.error.lock() = format!("retrying: {e}");
                tracing::warn!(volume = %job.volume, error = %e, ?backoff, "object store call failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            other => {
                if other.is_ok() {
                    job.error.lock().clear();
                }
                return other;
            }
        }
    }
}

fn read_range(path: &std::path::Path, start: u64, len: u64) -> Result<Bytes, Error> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, start)
        .map_err(|e| Error::io(path, e))?;
    Ok(Bytes::from(buf))
}
