//! A writable volume sealed by hand (`SealVolume`): what the seal starts
//! from (checked under the lock), the state committed, and whether every
//! copy has reported it.

use super::*;

/// What a seal of a volume has to do, as the leader's map has it.
#[derive(Debug, Clone)]
pub enum SealStart {
    /// Sealed already (or erasure-coded), and every live copy reports it:
    /// nothing to do.
    AlreadySealed,
    /// The copies to seal.
    Seal {
        /// The volume is writable in the map: its state is committed
        /// sealed first, in its tier.
        commit: Option<Tier>,
        /// Copies on live servers (each told to seal its copy).
        live: Vec<ServerLocation>,
        /// Copies on servers that are down (server ids).
        down: Vec<String>,
    },
}

impl Cluster {
    /// Checks that `volume_id` can be sealed and says what is left to do.
    /// NOT_FOUND for an unknown volume; FAILED_PRECONDITION for one that is
    /// cold, moving or restoring, or has no copy on a live server.
    pub fn seal_start(&self, volume_id: VolumeId) -> Result<SealStart> {
        let inner = self.inner.lock();
        let row = inner
            .state
            .volumes
            .get(&volume_id)
            .ok_or(Error::VolumeNotFound(volume_id))?;
        if row.erasure.is_some() {
            // An erasure-coded volume is sealed for good.
            return Ok(SealStart::AlreadySealed);
        }
        let refuse = |why: &str| {
            Err(Error::NotSealable {
                volume: volume_id,
                why: why.into(),
            })
        };
        let state = VolumeState::try_from(row.state).unwrap_or_default();
        match state {
            VolumeState::Moving => return refuse("it is moving between tiers (a move seals it)"),
            VolumeState::Cold | VolumeState::Restoring => {
                return refuse("it is in the cold tier");
            }
            _ if row.tier == Tier::Cold as i32 => return refuse("it is in the cold tier"),
            _ => {}
        }
        let (mut live, mut down, mut unsealed) = (Vec::new(), Vec::new(), 0);
        for server_id in &row.replicas {
            let server = inner.state.servers.get(server_id);
            match server.and_then(|s| Some((s.location.clone()?, self.alive(s)))) {
                Some((location, true)) => {
                    let status = inner
                        .reported
                        .get(server_id)
                        .and_then(|v| v.get(&volume_id));
                    if status.is_some_and(|s| s.state == VolumeState::Moving as i32) {
                        return refuse("a copy of it is moving between tiers");
                    }
                    if !status.is_some_and(|s| s.sealed) {
                        unsealed += 1;
                    }
                    live.push(location);
                }
                _ => down.push(server_id.clone()),
            }
        }
        if live.is_empty() {
            return refuse("no copy of it is on a live server");
        }
        if state == VolumeState::Sealed && unsealed == 0 {
            return Ok(SealStart::AlreadySealed);
        }
        Ok(SealStart::Seal {
            commit: (state != VolumeState::Sealed)
                .then(|| Tier::try_from(row.tier).unwrap_or_default()),
            live,
            down,
        })
    }

    /// Records `volume_id` sealed (in `tier`, its tier now): no id is handed
    /// out in it from this entry on, and heartbeat answers tell its copies
    /// to refuse new writes. The entry is the one a copy's report of a
    /// seal commits (`VolumeReported`): nothing new in the log's format.
    pub async fn commit_sealed(&self, volume_id: VolumeId, tier: Tier) -> Result<()> {
        self.propose(Command::VolumeReported {
            volume_id: volume_id.0,
            state: VolumeState::Sealed,
            tier,
            stale: Vec::new(),
        })
        .await
        .map(drop)
    }

    /// The servers among `copies` whose last report does not have
    /// `volume_id` sealed (all of them while the map does not record it
    /// sealed).
    pub fn seal_unreported(&self, volume_id: VolumeId, copies: &[String]) -> Vec<String> {
        let inner = self.inner.lock();
        let sealed_in_map =
            inner.state.volumes.get(&volume_id).is_some_and(|row| {
                row.state == VolumeState::Sealed as i32 || row.erasure.is_some()
            });
        copies
            .iter()
            .filter(|server_id| {
                !sealed_in_map
                    || !inner
                        .reported
                        .get(server_id.as_str())
                        .and_then(|v| v.get(&volume_id))
                        .is_some_and(|s| s.sealed)
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;

    async fn cluster(dir: &std::path::Path) -> Arc<Cluster> {
        let db = Arc::new(Db::open(dir).unwrap());
        let cluster = Arc::new(Cluster::load(db, DirectoryConfig::default(), 1).unwrap());
        super::super::solo::Solo::start(&cluster);
        cluster.leader_check().unwrap();
        cluster
    }

    /// vs0 reports `volumes` (adopted, the first time, as sealed volumes).
    async fn report(cluster: &Cluster, volumes: Vec<VolumeStatus>) {
        cluster
            .heartbeat(HeartbeatRequest {
                server: Some(ServerLocation {
                    server_id: "vs0".into(),
                    grpc_addr: "127.0.0.1:1".into(),
                    ..ServerLocation::default()
                }),
                volumes,
                ..HeartbeatRequest::default()
            })
            .await
            .unwrap();
    }

    fn volume(id: u32, tier: Tier, state: VolumeState, sealed: bool) -> VolumeStatus {
        VolumeStatus {
            volume_id: id,
            tier: tier as i32,
            state: state as i32,
            sealed,
            file_bytes: 64,
            max_bytes: 1 << 30,
            ..VolumeStatus::default()
        }
    }

    #[tokio::test]
    async fn a_seal_is_refused_for_cold_or_moving_volumes_and_a_no_op_once_every_copy_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = cluster(dir.path()).await;
        let volumes = || {
            vec![
                // Sealed in the map (adopted), not on its copy.
                volume(7, Tier::Hot, VolumeState::Unspecified, false),
                volume(8, Tier::Cold, VolumeState::Cold, true),
                volume(9, Tier::Warm, VolumeState::Moving, true),
            ]
        };
        // Adopted, then reported as they are.
        report(&cluster, volumes()).await;
        report(&cluster, volumes()).await;

        match cluster.seal_start(VolumeId(7)).unwrap() {
            SealStart::Seal { commit, live, down } => {
                assert_eq!(commit, None, "sealed in the map already");
                assert_eq!(live.len(), 1);
                assert_eq!(live[0].server_id, "vs0");
                assert!(down.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            cluster.seal_unreported(VolumeId(7), &["vs0".into()]),
            ["vs0"]
        );
        for (id, why) in [(8, "cold tier"), (9, "moving")] {
            let refused = cluster.seal_start(VolumeId(id)).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
            assert!(refused.to_string().contains(why), "{refused}");
        }
        let unknown = cluster.seal_start(VolumeId(10)).unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown}");

        // Its copy reports it sealed: nothing left to do.
        report(
            &cluster,
            vec![volume(7, Tier::Hot, VolumeState::Unspecified, true)],
        )
        .await;
        assert!(
            cluster
                .seal_unreported(VolumeId(7), &["vs0".into()])
                .is_empty()
        );
        assert!(matches!(
            cluster.seal_start(VolumeId(7)).unwrap(),
            SealStart::AlreadySealed
        ));
    }
}
