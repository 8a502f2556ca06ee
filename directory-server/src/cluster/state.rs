//! The replicated state's apply function: a command changes the map and
//! the RocksDB batch that makes it durable.

use super::*;

impl Inner {
    pub(super) fn from_snapshot(snapshot: db::Snapshot) -> Result<Inner> {
        let volumes = snapshot
            .volumes
            .into_iter()
            .map(|mut row| {
                row.migrate();
                (row.id, VolumeEntry::new(row))
            })
            .collect();
        let servers = snapshot
            .servers
            .into_iter()
            .filter_map(|row| Some((row.location.as_ref()?.server_id.clone(), row)))
            .collect();
        let applied = match snapshot.applied.as_slice() {
            [] => None,
            bytes => serde_json::from_slice(bytes)
                .map_err(|_| Error::Corrupt("undecodable last applied log id"))?,
        };
        let membership = match snapshot.membership.as_slice() {
            [] => StoredMembership::default(),
            bytes => serde_json::from_slice(bytes)
                .map_err(|_| Error::Corrupt("undecodable Raft membership"))?,
        };
        Ok(Inner {
            servers,
            reported: HashMap::new(),
            extras: HashSet::new(),
            abandoned: HashSet::new(),
            suspects: HashSet::new(),
            problems: BTreeMap::new(),
            creating: HashSet::new(),
            volumes,
            repair_jobs: snapshot
                .repair_jobs
                .into_iter()
                .map(|job| (job.volume_id, job))
                .collect(),
            revoked: snapshot
                .revoked
                .into_iter()
                .map(|r| (r.token_id, r.expires_at))
                .collect(),
            next_volume_id: snapshot.next_volume_id.max(1),
            round_robin: 0,
            applied,
            membership,
            led_term: 0,
            led_at: 0,
        })
    }
}

pub(super) fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Unexpected(e.to_string()))
}

pub(super) fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|_| Error::Corrupt("undecodable record in a Raft entry"))
}

/// Applies one command (see [`Cluster::apply`]).
pub(super) fn apply_command(
    inner: &mut Inner,
    batch: &mut WriteBatch,
    command: Command,
) -> Result<Applied> {
    let changed = |batch: &mut WriteBatch, entry: &VolumeEntry| {
        db::put_volume(batch, &entry.row);
        Applied::Done
    };
    Ok(match command {
        Command::RegisterServer { location } => {
            let location: ServerLocation = decode(&location)?;
            let server = inner.servers.entry(location.server_id.clone()).or_default();
            server.location = Some(location);
            db::put_server(batch, server);
            Applied::Done
        }
        Command::AllocateVolumeId => {
            let id = inner.next_volume_id;
            match id.checked_add(1) {
                Some(next) => {
                    inner.next_volume_id = next;
                    db::put_next_volume_id(batch, next);
                    Applied::VolumeId(id)
                }
                None => Applied::Refused("volume ids exhausted".into()),
            }
        }
        Command::CreateVolume { row } | Command::AdoptVolume { row } => {
            let mut row: VolumeRow = decode(&row)?;
            row.migrate();
            let entry = inner
                .volumes
                .entry(row.id)
                .or_insert_with(|| VolumeEntry::new(row));
            changed(batch, entry)
        }
        Command::ReserveNeedles {
            volume_id,
            count,
            at_least,
        } => {
            let Some(entry) = inner.volumes.get_mut(&volume_id) else {
                return Ok(Applied::Refused(format!(
                    "volume {volume_id} is not in the map"
                )));
            };
            let first = entry.row.needle_high_water.max(1);
            let end = first.saturating_add(count).min(MAX_SEQ + 1);
            if end.saturating_sub(first) < at_least {
                return Ok(Applied::Refused(format!(
                    "volume {volume_id} has fewer than {at_least} needle ids left"
                )));
            }
            entry.row.needle_high_water = end;
            db::put_volume(batch, &entry.row);
            Applied::Needles { first, end }
        }
        Command::VolumeReported {
            volume_id,
            state,
            tier,
            stale,
        } => {
            let Some(entry) = inner.volumes.get_mut(&volume_id) else {
                return Ok(Applied::Done);
            };
            let row = &mut entry.row;
            row.state = state;
            row.tier = tier;
            for server in stale {
                if row.replicas.contains(&server) && !row.stale.contains(&server) {
                    row.stale.push(server);
                }
            }
            changed(batch, entry)
        }
        Command::CaughtUp {
            volume_id,
            server_id,
        } => {
            let Some(entry) = inner.volumes.get_mut(&volume_id) else {
                return Ok(Applied::Done);
            };
            entry.row.stale.retain(|s| *s != server_id);
            changed(batch, entry)
        }
        Command::Replaced {
            volume_id,
            lost,
            target,
        } => {
            let Some(entry) = inner.volumes.get_mut(&volume_id) else {
                return Ok(Applied::Done);
            };
            let row = &mut entry.row;
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
            changed(batch, entry)
        }
        Command::RemoveReplica {
            volume_id,
            server_id,
        } => {
            let Some(entry) = inner.volumes.get_mut(&volume_id) else {
                return Ok(Applied::Done);
            };
            let row = &mut entry.row;
            row.replicas.retain(|s| *s != server_id);
            row.stale.retain(|s| *s != server_id);
            if row.server_id == server_id {
                row.server_id = row.replicas.first().cloned().unwrap_or_default();
            }
            changed(batch, entry)
        }
        Command::ForgetVolume { volume_id } => {
            inner.volumes.remove(&volume_id);
            db::delete_volume(batch, volume_id);
            if inner.repair_jobs.remove(&volume_id).is_some() {
                db::delete_repair_job(batch, volume_id);
            }
            Applied::Done
        }
        Command::RepairStarted { job } => {
            let job: RepairJobRow = decode(&job)?;
            if !inner.volumes.contains_key(&job.volume_id) {
                return Ok(Applied::Refused(format!(
                    "volume {} is not in the map",
                    job.volume_id
                )));
            }
            db::put_repair_job(batch, &job);
            inner.repair_jobs.insert(job.volume_id, job);
            Applied::Done
        }
        Command::RepairEnded { volume_id, target } => {
            if inner
                .repair_jobs
                .get(&volume_id)
                .is_some_and(|job| job.target == target)
            {
                inner.repair_jobs.remove(&volume_id);
                db::delete_repair_job(batch, volume_id);
            }
            Applied::Done
        }
        Command::RevokeToken {
            token_id,
            expires_at,
            now,
        } => {
            let expired: Vec<String> = inner
                .revoked
                .iter()
                .filter(|(_, until)| **until < now)
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired {
                inner.revoked.remove(&id);
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
                inner.revoked.insert(token_id, expires_at);
            }
            Applied::Done
        }
        Command::RecordCapacity { sample, keep_since } => {
            let sample: hayloft_proto::CapacitySample = decode(&sample)?;
            db::put_sample(batch, &sample, keep_since);
            Applied::Done
        }
    })
}
