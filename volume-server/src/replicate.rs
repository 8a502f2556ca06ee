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

/// What this server knows of replication: who it is, the copies of its
/// volumes (from the directory), and forwards that failed.
///
/// Locks: `known` is read on every write and replaced on every heartbeat
/// answer; `failures` and `peers` are touched only on failures and first
/// connections. None is held across an `.await`.
pub struct Replication {
    server_id: String,
    timeout: Duration,
    peers: Mutex<HashMap<String, Channel>>,
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
            },
        );
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
        let channel = {
            let mut peers = self.peers.lock();
            match peers.get(&location.grpc_addr) {
                Some(channel) => channel.clone(),
                None => {
                    let channel = self
                        .credential
                        .endpoint(&location.grpc_addr)
                        .map_err(|e| {
                            Status::invalid_argument(format!(
                                "copy on {}: {}",
                                location.server_id,
                                e.message()
                            ))
                        })?
                        .connect_timeout(self.timeout)
                        .tcp_nodelay(true)
                        .http2_keep_alive_interval(self.timeout / 2)
                        .keep_alive_timeout(self.timeout)
                        .connect_lazy();
                    peers.insert(location.grpc_addr.clone(), channel.clone());
                    channel
                }
            }
        };
        Ok(VolumeClient::new(self.credential.channel(channel))
            .max_decoding_message_size(hayloft_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(hayloft_proto::MAX_MESSAGE_BYTES))
    }

    /// Opens a forwarded `Write` to each of `targets`.
    pub fn forward_write(
        &self,
        header: &WriteHeader,
        targets: &[ServerLocation],
        request_id: &str,
    ) -> Forward {
        let header = WriteHeader {
            replicas: Vec::new(),
            forwarded: true,
            ..header.clone()
        };
        let copies = targets
            .iter()
            .map(|target| {
                let (tx, rx) = mpsc::channel(FORWARD_QUEUE);
                let first = WriteRequest {
                    part: Some(Part::Header(header.clone())),
                };
                // Room for FORWARD_QUEUE messages: the header always fits.
                let queued = tx.try_send(first).is_ok();
                let client = self.client(target);
                let request = hayloft_proto::with_request_id(ReceiverStream::new(rx), request_id);
                let reply = tokio::spawn(async move {
                    if !queued {
                        return Err(Status::internal("could not queue the header"));
                    }
                    Ok(client?.write(request).await?.into_inner())
                });
                Copy {
                    server_id: target.server_id.clone(),
                    tx: Some(tx),
                    reply: Some(reply),
                    failed: None,
                }
            })
            .collect();
        Forward {
            copies,
            timeout: self.timeout,
        }
    }

    /// The open `Replicate` stream to `target`, opened if there is none.
    fn link(&self, target: &ServerLocation) -> Result<Arc<Link>, Status> {
        let mut links = self.links.lock();
        if let Some(link) = links.get(&target.grpc_addr)
            && !link.closed.load(Ordering::SeqCst)
        {
            return Ok(Arc::clone(link));
        }
        let mut client = self.client(target)?;
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let link = Arc::new(Link {
            tx,
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            task: Mutex::new(None),
        });
        let reader = Arc::clone(&link);
        let task = tokio::spawn(async move {
            let ended = async {
                let mut answers = client
                    .replicate(ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                while let Some(answer) = answers.message().await? {
                    let waiter = reader.pending.lock().remove(&answer.seq);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(if answer.code == 0 {
                            Ok(())
                        } else {
                            Err(Status::new(Code::from(answer.code), answer.message))
                        });
                    }
                }
                Err::<(), Status>(Status::unavailable("the copy ended the stream"))
            }
            .await;
            if let Err(status) = ended {
                reader.close(&status);
            }
        });
        *link.task.lock() = Some(task);
        links.insert(target.grpc_addr.clone(), Arc::clone(&link));
        Ok(link)
    }

    /// Forwards a whole small blob to each of `targets` over their links,
    /// concurrently; returns the copies that did not make it durable within
    /// the timeout.
    pub async fn forward_small(
        &self,
        header: &WriteHeader,
        data: &Bytes,
        targets: &[ServerLocation],
        request_id: &str,
    ) -> Vec<ForwardFailure> {
        let header = WriteHeader {
            replicas: Vec::new(),
            forwarded: true,
            ..header.clone()
        };
        let sends = targets.iter().map(|target| {
            let header = header.clone();
            async move {
                let result = self
                    .send_linked(target, header, data.clone(), request_id)
                    .await;
                result.err().map(|status| ForwardFailure {
                    server_id: target.server_id.clone(),
                    reason: format!("{:?}: {}", status.code(), status.message()),
                })
            }
        });
        futures::future::join_all(sends)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    async fn send_linked(
        &self,
        target: &ServerLocation,
        header: WriteHeader,
        data: Bytes,
        request_id: &str,
    ) -> Result<(), Status> {
        let link = self.link(target)?;
        let seq = link.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        link.pending.lock().insert(seq, tx);
        // `close` sets the flag before it fails what is pending: either it
        // sees this entry, or this sees the flag.
        if link.closed.load(Ordering::SeqCst) {
            link.pending.lock().remove(&seq);
            return Err(Status::unavailable("the stream to the copy closed"));
        }
        let message = ReplicateRequest {
            seq,
            header: Some(header),
            data,
            request_id: request_id.to_owned(),
        };
        let timeout = self.timeout;
        let sent = tokio::time::timeout(timeout, async {
            link.tx
                .send(message)
                .await
                .map_err(|_| Status::unavailable("the stream to the copy closed"))?;
            rx.await
                .map_err(|_| Status::unavailable("the stream to the copy closed"))?
        })
        .await;
        match sent {
            Ok(result) => result,
            Err(_) => {
                // A copy that does not answer in time is reported stale;
                // the link is reset so that what it still holds is dropped.
                let status = Status::deadline_exceeded(format!("no answer within {timeout:?}"));
                link.close(&status);
                Err(status)
            }
        }
    }

    /// Forwards a delete to the other copies of its volume; returns the
    /// copies that deleted it and the ones that could not be reached.
    /// `verified`: this server checked the cookie against its own copy.
    pub async fn forward_delete(
        &self,
        blob_id: &str,
        volume: u32,
        verified: bool,
        request_id: &str,
    ) -> (usize, Vec<ForwardFailure>) {
        let targets = self.others_of(volume);
        let calls = targets.iter().map(|target| {
            let client = self.client(target);
            let request = hayloft_proto::with_request_id(
                DeleteRequest {
                    blob_id: blob_id.to_owned(),
                    forwarded: true,
                    verified,
                },
                request_id,
            );
            let timeout = self.timeout;
            async move {
                let call = async { client?.delete(request).await };
                match tokio::time::timeout(timeout, call).await {
                    Ok(Ok(_)) => Ok(true),
                    Ok(Err(status)) if status.code() == Code::NotFound => Ok(false),
                    Ok(Err(status)) => Err(ForwardFailure {
                        server_id: target.server_id.clone(),
                        reason: format!("{:?}: {}", status.code(), status.message()),
                    }),
                    Err(_) => Err(ForwardFailure {
                        server_id: target.server_id.clone(),
                        reason: format!("no answer within {timeout:?}"),
                    }),
                }
            }
        });
        let mut deleted = 0;
        let mut failures = Vec::new();
        for result in futures::future::join_all(calls).await {
            match result {
                Ok(true) => deleted += 1,
                Ok(false) => {}
                Err(failure) => failures.push(failure),
            }
        }
        (deleted, failures)
    }
}

/// A `Replicate` stream to one copy: small forwarded writes in flight on
/// it, by sequence number.
struct Link {
    tx: mpsc::Sender<ReplicateRequest>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<(), Status>>>>,
    next: AtomicU64,
    closed: AtomicBool,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Link {
    /// Fails every write in flight and resets the stream; the next forward
    /// opens a new one.
    fn close(&self, status: &Status) {
        self.closed.store(true, Ordering::SeqCst);
        let pending: Vec<_> = self.pending.lock().drain().collect();
        for (_, waiter) in pending {
            let _ = waiter.send(Err(Status::new(status.code(), status.message().to_owned())));
        }
        if let Some(task) = self.task.lock().take() {
            task.abort();
        }
    }
}

/// One forwarded copy of a write in flight.
struct Copy {
    server_id: String,
    tx: Option<mpsc::Sender<WriteRequest>>,
    reply: Option<JoinHandle<Result<WriteResponse, Status>>>,
    failed: Option<String>,
}

/// The forwarded copies of one write. Dropped before [`Forward::finish`],
/// it cancels them: their streams are reset and they store nothing.
pub struct Forward {
    copies: Vec<Copy>,
    timeout: Duration,
}

impl Forward {
    /// True if there is nothing to forward to (replication 1).
    pub fn is_empty(&self) -> bool {
        self.copies.is_empty()
    }

    /// Hands `chunk` to every copy still going, waiting at most the timeout
    /// for a copy's queue to have room.
    pub async fn send(&mut self, chunk: &Bytes) {
        let timeout = self.timeout;
        let sends = self
            .copies
            .iter_mut()
            .filter(|c| c.failed.is_none())
            .map(|copy| {
                let message = WriteRequest {
                    part: Some(Part::Chunk(chunk.clone())),
                };
                async move {
                    let Some(tx) = &copy.tx else { return };
                    match tokio::time::timeout(timeout, tx.send(message)).await {
                        Ok(Ok(())) => {}
                        // The call ended early: its reply says why.
                        Ok(Err(_)) => copy.tx = None,
                        Err(_) => copy.failed = Some(format!("took no data for {timeout:?}")),
                    }
                }
            });
        futures::future::join_all(sends).await;
    }

    /// Ends the streams and waits until every copy has answered (at most the
    /// timeout each); returns the copies that failed.
    pub async fn finish(mut self) -> Vec<ForwardFailure> {
        let timeout = self.timeout;
        for copy in &mut self.copies {
            copy.tx = None;
        }
        let waits = self.copies.iter_mut().map(|copy| async move {
            if let Some(reason) = copy.failed.take() {
                return Some(reason);
            }
            let reply = copy.reply.as_mut()?;
            let outcome = tokio::time::timeout(timeout, reply).await;
            copy.reply = None;
            match outcome {
                Ok(Ok(Ok(_))) => None,
                Ok(Ok(Err(status))) => Some(format!("{:?}: {}", status.code(), status.message())),
                Ok(Err(join)) => Some(format!("forward task failed: {join}")),
                Err(_) => Some(format!("no answer within {timeout:?}")),
            }
        });
        let reasons = futures::future::join_all(waits).await;
        self.copies
            .iter()
            .zip(reasons)
            .filter_map(|(copy, reason)| {
                reason.map(|reason| ForwardFailure {
                    server_id: copy.server_id.clone(),
                    reason,
                })
            })
            .collect()
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        for copy in &mut self.copies {
            if let Some(reply) = copy.reply.take() {
                reply.abort();
            }
        }
    }
}
