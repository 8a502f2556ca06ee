//! The pure planner: which repairs start now, and the one move that
//! restores a volume's spread over zones.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use hayloft_proto::{ReplicaHealth, ServerLocation, Tier, VolumeState};

use hayloft_storage::VolumeId;

use super::{Held, RepairKind, RepairPlan};
use crate::cluster::{RepairReplica, RepairView, site};
use crate::placement::{self, Candidate};

pub(super) fn candidate(location: &ServerLocation) -> Candidate {
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
    busy: &HashSet<VolumeId>,
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::repair::fixtures::*;
    use crate::repair::{Resume, resume};

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
            waiting: [(VolumeId(1), "e".to_owned())].into(),
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
        let busy: HashSet<VolumeId> = [VolumeId(0)].into();
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
            plans.iter().all(|p| p.volume_id != VolumeId(0)),
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
