//! The directory's replicated state and its apply function, free of any
//! consensus library: what every node of the directory group holds the
//! same, the [`Command`]s that change it, and how each changes both the
//! map in memory and the RocksDB write batch that makes it durable.
//!
//! The consensus layer (`consensus/`, openraft) decides the order of the
//! commands and hands each committed one to [`Replicated::apply`] with its
//! [`Position`] in the log; the position is opaque here and is stored in
//! the same batch, so the state on disk and the log position it reflects
//! never disagree. Applying is deterministic: the same commands in the
//! same order give every node the same state and the same answers.
//!
//! Soft state (heartbeats, free space, what each server reported) is not
//! here: it lives on the leader, in `cluster`.
//!
//! Why one file of ~1,290 lines: almost half of it is its tests (the apply
//! function tested on its own, as issue 32 asked); the code is one enum and
//! one match.

use std::collections::{BTreeMap, HashMap};

use hayloft_proto::{ServerLocation, Tier, VolumeState};
use hayloft_storage::VolumeId;
use prost::Message;
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

use crate::db::{self, RepairJobRow, ServerRow, VolumeRow};
use crate::error::{Error, Result};

/// Largest sequence number in a volume (needle ids are `volume << 32 | seq`).
pub(crate) const MAX_SEQ: u64 = u32::MAX as u64;

/// A change to the directory's replicated state. Protobuf records travel as
/// their encoded bytes, and volume ids as the bare `u32` the log has always
/// held: this is the log's wire format, like the protobuf messages, and
/// the apply function makes them [`VolumeId`]s.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// A volume server registered, or moved (address, zone or rack).
    /// `location`: an encoded `ServerLocation`.
    RegisterServer { location: Vec<u8> },
    /// Takes the next volume id (answered with [`Applied::VolumeId`]).
    AllocateVolumeId,
    /// A volume whose copies have been created. `row`: an encoded
    /// `VolumeRow`.
    CreateVolume { row: Vec<u8> },
    /// A volume the directory had no record of, reported by a server: served
    /// read-only, never takes new ids. `row`: an encoded `VolumeRow`.
    AdoptVolume { row: Vec<u8> },
    /// Reserves `count` needle sequences of a volume, from its high-water
    /// mark up (answered with [`Applied::Needles`]); refused if fewer than
    /// `at_least` are left.
    ReserveNeedles {
        volume_id: u32,
        count: u64,
        at_least: u64,
    },
    /// A volume's state and tier as its servers report them, and copies that
    /// missed a forwarded write or delete (stale until they catch up).
    VolumeReported {
        volume_id: u32,
        #[serde(with = "as_i32")]
        state: VolumeState,
        #[serde(with = "as_i32")]
        tier: Tier,
        stale: Vec<String>,
    },
    /// A stale copy has caught up (verified).
    CaughtUp { volume_id: u32, server_id: String },
    /// A new copy on `target` replaces the one on `lost`, or joins.
    Replaced {
        volume_id: u32,
        lost: Option<String>,
        target: String,
    },
    /// A copy leaves the replica set.
    RemoveReplica { volume_id: u32, server_id: String },
    /// A deleted volume leaves the map.
    ForgetVolume { volume_id: u32 },
    /// A capacity sample (an encoded `CapacitySample`); samples before
    /// `keep_since` are dropped.
    RecordCapacity { sample: Vec<u8>, keep_since: u64 },
    /// The leader starts a repair (`job`: an encoded `RepairJobRow`),
    /// replacing any job of the same volume.
    RepairStarted { job: Vec<u8> },
    /// A repair ended (its result, if any, was committed before): the job
    /// of `volume_id` on `target` is dropped.
    RepairEnded { volume_id: u32, target: String },
    /// A volume is erasure-coded: `layout` (an encoded `ErasureLayout`) is
    /// recorded in its row, and reads go to its shard holders from now on;
    /// its copies are removed after this (each with `RemoveReplica`).
    /// Answered again with the same layout: nothing changes; with another:
    /// refused.
    ErasureEncoded { volume_id: u32, layout: Vec<u8> },
    /// An erasure-coded volume is decoded: its row loses `layout` (an
    /// encoded `ErasureLayout`, which must be the one recorded) and its
    /// replica set becomes `replicas` (copies written, fsynced and
    /// verified before); reads go to them from now on, and the shards are
    /// dropped after this. Applied again (a retried proposal): nothing
    /// changes; refused if the row holds another layout.
    ErasureDecoded {
        volume_id: u32,
        layout: Vec<u8>,
        replicas: Vec<String>,
    },
    /// Revokes the token `token_id` until `expires_at` (Unix seconds);
    /// entries whose `expires_at` is before `now` (the leader's clock when
    /// it proposed this) are dropped.
    RevokeToken {
        token_id: String,
        expires_at: u64,
        now: u64,
    },
    /// Shard `shard` of an erasure-coded volume was rebuilt on `to` (its
    /// digest checked there against the manifest's): `to` holds it in the
    /// layout in place of `from`. Answered again once applied: nothing
    /// changes; refused if another server holds that shard now.
    ShardMoved {
        volume_id: u32,
        shard: u32,
        from: String,
        to: String,
    },
    /// An erasure-coded volume is re-encoded without its deleted needles:
    /// its layout `old` (an encoded `ErasureLayout`, which must be the one
    /// recorded) becomes `new` (same code and holders, the new generation's
    /// lengths and digests, staged on every holder before). The holders
    /// serve the new generation after this (`EcSwap`). Applied again: nothing
    /// changes; refused if the row holds another layout.
    ErasureReencoded {
        volume_id: u32,
        old: Vec<u8>,
        new: Vec<u8>,
    },
    /// Takes the next volume id in region `region`'s range (answered with
    /// [`Applied::VolumeId`]): the group's counter, or the range's first id
    /// if the counter is below it; refused once the range is used up.
    /// Regions other than 0 propose this (see `hayloft_storage::region`).
    AllocateRegionVolumeId { region: u8 },
    /// An erasure-coded volume moved to the cold tier: its row loses
    /// `layout` (an encoded `ErasureLayout`, which must be the one
    /// recorded), its replica set becomes `replicas` (cold copies of one
    /// verified object, staged on each before), and it is cold from now on;
    /// the shards are dropped after this. Applied again: nothing changes;
    /// refused if the row holds another layout.
    ErasureToCold {
        volume_id: u32,
        layout: Vec<u8>,
        replicas: Vec<String>,
    },
}

/// What applying a [`Command`] answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// Applied; nothing to answer.
    Done,
    /// The volume id taken.
    VolumeId(VolumeId),
    /// The needle sequences reserved: `first..end`.
    Needles { first: u64, end: u64 },
    /// Not applied, and why (the state had changed since the leader looked).
    Refused(String),
}

/// Where the consensus layer is: the last log entry applied and the group
/// membership it left, each as the consensus layer encodes it (JSON).
/// Opaque to the state; empty for none (a database written before Raft).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    /// The last applied log id.
    pub applied: Vec<u8>,
    /// The membership as of that entry.
    pub membership: Vec<u8>,
}

/// The replicated state: the same on every node that applied the same
/// entries.
#[derive(Debug, PartialEq)]
pub(crate) struct Replicated {
    /// Every server ever registered, by id.
    pub(crate) servers: HashMap<String, ServerRow>,
    /// Every volume, by id.
    pub(crate) volumes: BTreeMap<VolumeId, VolumeRow>,
    /// Repairs started and not ended, by volume.
    pub(crate) repair_jobs: BTreeMap<VolumeId, RepairJobRow>,
    /// Revoked token ids and when each may be forgotten.
    pub(crate) revoked: BTreeMap<String, u64>,
    /// The next volume id to hand out (from 1).
    pub(crate) next_volume_id: VolumeId,
    /// The consensus layer's position this state reflects.
    pub(crate) position: Position,
}

impl Replicated {
    /// The state a snapshot (or the database at start) holds.
    pub(crate) fn from_snapshot(snapshot: db::Snapshot) -> Replicated {
        Replicated {
            servers: snapshot
                .servers
                .into_iter()
                .filter_map(|row| Some((row.location.as_ref()?.server_id.clone(), row)))
                .collect(),
            volumes: snapshot
                .volumes
                .into_iter()
                .map(|mut row| {
                    row.migrate();
                    (row.volume_id(), row)
                })
                .collect(),
            repair_jobs: snapshot
                .repair_jobs
                .into_iter()
                .map(|job| (job.volume_id(), job))
                .collect(),
            revoked: snapshot
                .revoked
                .into_iter()
                .map(|r| (r.token_id, r.expires_at))
                .collect(),
            next_volume_id: VolumeId(snapshot.next_volume_id.max(1)),
            position: Position {
                applied: snapshot.applied,
                membership: snapshot.membership,
            },
        }
    }

    /// The state as a snapshot, with the capacity `history` (kept in the
    /// database only).
    pub(crate) fn to_snapshot(&self, history: Vec<hayloft_proto::CapacitySample>) -> db::Snapshot {
        db::Snapshot {
            next_volume_id: self.next_volume_id.0,
            volumes: self.volumes.values().cloned().collect(),
            servers: self.servers.values().cloned().collect(),
            history,
            applied: self.position.applied.clone(),
            membership: self.position.membership.clone(),
            repair_jobs: self.repair_jobs.values().cloned().collect(),
            revoked: self
                .revoked
                .iter()
                .map(|(token_id, expires_at)| db::RevokedToken {
                    token_id: token_id.clone(),
                    expires_at: *expires_at,
                })
                .collect(),
        }
    }

    /// Applies one committed log entry at `position`: its `command` (none
    /// for an entry that only moves the position, such as a membership
    /// change) changes the state and `batch`, and the position goes into
    /// the same batch. The caller writes the batch before anyone reads the
    /// state (the cluster holds its lock across both).
    pub(crate) fn apply(
        &mut self,
        batch: &mut WriteBatch,
        command: Option<Command>,
        position: Position,
    ) -> Result<Applied> {
        let applied = match command {
            Some(command) => apply_command(self, batch, command)?,
            None => Applied::Done,
        };
        db::put_applied(batch, &position.applied, &position.membership);
        self.position = position;
        Ok(applied)
    }
}

/// A wire enum in a command as the log has always stored it: its `i32`
/// (an unknown value, from a newer node, reads as the default).
mod as_i32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer, E: Copy + Into<i32>>(
        value: &E,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_i32((*value).into())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, E: TryFrom<i32> + Default>(
        deserializer: D,
    ) -> Result<E, D::Error> {
        Ok(E::try_from(i32::deserialize(deserializer)?).unwrap_or_default())
    }
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|_| Error::Corrupt("undecodable record in a Raft entry"))
}

/// Applies one command to the state and the batch.
fn apply_command(
    map: &mut Replicated,
    batch: &mut WriteBatch,
    command: Command,
) -> Result<Applied> {
    let changed = |batch: &mut WriteBatch, row: &VolumeRow| {
        db::put_volume(batch, row);
        Applied::Done
    };
    Ok(match command {
        Command::RegisterServer { location } => {
            let location: ServerLocation = decode(&location)?;
            let server = map.servers.entry(location.server_id.clone()).or_default();
            server.location = Some(location);
            db::put_server(batch, server);
            Applied::Done
        }
        Command::AllocateVolumeId => {
            let id = map.next_volume_id;
            match id.0.checked_add(1).map(VolumeId) {
                Some(next) => {
                    map.next_volume_id = next;
                    db::put_next_volume_id(batch, next);
                    Applied::VolumeId(id)
                }
                None => Applied::Refused("volume ids exhausted".into()),
            }
        }
        Command::AllocateRegionVolumeId { region } => {
            let region = hayloft_storage::RegionNumber(region);
            let taken = region
                .allocate(map.next_volume_id.0)
                .and_then(|id| Some((id, id.0.checked_add(1)?)));
            match taken {
                Some((id, next)) => {
                    map.next_volume_id = VolumeId(next);
                    db::put_next_volume_id(batch, VolumeId(next));
                    Applied::VolumeId(id)
                }
                None => Applied::Refused(format!("volume ids of region {region} are exhausted")),
            }
        }
        Command::CreateVolume { row } | Command::AdoptVolume { row } => {
            let mut row: VolumeRow = decode(&row)?;
            row.migrate();
            let row = map.volumes.entry(row.volume_id()).or_insert(row);
            changed(batch, row)
        }
        Command::ReserveNeedles {
            volume_id,
            count,
            at_least,
        } => {
            let volume_id = VolumeId(volume_id);
            let Some(row) = map.volumes.get_mut(&volume_id) else {
                return Ok(Applied::Refused(format!(
                    "volume {volume_id} is not in the map"
                )));
            };
            let first = row.needle_high_water.max(1);
            let end = first.saturating_add(count).min(MAX_SEQ + 1);
            if end.saturating_sub(first) < at_least {
                return Ok(Applied::Refused(format!(
                    "volume {volume_id} has fewer than {at_least} needle ids left"
                )));
            }
            row.needle_high_water = end;
            db::put_volume(batch, row);
            Applied::Needles { first, end }
        }
        Command::VolumeReported {
            volume_id,
            state,
            tier,
            stale,
        } => {
            let volume_id = VolumeId(volume_id);
            let Some(row) = map.volumes.get_mut(&volume_id) else {
                return Ok(Applied::Done);
            };
            row.state = state as i32;
            row.tier = tier as i32;
            for server in stale {
                if row.replicas.contains(&server) && !row.stale.contains(&server) {
                    row.stale.push(server);
                }
            }
            changed(batch, row)
        }
        Command::CaughtUp {
            volume_id,
            server_id,
        } => {
            let volume_id = VolumeId(volume_id);
            let Some(row) = map.volumes.get_mut(&volume_id) else {
                return Ok(Applied::Done);
            };
            row.stale.retain(|s| *s != server_id);
            changed(batch, row)
        }
        Command::Replaced {
            volume_id,
            lost,
            target,
        } => {
            let volume_id = VolumeId(volume_id);
            let Some(row) = map.volumes.get_mut(&volume_id) else {
                return Ok(Applied::Done);
            };
            if row.replicas.contains(&target) {
                return Ok(Applied::Done);
            }
            match row
                .replicas
                .iter_mut()
                .find(|s| Some(s.as_str()) == lost.as_deref())
            {
                Some(slot) => *slot = target.clone(),
                None => row.replicas.push(target.clone()),
            }
            row.stale
                .retain(|s| Some(s.as_str()) != lost.as_deref() && *s != target);
            if Some(row.server_id.as_str()) == lost.as_deref() {
                row.server_id = target;
            }
            changed(batch, row)
        }
        Command::RemoveReplica {
            volume_id,
            server_id,
        } => {
            let volume_id = VolumeId(volume_id);
            let Some(row) = map.volumes.get_mut(&volume_id) else {
                return Ok(Applied::Done);
            };
            row.replicas.retain(|s| *s != server_id);
            row.stale.retain(|s| *s != server_id);
            if row.server_id == server_id {
                row.server_id = row.replicas.first().cloned().unwrap_or_default();
            }
            changed(batch, row)
        }
        Command::ForgetVolume { volume_id } => {
            let volume_id = VolumeId(volume_id);
            map.volumes.remove(&volume_id);
            db::delete_volume(batch, volume_id);
            if map.repair_jobs.remove(&volume_id).is_some() {
                db::delete_repair_job(batch, volume_id);
            }
            Applied::Done
        }
        Command::RepairStarted { job } => {
            let job: RepairJobRow = decode(&job)?;
            if !map.volumes.contains_key(&job.volume_id()) {
                return Ok(Applied::Refused(format!(
                    "volume {} is not in the map",
                    job.volume_id
                )));
            }
            db::put_repair_job(batch, &job);
            map.repair_jobs.insert(job.volume_id(), job);
            Applied::Done
        }
        Command::RepairEnded { volume_id, target } => {
            let volume_id = VolumeId(volume_id);
            if map
                .repair_jobs
                .get(&volume_id)
                .is_some_and(|job| job.target == target)
            {
                map.repair_jobs.remove(&volume_id);
                db::delete_repair_job(batch, volume_id);
            }
            Applied::Done
        }
        Command::ErasureEncoded { volume_id, layout } => {
            let layout: hayloft_proto::ErasureLayout = decode(&layout)?;
            let volume_id = VolumeId(volume_id);
            let Some(row) = map.volumes.get_mut(&volume_id) else {
                return Ok(Applied::Refused(format!(
                    "volume {volume_id} is not in the map"
                )));
            };
            match &row.erasure {
                Some(recorded) if *recorded == layout => return Ok(Applied::Done),
                Some(recorded) => {
                    return Ok(Applied::Refused(format!(
                        "volume {volume_id} is already erasure-coded ({} on {})",
                        recorded.code,
                        recorded.holders.join(", ")
                    )));
                }
                None => {}
            }
            row.erasure = Some(layout);
            row.state = VolumeState::Sealed as i32;
            changed(batch, row)
        }
        Command::ErasureDecoded {
            volume_id,
            layout,
            replicas,
        } => {
            let layout: hayloft_proto::ErasureLayout = decode(&layout)?;
            let volume_id = VolumeId(volume_id);
            let Some(row) = map.volumes.get_mut(&volume_id) else {
                return Ok(Applied::Refused(format!(
                    "volume {volume_id} is not in the map"
                )));
            };
            match &row.erasure {
                Some(recorded) if *recorded == layout => {}
                None if row.replicas == replicas => return Ok(Applied::Done),
                _ => {
                    return Ok(Applied::Refused(format!(
                        "volume {volume_id} is no longer erasure-coded as the decode read it"
                    )));
                }
            }
            row.erasure = None;
            row.server_id = replicas.first().cloned().unwrap_or_default();
            row.replicas = replicas;
            row.stale.clear();
            row.state = VolumeState::Sealed as i32;
            row.tier = Tier::Warm as i32;
            changed(batch, row)
        }
        Command::ErasureToCold {
            volume_id,
            layout,
            replicas,
        } => {
            let layout: hayloft_proto::ErasureLayout = decode(&layout)?;
            let volume_id = VolumeId(volume_id);
            let Some(row) = map.volumes.get_mut(&volume_id) else {
                return Ok(Applied::Refused(format!(
                    "volume {volume_id} is not in the map"
                )));
            };
            match &row.erasure {
                Some(recorded) if *recorded == layout => {}
                None if row.replicas == replicas && row.tier == Tier::Cold as i32 => {
                    return Ok(Applied::Done);
                }
                _ => {
                    return Ok(Applied::Refused(format!(
                        "volume {volume_id} is no longer erasure-coded as the move to cold read it"
                    )));
                }
            }
            row.erasure = None;
            row.server_id = replicas.first().cloned().unwrap_or_default();
            row.replicas = replicas;
            row.stale.clear();
            row.state = VolumeState::Cold as i32;
            row.tier = Tier::Cold as i32;
            if let Some(status) = row.status.as_mut() {
                status.tier = Tier::Cold as i32;
                status.state = VolumeState::Cold as i32;
            }
            changed(batch, row)
        }
        Command::RevokeToken {
            token_id,
            expires_at,
            now,
        } => {
            let expired: Vec<String> = map
                .revoked
                .iter()
                .filter(|(_, until)| **until < now)
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired {
                map.revoked.remove(&id);
                db::delete_revoked(batch, &id);
            }
            if expires_at >= now {
                db::put_revoked(
                    batch,
                    &db::RevokedToken {
                        token_id: token_id.clone(),
                        expires_at,
                    },
                );
                map.revoked.insert(token_id, expires_at);
            }
            Applied::Done
        }
        Command::ShardMoved {
            volume_id,
            shard,
            from,
            to,
        } => {
            let volume_id = VolumeId(volume_id);
            let Some(row) = map.volumes.get_mut(&volume_id) else {
                return Ok(Applied::Refused(format!(
                    "volume {volume_id} is not in the map"
                )));
            };
            let Some(holder) = row
                .erasure
                .as_mut()
                .and_then(|layout| layout.holders.get_mut(shard as usize))
            else {
                return Ok(Applied::Refused(format!(
                    "volume {volume_id} has no shard {shard}"
                )));
            };
            if *holder == to {
                return Ok(Applied::Done);
            }
            if *holder != from {
                return Ok(Applied::Refused(format!(
                    "shard {shard} of volume {volume_id} is held by {holder}, not {from}"
                )));
            }
            *holder = to;
            changed(batch, row)
        }
        Command::ErasureReencoded {
            volume_id,
            old,
            new,
        } => {
            let old: hayloft_proto::ErasureLayout = decode(&old)?;
            let new: hayloft_proto::ErasureLayout = decode(&new)?;
            let volume_id = VolumeId(volume_id);
            let Some(row) = map.volumes.get_mut(&volume_id) else {
                return Ok(Applied::Refused(format!(
                    "volume {volume_id} is not in the map"
                )));
            };
            match &row.erasure {
                Some(recorded) if *recorded == new => return Ok(Applied::Done),
                Some(recorded) if *recorded == old => {}
                _ => {
                    return Ok(Applied::Refused(format!(
                        "volume {volume_id} is no longer erasure-coded as the re-encode read it"
                    )));
                }
            }
            row.erasure = Some(new);
            changed(batch, row)
        }
        Command::RecordCapacity { sample, keep_since } => {
            let sample: hayloft_proto::CapacitySample = decode(&sample)?;
            db::put_sample(batch, &sample, keep_since);
            Applied::Done
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    fn volume(id: u32, replicas: &[&str]) -> Command {
        Command::CreateVolume {
            row: VolumeRow {
                id,
                collection: "photos".into(),
                tier: 1,
                state: 1,
                server_id: replicas[0].into(),
                created_at: 1,
                replicas: replicas.iter().map(|s| s.to_string()).collect(),
                replication: replicas.len() as u32,
                ..VolumeRow::default()
            }
            .encode_to_vec(),
        }
    }

    fn server(id: &str) -> Command {
        Command::RegisterServer {
            location: ServerLocation {
                server_id: id.into(),
                zone: "z".into(),
                ..ServerLocation::default()
            }
            .encode_to_vec(),
        }
    }

    fn at(index: u64) -> Position {
        Position {
            applied: index.to_string().into_bytes(),
            membership: b"m".to_vec(),
        }
    }

    /// A state with a fresh database under it: applies each command as
    /// the cluster does (one batch per entry, written before the next).
    struct Machine {
        _dir: tempfile::TempDir,
        db: Db,
        state: Replicated,
        index: u64,
    }

    impl Machine {
        fn new() -> Machine {
            let dir = tempfile::tempdir().unwrap();
            let db = Db::open(dir.path()).unwrap();
            let state = Replicated::from_snapshot(db.load().unwrap());
            Machine {
                _dir: dir,
                db,
                state,
                index: 0,
            }
        }

        fn apply(&mut self, command: Command) -> Applied {
            self.index += 1;
            let mut batch = WriteBatch::default();
            let applied = self
                .state
                .apply(&mut batch, Some(command), at(self.index))
                .unwrap();
            self.db.write(batch).unwrap();
            applied
        }

        /// The state as the database holds it now.
        fn reloaded(&self) -> Replicated {
            Replicated::from_snapshot(self.db.load().unwrap())
        }
    }

    fn every_kind_of_command() -> Vec<Command> {
        vec![
            server("a"),
            server("b"),
            server("c"),
            Command::AllocateVolumeId,
            volume(1, &["a", "b"]),
            Command::ReserveNeedles {
                volume_id: 1,
                count: 10,
                at_least: 10,
            },
            Command::VolumeReported {
                volume_id: 1,
                state: VolumeState::Sealed,
                tier: Tier::Hot,
                stale: vec!["b".into(), "nobody".into()],
            },
            Command::RepairStarted {
                job: RepairJobRow {
                    volume_id: 1,
                    target: "c".into(),
                    ..RepairJobRow::default()
                }
                .encode_to_vec(),
            },
            Command::Replaced {
                volume_id: 1,
                lost: Some("b".into()),
                target: "c".into(),
            },
            Command::RepairEnded {
                volume_id: 1,
                target: "c".into(),
            },
            Command::RevokeToken {
                token_id: "t".into(),
                expires_at: 100,
                now: 10,
            },
            Command::AllocateVolumeId,
            volume(2, &["a"]),
            Command::ForgetVolume { volume_id: 2 },
            Command::ErasureEncoded {
                volume_id: 1,
                layout: layout(&["a", "b", "c"]).encode_to_vec(),
            },
            Command::ShardMoved {
                volume_id: 1,
                shard: 1,
                from: "b".into(),
                to: "d".into(),
            },
            Command::ErasureReencoded {
                volume_id: 1,
                old: layout(&["a", "d", "c"]).encode_to_vec(),
                new: reencoded(&["a", "d", "c"]).encode_to_vec(),
            },
            Command::ErasureDecoded {
                volume_id: 1,
                layout: reencoded(&["a", "d", "c"]).encode_to_vec(),
                replicas: vec!["d".into(), "c".into()],
            },
            Command::AllocateRegionVolumeId { region: 1 },
            // Volume 1 is replicated again: refused, nothing changes (the
            // move itself: `an_erasure_coded_volume_goes_cold_only_...`).
            Command::ErasureToCold {
                volume_id: 1,
                layout: reencoded(&["a", "d", "c"]).encode_to_vec(),
                replicas: vec!["d".into(), "c".into()],
            },
        ]
    }

    /// `layout(holders)` re-encoded: a shorter data file, other digests.
    fn reencoded(holders: &[&str]) -> hayloft_proto::ErasureLayout {
        let mut layout = layout(holders);
        layout.data_len /= 2;
        layout.digests.iter_mut().for_each(|d| *d += 100);
        layout.encoded_at += 1;
        layout
    }

    fn layout(holders: &[&str]) -> hayloft_proto::ErasureLayout {
        hayloft_proto::ErasureLayout {
            code: format!("{}+1", holders.len() - 1),
            data_len: 1 << 20,
            block_len: 1 << 16,
            holders: holders.iter().map(|s| s.to_string()).collect(),
            digests: (0..holders.len() as u32).collect(),
            encoded_at: 5,
        }
    }

    #[test]
    fn commands_keep_the_log_format_of_earlier_releases() {
        // Enums travel as their i32, as when the command held raw i32s: a
        // log written before reads the same, and entries written now read
        // on a node not yet upgraded.
        let old = format!(
            r#"{{"VolumeReported":{{"volume_id":7,"state":{},"tier":{},"stale":["vs1"]}}}}"#,
            VolumeState::Sealed as i32,
            Tier::Warm as i32
        );
        let command: Command = serde_json::from_str(&old).unwrap();
        assert!(matches!(
            &command,
            Command::VolumeReported {
                volume_id: 7,
                state: VolumeState::Sealed,
                tier: Tier::Warm,
                stale,
            } if stale == &["vs1"]
        ));
        assert_eq!(serde_json::to_string(&command).unwrap(), old);
        let unknown = r#"{"VolumeReported":{"volume_id":7,"state":99,"tier":99,"stale":[]}}"#;
        let command: Command = serde_json::from_str(unknown).unwrap();
        assert!(matches!(
            command,
            Command::VolumeReported {
                state: VolumeState::Unspecified,
                tier: Tier::Unspecified,
                ..
            }
        ));
    }

    #[test]
    fn the_erasure_coded_entry_has_a_format_of_its_own_beside_the_old_ones() {
        // A new variant: entries written before it read as they did (the
        // test above), and this one's JSON is fixed from now on.
        let written = r#"{"ErasureEncoded":{"volume_id":7,"layout":[10,3,51,43,50]}}"#;
        let command: Command = serde_json::from_str(written).unwrap();
        let Command::ErasureEncoded { volume_id, layout } = &command else {
            panic!("{command:?}");
        };
        assert_eq!(*volume_id, 7);
        let layout = hayloft_proto::ErasureLayout::decode(layout.as_slice()).unwrap();
        assert_eq!(layout.code, "3+2");
        assert_eq!(serde_json::to_string(&command).unwrap(), written);
    }

    #[test]
    fn the_shard_moved_entry_has_a_format_of_its_own_beside_the_old_ones() {
        let written = r#"{"ShardMoved":{"volume_id":7,"shard":2,"from":"vs1","to":"vs5"}}"#;
        let command: Command = serde_json::from_str(written).unwrap();
        assert!(matches!(
            &command,
            Command::ShardMoved { volume_id: 7, shard: 2, from, to } if from == "vs1" && to == "vs5"
        ));
        assert_eq!(serde_json::to_string(&command).unwrap(), written);
    }

    #[test]
    fn a_rebuilt_shard_changes_its_holder_once_and_only_from_the_lost_one() {
        let mut machine = Machine::new();
        let moved = |m: &mut Machine, shard: u32, from: &str, to: &str| {
            m.apply(Command::ShardMoved {
                volume_id: 1,
                shard,
                from: from.into(),
                to: to.into(),
            })
        };
        assert!(
            matches!(moved(&mut machine, 0, "d", "x"), Applied::Refused(r) if r.contains("not in the map"))
        );
        machine.apply(volume(1, &["a"]));
        assert!(
            matches!(moved(&mut machine, 0, "d", "x"), Applied::Refused(r) if r.contains("no shard 0"))
        );
        machine.apply(Command::ErasureEncoded {
            volume_id: 1,
            layout: layout(&["d", "e", "f"]).encode_to_vec(),
        });
        assert_eq!(moved(&mut machine, 1, "e", "x"), Applied::Done);
        let holders = |m: &Machine| {
            m.reloaded().volumes[&VolumeId(1)]
                .erasure
                .clone()
                .unwrap()
                .holders
        };
        assert_eq!(holders(&machine), ["d", "x", "f"]);
        // The same entry again (a retried proposal): nothing changes.
        assert_eq!(moved(&mut machine, 1, "e", "x"), Applied::Done);
        // From a server that no longer holds the shard, or a shard the code
        // does not have: refused, nothing changes.
        assert!(
            matches!(moved(&mut machine, 1, "e", "y"), Applied::Refused(r) if r.contains("held by x"))
        );
        assert!(matches!(
            moved(&mut machine, 3, "d", "y"),
            Applied::Refused(_)
        ));
        assert_eq!(holders(&machine), ["d", "x", "f"]);
        assert_eq!(machine.reloaded(), machine.state);
    }

    #[test]
    fn an_erasure_coded_volume_keeps_its_layout_while_its_copies_leave() {
        let mut machine = Machine::new();
        let encoded = |m: &mut Machine, id: u32, holders: &[&str]| {
            m.apply(Command::ErasureEncoded {
                volume_id: id,
                layout: layout(holders).encode_to_vec(),
            })
        };
        assert!(matches!(
            encoded(&mut machine, 1, &["d", "e", "f"]),
            Applied::Refused(r) if r.contains("not in the map")
        ));
        machine.apply(volume(1, &["a", "b", "c"]));
        assert_eq!(encoded(&mut machine, 1, &["d", "e", "f"]), Applied::Done);
        let row = &machine.state.volumes[&VolumeId(1)];
        assert_eq!(row.erasure, Some(layout(&["d", "e", "f"])));
        assert_eq!(row.state, VolumeState::Sealed as i32);
        assert_eq!(row.replicas, ["a", "b", "c"], "the copies go one by one");
        // The same layout again (a retried proposal) changes nothing;
        // another is refused.
        let before = machine.reloaded();
        assert_eq!(encoded(&mut machine, 1, &["d", "e", "f"]), Applied::Done);
        assert!(matches!(
            encoded(&mut machine, 1, &["x", "y", "z"]),
            Applied::Refused(r) if r.contains("already erasure-coded (2+1 on d, e, f)")
        ));
        assert_eq!(machine.reloaded().volumes, before.volumes);
        for copy in ["a", "b", "c"] {
            machine.apply(Command::RemoveReplica {
                volume_id: 1,
                server_id: copy.into(),
            });
        }
        let reloaded = machine.reloaded();
        let row = &reloaded.volumes[&VolumeId(1)];
        assert!(row.replicas.is_empty());
        assert_eq!(row.erasure, Some(layout(&["d", "e", "f"])));
        assert_eq!(reloaded, machine.state);
    }

    #[test]
    fn the_erasure_reencoded_entry_has_a_format_of_its_own_beside_the_old_ones() {
        let written =
            r#"{"ErasureReencoded":{"volume_id":7,"old":[10,3,51,43,50],"new":[10,3,51,43,49]}}"#;
        let command: Command = serde_json::from_str(written).unwrap();
        let Command::ErasureReencoded {
            volume_id,
            old,
            new,
        } = &command
        else {
            panic!("{command:?}");
        };
        assert_eq!(*volume_id, 7);
        let old = hayloft_proto::ErasureLayout::decode(old.as_slice()).unwrap();
        let new = hayloft_proto::ErasureLayout::decode(new.as_slice()).unwrap();
        assert_eq!((old.code.as_str(), new.code.as_str()), ("3+2", "3+1"));
        assert_eq!(serde_json::to_string(&command).unwrap(), written);
    }

    #[test]
    fn a_reencoded_layout_replaces_only_the_layout_it_was_read_from() {
        let mut machine = Machine::new();
        let reencode = |m: &mut Machine, old: &hayloft_proto::ErasureLayout| {
            m.apply(Command::ErasureReencoded {
                volume_id: 1,
                old: old.encode_to_vec(),
                new: reencoded(&["d", "e", "f"]).encode_to_vec(),
            })
        };
        let first = layout(&["d", "e", "f"]);
        assert!(matches!(
            reencode(&mut machine, &first),
            Applied::Refused(r) if r.contains("not in the map")
        ));
        machine.apply(volume(1, &["a"]));
        // Not erasure-coded: refused.
        assert!(matches!(
            reencode(&mut machine, &first),
            Applied::Refused(r) if r.contains("no longer erasure-coded")
        ));
        machine.apply(Command::ErasureEncoded {
            volume_id: 1,
            layout: first.encode_to_vec(),
        });
        // A shard moved since the re-encode read the layout: refused.
        let moved = layout(&["d", "x", "f"]);
        assert!(matches!(
            reencode(&mut machine, &moved),
            Applied::Refused(r) if r.contains("no longer erasure-coded")
        ));
        assert_eq!(
            machine.state.volumes[&VolumeId(1)].erasure,
            Some(first.clone())
        );
        assert_eq!(reencode(&mut machine, &first), Applied::Done);
        // Applied again (a retried proposal): nothing changes.
        assert_eq!(reencode(&mut machine, &first), Applied::Done);
        let reloaded = machine.reloaded();
        assert_eq!(
            reloaded.volumes[&VolumeId(1)].erasure,
            Some(reencoded(&["d", "e", "f"]))
        );
        assert_eq!(reloaded, machine.state);
    }

    #[test]
    fn the_erasure_decoded_entry_has_a_format_of_its_own_beside_the_old_ones() {
        let written =
            r#"{"ErasureDecoded":{"volume_id":7,"layout":[10,3,51,43,50],"replicas":["a","b"]}}"#;
        let command: Command = serde_json::from_str(written).unwrap();
        let Command::ErasureDecoded {
            volume_id,
            layout,
            replicas,
        } = &command
        else {
            panic!("{command:?}");
        };
        assert_eq!(
            (*volume_id, replicas.as_slice()),
            (7, &["a".to_owned(), "b".to_owned()][..])
        );
        let layout = hayloft_proto::ErasureLayout::decode(layout.as_slice()).unwrap();
        assert_eq!(layout.code, "3+2");
        assert_eq!(serde_json::to_string(&command).unwrap(), written);
    }

    #[test]
    fn a_decoded_volume_takes_its_new_copies_only_from_the_layout_it_was_decoded_from() {
        let mut machine = Machine::new();
        let decoded = |m: &mut Machine, holders: &[&str], replicas: &[&str]| {
            m.apply(Command::ErasureDecoded {
                volume_id: 1,
                layout: layout(holders).encode_to_vec(),
                replicas: replicas.iter().map(|s| s.to_string()).collect(),
            })
        };
        assert!(matches!(
            decoded(&mut machine, &["d", "e", "f"], &["a"]),
            Applied::Refused(r) if r.contains("not in the map")
        ));
        machine.apply(volume(1, &["a", "b", "c"]));
        // Not erasure-coded: refused, nothing changes.
        assert!(matches!(
            decoded(&mut machine, &["d", "e", "f"], &["x", "y"]),
            Applied::Refused(r) if r.contains("no longer erasure-coded")
        ));
        machine.apply(Command::ErasureEncoded {
            volume_id: 1,
            layout: layout(&["d", "e", "f"]).encode_to_vec(),
        });
        for copy in ["a", "b", "c"] {
            machine.apply(Command::RemoveReplica {
                volume_id: 1,
                server_id: copy.into(),
            });
        }
        // Another layout than recorded (re-encoded since): refused.
        let before = machine.reloaded();
        assert!(matches!(
            decoded(&mut machine, &["x", "y", "z"], &["d", "e"]),
            Applied::Refused(_)
        ));
        assert_eq!(machine.reloaded().volumes, before.volumes);
        assert_eq!(
            decoded(&mut machine, &["d", "e", "f"], &["e", "d"]),
            Applied::Done
        );
        let reloaded = machine.reloaded();
        let row = &reloaded.volumes[&VolumeId(1)];
        assert_eq!(row.erasure, None);
        assert_eq!(row.replicas, ["e", "d"]);
        assert_eq!(row.server_id, "e");
        assert_eq!(row.tier, Tier::Warm as i32);
        assert_eq!(row.state, VolumeState::Sealed as i32);
        // The same entry again (a retried proposal): nothing changes.
        assert_eq!(
            decoded(&mut machine, &["d", "e", "f"], &["e", "d"]),
            Applied::Done
        );
        assert_eq!(machine.reloaded().volumes, reloaded.volumes);
    }

    #[test]
    fn an_erasure_coded_volume_goes_cold_only_from_the_layout_it_was_read_from() {
        let mut machine = Machine::new();
        let to_cold = |m: &mut Machine, holders: &[&str], replicas: &[&str]| {
            m.apply(Command::ErasureToCold {
                volume_id: 1,
                layout: layout(holders).encode_to_vec(),
                replicas: replicas.iter().map(|s| s.to_string()).collect(),
            })
        };
        machine.apply(volume(1, &["a", "b"]));
        // Not erasure-coded: refused.
        assert!(matches!(
            to_cold(&mut machine, &["d", "e", "f"], &["d", "e"]),
            Applied::Refused(r) if r.contains("no longer erasure-coded")
        ));
        machine.apply(Command::ErasureEncoded {
            volume_id: 1,
            layout: layout(&["d", "e", "f"]).encode_to_vec(),
        });
        for copy in ["a", "b"] {
            machine.apply(Command::RemoveReplica {
                volume_id: 1,
                server_id: copy.into(),
            });
        }
        // Another layout than recorded (a shard moved since): refused.
        let before = machine.reloaded();
        assert!(matches!(
            to_cold(&mut machine, &["d", "x", "f"], &["d", "e"]),
            Applied::Refused(_)
        ));
        assert_eq!(machine.reloaded().volumes, before.volumes);
        assert_eq!(
            to_cold(&mut machine, &["d", "e", "f"], &["e", "d"]),
            Applied::Done
        );
        let reloaded = machine.reloaded();
        let row = &reloaded.volumes[&VolumeId(1)];
        assert_eq!(row.erasure, None);
        assert_eq!(row.replicas, ["e", "d"]);
        assert_eq!(row.server_id, "e");
        assert_eq!(row.tier, Tier::Cold as i32);
        assert_eq!(row.state, VolumeState::Cold as i32);
        // The same entry again (a retried proposal): nothing changes.
        assert_eq!(
            to_cold(&mut machine, &["d", "e", "f"], &["e", "d"]),
            Applied::Done
        );
        assert_eq!(machine.reloaded().volumes, reloaded.volumes);
        // A decode of the layout it no longer has: refused.
        assert!(matches!(
            machine.apply(Command::ErasureDecoded {
                volume_id: 1,
                layout: layout(&["d", "e", "f"]).encode_to_vec(),
                replicas: vec!["x".into()],
            }),
            Applied::Refused(_)
        ));
    }

    #[test]
    fn what_is_applied_is_what_the_database_holds() {
        let mut machine = Machine::new();
        for command in every_kind_of_command() {
            machine.apply(command);
            assert_eq!(machine.reloaded(), machine.state);
        }
        assert_eq!(machine.state.position, at(20));
        // A snapshot of the state is the state.
        let snapshot = machine.state.to_snapshot(Vec::new());
        assert_eq!(Replicated::from_snapshot(snapshot), machine.state);
    }

    #[test]
    fn the_same_commands_give_the_same_state_and_answers() {
        let (mut one, mut two) = (Machine::new(), Machine::new());
        for command in every_kind_of_command() {
            assert_eq!(one.apply(command.clone()), two.apply(command));
        }
        assert_eq!(one.state, two.state);
        let row = &one.state.volumes[&VolumeId(1)];
        assert_eq!(row.replicas, ["d", "c"], "decoded onto d and c");
        assert_eq!(row.erasure, None);
        assert!(row.stale.is_empty(), "the stale copy was replaced");
        assert_eq!(one.state.next_volume_id, VolumeId(0x0100_0001));
        assert!(!one.state.volumes.contains_key(&VolumeId(2)));
        assert!(one.state.repair_jobs.is_empty());
    }

    #[test]
    fn an_entry_without_a_command_moves_only_the_position() {
        let mut machine = Machine::new();
        machine.apply(volume(1, &["a"]));
        let before = machine.reloaded();
        let mut batch = WriteBatch::default();
        let applied = machine.state.apply(&mut batch, None, at(9)).unwrap();
        machine.db.write(batch).unwrap();
        assert_eq!(applied, Applied::Done);
        let after = machine.reloaded();
        assert_eq!(after.position, at(9));
        assert_eq!(after.volumes, before.volumes);
    }

    #[test]
    fn needle_blocks_start_at_the_high_water_mark_and_never_overlap() {
        let mut machine = Machine::new();
        let reserve = |m: &mut Machine, count, at_least| {
            m.apply(Command::ReserveNeedles {
                volume_id: 1,
                count,
                at_least,
            })
        };
        assert!(matches!(
            reserve(&mut machine, 5, 5),
            Applied::Refused(r) if r.contains("not in the map")
        ));
        machine.apply(volume(1, &["a"]));
        assert_eq!(
            reserve(&mut machine, 5, 5),
            Applied::Needles { first: 1, end: 6 }
        );
        assert_eq!(
            reserve(&mut machine, 5, 5),
            Applied::Needles { first: 6, end: 11 }
        );
        // Near the end of the volume: a shorter block if enough is left,
        // refused if not; the refusal changes nothing.
        machine
            .state
            .volumes
            .get_mut(&VolumeId(1))
            .unwrap()
            .needle_high_water = MAX_SEQ - 2;
        assert!(matches!(reserve(&mut machine, 10, 5), Applied::Refused(_)));
        assert_eq!(
            reserve(&mut machine, 10, 3),
            Applied::Needles {
                first: MAX_SEQ - 2,
                end: MAX_SEQ + 1
            }
        );
        assert!(matches!(reserve(&mut machine, 1, 1), Applied::Refused(_)));
    }

    #[test]
    fn a_region_takes_ids_from_its_own_range_and_keeps_them_across_restarts() {
        let mut machine = Machine::new();
        let region = |region| Command::AllocateRegionVolumeId { region };
        // A fresh group of region 2 starts at its range's first id.
        assert_eq!(
            machine.apply(region(2)),
            Applied::VolumeId(VolumeId(0x0200_0000))
        );
        assert_eq!(
            machine.apply(region(2)),
            Applied::VolumeId(VolumeId(0x0200_0001))
        );
        assert_eq!(machine.reloaded().next_volume_id, VolumeId(0x0200_0002));
        // A group whose counter is past a region's range (it was given a
        // lower number than before) is refused rather than reuse ids.
        assert!(matches!(machine.apply(region(1)), Applied::Refused(r) if r.contains("exhausted")));
        machine.state.next_volume_id = VolumeId(0x02FF_FFFF);
        assert_eq!(
            machine.apply(region(2)),
            Applied::VolumeId(VolumeId(0x02FF_FFFF))
        );
        assert!(matches!(machine.apply(region(2)), Applied::Refused(r) if r.contains("exhausted")));
        assert_eq!(machine.state.next_volume_id, VolumeId(0x0300_0000));
    }

    #[test]
    fn region_zero_keeps_the_ids_of_a_single_region_cluster() {
        // A cluster that allocated 1..=4 before regions existed allocates
        // 5 next, as region 0, with the command it always proposed.
        let mut machine = Machine::new();
        for _ in 1..=4 {
            machine.apply(Command::AllocateVolumeId);
        }
        assert_eq!(
            machine.apply(Command::AllocateVolumeId),
            Applied::VolumeId(VolumeId(5))
        );
        assert_eq!(VolumeId(5).region(), hayloft_storage::RegionNumber::DEFAULT);
    }

    #[test]
    fn volume_ids_are_refused_once_exhausted() {
        let mut machine = Machine::new();
        assert_eq!(
            machine.apply(Command::AllocateVolumeId),
            Applied::VolumeId(VolumeId(1))
        );
        machine.state.next_volume_id = VolumeId(u32::MAX);
        assert!(matches!(
            machine.apply(Command::AllocateVolumeId),
            Applied::Refused(r) if r.contains("exhausted")
        ));
        assert_eq!(machine.state.next_volume_id, VolumeId(u32::MAX));
    }

    #[test]
    fn a_replica_set_changes_one_copy_at_a_time() {
        let mut machine = Machine::new();
        machine.apply(volume(1, &["a", "b", "c"]));
        machine.apply(Command::VolumeReported {
            volume_id: 1,
            state: VolumeState::Writable,
            tier: Tier::Hot,
            stale: vec!["a".into()],
        });
        // The primary's copy is replaced: the new one is the primary, and
        // no longer stale.
        machine.apply(Command::Replaced {
            volume_id: 1,
            lost: Some("a".into()),
            target: "d".into(),
        });
        let row = &machine.state.volumes[&VolumeId(1)];
        assert_eq!((row.server_id.as_str(), row.replicas.len()), ("d", 3));
        assert!(row.stale.is_empty());
        // A target already in the set changes nothing.
        let before = machine.state.volumes[&VolumeId(1)].clone();
        machine.apply(Command::Replaced {
            volume_id: 1,
            lost: Some("b".into()),
            target: "c".into(),
        });
        assert_eq!(machine.state.volumes[&VolumeId(1)], before);
        // A copy that joins; then the primary leaves, and the next copy
        // takes its place.
        machine.apply(Command::Replaced {
            volume_id: 1,
            lost: None,
            target: "e".into(),
        });
        machine.apply(Command::RemoveReplica {
            volume_id: 1,
            server_id: "d".into(),
        });
        let row = &machine.state.volumes[&VolumeId(1)];
        assert_eq!(row.replicas, ["b", "c", "e"]);
        assert_eq!(row.server_id, "b");
        // Commands about a volume that is not in the map change nothing.
        let before = machine.reloaded();
        machine.apply(Command::CaughtUp {
            volume_id: 9,
            server_id: "a".into(),
        });
        assert_eq!(machine.reloaded().volumes, before.volumes);
    }

    #[test]
    fn revocations_expire_and_repairs_end_only_for_their_target() {
        let mut machine = Machine::new();
        let revoke = |m: &mut Machine, id: &str, expires_at, now| {
            m.apply(Command::RevokeToken {
                token_id: id.into(),
                expires_at,
                now,
            })
        };
        revoke(&mut machine, "t1", 100, 10);
        revoke(&mut machine, "t2", 300, 20);
        // Already expired: not kept. t1 expired by now: dropped.
        revoke(&mut machine, "t3", 150, 200);
        assert_eq!(
            machine.reloaded().revoked.into_keys().collect::<Vec<_>>(),
            ["t2"]
        );
        let job = |target: &str| Command::RepairStarted {
            job: RepairJobRow {
                volume_id: 1,
                target: target.into(),
                ..RepairJobRow::default()
            }
            .encode_to_vec(),
        };
        assert!(matches!(machine.apply(job("x")), Applied::Refused(_)));
        machine.apply(volume(1, &["a"]));
        machine.apply(job("x"));
        machine.apply(Command::RepairEnded {
            volume_id: 1,
            target: "y".into(),
        });
        assert_eq!(machine.reloaded().repair_jobs[&VolumeId(1)].target, "x");
        machine.apply(Command::ForgetVolume { volume_id: 1 });
        assert!(machine.reloaded().repair_jobs.is_empty());
    }
}
