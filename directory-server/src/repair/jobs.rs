//! Repairs running on this leader, and those that keep failing: when each
//! may be tried again, and which copies are given up on.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::{RepairKind, RepairPlan};
use hayloft_storage::VolumeId;
use parking_lot::Mutex;

/// The longest wait between two attempts of a failing repair.
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// Attempts a copy's catch-up gets (over at least `repair_after`) before the
/// copy is replaced elsewhere.
pub const GIVE_UP_ATTEMPTS: u32 = 3;

/// Copies repair keeps its hands off for now, by (volume, server).
#[derive(Debug, Default, Clone)]
pub struct Held {
    /// Targets whose last repair failed, until their next attempt is due.
    pub waiting: HashSet<(VolumeId, String)>,
    /// Copies that failed to catch up for `repair_after`: replaced elsewhere.
    pub given_up: HashSet<(VolumeId, String)>,
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
    pub(super) running: Mutex<HashMap<VolumeId, RepairPlan>>,
    /// (volume, target) -> its failures in a row (the leader's soft state:
    /// a new leader starts counting again). Locked after `running`, never
    /// across an `.await`.
    failing: Mutex<HashMap<(VolumeId, String), Failing>>,
    /// Set by `hayloft repair`: the next round ignores `repair_after`.
    pub(super) urgent: std::sync::atomic::AtomicBool,
    pub(super) wake: tokio::sync::Notify,
}

impl Repairs {
    /// The repair of `volume_id` running on this node, if any.
    pub fn plan(&self, volume_id: VolumeId) -> Option<RepairPlan> {
        self.running.lock().get(&volume_id).cloned()
    }

    /// True while a repair of `volume_id` runs.
    pub fn is_running(&self, volume_id: VolumeId) -> bool {
        self.running.lock().contains_key(&volume_id)
    }

    /// Runs a round of repairs at once, without waiting for `repair_after`.
    pub fn run_now(&self) {
        self.urgent.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Records how a repair of `volume_id` to `target` ended: a success
    /// forgets its failures (and, for a replacement, the lost copy's).
    pub(super) fn ended(&self, plan: &RepairPlan, result: &Result<(), String>) {
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
    pub fn held(&self, degraded: &HashSet<VolumeId>, repair_after: Duration, urgent: bool) -> Held {
        self.held_at(degraded, repair_after, urgent, Instant::now())
    }

    pub(super) fn held_at(
        &self,
        degraded: &HashSet<VolumeId>,
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

    pub(super) fn busy(&self) -> (HashSet<VolumeId>, HashMap<String, usize>) {
        let running = self.running.lock();
        let mut per_server: HashMap<String, usize> = HashMap::new();
        for plan in running.values() {
            *per_server.entry(plan.target.server_id.clone()).or_default() += 1;
        }
        (running.keys().copied().collect(), per_server)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::repair::fixtures::*;
    use crate::repair::plan;
    use hayloft_proto::{ReplicaHealth, Tier};

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
            volume_id: VolumeId(1),
            collection: String::new(),
            tier: Tier::Hot,
            target: location("c", "z3"),
            sources: vec![location("a", "z1"), location("b", "z2")],
            kind: RepairKind::CatchUp,
        };
        let degraded: HashSet<VolumeId> = [VolumeId(1)].into();
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
            assert!(
                held.waiting.contains(&(VolumeId(1), "c".to_owned())),
                "{held:?}"
            );
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
        assert!(
            held.given_up.contains(&(VolumeId(1), "c".to_owned())),
            "{held:?}"
        );
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
}
