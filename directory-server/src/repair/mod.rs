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
//!
//! The rooms: [`plan`] (the pure planner, and the rebalance that restores
//! spread), [`resume`] (what a new leader does with an open job), `jobs`
//! (repairs running and failing on this leader), `execute` (one repair
//! against the volume servers), `schedule` (the loop that plans and runs).

mod execute;
mod jobs;
pub mod plan;
pub mod resume;
mod schedule;

pub(crate) use execute::client as volume_client;
pub use jobs::{GIVE_UP_ATTEMPTS, Held, RETRY_MAX, Repairs};
pub use plan::{below_spread, plan, rebalance};
pub use resume::{Resume, resume};
pub use schedule::{RepairWorker, plan_now};

use std::time::Duration;

use hayloft_proto::{ServerLocation, Tier};
use hayloft_storage::VolumeId;

use crate::cluster::unix_now;
use crate::db::RepairJobRow;

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
    pub volume_id: VolumeId,
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
            volume_id: self.volume_id.0,
            target: self.target.server_id.clone(),
            kind: kind.to_owned(),
            lost: lost.to_owned(),
            started_at: unix_now(),
            term: 0,
            ..RepairJobRow::default()
        }
    }
}

/// Builders the planner's and the jobs' tests share.
#[cfg(test)]
pub(crate) mod fixtures {
    use hayloft_proto::{ReplicaHealth, ServerLocation, Tier, VolumeState};
    use hayloft_storage::VolumeId;

    use crate::cluster::{RepairReplica, RepairView};
    use crate::placement::Candidate;

    pub fn location(id: &str, zone: &str) -> ServerLocation {
        ServerLocation {
            server_id: id.into(),
            zone: zone.into(),
            rack: id.into(),
            ..ServerLocation::default()
        }
    }

    pub fn replica(id: &str, zone: &str, health: ReplicaHealth, down_for: u64) -> RepairReplica {
        RepairReplica {
            location: location(id, zone),
            health,
            down_for,
            tier: Tier::Hot,
            state: VolumeState::Sealed,
        }
    }

    pub fn view(id: u32, replicas: Vec<RepairReplica>) -> RepairView {
        RepairView {
            volume_id: VolumeId(id),
            collection: String::new(),
            tier: Tier::Hot,
            desired: replicas.len(),
            healthy: false,
            replicas,
        }
    }

    pub fn candidates(ids: &[(&str, &str)]) -> Vec<Candidate> {
        ids.iter()
            .map(|(id, zone)| super::plan::candidate(&location(id, zone)))
            .collect()
    }
}
