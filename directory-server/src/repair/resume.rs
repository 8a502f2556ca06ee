//! What a leader does with an open repair job it is not running (one an
//! earlier leader started): run it again on the same target, wait, or end it.

use hayloft_proto::{ReplicaHealth, ServerLocation, Tier, VolumeState};

use super::{RepairKind, RepairPlan};
use crate::cluster::RepairView;
use crate::db::RepairJobRow;

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::repair::fixtures::*;

    #[test]
    fn an_open_job_resumes_on_its_target_while_it_still_makes_sense() {
        let job = |kind: &str, target: &str, lost: &str| RepairJobRow {
            volume_id: 2,
            target: target.into(),
            kind: kind.into(),
            lost: lost.into(),
            started_at: 1,
            term: 1,
            shard: 0,
            ..RepairJobRow::default()
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
}
