//! Where the shards of an erasure-coded volume go: `k + m` distinct live
//! servers with room for a shard, spread over zones, then racks.
//!
//! A code `K+M` survives the loss of any `M` shards, so a zone holding at
//! most `M` of them can be lost whole. The shards are dealt out as
//! [`placement::place`] deals copies: each next shard to the server whose
//! zone holds the fewest shards so far, then whose rack does (then the
//! freest, the least loaded, a rendezvous hash of the volume). Dealing to
//! the emptiest zone first keeps the fullest zone as empty as the servers
//! allow (no other placement puts fewer shards in its fullest zone), so
//! when it still holds more than `M` no placement could do better: the
//! plan says so in a warning, and the encode goes on (the operator chose
//! the code; with one zone, which is the default, every code warns).

use std::collections::{BTreeMap, HashSet};

use hayloft_storage::erasure::Code;

use crate::placement::{self, Candidate};

/// The holder of each shard, and why the spread is weaker than asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlan {
    /// The server (id) holding each shard, shard by shard.
    pub holders: Vec<String>,
    /// What an operator should know: zones holding more than `M` shards.
    pub warnings: Vec<String>,
}

/// Why the shards could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardPlacementError {
    /// Fewer live servers with room than shards.
    #[error(
        "erasure code {code} needs {shards} distinct live volume servers with room for a shard \
         ({shard_bytes} bytes each); {eligible} available"
    )]
    NotEnoughServers {
        /// The code asked for.
        code: Code,
        /// Its shards, `K + M`.
        shards: usize,
        /// Bytes one shard takes.
        shard_bytes: u64,
        /// Live servers with room.
        eligible: usize,
    },
}

/// Places the `K + M` shards of a volume on distinct servers of
/// `candidates` (live servers, with their free bytes on the warm tier),
/// each needing `shard_bytes`. `seed` (the volume id) breaks ties.
pub fn place_shards(
    candidates: &[Candidate],
    code: Code,
    shard_bytes: u64,
    seed: u64,
) -> Result<ShardPlan, ShardPlacementError> {
    let shards = code.shards();
    let mut seen = HashSet::new();
    let eligible: Vec<Candidate> = candidates
        .iter()
        .filter(|c| c.free_bytes >= shard_bytes && seen.insert(c.server_id.as_str()))
        .cloned()
        .collect();
    let error = ShardPlacementError::NotEnoughServers {
        code,
        shards,
        shard_bytes,
        eligible: eligible.len(),
    };
    let holders = placement::place(&eligible, &[], shards, seed).map_err(|_| error)?;
    let mut per_zone: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &holders {
        if let Some(c) = eligible.iter().find(|c| &c.server_id == id) {
            *per_zone.entry(c.zone.as_str()).or_default() += 1;
        }
    }
    let parity = usize::from(code.parity);
    let warnings = per_zone
        .iter()
        .filter(|(_, held)| **held > parity)
        .map(|(zone, held)| {
            format!(
                "zone {zone} holds {held} of the {shards} shards, more than the {parity} the code \
                 {code} survives losing: losing that zone loses the volume (the live servers with \
                 room span {} zone(s); no placement over them does better)",
                per_zone.len()
            )
        })
        .collect();
    Ok(ShardPlan { holders, warnings })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn server(id: &str, zone: &str, rack: &str, free: u64) -> Candidate {
        Candidate {
            server_id: id.into(),
            zone: zone.into(),
            rack: rack.into(),
            free_bytes: free,
            volumes: 0,
        }
    }

    fn code(k: u8, m: u8) -> Code {
        Code::new(k, m).unwrap()
    }

    fn count_by<'a>(
        all: &'a [Candidate],
        holders: &[String],
        key: impl Fn(&'a Candidate) -> String,
    ) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for id in holders {
            let c = all.iter().find(|c| &c.server_id == id).unwrap();
            *counts.entry(key(c)).or_default() += 1;
        }
        counts
    }

    #[test]
    fn shards_spread_over_zones_then_racks_with_no_zone_above_m() {
        // Three zones of three servers, two racks each: 4+2 puts two
        // shards a zone, on two racks of it.
        let servers: Vec<Candidate> = (0..9)
            .map(|i| {
                server(
                    &format!("s{i}"),
                    &format!("z{}", i % 3),
                    &format!("r{}", i / 3 % 2),
                    100,
                )
            })
            .collect();
        let plan = place_shards(&servers, code(4, 2), 100, 7).unwrap();
        assert_eq!(plan.holders.len(), 6);
        assert_eq!(plan.holders.iter().collect::<HashSet<_>>().len(), 6);
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        let zones = count_by(&servers, &plan.holders, |c| c.zone.clone());
        assert!(zones.values().all(|n| *n == 2), "{zones:?}");
        let racks = count_by(&servers, &plan.holders, |c| {
            format!("{}/{}", c.zone, c.rack)
        });
        assert!(racks.values().all(|n| *n == 1), "{racks:?}");
    }

    #[test]
    fn too_few_zones_spread_evenly_and_say_so() {
        // Two zones for 3+2: one zone must hold three shards (> m = 2).
        let servers: Vec<Candidate> = (0..6)
            .map(|i| server(&format!("s{i}"), &format!("z{}", i % 2), "r", 100))
            .collect();
        let plan = place_shards(&servers, code(3, 2), 10, 1).unwrap();
        let zones = count_by(&servers, &plan.holders, |c| c.zone.clone());
        let mut counts: Vec<usize> = zones.values().copied().collect();
        counts.sort();
        assert_eq!(counts, [2, 3]);
        assert_eq!(plan.warnings.len(), 1);
        assert!(
            plan.warnings[0].contains("holds 3 of the 5 shards, more than the 2"),
            "{:?}",
            plan.warnings
        );
        // One zone (every server's default): a warning too.
        let one: Vec<Candidate> = (0..5)
            .map(|i| server(&format!("s{i}"), "default", "default", 100))
            .collect();
        let plan = place_shards(&one, code(3, 2), 10, 1).unwrap();
        assert!(plan.warnings[0].contains("zone default holds 5 of the 5"));
    }

    #[test]
    fn fewer_servers_with_room_than_shards_is_a_clear_error() {
        let servers = vec![
            server("a", "z1", "r", 100),
            server("b", "z2", "r", 100),
            server("c", "z3", "r", 100),
            server("d", "z1", "r", 100),
            // No room for a shard of 50 bytes.
            server("e", "z2", "r", 49),
            // The same server twice counts once.
            server("a", "z1", "r", 100),
        ];
        let error = place_shards(&servers, code(3, 2), 50, 1).unwrap_err();
        assert_eq!(
            error.to_string(),
            "erasure code 3+2 needs 5 distinct live volume servers with room for a shard \
             (50 bytes each); 4 available"
        );
        assert!(place_shards(&servers, code(3, 2), 49, 1).is_ok());
    }

    proptest! {
        /// Any topology: distinct servers, all with room; the fullest zone
        /// holds as few shards as any placement could give it (so at most
        /// `m` whenever the topology allows), and a warning exactly when it
        /// holds more than `m`.
        #[test]
        fn the_fullest_zone_is_as_empty_as_the_topology_allows(
            zone_of in proptest::collection::vec((0u8..5, 0u8..3, 0u64..4), 1..24),
            k in 1u8..8,
            m in 1u8..5,
            seed in any::<u64>(),
        ) {
            let code = code(k, m);
            let servers: Vec<Candidate> = zone_of
                .iter()
                .enumerate()
                .map(|(i, (zone, rack, free))| {
                    server(&format!("s{i}"), &format!("z{zone}"), &format!("r{rack}"), *free * 10)
                })
                .collect();
            let with_room: Vec<&Candidate> = servers.iter().filter(|c| c.free_bytes >= 10).collect();
            let shards = code.shards();
            match place_shards(&servers, code, 10, seed) {
                Err(ShardPlacementError::NotEnoughServers { eligible, .. }) => {
                    prop_assert!(with_room.len() < shards);
                    prop_assert_eq!(eligible, with_room.len());
                }
                Ok(plan) => {
                    prop_assert_eq!(plan.holders.len(), shards);
                    prop_assert_eq!(plan.holders.iter().collect::<HashSet<_>>().len(), shards);
                    for id in &plan.holders {
                        prop_assert!(with_room.iter().any(|c| &c.server_id == id));
                    }
                    let zones = count_by(&servers, &plan.holders, |c| c.zone.clone());
                    let fullest = zones.values().copied().max().unwrap();
                    // The least any placement can put in its fullest zone:
                    // the smallest t with sum over zones of min(servers, t)
                    // reaching the shards.
                    let mut sizes: BTreeMap<&str, usize> = BTreeMap::new();
                    for c in &with_room {
                        *sizes.entry(c.zone.as_str()).or_default() += 1;
                    }
                    let best = (1..=shards)
                        .find(|t| sizes.values().map(|n| (*n).min(*t)).sum::<usize>() >= shards)
                        .unwrap();
                    prop_assert_eq!(fullest, best);
                    prop_assert_eq!(!plan.warnings.is_empty(), fullest > usize::from(m));
                }
            }
        }
    }
}
