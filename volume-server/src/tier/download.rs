//! A cold volume back to a local tier: download, verify, switch.

#[allow(unused_imports)]
use super::*;

impl Tiering {
    pub(super) async fn bring_back(
        &self,
        job: &Arc<JobState>,
        cold: &Arc<ColdVolume>,
        request: &MoveRequest,
    ) -> Result<(), MoveError> {
        let objects = self.objects()?.clone();
        let manifest = cold.manifest().clone();
        let id = job.volume;
        job.total.store(manifest.object_len, Ordering::Relaxed);
        // Archived objects are restored first; reads meanwhile answer 503.
        loop {
            let info =
                retry_transient(job, || objects.head(&manifest.bucket, &manifest.key)).await?;
            match info.restore {
                Restore::NotNeeded | Restore::Done => break,
                Restore::Archived => {
                    job.step("restoring");
                    self.request_restore(cold).await;
                }
                Restore::InProgress => job.step("restoring"),
            }
            tokio::time::sleep(self.settings.restore_poll).await;
        }
        let pending = MoveJob::FromCold {
            volume: id.0,
            dir: cold.dir().to_owned(),
            bucket: manifest.bucket.clone(),
            key: manifest.key.clone(),
            committed: false,
            keep_object: request.keep_object,
        };
        let stored = pending.clone();
        blocking(move || stored.store()).await?;
        job.step("downloading");
        let (download, _, _) = moving_paths(cold.dir(), id);
        let result = self
            .download(job, &objects, &manifest, &download, request.rate)
            .await;
        if let Err(e) = result {
            let _ = std::fs::remove_file(&download);
            let _ = pending.remove();
            return Err(e);
        }
        job.step("switching");
        let store = Arc::clone(&self.store);
        if let Err(e) = blocking(move || store.commit_from_cold(id)).await {
            let _ = std::fs::remove_file(&download);
            let _ = pending.remove();
            return Err(e.into());
        }
        self.restores.lock().remove(&id);
        self.finish_from_cold(job, &pending).await
    }

    pub(super) async fn download(
        &self,
        job: &Arc<JobState>,
        objects: &ObjectStore,
        manifest: &ColdManifest,
        path: &std::path::Path,
        rate: u64,
    ) -> Result<(), MoveError> {
        use std::io::Write;
        let mut file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        let mut md5s = Vec::new();
        let mut throttle = hayloft_storage::Throttle::new(rate);
        let mut start = 0;
        while start < manifest.object_len || md5s.is_empty() {
            let end = (start + manifest.part_size).min(manifest.object_len);
            let bytes = retry_transient(job, || {
                objects.get_range(&manifest.bucket, &manifest.key, start..end)
            })
            .await?;
            if bytes.len() as u64 != end - start {
                return Err(MoveError::Mismatch(format!(
                    "short read at {start}: {} bytes",
                    bytes.len()
                )));
            }
            md5s.push(md5_of(&bytes));
            file.write_all(&bytes).map_err(|e| Error::io(path, e))?;
            job.done.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            tokio::time::sleep(throttle.delay_for(bytes.len() as u64)).await;
            start = end;
            if end == manifest.object_len {
                break;
            }
        }
        file.sync_all().map_err(|e| Error::io(path, e))?;
        let etag = multipart_etag(&md5s);
        if etag != manifest.etag {
            return Err(MoveError::Mismatch(format!(
                "downloaded ETag {etag}, manifest says {}",
                manifest.etag
            )));
        }
        Ok(())
    }

    /// After a move back from cold has switched: delete the object, then the job.
    pub(super) async fn finish_from_cold(
        &self,
        job: &Arc<JobState>,
        pending: &MoveJob,
    ) -> Result<(), MoveError> {
        let MoveJob::FromCold {
            bucket,
            key,
            keep_object,
            ..
        } = pending
        else {
            return Err(MoveError::Invalid("not a move from cold".into()));
        };
        if *keep_object {
            // Other copies of the volume still read the object.
            let pending = pending.clone();
            blocking(move || pending.remove()).await?;
            return Ok(());
        }
        job.step("deleting object");
        let objects = self.objects()?;
        retry_transient(job, || objects.delete(bucket, key)).await?;
        let pending = pending.clone();
        blocking(move || pending.remove()).await?;
        Ok(())
    }
}
