//! Replicated writes and deletes: the primary copy forwards to the others.
//!
//! A client streams a blob to one copy of its volume (the primary for that
//! write), naming every copy in the header (from `Assign`). The primary opens
//! a `Write` stream to each other copy (header with `forwarded = true`) and
//! hands every chunk it receives to all of them while it writes its own copy:
//! the same `Bytes`, no copy of the data, at most [`FORWARD_QUEUE`] chunks
//! queued per copy, so memory stays bounded for blobs of any size. The upload
//! is acknowledged once its own copy and every forwarded one are durable.
//!
//! A copy that fails, or makes no progress for `replica_timeout`, fails the
//! write (UNAVAILABLE, the client retries with a fresh id elsewhere) and is
//! reported to the directory with the next heartbeat (sent at once), which
//! marks it stale: the volume takes no new writes, and reads avoid that copy.
//! Until the directory has the report, this server refuses new writes to the
//! volume itself.
//!
//! Deletes are applied locally and forwarded the same way to the copies the
//! directory names in its heartbeat answers; a copy that cannot be reached is
//! reported stale (it missed a tombstone).

mod forward;

pub use forward::Forward;
use forward::Link;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hayloft_proto::volume_client::VolumeClient;
use hayloft_proto::write_request::Part;
use hayloft_proto::{AuthChannel, Credential};
use hayloft_proto::{
    DeleteRequest, ReplicateRequest, ServerLocation, VolumeReplicas, WriteHeader, WriteRequest,
    WriteResponse,
};
use hayloft_storage::BlobId;
use parking_lot::{Mutex, RwLock};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Chunks queued per forwarded copy before the primary waits for it.
pub const FORWARD_QUEUE: usize = 4;

/// Blobs up to this size are forwarded whole, as one message on a stream
/// kept open to each copy's server (`Replicate`), instead of one `Write`
/// call per blob and copy: the per-call cost dominates small writes.
pub const LINKED_FORWARD_MAX: u64 = 64 << 10;

/// Messages queued on a link before the primary waits.
const LINK_QUEUE: usize = 256;

/// HTTP/2 stream window of a connection to another region's server: a
/// `FetchNeedles` part in flight (4 at once) keeps sending through a long
/// round trip.
pub const FAR_STREAM_WINDOW_BYTES: u32 = 16 << 20;

/// HTTP/2 connection window to another region's server: at least a few
/// times what a 1 Gbit/s link holds in flight at a 100 ms round trip
/// (12.5 MB). What the receiver may have to buffer, per far connection.
pub const FAR_CONNECTION_WINDOW_BYTES: u32 = 64 << 20;

/// What this server knows of replication: who it is, the copies of its
/// volumes (from the directory), and forwards that failed.
///
/// Locks: `known` is read on every write and replaced on every heartbeat
/// answer; `failures` and `peers` are touched only on failures and first
/// connections. None is held across an `.await`.
pub struct Replication {
    server_id: String,
    timeout: Duration,
    /// Connections to other volume servers, by address and whether they
    /// are in another region (see [`Replication::far_client`]).
    peers: Mutex<HashMap<(String, bool), Channel>>,
    /// Open `Replicate` streams, by copy address.
    links: Mutex<HashMap<String, Arc<Link>>>,
    known: RwLock<HashMap<u32, VolumeReplicas>>,
    failures: Mutex<HashMap<u32, BTreeSet<String>>>,
    heartbeat_now: Arc<tokio::sync::Notify>,
    /// What this server presents to the other copies.
    credential: Credential,
}

/// A copy that a forward did not reach.
#[derive(Debug, Clone)]
pub struct ForwardFailure {
    /// The copy's server.
    pub server_id: String,
    /// What happened.
    pub reason: String,
}

impl Replication {
    /// Replication for the server `server_id`; a forwarded copy that makes no
    /// progress for `timeout` fails the write.
    pub fn new(
        server_id: String,
        timeout: Duration,
        heartbeat_now: Arc<tokio::sync::Notify>,
        credential: Credential,
    ) -> Self {
        Replication {
            credential,
            server_id,
            timeout,
            peers: Mutex::new(HashMap::new()),
            links: Mutex::new(HashMap::new()),
            known: RwLock::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            heartbeat_now,
        }
    }

    /// This server's id.
    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    /// Every copy of `volume`, this one included: those the directory told
    /// us of, else (a volume this server has not heard of yet) those named
    /// in a write header. A header's list is not preferred: a client that
    /// named fewer copies would have a write land on some copies only.
    pub fn copies(&self, volume: u32, named: Vec<ServerLocation>) -> Vec<ServerLocation> {
        match self.known.read().get(&volume) {
            Some(known) if !known.locations.is_empty() => known.locations.clone(),
            _ => named,
        }
    }

    /// The copies of `volume` other than this one (see [`Replication::copies`]).
    pub fn others_of(&self, volume: u32) -> Vec<ServerLocation> {
        self.others(self.copies(volume, Vec::new()))
    }

    /// `copies` without this server, each once.
    pub fn others(&self, copies: Vec<ServerLocation>) -> Vec<ServerLocation> {
        let mut others: Vec<ServerLocation> = Vec::with_capacity(copies.len());
        for location in copies {
            if location.server_id != self.server_id
                && !others.iter().any(|o| o.server_id == location.server_id)
            {
                others.push(location);
            }
        }
        others
    }

    /// Refuses a client's write of `blob` unless this server is the copy
    /// that orders writes of its id ([`hayloft_proto::primary_index`]): two
    /// writes of one id sent to two copies could otherwise both be written,
    /// one on each.
    pub fn check_primary(&self, blob: BlobId, copies: &[ServerLocation]) -> Result<(), Status> {
        let Some(primary) = hayloft_proto::primary_index(blob.needle.0, copies) else {
            return Ok(());
        };
        let primary = &copies[primary];
        if primary.server_id == self.server_id {
            return Ok(());
        }
        Err(Status::failed_precondition(format!(
            "blob {blob}: writes of this id go to its volume's copy on server {} ({}), which orders them; send it there",
            primary.server_id, primary.grpc_addr
        )))
    }

    /// Refuses a new (not forwarded) write to a volume that lacks a healthy
    /// copy, whose copy missed a forward the directory has not heard of, or
    /// that a copy sealed (the directory says so).
    pub fn check_writable(&self, volume: u32) -> Result<(), Status> {
        if let Some(failed) = self.failures.lock().get(&volume) {
            return Err(Status::unavailable(format!(
                "volume {volume} is degraded: copies on {} missed a write; write elsewhere",
                failed.iter().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        let known = self.known.read();
        let Some(replicas) = known.get(&volume) else {
            return Ok(());
        };
        if replicas.degraded {
            return Err(Status::unavailable(format!(
                "volume {volume} is degraded (a copy is down, missing or stale); write elsewhere"
            )));
        }
        if replicas.sealed {
            return Err(Status::failed_precondition(format!(
                "volume {volume} is sealed (a copy is full or moving to another tier); write elsewhere"
            )));
        }
        Ok(())
    }

    /// Records copies that missed a forward, and wakes the heartbeat.
    pub fn record_failures(&self, volume: u32, failures: &[ForwardFailure]) {
        if failures.is_empty() {
            return;
        }
        let mut all = self.failures.lock();
        let set = all.entry(volume).or_default();
        for failure in failures {
            tracing::warn!(volume, replica = %failure.server_id, reason = %failure.reason,
                "forward to a copy failed; reporting it stale");
            set.insert(failure.server_id.clone());
            metrics::counter!("hayloft_volume_forward_failures_total").increment(1);
        }
        self.heartbeat_now.notify_one();
    }

    /// Failures to report with the next heartbeat.
    pub fn pending_failures(&self) -> HashMap<u32, BTreeSet<String>> {
        self.failures.lock().clone()
    }

    /// The directory answered a heartbeat that carried `reported`: it knows
    /// of those failures now (and says so in `volumes`, its replica sets).
    pub fn heartbeat_answered(
        &self,
        reported: &HashMap<u32, BTreeSet<String>>,
        volumes: Vec<VolumeReplicas>,
    ) {
        {
            let mut failures = self.failures.lock();
            for (volume, sent) in reported {
                if let Some(set) = failures.get_mut(volume) {
                    set.retain(|s| !sent.contains(s));
                    if set.is_empty() {
                        failures.remove(volume);
                    }
                }
            }
        }
        let mut known = self.known.write();
        let answered: HashMap<u32, VolumeReplicas> =
            volumes.into_iter().map(|v| (v.volume_id, v)).collect();
        // A volume the answer leaves out may be one created a moment ago and
        // not registered yet: its copies stay as `CreateVolume` named them.
        known.retain(|id, _| !answered.contains_key(id));
        known.extend(answered);
    }

    /// Records the copies of a volume just created here (from
    /// `CreateVolume`), until the directory's heartbeat answers name them.
    pub fn created(&self, volume: u32, locations: Vec<ServerLocation>) {
        if locations.is_empty() {
            return;
        }
        self.known.write().insert(
            volume,
            VolumeReplicas {
                volume_id: volume,
                locations,
                degraded: false,
                sealed: false,
                ..VolumeReplicas::default()
            },
        );
    }

    /// Refuses new writes to `volume` from now on, as the directory's
    /// next heartbeat answer will (a copy sealed by hand: `SealCopy`).
    pub fn seal(&self, volume: u32) {
        if let Some(replicas) = self.known.write().get_mut(&volume) {
            replicas.sealed = true;
        }
    }

    /// The volumes whose copy here follows other copies' logs (regions:
    /// ARCHITECTURE.md, "Shipping between regions"): each with the other
    /// regions it follows, or the copy in this region it follows.
    pub fn follows(&self) -> Vec<(u32, Vec<String>, Option<ServerLocation>)> {
        let mut follows: Vec<_> = self
            .known
            .read()
            .values()
            .filter(|v| !v.follow_regions.is_empty() || v.follow_server.is_some())
            .map(|v| {
                (
                    v.volume_id,
                    v.follow_regions.clone(),
                    v.follow_server
                        .clone()
                        .filter(|s| s.server_id != self.server_id),
                )
            })
            .collect();
        follows.sort_unstable_by_key(|(id, _, _)| *id);
        follows
    }

    /// Whether another region keeps `volume` too (its copies here follow
    /// a region's log, or the copy here that does).
    pub fn shipped_between_regions(&self, volume: u32) -> bool {
        self.known.read().values().any(|v| {
            v.volume_id == volume && (!v.follow_regions.is_empty() || v.follow_server.is_some())
        })
    }

    /// Forgets a volume deleted here.
    pub fn forget(&self, volume: u32) {
        self.known.write().remove(&volume);
        self.failures.lock().remove(&volume);
    }

    /// A client of another volume server (connections are kept).
    pub(crate) fn client(
        &self,
        location: &ServerLocation,
    ) -> Result<VolumeClient<AuthChannel>, Status> {
        self.client_of(location, false)
    }

    /// A client of a volume server in another region: its connection's
    /// HTTP/2 windows are [`FAR_STREAM_WINDOW_BYTES`] and
    /// [`FAR_CONNECTION_WINDOW_BYTES`], so that a link with a long round
    /// trip carries what it can (with the in-region 8 MiB a connection, a
    /// 100 ms round trip carried at most 80 MB/s).
    pub(crate) fn far_client(
        &self,
        location: &ServerLocation,
    ) -> Result<VolumeClient<AuthChannel>, Status> {
        self.client_of(location, true)
    }

    fn client_of(
        &self,
        location: &ServerLocation,
        far: bool,
    ) -> Result<VolumeClient<AuthChannel>, Status> {
        let key = (location.grpc_addr.clone(), far);
        let channel = {
            let mut peers = self.peers.lock();
            match peers.get(&key) {
                Some(channel) => channel.clone(),
                None => {
                    let mut endpoint =
                        self.credential.endpoint(&location.grpc_addr).map_err(|e| {
                            Status::invalid_argument(format!(
                                "copy on {}: {}",
                                location.server_id,
                                e.message()
                            ))
                        })?;
                    if far {
                        endpoint = endpoint
                            .initial_stream_window_size(FAR_STREAM_WINDOW_BYTES)
                            .initial_connection_window_size(FAR_CONNECTION_WINDOW_BYTES);
                    }
                    let channel = endpoint
                        .connect_timeout(self.timeout)
                        .tcp_nodelay(true)
                        .http2_keep_alive_interval(self.timeout / 2)
                        .keep_alive_timeout(self.timeout)
                        .connect_lazy();
                    peers.insert(key, channel.clone());
                    channel
                }
            }
        };
        Ok(VolumeClient::new(self.credential.channel(channel))
            .max_decoding_message_size(hayloft_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(hayloft_proto::MAX_MESSAGE_BYTES))
    }
}
