//! The `hayloft.v1.Volume` gRPC service over the store.
//!
//! Small whole-blob writes `pwrite` on their task and wait for their group
//! commit through a callback (one blocking-pool task runs each group commit);
//! other blocking storage calls (streamed appends, volume creation, writes a
//! volume holds back) run on tokio's blocking pool; reads of the mmap run
//! inline (they touch resident pages, and the body is sent as zero-copy
//! slices).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hayloft_proto::volume_server::Volume;
use hayloft_proto::write_request::Part;
use hayloft_proto::{
    BlobInfo, ColdIndexRequest, ColdIndexResponse, CompactProgress, CompactRequest,
    CreateVolumeRequest, CreateVolumeResponse, DeleteRequest, DeleteResponse, DeleteVolumeRequest,
    DeleteVolumeResponse, FetchNeedleRequest, ListMovesRequest, ListMovesResponse,
    ListNeedlesRequest, ListNeedlesResponse, ListVolumesRequest, ListVolumesResponse,
    MoveVolumeRequest, MoveVolumeResponse, NeedleDigestsRequest, NeedleDigestsResponse,
    NeedleEntry, RangeDigest, ReadRequest, ReadResponse, ReplicateRequest, ReplicateResponse,
    StatRequest, StatResponse, SyncProgress, SyncVolumeRequest, Tier as ProtoTier,
    WriteBatchRequest, WriteBatchResponse, WriteHeader, WriteRequest, WriteResponse,
};
use hayloft_storage::volume::now_unix_secs;
use hayloft_storage::{
    BlobId, Claim, Error, Handle, NeedleId, NeedleMeta, NeedleWrite, Queued, QueuedWrite, Store,
    Tier, VolumeId, Wake, WriteReceipt,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use hayloft_access::grpc::{Caller, Need, Note, Who};
use hayloft_access::token::Op;

use crate::antientropy::AntiEntropy;
use crate::disk_reads::{DiskReads, ReadError, Source};
use crate::error::{etag, grpc_status};
use crate::metrics;
use crate::replicate::{Forward, LINKED_FORWARD_MAX, Replication};
use crate::status::all_statuses;
use crate::tier::{ColdReadError, MoveError, Tiering};

/// Blobs up to this size are gathered in memory and written with one
/// `pwrite`; larger ones are streamed to the volume chunk by chunk.
const SMALL_BLOB: u64 = 1 << 20;

/// The volume service.
#[derive(Clone)]
pub struct VolumeService {
    store: Arc<Store>,
    max_upload_bytes: u64,
    compaction_rate: u64,
    /// Wakes the heartbeat task (after a volume is created or fills up).
    heartbeat_now: Arc<tokio::sync::Notify>,
    tiering: Arc<Tiering>,
    replication: Arc<Replication>,
    anti_entropy: Arc<AntiEntropy>,
    /// Blobs up to this size are checksummed on every read.
    verify_up_to: u64,
    /// Reads that wait for the disk (shared with the HTTP origin).
    disk: Arc<DiskReads>,
    /// Becomes true when the server shuts down: long-lived streams end.
    stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// Checks write grants (tokens are required).
    grants: Option<Arc<hayloft_access::SharedKeyring>>,
    /// Clock-skew allowance for grants.
    skew: std::time::Duration,
}

/// The gRPC status of a failed cold read: archived and unreachable are
/// UNAVAILABLE, with a `retry-after` (seconds) for archived ones.
fn cold_status(error: ColdReadError, blob: BlobId) -> Status {
    match error {
        ColdReadError::Storage(e) => grpc_status(&e, Some(blob)),
        ColdReadError::Archived(after) => {
            let mut status = Status::unavailable(format!(
                "blob {blob} is archived; a restore is under way, retry after {} s",
                after.as_secs()
            ));
            if let Ok(value) = after.as_secs().max(1).to_string().parse() {
                status.metadata_mut().insert("retry-after", value);
            }
            status
        }
        ColdReadError::Unavailable(reason) => {
            Status::unavailable(format!("cold storage unreachable: {reason}"))
        }
    }
}

fn move_status(error: MoveError) -> Status {
    match error {
        MoveError::Storage(e) => grpc_status(&e, None),
        MoveError::Invalid(reason) => Status::failed_precondition(reason),
        MoveError::Object(e) => Status::unavailable(e.to_string()),
        MoveError::Mismatch(reason) => Status::data_loss(reason),
    }
}

/// What each `Volume` method asks of a token (when tokens are required).
/// Writes are checked per blob (a grant, or `write:<collection>`), reads
/// and deletes per volume's collection; the copies' own calls need the
/// `cluster` scope; operators' calls `admin`. Methods not listed need
/// `cluster` (fail closed).
pub fn needs(path: &str) -> Need {
    let method = path.strip_prefix("/hayloft.v1.Volume/").unwrap_or("");
    match method {
        "Write" | "WriteBatch" => Need::Token,
        "Read" | "Stat" => Need::Scope(Op::Read),
        "Delete" => Need::Scope(Op::Delete),
        "CreateVolume" | "ListVolumes" | "Compact" | "MoveVolume" | "ListMoves"
        | "DeleteVolume" => Need::Scope(Op::Admin),
        _ => Need::Scope(Op::Cluster),
    }
}

/// The limits a [`VolumeService`] applies.
#[derive(Debug, Clone, Copy)]
pub struct ServiceLimits {
    /// Largest blob accepted.
    pub max_upload_bytes: u64,
    /// Default compaction copy rate (bytes a second, 0 = unlimited).
    pub compaction_rate: u64,
    /// Blobs up to this size are checksummed on every read.
    pub verify_up_to: u64,
}

impl VolumeService {
    /// A service over `store`, reading from disk through `disk`.
    pub fn new(
        store: Arc<Store>,
        limits: ServiceLimits,
        heartbeat_now: Arc<tokio::sync::Notify>,
        tiering: Arc<Tiering>,
        replication: Arc<Replication>,
        anti_entropy: Arc<AntiEntropy>,
        disk: Arc<DiskReads>,
    ) -> Self {
        VolumeService {
            disk,
            store,
            max_upload_bytes: limits.max_upload_bytes,
            compaction_rate: limits.compaction_rate,
            heartbeat_now,
            tiering,
            replication,
            anti_entropy,
            verify_up_to: limits.verify_up_to,
            stop: None,
            grants: None,
            skew: std::time::Duration::from_secs(60),
        }
    }

    /// Accepts write grants checked with `keyring` (when tokens are
    /// required: a write carries a grant, or a token with
    /// `write:<collection>`).
    pub fn with_grants(mut self, keyring: Option<Arc<hayloft_access::SharedKeyring>>) -> Self {
        self.grants = keyring;
        self
    }

    /// May the caller of a request do `op` on `blob`? (A volume not held
    /// here is left to the call, which answers NOT_FOUND.) Notes the blob
    /// for the audit log.
    fn require_on(
        &self,
        extensions: &tonic::Extensions,
        op: Op,
        blob: BlobId,
    ) -> Result<(), Status> {
        let note = Note::of(extensions);
        // Without tokens required, a limit to count or an audit line to
        // write, no look-up on the read path.
        if matches!(extensions.get::<Caller>(), Some(Caller::Anyone))
            && note.is_none()
            && !hayloft_access::grpc::Quota::counts(extensions, op)
        {
            return Ok(());
        }
        match self.store.handle(blob.volume()) {
            Ok(handle) => {
                if let Some(note) = note {
                    let collection = hayloft_access::collection_name(handle.collection());
                    note.blob(&blob.to_string(), collection, 0);
                }
                hayloft_access::grpc::require(extensions, op, handle.collection())
            }
            Err(_) => {
                if let Some(note) = note {
                    note.blob(&blob.to_string(), "", 0);
                }
                Ok(())
            }
        }
    }

    /// The collection of a blob's volume as people name it, if it is held
    /// here (for the audit log; empty otherwise).
    fn collection_of(&self, blob_id: &str) -> String {
        blob_id
            .parse::<BlobId>()
            .ok()
            .and_then(|blob| self.store.handle(blob.volume()).ok())
            .map(|handle| hayloft_access::collection_name(handle.collection()).to_owned())
            .unwrap_or_default()
    }

    /// May `caller` write `header`'s blob into a volume of `collection`?
    /// A forwarded write comes from another server (scope `cluster`); a
    /// client's carries the grant Assign gave it, or a token allowing
    /// `write:<collection>`.
    fn authorize_write(
        &self,
        who: &Who,
        header: &WriteHeader,
        collection: &str,
    ) -> Result<(), Status> {
        if header.forwarded {
            return Caller::require(who.caller.as_ref(), Op::Cluster, "");
        }
        if let (Some(keyring), false) = (&self.grants, header.grant.is_empty()) {
            let now = now_unix_secs();
            return hayloft_access::token::check_grant(
                &keyring.get(),
                &header.grant,
                &header.blob_id,
                now,
                self.skew,
            )
            .map_err(|e| {
                ::metrics::counter!("hayloft_grpc_denied_total", "reason" => "grant").increment(1);
                Status::permission_denied(format!(
                    "the write grant for blob {} is not valid: {e}",
                    header.blob_id
                ))
            });
        }
        Caller::require(who.caller.as_ref(), Op::Write, collection)
    }

    /// Ends long-lived streams (`Replicate`) once `stop` becomes true, so
    /// that a graceful shutdown does not wait for them.
    pub fn with_stop(mut self, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stop = Some(stop);
        self
    }

    /// Acknowledges a write only if every forwarded copy confirmed it; a
    /// copy that did not is reported stale and the write fails UNAVAILABLE
    /// (the client retries with a fresh id on another volume).
    async fn settle(
        &self,
        blob: BlobId,
        local: impl Future<Output = Result<hayloft_storage::WriteReceipt, Status>>,
        forward: Forward,
    ) -> Result<hayloft_storage::WriteReceipt, Status> {
        if forward.is_empty() {
            return local.await;
        }
        let started = Instant::now();
        let (receipt, failures) = tokio::join!(local, forward.finish());
        metrics::replication_wait(started.elapsed());
        self.settled(blob, receipt, &failures)
    }

    /// The outcome of a write from its own and its copies' outcomes.
    fn settled(
        &self,
        blob: BlobId,
        receipt: Result<hayloft_storage::WriteReceipt, Status>,
        failures: &[crate::replicate::ForwardFailure],
    ) -> Result<hayloft_storage::WriteReceipt, Status> {
        let receipt = receipt?;
        if failures.is_empty() {
            return Ok(receipt);
        }
        self.replication.record_failures(blob.volume().0, failures);
        Err(Status::unavailable(format!(
            "blob {blob} was not confirmed by every copy ({}); retry with a new id",
            failures
                .iter()
                .map(|f| format!("{}: {}", f.server_id, f.reason))
                .collect::<Vec<_>>()
                .join("; ")
        )))
    }

    /// Reads a needle: from the page cache, from disk on the bounded pool
    /// (RESOURCE_EXHAUSTED at its bound), or with one ranged GET for a
    /// cold volume.
    async fn read_needle(&self, blob: BlobId) -> Result<hayloft_storage::Needle, Status> {
        self.tiering.reads.record(blob.volume());
        let started = std::time::Instant::now();
        let handle = self
            .store
            .handle(blob.volume())
            .map_err(|e| grpc_status(&e, Some(blob)))?;
        let (needle, source) = match handle {
            hayloft_storage::Handle::Local(volume) => self.read_local(&volume, blob).await?,
            hayloft_storage::Handle::Cold(cold) => {
                match self
                    .tiering
                    .read_cold(&cold, blob.needle, blob.cookie)
                    .await
                {
                    Ok(needle) => (needle, Source::Cold),
                    // A restore may have committed meanwhile (the object is
                    // gone, the volume local again): read it here.
                    Err(ColdReadError::Unavailable(reason)) => {
                        let volume = self.store.volume(blob.volume()).map_err(|_| {
                            cold_status(ColdReadError::Unavailable(reason.clone()), blob)
                        })?;
                        self.read_local(&volume, blob)
                            .await
                            .map_err(|_| cold_status(ColdReadError::Unavailable(reason), blob))?
                    }
                    Err(e) => return Err(cold_status(e, blob)),
                }
            }
        };
        crate::disk_reads::observe_read(source, started);
        Ok(needle)
    }

    async fn read_local(
        &self,
        volume: &hayloft_storage::Volume,
        blob: BlobId,
    ) -> Result<(hayloft_storage::Needle, Source), Status> {
        self.disk
            .read(volume, blob.needle, blob.cookie, self.verify_up_to)
            .await
            .map_err(|e| match e {
                ReadError::Busy => {
                    let mut status = Status::resource_exhausted(
                        "too many reads from disk in flight; retry shortly or read another copy",
                    );
                    status
                        .metadata_mut()
                        .insert("retry-after", tonic::metadata::MetadataValue::from(1));
                    status
                }
                ReadError::Storage(e) => grpc_status(&e, Some(blob)),
            })
    }

    fn failed(&self, error: Error, blob: Option<BlobId>) -> Status {
        // Full, or sealed by a copy's record past the maximum (made durable
        // here, idempotently).
        if let Error::VolumeFull { volume, .. } | Error::Sealed(volume) = error {
            // Stop the directory handing out ids in it as soon as possible.
            let store = Arc::clone(&self.store);
            let notify = Arc::clone(&self.heartbeat_now);
            tokio::task::spawn_blocking(move || {
                if let Err(e) = store.seal(volume) {
                    tracing::warn!(%volume, error = %e, "could not seal full volume");
                }
                notify.notify_one();
            });
        }
        if let Error::Poisoned(_) | Error::LowSpace { .. } = error {
            // Reported sealed (or paused) from now on: the directory assigns
            // elsewhere.
            self.heartbeat_now.notify_one();
        }
        grpc_status(&error, blob)
    }

    async fn write_small(
        &self,
        place: Place,
        blob: BlobId,
        header: &WriteHeader,
        meta: NeedleMeta,
        stream: &mut Streaming<WriteRequest>,
        mut forward: Forward,
    ) -> Result<hayloft_storage::WriteReceipt, Status> {
        if forward.is_empty() {
            // One copy (or a copy's own write): a blob sent as one chunk is
            // written from the received buffer as it is.
            let data = gather(stream, header.size).await?;
            return write_whole(place, blob, data, meta)
                .await?
                .map_err(|e| self.failed(e, Some(blob)));
        }
        let mut data = Vec::with_capacity(header.size as usize);
        while let Some(chunk) = next_chunk(stream).await? {
            if data.len() as u64 + chunk.len() as u64 > header.size {
                return Err(too_long(header.size));
            }
            data.extend_from_slice(&chunk);
            forward.send(&chunk).await;
        }
        if data.len() as u64 != header.size {
            return Err(truncated(data.len() as u64, header.size));
        }
        // Tests: the primary's own write fails after the copies had it all.
        let fail = hayloft_storage::failpoint::active("primary-local-write");
        let local = async move {
            if fail {
                return Err(Status::internal("failpoint primary-local-write"));
            }
            write_whole(place, blob, data, meta)
                .await?
                .map_err(|e| self.failed(e, Some(blob)))
        };
        self.settle(blob, local, forward).await
    }

    async fn write_streamed(
        &self,
        place: Place,
        blob: BlobId,
        header: &WriteHeader,
        meta: NeedleMeta,
        stream: &mut Streaming<WriteRequest>,
        mut forward: Forward,
    ) -> Result<hayloft_storage::WriteReceipt, Status> {
        let size = header.size;
        let Place { volume, claim } = place;
        let writer = blocking(move || volume.begin_write_claimed(claim, blob.cookie, size, meta))
            .await?
            .map_err(|e| self.failed(e, Some(blob)))?;
        // One blocking task writes the chunks as this task hands them over,
        // so the next chunk is received and decoded while the last one is
        // written (a queue of a few chunks between them).
        let (chunks, mut to_write) = tokio::sync::mpsc::channel::<Bytes>(STREAM_QUEUE_CHUNKS);
        let writing = tokio::task::spawn_blocking(move || {
            let mut writer = writer;
            while let Some(chunk) = to_write.blocking_recv() {
                writer.write(&chunk)?;
            }
            Ok::<_, Error>(writer)
        });
        // The writer comes back once every queued chunk is written, or with
        // the write's error (which is then the answer). Dropped unfinished
        // (the stream was refused or cut off, or this future was), it
        // abandons the record: its bytes become garbage, or are cut off if
        // last.
        let written = async move {
            writing
                .await
                .map_err(task_failed)?
                .map_err(|e| self.failed(e, Some(blob)))
        };
        let mut received = 0u64;
        let refused = loop {
            let chunk = match next_chunk(stream).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break None,
                Err(status) => break Some(status),
            };
            received += chunk.len() as u64;
            if received > size {
                break Some(too_long(size));
            }
            // The copies get the chunk while this one writes it.
            let forwarded = chunk.clone();
            let (queued, ()) = tokio::join!(chunks.send(chunk), forward.send(&forwarded));
            if queued.is_err() {
                // The writer stopped on an error: it is the answer.
                break None;
            }
        };
        drop(chunks);
        let writer = written.await?;
        if let Some(status) = refused {
            return Err(status);
        }
        if writer.written() != size {
            return Err(truncated(writer.written(), size));
        }
        let local = async move {
            blocking(move || writer.finish())
                .await?
                .map_err(|e| self.failed(e, Some(blob)))
        };
        self.settle(blob, local, forward).await
    }
}

/// The volume a write goes to, with the blob's id claimed there.
struct Place {
    volume: Arc<hayloft_storage::Volume>,
    claim: Claim,
}

/// Chunks of a streamed write received but not yet written (1 MiB each
/// from hayloft's clients): enough for the next chunks to be decoded while
/// one is written, few enough to bound a slow disk's backlog per upload.
const STREAM_QUEUE_CHUNKS: usize = 4;

/// Writes a whole small blob and waits until it is durable, without a thread
/// per write: see [`write_whole_then`]. The outer error is the write's task
/// failing (a panic), the inner one the store's.
async fn write_whole(
    place: Place,
    blob: BlobId,
    data: impl AsRef<[u8]> + Send + 'static,
    meta: NeedleMeta,
) -> Result<Result<WriteReceipt, Error>, Status> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    write_whole_then(place, blob, data, meta, move |outcome| {
        let _ = tx.send(outcome);
    });
    rx.await
        .map_err(|_| Status::internal("the storage task failed"))
}

/// Writes a whole small blob and calls `done` with the outcome once it is
/// durable (or failed), without a task or a thread per write: the `pwrite`
/// into the page cache runs here (cheap for blobs this small), and `done` is
/// called by the group commit that makes the write durable, for every write
/// it covers at once; one blocking-pool task runs each group commit. Falls
/// back to a blocking write when the volume holds writers back (a
/// compaction's swap, a move's last copy) or, with durability `never`, when
/// its periodic sync is due (the blocking write runs it).
///
/// `done` may run under the volume's sync lock: it must only hand the news
/// on (send on a channel), never call into the volume. It is dropped
/// without being called only if a storage task panics.
fn write_whole_then(
    place: Place,
    blob: BlobId,
    data: impl AsRef<[u8]> + Send + 'static,
    meta: NeedleMeta,
    done: impl FnOnce(Result<WriteReceipt, Error>) + Send + 'static,
) {
    let Place { volume, claim } = place;
    let write = NeedleWrite {
        id: blob.needle,
        cookie: blob.cookie,
        data: data.as_ref(),
        meta,
    };
    match volume.try_write_queued(claim, &write) {
        Ok(Queued::Queued(queued)) => when_durable(volume, queued, Box::new(done)),
        Ok(Queued::WouldWait(claim)) => {
            let meta = write.meta;
            tokio::task::spawn_blocking(move || {
                done(volume.write_claimed(
                    claim,
                    &NeedleWrite {
                        id: blob.needle,
                        cookie: blob.cookie,
                        data: data.as_ref(),
                        meta,
                    },
                ))
            });
        }
        Err(e) => done(Err(e)),
    }
}

/// Calls `done` once the queued write is durable (or the volume poisoned),
/// running the group commit on the blocking pool if nobody else is.
fn when_durable(
    volume: Arc<hayloft_storage::Volume>,
    queued: QueuedWrite,
    done: Box<dyn FnOnce(Result<WriteReceipt, Error>) + Send>,
) {
    let runtime = tokio::runtime::Handle::current();
    let (id, again) = (volume.id(), Arc::clone(&volume));
    let waiter = Box::new(move |wake| match wake {
        Wake::Durable => done(Ok(queued.receipt)),
        Wake::Poisoned => done(Err(Error::Poisoned(id))),
        // Nobody syncs now: register again, off the sync lock.
        Wake::Lead => {
            runtime.spawn(async move { when_durable(again, queued, done) });
        }
    });
    if let Some(duty) = volume.when_durable(queued.seq, waiter) {
        // Writes that are ready to run now (requests already received) go
        // first and join this group commit: it starts once they have.
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            tokio::task::spawn_blocking(move || duty.run());
        });
    }
}

/// Largest blob a `WriteBatch` takes (larger ones go through `Write`): the
/// size whose copies travel whole over the replication links.
pub const BATCH_BLOB_MAX: u64 = LINKED_FORWARD_MAX;

/// Requests of one `WriteBatch` or `Replicate` stream written at once (and
/// answers queued).
const STREAM_IN_FLIGHT: usize = 256;

/// Serves a stream of independent requests (`Replicate`, `WriteBatch`):
/// `handle` gets each with the [`Reply`] it owes and must not wait (it spawns
/// or hands the reply on), so that the requests' writes share group commits;
/// each is answered as it finishes. At most [`STREAM_IN_FLIGHT`] requests are
/// in flight or answered and not yet sent: past that the stream is not read,
/// and HTTP/2 flow control holds the sender back. A stream that breaks off
/// ends the loop; requests in flight still finish (durable), though their
/// answers may not reach the sender, which treats them as not stored. The
/// stream ends with the server (the sender opens a new one when it needs
/// one).
fn answer_each<Resp, F>(
    mut incoming: Streaming<Resp::Request>,
    mut stop: Option<tokio::sync::watch::Receiver<bool>>,
    mut handle: F,
) -> Answers<Resp>
where
    Resp: StreamAnswer,
    F: FnMut(Resp::Request, Reply<Resp>) + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(STREAM_IN_FLIGHT));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
                break;
            };
            let message = tokio::select! {
                message = incoming.message() => message,
                () = stopped(&mut stop) => break,
            };
            let message = match message {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(status) => {
                    tracing::warn!(error = %status.message(), "request stream broke off");
                    break;
                }
            };
            let seq = Resp::seq_of(&message);
            handle(
                message,
                Reply {
                    seq,
                    owed: Some((tx.clone(), permit)),
                },
            );
        }
    });
    Answers { rx }
}

/// An answer on a request stream ([`answer_each`]).
trait StreamAnswer: Send + 'static {
    /// The request this answers.
    type Request: Send + 'static;
    /// The request's sequence number, which its answer repeats.
    fn seq_of(request: &Self::Request) -> u64;
    /// The answer refusing request `seq` with `status`.
    fn refused(seq: u64, status: &Status) -> Self;
}

impl StreamAnswer for ReplicateResponse {
    type Request = ReplicateRequest;
    fn seq_of(request: &ReplicateRequest) -> u64 {
        request.seq
    }
    fn refused(seq: u64, status: &Status) -> Self {
        ReplicateResponse {
            seq,
            code: status.code() as i32,
            message: status.message().to_owned(),
        }
    }
}

impl StreamAnswer for WriteBatchResponse {
    type Request = WriteBatchRequest;
    fn seq_of(request: &WriteBatchRequest) -> u64 {
        request.seq
    }
    fn refused(seq: u64, status: &Status) -> Self {
        WriteBatchResponse {
            seq,
            code: status.code() as i32,
            message: status.message().to_owned(),
            written: None,
        }
    }
}

/// The answer owed to one request of a stream. Sending it frees the
/// request's place among those in flight once the answer is sent on; dropped
/// unsent (a task that panicked), it answers INTERNAL, so the sender does
/// not wait for its timeout.
struct Reply<Resp: StreamAnswer> {
    seq: u64,
    owed: Option<(Queue<Resp>, tokio::sync::OwnedSemaphorePermit)>,
}

/// Where a stream's answers wait to be sent, each holding its request's
/// place among those in flight.
type Queue<Resp> = tokio::sync::mpsc::UnboundedSender<(Resp, tokio::sync::OwnedSemaphorePermit)>;

impl<Resp: StreamAnswer> Reply<Resp> {
    /// Answers the request. Never blocks: may run under a volume's sync lock.
    fn send(mut self, answer: Resp) {
        if let Some((queue, permit)) = self.owed.take() {
            let _ = queue.send((answer, permit));
        }
    }
}

impl<Resp: StreamAnswer> Drop for Reply<Resp> {
    fn drop(&mut self) {
        if let Some((queue, permit)) = self.owed.take() {
            let status = Status::internal("the write was abandoned (a storage task failed)");
            let _ = queue.send((Resp::refused(self.seq, &status), permit));
        }
    }
}

/// The answers of a request stream ([`answer_each`]), in order of
/// completion: those ready together go out together.
pub struct Answers<Resp> {
    rx: tokio::sync::mpsc::UnboundedReceiver<(Resp, tokio::sync::OwnedSemaphorePermit)>,
}

impl<Resp> Stream for Answers<Resp> {
    type Item = Result<Resp, Status>;

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        // The permit drops here: the request's place is free once its
        // answer is on its way.
        self.get_mut()
            .rx
            .poll_recv(cx)
            .map(|answer| answer.map(|(answer, _permit)| Ok(answer)))
    }
}

/// Runs `f` on tokio's blocking pool; a panic in it answers INTERNAL.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(task_failed)
}

/// A storage task that panicked (or was cancelled), as the caller's answer.
fn task_failed(error: tokio::task::JoinError) -> Status {
    Status::internal(format!("storage task failed: {error}"))
}

/// The metadata a write header gives its needle, checked.
fn meta_of(header: &WriteHeader) -> Result<NeedleMeta, Status> {
    let meta = NeedleMeta {
        content_type: header.content_type.clone(),
        file_name: header.file_name.clone(),
        last_modified: header.last_modified,
        expires_at: (header.expires_at != 0).then_some(header.expires_at),
    };
    meta.validate()
        .map_err(|_| Status::invalid_argument("content type or file name too long"))?;
    Ok(meta)
}

/// Completes once `stop` is true (never without one).
async fn stopped(stop: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    match stop {
        Some(rx) => {
            let _ = rx.wait_for(|stop| *stop).await;
        }
        None => std::future::pending().await,
    }
}

/// The whole blob of a small write: `size` bytes, one chunk kept as is.
async fn gather(stream: &mut Streaming<WriteRequest>, size: u64) -> Result<Bytes, Status> {
    let mut first: Option<Bytes> = None;
    let mut rest = Vec::new();
    let mut len = 0u64;
    while let Some(chunk) = next_chunk(stream).await? {
        len += chunk.len() as u64;
        if len > size {
            return Err(too_long(size));
        }
        match &first {
            None => first = Some(chunk),
            Some(_) => rest.push(chunk),
        }
    }
    if len != size {
        return Err(truncated(len, size));
    }
    let first = first.unwrap_or_default();
    if rest.is_empty() {
        return Ok(first);
    }
    let mut all = Vec::with_capacity(size as usize);
    all.extend_from_slice(&first);
    for chunk in rest {
        all.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(all))
}

async fn next_chunk(stream: &mut Streaming<WriteRequest>) -> Result<Option<Bytes>, Status> {
    match stream.message().await? {
        None => Ok(None),
        Some(WriteRequest {
            part: Some(Part::Chunk(chunk)),
        }) => Ok(Some(chunk)),
        Some(_) => Err(Status::invalid_argument(
            "only the first message may carry a header",
        )),
    }
}

fn too_long(size: u64) -> Status {
    Status::invalid_argument(format!("more bytes than the {size} declared in the header"))
}

fn truncated(received: u64, size: u64) -> Status {
    Status::invalid_argument(format!(
        "truncated upload: the stream ended after {received} of {size} bytes; nothing was stored"
    ))
}

fn parse_blob_id(text: &str) -> Result<BlobId, Status> {
    text.parse::<BlobId>()
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// Metadata served for a blob.
pub fn blob_info(blob: BlobId, needle: &hayloft_storage::Needle) -> BlobInfo {
    BlobInfo {
        blob_id: blob.to_string(),
        size: needle.data.len() as u64,
        content_type: needle.meta.content_type.clone(),
        file_name: needle.meta.file_name.clone(),
        last_modified: needle.meta.last_modified,
        expires_at: needle.meta.expires_at.unwrap_or(0),
        etag: etag(needle.checksum, needle.data.len() as u64),
    }
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadResponse, Status>> + Send>>;
type CompactStream = tokio_stream::wrappers::ReceiverStream<Result<CompactProgress, Status>>;
type SyncStream = tokio_stream::wrappers::ReceiverStream<Result<SyncProgress, Status>>;

/// A blob's bytes as `Read` streams them: metadata first, 1 MiB chunks.
fn read_stream(info: BlobInfo, data: Bytes) -> ReadStream {
    let chunk_len = hayloft_proto::CHUNK_BYTES;
    let chunks = data.len().div_ceil(chunk_len).max(1);
    let mut info = Some(info);
    Box::pin(tokio_stream::iter((0..chunks).map(move |i| {
        let start = i * chunk_len;
        let stop = (start + chunk_len).min(data.len());
        Ok(ReadResponse {
            info: info.take(),
            chunk: data.slice(start..stop),
        })
    })))
}

impl VolumeService {
    async fn write_inner(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let request_id = hayloft_proto::request_id(request.metadata());
        let who = Who::of(request.extensions());
        let note = Note::of(request.extensions());
        let mut stream = request.into_inner();
        let mut header = match stream.message().await? {
            Some(WriteRequest {
                part: Some(Part::Header(header)),
            }) => header,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must carry the header",
                ));
            }
        };
        if let Some(note) = &note {
            note.blob(
                &header.blob_id,
                &self.collection_of(&header.blob_id),
                header.size,
            );
        }
        let (blob, place, meta, targets) = self.prepare_write(&mut header, &who)?;
        let receipt = if !targets.is_empty() && header.size <= LINKED_FORWARD_MAX {
            let data = gather(&mut stream, header.size).await?;
            self.write_linked(place, blob, &header, meta, data, &targets, &request_id)
                .await?
        } else {
            self.write_forwarding(
                place,
                blob,
                &header,
                meta,
                &mut stream,
                &targets,
                &request_id,
            )
            .await?
        };
        metrics::bytes_in("grpc", header.size);
        Ok(Response::new(WriteResponse {
            blob_id: blob.to_string(),
            size: header.size,
            etag: etag(receipt.checksum, header.size),
        }))
    }

    /// Checks a write's header and finds what it needs: the blob id, the
    /// volume with the id claimed there, the needle's metadata and the
    /// copies to forward to (none for a write forwarded by a primary, and
    /// none for a write of an id written here already: it is an exact retry,
    /// answered here, or refused before any copy sees it). Sets
    /// `last_modified` if unset. A client's write must come to the id's
    /// primary copy ([`hayloft_proto::primary_index`]).
    #[allow(clippy::type_complexity)]
    fn prepare_write(
        &self,
        header: &mut WriteHeader,
        who: &Who,
    ) -> Result<
        (
            BlobId,
            Place,
            NeedleMeta,
            Vec<hayloft_proto::ServerLocation>,
        ),
        Status,
    > {
        let blob = parse_blob_id(&header.blob_id)?;
        if header.size > self.max_upload_bytes {
            return Err(Status::out_of_range(format!(
                "blob of {} bytes is over this server's upload limit of {} bytes",
                header.size, self.max_upload_bytes
            )));
        }
        let volume = self
            .store
            .volume(blob.volume())
            .map_err(|e| grpc_status(&e, None))?;
        self.authorize_write(who, header, volume.collection())?;
        // One time for every copy (forwarded in the header), so that the
        // copies hold the same record bytes: same checksum, same ETag.
        if header.last_modified == 0 {
            header.last_modified = now_unix_secs();
        }
        let meta = meta_of(header)?;
        // A write from a client goes to every copy; one forwarded by the
        // primary is written here only.
        let targets = if header.forwarded {
            Vec::new()
        } else {
            self.replication.check_writable(blob.volume().0)?;
            let copies = self
                .replication
                .copies(blob.volume().0, std::mem::take(&mut header.replicas));
            self.replication.check_primary(blob, &copies)?;
            // Counted once it would be written: a write this volume cannot
            // take (the client retries elsewhere) costs the caller nothing.
            hayloft_access::grpc::Quota::charge_to(
                who.quota.as_ref(),
                Op::Write,
                volume.collection(),
            )?;
            self.replication.others(copies)
        };
        // Claimed before any copy is sent the write: no other write of the
        // id proceeds here meanwhile, and so none reaches the copies.
        let claim = if header.forwarded {
            volume.claim_for_copy(blob.needle)
        } else {
            volume.claim(blob.needle)
        }
        .map_err(|e| grpc_status(&e, Some(blob)))?;
        let targets = if claim.is_retry() {
            Vec::new()
        } else {
            targets
        };
        Ok((blob, Place { volume, claim }, meta, targets))
    }

    /// One blob of a `WriteBatch`: a whole small blob, written here and sent
    /// to the copies over their links.
    async fn write_batched(
        &self,
        request: WriteBatchRequest,
        request_id: &str,
        who: &Who,
    ) -> Result<WriteResponse, Status> {
        let mut header = request
            .header
            .ok_or_else(|| Status::invalid_argument("a batched blob without a header"))?;
        if header.size > BATCH_BLOB_MAX {
            return Err(Status::invalid_argument(format!(
                "a batched blob is at most {BATCH_BLOB_MAX} bytes, this one declares {}; upload it with Write",
                header.size
            )));
        }
        if request.data.len() as u64 > header.size {
            return Err(too_long(header.size));
        }
        if (request.data.len() as u64) < header.size {
            return Err(truncated(request.data.len() as u64, header.size));
        }
        let (blob, place, meta, targets) = self.prepare_write(&mut header, who)?;
        let receipt = self
            .write_linked(
                place,
                blob,
                &header,
                meta,
                request.data,
                &targets,
                request_id,
            )
            .await?;
        metrics::bytes_in("grpc", header.size);
        Ok(WriteResponse {
            blob_id: blob.to_string(),
            size: header.size,
            etag: etag(receipt.checksum, header.size),
        })
    }

    /// A small write whose copies (if any) get the whole blob over their
    /// links.
    #[allow(clippy::too_many_arguments)]
    async fn write_linked(
        &self,
        place: Place,
        blob: BlobId,
        header: &WriteHeader,
        meta: NeedleMeta,
        data: Bytes,
        targets: &[hayloft_proto::ServerLocation],
        request_id: &str,
    ) -> Result<hayloft_storage::WriteReceipt, Status> {
        let local_data = data.clone();
        // Tests: the primary's own write fails after the copies had it all.
        let fail = !targets.is_empty() && hayloft_storage::failpoint::active("primary-local-write");
        let local = async move {
            if fail {
                return Err(Status::internal("failpoint primary-local-write"));
            }
            write_whole(place, blob, local_data, meta)
                .await?
                .map_err(|e| self.failed(e, Some(blob)))
        };
        if targets.is_empty() {
            return local.await;
        }
        let started = Instant::now();
        let (receipt, failures) = tokio::join!(
            local,
            self.replication
                .forward_small(header, &data, targets, request_id)
        );
        metrics::replication_wait(started.elapsed());
        self.settled(blob, receipt, &failures)
    }

    /// A write whose copies get a `Write` stream each, chunk by chunk.
    #[allow(clippy::too_many_arguments)]
    async fn write_forwarding(
        &self,
        place: Place,
        blob: BlobId,
        header: &WriteHeader,
        meta: NeedleMeta,
        stream: &mut Streaming<WriteRequest>,
        targets: &[hayloft_proto::ServerLocation],
        request_id: &str,
    ) -> Result<hayloft_storage::WriteReceipt, Status> {
        let forward = self.replication.forward_write(header, targets, request_id);
        if header.size <= SMALL_BLOB {
            self.write_small(place, blob, header, meta, stream, forward)
                .await
        } else {
            self.write_streamed(place, blob, header, meta, stream, forward)
                .await
        }
    }

    /// A small write forwarded by a primary over a `Replicate` stream:
    /// written on the stream's task, answered by the group commit that makes
    /// it durable (with every other write it covers, in one message batch).
    fn write_replicated(&self, request: ReplicateRequest, reply: Reply<ReplicateResponse>) {
        let (seq, request_id) = (request.seq, request.request_id);
        let answer = move |outcome: Result<(), Status>| {
            reply.send(match outcome {
                Ok(()) => ReplicateResponse {
                    seq,
                    code: 0,
                    message: String::new(),
                },
                Err(status) => {
                    tracing::warn!(request_id = %request_id, code = ?status.code(),
                        error = %status.message(), "replicated write failed");
                    ReplicateResponse::refused(seq, &status)
                }
            })
        };
        let checked = request
            .header
            .ok_or_else(|| Status::invalid_argument("a replicated write without a header"))
            .and_then(|header| {
                let blob = parse_blob_id(&header.blob_id)?;
                if request.data.len() as u64 != header.size || header.size > self.max_upload_bytes {
                    return Err(Status::invalid_argument(format!(
                        "replicated write of {} bytes declares {}",
                        request.data.len(),
                        header.size
                    )));
                }
                let volume = self
                    .store
                    .volume(blob.volume())
                    .map_err(|e| grpc_status(&e, None))?;
                let meta = meta_of(&header)?;
                let claim = volume
                    .claim_for_copy(blob.needle)
                    .map_err(|e| grpc_status(&e, Some(blob)))?;
                Ok((blob, Place { volume, claim }, meta))
            });
        let (blob, place, meta) = match checked {
            Ok(checked) => checked,
            Err(status) => return answer(Err(status)),
        };
        let (service, size) = (self.clone(), request.data.len() as u64);
        write_whole_then(place, blob, request.data, meta, move |written| {
            answer(match written {
                Ok(_) => {
                    metrics::bytes_in("grpc", size);
                    Ok(())
                }
                Err(e) => Err(service.failed(e, Some(blob))),
            })
        });
    }

    async fn read_inner(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<ReadStream>, Status> {
        let blob = parse_blob_id(&request.get_ref().blob_id)?;
        self.require_on(request.extensions(), Op::Read, blob)?;
        let request = request.into_inner();
        let needle = self.read_needle(blob).await?;
        let size = needle.data.len() as u64;
        if request.offset > size || (request.offset == size && size > 0) {
            return Err(Status::out_of_range(format!(
                "offset {} is past the end of the {size}-byte blob",
                request.offset
            )));
        }
        let end = match request.length {
            0 => size,
            length => request.offset.saturating_add(length).min(size),
        };
        let info = blob_info(blob, &needle);
        let data = needle.data.slice(request.offset as usize..end as usize);
        metrics::bytes_out("grpc", data.len() as u64);
        Ok(Response::new(read_stream(info, data)))
    }

    async fn needle_digests_inner(
        &self,
        request: Request<NeedleDigestsRequest>,
    ) -> Result<Response<NeedleDigestsResponse>, Status> {
        let request = request.into_inner();
        let volume = self
            .store
            .volume(VolumeId(request.volume_id))
            .map_err(|e| grpc_status(&e, None))?;
        let bits = request.range_bits.clamp(4, 40);
        let ranges = blocking(move || volume.range_digests(bits))
            .await?
            .into_iter()
            .map(|d| RangeDigest {
                start: d.start.0,
                count: d.count,
                hash: d.hash,
            })
            .collect();
        Ok(Response::new(NeedleDigestsResponse { ranges }))
    }

    async fn list_needles_inner(
        &self,
        request: Request<ListNeedlesRequest>,
    ) -> Result<Response<ListNeedlesResponse>, Status> {
        let request = request.into_inner();
        if request.to < request.from || request.to - request.from > 1 << 20 {
            return Err(Status::invalid_argument(
                "list at most 2^20 needle ids at a time",
            ));
        }
        let volume = self
            .store
            .volume(VolumeId(request.volume_id))
            .map_err(|e| grpc_status(&e, None))?;
        let (from, to) = (NeedleId(request.from), NeedleId(request.to));
        let needles = blocking(move || volume.needle_states(from, to))
            .await?
            .into_iter()
            .map(|s| NeedleEntry {
                needle_id: s.id.0,
                cookie: s.cookie.0,
                size: s.data_len,
                deleted: s.deleted,
            })
            .collect();
        Ok(Response::new(ListNeedlesResponse { needles }))
    }

    async fn fetch_needle_inner(
        &self,
        request: Request<FetchNeedleRequest>,
    ) -> Result<Response<ReadStream>, Status> {
        let blob = parse_blob_id(&request.get_ref().blob_id)?;
        let volume = self
            .store
            .volume(blob.volume())
            .map_err(|e| grpc_status(&e, Some(blob)))?;
        let needle = blocking(move || volume.read_for_copy(blob.needle, blob.cookie))
            .await?
            .map_err(|e| grpc_status(&e, Some(blob)))?;
        let info = blob_info(blob, &needle);
        Ok(Response::new(read_stream(info, needle.data)))
    }

    async fn sync_volume_inner(
        &self,
        request: Request<SyncVolumeRequest>,
    ) -> Result<Response<SyncStream>, Status> {
        let request = request.into_inner();
        if request.volume_id == 0 {
            return Err(Status::invalid_argument("volume id 0 is reserved"));
        }
        let id = VolumeId(request.volume_id);
        if self.store.volume(id).is_err() {
            // A new copy (repair) or a replaced disk: start from empty.
            let tier = match ProtoTier::try_from(request.tier) {
                Ok(ProtoTier::Warm) => Tier::Warm,
                _ => Tier::Hot,
            };
            let store = Arc::clone(&self.store);
            let collection = request.collection.clone();
            match blocking(move || store.create_volume(id, tier, &collection)).await? {
                Ok(_) | Err(Error::VolumeExists(_)) => {}
                Err(e) => return Err(grpc_status(&e, None)),
            }
            tracing::info!(volume = %id, "empty copy created for a sync");
            self.heartbeat_now.notify_one();
        }
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let anti_entropy = Arc::clone(&self.anti_entropy);
        let heartbeat_now = Arc::clone(&self.heartbeat_now);
        // The sync goes on if the caller goes away: it is idempotent, and
        // whatever it copied stays.
        tokio::spawn(async move {
            let result = anti_entropy
                .sync(
                    request.volume_id,
                    &request.sources,
                    request.bytes_per_sec,
                    true,
                    Some(&tx),
                )
                .await;
            heartbeat_now.notify_one();
            let last = match result {
                Ok(report) => report,
                Err(status) => SyncProgress {
                    done: true,
                    error: status.message().to_owned(),
                    ..SyncProgress::default()
                },
            };
            let _ = tx.send(Ok(last)).await;
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn delete_inner(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let blob = parse_blob_id(&request.get_ref().blob_id)?;
        if request.get_ref().forwarded {
            hayloft_access::grpc::require(request.extensions(), Op::Cluster, "")?;
        } else {
            self.require_on(request.extensions(), Op::Delete, blob)?;
        }
        if request.get_ref().forwarded {
            if request.get_ref().verified {
                // The cookie was checked by the forwarding copy: store the
                // tombstone even if this copy lacks the needle.
                let handle = self
                    .store
                    .handle(blob.volume())
                    .map_err(|e| grpc_status(&e, Some(blob)))?;
                let deleted = match handle {
                    Handle::Local(volume) => {
                        blocking(move || volume.delete_copied(blob.needle, blob.cookie).map(|_| ()))
                            .await?
                    }
                    // A cold copy (a replicated volume moving to or from
                    // cold): the tombstone goes to its `.tomb` file.
                    Handle::Cold(cold) => match blocking(move || cold.delete(blob.needle)).await? {
                        Err(e) if e.is_not_found() => Ok(()),
                        other => other,
                    },
                };
                deleted.map_err(|e| grpc_status(&e, Some(blob)))?;
                return Ok(Response::new(DeleteResponse {}));
            }
            return self.delete_local(blob).await;
        }
        // Delete here, and on every other copy, so that each holds the
        // tombstone. Found on any copy, the delete succeeded; a copy that
        // could not be reached missed it and is reported stale.
        let request_id = hayloft_proto::request_id(request.metadata());
        let local = self.delete_local(blob).await;
        let (deleted_elsewhere, failures) = self
            .replication
            .forward_delete(
                &request.get_ref().blob_id,
                blob.volume().0,
                local.is_ok(),
                &request_id,
            )
            .await;
        self.replication.record_failures(blob.volume().0, &failures);
        match local {
            Err(status) if status.code() == tonic::Code::NotFound && deleted_elsewhere > 0 => {
                Ok(Response::new(DeleteResponse {}))
            }
            other => other,
        }
    }

    async fn delete_local(&self, blob: BlobId) -> Result<Response<DeleteResponse>, Status> {
        // A move may replace the volume while the delete waits (Moved): the
        // delete then goes to the volume's new home.
        for _ in 0..3 {
            let store = Arc::clone(&self.store);
            let result =
                blocking(move || store.delete(blob.volume(), blob.needle, blob.cookie)).await?;
            match result {
                Ok(()) => return Ok(Response::new(DeleteResponse {})),
                Err(Error::Moved(_)) => continue,
                Err(Error::Cold(volume)) => {
                    let cold = self
                        .store
                        .cold_volume(volume)
                        .map_err(|e| grpc_status(&e, Some(blob)))?;
                    self.tiering
                        .delete_cold(&cold, blob.needle, blob.cookie)
                        .await
                        .map_err(|e| cold_status(e, blob))?;
                    return Ok(Response::new(DeleteResponse {}));
                }
                Err(e) => return Err(self.failed(e, Some(blob))),
            }
        }
        Err(Status::unavailable("volume is moving; retry"))
    }

    async fn stat_inner(
        &self,
        request: Request<StatRequest>,
    ) -> Result<Response<StatResponse>, Status> {
        let blob = parse_blob_id(&request.get_ref().blob_id)?;
        self.require_on(request.extensions(), Op::Read, blob)?;
        let needle = self.read_needle(blob).await?;
        Ok(Response::new(StatResponse {
            info: Some(blob_info(blob, &needle)),
        }))
    }

    async fn create_volume_inner(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        let request = request.into_inner();
        let tier = match ProtoTier::try_from(request.tier) {
            Ok(ProtoTier::Warm) => Tier::Warm,
            Ok(ProtoTier::Hot | ProtoTier::Unspecified) => Tier::Hot,
            _ => return Err(Status::invalid_argument("volumes are created hot or warm")),
        };
        if request.volume_id == 0 {
            return Err(Status::invalid_argument("volume id 0 is reserved"));
        }
        let store = Arc::clone(&self.store);
        let id = VolumeId(request.volume_id);
        let collection = request.collection.clone();
        blocking(move || store.create_volume(id, tier, &collection))
            .await?
            .map_err(|e| grpc_status(&e, None))?;
        self.replication.created(id.0, request.replicas);
        tracing::info!(volume = %id, %tier, "volume created");
        self.heartbeat_now.notify_one();
        Ok(Response::new(CreateVolumeResponse {}))
    }

    async fn compact_inner(
        &self,
        request: Request<CompactRequest>,
    ) -> Result<Response<CompactStream>, Status> {
        let request = request.into_inner();
        if !(0.0..=1.0).contains(&request.min_garbage_ratio) {
            return Err(Status::invalid_argument(
                "min_garbage_ratio must be between 0 and 1",
            ));
        }
        if !request.all && request.volume_ids.is_empty() {
            return Err(Status::invalid_argument("name volumes, or set all"));
        }
        let stream = crate::compaction::compact_stream(
            Arc::clone(&self.store),
            request,
            self.compaction_rate,
        )?;
        self.heartbeat_now.notify_one();
        Ok(Response::new(stream))
    }

    async fn list_volumes_inner(
        &self,
        _request: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        let store = Arc::clone(&self.store);
        let tiering = Arc::clone(&self.tiering);
        let volumes = blocking(move || all_statuses(&store.handles(), &tiering)).await?;
        Ok(Response::new(ListVolumesResponse { volumes }))
    }

    async fn move_volume_inner(
        &self,
        request: Request<MoveVolumeRequest>,
    ) -> Result<Response<MoveVolumeResponse>, Status> {
        let request = request.into_inner();
        let id = VolumeId(request.volume_id);
        if !request.share_cold_from.is_empty() && request.target == ProtoTier::Cold as i32 {
            // A cold copy catching up with another, or a new cold copy:
            // done before answering.
            match self.store.handle(id) {
                Ok(Handle::Cold(_)) => {
                    self.tiering
                        .merge_cold(id, &request.share_cold_from)
                        .await
                        .map_err(move_status)?;
                    return Ok(Response::new(MoveVolumeResponse {}));
                }
                Err(e) if e.is_not_found() => {
                    self.tiering
                        .install_cold(id, &request.share_cold_from)
                        .await
                        .map_err(move_status)?;
                    return Ok(Response::new(MoveVolumeResponse {}));
                }
                _ => {}
            }
        }
        self.tiering.start(request).map_err(move_status)?;
        Ok(Response::new(MoveVolumeResponse {}))
    }

    async fn delete_volume_inner(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        self.tiering
            .delete_volume(
                VolumeId(request.get_ref().volume_id),
                request.get_ref().keep_object,
            )
            .await
            .map_err(move_status)?;
        self.replication.forget(request.get_ref().volume_id);
        Ok(Response::new(DeleteVolumeResponse {}))
    }
}

/// A span for one request, carrying its id (from `x-request-id`, or a new
/// one), so that every log line about it can be found from either server.
pub fn request_span(op: &'static str, metadata: &tonic::metadata::MetadataMap) -> tracing::Span {
    let id = hayloft_proto::request_id(metadata);
    tracing::info_span!("request", op, request_id = %id)
}

/// Runs one call inside its request span, then counts and times it by
/// operation and gRPC code.
async fn traced<T>(
    op: &'static str,
    span: tracing::Span,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let started = Instant::now();
    let result = call.instrument(span.clone()).await;
    let code = metrics::grpc_code(&result);
    metrics::observe_grpc(op, &code, started);
    span.in_scope(|| {
        tracing::debug!(status = %code, micros = started.elapsed().as_micros() as u64, "request done")
    });
    result
}

/// Every call is timed and counted by operation and gRPC code.
#[tonic::async_trait]
impl Volume for VolumeService {
    type ReadStream = ReadStream;
    type CompactStream = CompactStream;
    type FetchNeedleStream = ReadStream;
    type SyncVolumeStream = SyncStream;

    async fn needle_digests(
        &self,
        request: Request<NeedleDigestsRequest>,
    ) -> Result<Response<NeedleDigestsResponse>, Status> {
        let span = request_span("grpc_needle_digests", request.metadata());
        traced(
            "grpc_needle_digests",
            span,
            self.needle_digests_inner(request),
        )
        .await
    }

    async fn list_needles(
        &self,
        request: Request<ListNeedlesRequest>,
    ) -> Result<Response<ListNeedlesResponse>, Status> {
        let span = request_span("grpc_list_needles", request.metadata());
        traced("grpc_list_needles", span, self.list_needles_inner(request)).await
    }

    async fn fetch_needle(
        &self,
        request: Request<FetchNeedleRequest>,
    ) -> Result<Response<ReadStream>, Status> {
        let span = request_span("grpc_fetch_needle", request.metadata());
        traced("grpc_fetch_needle", span, self.fetch_needle_inner(request)).await
    }

    async fn sync_volume(
        &self,
        request: Request<SyncVolumeRequest>,
    ) -> Result<Response<SyncStream>, Status> {
        let span = request_span("grpc_sync_volume", request.metadata());
        traced("grpc_sync_volume", span, self.sync_volume_inner(request)).await
    }

    async fn cold_index(
        &self,
        request: Request<ColdIndexRequest>,
    ) -> Result<Response<ColdIndexResponse>, Status> {
        let span = request_span("grpc_cold_index", request.metadata());
        let id = VolumeId(request.get_ref().volume_id);
        let tiering = Arc::clone(&self.tiering);
        let store = Arc::clone(&self.store);
        traced("grpc_cold_index", span, async move {
            if let Handle::Local(_) = store.handle(id).map_err(|e| grpc_status(&e, None))? {
                return Err(Status::failed_precondition(format!(
                    "volume {id} is not cold on this server"
                )));
            }
            let files = blocking(move || tiering.cold_files(id))
                .await?
                .map_err(|e| grpc_status(&e, None))?;
            Ok(Response::new(files))
        })
        .await
    }

    type ReplicateStream = Answers<ReplicateResponse>;

    async fn replicate(
        &self,
        request: Request<Streaming<ReplicateRequest>>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        let service = self.clone();
        Ok(Response::new(answer_each(
            request.into_inner(),
            self.stop.clone(),
            move |message, reply| service.write_replicated(message, reply),
        )))
    }

    type WriteBatchStream = Answers<WriteBatchResponse>;

    async fn write_batch(
        &self,
        request: Request<Streaming<WriteBatchRequest>>,
    ) -> Result<Response<Self::WriteBatchStream>, Status> {
        let request_id = hayloft_proto::request_id(request.metadata());
        let who = Who::of(request.extensions());
        let note = Note::of(request.extensions());
        if let Some(note) = &note {
            note.per_item();
        }
        let service = self.clone();
        Ok(Response::new(answer_each(
            request.into_inner(),
            self.stop.clone(),
            move |message: WriteBatchRequest, reply: Reply<WriteBatchResponse>| {
                let (service, request_id, who, note) = (
                    service.clone(),
                    request_id.clone(),
                    who.clone(),
                    note.clone(),
                );
                tokio::spawn(async move {
                    let seq = message.seq;
                    let (blob_id, size) = message
                        .header
                        .as_ref()
                        .map(|h| (h.blob_id.clone(), h.size))
                        .unwrap_or_default();
                    let written = service.write_batched(message, &request_id, &who).await;
                    if let Some(note) = &note {
                        let collection = service.collection_of(&blob_id);
                        note.item(&blob_id, &collection, size, written.as_ref().map(|_| ()));
                    }
                    reply.send(match written {
                        Ok(written) => WriteBatchResponse {
                            seq,
                            code: 0,
                            message: String::new(),
                            written: Some(written),
                        },
                        Err(status) => {
                            tracing::warn!(request_id = %request_id, code = ?status.code(),
                                error = %status.message(), "batched write refused");
                            WriteBatchResponse::refused(seq, &status)
                        }
                    });
                });
            },
        )))
    }

    async fn write(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let span = request_span("grpc_write", request.metadata());
        traced("grpc_write", span, self.write_inner(request)).await
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadStream>, Status> {
        let span = request_span("grpc_read", request.metadata());
        traced("grpc_read", span, self.read_inner(request)).await
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let span = request_span("grpc_delete", request.metadata());
        traced("grpc_delete", span, self.delete_inner(request)).await
    }

    async fn stat(&self, request: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        let span = request_span("grpc_stat", request.metadata());
        traced("grpc_stat", span, self.stat_inner(request)).await
    }

    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        let span = request_span("grpc_create_volume", request.metadata());
        traced(
            "grpc_create_volume",
            span,
            self.create_volume_inner(request),
        )
        .await
    }

    async fn list_volumes(
        &self,
        request: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        let span = request_span("grpc_list_volumes", request.metadata());
        traced("grpc_list_volumes", span, self.list_volumes_inner(request)).await
    }

    async fn compact(
        &self,
        request: Request<CompactRequest>,
    ) -> Result<Response<CompactStream>, Status> {
        let span = request_span("grpc_compact", request.metadata());
        traced("grpc_compact", span, self.compact_inner(request)).await
    }

    async fn move_volume(
        &self,
        request: Request<MoveVolumeRequest>,
    ) -> Result<Response<MoveVolumeResponse>, Status> {
        let span = request_span("grpc_move_volume", request.metadata());
        traced("grpc_move_volume", span, self.move_volume_inner(request)).await
    }

    async fn list_moves(
        &self,
        request: Request<ListMovesRequest>,
    ) -> Result<Response<ListMovesResponse>, Status> {
        let span = request_span("grpc_list_moves", request.metadata());
        let jobs = self.tiering.list();
        traced("grpc_list_moves", span, async {
            Ok(Response::new(ListMovesResponse { jobs }))
        })
        .await
    }

    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        let span = request_span("grpc_delete_volume", request.metadata());
        traced(
            "grpc_delete_volume",
            span,
            self.delete_volume_inner(request),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    fn owed(
        seq: u64,
        queue: &Queue<ReplicateResponse>,
        places: &Arc<tokio::sync::Semaphore>,
    ) -> Reply<ReplicateResponse> {
        Reply {
            seq,
            owed: Some((
                queue.clone(),
                Arc::clone(places)
                    .try_acquire_owned()
                    .expect("a free place"),
            )),
        }
    }

    #[tokio::test]
    async fn replies_go_out_in_order_of_completion_and_free_their_place_once_sent_on() {
        let (queue, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut answers = Answers { rx };
        let places = Arc::new(tokio::sync::Semaphore::new(2));
        let (first, second) = (owed(1, &queue, &places), owed(2, &queue, &places));
        assert_eq!(places.available_permits(), 0);
        second.send(ReplicateResponse {
            seq: 2,
            code: 0,
            message: String::new(),
        });
        // Answered but not yet sent on: its place is still taken.
        assert_eq!(places.available_permits(), 0);
        let answer = answers.next().await.unwrap().unwrap();
        assert_eq!((answer.seq, answer.code), (2, 0));
        assert_eq!(places.available_permits(), 1);
        // A reply dropped unsent (its task failed) answers INTERNAL rather
        // than leaving the sender to its timeout.
        drop(queue);
        drop(first);
        let answer = answers.next().await.unwrap().unwrap();
        assert_eq!(answer.seq, 1);
        assert_eq!(answer.code, tonic::Code::Internal as i32);
        assert!(answer.message.contains("abandoned"), "{}", answer.message);
        assert_eq!(places.available_permits(), 2);
    }
}
