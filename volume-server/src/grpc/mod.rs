//! The `hayloft.v1.Volume` gRPC service over the store.
//!
//! Small whole-blob writes `pwrite` on their task and wait for their group
//! commit through a callback (one blocking-pool task runs each group commit);
//! other blocking storage calls (streamed appends, volume creation, writes a
//! volume holds back) run on tokio's blocking pool; reads of the mmap run
//! inline (they touch resident pages, and the body is sent as zero-copy
//! slices).
//!
//! The rooms: `authz` (who may call what), `write` (a blob to every copy),
//! `answers` (streams of independent requests: `WriteBatch`, `Replicate`),
//! `read`, `sync` (the RPCs of anti-entropy and repair), `erasure` (shards
//! of erasure-coded volumes in and out), `admin` (deletes and the
//! operators' calls), `seal` (a copy sealed by hand); this file holds the
//! service, its dispatch (`impl Volume`) and what every room shares.

mod admin;
mod answers;
mod authz;
mod erasure;
mod erasure_decode;
mod erasure_reencode;
mod foreign;
mod handoff;
mod read;
mod seal;
mod sync;
mod write;

#[allow(unused_imports)]
use admin::*;
#[allow(unused_imports)]
use answers::*;
pub use answers::{Answers, BATCH_BLOB_MAX};
pub use authz::needs;
pub use erasure::SHARD_READ_MAX;
pub use read::blob_info;
#[allow(unused_imports)]
use read::*;
#[allow(unused_imports)]
use write::*;

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
use hayloft_storage::volume::unix_now;
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
pub(crate) use crate::blocking::{blocking, task_failed};
use crate::disk_reads::{DiskReads, ReadError, Source};
use crate::error::{cold_grpc_status, etag, grpc_status, move_status};
use crate::metrics;
use crate::replicate::{Forward, LINKED_FORWARD_MAX, Replication};
use crate::status::all_statuses;
use crate::tier::{ColdReadError, Tiering};
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
    /// Reads of erasure-coded volumes held here (shared with HTTP).
    erasure: Arc<crate::erasure::ErasureReads>,
    /// Shards being rebuilt here (one rebuild of a shard at a time).
    rebuilding: Arc<crate::erasure::Rebuilding>,
    /// Finds copies in other regions, for reads of their volumes (none:
    /// this server reads only what it holds).
    remote: Option<Arc<crate::proxy::RemoteReader>>,
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

fn parse_blob_id(text: &str) -> Result<BlobId, Status> {
    text.parse::<BlobId>()
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadResponse, Status>> + Send>>;

type CompactStream = tokio_stream::wrappers::ReceiverStream<Result<CompactProgress, Status>>;

type SyncStream = tokio_stream::wrappers::ReceiverStream<Result<SyncProgress, Status>>;

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
    type FetchNeedlesStream = sync::FetchNeedlesStream;
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

    async fn read_log(
        &self,
        request: Request<hayloft_proto::ReadLogRequest>,
    ) -> Result<Response<hayloft_proto::ReadLogResponse>, Status> {
        let span = request_span("grpc_read_log", request.metadata());
        traced("grpc_read_log", span, self.read_log_inner(request)).await
    }

    async fn fetch_needle(
        &self,
        request: Request<FetchNeedleRequest>,
    ) -> Result<Response<ReadStream>, Status> {
        let span = request_span("grpc_fetch_needle", request.metadata());
        traced("grpc_fetch_needle", span, self.fetch_needle_inner(request)).await
    }

    async fn fetch_needles(
        &self,
        request: Request<hayloft_proto::FetchNeedlesRequest>,
    ) -> Result<Response<sync::FetchNeedlesStream>, Status> {
        let span = request_span("grpc_fetch_needles", request.metadata());
        traced(
            "grpc_fetch_needles",
            span,
            self.fetch_needles_inner(request),
        )
        .await
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
        let staged = request.get_ref().staged;
        let tiering = Arc::clone(&self.tiering);
        let store = Arc::clone(&self.store);
        traced("grpc_cold_index", span, async move {
            if staged {
                let files = blocking(move || tiering.staged_cold_files(id))
                    .await?
                    .map_err(|e| grpc_status(&e, None))?;
                return Ok(Response::new(files));
            }
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
    type EcEncodeStream = erasure::EncodeStream;
    type EcRebuildStream = erasure::RebuildStream;

    async fn ec_files(
        &self,
        request: Request<hayloft_proto::EcFilesRequest>,
    ) -> Result<Response<hayloft_proto::EcInstallRequest>, Status> {
        let span = request_span("grpc_ec_files", request.metadata());
        traced("grpc_ec_files", span, self.ec_files_inner(request)).await
    }

    async fn ec_journal(
        &self,
        request: Request<hayloft_proto::EcJournalRequest>,
    ) -> Result<Response<hayloft_proto::EcJournalResponse>, Status> {
        let span = request_span("grpc_ec_journal", request.metadata());
        traced("grpc_ec_journal", span, self.ec_journal_inner(request)).await
    }

    type EcDecodeStream = erasure_decode::DecodeStream;

    async fn ec_decode(
        &self,
        request: Request<hayloft_proto::EcDecodeRequest>,
    ) -> Result<Response<Self::EcDecodeStream>, Status> {
        let span = request_span("grpc_ec_decode", request.metadata());
        traced("grpc_ec_decode", span, self.ec_decode_inner(request)).await
    }

    async fn ec_fence(
        &self,
        request: Request<hayloft_proto::EcFenceRequest>,
    ) -> Result<Response<hayloft_proto::EcFenceResponse>, Status> {
        let span = request_span("grpc_ec_fence", request.metadata());
        traced("grpc_ec_fence", span, self.ec_fence_inner(request)).await
    }

    async fn ec_swap(
        &self,
        request: Request<hayloft_proto::EcSwapRequest>,
    ) -> Result<Response<hayloft_proto::EcSwapResponse>, Status> {
        let span = request_span("grpc_ec_swap", request.metadata());
        traced("grpc_ec_swap", span, self.ec_swap_inner(request)).await
    }

    async fn ec_rebuild(
        &self,
        request: Request<hayloft_proto::EcRebuildRequest>,
    ) -> Result<Response<Self::EcRebuildStream>, Status> {
        let span = request_span("grpc_ec_rebuild", request.metadata());
        traced("grpc_ec_rebuild", span, self.ec_rebuild_inner(request)).await
    }

    async fn ec_encode(
        &self,
        request: Request<hayloft_proto::EcEncodeRequest>,
    ) -> Result<Response<Self::EcEncodeStream>, Status> {
        let span = request_span("grpc_ec_encode", request.metadata());
        traced("grpc_ec_encode", span, self.ec_encode_inner(request)).await
    }

    async fn ec_install(
        &self,
        request: Request<hayloft_proto::EcInstallRequest>,
    ) -> Result<Response<hayloft_proto::EcInstallResponse>, Status> {
        let span = request_span("grpc_ec_install", request.metadata());
        traced("grpc_ec_install", span, self.ec_install_inner(request)).await
    }

    async fn ec_write_shard(
        &self,
        request: Request<Streaming<hayloft_proto::EcWriteShardRequest>>,
    ) -> Result<Response<hayloft_proto::EcWriteShardResponse>, Status> {
        let span = request_span("grpc_ec_write_shard", request.metadata());
        traced(
            "grpc_ec_write_shard",
            span,
            self.ec_write_shard_inner(request),
        )
        .await
    }

    async fn ec_read_shard(
        &self,
        request: Request<hayloft_proto::EcReadShardRequest>,
    ) -> Result<Response<hayloft_proto::EcReadShardResponse>, Status> {
        let span = request_span("grpc_ec_read_shard", request.metadata());
        traced(
            "grpc_ec_read_shard",
            span,
            self.ec_read_shard_inner(request),
        )
        .await
    }

    async fn ec_delete(
        &self,
        request: Request<hayloft_proto::EcDeleteRequest>,
    ) -> Result<Response<hayloft_proto::EcDeleteResponse>, Status> {
        let span = request_span("grpc_ec_delete", request.metadata());
        traced("grpc_ec_delete", span, self.ec_delete_inner(request)).await
    }

    async fn ec_drop(
        &self,
        request: Request<hayloft_proto::EcDropRequest>,
    ) -> Result<Response<hayloft_proto::EcDropResponse>, Status> {
        let span = request_span("grpc_ec_drop", request.metadata());
        traced("grpc_ec_drop", span, self.ec_drop_inner(request)).await
    }

    async fn seal_copy(
        &self,
        request: Request<hayloft_proto::SealCopyRequest>,
    ) -> Result<Response<hayloft_proto::SealCopyResponse>, Status> {
        let span = request_span("grpc_seal_copy", request.metadata());
        traced("grpc_seal_copy", span, self.seal_copy_inner(request)).await
    }

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
            erasure: Arc::new(crate::erasure::ErasureReads::new(Arc::clone(&replication))),
            rebuilding: Arc::default(),
            remote: None,
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

    /// Reads of erasure-coded volumes held here, for the HTTP origin.
    pub fn erasure_reads(&self) -> Arc<crate::erasure::ErasureReads> {
        Arc::clone(&self.erasure)
    }

    /// Reads blobs of volumes other regions allocated from their copies
    /// there, found through `remote`.
    pub fn with_remote(mut self, remote: Arc<crate::proxy::RemoteReader>) -> Self {
        self.remote = Some(remote);
        self
    }

    /// Ends long-lived streams (`Replicate`) once `stop` becomes true, so
    /// that a graceful shutdown does not wait for them.
    pub fn with_stop(mut self, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stop = Some(stop);
        self
    }
}
