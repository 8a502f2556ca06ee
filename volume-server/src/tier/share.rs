//! Copies of a replicated volume sharing one cold object: its index and
//! tombstones fetched from the copy that uploaded it, and merged.

#[allow(unused_imports)]
use super::*;

impl Tiering {
    /// Fetches the cold files of the copy of volume `id` on `source`.
    pub(super) async fn fetch_cold_index(
        &self,
        id: VolumeId,
        source: &str,
    ) -> Result<hayloft_proto::ColdIndexResponse, MoveError> {
        self.fetch_cold_files(id, source, false).await
    }

    /// Fetches the cold files of the copy of volume `id` on `source`: the
    /// one served, or (`staged`) the one an erasure-coded volume's move to
    /// cold staged there.
    pub(super) async fn fetch_cold_files(
        &self,
        id: VolumeId,
        source: &str,
        staged: bool,
    ) -> Result<hayloft_proto::ColdIndexResponse, MoveError> {
        let unreachable = |e: String| MoveError::Invalid(format!("copy on {source}: {e}"));
        let channel = self
            .settings
            .credential
            .endpoint(source)
            .map_err(|e| unreachable(e.message().to_owned()))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(300))
            .connect()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(hayloft_proto::volume_client::VolumeClient::new(
            self.settings.credential.channel(channel),
        )
        .max_decoding_message_size(usize::MAX)
        .cold_index(hayloft_proto::ColdIndexRequest {
            volume_id: id.0,
            staged,
        })
        .await
        .map_err(|e| unreachable(e.message().to_owned()))?
        .into_inner())
    }

    /// A new cold copy of volume `id`, which this server does not hold, on
    /// the object the cold copy on `source` reads: its files are fetched,
    /// the object is checked against the manifest, then the copy is
    /// installed.
    pub async fn install_cold(&self, id: VolumeId, source: &str) -> Result<(), MoveError> {
        let objects = self.objects()?.clone();
        let reply = self.fetch_cold_index(id, source).await?;
        let label = std::path::PathBuf::from(format!("{source}/{id}.cold"));
        let manifest = ColdManifest::decode(&reply.manifest, &label)?;
        let info = objects
            .head(&manifest.bucket, &manifest.key)
            .await
            .map_err(MoveError::Object)?;
        if info.len != manifest.object_len || info.etag != manifest.etag {
            return Err(MoveError::Mismatch(format!(
                "object {} has {} bytes, ETag {}; its manifest says {} bytes, ETag {}",
                manifest.key, info.len, info.etag, manifest.object_len, manifest.etag
            )));
        }
        let tombstones = hayloft_storage::cold::parse_tombs(&reply.tombstones);
        let store = Arc::clone(&self.store);
        blocking(move || store.install_cold(id, &manifest, &reply.index, &tombstones, &reply.meta))
            .await?;
        tracing::info!(volume = %id, %source, "cold copy installed");
        self.heartbeat_now.notify_one();
        Ok(())
    }

    /// A cold copy catches up with the cold copy on `source` (same object):
    /// every needle deleted there is deleted here. Returns how many were.
    pub async fn merge_cold(&self, id: VolumeId, source: &str) -> Result<usize, MoveError> {
        let cold = self.store.cold_volume(id)?;
        let reply = self.fetch_cold_index(id, source).await?;
        let (manifest_path, _, _) = hayloft_storage::cold::cold_paths(cold.dir(), id);
        let theirs = ColdManifest::decode(&reply.manifest, &manifest_path)?;
        let ours = cold.manifest();
        if (&theirs.bucket, &theirs.key, &theirs.etag) != (&ours.bucket, &ours.key, &ours.etag) {
            return Err(MoveError::Invalid(format!(
                "the copy on {source} is cold on another object ({}/{})",
                theirs.bucket, theirs.key
            )));
        }
        let mut deleted = hayloft_storage::cold::parse_tombs(&reply.tombstones);
        let index = hayloft_storage::cold::parse_index(&reply.index, id, &manifest_path)?;
        deleted.extend(index.iter().filter(|e| e.tombstone).map(|e| e.needle_id));
        let live: std::collections::HashSet<NeedleId> = cold.needle_ids().into_iter().collect();
        deleted.retain(|n| live.contains(n));
        let count = deleted.len();
        blocking(move || {
            for needle in deleted {
                match cold.delete(needle) {
                    Err(e) if e.is_not_found() => {}
                    other => other?,
                }
            }
            Ok(())
        })
        .await?;
        tracing::info!(volume = %id, %source, tombstones = count, "cold copy caught up");
        Ok(count)
    }

    /// Takes this local copy of a replicated volume to cold on the object
    /// that the copy on `source` uploaded: its index and tombstones are
    /// fetched, the object is checked against its manifest, and the store
    /// switches only if every needle live here is in that index.
    pub(super) async fn share_cold(
        &self,
        job: &Arc<JobState>,
        source: &str,
    ) -> Result<(), MoveError> {
        let objects = self.objects()?.clone();
        let id = job.volume;
        job.step("fetching index");
        let reply = self.fetch_cold_index(id, source).await?;
        let volume = self.store.volume(id)?;
        let (manifest_path, _, _) = hayloft_storage::cold::cold_paths(volume.dir(), id);
        let manifest = ColdManifest::decode(&reply.manifest, &manifest_path)?;
        let tombstones = hayloft_storage::cold::parse_tombs(&reply.tombstones);
        job.total.store(manifest.object_len, Ordering::Relaxed);
        job.step("checking object");
        let info = retry_transient(job, || objects.head(&manifest.bucket, &manifest.key)).await?;
        if info.len != manifest.object_len || info.etag != manifest.etag {
            return Err(MoveError::Mismatch(format!(
                "object {} has {} bytes, ETag {}; its manifest says {} bytes, ETag {}",
                manifest.key, info.len, info.etag, manifest.object_len, manifest.etag
            )));
        }
        job.step("switching");
        let sealing = Arc::clone(&volume);
        blocking(move || sealing.seal()).await?;
        drop(volume);
        let store = Arc::clone(&self.store);
        blocking(move || store.adopt_cold(id, &manifest, &reply.index, &tombstones)).await?;
        job.done
            .store(job.total.load(Ordering::Relaxed), Ordering::Relaxed);
        Ok(())
    }

    /// A cold copy's manifest, index and tombstones, byte for byte.
    pub fn cold_files(&self, id: VolumeId) -> Result<hayloft_proto::ColdIndexResponse, Error> {
        let cold = self.store.cold_volume(id)?;
        let (manifest, index, tombs) = hayloft_storage::cold::cold_paths(cold.dir(), id);
        let (_, _, meta) = volume_paths(cold.dir(), id);
        let read = |path: &std::path::Path| match std::fs::read(path) {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io(path, e)),
        };
        Ok(hayloft_proto::ColdIndexResponse {
            manifest: read(&manifest)?,
            index: read(&index)?,
            tombstones: read(&tombs)?,
            meta: read(&meta)?,
        })
    }
}
