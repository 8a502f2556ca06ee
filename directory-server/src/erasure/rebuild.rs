//! Rebuilding lost shards, the pure part: which shard of which
//! erasure-coded volume to rebuild, on which server ([`plan_rebuilds`]),
//! and what a leader does with a rebuild job it finds open
//! ([`resume_rebuild`]). The worker that runs them is `shard_worker`; the
//! protocol and its failure table are in ARCHITECTURE.md ("Rebuilding lost
//! shards").

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use hayloft_proto::ServerLocation;
use hayloft_storage::VolumeId;
use hayloft_storage::erasure::Code;

use crate::cluster::unix_now;
use crate::db::RepairJobRow;
use crate::placement::{self, Candidate};

/// The kind a shard rebuild's job carries (`RepairJobRow::kind`).
pub const REBUILD_KIND: &str = "rebuild-shard";

/// One erasure-coded volume as rebuilds see it.
#[derive(Debug, Clone)]
pub struct ShardView {
    /// The volume.
    pub volume_id: VolumeId,
    /// Its code.
    pub code: Code,
    /// Bytes one shard takes (room a new holder needs).
    pub shard_bytes: u64,
    /// The holder of each shard, shard by shard.
    pub holders: Vec<ShardHolder>,
    /// Servers reporting files of the volume while holding no shard of it
    /// in the layout (orphans, being dropped): never a target.
    pub others: Vec<String>,
}

/// The holder of one shard, and how its shard is.
#[derive(Debug, Clone)]
pub struct ShardHolder {
    /// Where it is (zone and rack count for spread).
    pub location: ServerLocation,
    /// Seconds its server has been silent, if it is down.
    pub down_for: Option<u64>,
    /// Seconds its (live) server has reported this shard missing or
    /// damaged, if it does.
    pub bad_for: Option<u64>,
}

impl ShardHolder {
    /// Alive and reporting its shard whole (or not reported on yet: a new
    /// leader takes what the layout says until the first heartbeat).
    pub fn healthy(&self) -> bool {
        self.down_for.is_none() && self.bad_for.is_none()
    }
}

impl ShardView {
    /// Shards whose holder is healthy, other than `except`.
    fn healthy_besides(&self, except: usize) -> Vec<&ShardHolder> {
        self.holders
            .iter()
            .enumerate()
            .filter(|(i, h)| *i != except && h.healthy())
            .map(|(_, h)| h)
            .collect()
    }
}

/// When a shard counts as lost.
#[derive(Debug, Clone, Copy)]
pub struct RebuildAfter {
    /// Its holder's server has been down this long.
    pub down: Duration,
    /// Its live holder has reported it missing or damaged this long.
    pub bad: Duration,
}

/// A rebuild to run: shard `shard` of `volume_id`, lost with `lost`, made
/// again on `target` from the other shards (the volume's files fetched
/// from `source`, a healthy holder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRebuild {
    /// The volume.
    pub volume_id: VolumeId,
    /// The shard's index.
    pub shard: u32,
    /// The holder (server id) whose shard is lost.
    pub lost: String,
    /// The server (id) that gets it.
    pub target: String,
    /// A healthy holder (server id) to fetch the volume's files from.
    pub source: String,
}

impl ShardRebuild {
    /// The job committed before it runs (a new leader resumes it).
    pub fn job(&self) -> RepairJobRow {
        RepairJobRow {
            volume_id: self.volume_id.0,
            target: self.target.clone(),
            kind: REBUILD_KIND.to_owned(),
            lost: self.lost.clone(),
            started_at: unix_now(),
            term: 0,
            shard: self.shard,
            ..RepairJobRow::default()
        }
    }
}

fn candidate_of(location: &ServerLocation) -> Candidate {
    Candidate {
        server_id: location.server_id.clone(),
        zone: location.zone.clone(),
        rack: location.rack.clone(),
        free_bytes: u64::MAX,
        volumes: 0,
    }
}

/// The shards to rebuild now, one per volume (the volume's other lost
/// shards follow once it is done): a shard whose holder has been down for
/// `after.down`, or reports it missing or damaged for `after.bad`, with at
/// least `k` healthy shards left to rebuild it from. Its new holder is a
/// live server of `candidates` holding nothing of the volume, with room
/// for a shard and fewer than `max_per_server` jobs copying to it
/// (`per_server`), placed as the encode placed the shards: its zone, then
/// rack, the least crowded by the healthy holders (so no zone holds more
/// than `m` while the servers allow). Volumes in `busy` (a job open) or
/// `waiting` (a failed rebuild backing off) are left alone.
pub fn plan_rebuilds(
    volumes: &[ShardView],
    candidates: &[Candidate],
    after: RebuildAfter,
    busy: &HashSet<VolumeId>,
    per_server: &HashMap<String, usize>,
    max_per_server: usize,
    waiting: &HashSet<VolumeId>,
) -> Vec<ShardRebuild> {
    let mut load = per_server.clone();
    let mut plans = Vec::new();
    for view in volumes {
        if busy.contains(&view.volume_id) || waiting.contains(&view.volume_id) {
            continue;
        }
        let lost = view.holders.iter().position(|h| {
            h.down_for.is_some_and(|s| s >= after.down.as_secs())
                || h.bad_for.is_some_and(|s| s >= after.bad.as_secs())
        });
        let Some(shard) = lost else {
            continue;
        };
        let sources = view.healthy_besides(shard);
        if sources.len() < usize::from(view.code.data) {
            // Too few shards left to rebuild from: it waits for holders
            // to come back (reads answer UNAVAILABLE meanwhile).
            continue;
        }
        let taken: HashSet<&str> = view
            .holders
            .iter()
            .map(|h| h.location.server_id.as_str())
            .chain(view.others.iter().map(String::as_str))
            .collect();
        let eligible: Vec<Candidate> = candidates
            .iter()
            .filter(|c| !taken.contains(c.server_id.as_str()))
            .filter(|c| c.free_bytes >= view.shard_bytes)
            .filter(|c| load.get(&c.server_id).copied().unwrap_or(0) < max_per_server)
            .cloned()
            .collect();
        let existing: Vec<Candidate> = sources.iter().map(|h| candidate_of(&h.location)).collect();
        let Ok(chosen) = placement::place(&eligible, &existing, 1, u64::from(view.volume_id.0))
        else {
            continue;
        };
        let Some(target) = chosen.into_iter().next() else {
            continue;
        };
        *load.entry(target.clone()).or_default() += 1;
        plans.push(ShardRebuild {
            volume_id: view.volume_id,
            shard: shard as u32,
            lost: view.holders[shard].location.server_id.clone(),
            target,
            source: sources[0].location.server_id.clone(),
        });
    }
    plans
}

/// What a leader does with an open rebuild job that runs nowhere here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebuildResume {
    /// Run it again on the same target (which keeps a shard it already
    /// finished, and starts a half-made one again).
    Run(ShardRebuild),
    /// Not now (too few healthy shards to rebuild from; or the leader has
    /// not settled, and takes silent holders to be present).
    Wait,
    /// End it, for this reason.
    End(String),
}

/// Decides what becomes of the open rebuild `job`, given its volume now
/// (`None`: gone, or no longer erasure-coded). Until the leader has
/// `settled`, nothing is ended.
pub fn resume_rebuild(
    job: &RepairJobRow,
    view: Option<&ShardView>,
    settled: bool,
) -> RebuildResume {
    match decide(job, view) {
        RebuildResume::End(_) if !settled => RebuildResume::Wait,
        decided => decided,
    }
}

fn decide(job: &RepairJobRow, view: Option<&ShardView>) -> RebuildResume {
    let Some(view) = view else {
        return RebuildResume::End("the volume is no longer erasure-coded".into());
    };
    let shard = job.shard as usize;
    let Some(holder) = view.holders.get(shard) else {
        return RebuildResume::End(format!("the volume has no shard {shard}"));
    };
    let holder_id = &holder.location.server_id;
    if *holder_id == job.target {
        return RebuildResume::End(format!(
            "shard {shard} is recorded on {} already",
            job.target
        ));
    }
    if *holder_id != job.lost {
        return RebuildResume::End(format!("shard {shard} is held by {holder_id} now"));
    }
    if holder.healthy() {
        return RebuildResume::End(format!("{holder_id} holds shard {shard} again"));
    }
    let sources = view.healthy_besides(shard);
    if sources.len() < usize::from(view.code.data) {
        return RebuildResume::Wait;
    }
    RebuildResume::Run(ShardRebuild {
        volume_id: view.volume_id,
        shard: job.shard,
        lost: job.lost.clone(),
        target: job.target.clone(),
        source: sources[0].location.server_id.clone(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn location(id: &str, zone: &str) -> ServerLocation {
        ServerLocation {
            server_id: id.into(),
            zone: zone.into(),
            rack: id.into(),
            ..ServerLocation::default()
        }
    }

    fn holder(id: &str, zone: &str, down_for: Option<u64>, bad_for: Option<u64>) -> ShardHolder {
        ShardHolder {
            location: location(id, zone),
            down_for,
            bad_for,
        }
    }

    fn candidate(id: &str, zone: &str) -> Candidate {
        Candidate {
            server_id: id.into(),
            zone: zone.into(),
            rack: id.into(),
            free_bytes: 1 << 30,
            volumes: 0,
        }
    }

    /// Volume 7, 3+2, shard `i` on `h<i>`, in zones z0 z0 z1 z1 z2.
    fn view(holders: Vec<ShardHolder>) -> ShardView {
        ShardView {
            volume_id: VolumeId(7),
            code: Code::new(3, 2).unwrap(),
            shard_bytes: 1 << 20,
            holders,
            others: Vec::new(),
        }
    }

    fn healthy_view() -> Vec<ShardHolder> {
        ["z0", "z0", "z1", "z1", "z2"]
            .iter()
            .enumerate()
            .map(|(i, z)| holder(&format!("h{i}"), z, None, None))
            .collect()
    }

    const AFTER: RebuildAfter = RebuildAfter {
        down: Duration::from_secs(600),
        bad: Duration::from_secs(15),
    };

    fn plan(views: &[ShardView], candidates: &[Candidate]) -> Vec<ShardRebuild> {
        plan_rebuilds(
            views,
            candidates,
            AFTER,
            &HashSet::new(),
            &HashMap::new(),
            2,
            &HashSet::new(),
        )
    }

    #[test]
    fn a_shard_down_past_repair_after_is_rebuilt_where_it_spreads_the_volume_best() {
        let mut holders = healthy_view();
        // The lone holder of zone z2 is down, not yet for repair_after.
        holders[4].down_for = Some(599);
        let servers: Vec<Candidate> = ["z0", "z1", "z2", "z3"]
            .iter()
            .enumerate()
            .map(|(i, z)| candidate(&format!("s{i}"), z))
            .chain((0..4).map(|i| candidate(&format!("h{i}"), if i < 2 { "z0" } else { "z1" })))
            .collect();
        assert!(plan(&[view(holders.clone())], &servers).is_empty());
        holders[4].down_for = Some(600);
        let plans = plan(&[view(holders.clone())], &servers);
        assert_eq!(plans.len(), 1, "{plans:?}");
        let rebuild = &plans[0];
        assert_eq!((rebuild.shard, rebuild.lost.as_str()), (4, "h4"));
        // An empty zone (z2 or z3), never a holder, never z0 or z1 (each
        // holds m = 2 shards already).
        assert!(
            ["s2", "s3"].contains(&rebuild.target.as_str()),
            "{rebuild:?}"
        );
        assert!(rebuild.source.starts_with('h') && rebuild.source != "h4");
        let job = rebuild.job();
        assert_eq!(
            (job.kind.as_str(), job.shard, job.lost.as_str()),
            (REBUILD_KIND, 4, "h4")
        );

        // A busy volume, one backing off, or targets all at their limit:
        // nothing planned.
        let busy: HashSet<VolumeId> = [VolumeId(7)].into();
        let one = [view(holders.clone())];
        assert!(
            plan_rebuilds(
                &one,
                &servers,
                AFTER,
                &busy,
                &HashMap::new(),
                2,
                &HashSet::new()
            )
            .is_empty()
        );
        assert!(
            plan_rebuilds(
                &one,
                &servers,
                AFTER,
                &HashSet::new(),
                &HashMap::new(),
                2,
                &busy
            )
            .is_empty()
        );
        let full: HashMap<String, usize> = ["s0", "s1", "s2", "s3"]
            .iter()
            .map(|s| (s.to_string(), 2))
            .collect();
        assert!(
            plan_rebuilds(
                &one,
                &servers,
                AFTER,
                &HashSet::new(),
                &full,
                2,
                &HashSet::new()
            )
            .is_empty()
        );
        // A server holding orphan files of the volume is never chosen.
        let mut orphaned = view(holders);
        orphaned.others = vec!["s2".into(), "s3".into()];
        let plans = plan(&[orphaned], &servers);
        assert!(
            ["s0", "s1"].contains(&plans[0].target.as_str()),
            "{plans:?}"
        );
    }

    #[test]
    fn a_shard_reported_missing_is_rebuilt_elsewhere_and_fewer_than_k_left_waits() {
        let servers = [candidate("s0", "z9")];
        let mut holders = healthy_view();
        holders[1].bad_for = Some(14);
        assert!(plan(&[view(holders.clone())], &servers).is_empty());
        holders[1].bad_for = Some(15);
        let plans = plan(&[view(holders.clone())], &servers);
        assert_eq!((plans[0].shard, plans[0].target.as_str()), (1, "s0"));
        // Three shards gone of 3+2: two healthy left, fewer than k = 3.
        holders[2].down_for = Some(9_999);
        holders[3].down_for = Some(9_999);
        assert!(plan(&[view(holders)], &servers).is_empty());
        // No server outside the holders: nothing planned.
        let mut holders = healthy_view();
        holders[0].down_for = Some(9_999);
        let only_holders: Vec<Candidate> =
            (1..5).map(|i| candidate(&format!("h{i}"), "z0")).collect();
        assert!(plan(&[view(holders)], &only_holders).is_empty());
    }

    #[test]
    fn an_open_rebuild_resumes_on_its_target_while_its_shard_is_still_lost() {
        let job = RepairJobRow {
            volume_id: 7,
            target: "s3".into(),
            kind: REBUILD_KIND.into(),
            lost: "h4".into(),
            started_at: 1,
            term: 1,
            shard: 4,
            ..RepairJobRow::default()
        };
        let mut holders = healthy_view();
        holders[4].down_for = Some(700);
        let lost = view(holders.clone());
        let RebuildResume::Run(rebuild) = resume_rebuild(&job, Some(&lost), true) else {
            panic!("a rebuild of a shard still lost resumes");
        };
        assert_eq!((rebuild.target.as_str(), rebuild.shard), ("s3", 4));
        // The result was committed (the shard is on the target), another
        // server took the shard, the holder came back, or the volume is
        // no longer erasure-coded: ended, once settled.
        let mut moved = holders.clone();
        moved[4] = holder("s3", "z3", None, None);
        assert!(matches!(
            resume_rebuild(&job, Some(&view(moved.clone())), true),
            RebuildResume::End(_)
        ));
        moved[4] = holder("s9", "z3", None, None);
        assert!(matches!(
            resume_rebuild(&job, Some(&view(moved)), true),
            RebuildResume::End(_)
        ));
        let back = view(healthy_view());
        assert!(matches!(
            resume_rebuild(&job, Some(&back), true),
            RebuildResume::End(_)
        ));
        assert!(matches!(
            resume_rebuild(&job, None, true),
            RebuildResume::End(_)
        ));
        // Not settled: a new leader concludes nothing.
        assert_eq!(
            resume_rebuild(&job, Some(&back), false),
            RebuildResume::Wait
        );
        assert_eq!(resume_rebuild(&job, None, false), RebuildResume::Wait);
        // Too few healthy shards to rebuild from: it waits.
        holders[0].down_for = Some(700);
        holders[1].down_for = Some(700);
        assert_eq!(
            resume_rebuild(&job, Some(&view(holders)), true),
            RebuildResume::Wait
        );
    }
}
