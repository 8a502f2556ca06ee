//! Placement: which volume servers hold the copies of a volume.
//!
//! Copies go to distinct servers, spread over as many zones as there are,
//! then racks, then to the servers with the most free space; between equals,
//! to the servers holding the fewest copies, then by a hash of the volume id
//! and the server id (rendezvous hashing), so that different volumes, and the
//! repairs after a server is lost, land on different servers rather than on
//! one hot pair. The same function places a new volume (no existing copies)
//! and picks a target to re-replicate a degraded one (the surviving copies'
//! zones and racks count for spreading and are never chosen again).

use std::collections::HashSet;

/// A live volume server that could hold a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Its id.
    pub server_id: String,
    /// Its zone.
    pub zone: String,
    /// Its rack within the zone.
    pub rack: String,
    /// Free bytes on the tier the volume goes to.
    pub free_bytes: u64,
    /// Copies of volumes it holds or is about to receive.
    pub volumes: u64,
}

/// Why copies could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// Fewer eligible live servers than copies wanted.
    #[error(
        "replication {copies} needs {copies} live volume servers with room; {eligible} available ({existing} already hold a copy)"
    )]
    NotEnoughServers {
        /// Copies wanted in all (existing ones included).
        copies: usize,
        /// Live servers that could take a copy.
        eligible: usize,
        /// Servers already holding one.
        existing: usize,
    },
}

/// A 64-bit mix of the volume (`seed`) and a server id: the rendezvous
/// hash that breaks ties.
fn rendezvous(seed: u64, server_id: &str) -> u64 {
    // FNV-1a over the id, then splitmix64's finaliser with the seed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in server_id.bytes() {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut x = h ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// How crowded `candidate`'s place is among `existing` copies: copies
/// already in its zone, then in its rack. Lower spreads better.
pub fn crowding(existing: &[Candidate], candidate: &Candidate) -> (usize, usize) {
    let in_zone = existing.iter().filter(|c| c.zone == candidate.zone);
    let in_rack = in_zone.clone().filter(|c| c.rack == candidate.rack).count();
    (in_zone.count(), in_rack)
}

/// How widely `copies` spread: distinct zones, then distinct racks.
pub fn spread(copies: &[Candidate]) -> (usize, usize) {
    let zones: HashSet<&str> = copies.iter().map(|c| c.zone.as_str()).collect();
    let racks: HashSet<(&str, &str)> = copies
        .iter()
        .map(|c| (c.zone.as_str(), c.rack.as_str()))
        .collect();
    (zones.len(), racks.len())
}

/// The move that widens the spread of `copies` (a volume's) the most: from
/// one of them to one of `candidates` (not holding a copy), as
/// `(from, to)`; None when no move spreads them more. `seed` (the volume
/// id) breaks ties as in [`place`].
pub fn widen(
    copies: &[Candidate],
    candidates: &[Candidate],
    seed: u64,
) -> Option<(String, String)> {
    let now = spread(copies);
    let mut best: Option<((usize, usize), String, String)> = None;
    for from in copies {
        let rest: Vec<Candidate> = copies
            .iter()
            .filter(|c| c.server_id != from.server_id)
            .cloned()
            .collect();
        let free: Vec<Candidate> = candidates
            .iter()
            .filter(|c| !copies.iter().any(|h| h.server_id == c.server_id))
            .cloned()
            .collect();
        let Some(to) = place(&free, &rest, 1, seed)
            .ok()
            .and_then(|v| v.into_iter().next())
        else {
            continue;
        };
        let Some(chosen) = free.iter().find(|c| c.server_id == to) else {
            continue;
        };
        let mut after = rest;
        after.push(chosen.clone());
        let wider = spread(&after);
        if wider > now && best.as_ref().is_none_or(|(b, _, _)| wider > *b) {
            best = Some((wider, from.server_id.clone(), to));
        }
    }
    best.map(|(_, from, to)| (from, to))
}

/// Chooses `count` more servers for a volume out of `candidates`, none of
/// them in `existing` (the servers already holding a copy, whose zones and
/// racks count for spreading). `seed` (the volume id) breaks ties. Returns
/// server ids in choice order; all `count` or an error, never fewer.
pub fn place(
    candidates: &[Candidate],
    existing: &[Candidate],
    count: usize,
    seed: u64,
) -> Result<Vec<String>, PlacementError> {
    let taken: HashSet<&str> = existing.iter().map(|c| c.server_id.as_str()).collect();
    let mut seen = HashSet::new();
    let mut remaining: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| !taken.contains(c.server_id.as_str()) && seen.insert(c.server_id.as_str()))
        .collect();
    if remaining.len() < count {
        return Err(PlacementError::NotEnoughServers {
            copies: count + existing.len(),
            eligible: remaining.len(),
            existing: existing.len(),
        });
    }
    let mut placed: Vec<Candidate> = existing.to_vec();
    let mut chosen = Vec::with_capacity(count);
    for _ in 0..count {
        let max_free = remaining.iter().map(|c| c.free_bytes).max().unwrap_or(0);
        let key = |c: &Candidate| {
            let (in_zone, in_rack) = crowding(&placed, c);
            // Servers within about an eighth of the freest one tie.
            let bucket = if max_free == 0 {
                0
            } else {
                (u128::from(c.free_bytes) * 8 / u128::from(max_free)) as u64
            };
            (
                in_zone,
                in_rack,
                std::cmp::Reverse(bucket),
                c.volumes,
                rendezvous(seed, &c.server_id),
            )
        };
        let (best, _) = remaining
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| key(c))
            .ok_or(PlacementError::NotEnoughServers {
                copies: count + existing.len(),
                eligible: 0,
                existing: existing.len(),
            })?;
        let candidate = remaining.swap_remove(best);
        placed.push(candidate.clone());
        chosen.push(candidate.server_id.clone());
    }
    Ok(chosen)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashMap};

    fn server(id: &str, zone: &str, rack: &str, free: u64) -> Candidate {
        Candidate {
            server_id: id.into(),
            zone: zone.into(),
            rack: rack.into(),
            free_bytes: free,
            volumes: 0,
        }
    }

    fn zones_of<'a>(all: &'a [Candidate], ids: &[String]) -> BTreeSet<&'a str> {
        ids.iter()
            .map(|id| {
                all.iter()
                    .find(|c| &c.server_id == id)
                    .unwrap()
                    .zone
                    .as_str()
            })
            .collect()
    }

    #[test]
    fn a_move_widens_the_spread_only_when_a_wider_place_exists() {
        let copies = [
            server("a1", "a", "r1", 1),
            server("a2", "a", "r2", 1),
            server("b1", "b", "r1", 1),
        ];
        // No third zone: nothing to gain.
        let same_zones = [server("b2", "b", "r2", 1)];
        assert_eq!(widen(&copies, &same_zones, 7), None);
        // A third zone's server is back: a copy in the doubled zone moves.
        let back = [server("b2", "b", "r2", 1), server("c1", "c", "r1", 1)];
        let (from, to) = widen(&copies, &back, 7).unwrap();
        assert!(["a1", "a2"].contains(&from.as_str()), "{from}");
        assert_eq!(to, "c1");
        // Racks count after zones: two copies in one rack, another rack free.
        let one_rack = [
            server("a1", "a", "r1", 1),
            server("b1", "b", "r1", 1),
            server("b2", "b", "r1", 1),
        ];
        let (from, to) = widen(&one_rack, &[server("b3", "b", "r2", 1)], 7).unwrap();
        assert!(["b1", "b2"].contains(&from.as_str()), "{from}");
        assert_eq!(to, "b3");
        // A spread as wide as the servers allow stays put.
        let spread_out = [
            server("a1", "a", "r1", 1),
            server("b1", "b", "r1", 1),
            server("c1", "c", "r1", 1),
        ];
        assert_eq!(widen(&spread_out, &[server("a2", "a", "r2", 1)], 7), None);
    }

    #[test]
    fn never_two_copies_on_one_server_and_all_or_nothing() {
        let servers = vec![server("a", "z", "r", 10), server("b", "z", "r", 10)];
        let duplicated = [servers.clone(), servers.clone()].concat();
        let error = place(&duplicated, &[], 3, 1).unwrap_err();
        assert_eq!(
            error,
            PlacementError::NotEnoughServers {
                copies: 3,
                eligible: 2,
                existing: 0
            }
        );
        assert!(
            error
                .to_string()
                .contains("replication 3 needs 3 live volume servers")
        );
        let chosen = place(&duplicated, &[], 2, 1).unwrap();
        assert_eq!(chosen.iter().collect::<BTreeSet<_>>().len(), 2);
        // Existing copies are excluded, and count in the error.
        let error = place(&servers, &servers[..1], 2, 1).unwrap_err();
        assert!(
            error.to_string().contains("1 already hold a copy"),
            "{error}"
        );
    }

    #[test]
    fn copies_spread_over_zones_then_racks() {
        let two_zones = vec![
            server("a1", "a", "r1", 10),
            server("a2", "a", "r2", 10),
            server("b1", "b", "r1", 10),
            server("b2", "b", "r2", 10),
        ];
        for seed in 0..50 {
            let chosen = place(&two_zones, &[], 3, seed).unwrap();
            assert_eq!(zones_of(&two_zones, &chosen).len(), 2);
        }
        let three_zones = vec![
            server("a1", "a", "r", 10),
            server("a2", "a", "r", 10),
            server("b1", "b", "r", 10),
            server("c1", "c", "r", 10),
        ];
        let chosen = place(&three_zones, &[], 3, 7).unwrap();
        assert_eq!(zones_of(&three_zones, &chosen).len(), 3);
        let racks = vec![
            server("1", "z", "r1", 10),
            server("2", "z", "r1", 10),
            server("3", "z", "r2", 10),
            server("4", "z", "r3", 10),
        ];
        let chosen = place(&racks, &[], 3, 3).unwrap();
        let used: BTreeSet<_> = chosen
            .iter()
            .map(|id| &racks.iter().find(|c| &c.server_id == id).unwrap().rack)
            .collect();
        assert_eq!(used.len(), 3);
    }

    #[test]
    fn existing_copies_count_for_spreading() {
        let servers = vec![
            server("a1", "a", "r1", 10),
            server("a2", "a", "r2", 10),
            server("b1", "b", "r1", 10),
        ];
        let existing = vec![servers[0].clone()];
        for seed in 0..20 {
            assert_eq!(place(&servers, &existing, 1, seed).unwrap(), vec!["b1"]);
        }
    }

    #[test]
    fn most_free_space_wins_between_equal_sites() {
        let servers = vec![
            server("small", "z", "r", 10 << 30),
            server("big", "z", "r", 100 << 30),
            server("other", "z", "r", 9 << 30),
        ];
        for seed in 0..20 {
            assert_eq!(place(&servers, &[], 1, seed).unwrap(), vec!["big"]);
        }
    }

    /// 1,000 servers in 10 zones: copies always span zones, load is even,
    /// and the repairs after losing one server spread over many sources and
    /// targets.
    #[test]
    fn a_thousand_servers_in_ten_zones() {
        let mut servers: Vec<Candidate> = (0..1000)
            .map(|i| {
                server(
                    &format!("s{i}"),
                    &format!("z{}", i % 10),
                    &format!("r{}", i / 10 % 10),
                    1 << 40,
                )
            })
            .collect();
        let index: HashMap<String, usize> = servers
            .iter()
            .enumerate()
            .map(|(i, c)| (c.server_id.clone(), i))
            .collect();
        let volumes = 20_000u64;
        let mut replicas: Vec<Vec<String>> = Vec::new();
        for volume in 0..volumes {
            let chosen = place(&servers, &[], 3, volume).unwrap();
            assert_eq!(
                zones_of(&servers, &chosen).len(),
                3,
                "volume {volume}: {chosen:?}"
            );
            for id in &chosen {
                servers[index[id]].volumes += 1;
            }
            replicas.push(chosen);
        }
        let mean = (volumes * 3) as f64 / 1000.0;
        let max = servers.iter().map(|c| c.volumes).max().unwrap();
        assert!(
            (max as f64) <= 2.0 * mean,
            "max {max} copies on a server, mean {mean}"
        );

        // Lose the first server: each volume it held gets one new copy.
        let lost = "s0".to_owned();
        let mut alive: Vec<Candidate> = servers
            .iter()
            .filter(|c| c.server_id != lost)
            .cloned()
            .collect();
        let mut from: HashMap<String, usize> = HashMap::new();
        let mut to: HashMap<String, usize> = HashMap::new();
        let mut affected = 0;
        for (volume, copies) in replicas.iter().enumerate() {
            if !copies.contains(&lost) {
                continue;
            }
            affected += 1;
            let survivors: Vec<Candidate> = copies
                .iter()
                .filter(|id| **id != lost)
                .map(|id| servers[index[id]].clone())
                .collect();
            let source = survivors
                .iter()
                .min_by_key(|c| {
                    (
                        from.get(&c.server_id).copied().unwrap_or(0),
                        c.server_id.clone(),
                    )
                })
                .unwrap()
                .server_id
                .clone();
            *from.entry(source).or_default() += 1;
            let target = place(&alive, &survivors, 1, volume as u64).unwrap();
            assert!(
                !copies.contains(&target[0]),
                "a new copy on a server that has one"
            );
            let mut after: Vec<String> = survivors.iter().map(|c| c.server_id.clone()).collect();
            after.push(target[0].clone());
            assert_eq!(zones_of(&servers, &after).len(), 3);
            *to.entry(target[0].clone()).or_default() += 1;
            // The directory counts a copy being repaired onto a server.
            if let Some(c) = alive.iter_mut().find(|c| c.server_id == target[0]) {
                c.volumes += 1;
            }
        }
        let (max_from, max_to) = (
            from.values().max().copied().unwrap_or(0),
            to.values().max().copied().unwrap_or(0),
        );
        assert!(
            from.len() >= 30 && to.len() >= 30 && max_from <= 3 && max_to <= 3,
            "{affected} repairs: {} sources (max {max_from} each), {} targets (max {max_to} each)",
            from.len(),
            to.len()
        );
    }
}
