//! The loop that plans and runs repairs (and rebalancing moves) every
//! pulse on the leader, and removes extra copies.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hayloft_proto::background::{Failed, Step, Worker};
use hayloft_proto::{DeleteVolumeRequest, ReplicaHealth, Tier};

use hayloft_storage::VolumeId;

use super::execute::{client, execute, settle_writes};
use super::{RepairKind, RepairPlan, RepairSettings, Repairs, Resume, plan, rebalance, resume};
use crate::cluster::{Cluster, RepairView};

/// The repairs that would start now (`repair_after` as given), and the
/// degraded volumes no repair can help (no healthy copy, or no target).
pub fn plan_now(
    cluster: &Cluster,
    repairs: &Repairs,
    repair_after: Duration,
    max_per_server: usize,
) -> (Vec<RepairPlan>, Vec<VolumeId>, usize) {
    let degraded = cluster.degraded_volumes();
    // Open jobs count as running, wherever they run (a new leader resumes
    // them rather than planning them again).
    let (mut busy, mut per_server) = repairs.busy();
    for job in cluster.repair_jobs() {
        if busy.insert(job.volume_id()) {
            *per_server.entry(job.target).or_default() += 1;
        }
    }
    let ids: HashSet<VolumeId> = degraded.iter().map(|v| v.volume_id).collect();
    let held = repairs.held(&ids, repair_after, repair_after.is_zero());
    let mut plans = Vec::new();
    for tier in [Tier::Hot, Tier::Warm, Tier::Cold] {
        let views: Vec<RepairView> = degraded
            .iter()
            .filter(|v| v.tier == tier)
            .cloned()
            .collect();
        if views.is_empty() {
            continue;
        }
        let candidates = cluster.placement_candidates(tier);
        plans.extend(plan(
            &views,
            &candidates,
            repair_after,
            &busy,
            &per_server,
            max_per_server,
            &held,
        ));
    }
    let stuck = degraded
        .iter()
        .filter(|v| {
            !busy.contains(&v.volume_id)
                && !plans.iter().any(|p| p.volume_id == v.volume_id)
                && !v.replicas.iter().any(|r| r.health == ReplicaHealth::Ok)
        })
        .map(|v| v.volume_id)
        .collect();
    (plans, stuck, degraded.len())
}

/// Runs `plan` (its job committed) in a task of its own: copy, verify,
/// commit the result, then end the job (a failed repair is planned again).
fn launch(
    cluster: &Arc<Cluster>,
    repairs: &Arc<Repairs>,
    mut plan: RepairPlan,
    settings: RepairSettings,
) {
    repairs.running.lock().insert(plan.volume_id, plan.clone());
    let (cluster, repairs) = (Arc::clone(cluster), Arc::clone(repairs));
    tokio::spawn(async move {
        let started = Instant::now();
        tracing::info!(volume = plan.volume_id.0, target = %plan.target.server_id,
            kind = ?plan.kind, "repair started");
        // The target's addresses, from the directory's records.
        let result = match cluster.server_location(&plan.target.server_id) {
            Some(location) => {
                plan.target = location;
                let settled = match &plan.kind {
                    RepairKind::Move { .. } => settle_writes(&cluster, &plan).await,
                    _ => Ok(()),
                };
                match settled {
                    Ok(()) => execute(&plan, settings).await,
                    Err(e) => Err(e),
                }
            }
            None => Err(format!("no server {} is known", plan.target.server_id)),
        };
        let recorded = match (&result, &plan.kind) {
            (Ok(()), RepairKind::CatchUp | RepairKind::CatchUpCold) => cluster
                .caught_up(plan.volume_id, &plan.target.server_id)
                .await
                .map_err(|e| e.to_string()),
            (Ok(()), RepairKind::Replace { lost } | RepairKind::ReplaceCold { lost }) => cluster
                .replaced(plan.volume_id, Some(lost), &plan.target.server_id)
                .await
                .map_err(|e| e.to_string()),
            (Ok(()), RepairKind::Add) => cluster
                .replaced(plan.volume_id, None, &plan.target.server_id)
                .await
                .map_err(|e| e.to_string()),
            (Ok(()), RepairKind::Move { from }) => cluster
                .replaced(plan.volume_id, Some(from), &plan.target.server_id)
                .await
                .map_err(|e| e.to_string()),
            (Err(e), _) => Err(e.clone()),
        };
        let outcome = match &recorded {
            Ok(()) => {
                tracing::info!(volume = plan.volume_id.0, target = %plan.target.server_id,
                    seconds = started.elapsed().as_secs_f64(), "repair done, copy verified");
                "ok"
            }
            Err(error) => {
                tracing::warn!(volume = plan.volume_id.0, target = %plan.target.server_id,
                    %error, "repair failed; will try again after a growing wait");
                "failed"
            }
        };
        // After the result: a leader that dies between the two finds the
        // job open and ends it, the copy being whole.
        if recorded.is_ok() {
            hayloft_storage::failpoint::abort_at("repair-before-ended");
        }
        if let Err(error) = cluster
            .end_repair(plan.volume_id, &plan.target.server_id)
            .await
        {
            tracing::warn!(volume = plan.volume_id.0, %error,
                "could not end the repair job (the next leader will)");
        }
        repairs.ended(&plan, &recorded);
        metrics::counter!("hayloft_directory_repairs_total", "result" => outcome).increment(1);
        metrics::histogram!("hayloft_directory_repair_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        repairs.running.lock().remove(&plan.volume_id);
    });
}

/// Plans and runs repairs every `pulse` (or at once after
/// [`Repairs::run_now`]), as a background worker; also deletes extra
/// copies of volumes that are whole again. The leader repairs; on the
/// other nodes a round does nothing. The repairs themselves run on tasks
/// of their own ([`launch`]), their jobs kept in the replicated state so
/// that a new leader resumes them.
pub struct RepairWorker {
    cluster: Arc<Cluster>,
    repairs: Arc<Repairs>,
    settings: RepairSettings,
    pulse: Duration,
    /// This node led at its last round.
    leader: bool,
}

impl RepairWorker {
    /// Rounds every `pulse` over `cluster`.
    pub fn new(
        cluster: Arc<Cluster>,
        repairs: Arc<Repairs>,
        settings: RepairSettings,
        pulse: Duration,
    ) -> Self {
        RepairWorker {
            cluster,
            repairs,
            settings,
            pulse,
            leader: false,
        }
    }
}

impl Worker for RepairWorker {
    fn name(&self) -> String {
        "repair".into()
    }

    fn progress(&self) -> String {
        if self.leader {
            format!("{} running", self.repairs.running.lock().len())
        } else {
            "not the leader".into()
        }
    }

    fn interval(&self) -> Option<Duration> {
        Some(self.pulse)
    }

    fn wait_for_work(&mut self) -> impl std::future::Future<Output = ()> + Send {
        let pulse = self.pulse;
        let repairs = Arc::clone(&self.repairs);
        async move {
            tokio::select! {
                () = tokio::time::sleep(pulse) => {}
                () = repairs.wake.notified() => {}
            }
        }
    }

    async fn work(&mut self) -> Result<Step, Failed> {
        let (cluster, repairs, settings) = (&self.cluster, &self.repairs, &self.settings);
        let repair_after = if repairs
            .urgent
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            Duration::ZERO
        } else {
            settings.repair_after
        };
        // The leader repairs; the others wait for their turn.
        if !cluster.is_leader() {
            self.leader = false;
            return Ok(Step::Idle);
        }
        self.leader = true;
        let mut failure: Option<String> = None;
        // Jobs an earlier leader (or this node before a restart) started.
        let views: HashMap<VolumeId, RepairView> = cluster
            .volume_views(true)
            .into_iter()
            .map(|v| (v.volume_id, v))
            .collect();
        let settled = cluster.settled();
        for job in cluster.repair_jobs() {
            // Shard rebuilds, encodes and decodes are the erasure code's
            // (`erasure::shard_worker`, `erasure::jobs`).
            if repairs.is_running(job.volume_id())
                || crate::erasure::jobs::is_erasure_job(&job.kind)
            {
                continue;
            }
            // A repair job of a volume that is whole again ends (a move's
            // volume is whole throughout).
            let view = views
                .get(&job.volume_id())
                .filter(|v| !v.healthy || job.kind == "move");
            match resume(&job, view, settled) {
                Resume::Run(plan) => {
                    tracing::info!(volume = job.volume_id, target = %job.target, kind = %job.kind,
                        started_at = job.started_at, term = job.term,
                        "resuming a repair started before this leader");
                    launch(cluster, repairs, plan, settings.clone());
                }
                Resume::Wait => {}
                Resume::End(reason) => {
                    tracing::info!(volume = job.volume_id, target = %job.target, %reason,
                        "repair job ended");
                    if let Err(error) = cluster.end_repair(job.volume_id(), &job.target).await {
                        tracing::warn!(volume = job.volume_id, %error, "could not end a repair job");
                        failure = Some(format!(
                            "volume {}: could not end a repair job: {error}",
                            job.volume_id
                        ));
                    }
                }
            }
        }
        let (plans, _, _) = plan_now(cluster, repairs, repair_after, settings.max_per_server);
        for plan in plans {
            // Committed first: if this leader dies, the next one resumes it.
            if let Err(error) = cluster.start_repair(plan.job()).await {
                tracing::warn!(volume = plan.volume_id.0, %error, "could not start a repair");
                failure = Some(format!(
                    "volume {}: could not start a repair: {error}",
                    plan.volume_id
                ));
                continue;
            }
            launch(cluster, repairs, plan, settings.clone());
        }
        // With nothing to repair, one copy at a time moves to spread its
        // volume over more zones (a zone's server back after its copies
        // were made elsewhere).
        if settled && views.values().all(|v| v.healthy) && cluster.repair_jobs().is_empty() {
            let candidates = |tier| cluster.placement_candidates(tier);
            let held = repairs.held(&HashSet::new(), settings.repair_after, false);
            if let Some(plan) = rebalance(views.values(), candidates, &held) {
                tracing::info!(volume = plan.volume_id.0, target = %plan.target.server_id,
                    kind = ?plan.kind, "moving a copy to spread the volume over more zones");
                match cluster.start_repair(plan.job()).await {
                    Ok(()) => launch(cluster, repairs, plan, settings.clone()),
                    Err(error) => {
                        tracing::warn!(volume = plan.volume_id.0, %error, "could not start a move");
                        failure = Some(format!(
                            "volume {}: could not start a move: {error}",
                            plan.volume_id
                        ));
                    }
                }
            }
        }
        for extra in cluster.removable_extras() {
            let (volume_id, location) = (extra.volume, &extra.location);
            // The deletions before this one took time: the volume may have
            // lost a copy since the list was made.
            if !cluster.still_removable(volume_id, &location.server_id) {
                continue;
            }
            let removed = async {
                client(location, &settings.credential)
                    .await?
                    .delete_volume(DeleteVolumeRequest {
                        volume_id: volume_id.0,
                        keep_object: extra.keep_object,
                        erasure_holders: extra.erasure_holders.clone(),
                    })
                    .await
                    .map_err(|e| e.message().to_owned())
            }
            .await;
            match removed {
                Ok(_) => {
                    tracing::info!(volume = volume_id.0, server = %location.server_id,
                        "extra copy removed (the volume has all its copies)");
                    cluster.extra_removed(volume_id, &location.server_id);
                }
                Err(error) => {
                    tracing::warn!(volume = volume_id.0, server = %location.server_id, %error,
                        "could not remove an extra copy");
                    failure = Some(format!(
                        "volume {volume_id}: could not remove an extra copy on {}: {error}",
                        location.server_id
                    ));
                }
            }
        }
        match failure {
            Some(error) => Err(Failed::new(error)),
            None => Ok(Step::Idle),
        }
    }
}
