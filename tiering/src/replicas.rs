//! Tier moves of replicated volumes: every copy moves, and a cold volume is
//! one object in the object store with its index on every copy's server.
//! See ARCHITECTURE.md, "Tier moves of replicated volumes".
//!
//! The first copy of the replica set leads: the policy decides on its tier
//! (with the reads of every copy summed), and the others follow it step by
//! step. [`steps`] is a pure function of the directory's view; the planner
//! (and `hayloft tier move`) calls it again every round until it has nothing
//! left to do, so a crash of the worker, of the CLI or of a volume server
//! between two steps only delays the next one.
//!
//! | lead | target | next steps |
//! |---|---|---|
//! | local | local T | every copy not on T moves to T (in parallel); a cold follower is dropped (the last one deletes the object) |
//! | local | cold | the lead uploads (a normal move to cold) |
//! | cold | cold | every local follower shares the lead's object (a copy beyond the replication, if any, is dropped) |
//! | cold | local T | the lead downloads, keeping the object while a follower is cold |
//!
//! A volume with a copy down, stale, missing, moving or compacting waits. A
//! writable copy is sealed by its own move (the directory stops assigning
//! ids in a volume once a copy reports it sealed).
//! Once a volume is local again with fewer copies than its replication, the
//! directory's repair adds copies (from local copies only).

use hayloft_proto::{
    Replica, ReplicaHealth, Tier as ProtoTier, VolumeHealth, VolumeRecord, VolumeState,
    VolumeStatus,
};
use hayloft_storage::Tier;

use crate::plan::Action;

/// Where a replicated volume should go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The tier.
    pub tier: Tier,
    /// For cold: the bucket, key prefix and storage class of the upload.
    pub bucket: String,
    /// Key prefix.
    pub prefix: String,
    /// Storage class.
    pub storage_class: String,
    /// The rule (or operator command) that wants it there.
    pub rule: String,
}

impl Target {
    /// A local tier (or cold, for a volume that already is), by `rule`.
    pub fn tier(tier: Tier, rule: &str) -> Target {
        Target {
            tier,
            bucket: String::new(),
            prefix: String::new(),
            storage_class: String::new(),
            rule: rule.to_owned(),
        }
    }
}

/// True if the directory replicates this volume (the replicated path plans
/// it, even while it has fewer copies than it should).
pub fn is_replicated(record: &VolumeRecord) -> bool {
    record.replication > 1 || record.replicas.len() > 1
}

/// A copy's tier as its server reported it (hot if it did not say).
pub(crate) fn tier_of(status: &VolumeStatus) -> Tier {
    ProtoTier::storage(status.tier).unwrap_or(Tier::Hot)
}

fn server_of(replica: &Replica) -> String {
    replica
        .location
        .as_ref()
        .map(|l| l.server_id.clone())
        .unwrap_or_default()
}

/// Why the copies of a volume cannot take a step now, if they cannot.
pub fn blocked(record: &VolumeRecord) -> Option<String> {
    let id = record.status.as_ref().map_or(0, |s| s.volume_id);
    if record.replicas.is_empty() {
        return Some(format!("volume {id} has no copy"));
    }
    for replica in &record.replicas {
        let server = server_of(replica);
        if replica.health != ReplicaHealth::Ok as i32 {
            let health = ReplicaHealth::try_from(replica.health).unwrap_or_default();
            return Some(format!(
                "the copy on {server} is {}",
                health
                    .as_str_name()
                    .trim_start_matches("REPLICA_HEALTH_")
                    .to_lowercase()
            ));
        }
        let Some(status) = &replica.status else {
            return Some(format!("the copy on {server} has not reported yet"));
        };
        let state = VolumeState::try_from(status.state).unwrap_or_default();
        if matches!(state, VolumeState::Moving | VolumeState::Restoring) {
            return Some(format!("the copy on {server} is moving"));
        }
        if status.compacting {
            return Some(format!("the copy on {server} is compacting"));
        }
    }
    None
}

/// The next steps that bring the copies of `record` to `target`: empty when
/// they are there. The caller checks [`blocked`] first.
pub fn steps(record: &VolumeRecord, target: &Target) -> Vec<Action> {
    let statuses: Vec<(String, &VolumeStatus)> = record
        .replicas
        .iter()
        .filter_map(|r| Some((server_of(r), r.status.as_ref()?)))
        .collect();
    let Some(((lead, lead_status), followers)) = statuses.split_first() else {
        return Vec::new();
    };
    let volume = lead_status.volume_id;
    let lead_tier = tier_of(lead_status);
    let moving =
        |server: &str, status: &VolumeStatus, to: Tier, share: &str, keep: bool| Action::Move {
            volume,
            server: server.to_owned(),
            from: tier_of(status),
            to,
            bucket: target.bucket.clone(),
            prefix: target.prefix.clone(),
            storage_class: if to == Tier::Cold && share.is_empty() {
                target.storage_class.clone()
            } else {
                String::new()
            },
            bytes: status.file_bytes,
            rule: target.rule.clone(),
            share_cold_from: share.to_owned(),
            keep_object: keep,
        };
    let dropping = |server: &str, keep_object: bool| Action::Drop {
        volume,
        server: server.to_owned(),
        keep_object,
        rule: target.rule.clone(),
    };
    let cold_followers: Vec<&String> = followers
        .iter()
        .filter(|(_, s)| tier_of(s) == Tier::Cold)
        .map(|(server, _)| server)
        .collect();
    let local_followers = followers.iter().filter(|(_, s)| tier_of(s) != Tier::Cold);
    match (lead_tier, target.tier) {
        (Tier::Cold, Tier::Cold) => {
            let keep = record.replication.max(1) as usize;
            let cold = 1 + cold_followers.len();
            if cold < keep {
                local_followers
                    .take(keep - cold)
                    .map(|(server, status)| moving(server, status, Tier::Cold, lead, false))
                    .collect()
            } else {
                local_followers
                    .map(|(server, _)| dropping(server, false))
                    .collect()
            }
        }
        (Tier::Cold, to) => {
            vec![moving(
                lead,
                lead_status,
                to,
                "",
                !cold_followers.is_empty(),
            )]
        }
        (_, Tier::Cold) => vec![moving(lead, lead_status, Tier::Cold, "", false)],
        (_, to) => {
            // One cold copy at a time: the last one deletes the object.
            if let Some(server) = cold_followers.first() {
                return vec![dropping(server, cold_followers.len() > 1)];
            }
            statuses
                .iter()
                .filter(|(_, s)| tier_of(s) != to)
                .map(|(server, status)| moving(server, status, to, "", false))
                .collect()
        }
    }
}

/// Where the lead copy is: the target that finishes a move half done.
pub fn lead_target(record: &VolumeRecord) -> Option<Target> {
    let status = record.replicas.first()?.status.as_ref()?;
    Some(Target::tier(tier_of(status), "follow the first copy"))
}

/// True once every copy is on `tier` and the volume has the copies it
/// should have.
pub fn settled(record: &VolumeRecord, tier: Tier) -> bool {
    record.health == VolumeHealth::Ok as i32
        && record
            .replicas
            .iter()
            .all(|r| r.status.as_ref().is_some_and(|s| tier_of(s) == tier))
}

/// The lead's status with the reads of every copy summed: what the policy
/// decides on.
pub fn volume_status(record: &VolumeRecord) -> Option<VolumeStatus> {
    let mut status = record.replicas.first()?.status.clone()?;
    status.reads_per_day = record
        .replicas
        .iter()
        .filter_map(|r| r.status.as_ref())
        .map(|s| s.reads_per_day)
        .sum();
    status.read_stats_seconds = record
        .replicas
        .iter()
        .filter_map(|r| r.status.as_ref())
        .map(|s| s.read_stats_seconds)
        .min()
        .unwrap_or(0);
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hayloft_proto::ServerLocation;

    fn copy(server: &str, tier: ProtoTier) -> Replica {
        Replica {
            location: Some(ServerLocation {
                server_id: server.into(),
                ..ServerLocation::default()
            }),
            health: ReplicaHealth::Ok as i32,
            needles: 10,
            status: Some(VolumeStatus {
                volume_id: 7,
                tier: tier as i32,
                sealed: true,
                file_bytes: 1000,
                reads_per_day: 2.0,
                read_stats_seconds: 100,
                state: if tier == ProtoTier::Cold {
                    VolumeState::Cold as i32
                } else {
                    VolumeState::Sealed as i32
                },
                ..VolumeStatus::default()
            }),
        }
    }

    fn record(copies: Vec<Replica>) -> VolumeRecord {
        VolumeRecord {
            status: copies[0].status.clone(),
            replicas: copies,
            replication: 3,
            health: VolumeHealth::Ok as i32,
            ..VolumeRecord::default()
        }
    }

    fn cold_target() -> Target {
        Target {
            tier: Tier::Cold,
            bucket: "b".into(),
            prefix: "p/".into(),
            storage_class: "GLACIER".into(),
            rule: "archive".into(),
        }
    }

    /// (kind, server, detail) of each step, to compare plans briefly.
    fn brief(actions: &[Action]) -> Vec<(String, String, String)> {
        actions
            .iter()
            .map(|a| match a {
                Action::Move {
                    server,
                    to,
                    share_cold_from,
                    keep_object,
                    ..
                } => (
                    format!("move {to}"),
                    server.clone(),
                    format!("share={share_cold_from} keep={keep_object}"),
                ),
                Action::Drop {
                    server,
                    keep_object,
                    ..
                } => ("drop".into(), server.clone(), format!("keep={keep_object}")),
                Action::Delete { server, .. } => ("delete".into(), server.clone(), String::new()),
                Action::Encode { code, .. } => ("encode".into(), String::new(), code.clone()),
                Action::Reencode { .. } => ("reencode".into(), String::new(), String::new()),
                Action::EcToCold { bucket, .. } => {
                    ("ec-to-cold".into(), String::new(), bucket.clone())
                }
            })
            .collect()
    }

    fn step(kind: &str, server: &str, detail: &str) -> (String, String, String) {
        (kind.into(), server.into(), detail.into())
    }

    #[test]
    fn a_replicated_volume_goes_cold_step_by_step_and_comes_back() {
        use ProtoTier::{Cold, Hot, Warm};
        // Local moves: every copy at once.
        let hot = record(vec![copy("a", Hot), copy("b", Hot), copy("c", Warm)]);
        assert_eq!(
            brief(&steps(&hot, &Target::tier(Tier::Warm, "r"))),
            [
                step("move warm", "a", "share= keep=false"),
                step("move warm", "b", "share= keep=false")
            ]
        );
        // To cold: the lead uploads first, alone.
        let warm = record(vec![copy("a", Warm), copy("b", Warm), copy("c", Warm)]);
        assert_eq!(
            brief(&steps(&warm, &cold_target())),
            [step("move cold", "a", "share= keep=false")]
        );
        // The lead is cold: every other copy shares its object.
        let lead_cold = record(vec![copy("a", Cold), copy("b", Warm), copy("c", Warm)]);
        let follow = lead_target(&lead_cold).unwrap();
        assert_eq!(
            brief(&steps(&lead_cold, &follow)),
            [
                step("move cold", "b", "share=a keep=false"),
                step("move cold", "c", "share=a keep=false")
            ]
        );
        let half = record(vec![copy("a", Cold), copy("b", Cold), copy("c", Warm)]);
        assert_eq!(
            brief(&steps(&half, &follow)),
            [step("move cold", "c", "share=a keep=false")]
        );
        // A copy beyond the replication (the setting was lowered) goes.
        let mut extra = record(vec![copy("a", Cold), copy("b", Cold), copy("c", Warm)]);
        extra.replication = 2;
        assert_eq!(
            brief(&steps(&extra, &follow)),
            [step("drop", "c", "keep=false")]
        );
        let all_cold = record(vec![copy("a", Cold), copy("b", Cold), copy("c", Cold)]);
        assert!(steps(&all_cold, &follow).is_empty());
        assert!(settled(&all_cold, Tier::Cold));
        // Back: the lead downloads and keeps the object for the others; they
        // are dropped one at a time, the last with the object; repair adds
        // the copies again.
        assert_eq!(
            brief(&steps(&all_cold, &Target::tier(Tier::Hot, "r"))),
            [step("move hot", "a", "share= keep=true")]
        );
        let mut back = record(vec![copy("a", Hot), copy("b", Cold), copy("c", Cold)]);
        let follow = lead_target(&back).unwrap();
        assert_eq!(
            brief(&steps(&back, &follow)),
            [step("drop", "b", "keep=true")]
        );
        back.replicas.remove(1);
        assert_eq!(
            brief(&steps(&back, &follow)),
            [step("drop", "c", "keep=false")]
        );
        back.replicas.pop();
        back.health = VolumeHealth::Degraded as i32;
        assert!(steps(&back, &follow).is_empty());
        assert!(!settled(&back, Tier::Hot), "two copies short");
    }

    #[test]
    fn copies_that_are_down_moving_or_stale_block_every_step() {
        use ProtoTier::Warm;
        let mut r = record(vec![copy("a", Warm), copy("b", Warm), copy("c", Warm)]);
        assert_eq!(blocked(&r), None);
        r.replicas[1].health = ReplicaHealth::Stale as i32;
        assert_eq!(blocked(&r).unwrap(), "the copy on b is stale");
        r.replicas[1].health = ReplicaHealth::Ok as i32;
        if let Some(s) = r.replicas[2].status.as_mut() {
            s.state = VolumeState::Moving as i32;
        }
        assert_eq!(blocked(&r).unwrap(), "the copy on c is moving");
        // The policy sees every copy's reads.
        assert!((volume_status(&r).unwrap().reads_per_day - 6.0).abs() < 1e-9);
    }
}
