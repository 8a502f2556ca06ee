//! Deletes, and the operators' calls: create, list, compact, move and
//! delete volumes.

#[allow(unused_imports)]
use super::*;

impl VolumeService {
    pub(super) async fn delete_inner(
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
        if self.store.handle(blob.volume()).is_err()
            && let Ok(erasure) = self.store.erasure(blob.volume())
        {
            return self.delete_erasure(erasure, blob).await;
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
            // Another region's blob not shipped here yet: deleted where it
            // was created; the tombstone comes back here with its log.
            Err(status)
                if status.code() == tonic::Code::NotFound && self.deletes_elsewhere(blob) =>
            {
                self.delete_foreign(blob).await
            }
            other => other,
        }
    }

    pub(super) async fn delete_local(
        &self,
        blob: BlobId,
    ) -> Result<Response<DeleteResponse>, Status> {
        // A move may replace the volume while the delete waits (Moved): the
        // delete then goes to the volume's new home.
        let mut moved = false;
        for _ in 0..3 {
            let store = Arc::clone(&self.store);
            let result =
                blocking(move || store.delete(blob.volume(), blob.needle, blob.cookie)).await?;
            match result {
                Ok(()) => return Ok(Response::new(DeleteResponse {})),
                Err(Error::Moved(_)) => {
                    moved = true;
                    continue;
                }
                // Gone while the delete waited (a copy replaced by shards,
                // or deleted): the client asks the directory again.
                Err(Error::VolumeNotFound(_)) if moved => break,
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

    pub(super) async fn create_volume_inner(
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

    pub(super) async fn compact_inner(
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

    pub(super) async fn list_volumes_inner(
        &self,
        _request: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        let store = Arc::clone(&self.store);
        let tiering = Arc::clone(&self.tiering);
        let volumes = blocking(move || all_statuses(&store.handles(), &tiering)).await?;
        Ok(Response::new(ListVolumesResponse { volumes }))
    }

    pub(super) async fn move_volume_inner(
        &self,
        request: Request<MoveVolumeRequest>,
    ) -> Result<Response<MoveVolumeResponse>, Status> {
        let request = request.into_inner();
        let id = VolumeId(request.volume_id);
        if request.target == ProtoTier::Cold as i32 && request.share_cold_from.is_empty() {
            self.stays_local_for_regions(id, "moved to the cold tier")?;
        }
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

    pub(super) async fn delete_volume_inner(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        let id = VolumeId(request.get_ref().volume_id);
        // A copy replaced by shards first hands its deletes to the holders
        // (see handoff.rs); it stays paused until its files are gone.
        let handed_over = if request.get_ref().erasure_holders.is_empty() {
            None
        } else {
            self.hand_over_deletes(id, &request.get_ref().erasure_holders)
                .await?
        };
        let deleted = self
            .tiering
            .delete_volume(id, request.get_ref().keep_object)
            .await;
        if let Err(error) = deleted {
            if let Some(volume) = handed_over {
                volume.resume();
            }
            return Err(move_status(error));
        }
        self.replication.forget(request.get_ref().volume_id);
        Ok(Response::new(DeleteVolumeResponse {}))
    }
}

impl VolumeService {
    /// Refuses to take `volume` out of the local tiers (`what`) while other
    /// regions keep it: its copies' log is what they follow, and a cold or
    /// erasure-coded volume has none (ARCHITECTURE.md, "Shipping between
    /// regions").
    pub(super) fn stays_local_for_regions(
        &self,
        volume: VolumeId,
        what: &str,
    ) -> Result<(), Status> {
        if !self.replication.shipped_between_regions(volume.0) {
            return Ok(());
        }
        Err(Status::failed_precondition(format!(
            "volume {volume} is kept by other regions too: it cannot be {what} (other regions follow its copies' log, which a cold or erasure-coded volume does not keep); it stays in a local tier"
        )))
    }
}
