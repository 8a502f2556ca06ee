//! Erasure-coded volumes in the map: what an encode starts from (checked
//! under the lock), its layout committed, and where their shards are for
//! lookups, heartbeats and status.

use hayloft_proto::{ErasureHolders, ErasureLayout};

use super::*;

/// What an encode of a volume starts from, as the leader's map has it.
#[derive(Debug, Clone)]
pub struct EncodeSource {
    /// The volume.
    pub volume_id: VolumeId,
    /// A live copy that reports the volume sealed: the one encoded.
    pub source: ServerLocation,
    /// The volume is writable (planned by a dry run only): it must be
    /// sealed before it is encoded.
    pub writable: bool,
    /// Bytes of its data file, as its server last reported them.
    pub data_len: u64,
    /// Every copy (to remove once the layout is committed), with whether
    /// its server is alive.
    pub copies: Vec<(ServerLocation, bool)>,
    /// Live servers with room on the warm tier (shards live there).
    pub candidates: Vec<Candidate>,
}

/// `K + M` of a recorded layout, if its code parses.
fn code_of(layout: &ErasureLayout) -> Option<hayloft_storage::erasure::Code> {
    layout.code.parse().ok()
}

/// Bytes the shards of `layout` take on disk (their bodies).
pub fn stored_bytes(layout: &ErasureLayout) -> u64 {
    let Some(code) = code_of(layout) else {
        return 0;
    };
    let k = u64::from(code.data);
    let block = layout.block_len.max(1);
    let rows = layout.data_len.div_ceil(k * block).max(1);
    rows * block * code.shards() as u64
}

impl Cluster {
    /// Checks that `volume_id` can be erasure-coded now and gathers what
    /// the encode needs: a sealed replicated volume, local (not cold, not
    /// moving), not being repaired, with a live copy reporting it sealed.
    /// With `dry_run`, a writable volume is planned too (from a live copy,
    /// sealed or not: `hayloft tier ec` seals it before encoding), and
    /// [`EncodeSource::writable`] says so.
    pub fn encode_source(&self, volume_id: VolumeId, dry_run: bool) -> Result<EncodeSource> {
        let inner = self.inner.lock();
        let row = inner
            .state
            .volumes
            .get(&volume_id)
            .ok_or(Error::VolumeNotFound(volume_id))?;
        let refuse = |why: String| {
            Err(Error::NotEncodable {
                volume: volume_id,
                why,
            })
        };
        if let Some(layout) = &row.erasure {
            return refuse(format!("it is erasure-coded already ({})", layout.code));
        }
        match VolumeState::try_from(row.state).unwrap_or_default() {
            VolumeState::Sealed => {}
            VolumeState::Writable | VolumeState::Unspecified if dry_run => {}
            VolumeState::Writable | VolumeState::Unspecified => {
                return refuse("it is writable: seal it first".into());
            }
            VolumeState::Moving => return refuse("it is moving between tiers".into()),
            VolumeState::Cold | VolumeState::Restoring => {
                return refuse("it is in the cold tier".into());
            }
        }
        if row.tier == Tier::Cold as i32 {
            return refuse("it is in the cold tier".into());
        }
        let writable = row.state != VolumeState::Sealed as i32;
        // An open encode job (a leader's that died) is this encode's own,
        // run again; any other job holds the volume.
        if inner
            .state
            .repair_jobs
            .get(&volume_id)
            .is_some_and(|job| job.kind != crate::erasure::jobs::ENCODE_KIND)
        {
            return refuse("a repair of it is under way".into());
        }
        let source = row.replicas.iter().find_map(|id| {
            let status = inner.reported.get(id)?.get(&volume_id)?;
            let local = status.tier != Tier::Cold as i32
                && status.state != VolumeState::Moving as i32
                && (status.sealed || writable);
            (local && self.replica_health(&inner, row, id) == ReplicaHealth::Ok)
                .then(|| {
                    Some((
                        inner.state.servers.get(id)?.location.clone()?,
                        status.file_bytes,
                    ))
                })
                .flatten()
        });
        let Some((source, data_len)) = source else {
            return refuse("no live, healthy copy of it reports it sealed".into());
        };
        let copies = row
            .replicas
            .iter()
            .filter_map(|id| {
                let server = inner.state.servers.get(id)?;
                Some((server.location.clone()?, self.alive(server)))
            })
            .collect();
        Ok(EncodeSource {
            volume_id,
            writable,
            source,
            data_len,
            copies,
            candidates: self.candidates(&inner, Tier::Warm),
        })
    }

    /// Whether `volume_id` has an erasure-coded layout in the map (`None`:
    /// no such volume).
    pub fn is_erasure_coded(&self, volume_id: VolumeId) -> Option<bool> {
        self.inner
            .lock()
            .state
            .volumes
            .get(&volume_id)
            .map(|row| row.erasure.is_some())
    }

    /// The erasure-coded layout of `volume_id` as the map has it.
    pub fn erasure_layout(&self, volume_id: VolumeId) -> Option<ErasureLayout> {
        self.inner
            .lock()
            .state
            .volumes
            .get(&volume_id)?
            .erasure
            .clone()
    }

    /// Commits the layout of `volume_id` (its shards written, fsynced,
    /// checked and installed on every holder): from now on reads go to the
    /// holders, and its copies may be removed.
    pub async fn erasure_encoded(&self, volume_id: VolumeId, layout: ErasureLayout) -> Result<()> {
        match self
            .propose(Command::ErasureEncoded {
                volume_id: volume_id.0,
                layout: layout.encode_to_vec(),
            })
            .await?
        {
            Applied::Refused(reason) => Err(Error::Refused(reason)),
            _ => Ok(()),
        }
    }

    /// The holders of `row`'s shards, shard by shard, if it is
    /// erasure-coded.
    pub(super) fn erasure_holders(inner: &Inner, row: &VolumeRow) -> Option<ErasureHolders> {
        let layout = row.erasure.as_ref()?;
        Some(ErasureHolders {
            volume_id: row.id,
            code: layout.code.clone(),
            holders: layout
                .holders
                .iter()
                .map(|id| {
                    inner
                        .state
                        .servers
                        .get(id)
                        .and_then(|s| s.location.clone())
                        .unwrap_or_else(|| ServerLocation {
                            server_id: id.clone(),
                            ..ServerLocation::default()
                        })
                })
                .collect(),
        })
    }

    /// Every shard holder of `row` (once each, in shard order) with its
    /// health: down if its server is, ok otherwise (a shard its holder
    /// reports missing is the shard worker's to rebuild elsewhere).
    pub(super) fn holder_replicas(&self, inner: &Inner, row: &VolumeRow) -> Vec<Replica> {
        let Some(layout) = &row.erasure else {
            return Vec::new();
        };
        let mut seen = HashSet::new();
        layout
            .holders
            .iter()
            .filter(|id| seen.insert(id.as_str()))
            .map(|id| {
                let server = inner.state.servers.get(id);
                Replica {
                    location: Some(server.and_then(|s| s.location.clone()).unwrap_or_else(|| {
                        ServerLocation {
                            server_id: id.clone(),
                            ..ServerLocation::default()
                        }
                    })),
                    health: if server.is_some_and(|s| self.alive(s)) {
                        ReplicaHealth::Ok
                    } else {
                        ReplicaHealth::Down
                    } as i32,
                    needles: 0,
                    status: None,
                }
            })
            .collect()
    }

    /// The erasure-coded volumes `server_id` holds a shard of, with the
    /// holder of each shard (for its heartbeat's answer).
    pub(super) fn erasure_held_by(inner: &Inner, server_id: &str) -> Vec<ErasureHolders> {
        inner
            .state
            .volumes
            .values()
            .filter(|row| {
                row.erasure
                    .as_ref()
                    .is_some_and(|l| l.holders.iter().any(|h| h == server_id))
            })
            .filter_map(|row| Self::erasure_holders(inner, row))
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn shards_take_whole_rows_of_blocks_on_every_shard() {
        let layout = ErasureLayout {
            code: "3+2".into(),
            data_len: 1 << 20,
            block_len: 65_536,
            ..ErasureLayout::default()
        };
        // 16 blocks of data in rows of 3: 6 rows, 5 shards of 6 blocks.
        assert_eq!(stored_bytes(&layout), 6 * 65_536 * 5);
        let unknown = ErasureLayout {
            code: "x".into(),
            ..layout
        };
        assert_eq!(stored_bytes(&unknown), 0);
    }
}
