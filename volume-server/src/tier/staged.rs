//! An erasure-coded volume's move to cold, on its targets: the data file
//! restored from the shards (staged by a decode's build) uploaded as one
//! object, exactly as a replicated volume's data file goes cold (multipart,
//! each part recorded, verified by length and ETag), then kept as a staged
//! cold copy; the other targets stage cold copies of the same object.
//! Nothing here is served before the directory commits the volume cold
//! (`hayloft_storage::erasure::to_cold`).

#[allow(unused_imports)]
use super::*;

impl Tiering {
    /// Uploads the staged data file of `id` to `bucket` (key under
    /// `prefix`, class `class`), verifies the object and stages the cold
    /// copy. Its progress is a move's (`ListMoves`), and `progress` gets
    /// the bytes uploaded. Answers the staged manifest.
    pub async fn upload_staged(
        &self,
        id: VolumeId,
        bucket: &str,
        prefix: &str,
        class: &str,
        progress: impl Fn(u64, u64) + Send + Sync,
    ) -> Result<ColdManifest, MoveError> {
        self.objects()?;
        if bucket.is_empty() {
            return Err(MoveError::Invalid("a move to cold needs a bucket".into()));
        }
        let class = if class.is_empty() { "STANDARD" } else { class };
        if !hayloft_tiering::object::STORAGE_CLASSES.contains(&class) {
            return Err(MoveError::Invalid(format!("unknown storage class {class}")));
        }
        let store = Arc::clone(&self.store);
        let (staging, object_len) = blocking(move || store.staged_data_file(id)).await?;
        let job = JobState::new(id, Tier::Warm, Tier::Cold, class);
        {
            let mut jobs = self.jobs.lock();
            if jobs
                .get(&id)
                .is_some_and(|j| !j.finished.load(Ordering::Relaxed))
            {
                return Err(MoveError::Invalid(format!("volume {id} is already moving")));
            }
            jobs.insert(id, Arc::clone(&job));
        }
        let pending = MoveJob::ToCold {
            volume: id.0,
            dir: staging,
            bucket: bucket.to_owned(),
            key: format!("{prefix}{id}-{}.dat", unix_now()),
            storage_class: class.to_owned(),
            part_size: self.settings.part_size,
            object_len,
            upload_id: None,
            parts: Vec::new(),
        };
        let stored = pending.clone();
        let uploaded = async {
            blocking(move || stored.store()).await?;
            let upload = self.upload_verified(&job, pending);
            tokio::pin!(upload);
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let (_, manifest) = loop {
                tokio::select! {
                    done = &mut upload => break done?,
                    _ = tick.tick() => progress(
                        job.done.load(Ordering::Relaxed),
                        job.total.load(Ordering::Relaxed),
                    ),
                }
            };
            job.step("staging");
            let store = Arc::clone(&self.store);
            let staged = manifest.clone();
            blocking(move || store.stage_cold(id, staged)).await?;
            Ok::<_, MoveError>(manifest)
        }
        .await;
        match &uploaded {
            Ok(_) => job.step("staged"),
            Err(error) => {
                *job.error.lock() = error.to_string();
                job.step("failed");
            }
        }
        job.finished.store(true, Ordering::Relaxed);
        let manifest = uploaded?;
        let store = Arc::clone(&self.store);
        let staged = blocking(move || {
            store
                .staged_cold_manifest(id)
                .ok_or(Error::VolumeNotFound(id))
        })
        .await?;
        tracing::info!(volume = %id, bucket = %manifest.bucket, key = %manifest.key,
            "erasure-coded volume uploaded and staged cold");
        Ok(staged)
    }

    /// Stages a cold copy of `id` from the staged cold copy on `source`
    /// (gRPC address): its files fetched, the object checked against its
    /// manifest (length and ETag). Answers the manifest.
    pub async fn share_staged(
        &self,
        id: VolumeId,
        source: &str,
    ) -> Result<ColdManifest, MoveError> {
        let objects = self.objects()?.clone();
        let reply = self.fetch_cold_files(id, source, true).await?;
        let label = std::path::PathBuf::from(format!("{source}/decoding/{id}.cold"));
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
        let staged = manifest.clone();
        blocking(move || {
            store.stage_cold_shared(id, &staged, &reply.index, &tombstones, &reply.meta)
        })
        .await?;
        tracing::info!(volume = %id, %source, "cold copy of an erasure-coded volume staged");
        Ok(manifest)
    }

    /// A staged cold copy's files, byte for byte (`ColdIndex` with
    /// `staged`).
    pub fn staged_cold_files(
        &self,
        id: VolumeId,
    ) -> Result<hayloft_proto::ColdIndexResponse, Error> {
        let files = self.store.staged_cold_files(id)?;
        Ok(hayloft_proto::ColdIndexResponse {
            manifest: files.manifest,
            index: files.index,
            tombstones: files.tombstones,
            meta: files.meta,
        })
    }

    /// A move to cold rolled back before its commit: the multipart upload
    /// it left is aborted and the object its staged cold copy names is
    /// deleted (no copy of a committed volume reads it: the directory rolls
    /// back only a move it did not commit). Best effort; the caller then
    /// removes the staged files.
    pub async fn discard_staged(&self, id: VolumeId) {
        let Ok(objects) = self.objects().cloned() else {
            return;
        };
        let store = Arc::clone(&self.store);
        let Ok((upload, manifest)) =
            blocking(move || Ok((store.staged_upload(id), store.staged_cold_manifest(id)))).await
        else {
            return;
        };
        if let Some(MoveJob::ToCold {
            bucket,
            key,
            upload_id: Some(upload_id),
            ..
        }) = upload
        {
            if let Err(error) = objects.abort_upload(&bucket, &key, &upload_id).await {
                tracing::warn!(volume = %id, %error, "multipart upload of a rolled-back move not aborted");
            }
            // A crash after completing the upload leaves an object.
            let _ = objects.delete(&bucket, &key).await;
        }
        if let Some(manifest) = manifest {
            match objects.delete(&manifest.bucket, &manifest.key).await {
                Ok(()) => tracing::info!(volume = %id, key = %manifest.key,
                    "object of a rolled-back move to cold deleted"),
                Err(error) => tracing::warn!(volume = %id, %error,
                    "object of a rolled-back move to cold not deleted"),
            }
        }
    }
}
