//! The leader's erasure-coded upkeep, a background worker: every pulse it
//! resumes open shard rebuilds and the encodes and decodes an earlier
//! leader started (`super::jobs`), plans and starts new ones (each committed
//! as a job first, run on a task of its own: `EcRebuild` on the target,
//! then `ShardMoved`, then the job's end), drops orphan shards (`EcDrop`),
//! and takes copies left by an encode out of the replica set (the repair
//! loop then deletes them as extra copies). The protocol and its failure
//! table: ARCHITECTURE.md, "Rebuilding lost shards".

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hayloft_proto::background::{Failed, Step, Worker};
use hayloft_proto::{EcDropRequest, EcRebuildRequest, Tier};
use hayloft_storage::VolumeId;
use parking_lot::Mutex;

use super::encode::Encoding;
use super::rebuild::{
    RebuildAfter, RebuildResume, ShardRebuild, ShardView, plan_rebuilds, resume_rebuild,
};
use crate::cluster::Cluster;
use crate::repair::{RETRY_MAX, RepairSettings, volume_client};

/// A rebuild that sends no progress for this long has failed.
const REBUILD_SILENCE: Duration = Duration::from_secs(300);

/// Rebuilds running on this leader, and those backing off after failing.
#[derive(Default)]
struct Running {
    /// Volumes whose rebuild runs on a task here. Held only to look up or
    /// change, never across an `.await`.
    volumes: Mutex<HashSet<VolumeId>>,
    /// Volume -> (failures in a row, not tried again before). Locked after
    /// `volumes` if both are, never across an `.await`.
    failing: Mutex<HashMap<VolumeId, (u32, Instant)>>,
}

impl Running {
    fn waiting(&self, now: Instant) -> HashSet<VolumeId> {
        self.failing
            .lock()
            .iter()
            .filter(|(_, (_, retry_at))| now < *retry_at)
            .map(|(volume, _)| *volume)
            .collect()
    }

    /// A failure waits 1 s, doubling with each in a row, at most
    /// [`RETRY_MAX`]; a success forgets them.
    fn ended(&self, volume: VolumeId, ok: bool) {
        let mut failing = self.failing.lock();
        if ok {
            failing.remove(&volume);
            return;
        }
        let entry = failing.entry(volume).or_insert((0, Instant::now()));
        entry.0 += 1;
        let wait = Duration::from_secs(1 << entry.0.min(6).saturating_sub(1)).min(RETRY_MAX);
        entry.1 = Instant::now() + wait;
    }
}

/// The worker (see the module's doc).
pub struct ShardWorker {
    cluster: Arc<Cluster>,
    encoding: Arc<Encoding>,
    settings: RepairSettings,
    pulse: Duration,
    running: Arc<Running>,
    /// The rebuilds' tasks: aborted when the worker is dropped (the
    /// directory stops), so that none outlives it holding the database;
    /// their jobs stay open for the next start to resume.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// This node led at its last round.
    leader: bool,
}

impl Drop for ShardWorker {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl ShardWorker {
    /// Rounds every `pulse` over `cluster`; `encoding` names the volumes
    /// this node is encoding (left alone). Rebuilds start once a shard's
    /// holder has been down for `settings.repair_after` (or reports it bad
    /// for five pulses), at most `settings.max_per_server` jobs to a target,
    /// each at `settings.bytes_per_sec`; orphans go after `repair_after`.
    pub fn new(
        cluster: Arc<Cluster>,
        encoding: Arc<Encoding>,
        settings: RepairSettings,
        pulse: Duration,
    ) -> Self {
        ShardWorker {
            cluster,
            encoding,
            settings,
            pulse,
            running: Arc::default(),
            tasks: Vec::new(),
            leader: false,
        }
    }

    fn after(&self) -> RebuildAfter {
        RebuildAfter {
            down: self.settings.repair_after,
            bad: (self.pulse * 5).max(Duration::from_secs(2)),
        }
    }

    /// Runs `rebuild` (its job committed) on a task of its own.
    fn launch(&mut self, rebuild: ShardRebuild) {
        self.tasks.retain(|task| !task.is_finished());
        self.running.volumes.lock().insert(rebuild.volume_id);
        let (cluster, running) = (Arc::clone(&self.cluster), Arc::clone(&self.running));
        let settings = self.settings.clone();
        self.tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            tracing::info!(volume = rebuild.volume_id.0, shard = rebuild.shard,
                lost = %rebuild.lost, target = %rebuild.target, "shard rebuild started");
            let result = match execute(&cluster, &rebuild, &settings).await {
                Ok(()) => cluster
                    .shard_moved(
                        rebuild.volume_id,
                        rebuild.shard,
                        &rebuild.lost,
                        &rebuild.target,
                    )
                    .await
                    .map_err(|e| e.to_string()),
                Err(error) => Err(error),
            };
            match &result {
                Ok(()) => tracing::info!(volume = rebuild.volume_id.0, shard = rebuild.shard,
                    target = %rebuild.target, seconds = started.elapsed().as_secs_f64(),
                    "shard rebuilt and recorded on its new holder"),
                Err(error) => tracing::warn!(volume = rebuild.volume_id.0,
                    shard = rebuild.shard, target = %rebuild.target, %error,
                    "shard rebuild failed; tried again after a growing wait"),
            }
            // After the result: a leader dying in between finds the job
            // open and the shard on its target, and ends it.
            if let Err(error) = cluster.end_repair(rebuild.volume_id, &rebuild.target).await {
                tracing::warn!(volume = rebuild.volume_id.0, %error,
                    "could not end the rebuild job (the next leader will)");
            }
            cluster.shard_rebuild_ended(
                rebuild.volume_id,
                &result.as_ref().map(drop).map_err(Clone::clone),
            );
            metrics::counter!("hayloft_directory_shard_rebuilds_total",
                "result" => if result.is_ok() { "ok" } else { "failed" })
            .increment(1);
            running.ended(rebuild.volume_id, result.is_ok());
            running.volumes.lock().remove(&rebuild.volume_id);
        }));
    }

    /// Open rebuild jobs no task here runs: resumed on their target,
    /// waited on, or ended.
    async fn resume(&mut self, views: &HashMap<VolumeId, ShardView>, settled: bool) -> Vec<String> {
        let mut failures = Vec::new();
        for job in self.cluster.rebuild_jobs() {
            if self.running.volumes.lock().contains(&job.volume_id()) {
                continue;
            }
            match resume_rebuild(&job, views.get(&job.volume_id()), settled) {
                RebuildResume::Run(rebuild) => {
                    tracing::info!(volume = job.volume_id, shard = job.shard, target = %job.target,
                        started_at = job.started_at, term = job.term,
                        "resuming a shard rebuild started before this leader");
                    self.launch(rebuild);
                }
                RebuildResume::Wait => {}
                RebuildResume::End(reason) => {
                    tracing::info!(volume = job.volume_id, target = %job.target, %reason,
                        "shard rebuild job ended");
                    if let Err(error) = self.cluster.end_repair(job.volume_id(), &job.target).await
                    {
                        failures.push(format!(
                            "volume {}: could not end a rebuild job: {error}",
                            job.volume_id
                        ));
                    }
                }
            }
        }
        failures
    }

    /// New rebuilds, each committed as a job before it runs.
    async fn start_new(&mut self, views: &[ShardView]) -> Vec<String> {
        let jobs = self.cluster.repair_jobs();
        let mut busy: HashSet<VolumeId> = self.running.volumes.lock().clone();
        let mut per_server: HashMap<String, usize> = HashMap::new();
        for job in &jobs {
            busy.insert(job.volume_id());
            *per_server.entry(job.target.clone()).or_default() += 1;
        }
        let plans = plan_rebuilds(
            views,
            &self.cluster.placement_candidates(Tier::Warm),
            self.after(),
            &busy,
            &per_server,
            self.settings.max_per_server,
            &self.running.waiting(Instant::now()),
        );
        let mut failures = Vec::new();
        for rebuild in plans {
            // Committed first: if this leader dies, the next one resumes it.
            match self.cluster.start_repair(rebuild.job()).await {
                Ok(()) => self.launch(rebuild),
                Err(error) => failures.push(format!(
                    "volume {}: could not start a shard rebuild: {error}",
                    rebuild.volume_id
                )),
            }
        }
        failures
    }

    /// Orphan shards dropped, copies left by an encode taken out.
    async fn tidy(&self) -> Vec<String> {
        let encoding = |volume: VolumeId| self.encoding.contains(volume);
        let mut failures = Vec::new();
        for (volume, location) in self
            .cluster
            .orphan_shards(self.settings.repair_after, &encoding)
        {
            if encoding(volume) || !self.cluster.still_orphan(volume, &location.server_id) {
                continue;
            }
            let dropped = async {
                volume_client(&location, &self.settings.credential)
                    .await?
                    .ec_drop(EcDropRequest {
                        volume_id: volume.0,
                        staged: false,
                    })
                    .await
                    .map_err(|s| s.message().to_owned())
            }
            .await;
            match dropped {
                Ok(_) => {
                    tracing::info!(volume = volume.0, server = %location.server_id,
                        "orphan shards dropped (the server holds no shard of the volume in its layout)");
                    self.cluster.orphan_dropped(volume, &location.server_id);
                }
                Err(error) => failures.push(format!(
                    "volume {volume}: could not drop orphan shards on {}: {error}",
                    location.server_id
                )),
            }
        }
        for (volume, server) in self.cluster.leftover_copies(&encoding) {
            match self.cluster.remove_replica(volume, &server).await {
                Ok(()) => tracing::info!(volume = volume.0, %server,
                    "copy of an erasure-coded volume left by its encode: out of the replica set, deleted as an extra copy"),
                Err(error) => failures.push(format!(
                    "volume {volume}: could not take the copy on {server} out: {error}"
                )),
            }
        }
        failures
    }
}

/// `EcRebuild` on the target to its end (progress recorded for status).
async fn execute(
    cluster: &Cluster,
    rebuild: &ShardRebuild,
    settings: &RepairSettings,
) -> Result<(), String> {
    let known = |id: &str| {
        cluster
            .server_location(id)
            .ok_or_else(|| format!("no server {id} is known"))
    };
    let (target, source) = (known(&rebuild.target)?, known(&rebuild.source)?);
    let mut stream = volume_client(&target, &settings.credential)
        .await?
        .ec_rebuild(EcRebuildRequest {
            volume_id: rebuild.volume_id.0,
            shard: rebuild.shard,
            source: source.grpc_addr,
            rate: settings.bytes_per_sec,
        })
        .await
        .map_err(|e| format!("{}: {}", target.server_id, e.message()))?
        .into_inner();
    loop {
        let message = tokio::time::timeout(REBUILD_SILENCE, stream.message())
            .await
            .map_err(|_| {
                format!(
                    "{} sent no progress for {REBUILD_SILENCE:?}",
                    target.server_id
                )
            })?
            .map_err(|e| format!("{}: {}", target.server_id, e.message()))?;
        match message {
            Some(progress) => {
                cluster.shard_progress(rebuild.volume_id, progress.done, progress.total)
            }
            // The stream ends once the shard is in place, its digest equal
            // to the manifest's; an error ends it otherwise.
            None => return Ok(()),
        }
    }
}

impl Worker for ShardWorker {
    fn name(&self) -> String {
        "shard-rebuild".into()
    }

    fn progress(&self) -> String {
        if self.leader {
            format!("{} running", self.running.volumes.lock().len())
        } else {
            "not the leader".into()
        }
    }

    fn interval(&self) -> Option<Duration> {
        Some(self.pulse)
    }

    async fn work(&mut self) -> Result<Step, Failed> {
        if !self.cluster.is_leader() {
            self.leader = false;
            return Ok(Step::Idle);
        }
        self.leader = true;
        // A new leader takes silent servers' shards to be present until it
        // has settled: it starts and ends nothing before.
        if !self.cluster.settled() {
            return Ok(Step::Idle);
        }
        let views = self.cluster.shard_views();
        let by_id: HashMap<VolumeId, ShardView> =
            views.iter().map(|v| (v.volume_id, v.clone())).collect();
        let mut failures = self.resume(&by_id, true).await;
        failures.extend(super::jobs::resume(&self.cluster, &self.encoding, &self.settings).await);
        failures.extend(self.start_new(&views).await);
        failures.extend(self.tidy().await);
        for failure in &failures {
            tracing::warn!(%failure, "erasure-coded upkeep");
        }
        // One volume failing does not stop the others: every step above
        // went through its whole list; the last failure is shown.
        match failures.pop() {
            Some(error) => Err(Failed::new(error)),
            None => Ok(Step::Idle),
        }
    }
}
