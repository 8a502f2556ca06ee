//! Volume creation: the directory's `Assign` (ids in writable volumes,
//! growing a collection when it has too few) and the all-or-none creation
//! of a new volume's copies, shared with the adoption of another region's
//! volumes (`regions.rs`).

use std::sync::Arc;

use hayloft_access::token::Op;
use hayloft_proto::volume_client::VolumeClient;
use hayloft_proto::{
    AssignRequest, AssignResponse, CreateVolumeRequest, DeleteVolumeRequest, ServerLocation, Tier,
};
use hayloft_storage::VolumeId;
use tonic::{Request, Response, Status};

use super::{DirectoryService, MAX_ASSIGN_COUNT};
use crate::cluster::{Cluster, unix_now};
use crate::error::{Error, Result};

/// How long a volume server may take to create a copy of a new volume.
const CREATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Creates one volume of `collection`, a copy on each server placement
/// chose, unless (re-checked under the lock) enough writable ones exist.
/// All copies or none: if one cannot be created, the others are deleted
/// again (best effort; a leftover copy is adopted read-only, never written).
async fn grow(
    cluster: Arc<Cluster>,
    lock: Arc<tokio::sync::Mutex<()>>,
    collection: String,
    tier: Tier,
    wanted: usize,
    credential: hayloft_proto::Credential,
) -> Result<()> {
    let _guard = lock.lock().await;
    if cluster.writable_count(&collection) >= wanted {
        return Ok(());
    }
    let plan = cluster.plan_new_volume(tier, &collection).await?;
    let server_ids: Vec<String> = plan.servers.iter().map(|s| s.server_id.clone()).collect();
    tracing::info!(volume = plan.volume_id.0, servers = ?server_ids, collection, "creating volume");
    if let Err((error, unreachable)) = create_copies(
        &plan.servers,
        plan.volume_id,
        &collection,
        tier,
        &credential,
    )
    .await
    {
        cluster.abandon_volume(plan.volume_id, &unreachable);
        return Err(error);
    }
    cluster
        .register_volume(plan.volume_id, &collection, tier, &server_ids)
        .await
}

/// Creates a copy of `volume_id` on each of `servers` (each told of all of
/// them). All or none: if one cannot be created, those that were are
/// deleted again (best effort) and the error comes back with the servers
/// that failed.
pub(super) async fn create_copies(
    servers: &[ServerLocation],
    volume_id: VolumeId,
    collection: &str,
    tier: Tier,
    credential: &hayloft_proto::Credential,
) -> std::result::Result<(), (Error, Vec<String>)> {
    let create = |server: ServerLocation| {
        let collection = collection.to_owned();
        let replicas = servers.to_vec();
        let credential = credential.clone();
        async move {
            let channel = credential
                .endpoint(&server.grpc_addr)
                .map_err(|e| Error::ServerUnreachable {
                    server: server.server_id.clone(),
                    reason: e.message().to_owned(),
                })?
                .connect()
                .await
                .map_err(|e| Error::ServerUnreachable {
                    server: server.server_id.clone(),
                    reason: e.to_string(),
                })?;
            let mut client = VolumeClient::new(credential.channel(channel));
            client
                .create_volume(CreateVolumeRequest {
                    volume_id: volume_id.0,
                    collection,
                    tier: tier as i32,
                    replicas,
                })
                .await
                .map_err(|e| Error::CreateRefused {
                    server: server.server_id.clone(),
                    volume: volume_id,
                    reason: e.message().to_owned(),
                })?;
            Ok::<_, Error>(client)
        }
    };
    // A hung server (alive to the directory until `dead_after`) must not
    // hold volume creation, and the Assign waiting on it, for ever.
    let created = futures::future::join_all(servers.iter().cloned().map(|server| {
        let server_id = server.server_id.clone();
        let call = create(server);
        async move {
            tokio::time::timeout(CREATE_TIMEOUT, call)
                .await
                .unwrap_or_else(|_| {
                    Err(Error::CreateTimedOut {
                        server: server_id,
                        waited: CREATE_TIMEOUT,
                    })
                })
        }
    }))
    .await;
    let Some(error) = created.iter().find_map(|r| r.as_ref().err()) else {
        return Ok(());
    };
    let error = Error::CannotCreate(error.to_string());
    let unreachable: Vec<String> = servers
        .iter()
        .zip(&created)
        .filter(|(_, r)| r.is_err())
        .map(|(s, _)| s.server_id.clone())
        .collect();
    for mut client in created.into_iter().flatten() {
        let request = DeleteVolumeRequest {
            volume_id: volume_id.0,
            keep_object: false,
            ..Default::default()
        };
        if let Err(e) = client.delete_volume(request).await {
            tracing::warn!(volume = volume_id.0, error = %e.message(),
                "could not delete the copy of a volume whose creation failed");
        }
    }
    Err((error, unreachable))
}

impl DirectoryService {
    pub(super) async fn assign_inner(
        &self,
        request: Request<AssignRequest>,
    ) -> Result<Response<AssignResponse>, Status> {
        if let Some(note) = hayloft_access::grpc::Note::of(request.extensions()) {
            note.collection(hayloft_access::collection_name(
                &request.get_ref().collection,
            ));
        }
        hayloft_access::grpc::require(
            request.extensions(),
            Op::Write,
            &request.get_ref().collection,
        )?;
        let mut request = request.into_inner();
        // `default` and the empty name are one collection (stored as "").
        if request.collection == hayloft_access::DEFAULT_COLLECTION {
            request.collection.clear();
        }
        let count = request.count.max(1);
        if count > MAX_ASSIGN_COUNT {
            return Err(Status::invalid_argument(format!(
                "count {count} is over the limit of {MAX_ASSIGN_COUNT}"
            )));
        }
        let tier = match Tier::try_from(request.tier) {
            Ok(Tier::Warm) => Tier::Warm,
            Ok(Tier::Hot | Tier::Unspecified) => Tier::Hot,
            _ => {
                return Err(Status::invalid_argument(
                    "new volumes can only be hot or warm",
                ));
            }
        };
        let expires_at = match request.ttl_seconds {
            0 => 0,
            ttl => unix_now().saturating_add(ttl),
        };
        for attempt in 0..3 {
            let assigned = self.cluster.assign(&request.collection, count).await?;
            if let Some((mut blobs, locations)) = assigned {
                if let Some(keyring) = &self.grants {
                    let ring = keyring.get();
                    let until = unix_now().saturating_add(self.grant_ttl.as_secs());
                    for blob in &mut blobs {
                        blob.grant = hayloft_access::token::grant(&ring, &blob.blob_id, until)
                            .map_err(|e| Status::failed_precondition(e.to_string()))?;
                    }
                }
                if self.cluster.writable_count(&request.collection) < self.min_writable_volumes {
                    // Grow ahead of need, off the request path.
                    let task = grow(
                        Arc::clone(&self.cluster),
                        Arc::clone(&self.grow),
                        request.collection.clone(),
                        tier,
                        self.min_writable_volumes,
                        self.repair_settings.credential.clone(),
                    );
                    tokio::spawn(async move {
                        if let Err(e) = task.await {
                            tracing::warn!(error = %e, "background volume creation failed");
                        }
                    });
                }
                metrics::counter!("hayloft_directory_ids_assigned_total")
                    .increment(blobs.len() as u64);
                return Ok(Response::new(AssignResponse {
                    blobs,
                    locations,
                    expires_at,
                }));
            }
            tracing::debug!(attempt, collection = %request.collection, "no writable volume, growing");
            grow(
                Arc::clone(&self.cluster),
                Arc::clone(&self.grow),
                request.collection.clone(),
                tier,
                1,
                self.repair_settings.credential.clone(),
            )
            .await?;
        }
        Err(Status::unavailable(
            "no writable volume could be found or created",
        ))
    }
}
