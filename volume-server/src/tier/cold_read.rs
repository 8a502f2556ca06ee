//! Reads of cold needles: one ranged GET of the volume's object (a
//! Glacier-class object answers 503 and starts one restore), and deletes.

#[allow(unused_imports)]
use super::*;

pub(super) fn read_range(path: &std::path::Path, start: u64, len: u64) -> Result<Bytes, Error> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, start)
        .map_err(|e| Error::io(path, e))?;
    Ok(Bytes::from(buf))
}

impl Tiering {
    /// Reads a needle of a cold volume: one ranged GET, verified.
    pub async fn read_cold(
        &self,
        volume: &Arc<ColdVolume>,
        id: NeedleId,
        cookie: Cookie,
    ) -> Result<Needle, ColdReadError> {
        let range = volume.locate(id)?;
        let bytes = self.fetch(volume, range).await?;
        Ok(volume.decode(id, cookie, bytes)?)
    }

    pub(super) async fn fetch(
        &self,
        volume: &Arc<ColdVolume>,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, ColdReadError> {
        let objects = self
            .objects
            .as_ref()
            .ok_or_else(|| ColdReadError::Unavailable("no cold store configured".into()))?;
        let manifest = volume.manifest();
        match objects
            .get_range(&manifest.bucket, &manifest.key, range)
            .await
        {
            Ok(bytes) => {
                if self.restores.lock().remove(&volume.id()).is_some() {
                    self.heartbeat_now.notify_one();
                }
                Ok(bytes)
            }
            Err(ObjectError::Archived) => {
                self.request_restore(volume).await;
                Err(ColdReadError::Archived(self.settings.restore_retry_after))
            }
            Err(e) => Err(ColdReadError::Unavailable(e.to_string())),
        }
    }

    /// Starts a restore of an archived volume's object, unless this server
    /// started one within the restore's lifetime.
    pub(super) async fn request_restore(&self, volume: &Arc<ColdVolume>) {
        let Some(objects) = &self.objects else { return };
        let lifetime =
            Duration::from_secs(u64::from(self.settings.restore_days.max(1) as u32) * 86_400);
        {
            let mut restores = self.restores.lock();
            if restores
                .get(&volume.id())
                .is_some_and(|t| t.elapsed() < lifetime)
            {
                return;
            }
            restores.insert(volume.id(), Instant::now());
        }
        let manifest = volume.manifest();
        match objects
            .restore(&manifest.bucket, &manifest.key, self.settings.restore_days)
            .await
        {
            Ok(()) => {
                metrics::counter!("hayloft_tier_restores_started_total").increment(1);
                tracing::info!(volume = %volume.id(), key = %manifest.key, "restore started");
                self.heartbeat_now.notify_one();
            }
            Err(error) => {
                tracing::warn!(volume = %volume.id(), %error, "restore request failed");
                self.restores.lock().remove(&volume.id());
            }
        }
    }

    /// Deletes a needle of a cold volume: the header is fetched to check
    /// the cookie, then the delete is recorded locally.
    pub async fn delete_cold(
        &self,
        volume: &Arc<ColdVolume>,
        id: NeedleId,
        cookie: Cookie,
    ) -> Result<(), ColdReadError> {
        let range = volume.locate(id)?;
        let header_end =
            (range.start + hayloft_storage::format::NEEDLE_HEADER_LEN as u64).min(range.end);
        let bytes = self.fetch(volume, range.start..header_end).await?;
        volume.check_header(id, cookie, &bytes)?;
        let volume = Arc::clone(volume);
        blocking(move || volume.delete(id)).await?;
        Ok(())
    }
}
