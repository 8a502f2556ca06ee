//! The RPCs of a decode on the volume servers: `EcDecode` on a target
//! (`crate::erasure::decode` does the work) and `EcFence` on a holder.

#[allow(unused_imports)]
use super::*;

use hayloft_proto::{
    DecodeStep, EcDecodeProgress, EcDecodeRequest, EcFenceRequest, EcFenceResponse,
};

pub(super) type DecodeStream =
    tokio_stream::wrappers::ReceiverStream<Result<EcDecodeProgress, Status>>;

/// What a move to cold's steps need (UPLOAD, SHARE_COLD).
struct ColdStep {
    bucket: String,
    prefix: String,
    storage_class: String,
    cold_from: String,
}

/// The last message of UPLOAD and SHARE_COLD: the staged manifest.
fn staged_cold_answer(
    manifest: &hayloft_storage::cold::ColdManifest,
) -> Result<EcDecodeProgress, Status> {
    let bytes = manifest
        .encode(std::path::Path::new("<staged cold manifest>"))
        .map_err(|e| grpc_status(&e, None))?;
    Ok(EcDecodeProgress {
        done: manifest.object_len,
        total: manifest.object_len,
        finished: true,
        cold_manifest: bytes,
        ..EcDecodeProgress::default()
    })
}

impl VolumeService {
    pub(super) async fn ec_decode_inner(
        &self,
        request: Request<EcDecodeRequest>,
    ) -> Result<Response<DecodeStream>, Status> {
        let request = request.into_inner();
        let step = DecodeStep::try_from(request.step).unwrap_or_default();
        let reencode_as = if step == DecodeStep::Reencode {
            let code: hayloft_storage::erasure::Code =
                request
                    .code
                    .parse()
                    .map_err(|e: hayloft_storage::erasure::CodeError| {
                        Status::invalid_argument(e.to_string())
                    })?;
            Some((code, request.max_block))
        } else {
            None
        };
        let job = crate::erasure::DecodeRequest {
            volume: VolumeId(request.volume_id),
            holders: request.holders,
            rate: request.rate,
        };
        let id = job.volume;
        let cold = ColdStep {
            bucket: request.bucket,
            prefix: request.prefix,
            storage_class: request.storage_class,
            cold_from: request.cold_from,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let store = Arc::clone(&self.store);
        let replication = Arc::clone(&self.replication);
        let heartbeat_now = Arc::clone(&self.heartbeat_now);
        let tiering = Arc::clone(&self.tiering);
        // The step goes on if the caller goes away (each is idempotent or
        // starts again from nothing).
        tokio::spawn(async move {
            let last = match step {
                DecodeStep::Build => {
                    crate::erasure::decode::build(store, replication, job, tx.clone()).await
                }
                DecodeStep::Journals => {
                    crate::erasure::decode::apply_journals(store, replication, job).await
                }
                DecodeStep::Activate => blocking(move || store.activate_decoded(id))
                    .await
                    .and_then(|r| r.map_err(|e| grpc_status(&e, None)))
                    .map(|handle| {
                        tracing::info!(volume = %id, "decoded copy served");
                        heartbeat_now.notify_one();
                        EcDecodeProgress {
                            finished: true,
                            needles: handle.stats().needles,
                            ..EcDecodeProgress::default()
                        }
                    }),
                DecodeStep::Abort => {
                    // A move to cold's object and upload go with it.
                    tiering.discard_staged(id).await;
                    blocking(move || store.abort_decoded(id))
                        .await
                        .and_then(|r| r.map_err(|e| grpc_status(&e, None)))
                        .map(|()| EcDecodeProgress {
                            finished: true,
                            ..EcDecodeProgress::default()
                        })
                }
                DecodeStep::Upload => {
                    let progress = tx.clone();
                    tiering
                        .upload_staged(
                            id,
                            &cold.bucket,
                            &cold.prefix,
                            &cold.storage_class,
                            move |done, total| {
                                let _ = progress.try_send(Ok(EcDecodeProgress {
                                    done,
                                    total,
                                    ..EcDecodeProgress::default()
                                }));
                            },
                        )
                        .await
                        .map_err(move_status)
                        .and_then(|manifest| staged_cold_answer(&manifest))
                }
                DecodeStep::ShareCold => tiering
                    .share_staged(id, &cold.cold_from)
                    .await
                    .map_err(move_status)
                    .and_then(|manifest| staged_cold_answer(&manifest)),
                DecodeStep::Reencode => match reencode_as {
                    Some(code) => {
                        crate::erasure::reencode::reencode(
                            store,
                            replication,
                            job,
                            code,
                            tx.clone(),
                        )
                        .await
                    }
                    None => Err(Status::internal("no code for a re-encode")),
                },
                DecodeStep::Unspecified => Err(Status::invalid_argument("no decode step named")),
            };
            let _ = tx.send(last).await;
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    pub(super) async fn ec_fence_inner(
        &self,
        request: Request<EcFenceRequest>,
    ) -> Result<Response<EcFenceResponse>, Status> {
        let request = request.into_inner();
        let id = VolumeId(request.volume_id);
        let volume = self.store.erasure(id).map_err(|e| grpc_status(&e, None))?;
        let token = request.token;
        let release = request.release;
        // Setting the fence waits for deletes in flight (their fsync).
        let held = blocking(move || {
            if release {
                volume.unfence(token)
            } else {
                volume.fence(token)
            }
        })
        .await?;
        tracing::info!(volume = %id, token, release, held, "deletes fenced for a decode");
        Ok(Response::new(EcFenceResponse { held }))
    }
}
