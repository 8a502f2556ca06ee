//! The lifecycle policy (TOML) and the planner that applies it to the
//! directory's view of the cluster.
//!
//! ```toml
//! # Seconds of read statistics a reads-per-day rule needs before it demotes.
//! min_observation = "1h"
//!
//! [prices]                 # $ per GB-month, by tier and by storage class
//! hot = 0.10
//! warm = 0.03
//! STANDARD = 0.023
//! GLACIER = 0.0036
//! egress = 0.02            # $ per GB shipped between regions (status --capacity)
//!
//! [[rule]]                 # demotions: first match wins
//! name = "aged-to-warm"
//! from = "hot"
//! min_age = "7d"           # since the volume was sealed
//! max_reads_per_day = 1000
//! target = "warm"
//!
//! [[rule]]
//! name = "archive"
//! collection = "photos"
//! min_age = "180d"
//! max_reads_per_day = 1
//! target = "cold"
//! bucket = "hayloft-archive"
//! prefix = "photos/"
//! storage_class = "GLACIER"
//!
//! [[promote]]              # promotions: first match wins
//! name = "hot-again"
//! from = "cold"
//! min_reads_per_day = 500
//! target = "warm"
//!
//! [[expire]]               # retention: whole volumes
//! name = "tmp"
//! collection = "tmp"
//! min_age = "30d"
//!
//! [[encode]]               # erasure coding of warm volumes (`encode.rs`)
//! name = "warm-to-shards"
//! min_age = "30d"
//! code = "10+4"
//! ```
//!
//! Volumes whose every needle has expired (per-needle expiry set at upload)
//! are deleted whatever the rules say.
//!
//! Why one file of ~770 lines: a third of it is its tests; the rest is the
//! policy file's schema and the planner that reads it, which change together.

use std::collections::BTreeMap;
use std::time::Duration;

use bytesize::ByteSize;
use hayloft_proto::{Tier as ProtoTier, VolumeRecord, VolumeState};
use hayloft_storage::Tier;
use serde::{Deserialize, Serialize};

use crate::encode::{self, EncodeRule};
use crate::object::STORAGE_CLASSES;
use crate::plan::{Action, Plan};
use crate::replicas::{self, tier_of};

/// A lifecycle policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// History a `max_reads_per_day` rule needs before it moves a volume
    /// down (read counts restart with the volume server). Default `1h`.
    #[serde(with = "humantime_serde")]
    pub min_observation: Duration,
    /// Copy rate limit per move (0 = the volume server's default).
    pub bytes_per_sec: ByteSize,
    /// Most moves started per run. Default 4.
    pub max_moves_per_run: usize,
    /// $ per GB-month, by tier (`hot`, `warm`) and storage class (`STANDARD`, ...).
    pub prices: BTreeMap<String, f64>,
    /// Demotions, first match wins.
    #[serde(rename = "rule")]
    pub rules: Vec<Rule>,
    /// Promotions, first match wins.
    #[serde(rename = "promote")]
    pub promotions: Vec<Promotion>,
    /// Retention of whole volumes.
    #[serde(rename = "expire")]
    pub expiries: Vec<Expiry>,
    /// Erasure coding of warm sealed volumes, first match wins (see
    /// [`crate::encode`]).
    #[serde(rename = "encode")]
    pub encodes: Vec<EncodeRule>,
}

/// A rule that moves volumes to a colder tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Shown in plans and logs.
    pub name: String,
    /// Only volumes of this collection (all if unset).
    #[serde(default)]
    pub collection: Option<String>,
    /// Only volumes on this tier (any warmer than the target if unset).
    #[serde(default)]
    pub from: Option<Tier>,
    /// Sealed at least this long ago.
    #[serde(default, with = "humantime_serde")]
    pub min_age: Option<Duration>,
    /// Read at most this often.
    #[serde(default)]
    pub max_reads_per_day: Option<f64>,
    /// At least this big.
    #[serde(default)]
    pub min_size: Option<ByteSize>,
    /// At most this garbage ratio (compact first otherwise).
    #[serde(default)]
    pub max_garbage_ratio: Option<f64>,
    /// Where to.
    pub target: Tier,
    /// For cold: the bucket.
    #[serde(default)]
    pub bucket: Option<String>,
    /// For cold: the key prefix.
    #[serde(default)]
    pub prefix: Option<String>,
    /// For cold: the storage class. Default `STANDARD`.
    #[serde(default)]
    pub storage_class: Option<String>,
}

/// A rule that brings volumes back to a warmer tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Promotion {
    /// Shown in plans and logs.
    pub name: String,
    /// Only volumes of this collection.
    #[serde(default)]
    pub collection: Option<String>,
    /// Only volumes on this tier (any colder than the target if unset).
    #[serde(default)]
    pub from: Option<Tier>,
    /// Read at least this often.
    pub min_reads_per_day: f64,
    /// Where to (`hot` or `warm`).
    pub target: Tier,
}

/// A retention rule: delete whole sealed volumes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expiry {
    /// Shown in plans and logs.
    pub name: String,
    /// Only volumes of this collection.
    #[serde(default)]
    pub collection: Option<String>,
    /// Sealed at least this long ago.
    #[serde(with = "humantime_serde")]
    pub min_age: Duration,
}

/// Why a policy is unusable.
#[derive(Debug, thiserror::Error)]
#[error("policy: {0}")]
pub struct PolicyError(pub String);

fn rank(tier: Tier) -> u8 {
    match tier {
        Tier::Hot => 0,
        Tier::Warm => 1,
        Tier::Cold => 2,
    }
}

impl Policy {
    /// Parses and checks a policy.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let mut policy: Policy = toml::from_str(text).map_err(|e| PolicyError(e.to_string()))?;
        if policy.max_moves_per_run == 0 {
            policy.max_moves_per_run = 4;
        }
        if policy.min_observation.is_zero() && !text.contains("min_observation") {
            policy.min_observation = Duration::from_secs(3600);
        }
        for rule in &policy.rules {
            if rule.target == Tier::Cold {
                if rule.bucket.as_deref().unwrap_or("").is_empty() {
                    return Err(PolicyError(format!(
                        "rule {:?} targets cold but names no bucket",
                        rule.name
                    )));
                }
                let class = rule.storage_class.as_deref().unwrap_or("STANDARD");
                if !STORAGE_CLASSES.contains(&class) {
                    return Err(PolicyError(format!(
                        "rule {:?}: unknown storage class {class:?} (expected one of {})",
                        rule.name,
                        STORAGE_CLASSES.join(", ")
                    )));
                }
            }
            if rule.from.is_some_and(|f| rank(f) >= rank(rule.target)) {
                return Err(PolicyError(format!(
                    "rule {:?} does not move to a colder tier",
                    rule.name
                )));
            }
        }
        for promotion in &policy.promotions {
            if promotion.target == Tier::Cold
                || promotion
                    .from
                    .is_some_and(|f| rank(f) <= rank(promotion.target))
            {
                return Err(PolicyError(format!(
                    "promotion {:?} does not move to a warmer tier",
                    promotion.name
                )));
            }
        }
        crate::encode::check(&policy.encodes).map_err(PolicyError)?;
        Ok(policy)
    }

    /// Price of a GB-month in `tier` / `class`, if configured.
    pub fn price(&self, key: &str) -> Option<f64> {
        self.prices.get(key).copied()
    }

    /// Monthly cost of `bytes` per billing key at these prices (keys
    /// without a price are left out).
    pub fn monthly_cost(&self, bytes: &BTreeMap<String, u64>) -> BTreeMap<String, f64> {
        bytes
            .iter()
            .filter_map(|(key, b)| self.price(key).map(|p| (key.clone(), *b as f64 / 1e9 * p)))
            .collect()
    }
}

/// Where a volume's bytes are billed: `hot`, `warm`, or the cold storage class.
pub fn billing_key(status: &hayloft_proto::VolumeStatus) -> String {
    match ProtoTier::try_from(status.tier) {
        Ok(ProtoTier::Cold) => {
            if status.storage_class.is_empty() {
                "STANDARD".into()
            } else {
                status.storage_class.clone()
            }
        }
        Ok(ProtoTier::Warm) => "warm".into(),
        _ => "hot".into(),
    }
}

/// Decides what to do with every volume, at time `now` (Unix seconds).
/// A volume other regions keep too stays in the local tiers: no move to
/// the cold tier, no erasure coding (its copies' log is what the other
/// regions follow; see ARCHITECTURE.md, "Shipping between regions").
pub fn plan(policy: &Policy, volumes: &[VolumeRecord], now: u64) -> Plan {
    let mut plan = Plan::default();
    for record in volumes {
        if record.regions.len() < 2 {
            plan_volume(policy, record, now, &mut plan);
            continue;
        }
        let mut own = Plan::default();
        plan_volume(policy, record, now, &mut own);
        let planned = own.actions.len();
        own.actions.retain(stays_local);
        if own.actions.len() != planned {
            own.after.clone_from(&own.before);
        }
        plan.actions.extend(own.actions);
        for (key, bytes) in own.before {
            *plan.before.entry(key).or_default() += bytes;
        }
        for (key, bytes) in own.after {
            *plan.after.entry(key).or_default() += bytes;
        }
    }
    plan
}

/// Whether `action` keeps a volume in the local tiers (with its log).
fn stays_local(action: &Action) -> bool {
    !matches!(
        action,
        Action::Move { to: Tier::Cold, .. }
            | Action::Encode { .. }
            | Action::EcToCold { .. }
            | Action::Reencode { .. }
    )
}

/// Plans one volume into `plan`.
fn plan_volume(policy: &Policy, record: &VolumeRecord, now: u64, plan: &mut Plan) {
    if encode::is_erasure_coded(record) {
        // Its shards are billed as warm bytes; a cold rule moves it to
        // the cold tier (one object), else a re-encode rule may act.
        let logical = record.status.as_ref().map_or(0, |s| s.file_bytes);
        let code = record.erasure.as_ref().map_or("", |e| e.code.as_str());
        let stored = encode::stored_bytes(code, logical);
        *plan.before.entry("warm".into()).or_default() += stored;
        let action = encode::decide_cold(record, |status| decide(policy, record, status, now))
            .or_else(|| encode::decide_reencode(&policy.encodes, record));
        match &action {
            Some(Action::Reencode { deleted_bytes, .. }) => {
                *plan.after.entry("warm".into()).or_default() +=
                    encode::stored_bytes(code, logical.saturating_sub(*deleted_bytes));
            }
            Some(Action::EcToCold {
                storage_class,
                bytes,
                ..
            }) => *plan.after.entry(storage_class.clone()).or_default() += bytes,
            _ => *plan.after.entry("warm".into()).or_default() += stored,
        }
        plan.actions.extend(action);
        return;
    }
    if replicas::is_replicated(record) {
        plan_replicated(policy, record, now, plan);
        return;
    }
    let Some(status) = &record.status else {
        return;
    };
    let key = billing_key(status);
    *plan.before.entry(key.clone()).or_default() += status.file_bytes;
    let action = decide(policy, record, status, now).or_else(|| {
        let copies = [status];
        encode::decide(
            &policy.encodes,
            policy.min_observation,
            record,
            status,
            &copies,
            now,
        )
    });
    match &action {
        Some(Action::Move {
            to, storage_class, ..
        }) => {
            let after_key = if *to == Tier::Cold {
                storage_class.clone()
            } else {
                to.as_str().to_owned()
            };
            *plan.after.entry(after_key).or_default() += status.live_bytes.max(
                // A move copies the whole file (garbage included).
                status.file_bytes,
            );
        }
        Some(Action::Encode { code, .. }) => {
            *plan.after.entry(key).or_default() += encode::stored_bytes(code, status.file_bytes);
        }
        Some(
            Action::Delete { .. }
            | Action::Drop { .. }
            | Action::Reencode { .. }
            | Action::EcToCold { .. },
        ) => {}
        None => *plan.after.entry(key).or_default() += status.file_bytes,
    }
    plan.actions.extend(action);
}

/// Plans a replicated volume (see [`replicas`]): a half-done move is
/// finished first (the copies follow the first one), then the policy
/// decides on the first copy's status with every copy's reads.
fn plan_replicated(policy: &Policy, record: &VolumeRecord, now: u64, plan: &mut Plan) {
    let Some(status) = replicas::volume_status(record) else {
        return;
    };
    // Billing: every local copy is paid for; cold copies share one object.
    let mut cold_billed = false;
    for copy in record.replicas.iter().filter_map(|r| r.status.as_ref()) {
        if tier_of(copy) == Tier::Cold && std::mem::replace(&mut cold_billed, true) {
            continue;
        }
        *plan.before.entry(billing_key(copy)).or_default() += copy.file_bytes;
    }
    let copies = record.replicas.len().max(record.replication as usize) as u64;
    let decided = decide(policy, record, &status, now);
    let actions = if let Some(Action::Delete { rule, .. }) = &decided {
        delete_every_copy(record, rule)
    } else if replicas::blocked(record).is_some() {
        Vec::new()
    } else {
        let follow = replicas::lead_target(record)
            .map(|t| replicas::steps(record, &t))
            .unwrap_or_default();
        match decided {
            _ if !follow.is_empty() => follow,
            // Too few copies (back from cold): repair adds them first.
            _ if record.health != hayloft_proto::VolumeHealth::Ok as i32 => Vec::new(),
            None => {
                let copies: Vec<&hayloft_proto::VolumeStatus> = record
                    .replicas
                    .iter()
                    .filter_map(|r| r.status.as_ref())
                    .collect();
                encode::decide(
                    &policy.encodes,
                    policy.min_observation,
                    record,
                    &status,
                    &copies,
                    now,
                )
                .into_iter()
                .collect()
            }
            Some(Action::Move {
                to,
                bucket,
                prefix,
                storage_class,
                rule,
                ..
            }) => replicas::steps(
                record,
                &replicas::Target {
                    tier: to,
                    bucket,
                    prefix,
                    storage_class,
                    rule,
                },
            ),
            _ => Vec::new(),
        }
    };
    let target = actions.iter().find_map(|a| match a {
        Action::Move {
            to, storage_class, ..
        } => Some((*to, storage_class.clone())),
        _ => None,
    });
    match target {
        Some((Tier::Cold, class)) => {
            let class = if class.is_empty() {
                "STANDARD".to_owned()
            } else {
                class
            };
            *plan.after.entry(class).or_default() += status.file_bytes;
        }
        Some((to, _)) => {
            *plan.after.entry(to.as_str().to_owned()).or_default() += status.file_bytes * copies
        }
        None if actions.iter().any(|a| matches!(a, Action::Delete { .. })) => {}
        None if actions.iter().any(|a| matches!(a, Action::Encode { .. })) => {
            let code = actions.iter().find_map(|a| match a {
                Action::Encode { code, .. } => Some(code.as_str()),
                _ => None,
            });
            *plan.after.entry(billing_key(&status)).or_default() +=
                encode::stored_bytes(code.unwrap_or(""), status.file_bytes);
        }
        None => {
            *plan.after.entry(billing_key(&status)).or_default() +=
                if tier_of(&status) == Tier::Cold {
                    status.file_bytes
                } else {
                    status.file_bytes * copies
                };
        }
    }
    plan.actions.extend(actions);
}

/// Deletes of every copy of a replicated volume (retention): the cold
/// object goes with the last one, then the directory forgets the volume.
/// Waits while a copy is down or moving (a copy left behind would come back
/// as an unknown volume); copies already gone are skipped.
fn delete_every_copy(record: &VolumeRecord, rule: &str) -> Vec<Action> {
    let waiting = record.replicas.iter().any(|r| {
        r.health == hayloft_proto::ReplicaHealth::Down as i32
            || r.status.as_ref().is_some_and(|s| {
                matches!(
                    VolumeState::try_from(s.state),
                    Ok(VolumeState::Moving | VolumeState::Restoring)
                )
            })
    });
    if waiting {
        return Vec::new();
    }
    let present: Vec<&hayloft_proto::Replica> = record
        .replicas
        .iter()
        .filter(|r| r.health != hayloft_proto::ReplicaHealth::Missing as i32)
        .collect();
    let last = present.len().saturating_sub(1);
    present
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let status = r.status.as_ref()?;
            Some(Action::Delete {
                volume: status.volume_id,
                server: r.location.as_ref()?.server_id.clone(),
                bytes: status.file_bytes,
                rule: rule.to_owned(),
                keep_object: i < last,
                forget: i == last,
            })
        })
        .collect()
}

fn decide(
    policy: &Policy,
    record: &VolumeRecord,
    status: &hayloft_proto::VolumeStatus,
    now: u64,
) -> Option<Action> {
    let state = VolumeState::try_from(record.state).unwrap_or_default();
    if !status.sealed
        || matches!(state, VolumeState::Moving | VolumeState::Writable)
        || status.compacting
    {
        return None;
    }
    let tier = tier_of(status);
    let age =
        (status.sealed_at > 0).then(|| Duration::from_secs(now.saturating_sub(status.sealed_at)));
    let collection_matches =
        |c: &Option<String>| c.as_deref().is_none_or(|c| c == status.collection);
    if status.expires_at > 0 && status.expires_at <= now {
        return Some(Action::Delete {
            volume: status.volume_id,
            server: record.server_id.clone(),
            bytes: status.file_bytes,
            rule: "every needle expired".into(),
            keep_object: false,
            forget: true,
        });
    }
    for expiry in &policy.expiries {
        if collection_matches(&expiry.collection) && age.is_some_and(|a| a >= expiry.min_age) {
            return Some(Action::Delete {
                volume: status.volume_id,
                server: record.server_id.clone(),
                bytes: status.file_bytes,
                rule: expiry.name.clone(),
                keep_object: false,
                forget: true,
            });
        }
    }
    let observed = Duration::from_secs(status.read_stats_seconds) >= policy.min_observation;
    let moving = |to: Tier, bucket: &str, prefix: &str, class: &str, rule: &str| Action::Move {
        volume: status.volume_id,
        server: record.server_id.clone(),
        from: tier,
        to,
        bucket: bucket.to_owned(),
        prefix: prefix.to_owned(),
        storage_class: class.to_owned(),
        bytes: status.file_bytes,
        rule: rule.to_owned(),
        share_cold_from: String::new(),
        keep_object: false,
    };
    for promotion in &policy.promotions {
        if collection_matches(&promotion.collection)
            && promotion.from.is_none_or(|f| f == tier)
            && rank(tier) > rank(promotion.target)
            && status.reads_per_day >= promotion.min_reads_per_day
        {
            return Some(moving(promotion.target, "", "", "", &promotion.name));
        }
    }
    for rule in &policy.rules {
        let garbage_ratio = if status.file_bytes > 0 {
            status.garbage_bytes as f64 / status.file_bytes as f64
        } else {
            0.0
        };
        let matches = collection_matches(&rule.collection)
            && rule.from.is_none_or(|f| f == tier)
            && rank(tier) < rank(rule.target)
            && rule.min_age.is_none_or(|m| age.is_some_and(|a| a >= m))
            && rule
                .max_reads_per_day
                .is_none_or(|m| observed && status.reads_per_day <= m)
            && rule
                .min_size
                .is_none_or(|m| status.file_bytes >= m.as_u64())
            && rule.max_garbage_ratio.is_none_or(|m| garbage_ratio <= m);
        if matches {
            return Some(moving(
                rule.target,
                rule.bucket.as_deref().unwrap_or(""),
                rule.prefix.as_deref().unwrap_or(""),
                rule.storage_class.as_deref().unwrap_or("STANDARD"),
                &rule.name,
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests;
