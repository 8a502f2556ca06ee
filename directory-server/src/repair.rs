//! Repair: the directory brings degraded volumes back to all their copies.
//!
//! Every pulse the directory plans (a pure function, [`plan`]) and runs:
//!
//! - **Catch up** a copy that is stale (it missed a forwarded write or
//!   delete) or missing on a live server (a wiped or replaced disk): the
//!   copy pulls from the healthy ones (`SyncVolume`), then the healthy ones
//!   pull from it (a write that reached only it, never acknowledged, is
//!   settled by spreading it), and the copies' digests must then be equal.
//! - **Replace** a copy whose server has been down for `repair_after`:
//!   placement picks a new server (never one holding a copy; zones and racks
//!   spread as for a new volume), which creates an empty copy and pulls
//!   everything from the healthy ones; once its digests equal theirs, it
//!   takes the lost copy's place in the replica set. If the lost server
//!   comes back, its copy is an extra: deleted once every copy is healthy.
//!
//! A volume with no healthy copy cannot be repaired (there is no source)
//! and waits. At most `max_per_server` repairs copy to one server at once,
//! and each copies at `repair_rate`.
//!
//! A repair that fails is tried again after a growing wait (1 s, doubling,
//! at most [`RETRY_MAX`]), and `hayloft status` names it with its last
//! error. A copy that has failed to catch up for `repair_after` (and at
//! least [`GIVE_UP_ATTEMPTS`] times) is given up on: it is replaced
//! elsewhere like a lost one, and removed once the new copy is verified.
//! A new copy goes where the copies spread over the most zones, then racks;
//! when the servers that would keep that spread are busy, the repair waits
//! for them rather than doubling a zone.
//!
//! A repair is a job in the directory group's replicated state: the leader
//! commits `RepairStarted` (volume, target, kind) before it runs, the result
//! (`CaughtUp`, `Replaced`) when it is verified, then `RepairEnded`. A
//! leader elected while a job is open resumes it on the same target, which
//! copies only what it still lacks; a job that no longer makes sense (the
//! copy came back, the volume is whole or gone) is ended, and a failed one
//! too, to be planned again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hayloft_proto::volume_client::VolumeClient;
use hayloft_proto::{
    DeleteVolumeRequest, MoveVolumeRequest, NeedleDigestsRequest, ReplicaHealth, ServerLocation,
    SyncVolumeRequest, Tier, VolumeState,
};
use parking_lot::Mutex;

use crate::cluster::{Cluster, RepairReplica, RepairView, now_unix, site};
use crate::db::RepairJobRow;
use crate::placement::{self, Candidate};

/// Anti-entropy's range size, for comparing digests after a repair.
const RANGE_BITS: u32 = 12;

/// A sync that sends no progress for this long has failed.
const SYNC_SILENCE: Duration = Duration::from_secs(300);

/// The longest wait between two attempts of a failing repair.
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// How long a move waits for the copies' servers to hear that the volume
/// takes no writes.
const SETTLE_WRITES: Duration = Duration::from_secs(30);

/// Attempts a copy's catch-up gets (over at least `repair_after`) before the
/// copy is replaced elsewhere.
pub const GIVE_UP_ATTEMPTS: u32 = 3;

/// How repair runs.
#[derive(Debug, Clone)]
pub struct RepairSettings {
    /// A copy whose server has been silent this long is re-created elsewhere.
    pub repair_after: Duration,
    /// Repairs copying to one server at once.
    pub max_per_server: usize,
    /// Copy rate of each repair (0 = the volume server's `repair_rate`).
    pub bytes_per_sec: u64,
    /// What the directory presents to volume servers.
    pub credential: hayloft_proto::Credential,
}

/// What a repair does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepairKind {
    /// The target's copy is stale or missing: it catches up where it is.
    CatchUp,
    /// The target gets a new copy in place of the one on `lost`.
    Replace {
        /// The server whose copy is lost.
        lost: String,
    },
    /// The target gets a new copy of a volume with fewer copies than it
    /// should have (one back from cold, whose cold copies were dropped).
    Add,
    /// The target's cold copy is stale (it missed a delete) or missing (a
    /// wiped disk): it takes the files or the tombstones of the healthy cold
    /// copies, and gives them its own.
    CatchUpCold,
    /// The target gets a new cold copy (the index of the volume's object,
    /// from a healthy cold copy) in place of the one on `lost`.
    ReplaceCold {
        /// The server whose copy is lost.
        lost: String,
    },
    /// The target gets a new copy of a healthy volume in place of the one
    /// on `from`, so the copies spread over more zones (or racks): a
    /// rebalance. The volume takes no writes meanwhile.
    Move {
        /// The server whose copy goes once the new one is verified.
        from: String,
    },
}

impl RepairKind {
    /// The kind's name in a repair job, and the server whose copy is lost.
    pub fn job_kind(&self) -> (&'static str, &str) {
        match self {
            RepairKind::CatchUp => ("catch-up", ""),
            RepairKind::Replace { lost } => ("replace", lost),
            RepairKind::Add => ("add", ""),
            RepairKind::CatchUpCold => ("catch-up-cold", ""),
            RepairKind::ReplaceCold { lost } => ("replace-cold", lost),
            RepairKind::Move { from } => ("move", from),
        }
    }

    /// The kind a repair job names (None: a name this version does not
    /// know).
    pub fn from_job(job: &RepairJobRow) -> Option<RepairKind> {
        let lost = job.lost.clone();
        Some(match job.kind.as_str() {
            "catch-up" => RepairKind::CatchUp,
            "replace" => RepairKind::Replace { lost },
            "add" => RepairKind::Add,
            "catch-up-cold" => RepairKind::CatchUpCold,
            "replace-cold" => RepairKind::ReplaceCold { lost },
            "move" => RepairKind::Move { from: lost },
            _ => return None,
        })
    }

    /// True if the copies involved are cold (they exchange index files and
    /// tombstones, never needles).
    pub fn is_cold(&self) -> bool {
        matches!(
            self,
            RepairKind::CatchUpCold | RepairKind::ReplaceCold { .. }
        )
    }
}

/// One repair to run.
#[derive(Debug, Clone)]
pub struct RepairPlan {
    /// The volume.
    pub volume_id: u32,
    /// Its collection and tier, to create an empty copy.
    pub collection: String,
    /// Its tier.
    pub tier: Tier,
    /// The server whose copy is made whole.
    pub target: ServerLocation,
    /// The healthy copies to copy from.
    pub sources: Vec<ServerLocation>,
    /// Catch up, or replace a lost copy.
    pub kind: RepairKind,
}

impl RepairPlan {
    /// The job committed before this repair runs.
    pub fn job(&self) -> RepairJobRow {
        let (kind, lost) = self.kind.job_kind();
        RepairJobRow {
            volume_id: self.volume_id,
            target: self.target.server_id.clone(),
            kind: kind.to_owned(),
            lost: lost.to_owned(),
            started_at: now_unix(),
            term: 0,
        }
    }
}

/// What a leader does with an open repair job that runs nowhere here.
#[derive(Debug, Clone)]
pub enum Resume {
    /// Run it again, on the same target.
    Run(RepairPlan),
    /// Not now (no healthy copy to copy from, a copy is moving).
    Wait,
    /// End it, for this reason: it no longer makes sense.
    End(String),
}

/// Decides what becomes of `job`, given its volume as repair sees it now
/// (`None`: the volume is whole, or gone). Until the leader has `settled`
/// (a new leader takes every silent server's copies to be present) nothing
/// is ended: it waits.
pub fn resume(job: &RepairJobRow, volume: Option<&RepairView>, settled: bool) -> Resume {
    match decide(job, volume) {
        Resume::End(_) if !settled => Resume::Wait,
        decided => decided,
    }
}

fn decide(job: &RepairJobRow, volume: Option<&RepairView>) -> Resume {
    let Some(kind) = RepairKind::from_job(job) else {
        return Resume::End(format!("unknown repair kind {:?}", job.kind));
    };
    let Some(volume) = volume else {
        return Resume::End("the volume needs no repair now".into());
    };
    if volume
        .replicas
        .iter()
        .any(|r| matches!(r.state, VolumeState::Moving | VolumeState::Restoring))
    {
        return Resume::Wait;
    }
    let copy = |server: &str| {
        volume
            .replicas
            .iter()
            .find(|r| r.location.server_id == server)
    };
    let target = copy(&job.target);
    let still = match &kind {
        RepairKind::CatchUp | RepairKind::CatchUpCold => target
            .is_some_and(|r| matches!(r.health, ReplicaHealth::Stale | ReplicaHealth::Missing)),
        // The lost copy is down, or was given up on (stale or missing).
        RepairKind::Replace { lost } | RepairKind::ReplaceCold { lost } => {
            target.is_none() && copy(lost).is_some_and(|r| r.health != ReplicaHealth::Ok)
        }
        RepairKind::Add => target.is_none() && volume.replicas.len() < volume.desired,
        // Only a whole volume moves a copy.
        RepairKind::Move { from } => target.is_none() && copy(from).is_some() && volume.healthy,
    };
    if !still {
        return Resume::End(format!(
            "the copy on {} no longer needs this repair",
            job.target
        ));
    }
    let cold = kind.is_cold();
    let sources: Vec<ServerLocation> = volume
        .replicas
        .iter()
        .filter(|r| r.health == ReplicaHealth::Ok && matches!(r.tier, Tier::Cold) == cold)
        .filter(|r| r.location.server_id != job.target)
        .map(|r| r.location.clone())
        .collect();
    if sources.is_empty() {
        return Resume::Wait;
    }
    Resume::Run(RepairPlan {
        volume_id: volume.volume_id,
        collection: volume.collection.clone(),
        tier: volume.tier,
        target: ServerLocation {
            server_id: job.target.clone(),
            ..ServerLocation::default()
        },
        sources,
        kind,
    })
}

/// Copies repair keeps its hands off for now, by (volume, server).
#[derive(Debug, Default, Clone)]
pub struct Held {
    /// Targets whose last repair failed, until their next attempt is due.
    pub waiting: HashSet<(u32, String)>,
    /// Copies that failed to catch up for `repair_after`: replaced elsewhere.
    pub given_up: HashSet<(u32, String)>,
}

/// A repair of one volume to one target that keeps failing.
struct Failing {
    /// When its first failure in a row was.
    since: Instant,
    /// Failures in a row.
    attempts: u32,
    /// Not tried again before this.
    retry_at: Instant,
    /// The waits still to come.
    delays: backon::ExponentialBackoff,
    /// What the last attempt said.
    error: String,
}

/// Repairs in flight, shared by the repair loop and the `Repair` call.
#[derive(Default)]
pub struct Repairs {
    /// Volume id -> its running repair. Held to look up or update, never
    /// across an `.await`.
    running: Mutex<HashMap<u32, RepairPlan>>,
    /// (volume, target) -> its failures in a row (the leader's soft state:
    /// a new leader starts counting again). Locked after `running`, never
    /// across an `.await`.
    failing: Mutex<HashMap<(u32, String), Failing>>,
    /// Set by `hayloft repair`: the next round ignores `repair_after`.
    urgent: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
}

impl Repairs {
    /// The repair of `volume_id` running on this node, if any.
    pub fn plan(&self, volume_id: u32) -> Option<RepairPlan> {
        self.running.lock().get(&volume_id).cloned()
    }

    /// True while a repair of `volume_id` runs.
    pub fn is_running(&self, volume_id: u32) -> bool {
        self.running.lock().contains_key(&volume_id)
    }

    /// Runs a round of repairs at once, without waiting for `repair_after`.
    pub fn run_now(&self) {
        self.urgent.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Records how a repair of `volume_id` to `target` ended: a success
    /// forgets its failures (and, for a replacement, the lost copy's).
    fn ended(&self, plan: &RepairPlan, result: &Result<(), String>) {
        let mut failing = self.failing.lock();
        let key = (plan.volume_id, plan.target.server_id.clone());
        match result {
            Ok(()) => {
                failing.remove(&key);
                if let RepairKind::Replace { lost } | RepairKind::ReplaceCold { lost } = &plan.kind
                {
                    failing.remove(&(plan.volume_id, lost.clone()));
                }
            }
            Err(error) => {
                let now = Instant::now();
                let entry = failing.entry(key).or_insert_with(|| Failing {
                    since: now,
                    attempts: 0,
                    retry_at: now,
                    delays: backon::BackoffBuilder::build(
                        backon::ExponentialBuilder::default()
                            .with_min_delay(Duration::from_secs(1))
                            .with_max_delay(RETRY_MAX)
                            .with_jitter()
                            .without_max_times(),
                    ),
                    error: String::new(),
                });
                entry.attempts += 1;
                entry.retry_at = now + entry.delays.next().unwrap_or(RETRY_MAX).min(RETRY_MAX);
                entry.error.clone_from(error);
            }
        }
    }

    /// The copies to leave alone now, and those to give up on; failures of
    /// volumes no longer in `degraded` are forgotten. `urgent` (an
    /// operator's `hayloft repair`) tries failing ones again at once.
    pub fn held(&self, degraded: &HashSet<u32>, repair_after: Duration, urgent: bool) -> Held {
        self.held_at(degraded, repair_after, urgent, Instant::now())
    }

    fn held_at(
        &self,
        degraded: &HashSet<u32>,
        repair_after: Duration,
        urgent: bool,
        now: Instant,
    ) -> Held {
        let mut failing = self.failing.lock();
        // A failed move (its volume is healthy) is remembered until its
        // next attempt is due.
        failing.retain(|(volume, _), f| degraded.contains(volume) || now < f.retry_at);
        let mut held = Held::default();
        for (key, f) in failing.iter() {
            if f.attempts >= GIVE_UP_ATTEMPTS && now.duration_since(f.since) >= repair_after {
                held.given_up.insert(key.clone());
            }
            if !urgent && now < f.retry_at {
                held.waiting.insert(key.clone());
            }
        }
        held
    }

    /// One line per repair that keeps failing, for `hayloft status`.
    pub fn problems(&self) -> Vec<String> {
        let now = Instant::now();
        let mut lines: Vec<String> = self
            .failing
            .lock()
            .iter()
            .map(|((volume, target), f)| {
                format!(
                    "volume {volume}: repair on {target} failed {} time(s) in a row over {}s (next try in {}s): {}",
                    f.attempts,
                    now.duration_since(f.since).as_secs(),
                    f.retry_at.saturating_duration_since(now).as_secs(),
                    f.error
                )
            })
            .collect();
        lines.sort();
        lines
    }

    fn busy(&self) -> (HashSet<u32>, HashMap<String, usize>) {
        let running = self.running.lock();
        let mut per_server: HashMap<String, usize> = HashMap::new();
        for plan in running.values() {
            *per_server.entry(plan.target.server_id.clone()).or_default() += 1;
        }
        (running.keys().copied().collect(), per_server)
    }
}

/// The repairs that would start now (`repair_after` as given), and the
/// degraded volumes no repair can help (no healthy copy, or no target).
pub fn plan_now(
    cluster: &Cluster,
    repairs: &Repairs,
    repair_after: Duration,
    max_per_server: usize,
) -> (Vec<RepairPlan>, Vec<u32>, usize) {
    let degraded = cluster.degraded_volumes();
    // Open jobs count as running, wherever they run (a new leader resumes
    // them rather than planning them again).
    let (mut busy, mut per_server) = repairs.busy();
    for job in cluster.repair_jobs() {
        if busy.insert(job.volume_id) {
            *per_server.entry(job.target).or_default() += 1;
        }
    }
    let ids: HashSet<u32> = degraded.iter().map(|v| v.volume_id).collect();
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

fn candidate(location: &ServerLocation) -> Candidate {
    Candidate {
        server_id: location.server_id.clone(),
        zone: site(&location.zone),
        rack: site(&location.rack),
        free_bytes: 0,
        volumes: 0,
    }
}

/// The repairs to start now: at most one per volume, none for a volume in
/// `busy`, at most `max_per_server` (counting `running`) per target, none
/// to a target `held` waits on; a copy `held` gave up on is replaced.
pub fn plan(
    degraded: &[RepairView],
    candidates: &[Candidate],
    repair_after: Duration,
    busy: &HashSet<u32>,
    running: &HashMap<String, usize>,
    max_per_server: usize,
    held: &Held,
) -> Vec<RepairPlan> {
    let mut load = running.clone();
    let mut candidates = candidates.to_vec();
    let mut plans = Vec::new();
    let local = |r: &RepairReplica| !matches!(r.tier, Tier::Cold);
    for volume in degraded {
        // A copy in the middle of a tier move is left to finish first.
        if busy.contains(&volume.volume_id)
            || volume
                .replicas
                .iter()
                .any(|r| matches!(r.state, VolumeState::Moving | VolumeState::Restoring))
        {
            continue;
        }
        // Repairs copy needles from local copies; a cold copy is no source
        // (nor target: its data is the shared object).
        let healthy = |cold: bool| -> Vec<ServerLocation> {
            volume
                .replicas
                .iter()
                .filter(|r| r.health == ReplicaHealth::Ok && local(r) != cold)
                .map(|r| r.location.clone())
                .collect()
        };
        let (sources, cold_sources) = (healthy(false), healthy(true));
        // Every healthy copy is cold: a copy whose tier is unknown (missing,
        // down) is repaired as a cold one.
        let all_cold = sources.is_empty() && !cold_sources.is_empty();
        let full = |server: &str, load: &HashMap<String, usize>| {
            load.get(server).copied().unwrap_or(0) >= max_per_server
        };
        let key = |server: &str| (volume.volume_id, server.to_owned());
        // A new copy on a server placement picks: every current copy (even
        // a lost one) is excluded; the others count for spreading. Only the
        // servers that spread the copies best qualify: if those are busy
        // (or their last attempt failed), the repair waits for them rather
        // than doubling a zone or rack.
        let new_copy = |lost: Option<&str>, load: &HashMap<String, usize>| {
            let free: Vec<Candidate> = candidates
                .iter()
                .filter(|c| {
                    !volume
                        .replicas
                        .iter()
                        .any(|r| r.location.server_id == c.server_id)
                })
                .cloned()
                .collect();
            let existing: Vec<Candidate> = volume
                .replicas
                .iter()
                .filter(|r| Some(r.location.server_id.as_str()) != lost)
                .map(|r| candidate(&r.location))
                .collect();
            let best = free
                .iter()
                .map(|c| placement::crowding(&existing, c))
                .min()?;
            let eligible: Vec<Candidate> = free
                .into_iter()
                .filter(|c| placement::crowding(&existing, c) == best)
                .filter(|c| !full(&c.server_id, load))
                .filter(|c| !held.waiting.contains(&key(&c.server_id)))
                .collect();
            let chosen =
                placement::place(&eligible, &existing, 1, u64::from(volume.volume_id)).ok()?;
            Some(ServerLocation {
                server_id: chosen.first()?.clone(),
                ..ServerLocation::default()
            })
        };
        let repair = volume.replicas.iter().find_map(|r| match r.health {
            // It failed to catch up for `repair_after`: replaced like a lost
            // copy (and removed once the new one is verified).
            // Until a server can take the new copy, it goes on trying.
            ReplicaHealth::Stale | ReplicaHealth::Missing
                if local(r)
                    && !sources.is_empty()
                    && held.given_up.contains(&key(&r.location.server_id)) =>
            {
                let server = &r.location.server_id;
                match new_copy(Some(server), &load) {
                    Some(target) => Some((
                        target,
                        RepairKind::Replace {
                            lost: server.clone(),
                        },
                    )),
                    None if !full(server, &load) && !held.waiting.contains(&key(server)) => {
                        Some((r.location.clone(), RepairKind::CatchUp))
                    }
                    None => None,
                }
            }
            ReplicaHealth::Stale | ReplicaHealth::Missing
                if local(r)
                    && !sources.is_empty()
                    && !full(&r.location.server_id, &load)
                    && !held.waiting.contains(&key(&r.location.server_id)) =>
            {
                Some((r.location.clone(), RepairKind::CatchUp))
            }
            ReplicaHealth::Stale if !local(r) && !cold_sources.is_empty() => {
                Some((r.location.clone(), RepairKind::CatchUpCold))
            }
            ReplicaHealth::Missing if all_cold => {
                Some((r.location.clone(), RepairKind::CatchUpCold))
            }
            ReplicaHealth::Down if r.down_for >= repair_after.as_secs() && all_cold => {
                let target = new_copy(Some(&r.location.server_id), &load)?;
                Some((
                    target,
                    RepairKind::ReplaceCold {
                        lost: r.location.server_id.clone(),
                    },
                ))
            }
            ReplicaHealth::Down if r.down_for >= repair_after.as_secs() && !sources.is_empty() => {
                let target = new_copy(Some(&r.location.server_id), &load)?;
                Some((
                    target,
                    RepairKind::Replace {
                        lost: r.location.server_id.clone(),
                    },
                ))
            }
            _ => None,
        });
        let repair = repair.or_else(|| {
            (volume.replicas.len() < volume.desired
                && !sources.is_empty()
                && !volume
                    .replicas
                    .iter()
                    .any(|r| r.health == ReplicaHealth::Down))
            .then(|| new_copy(None, &load))
            .flatten()
            .map(|target| (target, RepairKind::Add))
        });
        let Some((target, kind)) = repair else {
            continue;
        };
        *load.entry(target.server_id.clone()).or_default() += 1;
        if let Some(c) = candidates
            .iter_mut()
            .find(|c| c.server_id == target.server_id)
        {
            c.volumes += 1;
        }
        plans.push(RepairPlan {
            volume_id: volume.volume_id,
            collection: volume.collection.clone(),
            tier: volume.tier,
            target,
            sources: if kind.is_cold() {
                cold_sources
            } else {
                sources
            },
            kind,
        });
    }
    plans
}

/// The copies of `view` as placement sees them, if all are local,
/// healthy and still (none moving between tiers).
fn local_copies(view: &RepairView) -> Option<Vec<Candidate>> {
    view.replicas
        .iter()
        .map(|r| {
            (r.health == ReplicaHealth::Ok
                && matches!(r.tier, Tier::Hot | Tier::Warm)
                && !matches!(r.state, VolumeState::Moving | VolumeState::Restoring))
            .then(|| candidate(&r.location))
        })
        .collect()
}

/// True if a copy of the healthy volume `view` could move to one of
/// `candidates` and so spread the copies over more zones, then racks.
pub fn below_spread(view: &RepairView, candidates: &[Candidate]) -> bool {
    view.healthy
        && local_copies(view).is_some_and(|copies| {
            placement::widen(&copies, candidates, u64::from(view.volume_id)).is_some()
        })
}

/// The one move to start now, if any: of the first healthy volume (by id)
/// whose copies could spread over more zones or racks, to a server
/// placement picks among `candidates(tier)`.
pub fn rebalance<'v>(
    views: impl Iterator<Item = &'v RepairView>,
    candidates: impl Fn(Tier) -> Vec<Candidate>,
    held: &Held,
) -> Option<RepairPlan> {
    let mut views: Vec<&RepairView> = views.filter(|v| v.healthy).collect();
    views.sort_by_key(|v| v.volume_id);
    let mut by_tier: HashMap<Tier, Vec<Candidate>> = HashMap::new();
    views.into_iter().find_map(|view| {
        let copies = local_copies(view)?;
        let candidates = by_tier
            .entry(view.tier)
            .or_insert_with(|| candidates(view.tier));
        let (from, to) = placement::widen(&copies, candidates, u64::from(view.volume_id))?;
        if held.waiting.contains(&(view.volume_id, to.clone())) {
            return None;
        }
        Some(RepairPlan {
            volume_id: view.volume_id,
            collection: view.collection.clone(),
            tier: view.tier,
            target: ServerLocation {
                server_id: to,
                ..ServerLocation::default()
            },
            sources: view.replicas.iter().map(|r| r.location.clone()).collect(),
            kind: RepairKind::Move { from },
        })
    })
}

async fn client(
    location: &ServerLocation,
    credential: &hayloft_proto::Credential,
) -> Result<VolumeClient<hayloft_proto::AuthChannel>, String> {
    let endpoint = credential
        .endpoint(&location.grpc_addr)
        .map_err(|e| e.message().to_owned())?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10));
    let channel = tokio::time::timeout(Duration::from_secs(10), endpoint.connect())
        .await
        .map_err(|_| format!("{} did not answer", location.server_id))?
        .map_err(|e| format!("{} unreachable: {e}", location.server_id))?;
    Ok(VolumeClient::new(credential.channel(channel)))
}

/// Runs `SyncVolume` on `target` from `sources` to the end.
async fn sync(
    target: &ServerLocation,
    sources: &[ServerLocation],
    plan: &RepairPlan,
    settings: &RepairSettings,
) -> Result<(), String> {
    let mut client = client(target, &settings.credential).await?;
    let mut stream = client
        .sync_volume(SyncVolumeRequest {
            volume_id: plan.volume_id,
            collection: plan.collection.clone(),
            tier: plan.tier as i32,
            sources: sources.to_vec(),
            bytes_per_sec: settings.bytes_per_sec,
        })
        .await
        .map_err(|e| format!("{}: {}", target.server_id, e.message()))?
        .into_inner();
    loop {
        let message = tokio::time::timeout(SYNC_SILENCE, stream.message())
            .await
            .map_err(|_| format!("{} sent no progress for {SYNC_SILENCE:?}", target.server_id))?
            .map_err(|e| format!("{}: {}", target.server_id, e.message()))?;
        let Some(progress) = message else {
            return Err(format!("{} ended the sync early", target.server_id));
        };
        if progress.done {
            if !progress.error.is_empty() {
                return Err(format!("{}: {}", target.server_id, progress.error));
            }
            if !progress.unreachable.is_empty() {
                return Err(format!(
                    "sources unreachable from {}: {:?}",
                    target.server_id, progress.unreachable
                ));
            }
            return Ok(());
        }
    }
}

async fn digests(
    location: &ServerLocation,
    volume_id: u32,
    credential: &hayloft_proto::Credential,
) -> Result<Vec<(u64, u64, u64)>, String> {
    let mut client = client(location, credential).await?;
    let ranges = client
        .needle_digests(NeedleDigestsRequest {
            volume_id,
            range_bits: RANGE_BITS,
        })
        .await
        .map_err(|e| format!("{}: {}", location.server_id, e.message()))?
        .into_inner()
        .ranges;
    Ok(ranges
        .into_iter()
        .map(|r| (r.start, r.count, r.hash))
        .collect())
}

/// Has the cold copy on `to` take the tombstones of the one on `from`.
async fn merge_cold(
    to: &ServerLocation,
    from: &ServerLocation,
    volume_id: u32,
    credential: &hayloft_proto::Credential,
) -> Result<(), String> {
    client(to, credential)
        .await?
        .move_volume(MoveVolumeRequest {
            volume_id,
            target: Tier::Cold as i32,
            share_cold_from: from.grpc_addr.clone(),
            ..MoveVolumeRequest::default()
        })
        .await
        .map_err(|e| format!("{}: {}", to.server_id, e.message()))?;
    Ok(())
}

/// Runs one repair: copy, settle, verify.
async fn execute(plan: &RepairPlan, settings: RepairSettings) -> Result<(), String> {
    let target = &plan.target;
    if plan.kind.is_cold() {
        // The first call installs the copy if the target has none; every
        // call merges tombstones, both ways.
        for source in &plan.sources {
            merge_cold(target, source, plan.volume_id, &settings.credential).await?;
            merge_cold(source, target, plan.volume_id, &settings.credential).await?;
        }
        return Ok(());
    }
    for _round in 0..3 {
        sync(target, &plan.sources, plan, &settings).await?;
        if plan.kind == RepairKind::CatchUp {
            // Whatever only the target has (a write that reached it but was
            // never acknowledged) spreads to the others.
            for source in &plan.sources {
                sync(source, std::slice::from_ref(target), plan, &settings).await?;
            }
        }
        let want = digests(target, plan.volume_id, &settings.credential).await?;
        let mut equal = true;
        for source in &plan.sources {
            if digests(source, plan.volume_id, &settings.credential).await? != want {
                equal = false;
            }
        }
        if equal {
            return Ok(());
        }
        tracing::info!(volume = plan.volume_id, target = %target.server_id,
            "copies still differ after a sync (deletes meanwhile); syncing again");
    }
    Err("copies still differ after three syncs".into())
}

/// Before a copy moves: waits until every copy's server has heard that the
/// volume takes no writes (a heartbeat answered after the move's job was
/// committed), so the copies hold still while the new one is filled and
/// compared. A write that started before is settled by the syncs and the
/// digest comparison; one that lands later still is on the old copies and
/// reaches the new one by anti-entropy.
async fn settle_writes(cluster: &Cluster, plan: &RepairPlan) -> Result<(), String> {
    let servers: Vec<String> = plan.sources.iter().map(|s| s.server_id.clone()).collect();
    if cluster
        .heard_from_since(&servers, now_unix(), SETTLE_WRITES)
        .await
    {
        Ok(())
    } else {
        Err(format!(
            "the copies' servers did not all send a heartbeat within {SETTLE_WRITES:?}"
        ))
    }
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
        tracing::info!(volume = plan.volume_id, target = %plan.target.server_id,
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
                tracing::info!(volume = plan.volume_id, target = %plan.target.server_id,
                    seconds = started.elapsed().as_secs_f64(), "repair done, copy verified");
                "ok"
            }
            Err(error) => {
                tracing::warn!(volume = plan.volume_id, target = %plan.target.server_id,
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
            tracing::warn!(volume = plan.volume_id, %error,
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
/// [`Repairs::run_now`]) until `stop`; also deletes extra copies of volumes
/// that are whole again.
pub async fn run(
    cluster: Arc<Cluster>,
    repairs: Arc<Repairs>,
    settings: RepairSettings,
    pulse: Duration,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(pulse) => {}
            () = repairs.wake.notified() => {}
        }
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
            continue;
        }
        // Jobs an earlier leader (or this node before a restart) started.
        let views: HashMap<u32, RepairView> = cluster
            .volume_views(true)
            .into_iter()
            .map(|v| (v.volume_id, v))
            .collect();
        let settled = cluster.settled();
        for job in cluster.repair_jobs() {
            if repairs.is_running(job.volume_id) {
                continue;
            }
            // A repair job of a volume that is whole again ends (a move's
            // volume is whole throughout).
            let view = views
                .get(&job.volume_id)
                .filter(|v| !v.healthy || job.kind == "move");
            match resume(&job, view, settled) {
                Resume::Run(plan) => {
                    tracing::info!(volume = job.volume_id, target = %job.target, kind = %job.kind,
                        started_at = job.started_at, term = job.term,
                        "resuming a repair started before this leader");
                    launch(&cluster, &repairs, plan, settings.clone());
                }
                Resume::Wait => {}
                Resume::End(reason) => {
                    tracing::info!(volume = job.volume_id, target = %job.target, %reason,
                        "repair job ended");
                    if let Err(error) = cluster.end_repair(job.volume_id, &job.target).await {
                        tracing::warn!(volume = job.volume_id, %error, "could not end a repair job");
                    }
                }
            }
        }
        let (plans, _, _) = plan_now(&cluster, &repairs, repair_after, settings.max_per_server);
        for plan in plans {
            // Committed first: if this leader dies, the next one resumes it.
            if let Err(error) = cluster.start_repair(plan.job()).await {
                tracing::warn!(volume = plan.volume_id, %error, "could not start a repair");
                continue;
            }
            launch(&cluster, &repairs, plan, settings.clone());
        }
        // With nothing to repair, one copy at a time moves to spread its
        // volume over more zones (a zone's server back after its copies
        // were made elsewhere).
        if settled && views.values().all(|v| v.healthy) && cluster.repair_jobs().is_empty() {
            let candidates = |tier| cluster.placement_candidates(tier);
            let held = repairs.held(&HashSet::new(), settings.repair_after, false);
            if let Some(plan) = rebalance(views.values(), candidates, &held) {
                tracing::info!(volume = plan.volume_id, target = %plan.target.server_id,
                    kind = ?plan.kind, "moving a copy to spread the volume over more zones");
                match cluster.start_repair(plan.job()).await {
                    Ok(()) => launch(&cluster, &repairs, plan, settings.clone()),
                    Err(error) => {
                        tracing::warn!(volume = plan.volume_id, %error, "could not start a move")
                    }
                }
            }
        }
        for (volume_id, location, keep_object) in cluster.removable_extras() {
            // The deletions before this one took time: the volume may have
            // lost a copy since the list was made.
            if !cluster.still_removable(volume_id, &location.server_id) {
                continue;
            }
            let removed = async {
                client(&location, &settings.credential)
                    .await?
                    .delete_volume(DeleteVolumeRequest {
                        volume_id,
                        keep_object,
                    })
                    .await
                    .map_err(|e| e.message().to_owned())
            }
            .await;
            match removed {
                Ok(_) => {
                    tracing::info!(volume = volume_id, server = %location.server_id,
                        "extra copy removed (the volume has all its copies)");
                    cluster.extra_removed(volume_id, &location.server_id);
                }
                Err(error) => {
                    tracing::warn!(volume = volume_id, server = %location.server_id, %error,
                        "could not remove an extra copy")
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cluster::RepairReplica;

    fn location(id: &str, zone: &str) -> ServerLocation {
        ServerLocation {
            server_id: id.into(),
            zone: zone.into(),
            rack: id.into(),
            ..ServerLocation::default()
        }
    }

    fn replica(id: &str, zone: &str, health: ReplicaHealth, down_for: u64) -> RepairReplica {
        RepairReplica {
            location: location(id, zone),
            health,
            down_for,
            tier: Tier::Hot,
            state: VolumeState::Sealed,
        }
    }

    fn view(id: u32, replicas: Vec<RepairReplica>) -> RepairView {
        RepairView {
            volume_id: id,
            collection: String::new(),
            tier: Tier::Hot,
            desired: replicas.len(),
            healthy: false,
            replicas,
        }
    }

    fn candidates(ids: &[(&str, &str)]) -> Vec<Candidate> {
        ids.iter()
            .map(|(id, zone)| candidate(&location(id, zone)))
            .collect()
    }

    #[test]
    fn an_open_job_resumes_on_its_target_while_it_still_makes_sense() {
        let job = |kind: &str, target: &str, lost: &str| RepairJobRow {
            volume_id: 2,
            target: target.into(),
            kind: kind.into(),
            lost: lost.into(),
            started_at: 1,
            term: 1,
        };
        let lost = view(
            2,
            vec![
                replica("a", "z1", ReplicaHealth::Ok, 0),
                replica("c", "z2", ReplicaHealth::Down, 600),
                replica("b", "z1", ReplicaHealth::Ok, 0),
            ],
        );
        // The same target, whatever placement would pick now.
        let Resume::Run(plan) = resume(&job("replace", "d", "c"), Some(&lost), true) else {
            panic!("a replacement of a copy still down resumes");
        };
        assert_eq!(plan.target.server_id, "d");
        assert_eq!(plan.kind, RepairKind::Replace { lost: "c".into() });
        let sources: Vec<&str> = plan.sources.iter().map(|s| s.server_id.as_str()).collect();
        assert_eq!(sources, ["a", "b"]);
        assert_eq!(plan.job().kind, "replace");
        assert_eq!(plan.job().lost, "c");

        // The lost copy came back (the volume is whole, or that copy is
        // healthy while another is not): the job ends.
        assert!(matches!(
            resume(&job("replace", "d", "c"), None, true),
            Resume::End(_)
        ));
        // A new leader, not yet settled, takes silent servers' copies to be
        // present: it concludes nothing and waits.
        assert!(matches!(
            resume(&job("replace", "d", "c"), None, false),
            Resume::Wait
        ));
        let back = view(
            2,
            vec![
                replica("a", "z1", ReplicaHealth::Ok, 0),
                replica("c", "z2", ReplicaHealth::Ok, 0),
                replica("b", "z1", ReplicaHealth::Stale, 0),
            ],
        );
        assert!(matches!(
            resume(&job("replace", "d", "c"), Some(&back), true),
            Resume::End(_)
        ));
        // A catch-up resumes while its copy is stale, ends once it is not.
        assert!(matches!(
            resume(&job("catch-up", "b", ""), Some(&back), true),
            Resume::Run(p) if p.target.server_id == "b" && p.sources.len() == 2
        ));
        assert!(matches!(
            resume(&job("catch-up", "a", ""), Some(&back), true),
            Resume::End(_)
        ));
        // No healthy copy to copy from: it waits.
        let sourceless = view(
            2,
            vec![
                replica("a", "z1", ReplicaHealth::Down, 600),
                replica("b", "z1", ReplicaHealth::Stale, 0),
            ],
        );
        assert!(matches!(
            resume(&job("catch-up", "b", ""), Some(&sourceless), true),
            Resume::Wait
        ));
        // A kind this version does not know is ended, not guessed at.
        assert!(matches!(
            resume(&job("teleport", "b", ""), Some(&back), true),
            Resume::End(_)
        ));
    }

    #[test]
    fn stale_copies_catch_up_and_lost_ones_are_replaced_after_the_grace() {
        let servers = candidates(&[("a", "z1"), ("b", "z1"), ("c", "z2"), ("d", "z2")]);
        let degraded = vec![
            view(
                1,
                vec![
                    replica("a", "z1", ReplicaHealth::Ok, 0),
                    replica("b", "z1", ReplicaHealth::Stale, 0),
                    replica("c", "z2", ReplicaHealth::Ok, 0),
                ],
            ),
            view(
                2,
                vec![
                    replica("a", "z1", ReplicaHealth::Ok, 0),
                    replica("c", "z2", ReplicaHealth::Down, 5),
                    replica("b", "z1", ReplicaHealth::Ok, 0),
                ],
            ),
        ];
        let idle = HashMap::new();
        let plans = plan(
            &degraded,
            &servers,
            Duration::from_secs(60),
            &HashSet::new(),
            &idle,
            2,
            &Held::default(),
        );
        assert_eq!(
            plans.len(),
            1,
            "the lost copy waits for repair_after: {plans:?}"
        );
        assert_eq!(plans[0].kind, RepairKind::CatchUp);
        assert_eq!(plans[0].target.server_id, "b");
        assert_eq!(plans[0].sources.len(), 2);

        let plans = plan(
            &degraded,
            &servers,
            Duration::from_secs(5),
            &HashSet::new(),
            &idle,
            2,
            &Held::default(),
        );
        assert_eq!(plans.len(), 2);
        // The new copy goes to the other zone's free server, never to a
        // server holding a copy.
        assert_eq!(plans[1].kind, RepairKind::Replace { lost: "c".into() });
        assert_eq!(plans[1].target.server_id, "d");
    }

    #[test]
    fn a_new_copy_waits_for_a_busy_server_rather_than_doubling_a_zone() {
        let servers = candidates(&[
            ("a", "z1"),
            ("b", "z1"),
            ("c", "z2"),
            ("d", "z2"),
            ("f", "z3"),
        ]);
        let lost = view(
            1,
            vec![
                replica("a", "z1", ReplicaHealth::Ok, 0),
                replica("c", "z2", ReplicaHealth::Ok, 0),
                replica("e", "z3", ReplicaHealth::Down, 999),
            ],
        );
        let plan_with = |running: &HashMap<String, usize>| {
            plan(
                std::slice::from_ref(&lost),
                &servers,
                Duration::ZERO,
                &HashSet::new(),
                running,
                2,
                &Held::default(),
            )
        };
        let plans = plan_with(&HashMap::new());
        assert_eq!(plans.len(), 1, "{plans:?}");
        assert_eq!(
            plans[0].target.server_id, "f",
            "the zone the lost copy was in"
        );
        // f runs as many repairs as it may: the volume waits for it, and
        // never goes to b or d (zones that hold a copy already).
        let plans = plan_with(&HashMap::from([("f".to_owned(), 2)]));
        assert!(plans.is_empty(), "{plans:?}");
        // With z3 gone altogether, a doubled zone is the best there is.
        let without_z3: Vec<Candidate> =
            servers.iter().filter(|c| c.zone != "z3").cloned().collect();
        let plans = plan(
            std::slice::from_ref(&lost),
            &without_z3,
            Duration::ZERO,
            &HashSet::new(),
            &HashMap::new(),
            2,
            &Held::default(),
        );
        assert_eq!(plans.len(), 1, "{plans:?}");
        assert!(["b", "d"].contains(&plans[0].target.server_id.as_str()));
    }

    #[test]
    fn failing_catch_ups_wait_longer_each_time_and_are_given_up_after_repair_after() {
        let servers = candidates(&[("a", "z1"), ("b", "z2"), ("c", "z3"), ("d", "z3")]);
        let stale = view(
            1,
            vec![
                replica("a", "z1", ReplicaHealth::Ok, 0),
                replica("b", "z2", ReplicaHealth::Ok, 0),
                replica("c", "z3", ReplicaHealth::Stale, 0),
            ],
        );
        let repairs = Repairs::default();
        let catch_up = RepairPlan {
            volume_id: 1,
            collection: String::new(),
            tier: Tier::Hot,
            target: location("c", "z3"),
            sources: vec![location("a", "z1"), location("b", "z2")],
            kind: RepairKind::CatchUp,
        };
        let degraded: HashSet<u32> = [1].into();
        let plan_held = |held: &Held| {
            plan(
                std::slice::from_ref(&stale),
                &servers,
                Duration::ZERO,
                &HashSet::new(),
                &HashMap::new(),
                2,
                held,
            )
        };
        let repair_after = Duration::from_secs(3600);
        for attempt in 1..=GIVE_UP_ATTEMPTS {
            let before = Instant::now();
            repairs.ended(&catch_up, &Err("volume 1 is full".into()));
            // Not tried again at once...
            let held = repairs.held_at(&degraded, repair_after, false, before);
            assert!(held.waiting.contains(&(1, "c".to_owned())), "{held:?}");
            assert!(held.given_up.is_empty(), "{held:?}");
            assert!(plan_held(&held).is_empty());
            // ...but once its wait is over (or an operator asks).
            let later = before + RETRY_MAX + Duration::from_secs(1);
            let held = repairs.held_at(&degraded, repair_after, false, later);
            assert!(held.waiting.is_empty(), "attempt {attempt}: {held:?}");
            let plans = plan_held(&held);
            assert_eq!(plans[0].kind, RepairKind::CatchUp);
            assert!(
                repairs
                    .held_at(&degraded, repair_after, true, before)
                    .waiting
                    .is_empty()
            );
        }
        assert!(repairs.problems()[0].contains("volume 1 is full"));
        // Failing for `repair_after`: the copy is replaced elsewhere.
        let much_later = Instant::now() + repair_after;
        let held = repairs.held_at(&degraded, repair_after, false, much_later);
        assert!(held.given_up.contains(&(1, "c".to_owned())), "{held:?}");
        let plans = plan_held(&held);
        assert_eq!(plans.len(), 1, "{plans:?}");
        assert_eq!(plans[0].kind, RepairKind::Replace { lost: "c".into() });
        assert_eq!(plans[0].target.server_id, "d");
        // The replacement done, the failures are forgotten; a volume no
        // longer degraded forgets its failures too.
        repairs.ended(&plans[0], &Ok(()));
        assert!(repairs.problems().is_empty());
        repairs.ended(&catch_up, &Err("again".into()));
        repairs.held(&HashSet::new(), repair_after, false);
        assert_eq!(repairs.problems().len(), 1, "kept until its retry is due");
        repairs.held_at(&HashSet::new(), repair_after, false, much_later);
        assert!(repairs.problems().is_empty());
    }

    #[test]
    fn a_whole_volume_in_two_zones_moves_one_copy_to_the_third() {
        let mut doubled = view(
            1,
            vec![
                replica("a", "z1", ReplicaHealth::Ok, 0),
                replica("b", "z1", ReplicaHealth::Ok, 0),
                replica("c", "z2", ReplicaHealth::Ok, 0),
            ],
        );
        doubled.healthy = true;
        let servers = candidates(&[("a", "z1"), ("b", "z1"), ("c", "z2"), ("e", "z3")]);
        let plan = rebalance(
            [&doubled].into_iter(),
            |_| servers.clone(),
            &Held::default(),
        )
        .unwrap();
        assert_eq!(plan.target.server_id, "e");
        let RepairKind::Move { from } = &plan.kind else {
            panic!("{plan:?}")
        };
        assert!(["a", "b"].contains(&from.as_str()), "{from}");
        assert_eq!(plan.sources.len(), 3, "every copy is a source");
        assert!(below_spread(&doubled, &servers));
        // The job it commits resumes as the same move while it makes sense.
        let job = plan.job();
        assert!(
            matches!(resume(&job, Some(&doubled), true), Resume::Run(p) if p.kind == plan.kind)
        );
        let mut broken = doubled.clone();
        broken.healthy = false;
        assert!(matches!(resume(&job, Some(&broken), true), Resume::End(_)));
        // A degraded volume is repaired, not moved; a move whose target
        // just failed waits; without the third zone nothing moves.
        assert!(rebalance([&broken].into_iter(), |_| servers.clone(), &Held::default()).is_none());
        let held = Held {
            waiting: [(1, "e".to_owned())].into(),
            ..Held::default()
        };
        assert!(rebalance([&doubled].into_iter(), |_| servers.clone(), &held).is_none());
        let two_zones = candidates(&[("a", "z1"), ("b", "z1"), ("c", "z2"), ("d", "z2")]);
        assert!(
            rebalance(
                [&doubled].into_iter(),
                |_| two_zones.clone(),
                &Held::default()
            )
            .is_none()
        );
        assert!(!below_spread(&doubled, &two_zones));
    }

    #[test]
    fn no_source_no_repair_and_bounded_per_server() {
        let servers = candidates(&[("a", "z"), ("b", "z"), ("c", "z")]);
        let orphan = view(
            1,
            vec![
                replica("a", "z", ReplicaHealth::Down, 999),
                replica("b", "z", ReplicaHealth::Stale, 0),
            ],
        );
        let plans = plan(
            &[orphan],
            &servers,
            Duration::ZERO,
            &HashSet::new(),
            &HashMap::new(),
            2,
            &Held::default(),
        );
        assert!(plans.is_empty(), "nothing to copy from: {plans:?}");

        let many: Vec<RepairView> = (0..5)
            .map(|id| {
                view(
                    id,
                    vec![
                        replica("a", "z", ReplicaHealth::Ok, 0),
                        replica("b", "z", ReplicaHealth::Stale, 0),
                    ],
                )
            })
            .collect();
        let busy: HashSet<u32> = [0].into();
        let plans = plan(
            &many,
            &servers,
            Duration::ZERO,
            &busy,
            &HashMap::new(),
            2,
            &Held::default(),
        );
        assert_eq!(plans.len(), 2, "at most two repairs to b at once");
        assert!(
            plans.iter().all(|p| p.volume_id != 0),
            "volume 0 is being repaired"
        );
    }

    #[test]
    fn a_volume_back_from_cold_gets_its_copies_from_local_ones_only() {
        let servers = candidates(&[("a", "z1"), ("b", "z2"), ("c", "z3"), ("d", "z3")]);
        let cold = |id: &str, zone: &str| RepairReplica {
            tier: Tier::Cold,
            state: VolumeState::Cold,
            ..replica(id, zone, ReplicaHealth::Ok, 0)
        };
        // a is local again, b still cold: a new copy from a, never from b,
        // on a server holding no copy, spread to the third zone.
        let mut back = view(
            1,
            vec![replica("a", "z1", ReplicaHealth::Ok, 0), cold("b", "z2")],
        );
        back.desired = 3;
        let plans = plan(
            std::slice::from_ref(&back),
            &servers,
            Duration::ZERO,
            &HashSet::new(),
            &HashMap::new(),
            2,
            &Held::default(),
        );
        assert_eq!(plans.len(), 1, "{plans:?}");
        assert_eq!(plans[0].kind, RepairKind::Add);
        assert!(["c", "d"].contains(&plans[0].target.server_id.as_str()));
        let sources: Vec<&str> = plans[0]
            .sources
            .iter()
            .map(|s| s.server_id.as_str())
            .collect();
        assert_eq!(sources, ["a"]);

        // Every copy cold: nothing to copy from. A copy moving: wait.
        let mut all_cold = view(2, vec![cold("a", "z1")]);
        all_cold.desired = 2;
        let mut moving = back.clone();
        moving.replicas[1].state = VolumeState::Moving;
        let plans = plan(
            &[all_cold, moving],
            &servers,
            Duration::ZERO,
            &HashSet::new(),
            &HashMap::new(),
            2,
            &Held::default(),
        );
        assert!(plans.is_empty(), "{plans:?}");

        // A cold copy that missed a delete catches up from the other one.
        let mut stale = view(3, vec![cold("a", "z1"), cold("b", "z2")]);
        stale.replicas[1].health = ReplicaHealth::Stale;
        stale.desired = 2;
        let plans = plan(
            &[stale],
            &servers,
            Duration::ZERO,
            &HashSet::new(),
            &HashMap::new(),
            2,
            &Held::default(),
        );
        assert_eq!(plans.len(), 1, "{plans:?}");
        assert_eq!(plans[0].kind, RepairKind::CatchUpCold);
        assert_eq!(plans[0].target.server_id, "b");
        assert_eq!(plans[0].sources[0].server_id, "a");

        // A cold copy lost for good gets a new cold copy elsewhere; a wiped
        // one (missing, tier unknown) is refilled in place.
        let mut lost = view(4, vec![cold("a", "z1"), cold("b", "z2")]);
        lost.replicas[1].health = ReplicaHealth::Down;
        lost.replicas[1].down_for = 100;
        lost.desired = 2;
        let mut wiped = view(
            5,
            vec![
                cold("a", "z1"),
                replica("c", "z3", ReplicaHealth::Missing, 0),
            ],
        );
        wiped.replicas[1].tier = Tier::Unspecified;
        wiped.desired = 2;
        let plans = plan(
            &[lost, wiped],
            &servers,
            Duration::from_secs(60),
            &HashSet::new(),
            &HashMap::new(),
            2,
            &Held::default(),
        );
        assert_eq!(plans.len(), 2, "{plans:?}");
        assert_eq!(plans[0].kind, RepairKind::ReplaceCold { lost: "b".into() });
        assert!(["c", "d"].contains(&plans[0].target.server_id.as_str()));
        assert_eq!(plans[0].sources[0].server_id, "a");
        assert_eq!(plans[1].kind, RepairKind::CatchUpCold);
        assert_eq!(plans[1].target.server_id, "c");
    }
}
