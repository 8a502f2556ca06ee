//! Where a volume's copies are (cached), and connections to them.

#[allow(unused_imports)]
use crate::prelude::*;

pub(crate) fn endpoint(credential: &hayloft_proto::Credential, addr: &str) -> Result<Endpoint> {
    // HTTP/2 pings while a call is open: a server that hangs (paused,
    // wedged) fails the call within a few seconds instead of holding it for
    // ever, and the read or upload goes to another copy.
    credential
        .endpoint(addr)
        .map(|e| {
            e.connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(2))
                .keep_alive_timeout(Duration::from_secs(3))
        })
        .map_err(Error::Status)
}

/// How long a client waits for a cluster that is still starting: a directory
/// that refuses connections, or one that answers UNAVAILABLE to `Assign` (no
/// volume server has registered yet). Then it fails with the last error.
pub const STARTUP_WAIT: Duration = Duration::from_secs(10);

/// Retries `call` while it fails with an error that a starting cluster gives
/// (connection refused, UNAVAILABLE), backing off, for at most `wait`
/// ([`STARTUP_WAIT`], or with several regions the failover patience).
pub(crate) async fn while_starting<T, Fut>(wait: Duration, call: impl FnMut() -> Fut) -> Result<T>
where
    Fut: Future<Output = Result<T>>,
{
    use backon::Retryable;
    let deadline = Instant::now() + wait;
    call.retry(hayloft_proto::retry::doubling(
        Duration::from_millis(100),
        Duration::from_secs(1),
    ))
    .sleep(tokio::time::sleep)
    .when(|e| matches!(e, Error::Connect { .. }) || e.code() == Some(Code::Unavailable))
    // No pause that would end past the deadline: then the last error.
    .adjust(|_, pause| pause.filter(|pause| Instant::now() + *pause < deadline))
    .notify(|e, _| tracing::debug!(error = %e, "cluster not ready; waiting"))
    .await
}

impl Client {
    pub(crate) fn volume_client(&self, addr: &str) -> Result<VolumeClient<AuthChannel>> {
        let channel = {
            let mut channels = self.channels.lock();
            match channels.get(addr) {
                Some(channel) => channel.clone(),
                None => {
                    let channel = endpoint(&self.credential, addr)?.connect_lazy();
                    channels.insert(addr.to_owned(), channel.clone());
                    channel
                }
            }
        };
        Ok(VolumeClient::new(self.credential.channel(channel))
            .max_decoding_message_size(hayloft_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(hayloft_proto::MAX_MESSAGE_BYTES))
    }

    /// Where a volume lives in `region` (cached until a read through it
    /// fails).
    pub(crate) async fn locate(
        &self,
        region: usize,
        volume: u32,
        refresh: bool,
    ) -> Result<Vec<ServerLocation>> {
        let region = &self.regions[region];
        if !refresh && let Some(found) = region.locations.lock().get(&volume) {
            return Ok(found.clone());
        }
        let response = region
            .directory
            .call(|mut directory| async move {
                directory
                    .lookup(LookupRequest {
                        volume_ids: vec![volume],
                        blob_ids: vec![],
                    })
                    .await
            })
            .await?;
        let locations = response
            .volumes
            .into_iter()
            .find(|v| v.volume_id == volume)
            .map(|v| v.locations)
            .filter(|l| !l.is_empty())
            .ok_or(Error::NoLocation(volume))?;
        region.locations.lock().insert(volume, locations.clone());
        Ok(locations)
    }

    /// Runs `call` against a server holding the blob's volume, in the
    /// first region that holds it (one region: the directory's), looking
    /// the volume up again if the cached server is unreachable.
    pub(crate) async fn with_volume<T, F, Fut>(&self, blob_id: &str, call: F) -> Result<T>
    where
        F: Fn(VolumeClient<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let volume = blob_id.parse::<BlobId>()?.volume().0;
        self.in_regions(|region| self.with_volume_in(region, volume, &call))
            .await
    }

    /// [`Client::with_volume`] in one region: the volume unknown there,
    /// its copies unreachable or without the blob send the call on to the
    /// next region; the directory unreachable skips the region.
    async fn with_volume_in<T, F, Fut>(
        &self,
        region: usize,
        volume: u32,
        call: &F,
    ) -> Result<T, Miss>
    where
        F: Fn(VolumeClient<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut refresh = false;
        loop {
            let locations = match self.locate(region, volume, refresh).await {
                Ok(locations) => locations,
                Err(e @ Error::NoLocation(_)) => return Err(Miss::NotHere(e)),
                Err(e) => return Err(Miss::directory(e)),
            };
            let mut last_error = None;
            for location in &locations {
                let client = self
                    .volume_client(&location.grpc_addr)
                    .map_err(Miss::Answer)?;
                match call(client).await {
                    // A copy that is down, or whose bytes failed their
                    // checksum: the next copy answers.
                    Err(e)
                        if matches!(
                            e.code(),
                            Some(Code::Unavailable | Code::Unknown | Code::DataLoss)
                        ) || not_here(&e) =>
                    {
                        last_error = Some(e)
                    }
                    // Not in this region (yet): another may have it.
                    Err(e) if e.code() == Some(Code::NotFound) => return Err(Miss::NotHere(e)),
                    Err(e) => return Err(Miss::Answer(e)),
                    Ok(answer) => return Ok(answer),
                }
            }
            if refresh {
                return Err(Miss::NotHere(
                    last_error.unwrap_or(Error::NoLocation(volume)),
                ));
            }
            // Every copy failed: with other regions to ask, a directory
            // that takes no connection is not waited for.
            if self.multi_region()
                && last_error.is_some()
                && let Err(down) = self.check_region(&self.regions[region]).await
            {
                return Err(Miss::Down(down));
            }
            refresh = true;
        }
    }
}

/// True for a server's answer that it holds nothing of the volume (the
/// cached location is stale: it moved, was erasure-coded or decoded), as
/// opposed to a blob it knows is not there.
fn not_here(error: &Error) -> bool {
    matches!(error, Error::Status(status)
        if status.code() == Code::NotFound
            && status.metadata().contains_key(hayloft_proto::VOLUME_NOT_HERE))
}
