//! The RPCs of erasure-coded volumes: encoding a copy held here (the
//! coordinator's side, in `crate::erasure`), and a holder's side: shards in,
//! installation, shard reads, dropping.

#[allow(unused_imports)]
use super::*;

use hayloft_proto::{
    EcDropRequest, EcDropResponse, EcEncodeProgress, EcEncodeRequest, EcInstallRequest,
    EcInstallResponse, EcReadShardRequest, EcReadShardResponse, EcWriteShardRequest,
    EcWriteShardResponse,
};
use hayloft_storage::erasure::{CHUNK_LEN, Code, EcManifest, Layout, ShardWriter};

/// Largest range one `EcReadShard` returns.
pub const SHARD_READ_MAX: u64 = 16 << 20;

pub(super) type EncodeStream =
    tokio_stream::wrappers::ReceiverStream<Result<EcEncodeProgress, Status>>;

fn shard_index(shard: u32) -> Result<u8, Status> {
    u8::try_from(shard).map_err(|_| Status::invalid_argument(format!("no shard {shard}")))
}

impl VolumeService {
    pub(super) async fn ec_encode_inner(
        &self,
        request: Request<EcEncodeRequest>,
    ) -> Result<Response<EncodeStream>, Status> {
        let request = request.into_inner();
        self.stays_local_for_regions(VolumeId(request.volume_id), "erasure-coded")?;
        let code: Code =
            request
                .code
                .parse()
                .map_err(|e: hayloft_storage::erasure::CodeError| {
                    Status::invalid_argument(e.to_string())
                })?;
        let job = crate::erasure::EncodeRequest {
            volume: VolumeId(request.volume_id),
            code,
            max_block: request.max_block,
            holders: request.holders,
            rate: request.rate,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let store = Arc::clone(&self.store);
        let replication = Arc::clone(&self.replication);
        tokio::spawn(async move {
            let last = match crate::erasure::encode(store, replication, job, tx.clone()).await {
                Ok(manifest) => manifest
                    .encode()
                    .map(|manifest| EcEncodeProgress {
                        done: manifest.len() as u64,
                        total: manifest.len() as u64,
                        manifest,
                    })
                    .map_err(|e| grpc_status(&e, None)),
                Err(status) => Err(status),
            };
            let _ = tx.send(last).await;
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    pub(super) async fn ec_install_inner(
        &self,
        request: Request<EcInstallRequest>,
    ) -> Result<Response<EcInstallResponse>, Status> {
        let request = request.into_inner();
        if request.staged {
            return self.ec_install_staged(request).await;
        }
        let id = VolumeId(request.volume_id);
        let store = Arc::clone(&self.store);
        let holders = request.holders.clone();
        let installed = blocking(move || {
            let label = std::path::Path::new("<EcInstall>");
            let manifest = EcManifest::decode(&request.manifest, label)?;
            let entries = hayloft_storage::sealed::parse_index(&request.index, id, label)?;
            let meta = hayloft_storage::meta::VolumeMeta::decode(&request.meta, label)?;
            let deleted = hayloft_storage::sealed::parse_tombs(&request.tombstones);
            store.install_erasure(id, &manifest, &entries, &meta, &deleted)
        })
        .await?
        .map_err(|e| match e {
            Error::BadFile { .. } => Status::invalid_argument(e.to_string()),
            e => grpc_status(&e, None),
        })?;
        if !holders.is_empty() {
            self.erasure.set_holders(&installed, holders);
        }
        tracing::info!(volume = %id, "erasure-coded volume installed");
        self.heartbeat_now.notify_one();
        Ok(Response::new(EcInstallResponse {}))
    }

    pub(super) async fn ec_write_shard_inner(
        &self,
        request: Request<Streaming<EcWriteShardRequest>>,
    ) -> Result<Response<EcWriteShardResponse>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty shard stream"))?;
        let id = VolumeId(first.volume_id);
        let shard = shard_index(first.shard)?;
        let code: Code = first
            .code
            .parse()
            .map_err(|e: hayloft_storage::erasure::CodeError| {
                Status::invalid_argument(e.to_string())
            })?;
        if first.block_len == 0 || !first.block_len.is_multiple_of(CHUNK_LEN) {
            return Err(Status::invalid_argument(format!(
                "block length {} is not a multiple of {CHUNK_LEN}",
                first.block_len
            )));
        }
        let layout = Layout {
            code,
            data_len: first.data_len,
            block_len: first.block_len,
        };
        let store = Arc::clone(&self.store);
        let staged = first.staged;
        let mut writer: ShardWriter = blocking(move || {
            if staged {
                store.staged_shard_writer(id, shard, layout)
            } else {
                store.shard_writer(id, shard, layout)
            }
        })
        .await?
        .map_err(|e| grpc_status(&e, None))?;
        let mut message = first;
        loop {
            let data = std::mem::take(&mut message.data);
            if !data.is_empty() {
                let (back, written) = blocking(move || {
                    let result = writer.append(&data);
                    (writer, result)
                })
                .await?;
                writer = back;
                written.map_err(|e| match e {
                    Error::BadFile { .. } => Status::invalid_argument(e.to_string()),
                    e => grpc_status(&e, None),
                })?;
            }
            if let Some(digest) = message.digest {
                let store = Arc::clone(&self.store);
                blocking(move || {
                    if staged {
                        store.finish_staged_shard(writer, digest)
                    } else {
                        store.finish_shard(id, shard, writer, digest)
                    }
                })
                .await?
                .map_err(|e| match e {
                    Error::Corrupt { .. } => Status::data_loss(e.to_string()),
                    Error::BadFile { .. } => Status::invalid_argument(e.to_string()),
                    e => grpc_status(&e, None),
                })?;
                tracing::info!(volume = %id, shard, "shard written");
                return Ok(Response::new(EcWriteShardResponse { digest }));
            }
            message = stream.message().await?.ok_or_else(|| {
                Status::invalid_argument("shard stream ended before its digest: nothing kept")
            })?;
        }
    }

    pub(super) async fn ec_read_shard_inner(
        &self,
        request: Request<EcReadShardRequest>,
    ) -> Result<Response<EcReadShardResponse>, Status> {
        let request = request.into_inner();
        let id = VolumeId(request.volume_id);
        let shard = shard_index(request.shard)?;
        if request.length > SHARD_READ_MAX {
            return Err(Status::invalid_argument(format!(
                "read at most {SHARD_READ_MAX} bytes of a shard at a time"
            )));
        }
        let volume = self.store.erasure(id).map_err(|e| grpc_status(&e, None))?;
        let file = volume.shard(shard).ok_or_else(|| {
            Status::not_found(format!("shard {shard} of volume {id} is not here"))
        })?;
        let refused = |e: Error| match e {
            Error::BadFile { .. } => Status::out_of_range(e.to_string()),
            e => grpc_status(&e, None),
        };
        // Cached bytes are read here, with no hand-off to a blocking thread.
        let cached = if request.verified {
            None
        } else {
            file.read_cached(request.offset, request.length)
                .map_err(refused)?
        };
        let data = match cached {
            Some(data) => data,
            None => blocking(move || {
                if request.verified {
                    file.read_verified(file.chunks_of(request.offset, request.length))
                } else {
                    file.read(request.offset, request.length)
                }
            })
            .await?
            .map_err(refused)?,
        };
        Ok(Response::new(EcReadShardResponse { data: data.into() }))
    }

    pub(super) async fn ec_drop_inner(
        &self,
        request: Request<EcDropRequest>,
    ) -> Result<Response<EcDropResponse>, Status> {
        let request = request.into_inner();
        let id = VolumeId(request.volume_id);
        let store = Arc::clone(&self.store);
        if request.staged {
            blocking(move || store.drop_staged_erasure(id))
                .await?
                .map_err(|e| grpc_status(&e, None))?;
            tracing::info!(volume = %id, "staged generation of a re-encode dropped");
            return Ok(Response::new(EcDropResponse {}));
        }
        blocking(move || store.remove_erasure(id))
            .await?
            .map_err(|e| grpc_status(&e, None))?;
        tracing::info!(volume = %id, "erasure-coded volume dropped");
        self.heartbeat_now.notify_one();
        Ok(Response::new(EcDropResponse {}))
    }
}

impl VolumeService {
    pub(super) async fn ec_delete_inner(
        &self,
        request: Request<hayloft_proto::EcDeleteRequest>,
    ) -> Result<Response<hayloft_proto::EcDeleteResponse>, Status> {
        let request = request.into_inner();
        if request.staged {
            return self.ec_delete_staged(request).await;
        }
        let volume = self
            .store
            .erasure(VolumeId(request.volume_id))
            .map_err(|e| grpc_status(&e, None))?;
        if !request.needle_ids.is_empty() {
            // A replaced copy's tombstones: those not live here are skipped.
            let ids: Vec<NeedleId> = request.needle_ids.into_iter().map(NeedleId).collect();
            let deleted = blocking(move || volume.delete_many(&ids))
                .await?
                .map_err(|e| grpc_status(&e, None))?;
            tracing::debug!(
                volume = request.volume_id,
                deleted,
                "tombstones handed over"
            );
            return Ok(Response::new(hayloft_proto::EcDeleteResponse {}));
        }
        let needle = NeedleId(request.needle_id);
        match blocking(move || volume.delete_unfenced(needle)).await? {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(grpc_status(&e, None)),
        }
        Ok(Response::new(hayloft_proto::EcDeleteResponse {}))
    }

    /// A client's delete of a blob of an erasure-coded volume held here:
    /// the cookie checked on the needle, then the needle journaled here and
    /// on every other holder. Acknowledged only once every holder has it;
    /// otherwise UNAVAILABLE naming those not reached, for the client to
    /// retry (the holders reached keep it and answer 404 at once; one that
    /// missed it would serve the blob until the retry reaches it).
    pub(super) async fn delete_erasure(
        &self,
        volume: Arc<hayloft_storage::erasure::EcVolume>,
        blob: BlobId,
    ) -> Result<Response<DeleteResponse>, Status> {
        self.erasure
            .read(&volume, blob)
            .await
            .map_err(|e| grpc_status(&e, Some(blob)))?;
        let id = volume.id();
        let holders = self.erasure.holders_of(&volume);
        let mut missed = Vec::new();
        let local = Arc::clone(&volume);
        match blocking(move || local.delete_unfenced(blob.needle)).await? {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(grpc_status(&e, Some(blob))),
        }
        let mut done = std::collections::HashSet::new();
        for addr in holders {
            if addr.is_empty() || !done.insert(addr.clone()) {
                continue;
            }
            let request = hayloft_proto::EcDeleteRequest {
                volume_id: id.0,
                needle_id: blob.needle.0,
                ..Default::default()
            };
            if let Err(status) = self.send_ec_delete(&addr, request).await {
                tracing::warn!(volume = %id, holder = %addr, %status, "delete not journaled on a holder");
                missed.push(addr);
            }
        }
        if !missed.is_empty() {
            return Err(Status::unavailable(format!(
                "blob {blob} deleted on some holders of its volume; not reached: {}; retry the delete",
                missed.join(", ")
            )));
        }
        Ok(Response::new(DeleteResponse {}))
    }
}

pub(super) type RebuildStream =
    tokio_stream::wrappers::ReceiverStream<Result<hayloft_proto::EcRebuildProgress, Status>>;

impl VolumeService {
    pub(super) async fn ec_files_inner(
        &self,
        request: Request<hayloft_proto::EcFilesRequest>,
    ) -> Result<Response<EcInstallRequest>, Status> {
        let id = VolumeId(request.into_inner().volume_id);
        let volume = self.store.erasure(id).map_err(|e| grpc_status(&e, None))?;
        let holders = self.erasure.holders_of(&volume);
        let files = blocking(move || {
            let dir = volume.dir();
            let (manifest, index, journal) = hayloft_storage::erasure::ec_paths(dir, id);
            let meta = hayloft_storage::erasure::volume::ec_meta_path(dir, id);
            let read = |path: &std::path::Path| {
                std::fs::read(path).map_err(|e| hayloft_storage::Error::io(path, e))
            };
            Ok::<_, Error>(EcInstallRequest {
                volume_id: id.0,
                manifest: read(&manifest)?,
                index: read(&index)?,
                meta: read(&meta)?,
                tombstones: read(&journal)?,
                holders,
                staged: false,
            })
        })
        .await?
        .map_err(|e| grpc_status(&e, None))?;
        Ok(Response::new(files))
    }

    pub(super) async fn ec_journal_inner(
        &self,
        request: Request<hayloft_proto::EcJournalRequest>,
    ) -> Result<Response<hayloft_proto::EcJournalResponse>, Status> {
        let id = VolumeId(request.into_inner().volume_id);
        let volume = self.store.erasure(id).map_err(|e| grpc_status(&e, None))?;
        let tombstones = blocking(move || {
            let (_, _, journal) = hayloft_storage::erasure::ec_paths(volume.dir(), id);
            std::fs::read(&journal).map_err(|e| hayloft_storage::Error::io(&journal, e))
        })
        .await?
        .map_err(|e| grpc_status(&e, None))?;
        Ok(Response::new(hayloft_proto::EcJournalResponse {
            tombstones,
        }))
    }

    pub(super) async fn ec_rebuild_inner(
        &self,
        request: Request<hayloft_proto::EcRebuildRequest>,
    ) -> Result<Response<RebuildStream>, Status> {
        let request = request.into_inner();
        let shard = shard_index(request.shard)?;
        let guard = self.rebuilding.start(VolumeId(request.volume_id), shard)?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let store = Arc::clone(&self.store);
        let replication = Arc::clone(&self.replication);
        let reads = Arc::clone(&self.erasure);
        let heartbeat_now = Arc::clone(&self.heartbeat_now);
        // The rebuild goes on if the caller goes away; a second call finds
        // the shard there, or starts again (nothing half done counts).
        tokio::spawn(async move {
            let job = crate::erasure::RebuildRequest {
                volume: VolumeId(request.volume_id),
                shard,
                source: request.source,
                rate: request.rate,
            };
            let result =
                crate::erasure::rebuild(store, (replication, reads), job, tx.clone()).await;
            drop(guard);
            heartbeat_now.notify_one();
            if let Err(status) = result {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
}
