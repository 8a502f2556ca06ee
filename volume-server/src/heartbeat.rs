//! Heartbeats: every pulse (and at once when a volume is created or fills
//! up), report this server's volumes and free space to the directory.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

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
    }
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
}

/// Sends heartbeats until `stop` completes. Failures are logged and retried
/// at the next pulse: a directory that is down must not stop the server
/// from serving reads and writes to ids already handed out.
pub(crate) async fn run(heartbeat: Heartbeat, stop: impl Future<Output = ()>) {
    let Heartbeat {
        store,
        tiering,
        replication,
        directory,
        server,
        mut pulse,
        now,
        access,
        credential,
        revoked,
        revoked_file,
    } = heartbeat;
    // Follows the group's leader; a call gives up after a pulse and is
    // sent again at the next. A node that does not answer within a couple of
    // seconds (paused, cut off) is left for the next well before the
    // leader's `dead_after`.
    let directories = hayloft_proto::Directories::new(&directory).and_then(|d| {
        d.with_credential(credential)?
            .with_patience(pulse.min(Duration::from_secs(5)))
            .with_call_timeout(pulse.clamp(Duration::from_secs(2), Duration::from_secs(5)))
    });
    let mut warned = false;
    tokio::pin!(stop);
    loop {
        let beat = {
            let store = Arc::clone(&store);
            let server = server.clone();
            let tiering = Arc::clone(&tiering);
            tokio::task::spawn_blocking(move || {
                let beat = request(&store, &tiering, &server);
                crate::metrics::update_store_gauges(&beat);
                crate::metrics::update_disk_gauges(&store);
                beat
            })
            .await
        };
        if let Ok(mut beat) = beat {
            beat.keyring_problem = access.keyring_problem().unwrap_or_default();
            // Copies that missed a forward: the directory marks them stale.
            let failures = replication.pending_failures();
            for status in &mut beat.volumes {
                if let Some(failed) = failures.get(&status.volume_id) {
                    status.failed_replicas = failed.iter().cloned().collect();
                }
            }
            let sent = match &directories {
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
                    if warned {
                        tracing::info!(%directory, "directory reachable again");
                    }
                    warned = false;
                    replication.heartbeat_answered(&failures, reply.volumes);
                    access.set_signed(reply.signed_collections);
                    if revoked.set(reply.revoked_tokens)
                        && let Some(path) = &revoked_file
                    {
                        save_revoked(path, &revoked.ids());
                    }
                    if reply.pulse_seconds > 0 {
                        pulse = pulse.min(Duration::from_secs(u64::from(reply.pulse_seconds)));
                    }
                }
                Err(error) => {
                    if !warned {
                        tracing::warn!(%directory, %error, "heartbeat failed; will retry");
                    }
                    warned = true;
                }
            }
        }
        // Unheard (the directory is starting, or down): try again within a
        // second rather than a whole pulse, so a restarted directory learns
        // of this server, and the copies it holds, at once.
        let wait = if warned {
            pulse.min(Duration::from_secs(1))
        } else {
            pulse
        };
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(wait) => {}
            _ = now.notified() => {}
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
