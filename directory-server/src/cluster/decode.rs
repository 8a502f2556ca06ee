//! Erasure-coded volumes decoded back to replicated copies: what a decode
//! starts from (checked and placed under the lock) and its commit.

use hayloft_proto::ErasureLayout;

use super::*;

/// What a decode of a volume starts from, as the leader's map has it.
#[derive(Debug, Clone)]
pub struct DecodeSource {
    /// The volume.
    pub volume_id: VolumeId,
    /// Its layout as recorded (the commit checks it is still the one).
    pub layout: ErasureLayout,
    /// The holder of each shard, shard by shard, with whether its server
    /// is alive.
    pub holders: Vec<(ServerLocation, bool)>,
    /// The servers that get a copy (the volume's replication factor of
    /// them, placed as any volume's copies).
    pub targets: Vec<ServerLocation>,
    /// What is weaker than asked in the placement.
    pub warnings: Vec<String>,
}

impl Cluster {
    /// Checks that `volume_id` can be decoded now (erasure-coded, not
    /// being repaired) and places its copies: live servers with room for
    /// the data file on the warm tier, spread over zones then racks.
    pub fn decode_source(&self, volume_id: VolumeId) -> Result<DecodeSource> {
        self.decode_source_with(volume_id, None)
    }

    /// Checks that `volume_id` can be re-encoded now: as for a decode, and
    /// every holder alive (each takes the new generation); one target, to
    /// rebuild and compact the data file on (a holder with room first:
    /// its own shards are read locally).
    pub fn reencode_source(&self, volume_id: VolumeId) -> Result<DecodeSource> {
        let source = self
            .decode_source_with(volume_id, Some(1))
            .map_err(|e| match e {
                Error::NotDecodable { volume, why } => Error::NotReencodable { volume, why },
                e => e,
            })?;
        if let Some((down, _)) = source.holders.iter().find(|(_, alive)| !alive) {
            return Err(Error::NotReencodable {
                volume: volume_id,
                why: format!(
                    "holder {} is down: every holder takes the new generation (its shard is rebuilt first)",
                    down.server_id
                ),
            });
        }
        Ok(source)
    }

    fn decode_source_with(
        &self,
        volume_id: VolumeId,
        copies: Option<usize>,
    ) -> Result<DecodeSource> {
        let inner = self.inner.lock();
        let row = inner
            .state
            .volumes
            .get(&volume_id)
            .ok_or(Error::VolumeNotFound(volume_id))?;
        let refuse = |why: String| {
            Err(Error::NotDecodable {
                volume: volume_id,
                why,
            })
        };
        let Some(layout) = row.erasure.clone() else {
            return refuse("it is not erasure-coded".into());
        };
        // An open decode job (a leader's that died, rolled back) is this
        // decode's own; any other job holds the volume.
        if inner.state.repair_jobs.get(&volume_id).is_some_and(|job| {
            job.kind != crate::erasure::jobs::DECODE_KIND
                && job.kind != crate::erasure::jobs::TO_COLD_KIND
        }) {
            return refuse("a repair of it is under way".into());
        }
        // A copy the encode left must hand its deletes to the holders and
        // go first: once decoded, it would be an extra copy of a replicated
        // volume, deleted without handing anything over.
        if !row.replicas.is_empty() || inner.extras.iter().any(|(v, _)| *v == volume_id) {
            return refuse(
                "a copy from before its encode is still being removed; try again once it is gone"
                    .into(),
            );
        }
        let holders: Vec<(ServerLocation, bool)> = layout
            .holders
            .iter()
            .map(|id| {
                let server = inner.state.servers.get(id);
                let location =
                    server
                        .and_then(|s| s.location.clone())
                        .unwrap_or_else(|| ServerLocation {
                            server_id: id.clone(),
                            ..ServerLocation::default()
                        });
                (location, server.is_some_and(|s| self.alive(s)))
            })
            .collect();
        let copies = copies.unwrap_or(row.replication.max(1) as usize);
        let mut candidates: Vec<Candidate> = self
            .candidates(&inner, Tier::Warm)
            .into_iter()
            .filter(|c| c.free_bytes >= layout.data_len)
            .collect();
        if copies == 1
            && candidates
                .iter()
                .any(|c| layout.holders.contains(&c.server_id))
        {
            // A re-encode's target: a holder reads its own shards locally.
            candidates.retain(|c| layout.holders.contains(&c.server_id));
        }
        let chosen = match placement::place(&candidates, &[], copies, u64::from(volume_id.0)) {
            Ok(chosen) => chosen,
            Err(error) => return refuse(error.to_string()),
        };
        let placed: Vec<Candidate> = chosen
            .iter()
            .filter_map(|id| candidates.iter().find(|c| &c.server_id == id).cloned())
            .collect();
        let (zones, _) = placement::spread(&placed);
        let (live_zones, _) = placement::spread(&candidates);
        let mut warnings = Vec::new();
        if zones < copies {
            warnings.push(format!(
                "the {copies} copies share {zones} zone(s): {live_zones} zone(s) have live servers with room"
            ));
        }
        let targets = chosen
            .iter()
            .map(|id| {
                inner
                    .state
                    .servers
                    .get(id)
                    .and_then(|s| s.location.clone())
                    .ok_or_else(|| {
                        Error::UnexpectedAnswer(format!("placed on unknown server {id}"))
                    })
            })
            .collect::<Result<_>>()?;
        Ok(DecodeSource {
            volume_id,
            layout,
            holders,
            targets,
            warnings,
        })
    }

    /// Commits the re-encode of `volume_id`: `old` (the layout read by the
    /// re-encode) becomes `new` (its next generation, staged on every
    /// holder). Refused if the row holds another layout than `old` now.
    pub async fn erasure_reencoded(
        &self,
        volume_id: VolumeId,
        old: &ErasureLayout,
        new: &ErasureLayout,
    ) -> Result<()> {
        match self
            .propose(Command::ErasureReencoded {
                volume_id: volume_id.0,
                old: old.encode_to_vec(),
                new: new.encode_to_vec(),
            })
            .await?
        {
            Applied::Refused(reason) => Err(Error::Refused(reason)),
            _ => Ok(()),
        }
    }

    /// Commits the move of `volume_id` to the cold tier: `layout` (the one
    /// read) leaves its row, `replicas` (cold copies of one verified
    /// object, staged on each) become its replica set, and it is cold.
    /// Refused if the row holds another layout now.
    pub async fn erasure_to_cold(
        &self,
        volume_id: VolumeId,
        layout: &ErasureLayout,
        replicas: Vec<String>,
    ) -> Result<()> {
        match self
            .propose(Command::ErasureToCold {
                volume_id: volume_id.0,
                layout: layout.encode_to_vec(),
                replicas,
            })
            .await?
        {
            Applied::Refused(reason) => Err(Error::Refused(reason)),
            _ => Ok(()),
        }
    }

    /// Commits the decode of `volume_id`: `layout` (the one decoded) leaves
    /// its row and `replicas` (copies written, fsynced and verified) become
    /// its replica set. Refused if the row holds another layout now.
    pub async fn erasure_decoded(
        &self,
        volume_id: VolumeId,
        layout: &ErasureLayout,
        replicas: Vec<String>,
    ) -> Result<()> {
        match self
            .propose(Command::ErasureDecoded {
                volume_id: volume_id.0,
                layout: layout.encode_to_vec(),
                replicas,
            })
            .await?
        {
            Applied::Refused(reason) => Err(Error::Refused(reason)),
            _ => Ok(()),
        }
    }
}
