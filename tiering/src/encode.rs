//! The policy's encode rules: warm sealed volumes re-stored as
//! Reed-Solomon shards by the directory (`EncodeVolume`), and what the
//! planner does with volumes that already are.
//!
//! ```toml
//! [[encode]]
//! name = "warm-to-shards"
//! collection = "photos"     # all collections if unset
//! min_age = "30d"           # sealed at least this long ago
//! max_reads_per_day = 100   # optional
//! min_size = "256MiB"       # optional
//! code = "10+4"             # optional: the directory's `ec_code` if unset
//! reencode_deleted_ratio = 0.3  # optional: re-encode once 30% is deleted
//! ```
//!
//! An encode is planned only for a volume every copy of which is on the
//! warm tier, sealed, healthy and idle, that no demotion, promotion or
//! expiry wants to act on this round (those come first). A volume that is
//! erasure-coded already is not promoted or expired by the tiering worker;
//! a demotion rule whose target is cold moves it to the cold tier as one
//! object (`EcToCold`: the directory's `DecodeVolume` with a cold bucket,
//! [`decide_cold`]); otherwise it may be re-encoded: an erasure-coded volume of the rule's
//! collection whose deleted bytes (as its holders report them from their
//! delete journals) reach `reencode_deleted_ratio` of its data file is
//! re-encoded without them by the directory (`ReencodeVolume`), which
//! gives their space back.

use std::time::Duration;

use bytesize::ByteSize;
use hayloft_proto::{VolumeHealth, VolumeRecord, VolumeStatus};
use hayloft_storage::Tier;
use hayloft_storage::erasure::Code;
use serde::{Deserialize, Serialize};

use crate::plan::Action;
use crate::replicas::tier_of;

/// A rule that erasure-codes warm sealed volumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodeRule {
    /// Shown in plans and logs.
    pub name: String,
    /// Only volumes of this collection (all if unset).
    #[serde(default)]
    pub collection: Option<String>,
    /// Sealed at least this long ago.
    #[serde(default, with = "humantime_serde")]
    pub min_age: Option<Duration>,
    /// Read at most this often (needs the policy's `min_observation`).
    #[serde(default)]
    pub max_reads_per_day: Option<f64>,
    /// At least this big.
    #[serde(default)]
    pub min_size: Option<ByteSize>,
    /// The code, `K+M` (the directory's `ec_code` if unset).
    #[serde(default)]
    pub code: Option<String>,
    /// Re-encode an erasure-coded volume of the rule's collection once
    /// this fraction of its data file is deleted (never if unset).
    #[serde(default)]
    pub reencode_deleted_ratio: Option<f64>,
}

/// Checks the encode rules of a policy: why the first bad one is bad.
pub(crate) fn check(rules: &[EncodeRule]) -> Result<(), String> {
    for rule in rules {
        if let Some(code) = &rule.code {
            code.parse::<Code>()
                .map_err(|e| format!("encode rule {:?}: {e}", rule.name))?;
        }
        if let Some(ratio) = rule.reencode_deleted_ratio
            && !(ratio > 0.0 && ratio <= 1.0)
        {
            return Err(format!(
                "encode rule {:?}: reencode_deleted_ratio {ratio} is not in (0, 1]",
                rule.name
            ));
        }
    }
    Ok(())
}

/// The re-encode the first rule of `rules` with a `reencode_deleted_ratio`
/// for the volume's collection wants for an erasure-coded volume: one
/// whose deleted bytes reach that fraction of its data file, healthy and
/// not being repaired.
pub(crate) fn decide_reencode(rules: &[EncodeRule], record: &VolumeRecord) -> Option<Action> {
    let status = record.status.as_ref()?;
    if !is_erasure_coded(record)
        || record.health != VolumeHealth::Ok as i32
        || record.repairing
        || record.deleted_bytes == 0
    {
        return None;
    }
    let logical = record.logical_bytes.max(status.file_bytes);
    let (rule, _) = rules.iter().find_map(|rule| {
        let ratio = rule.reencode_deleted_ratio?;
        let collection = rule
            .collection
            .as_deref()
            .is_none_or(|c| c == status.collection);
        (collection && record.deleted_bytes as f64 >= ratio * logical as f64)
            .then_some((rule, ratio))
    })?;
    Some(Action::Reencode {
        volume: status.volume_id,
        deleted_bytes: record.deleted_bytes,
        logical_bytes: logical,
        rule: rule.name.clone(),
    })
}

/// The move to cold a demotion rule wants for an erasure-coded volume
/// (`decide` is the policy's rule matcher, given the status standing for
/// the volume): healthy, not being repaired, encoded or decoded, no copy
/// left from before its encode, and a rule
/// whose target is cold. Its shards are on the warm tier, its size and
/// deleted share are the layout's. Promotions and expiries leave it alone.
/// The reads a rule's `max_reads_per_day` sees are those its copies last
/// reported (holders do not report reads yet).
pub(crate) fn decide_cold(
    record: &VolumeRecord,
    decide: impl Fn(&VolumeStatus) -> Option<Action>,
) -> Option<Action> {
    let status = record.status.as_ref()?;
    // Copies left from before its encode go first (the directory refuses
    // the move while one is there).
    if !is_erasure_coded(record)
        || record.health != VolumeHealth::Ok as i32
        || record.repairing
        || !record.replicas.is_empty()
    {
        return None;
    }
    let mut status = status.clone();
    status.tier = hayloft_proto::Tier::Warm as i32;
    status.sealed = true;
    status.compacting = false;
    status.expires_at = 0;
    status.file_bytes = record.logical_bytes.max(status.file_bytes);
    status.garbage_bytes = record.deleted_bytes;
    match decide(&status)? {
        Action::Move {
            volume,
            to: Tier::Cold,
            bucket,
            prefix,
            storage_class,
            bytes,
            rule,
            ..
        } => Some(Action::EcToCold {
            volume,
            bucket,
            prefix,
            storage_class,
            bytes,
            rule,
        }),
        _ => None,
    }
}

/// True if the volume is erasure-coded (its record names shard holders):
/// the tiering worker neither moves its shards nor promotes or expires it;
/// it may move it to cold ([`decide_cold`]) or re-encode it.
pub fn is_erasure_coded(record: &VolumeRecord) -> bool {
    record.erasure.is_some()
}

/// Bytes the shards of `logical` bytes take under `code` ("" = the
/// directory's default).
pub fn stored_bytes(code: &str, logical: u64) -> u64 {
    let code = code.parse::<Code>().unwrap_or(Code::DEFAULT);
    let (k, n) = (u64::from(code.data), u64::from(code.data + code.parity));
    logical.div_ceil(k) * n
}

/// The encode the first matching rule of `rules` wants for a volume no
/// other rule acts on, given the status that stands for it (the first
/// copy's, with every copy's reads) and the status of each copy. A
/// reads-per-day limit needs `min_observation` of read statistics.
pub(crate) fn decide(
    rules: &[EncodeRule],
    min_observation: Duration,
    record: &VolumeRecord,
    status: &VolumeStatus,
    copies: &[&VolumeStatus],
    now: u64,
) -> Option<Action> {
    let idle = |s: &VolumeStatus| s.sealed && !s.compacting && tier_of(s) == Tier::Warm;
    if is_erasure_coded(record)
        || record.health != VolumeHealth::Ok as i32
        || record.repairing
        || copies.is_empty()
        || !copies.iter().all(|s| idle(s))
    {
        return None;
    }
    let age =
        (status.sealed_at > 0).then(|| Duration::from_secs(now.saturating_sub(status.sealed_at)));
    let observed = Duration::from_secs(status.read_stats_seconds) >= min_observation;
    let rule = rules.iter().find(|rule| {
        rule.collection
            .as_deref()
            .is_none_or(|c| c == status.collection)
            && rule.min_age.is_none_or(|m| age.is_some_and(|a| a >= m))
            && rule
                .max_reads_per_day
                .is_none_or(|m| observed && status.reads_per_day <= m)
            && rule
                .min_size
                .is_none_or(|m| status.file_bytes >= m.as_u64())
    })?;
    Some(Action::Encode {
        volume: status.volume_id,
        code: rule.code.clone().unwrap_or_default(),
        bytes: status.file_bytes,
        rule: rule.name.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Policy, plan};
    use hayloft_proto::{
        ErasureHolders, Replica, ReplicaHealth, ServerLocation, Tier as ProtoTier, VolumeState,
    };

    const DAY: u64 = 86_400;
    const NOW: u64 = 1000 * DAY;

    const POLICY: &str = r#"
        [prices]
        warm = 0.03

        [[rule]]
        name = "archive"
        min_age = "180d"
        max_reads_per_day = 1
        target = "cold"
        bucket = "archive"

        [[encode]]
        name = "shards"
        collection = "photos"
        min_age = "30d"
        max_reads_per_day = 100
        code = "6+3"
    "#;

    fn status(id: u32, tier: ProtoTier, sealed_days_ago: u64, reads: f64) -> VolumeStatus {
        VolumeStatus {
            volume_id: id,
            tier: tier as i32,
            sealed: true,
            sealed_at: NOW - sealed_days_ago * DAY,
            reads_per_day: reads,
            read_stats_seconds: 7 * DAY,
            file_bytes: 600_000_000,
            live_bytes: 600_000_000,
            collection: "photos".into(),
            ..VolumeStatus::default()
        }
    }

    /// A volume with three copies on `tiers`.
    fn replicated(id: u32, tiers: [ProtoTier; 3], sealed_days_ago: u64) -> VolumeRecord {
        VolumeRecord {
            status: Some(status(id, tiers[0], sealed_days_ago, 1.0)),
            state: VolumeState::Sealed as i32,
            server_id: "s0".into(),
            replication: 3,
            health: hayloft_proto::VolumeHealth::Ok as i32,
            replicas: tiers
                .iter()
                .enumerate()
                .map(|(i, tier)| Replica {
                    location: Some(ServerLocation {
                        server_id: format!("s{i}"),
                        ..ServerLocation::default()
                    }),
                    health: ReplicaHealth::Ok as i32,
                    status: Some(status(id, *tier, sealed_days_ago, 1.0)),
                    ..Replica::default()
                })
                .collect(),
            ..VolumeRecord::default()
        }
    }

    #[test]
    fn warm_sealed_volumes_old_enough_are_encoded_and_the_plan_counts_the_shards() {
        let policy = Policy::parse(POLICY).unwrap();
        let warm = [ProtoTier::Warm; 3];
        let mut archived = replicated(4, warm, 200);
        for replica in &mut archived.replicas {
            replica.status.as_mut().unwrap().reads_per_day = 0.0;
        }
        let volumes = vec![
            replicated(1, warm, 40), // encoded
            replicated(2, warm, 10), // too young
            replicated(3, [ProtoTier::Warm, ProtoTier::Hot, ProtoTier::Warm], 40), // a copy not warm
            archived, // unread: archived first
        ];
        let plan = plan(&policy, &volumes, NOW);
        let encodes: Vec<_> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Encode {
                    volume, code, rule, ..
                } => Some((*volume, code.as_str(), rule.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(encodes, vec![(1, "6+3", "shards")]);
        assert!(
            plan.actions.iter().any(|a| matches!(
                a,
                Action::Move {
                    volume: 4,
                    to: Tier::Cold,
                    ..
                }
            )),
            "{:?}",
            plan.actions
        );
        // Volume 1's three copies (1.8 GB) become 1.5x its 0.6 GB.
        assert_eq!(stored_bytes("6+3", 600_000_000), 900_000_000);
        let alone = crate::policy::plan(&policy, &[replicated(1, warm, 40)], NOW);
        assert_eq!(alone.before["warm"], 3 * 600_000_000);
        assert_eq!(alone.after["warm"], 900_000_000);
    }

    #[test]
    fn a_busy_or_unhealthy_volume_or_another_collection_is_not_encoded() {
        let policy = Policy::parse(POLICY).unwrap();
        let warm = [ProtoTier::Warm; 3];
        let mut busy = replicated(1, warm, 40);
        for replica in &mut busy.replicas {
            replica.status.as_mut().unwrap().reads_per_day = 50.0;
        }
        let mut degraded = replicated(2, warm, 40);
        degraded.health = hayloft_proto::VolumeHealth::Degraded as i32;
        let mut other = replicated(3, warm, 40);
        for replica in &mut other.replicas {
            replica.status.as_mut().unwrap().collection = "logs".into();
        }
        let plan = plan(&policy, &[busy, degraded, other], NOW);
        assert!(plan.actions.is_empty(), "{:?}", plan.actions);
    }

    #[test]
    fn an_erasure_coded_volume_is_left_alone_even_with_copies_left_over() {
        let policy = Policy::parse(POLICY).unwrap();
        // Old and unread: the archive rule would move it to cold.
        let mut record = replicated(7, [ProtoTier::Warm; 3], 400);
        record.erasure = Some(ErasureHolders {
            volume_id: 7,
            code: "6+3".into(),
            holders: Vec::new(),
        });
        let plan = plan(&policy, &[record], NOW);
        assert!(plan.actions.is_empty(), "{:?}", plan.actions);
        assert_eq!(plan.before["warm"], 900_000_000);
        assert_eq!(plan.after["warm"], 900_000_000);
    }

    /// An erasure-coded volume of `collection`, `deleted` of its 1000
    /// bytes deleted.
    fn erasure_coded(id: u32, collection: &str, deleted: u64) -> VolumeRecord {
        let mut record = replicated(id, [ProtoTier::Warm; 3], 400);
        record.replicas.clear();
        let status = record.status.as_mut().unwrap();
        status.collection = collection.into();
        status.file_bytes = 1000;
        record.logical_bytes = 1000;
        record.deleted_bytes = deleted;
        record.erasure = Some(ErasureHolders {
            volume_id: id,
            code: "6+3".into(),
            holders: Vec::new(),
        });
        record
    }

    #[test]
    fn a_cold_rule_moves_an_erasure_coded_volume_to_cold_as_one_object() {
        let policy = Policy::parse(POLICY).unwrap();
        // Old and unread: the archive rule takes it (as one object).
        let mut old = erasure_coded(1, "photos", 100);
        old.status.as_mut().unwrap().reads_per_day = 0.0;
        // Read too often for the rule.
        let mut busy = erasure_coded(2, "photos", 100);
        busy.status.as_mut().unwrap().reads_per_day = 50.0;
        let mut repairing = erasure_coded(3, "photos", 0);
        repairing.status.as_mut().unwrap().reads_per_day = 0.0;
        repairing.repairing = true;
        let plan = plan(&policy, &[old, busy, repairing], NOW);
        assert_eq!(
            plan.actions,
            vec![Action::EcToCold {
                volume: 1,
                bucket: "archive".into(),
                prefix: String::new(),
                storage_class: "STANDARD".into(),
                bytes: 1000,
                rule: "archive".into(),
            }]
        );
        // Its shards leave the warm tier; the object is billed once.
        assert_eq!(plan.before["warm"], 3 * stored_bytes("6+3", 1000));
        assert_eq!(plan.after["warm"], 2 * stored_bytes("6+3", 1000));
        assert_eq!(plan.after["STANDARD"], 1000);
    }

    #[test]
    fn an_erasure_coded_volume_is_reencoded_once_its_deleted_share_reaches_the_ratio() {
        let policy = Policy::parse(
            r#"
            [[encode]]
            name = "photos"
            collection = "photos"
            reencode_deleted_ratio = 0.3

            [[encode]]
            name = "no-ratio"
            collection = "logs"
        "#,
        )
        .unwrap();
        let mut repairing = erasure_coded(5, "photos", 900);
        repairing.repairing = true;
        let mut degraded = erasure_coded(6, "photos", 900);
        degraded.health = hayloft_proto::VolumeHealth::Degraded as i32;
        let volumes = vec![
            erasure_coded(1, "photos", 300), // at the ratio: re-encoded
            erasure_coded(2, "photos", 299), // just below
            erasure_coded(3, "logs", 900),   // its rule has no ratio
            erasure_coded(4, "photos", 0),   // nothing deleted
            repairing,
            degraded,
        ];
        let plan = plan(&policy, &volumes, NOW);
        assert_eq!(
            plan.actions,
            vec![Action::Reencode {
                volume: 1,
                deleted_bytes: 300,
                logical_bytes: 1000,
                rule: "photos".into(),
            }]
        );
        // The plan counts the shards of the live bytes after it.
        let alone = crate::policy::plan(&policy, &[erasure_coded(1, "photos", 300)], NOW);
        assert_eq!(alone.before["warm"], stored_bytes("6+3", 1000));
        assert_eq!(alone.after["warm"], stored_bytes("6+3", 700));
        // A replicated volume is never re-encoded.
        assert_eq!(
            decide_reencode(&policy.encodes, &replicated(9, [ProtoTier::Warm; 3], 1)),
            None
        );
    }

    #[test]
    fn a_reencode_ratio_outside_zero_to_one_is_refused() {
        for ratio in ["0", "1.5", "-0.1"] {
            let error = Policy::parse(&format!(
                "[[encode]]\nname = \"x\"\nreencode_deleted_ratio = {ratio}\n"
            ))
            .unwrap_err();
            assert!(
                error.to_string().contains("reencode_deleted_ratio"),
                "{error}"
            );
        }
        Policy::parse("[[encode]]\nname = \"x\"\nreencode_deleted_ratio = 1\n").unwrap();
    }

    #[test]
    fn a_bad_code_in_an_encode_rule_is_refused_with_its_name() {
        let error = Policy::parse("[[encode]]\nname = \"x\"\ncode = \"10-4\"\n").unwrap_err();
        assert!(error.to_string().contains("encode rule \"x\""), "{error}");
    }
}
