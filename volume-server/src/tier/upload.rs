//! A volume to the cold tier: seal, multipart upload (resumable part by
//! part), verify, switch.

#[allow(unused_imports)]
use super::*;

impl Tiering {
    pub(super) async fn to_cold(
        &self,
        job: &Arc<JobState>,
        request: &MoveRequest,
    ) -> Result<(), MoveError> {
        let volume = self.store.volume(job.volume)?;
        job.step("sealing");
        let sealing = Arc::clone(&volume);
        blocking(move || sealing.seal()).await?;
        let object_len = volume.data_len();
        let key = format!("{}{}-{}.dat", request.prefix, job.volume, unix_now());
        let pending = MoveJob::ToCold {
            volume: job.volume.0,
            dir: volume.dir().to_owned(),
            bucket: request.bucket.clone(),
            key,
            storage_class: request.class.clone(),
            part_size: self.settings.part_size,
            object_len,
            upload_id: None,
            parts: Vec::new(),
        };
        let stored = pending.clone();
        blocking(move || stored.store()).await?;
        self.upload(job, pending).await
    }

    /// Uploads (or resumes uploading) a volume's data file, verifies it and
    /// switches the volume to cold.
    pub(super) async fn upload(
        &self,
        job: &Arc<JobState>,
        pending: MoveJob,
    ) -> Result<(), MoveError> {
        let (pending, mut manifest) = self.upload_verified(job, pending).await?;
        job.step("switching");
        let id = job.volume;
        let volume = self.store.volume(id)?;
        manifest.expires_at = volume.expires_at();
        let store = Arc::clone(&self.store);
        blocking(move || store.commit_to_cold(id, &manifest, &pending)).await?;
        Ok(())
    }

    /// Uploads (or resumes uploading) the data file `pending` names and
    /// verifies the object (length and ETag); answers the job as it ended
    /// and the manifest of the object (no expiry: the caller's). On a
    /// mismatch the object and the job file go.
    pub(super) async fn upload_verified(
        &self,
        job: &Arc<JobState>,
        mut pending: MoveJob,
    ) -> Result<(MoveJob, ColdManifest), MoveError> {
        let objects = self.objects()?.clone();
        let MoveJob::ToCold {
            dir,
            bucket,
            key,
            storage_class,
            part_size,
            object_len,
            ..
        } = pending.clone()
        else {
            return Err(MoveError::Invalid("not an upload".into()));
        };
        let id = job.volume;
        let (dat, _, _) = volume_paths(&dir, id);
        let part_count = object_len.div_ceil(part_size).max(1);
        job.total.store(object_len, Ordering::Relaxed);
        job.step("uploading");
        let mut md5s = Vec::with_capacity(part_count as usize);
        let mut throttle = hayloft_storage::Throttle::new(self.settings_rate(job));
        let mut backoffs = backon::BackoffBuilder::build(super::object_store_waits());
        let mut other_errors = 0;
        let mut n = 1u64;
        while n <= part_count {
            let start = (n - 1) * part_size;
            let len = part_size.min(object_len - start);
            let path = dat.clone();
            let mut body = blocking(move || read_range(&path, start, len)).await?;
            let md5 = md5_of(&body);
            if n as usize > md5s.len() {
                md5s.push(md5);
            }
            let already = match &pending {
                MoveJob::ToCold { parts, .. } => parts.iter().any(|p| p.number == n as i32),
                _ => false,
            };
            if already {
                job.done.fetch_add(len, Ordering::Relaxed);
                n += 1;
                continue;
            }
            if hayloft_storage::failpoint::active("tier-corrupt-upload")
                && n == 1
                && !body.is_empty()
            {
                let mut bad = body.to_vec();
                bad[0] ^= 0xff;
                body = Bytes::from(bad);
            }
            let attempt = async {
                let upload_id = match &pending {
                    MoveJob::ToCold {
                        upload_id: Some(u), ..
                    } => u.clone(),
                    _ => {
                        let u = objects.create_upload(&bucket, &key, &storage_class).await?;
                        if let MoveJob::ToCold {
                            upload_id, parts, ..
                        } = &mut pending
                        {
                            *upload_id = Some(u.clone());
                            parts.clear();
                        }
                        u
                    }
                };
                objects
                    .upload_part(&bucket, &key, &upload_id, n as i32, body.clone())
                    .await
            };
            match attempt.await {
                Ok(etag) => {
                    if let MoveJob::ToCold { parts, .. } = &mut pending {
                        parts.push(UploadedPart {
                            number: n as i32,
                            etag,
                        });
                    }
                    let stored = pending.clone();
                    blocking(move || stored.store()).await?;
                    job.done.fetch_add(len, Ordering::Relaxed);
                    backoffs = backon::BackoffBuilder::build(super::object_store_waits());
                    other_errors = 0;
                    if hayloft_storage::failpoint::active("tier-crash-after-part") {
                        tracing::error!("failpoint tier-crash-after-part: exiting");
                        std::process::exit(86);
                    }
                    tokio::time::sleep(throttle.delay_for(len)).await;
                    n += 1;
                }
                Err(ObjectError::NoSuchUpload) => {
                    tracing::warn!(volume = %id, "multipart upload lost; starting over");
                    if let MoveJob::ToCold {
                        upload_id, parts, ..
                    } = &mut pending
                    {
                        *upload_id = None;
                        parts.clear();
                    }
                    job.done.store(0, Ordering::Relaxed);
                    md5s.clear();
                    n = 1;
                }
                Err(e) if e.is_transient() => {
                    job.attempts.fetch_add(1, Ordering::Relaxed);
                    *job.error.lock() = format!("retrying: {e}");
                    // A store that answers but keeps failing the part may
                    // have lost the upload without saying NoSuchUpload
                    // (some servers answer 500): start a new upload.
                    if matches!(e, ObjectError::Other(_)) {
                        other_errors += 1;
                        if other_errors >= 3 {
                            tracing::warn!(volume = %id, "upload keeps failing; starting a new one");
                            if let MoveJob::ToCold {
                                upload_id: Some(u), ..
                            } = &pending
                            {
                                let _ = objects.abort_upload(&bucket, &key, u).await;
                            }
                            if let MoveJob::ToCold {
                                upload_id, parts, ..
                            } = &mut pending
                            {
                                *upload_id = None;
                                parts.clear();
                            }
                            job.done.store(0, Ordering::Relaxed);
                            md5s.clear();
                            other_errors = 0;
                            n = 1;
                            continue;
                        }
                    }
                    // The waits never run out: a transient error is retried
                    // until the store answers (or a new upload starts).
                    let backoff = backoffs.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(volume = %id, part = n, error = %e, ?backoff, "upload part failed; retrying");
                    tokio::time::sleep(backoff).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        job.error.lock().clear();
        job.step("verifying");
        let (upload_id, parts) = match &pending {
            MoveJob::ToCold {
                upload_id: Some(u),
                parts,
                ..
            } => (u.clone(), parts.clone()),
            _ => return Err(MoveError::Invalid("upload without an id".into())),
        };
        let expected = multipart_etag(&md5s);
        let part_list: Vec<(i32, String)> =
            parts.iter().map(|p| (p.number, p.etag.clone())).collect();
        let completed = retry_transient(job, || {
            objects.complete_upload(&bucket, &key, &upload_id, &part_list)
        })
        .await;
        if let Err(e) = completed {
            // The object may exist from an earlier completion (a crash
            // after completing): the HEAD below decides.
            tracing::warn!(volume = %id, error = %e, "completing the upload failed");
        }
        let info = retry_transient(job, || objects.head(&bucket, &key)).await?;
        if info.len != object_len || info.etag != expected {
            let _ = objects.delete(&bucket, &key).await;
            let _ = pending.remove();
            return Err(MoveError::Mismatch(format!(
                "object {key} has {} bytes, ETag {}; expected {object_len} bytes, ETag {expected}",
                info.len, info.etag
            )));
        }
        if hayloft_storage::failpoint::active("tier-crash-before-switch") {
            tracing::error!("failpoint tier-crash-before-switch: exiting");
            std::process::exit(86);
        }
        let manifest = ColdManifest {
            version: hayloft_storage::cold::MANIFEST_VERSION,
            bucket: bucket.clone(),
            key: key.clone(),
            storage_class: info.storage_class.clone(),
            object_len,
            etag: expected,
            part_size,
            uploaded_at: unix_now(),
            expires_at: None,
        };
        Ok((pending, manifest))
    }
}
