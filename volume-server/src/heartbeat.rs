//! Heartbeats: every pulse (and at once when a volume is created or fills
//! up), report this server's volumes, free space and background jobs to
//! the directory.

use std::sync::Arc;
use std::time::Duration;

use hayloft_proto::background::{Failed, Registry, Step, Worker};
use hayloft_proto::{HeartbeatRequest, ServerLocation};
use hayloft_storage::{Store, Tier};

use crate::replicate::Replication;
use crate::status::all_statuses;
use crate::tier::Tiering;

fn request(store: &Store, tiering: &Tiering, server: &ServerLocation) -> HeartbeatRequest {
    HeartbeatRequest {
        server: Some(server.clone()),
        volumes: all_statuses(&store.handles(), tiering),
        free_hot_bytes: crate::space::headroom(store, Tier::Hot),
        free_warm_bytes: crate::space::headroom(store, Tier::Warm),
        keyring_problem: String::new(),
        // Filled in by the worker (it holds the registry).
        workers: Vec::new(),
        erasure_shards: erasure_shards(store),
        erasure_reported: true,
        // Filled in by the worker.
        region: String::new(),
        region_lags: Vec::new(),
    }
}

/// The shards of every erasure-coded volume held here: those served, and
/// those found damaged when the volume was opened (for the directory's
/// rebuilds and orphan removal).
fn erasure_shards(store: &Store) -> Vec<hayloft_proto::ErasureShards> {
    store
        .erasure_volumes()
        .iter()
        .map(|volume| {
            let held = volume.held();
            hayloft_proto::ErasureShards {
                volume_id: volume.id().0,
                held: held.iter().map(|shard| u32::from(*shard)).collect(),
                // A damaged shard rebuilt here since is held.
                damaged: volume
                    .damaged()
                    .iter()
                    .filter(|(shard, _)| !held.contains(shard))
                    .map(|(shard, _)| u32::from(*shard))
                    .collect(),
                deleted_bytes: volume.stats().garbage_bytes,
            }
        })
        .collect()
}

/// What the heartbeat task reports and to whom.
pub(crate) struct Heartbeat {
    pub(crate) store: Arc<Store>,
    pub(crate) tiering: Arc<Tiering>,
    pub(crate) replication: Arc<Replication>,
    /// The directory's gRPC address.
    pub(crate) directory: String,
    /// This server, as advertised.
    pub(crate) server: ServerLocation,
    pub(crate) pulse: Duration,
    /// Wakes the task for an early heartbeat.
    pub(crate) now: Arc<tokio::sync::Notify>,
    /// Told which collections are signed.
    pub(crate) access: Arc<crate::access::OriginAccess>,
    /// What it presents to the directory.
    pub(crate) credential: hayloft_proto::Credential,
    /// The token gate's deny list, from the directory's answers.
    pub(crate) revoked: Arc<hayloft_access::grpc::Revoked>,
    /// Where the revoked ids are kept, so that a restarted server refuses
    /// them before its first heartbeat is answered.
    pub(crate) revoked_file: Option<std::path::PathBuf>,
    /// This server's region (a directory of another refuses it).
    pub(crate) region: String,
    /// How far the copies here are behind other regions.
    pub(crate) lags: Arc<crate::shipping::Lags>,
}

/// Sends heartbeats, as a background worker: one a step, then waits a
/// pulse (or less: see [`Worker::interval`]), or until woken for an early
/// one. Failures are logged and retried at the next pulse: a directory that
/// is down must not stop the server from serving reads and writes to ids
/// already handed out.
pub(crate) struct HeartbeatWorker {
    heartbeat: Heartbeat,
    /// The directory group, or why its address is wrong.
    directories: Result<hayloft_proto::Directories, tonic::Status>,
    /// The last heartbeat failed (and was logged).
    warned: bool,
    /// The server's background jobs, reported with every heartbeat.
    workers: Registry,
}

impl HeartbeatWorker {
    /// Heartbeats as `heartbeat` says, reporting `workers`.
    pub(crate) fn new(heartbeat: Heartbeat, workers: Registry) -> Self {
        // Follows the group's leader; a call gives up after a pulse and is
        // sent again at the next. A node that does not answer within a couple of
        // seconds (paused, cut off) is left for the next well before the
        // leader's `dead_after`.
        let pulse = heartbeat.pulse;
        let directories = hayloft_proto::Directories::new(&heartbeat.directory).and_then(|d| {
            d.with_credential(heartbeat.credential.clone())?
                .with_patience(pulse.min(Duration::from_secs(5)))
                .with_call_timeout(pulse.clamp(Duration::from_secs(2), Duration::from_secs(5)))
        });
        HeartbeatWorker {
            heartbeat,
            directories,
            warned: false,
            workers,
        }
    }
}

impl Worker for HeartbeatWorker {
    fn name(&self) -> String {
        "heartbeat".into()
    }

    fn progress(&self) -> String {
        format!("every {:?}", self.heartbeat.pulse)
    }

    fn starts_busy(&self) -> bool {
        true
    }

    /// Unheard (the directory is starting, or down): try again within a
    /// second rather than a whole pulse, so a restarted directory learns
    /// of this server, and the copies it holds, at once.
    fn interval(&self) -> Option<Duration> {
        Some(if self.warned {
            self.heartbeat.pulse.min(Duration::from_secs(1))
        } else {
            self.heartbeat.pulse
        })
    }

    fn wait_for_work(&mut self) -> impl std::future::Future<Output = ()> + Send {
        let wait = self.interval().unwrap_or(self.heartbeat.pulse);
        let now = Arc::clone(&self.heartbeat.now);
        async move {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = now.notified() => {}
            }
        }
    }

    async fn work(&mut self) -> Result<Step, Failed> {
        let Heartbeat {
            store,
            tiering,
            replication,
            directory,
            server,
            pulse,
            access,
            revoked,
            revoked_file,
            region,
            lags,
            ..
        } = &mut self.heartbeat;
        let beat = {
            let store = Arc::clone(store);
            let server = server.clone();
            let tiering = Arc::clone(tiering);
            tokio::task::spawn_blocking(move || {
                let beat = request(&store, &tiering, &server);
                crate::metrics::update_store_gauges(&beat);
                crate::metrics::update_disk_gauges(&store);
                beat
            })
            .await
        };
        let Ok(mut beat) = beat else {
            return Ok(Step::Idle);
        };
        beat.keyring_problem = access.keyring_problem().unwrap_or_default();
        beat.region.clone_from(region);
        beat.region_lags = lags.by_region();
        beat.workers = self.workers.statuses();
        // This heartbeat is the step its own entry shows running; the
        // directory sees it only if it arrives, so report it as it will be
        // then: done, waiting for the next pulse.
        let next_run_at = hayloft_proto::unix_now() + pulse.as_secs();
        for own in beat.workers.iter_mut().filter(|w| w.name == "heartbeat") {
            own.state = hayloft_proto::background::State::Idle.as_str().to_owned();
            own.consecutive_errors = 0;
            own.next_run_at = next_run_at;
        }
        // Copies that missed a forward: the directory marks them stale.
        let failures = replication.pending_failures();
        for status in &mut beat.volumes {
            if let Some(failed) = failures.get(&status.volume_id) {
                status.failed_replicas = failed.iter().cloned().collect();
            }
        }
        let sent = match &self.directories {
            Ok(directories) => directories
                .call(|mut c| {
                    let beat = beat.clone();
                    async move { c.heartbeat(beat).await }
                })
                .await
                .map_err(|e| e.message().to_owned()),
            Err(e) => Err(e.message().to_owned()),
        };
        match sent {
            Ok(reply) => {
                if self.warned {
                    tracing::info!(%directory, "directory reachable again");
                }
                self.warned = false;
                let named: Vec<u32> = reply.volumes.iter().map(|v| v.volume_id).collect();
                replication.heartbeat_answered(&failures, reply.volumes);
                // A decoded copy staged here whose commit named this server.
                crate::erasure::decode::activate_committed(store, named).await;
                // Where the shards of each erasure-coded volume held here
                // are now (after a rebuild moved one, or a holder's
                // address changed); kept with the volume.
                for layout in reply.erasure {
                    let id = hayloft_storage::VolumeId(layout.volume_id);
                    if let Ok(volume) = store.erasure(id) {
                        let holders = layout.holders.into_iter().map(|l| l.grpc_addr).collect();
                        if let Err(error) = volume.set_holders(holders) {
                            tracing::warn!(volume = %id, %error, "cannot record the shard holders");
                        }
                    }
                }
                access.set_signed(reply.signed_collections);
                if revoked.set(reply.revoked_tokens)
                    && let Some(path) = &revoked_file
                {
                    save_revoked(path, &revoked.ids());
                }
                if reply.pulse_seconds > 0 {
                    *pulse = (*pulse).min(Duration::from_secs(u64::from(reply.pulse_seconds)));
                }
                Ok(Step::Idle)
            }
            Err(error) => {
                if !self.warned {
                    tracing::warn!(%directory, %error, "heartbeat failed; will retry");
                }
                self.warned = true;
                Err(Failed::new(error))
            }
        }
    }
}

/// Keeps the revoked token ids in `path` (JSON list).
fn save_revoked(path: &std::path::Path, ids: &[String]) {
    // A list of strings always serialises.
    let json = serde_json::to_vec(ids).unwrap_or_default();
    if let Err(e) = hayloft_storage::write_atomically(path, &json) {
        tracing::warn!(path = %path.display(), error = %e, "cannot keep the revoked token ids");
    }
}

/// The revoked token ids kept in `path` (none if it is missing or unreadable).
pub(crate) fn load_revoked(path: &std::path::Path) -> Vec<String> {
    std::fs::read(path)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .unwrap_or_default()
}
