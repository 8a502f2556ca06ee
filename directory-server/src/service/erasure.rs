//! The bodies of the directory's erasure-coding RPCs: `SealVolume` (a
//! volume sealed by hand before an encode), `EncodeVolume`,
//! `DecodeVolume` and `ReencodeVolume`. Each checks and plans before its first message, then
//! runs on a task of its own (see `crate::erasure`).

use std::sync::Arc;

use hayloft_proto::{
    EncodeVolumeProgress, EncodeVolumeRequest, SealVolumeRequest, SealVolumeResponse,
};
use hayloft_storage::VolumeId;
use tonic::{Request, Response, Status};

use super::DirectoryService;

/// `EncodeVolume`'s answer: the plan, progress, the layout.
pub type EncodeVolumeStream =
    tokio_stream::wrappers::ReceiverStream<Result<EncodeVolumeProgress, Status>>;

/// `DecodeVolume`'s answer: the plan, progress, the replicas.
pub type DecodeVolumeStream =
    tokio_stream::wrappers::ReceiverStream<Result<hayloft_proto::DecodeVolumeProgress, Status>>;

/// `ReencodeVolume`'s answer: the plan, progress, the bytes after.
pub type ReencodeVolumeStream =
    tokio_stream::wrappers::ReceiverStream<Result<hayloft_proto::ReencodeVolumeProgress, Status>>;

impl DirectoryService {
    /// Seals a volume by hand (`crate::seal`), waiting for the copies'
    /// reports up to three pulses (ten seconds at least).
    pub(super) async fn seal_volume_inner(
        &self,
        request: Request<SealVolumeRequest>,
    ) -> Result<Response<SealVolumeResponse>, Status> {
        let volume = VolumeId(request.into_inner().volume_id);
        let patience = std::time::Duration::from_secs(u64::from(self.pulse_seconds) * 3)
            .max(std::time::Duration::from_secs(10));
        let answer = crate::seal::seal_volume(
            &self.cluster,
            volume,
            &self.repair_settings.credential,
            patience,
        )
        .await?;
        Ok(Response::new(answer))
    }

    /// Plans the encode (refusing what cannot be encoded before any
    /// message), answers the plan, and, unless it is a dry run, runs the
    /// encode on a task of its own that streams its progress.
    pub(super) async fn encode_volume_inner(
        &self,
        request: Request<EncodeVolumeRequest>,
    ) -> Result<Response<EncodeVolumeStream>, Status> {
        let request = request.into_inner();
        let collection = self
            .cluster
            .volume_collection(VolumeId(request.volume_id))
            .unwrap_or_default();
        let default_code = self.ec_codes.for_collection(&collection);
        let planned = crate::erasure::encode::plan(&self.cluster, &request, default_code)?;
        let first = EncodeVolumeProgress {
            plan: Some(planned.plan.clone()),
            ..EncodeVolumeProgress::default()
        };
        if request.dry_run {
            return Ok(plan_only(first).await);
        }
        let guard = self.encoding.start(planned.source.volume_id)?;
        tracing::info!(volume = request.volume_id, code = %planned.code,
            holders = ?planned.plan.holders.iter().map(|h| &h.server_id).collect::<Vec<_>>(),
            "erasure coding a volume");
        let (cluster, credential) = (
            Arc::clone(&self.cluster),
            self.repair_settings.credential.clone(),
        );
        Ok(spawn_run(first, |sender| {
            crate::erasure::encode::run(cluster, planned, request.rate, credential, sender, guard)
        })
        .await)
    }

    /// Plans the decode (refusing what cannot be decoded before any
    /// message), answers the plan, and, unless it is a dry run, runs the
    /// decode on a task of its own that streams its progress.
    pub(super) async fn decode_volume_inner(
        &self,
        request: Request<hayloft_proto::DecodeVolumeRequest>,
    ) -> Result<Response<DecodeVolumeStream>, Status> {
        let request = request.into_inner();
        let planned = crate::erasure::decode::plan(&self.cluster, &request)?;
        let first = hayloft_proto::DecodeVolumeProgress {
            plan: Some(planned.plan.clone()),
            step: "plan".into(),
            ..Default::default()
        };
        if request.dry_run {
            return Ok(plan_only(first).await);
        }
        let guard = self.encoding.start(planned.source.volume_id).map_err(|_| {
            crate::error::Error::NotDecodable {
                volume: planned.source.volume_id,
                why: "an encode or decode of it is under way".into(),
            }
        })?;
        tracing::info!(volume = request.volume_id,
            targets = ?planned.plan.targets.iter().map(|t| &t.server_id).collect::<Vec<_>>(),
            "decoding an erasure-coded volume");
        let (cluster, credential) = (
            Arc::clone(&self.cluster),
            self.repair_settings.credential.clone(),
        );
        Ok(spawn_run(first, |sender| {
            crate::erasure::decode::run(cluster, planned, request.rate, credential, sender, guard)
        })
        .await)
    }

    /// Plans the re-encode (refusing what cannot be re-encoded before any
    /// message), answers the plan, and, unless it is a dry run, runs it on
    /// a task of its own that streams its progress.
    pub(super) async fn reencode_volume_inner(
        &self,
        request: Request<hayloft_proto::ReencodeVolumeRequest>,
    ) -> Result<Response<ReencodeVolumeStream>, Status> {
        let request = request.into_inner();
        let planned = crate::erasure::reencode::plan(&self.cluster, &request)?;
        let first = hayloft_proto::ReencodeVolumeProgress {
            plan: Some(planned.plan.clone()),
            step: "plan".into(),
            ..Default::default()
        };
        if request.dry_run {
            return Ok(plan_only(first).await);
        }
        let guard = self.encoding.start(planned.source.volume_id).map_err(|_| {
            crate::error::Error::NotReencodable {
                volume: planned.source.volume_id,
                why: "an encode, decode or re-encode of it is under way".into(),
            }
        })?;
        tracing::info!(volume = request.volume_id,
            target = ?planned.plan.target.as_ref().map(|t| &t.server_id),
            "re-encoding an erasure-coded volume without its deleted needles");
        let (cluster, credential) = (
            Arc::clone(&self.cluster),
            self.repair_settings.credential.clone(),
        );
        Ok(spawn_run(first, |sender| {
            crate::erasure::reencode::run(cluster, planned, request.rate, credential, sender, guard)
        })
        .await)
    }
}

type Sender<T> = tokio::sync::mpsc::Sender<Result<T, Status>>;
type Stream<T> = tokio_stream::wrappers::ReceiverStream<Result<T, Status>>;

/// A dry run's answer: the plan alone.
async fn plan_only<T>(first: T) -> Response<Stream<T>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    let _ = sender.send(Ok(first)).await;
    Response::new(Stream::new(receiver))
}

/// The answer of a job that runs: the plan first, then whatever `run`
/// (spawned on a task of its own, so that a caller going away does not
/// stop it half way) sends.
async fn spawn_run<T, F>(first: T, run: impl FnOnce(Sender<T>) -> F) -> Response<Stream<T>>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    let _ = sender.send(Ok(first)).await;
    tokio::spawn(run(sender));
    Response::new(Stream::new(receiver))
}
