//! The `hayloft.v1.Directory` gRPC service.
//!
//! One method per RPC of `hayloft.v1.Directory`, each a thin translation
//! to `Cluster` calls; the logic lives in `cluster/` and `repair/`. Longer
//! bodies are in submodules: [`create`] (`Assign` and volume creation),
//! [`erasure`] (seal, encode, decode, re-encode) and [`regions`]
//! (`Regions`, `AdoptVolumes`).

use std::collections::HashMap;
use std::sync::Arc;

use hayloft_access::grpc::Need;
use hayloft_access::token::Op;
use hayloft_proto::directory_server::Directory;
use hayloft_proto::{
    AssignRequest, AssignResponse, CapacityRequest, CapacityResponse, EncodeVolumeRequest,
    ForgetVolumeRequest, ForgetVolumeResponse, HeartbeatRequest, HeartbeatResponse, LookupRequest,
    LookupResponse, PlannedRepair, RemoveReplicaRequest, RemoveReplicaResponse, RepairRequest,
    RepairResponse, SealVolumeRequest, SealVolumeResponse, SignUrlRequest, SignUrlResponse,
    StatusRequest, StatusResponse, WorkerStatus,
};
use hayloft_storage::VolumeId;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::cluster::{Cluster, unix_now};
use crate::error::{Error, Result};

mod create;
mod erasure;
mod regions;
pub use erasure::{DecodeVolumeStream, EncodeVolumeStream, ReencodeVolumeStream};

/// Most ids one `Assign` hands out.
pub const MAX_ASSIGN_COUNT: u32 = 10_000;

/// How long a node being added to the group may take to catch up before
/// it becomes a voter.
const ADD_NODE_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(60);

/// The directory service.
pub struct DirectoryService {
    cluster: Arc<Cluster>,
    repairs: Arc<crate::repair::Repairs>,
    repair_settings: crate::repair::RepairSettings,
    pulse_seconds: u32,
    min_writable_volumes: usize,
    /// Serialises volume creation, so that a burst of assigns on an empty
    /// collection creates one volume, not one each.
    grow: Arc<tokio::sync::Mutex<()>>,
    /// Collections read only through signed URLs (told to volume servers).
    signed_collections: Vec<String>,
    /// Signs a write grant for each assigned id (tokens are required).
    grants: Option<Arc<hayloft_access::SharedKeyring>>,
    /// How long a write grant works.
    grant_ttl: std::time::Duration,
    /// This node's Raft, for membership changes (none in unit tests).
    raft: Option<crate::consensus::Raft>,
    /// Signs URLs for `SignUrl` (the directory's key ring, if it has one).
    url_signer: Option<Arc<hayloft_access::SharedKeyring>>,
    /// The longest lifetime `SignUrl` signs for.
    url_max_lifetime: std::time::Duration,
    /// This node's background jobs (repair, capacity history).
    workers: hayloft_proto::background::Registry,
    /// Each volume server's background jobs, from its last heartbeat: the
    /// leader's soft state, like liveness. Held only to copy in or out.
    server_workers: parking_lot::Mutex<HashMap<String, Vec<WorkerStatus>>>,
    /// The code `EncodeVolume` uses when the request names none, by the
    /// volume's collection.
    ec_codes: crate::erasure::EcCodes,
    /// Volumes this node is encoding now.
    encoding: Arc<crate::erasure::encode::Encoding>,
}

/// What each `Directory` and `Raft` method asks of a token (when tokens
/// are required). `Assign` is narrowed to `write:<collection>` once the
/// request is read; `Node` is open (health checks, nodes joining).
/// Methods not listed need `cluster` (fail closed).
pub fn needs(path: &str) -> Need {
    match path {
        "/hayloft.v1.Directory/Assign" => Need::Scope(Op::Write),
        "/hayloft.v1.Directory/Lookup" | "/hayloft.v1.Directory/Regions" => Need::Token,
        "/hayloft.v1.Directory/Node" => Need::Open,
        "/hayloft.v1.Directory/Status"
        | "/hayloft.v1.Directory/Capacity"
        | "/hayloft.v1.Directory/ForgetVolume"
        | "/hayloft.v1.Directory/Repair"
        | "/hayloft.v1.Directory/RemoveReplica"
        | "/hayloft.v1.Directory/EncodeVolume"
        | "/hayloft.v1.Directory/SealVolume"
        | "/hayloft.v1.Directory/DecodeVolume"
        | "/hayloft.v1.Directory/ReencodeVolume"
        | "/hayloft.v1.Directory/AddNode"
        | "/hayloft.v1.Directory/RemoveNode"
        | "/hayloft.v1.Directory/RevokeToken" => Need::Scope(Op::Admin),
        "/hayloft.v1.Directory/SignUrl" => Need::Scope(Op::Sign),
        _ => Need::Scope(Op::Cluster),
    }
}

impl DirectoryService {
    /// A service over `cluster`.
    pub fn new(
        cluster: Arc<Cluster>,
        repairs: Arc<crate::repair::Repairs>,
        repair_settings: crate::repair::RepairSettings,
        pulse_seconds: u32,
        min_writable_volumes: usize,
    ) -> Self {
        DirectoryService {
            cluster,
            repairs,
            repair_settings,
            pulse_seconds,
            min_writable_volumes,
            grow: Arc::new(tokio::sync::Mutex::new(())),
            signed_collections: Vec::new(),
            grants: None,
            grant_ttl: std::time::Duration::from_secs(60),
            url_signer: None,
            url_max_lifetime: std::time::Duration::from_secs(24 * 3600),
            raft: None,
            workers: hayloft_proto::background::Registry::default(),
            server_workers: parking_lot::Mutex::new(HashMap::new()),
            ec_codes: crate::erasure::EcCodes::default(),
            encoding: Arc::default(),
        }
    }

    /// The volumes this node is encoding (the shard worker leaves them
    /// alone).
    pub fn encoding(&self) -> Arc<crate::erasure::encode::Encoding> {
        Arc::clone(&self.encoding)
    }

    /// `EncodeVolume` uses `codes` (the volume's collection's code, else
    /// the default) when the request names none.
    pub fn with_ec_codes(mut self, codes: crate::erasure::EcCodes) -> Self {
        self.ec_codes = codes;
        self
    }

    /// Lists `workers` (this node's background jobs) in status.
    pub fn with_workers(mut self, workers: hayloft_proto::background::Registry) -> Self {
        self.workers = workers;
        self
    }

    /// Adds and removes nodes of the group through `raft`.
    pub(crate) fn with_raft(mut self, raft: crate::consensus::Raft) -> Self {
        self.raft = Some(raft);
        self
    }

    /// This node's Raft, for membership changes.
    fn raft(&self) -> Result<&crate::consensus::Raft> {
        self.raft.as_ref().ok_or(Error::NotRunning)
    }

    /// Hands out, with each id, a grant to write it for `ttl`, signed with
    /// `keyring` (none: no grants, tokens are not required).
    pub fn with_grants(
        mut self,
        keyring: Option<Arc<hayloft_access::SharedKeyring>>,
        ttl: std::time::Duration,
    ) -> Self {
        self.grants = keyring;
        self.grant_ttl = ttl;
        self
    }

    /// Signs URLs for `SignUrl` with `keyring`'s signing key (none: SignUrl
    /// answers FAILED_PRECONDITION), for at most `max_lifetime`.
    pub fn with_url_signing(
        mut self,
        keyring: Option<Arc<hayloft_access::SharedKeyring>>,
        max_lifetime: std::time::Duration,
    ) -> Self {
        self.url_signer = keyring;
        self.url_max_lifetime = max_lifetime;
        self
    }

    /// Tells volume servers, with each heartbeat's answer, that these
    /// collections are read only through signed URLs.
    pub fn with_signed_collections(mut self, collections: Vec<String>) -> Self {
        self.signed_collections = collections;
        self
    }
}

impl DirectoryService {
    async fn lookup_inner(
        &self,
        request: Request<LookupRequest>,
    ) -> Result<Response<LookupResponse>, Status> {
        let request = request.into_inner();
        if self.cluster.linearizable_lookups() {
            self.cluster.confirm_leadership().await?;
        }
        let volume_ids: Vec<VolumeId> = request.volume_ids.iter().copied().map(VolumeId).collect();
        let volumes = self.cluster.lookup(&volume_ids, &request.blob_ids)?;
        Ok(Response::new(LookupResponse { volumes }))
    }

    async fn sign_url_inner(
        &self,
        request: Request<SignUrlRequest>,
    ) -> Result<Response<SignUrlResponse>, Status> {
        let blob: hayloft_storage::types::BlobId =
            request.get_ref().blob_id.parse().map_err(|e| {
                Status::invalid_argument(format!("blob id {:?}: {e}", request.get_ref().blob_id))
            })?;
        let volume = blob.volume();
        let collection = self
            .cluster
            .volume_collection(volume)
            .ok_or_else(|| Status::not_found(format!("volume {volume} is unknown")))?;
        if let Some(note) = hayloft_access::grpc::Note::of(request.extensions()) {
            note.blob(
                &blob.to_string(),
                hayloft_access::collection_name(&collection),
                0,
            );
        }
        // Narrowed to the blob's collection: a token to sign photos' URLs
        // signs nothing else.
        hayloft_access::grpc::require(request.extensions(), Op::Sign, &collection)?;
        let request = request.into_inner();
        let ttl = match request.ttl_seconds {
            0 => std::time::Duration::from_secs(15 * 60),
            seconds => std::time::Duration::from_secs(seconds),
        };
        if ttl > self.url_max_lifetime {
            return Err(Status::invalid_argument(format!(
                "a signed URL lives at most {} (signed_url_max_lifetime)",
                humantime_serde::re::humantime::format_duration(self.url_max_lifetime)
            )));
        }
        let bind = match request.client_network.as_str() {
            "" => None,
            text => Some(hayloft_access::signed_url::parse_bind(text).ok_or_else(|| {
                Status::invalid_argument(format!("{text:?} is not an address or network"))
            })?),
        };
        let name = Some(request.name.as_str()).filter(|n| !n.is_empty());
        let path = hayloft_access::signed_url::blob_path(&blob.to_string(), name)
            .map_err(Status::invalid_argument)?;
        let ring = self
            .url_signer
            .as_ref()
            .map(|ring| ring.get())
            .ok_or_else(|| Status::failed_precondition("this directory has no key ring"))?;
        let expires_at = unix_now().saturating_add(ttl.as_secs());
        let query = hayloft_access::signed_url::sign_with(&ring, &path, expires_at, bind)
            .ok_or_else(|| {
                Status::failed_precondition("the directory's key ring names no signing key")
            })?;
        let path = format!("{path}?{query}");
        let urls = self
            .cluster
            .lookup(&[volume], &[])?
            .into_iter()
            .flat_map(|v| v.locations)
            .map(|location| format!("{}{path}", location.origin_url()))
            .collect();
        Ok(Response::new(SignUrlResponse {
            path,
            expires_at,
            urls,
        }))
    }

    async fn heartbeat_inner(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let mut request = request.into_inner();
        if let Some(server) = &request.server {
            let workers = std::mem::take(&mut request.workers);
            self.server_workers
                .lock()
                .insert(server.server_id.clone(), workers);
        }
        let server_id = request
            .server
            .as_ref()
            .map(|s| s.server_id.clone())
            .unwrap_or_default();
        let volumes = self.cluster.heartbeat(request).await?;
        self.cluster.update_gauges();
        Ok(Response::new(HeartbeatResponse {
            pulse_seconds: self.pulse_seconds,
            volumes,
            signed_collections: self.signed_collections.clone(),
            revoked_tokens: self.cluster.revoked_tokens(),
            erasure: self.cluster.erasure_for(&server_id),
        }))
    }

    async fn status_inner(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let mut status = self.cluster.status();
        // Background jobs: each server's from its heartbeats, this node's own.
        {
            let server_workers = self.server_workers.lock();
            for server in &mut status.servers {
                let id = server.location.as_ref().map(|l| l.server_id.as_str());
                if let Some(workers) = id.and_then(|id| server_workers.get(id)) {
                    server.workers.clone_from(workers);
                }
            }
        }
        status.workers = self.workers.statuses();
        // This node's own ring (it signs grants, URLs and its own token).
        if let Some(why) = self.url_signer.as_ref().and_then(|ring| ring.stale()) {
            let who = format!("directory node {}", self.cluster.node_id());
            status
                .problems
                .push(crate::cluster::stale_ring_problem(&who, &why));
        }
        // Repairs that keep failing, with why (the leader's: it runs them).
        status.problems.extend(self.repairs.problems());
        let mut candidates = std::collections::HashMap::new();
        status.below_spread = self
            .cluster
            .volume_views(true)
            .iter()
            .filter(|view| {
                let candidates = candidates
                    .entry(view.tier)
                    .or_insert_with(|| self.cluster.placement_candidates(view.tier));
                crate::repair::below_spread(view, candidates)
            })
            .count() as u32;
        for volume in status.volumes.iter_mut().filter(|v| v.repairing) {
            let id = VolumeId(volume.status.as_ref().map_or(0, |s| s.volume_id));
            volume.repair_progress = self.cluster.repair_progress(id, &volume.repair_target);
        }
        Ok(Response::new(status))
    }

    async fn repair_inner(
        &self,
        request: Request<RepairRequest>,
    ) -> Result<Response<RepairResponse>, Status> {
        let dry_run = request.get_ref().dry_run;
        let (planned, stuck, degraded) = crate::repair::plan_now(
            &self.cluster,
            &self.repairs,
            std::time::Duration::ZERO,
            self.repair_settings.max_per_server,
        );
        let describe = |plan: &crate::repair::RepairPlan| PlannedRepair {
            volume_id: plan.volume_id.0,
            target: plan.target.server_id.clone(),
            sources: plan.sources.iter().map(|s| s.server_id.clone()).collect(),
            replaces: match &plan.kind {
                crate::repair::RepairKind::Replace { lost }
                | crate::repair::RepairKind::ReplaceCold { lost }
                | crate::repair::RepairKind::Move { from: lost } => lost.clone(),
                crate::repair::RepairKind::CatchUp
                | crate::repair::RepairKind::CatchUpCold
                | crate::repair::RepairKind::Add => String::new(),
            },
            adds: plan.kind == crate::repair::RepairKind::Add,
            running: false,
            started_at: 0,
        };
        // Started repairs, from the replicated jobs (an earlier leader's too).
        let mut repairs: Vec<PlannedRepair> = self
            .cluster
            .repair_jobs()
            .into_iter()
            .map(|job| PlannedRepair {
                volume_id: job.volume_id,
                sources: self
                    .repairs
                    .plan(job.volume_id())
                    .map(|p| p.sources.iter().map(|s| s.server_id.clone()).collect())
                    .unwrap_or_default(),
                replaces: job.lost,
                adds: job.kind == "add",
                running: true,
                started_at: job.started_at,
                target: job.target,
            })
            .collect();
        repairs.extend(planned.iter().map(describe));
        if !dry_run {
            self.repairs.run_now();
            tracing::info!(planned = planned.len(), "repairs started by an operator");
        }
        Ok(Response::new(RepairResponse {
            repairs,
            degraded: degraded as u32,
            stuck: stuck.into_iter().map(|id| id.0).collect(),
        }))
    }

    async fn capacity_inner(
        &self,
        request: Request<CapacityRequest>,
    ) -> Result<Response<CapacityResponse>, Status> {
        let since = request.get_ref().since;
        let cluster = Arc::clone(&self.cluster);
        let samples = tokio::task::spawn_blocking(move || cluster.capacity(since))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(CapacityResponse { samples }))
    }

    async fn forget_volume_inner(
        &self,
        request: Request<ForgetVolumeRequest>,
    ) -> Result<Response<ForgetVolumeResponse>, Status> {
        let id = VolumeId(request.get_ref().volume_id);
        let known = self.cluster.forget_volume(id).await?;
        if !known {
            return Err(Status::not_found(format!("volume {id} is not in the map")));
        }
        tracing::info!(volume = id.0, "volume forgotten");
        Ok(Response::new(ForgetVolumeResponse {}))
    }

    async fn remove_replica_inner(
        &self,
        request: Request<RemoveReplicaRequest>,
    ) -> Result<Response<RemoveReplicaResponse>, Status> {
        let RemoveReplicaRequest {
            volume_id,
            server_id,
        } = request.into_inner();
        self.cluster
            .remove_replica(VolumeId(volume_id), &server_id)
            .await?;
        Ok(Response::new(RemoveReplicaResponse {}))
    }
}

/// Every call is timed and counted by operation and gRPC code
/// (`hayloft_directory_requests_total`, `hayloft_directory_request_duration_seconds`).
/// Only the group's leader answers; another node answers UNAVAILABLE with
/// the leader's address in the `hayloft-leader` metadata (the clients
/// switch to it).
#[tonic::async_trait]
impl Directory for DirectoryService {
    type EncodeVolumeStream = EncodeVolumeStream;
    type DecodeVolumeStream = DecodeVolumeStream;
    type ReencodeVolumeStream = ReencodeVolumeStream;

    async fn reencode_volume(
        &self,
        request: Request<hayloft_proto::ReencodeVolumeRequest>,
    ) -> Result<Response<ReencodeVolumeStream>, Status> {
        let span = request_span("reencode_volume", request.metadata());
        traced(
            &self.cluster,
            "reencode_volume",
            span,
            self.reencode_volume_inner(request),
        )
        .await
    }

    async fn decode_volume(
        &self,
        request: Request<hayloft_proto::DecodeVolumeRequest>,
    ) -> Result<Response<DecodeVolumeStream>, Status> {
        let span = request_span("decode_volume", request.metadata());
        traced(
            &self.cluster,
            "decode_volume",
            span,
            self.decode_volume_inner(request),
        )
        .await
    }

    async fn seal_volume(
        &self,
        request: Request<SealVolumeRequest>,
    ) -> Result<Response<SealVolumeResponse>, Status> {
        let span = request_span("seal_volume", request.metadata());
        traced(
            &self.cluster,
            "seal_volume",
            span,
            self.seal_volume_inner(request),
        )
        .await
    }

    async fn encode_volume(
        &self,
        request: Request<EncodeVolumeRequest>,
    ) -> Result<Response<EncodeVolumeStream>, Status> {
        let span = request_span("encode_volume", request.metadata());
        traced(
            &self.cluster,
            "encode_volume",
            span,
            self.encode_volume_inner(request),
        )
        .await
    }

    async fn assign(
        &self,
        request: Request<AssignRequest>,
    ) -> Result<Response<AssignResponse>, Status> {
        let span = request_span("assign", request.metadata());
        traced(&self.cluster, "assign", span, self.assign_inner(request)).await
    }

    async fn lookup(
        &self,
        request: Request<LookupRequest>,
    ) -> Result<Response<LookupResponse>, Status> {
        let span = request_span("lookup", request.metadata());
        traced(&self.cluster, "lookup", span, self.lookup_inner(request)).await
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let span = request_span("heartbeat", request.metadata());
        traced(
            &self.cluster,
            "heartbeat",
            span,
            self.heartbeat_inner(request),
        )
        .await
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let span = request_span("status", request.metadata());
        traced(&self.cluster, "status", span, self.status_inner(request)).await
    }

    async fn regions(
        &self,
        request: Request<hayloft_proto::RegionsRequest>,
    ) -> Result<Response<hayloft_proto::RegionsResponse>, Status> {
        let span = request_span("regions", request.metadata());
        traced(&self.cluster, "regions", span, self.regions_inner(request)).await
    }

    async fn adopt_volumes(
        &self,
        request: Request<hayloft_proto::AdoptVolumesRequest>,
    ) -> Result<Response<hayloft_proto::AdoptVolumesResponse>, Status> {
        let span = request_span("adopt_volumes", request.metadata());
        traced(
            &self.cluster,
            "adopt_volumes",
            span,
            self.adopt_volumes_inner(request),
        )
        .await
    }

    async fn capacity(
        &self,
        request: Request<CapacityRequest>,
    ) -> Result<Response<CapacityResponse>, Status> {
        let span = request_span("capacity", request.metadata());
        traced(
            &self.cluster,
            "capacity",
            span,
            self.capacity_inner(request),
        )
        .await
    }

    async fn repair(
        &self,
        request: Request<RepairRequest>,
    ) -> Result<Response<RepairResponse>, Status> {
        let span = request_span("repair", request.metadata());
        traced(&self.cluster, "repair", span, self.repair_inner(request)).await
    }

    async fn forget_volume(
        &self,
        request: Request<ForgetVolumeRequest>,
    ) -> Result<Response<ForgetVolumeResponse>, Status> {
        let span = request_span("forget_volume", request.metadata());
        traced(
            &self.cluster,
            "forget_volume",
            span,
            self.forget_volume_inner(request),
        )
        .await
    }

    async fn remove_replica(
        &self,
        request: Request<RemoveReplicaRequest>,
    ) -> Result<Response<RemoveReplicaResponse>, Status> {
        let span = request_span("remove_replica", request.metadata());
        traced(
            &self.cluster,
            "remove_replica",
            span,
            self.remove_replica_inner(request),
        )
        .await
    }

    async fn add_node(
        &self,
        request: Request<hayloft_proto::AddNodeRequest>,
    ) -> Result<Response<hayloft_proto::Membership>, Status> {
        let span = request_span("add_node", request.metadata());
        let cluster = &self.cluster;
        traced(cluster, "add_node", span, async {
            let hayloft_proto::AddNodeRequest { node_id, addr } = request.into_inner();
            let raft = self.raft()?;
            let membership = crate::consensus::membership::add_node(
                raft,
                node_id,
                &addr,
                ADD_NODE_CATCH_UP,
                &self.repair_settings.credential,
            )
            .await?;
            Ok(Response::new(membership))
        })
        .await
    }

    async fn sign_url(
        &self,
        request: Request<SignUrlRequest>,
    ) -> Result<Response<SignUrlResponse>, Status> {
        let span = request_span("sign_url", request.metadata());
        traced(
            &self.cluster,
            "sign_url",
            span,
            self.sign_url_inner(request),
        )
        .await
    }

    async fn revoke_token(
        &self,
        request: Request<hayloft_proto::RevokeTokenRequest>,
    ) -> Result<Response<hayloft_proto::RevokeTokenResponse>, Status> {
        let span = request_span("revoke_token", request.metadata());
        let cluster = &self.cluster;
        traced(cluster, "revoke_token", span, async {
            if let Some(note) = hayloft_access::grpc::Note::of(request.extensions()) {
                note.target(&request.get_ref().token_id);
            }
            let request = request.into_inner();
            if request.token_id.is_empty() || request.token_id.len() > 128 {
                return Err(Status::invalid_argument(
                    "a token id is 1 to 128 characters (hayloft token create prints it)",
                ));
            }
            cluster
                .revoke_token(&request.token_id, request.expires_at)
                .await
                .map_err(Status::from)?;
            tracing::info!(token = %request.token_id, "token revoked");
            Ok(Response::new(hayloft_proto::RevokeTokenResponse {}))
        })
        .await
    }

    async fn remove_node(
        &self,
        request: Request<hayloft_proto::RemoveNodeRequest>,
    ) -> Result<Response<hayloft_proto::Membership>, Status> {
        let span = request_span("remove_node", request.metadata());
        let cluster = &self.cluster;
        traced(cluster, "remove_node", span, async {
            let raft = self.raft()?;
            let node = request.get_ref().node_id;
            let membership = crate::consensus::membership::remove_node(raft, node).await?;
            Ok(Response::new(membership))
        })
        .await
    }

    /// Answered by every node, leader or not.
    async fn node(
        &self,
        _request: Request<hayloft_proto::NodeRequest>,
    ) -> Result<Response<hayloft_proto::NodeStatus>, Status> {
        Ok(Response::new(self.cluster.node_status()))
    }
}

/// A span carrying the request id the client sent in `x-request-id` (or a
/// new one), shared with the volume server's logs of the same upload.
fn request_span(op: &'static str, metadata: &tonic::metadata::MetadataMap) -> tracing::Span {
    let id = hayloft_proto::request_id(metadata);
    tracing::info_span!("request", op, request_id = %id)
}

/// Runs one call inside its request span, then counts and times it.
async fn traced<T>(
    cluster: &Cluster,
    op: &'static str,
    span: tracing::Span,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let started = std::time::Instant::now();
    let result = match cluster.leader_check() {
        Ok(()) => call.instrument(span.clone()).await,
        Err(error) => Err(error.into()),
    };
    observe(op, &result, started);
    span.in_scope(|| {
        tracing::debug!(
            ok = result.is_ok(),
            micros = started.elapsed().as_micros() as u64,
            "request done"
        )
    });
    result
}

fn observe<T>(op: &'static str, result: &Result<T, Status>, started: std::time::Instant) {
    let status = match result {
        Ok(_) => "OK".to_owned(),
        Err(status) => format!("{:?}", status.code()),
    };
    metrics::counter!("hayloft_directory_requests_total", "op" => op, "status" => status)
        .increment(1);
    metrics::histogram!("hayloft_directory_request_duration_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
}
