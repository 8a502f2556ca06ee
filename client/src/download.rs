//! Reads, stats, deletes and the cluster's status.

#[allow(unused_imports)]
use crate::prelude::*;

impl Client {
    /// Downloads a blob into memory.
    pub async fn download(&self, blob_id: &str) -> Result<(BlobInfo, Bytes)> {
        let mut buffer = Vec::new();
        let info = self.download_to(blob_id, &mut buffer).await?;
        Ok((info, Bytes::from(buffer)))
    }

    /// Streams a blob into `out` chunk by chunk (bounded memory).
    pub async fn download_to(
        &self,
        blob_id: &str,
        out: &mut (impl AsyncWrite + Unpin),
    ) -> Result<BlobInfo> {
        self.download_range_to(blob_id, 0, 0, out).await
    }

    /// Streams `length` bytes (0 = to the end) from `offset` into `out`.
    pub async fn download_range_to(
        &self,
        blob_id: &str,
        offset: u64,
        length: u64,
        out: &mut (impl AsyncWrite + Unpin),
    ) -> Result<BlobInfo> {
        let mut stream = self
            .with_volume(blob_id, |mut client| async move {
                Ok(client
                    .read(ReadRequest {
                        blob_id: blob_id.to_owned(),
                        offset,
                        length,
                    })
                    .await?
                    .into_inner())
            })
            .await?;
        let mut info = None;
        while let Some(message) = stream.message().await? {
            if message.info.is_some() {
                info = message.info;
            }
            out.write_all(&message.chunk).await?;
        }
        out.flush().await?;
        info.ok_or_else(|| Error::Status(tonic::Status::internal("read returned no metadata")))
    }

    /// A blob's metadata.
    pub async fn stat(&self, blob_id: &str) -> Result<BlobInfo> {
        self.with_volume(blob_id, |mut client| async move {
            client
                .stat(StatRequest {
                    blob_id: blob_id.to_owned(),
                })
                .await?
                .into_inner()
                .info
                .ok_or_else(|| Error::Status(tonic::Status::internal("stat returned no metadata")))
        })
        .await
    }

    /// Deletes a blob.
    pub async fn delete(&self, blob_id: &str) -> Result<()> {
        self.with_volume(blob_id, |mut client| async move {
            client
                .delete(DeleteRequest {
                    blob_id: blob_id.to_owned(),
                    ..DeleteRequest::default()
                })
                .await?;
            Ok(())
        })
        .await
    }

    /// The cluster's servers and volumes (with several regions: the local
    /// region's, the first).
    pub async fn status(&self) -> Result<StatusResponse> {
        Ok(self
            .local()
            .directory
            .call(|mut directory| async move { directory.status(StatusRequest {}).await })
            .await?)
    }
}
