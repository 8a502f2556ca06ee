//! The holder's RPCs of a re-encode: the next generation of a volume
//! installed and journaled in its staging folder (`EcInstall` and
//! `EcDelete` with `staged`; shards come by `EcWriteShard` with `staged`),
//! and `EcSwap`, which serves it once the directory committed it
//! (storage's `erasure::reencode` does the work).

#[allow(unused_imports)]
use super::*;

use hayloft_proto::{EcInstallRequest, EcInstallResponse, EcSwapRequest, EcSwapResponse};
use hayloft_storage::erasure::EcManifest;

impl VolumeService {
    /// `EcInstall` with `staged`: the next generation's files staged here.
    pub(super) async fn ec_install_staged(
        &self,
        request: EcInstallRequest,
    ) -> Result<Response<EcInstallResponse>, Status> {
        let id = VolumeId(request.volume_id);
        let store = Arc::clone(&self.store);
        blocking(move || {
            let label = std::path::Path::new("<EcInstall>");
            let manifest = EcManifest::decode(&request.manifest, label)?;
            let entries = hayloft_storage::sealed::parse_index(&request.index, id, label)?;
            let meta = hayloft_storage::meta::VolumeMeta::decode(&request.meta, label)?;
            store.install_staged_erasure(id, &manifest, &entries, &meta, &request.holders)
        })
        .await?
        .map_err(|e| match e {
            Error::BadFile { .. } => Status::invalid_argument(e.to_string()),
            e => grpc_status(&e, None),
        })?;
        tracing::info!(volume = %id, "next generation of a re-encode staged");
        Ok(Response::new(EcInstallResponse {}))
    }

    /// `EcDelete` with `staged`: needles journaled in the staged generation.
    pub(super) async fn ec_delete_staged(
        &self,
        request: hayloft_proto::EcDeleteRequest,
    ) -> Result<Response<hayloft_proto::EcDeleteResponse>, Status> {
        let id = VolumeId(request.volume_id);
        let mut ids: Vec<NeedleId> = request.needle_ids.into_iter().map(NeedleId).collect();
        if request.needle_id != 0 {
            ids.push(NeedleId(request.needle_id));
        }
        let store = Arc::clone(&self.store);
        let deleted = blocking(move || store.delete_staged_erasure(id, &ids))
            .await?
            .map_err(|e| grpc_status(&e, None))?;
        tracing::info!(volume = %id, deleted, "deletes journaled in the staged generation");
        Ok(Response::new(hayloft_proto::EcDeleteResponse {}))
    }

    pub(super) async fn ec_swap_inner(
        &self,
        request: Request<EcSwapRequest>,
    ) -> Result<Response<EcSwapResponse>, Status> {
        let request = request.into_inner();
        let id = VolumeId(request.volume_id);
        if request.digests.is_empty() {
            return Err(Status::invalid_argument(
                "name the digests of the generation to serve",
            ));
        }
        let store = Arc::clone(&self.store);
        let swapped = blocking(move || store.swap_reencoded(id, &request.digests))
            .await?
            .map_err(|e| match e {
                Error::Diverged(_) => Status::failed_precondition(e.to_string()),
                e => grpc_status(&e, None),
            })?;
        tracing::info!(volume = %id, swapped, "re-encoded generation served");
        self.heartbeat_now.notify_one();
        Ok(Response::new(EcSwapResponse { swapped }))
    }
}
