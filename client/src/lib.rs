//! A Rust client for hayloft.
//!
//! - [`Client::upload`] / [`Client::upload_file`]: take an id reserved from
//!   the directory (one `Assign` reserves [`RESERVE_IDS`] of them, so a small
//!   upload is one call), stream the bytes to the volume server it names;
//!   retried with a fresh id if that server is down, full or sealed.
//! - [`Client::upload_batch`]: many small blobs, one `WriteBatch` stream per
//!   server, each blob acknowledged (or refused) on its own.
//! - [`Client::download`] / [`Client::download_to`]: look the volume up
//!   (cached) and stream the blob back; a stale location is looked up again.
//! - [`Client::delete`], [`Client::stat`], [`Client::status`].
//!
//! Large blobs stream in [`hayloft_proto::CHUNK_BYTES`] chunks both ways, so
//! memory stays bounded whatever their size.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::future::Either;
use futures::stream::{self, BoxStream, StreamExt};
use hayloft_proto::AuthChannel;
use hayloft_proto::volume_client::VolumeClient;
use hayloft_proto::write_request::Part;
use hayloft_proto::{
    AssignRequest, AssignedBlob, BlobInfo, DeleteRequest, LookupRequest, ReadRequest,
    ServerLocation, StatRequest, StatusRequest, StatusResponse, WriteBatchRequest, WriteHeader,
    WriteRequest,
};
use hayloft_storage::BlobId;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// What can go wrong in a client call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// A server could not be reached.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// A local file could not be read or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The blob id is malformed.
    #[error(transparent)]
    BlobId(#[from] hayloft_storage::types::ParseBlobIdError),
    /// The directory knows no server for the volume.
    #[error("no server holds volume {0}")]
    NoLocation(u32),
    /// An argument is unusable.
    #[error("{0}")]
    InvalidArgument(String),
}

/// A signed URL for `blob_id` (optionally `/<name>` after it, for the
/// browser's sake) under `base` (`https://cdn.example.com`), valid for
/// `ttl` from now, for clients in `bind` only if given. Signed with the
/// ring's signing key: see `hayloft_access::signed_url`.
pub fn sign_url(
    ring: &hayloft_access::Keyring,
    base: &str,
    blob_id: &str,
    name: Option<&str>,
    ttl: Duration,
    bind: Option<ipnet::IpNet>,
) -> Result<String> {
    let blob: BlobId = blob_id.parse()?;
    let path = hayloft_access::signed_url::blob_path(&blob.to_string(), name)
        .map_err(Error::InvalidArgument)?;
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .saturating_add(ttl.as_secs().max(1));
    let query =
        hayloft_access::signed_url::sign_with(ring, &path, expires, bind).ok_or_else(|| {
            Error::InvalidArgument(
                "the key ring names no signing key (signing = \"<key id>\")".into(),
            )
        })?;
    Ok(format!("{}{path}?{query}", base.trim_end_matches('/')))
}

impl Error {
    /// The gRPC code, if the server answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Status(status) => Some(status.code()),
            _ => None,
        }
    }
}

/// Result with the client [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to store an upload.
#[derive(Debug, Clone, Default)]
pub struct UploadOptions {
    /// MIME type to serve it with.
    pub content_type: String,
    /// File name for `Content-Disposition`.
    pub file_name: String,
    /// Collection to write into.
    pub collection: String,
    /// Expire the blob after this long.
    pub ttl: Option<Duration>,
    /// Id to log this upload under on every server (`x-request-id`);
    /// a random one if `None`.
    pub request_id: Option<String>,
}

/// A stored blob.
#[derive(Debug, Clone)]
pub struct Uploaded {
    /// Its id.
    pub blob_id: String,
    /// Its size.
    pub size: u64,
    /// Its strong ETag (quoted).
    pub etag: String,
    /// Its URL on the volume server's HTTP origin.
    pub url: String,
    /// The id the servers logged the upload under.
    pub request_id: String,
}

/// Attempts per upload (each with a fresh id) and per download.
const ATTEMPTS: usize = 4;

/// Ids one `Assign` reserves for the uploads that follow. Ids left unused
/// (the client stops, the volume fills) are simply never used: the
/// directory never hands an id out twice.
pub const RESERVE_IDS: u32 = 64;

/// Largest blob [`Client::upload_batch`] sends in a batch (the server's
/// limit for `WriteBatch`); larger ones are uploaded alone.
pub const BATCH_BLOB_MAX: u64 = 64 << 10;

/// Reserved ids older than this are dropped unused: their volume may have
/// filled, been sealed or lost a copy since.
pub const RESERVATION_MAX_AGE: Duration = Duration::from_secs(30);

/// A hayloft client. Cheap to share: clone-free, all methods take `&self`.
pub struct Client {
    directory: hayloft_proto::Directories,
    channels: Mutex<HashMap<String, Channel>>,
    locations: Mutex<HashMap<u32, Vec<ServerLocation>>>,
    /// Reserved ids per collection. A `tokio` mutex: the uploader that finds
    /// none left makes the one `Assign` the others wait for.
    reserved: tokio::sync::Mutex<HashMap<String, Reservation>>,
    /// The token sent with every call (none: the cluster requires none).
    credential: hayloft_proto::Credential,
}

/// Ids from one `Assign`, all in one volume, used one per upload.
struct Reservation {
    blobs: VecDeque<AssignedBlob>,
    /// The volume's copies as the directory listed them.
    locations: Vec<ServerLocation>,
    volume_id: u32,
    at: Instant,
}

/// One reserved id and where to write it.
struct Slot {
    collection: String,
    blob: AssignedBlob,
    /// Every copy of its volume, the primary for this upload first.
    locations: Vec<ServerLocation>,
}

fn endpoint(credential: &hayloft_proto::Credential, addr: &str) -> Result<Endpoint> {
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

/// The same failure for another blob (errors are not `Clone`).
fn copy_error(error: &Error) -> Error {
    match error {
        Error::Status(status) => Error::Status(tonic::Status::new(
            status.code(),
            status.message().to_owned(),
        )),
        other => Error::Status(tonic::Status::unavailable(other.to_string())),
    }
}

/// Should an upload try again with a new id on another volume? (Not when
/// a rate limit refused it: every volume would.)
fn retry_upload(error: &Error) -> bool {
    if let Error::Status(status) = error
        && status
            .metadata()
            .contains_key(hayloft_access::limits::RETRY_AFTER_MS)
    {
        return false;
    }
    matches!(
        error.code(),
        Some(
            Code::Unavailable
                | Code::ResourceExhausted
                | Code::FailedPrecondition
                | Code::NotFound
                | Code::Unknown
                | Code::Cancelled
        )
    ) || matches!(error, Error::Connect { .. })
}

/// How long a client waits for a cluster that is still starting: a directory
/// that refuses connections, or one that answers UNAVAILABLE to `Assign` (no
/// volume server has registered yet). Then it fails with the last error.
pub const STARTUP_WAIT: Duration = Duration::from_secs(10);

/// Retries `call` while it fails with an error that a starting cluster gives
/// (connection refused, UNAVAILABLE), backing off, for at most
/// [`STARTUP_WAIT`].
async fn while_starting<T, Fut>(mut call: impl FnMut() -> Fut) -> Result<T>
where
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + STARTUP_WAIT;
    let mut pause = Duration::from_millis(100);
    loop {
        match call().await {
            Err(e)
                if (matches!(e, Error::Connect { .. }) || e.code() == Some(Code::Unavailable))
                    && Instant::now() + pause < deadline =>
            {
                tracing::debug!(error = %e, "cluster not ready; waiting");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

impl Client {
    /// Connects to the directory at `addr` ("host:port", or the nodes of a
    /// directory group comma-separated: calls follow its leader), waiting up
    /// to [`STARTUP_WAIT`] for one that is still starting.
    pub async fn connect(addr: &str) -> Result<Client> {
        Client::connect_with(addr, hayloft_proto::Credential::none()).await
    }

    /// As [`Client::connect`], presenting `credential` (a token, and over
    /// TLS the CA to trust and a client certificate) with every call.
    pub async fn connect_with(addr: &str, credential: hayloft_proto::Credential) -> Result<Client> {
        let directory = hayloft_proto::Directories::new(addr)
            .and_then(|d| d.with_credential(credential.clone()))
            .map_err(Error::Status)?;
        let endpoints = directory
            .addrs()
            .iter()
            .map(|a| Ok((a.clone(), endpoint(&credential, a)?)))
            .collect::<Result<Vec<_>>>()?;
        // One node that accepts a connection is enough: it names the leader.
        while_starting(|| async {
            let mut last = None;
            for (addr, endpoint) in &endpoints {
                match endpoint.connect().await {
                    Ok(_) => return Ok(()),
                    Err(source) if hayloft_proto::tls_refusal(&source).is_some() => {
                        let refusal = hayloft_proto::tls_refusal(&source).unwrap_or_default();
                        return Err(Error::Status(tonic::Status::failed_precondition(format!(
                            "{addr}: {refusal}"
                        ))));
                    }
                    Err(source) => {
                        last = Some(Error::Connect {
                            addr: addr.clone(),
                            source,
                        })
                    }
                }
            }
            Err(last.unwrap_or(Error::NoLocation(0)))
        })
        .await?;
        Ok(Client {
            directory,
            channels: Mutex::new(HashMap::new()),
            locations: Mutex::new(HashMap::new()),
            reserved: tokio::sync::Mutex::new(HashMap::new()),
            credential,
        })
    }

    /// The same client, sending `token` (from `hayloft token create`) with
    /// every call: for clusters that require tokens.
    ///
    /// # Errors
    /// A token that cannot travel in a header.
    pub fn with_token(mut self, token: &str) -> Result<Client> {
        self.credential = self.credential.with_token(token).map_err(Error::Status)?;
        self.directory = self
            .directory
            .with_credential(self.credential.clone())
            .map_err(Error::Status)?;
        Ok(self)
    }

    /// Takes a reserved id in `collection`, reserving more at the directory
    /// when none is left (or they are too old).
    async fn take_id(&self, collection: &str, request_id: &str) -> Result<Slot> {
        let mut reserved = self.reserved.lock().await;
        let fresh = reserved.get(collection).is_some_and(|r| {
            !r.blobs.is_empty() && !r.locations.is_empty() && r.at.elapsed() < RESERVATION_MAX_AGE
        });
        if !fresh {
            let assign = AssignRequest {
                count: RESERVE_IDS,
                collection: collection.to_owned(),
                tier: 0,
                ttl_seconds: 0,
            };
            // Right after the cluster starts no volume server may have
            // registered yet: wait for one (bounded).
            let assigned = while_starting(|| async {
                Ok(self
                    .directory
                    .call(|mut directory| {
                        let assign = hayloft_proto::with_request_id(assign.clone(), request_id);
                        async move { directory.assign(assign).await }
                    })
                    .await?)
            })
            .await?;
            let volume_id = match assigned.blobs.first() {
                Some(blob) if !assigned.locations.is_empty() => blob.volume_id,
                _ => {
                    return Err(Error::Status(tonic::Status::internal(
                        "assign returned no id",
                    )));
                }
            };
            reserved.insert(
                collection.to_owned(),
                Reservation {
                    blobs: assigned.blobs.into(),
                    locations: assigned.locations,
                    volume_id,
                    at: Instant::now(),
                },
            );
        }
        let reservation = reserved.get_mut(collection).ok_or(Error::NoLocation(0))?;
        let blob = reservation
            .blobs
            .pop_front()
            .ok_or(Error::NoLocation(reservation.volume_id))?;
        // The copy that orders writes of this id goes first: a server takes
        // a client's write of an id only there. Consecutive ids have
        // consecutive primaries, so forwarding work is shared by the copies.
        let mut locations = reservation.locations.clone();
        let turn = hayloft_proto::primary_index(blob.needle_id, &locations).unwrap_or(0);
        locations.rotate_left(turn);
        Ok(Slot {
            collection: collection.to_owned(),
            blob,
            locations,
        })
    }

    /// Drops the ids reserved in `volume_id`: a write there failed in a way
    /// that says the volume takes no more (full, sealed, a copy down).
    async fn forget_reserved(&self, collection: &str, volume_id: u32) {
        let mut reserved = self.reserved.lock().await;
        if reserved
            .get(collection)
            .is_some_and(|r| r.volume_id == volume_id)
        {
            reserved.remove(collection);
        }
    }

    fn volume_client(&self, addr: &str) -> Result<VolumeClient<AuthChannel>> {
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

    /// Uploads bytes held in memory.
    pub async fn upload(&self, data: Bytes, options: &UploadOptions) -> Result<Uploaded> {
        let size = data.len() as u64;
        self.upload_from(size, options, move || Body::Memory(data.clone()))
            .await
    }

    /// Uploads many blobs: those of at most [`BATCH_BLOB_MAX`] bytes go in
    /// one `WriteBatch` stream per primary server (each acknowledged once
    /// durable on every copy; their writes share group commits), larger ones
    /// one by one. A blob refused for a reason worth retrying (a copy down,
    /// the volume full, the stream cut off) is uploaded again with a
    /// fresh id, in a new batch (up to 4 rounds). Answers come back in the
    /// order of `blobs`.
    pub async fn upload_batch(&self, blobs: Vec<(Bytes, UploadOptions)>) -> Vec<Result<Uploaded>> {
        let mut results: Vec<Option<Result<Uploaded>>> = blobs.iter().map(|_| None).collect();
        let (mut pending, alone): (Vec<usize>, Vec<usize>) =
            (0..blobs.len()).partition(|&i| blobs[i].0.len() as u64 <= BATCH_BLOB_MAX);
        for attempt in 0..ATTEMPTS {
            if pending.is_empty() {
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << (attempt - 1))).await;
            }
            // Fresh ids for every blob of this round, grouped by primary.
            let mut by_server: HashMap<String, Vec<(usize, Slot, WriteBatchRequest)>> =
                HashMap::new();
            let mut unassigned = None;
            for &i in &pending {
                let (data, options) = &blobs[i];
                if let Some(error) = &unassigned {
                    // The directory had no id for the blob before: it has
                    // none for these either (it was waited for already).
                    results[i] = Some(Err(copy_error(error)));
                    continue;
                }
                let request_id = options
                    .request_id
                    .clone()
                    .unwrap_or_else(hayloft_proto::new_request_id);
                match self.take_id(&options.collection, &request_id).await {
                    Ok(slot) => {
                        let request = WriteBatchRequest {
                            seq: i as u64,
                            header: Some(write_header(&slot, data.len() as u64, options)),
                            data: data.clone(),
                        };
                        by_server
                            .entry(slot.locations[0].grpc_addr.clone())
                            .or_default()
                            .push((i, slot, request));
                    }
                    Err(error) => {
                        results[i] = Some(Err(copy_error(&error)));
                        unassigned = Some(error);
                    }
                }
            }
            let batches = by_server
                .into_iter()
                .map(|(addr, items)| self.send_batch(addr, items));
            pending.clear();
            for answers in futures::future::join_all(batches).await {
                for (i, answer) in answers {
                    match answer {
                        Err(error) if retry_upload(&error) && attempt + 1 < ATTEMPTS => {
                            tracing::warn!(%error, attempt, "batched upload failed; retrying with a new id");
                            pending.push(i);
                        }
                        answer => results[i] = Some(answer),
                    }
                }
            }
        }
        for i in alone {
            let (data, options) = &blobs[i];
            results[i] = Some(self.upload(data.clone(), options).await);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(Error::NoLocation(0))))
            .collect()
    }

    /// One `WriteBatch` stream to `addr`: every item's answer, by index. A
    /// blob with no answer (the stream broke) is `Unavailable`.
    async fn send_batch(
        &self,
        addr: String,
        items: Vec<(usize, Slot, WriteBatchRequest)>,
    ) -> Vec<(usize, Result<Uploaded>)> {
        let mut waiting: HashMap<u64, (usize, Slot)> = HashMap::new();
        let mut requests = Vec::with_capacity(items.len());
        for (i, slot, request) in items {
            waiting.insert(request.seq, (i, slot));
            requests.push(request);
        }
        let mut answers = Vec::with_capacity(waiting.len());
        let request_id = hayloft_proto::new_request_id();
        let outcome = async {
            let mut client = self.volume_client(&addr)?;
            let mut responses = client
                .write_batch(hayloft_proto::with_request_id(
                    stream::iter(requests),
                    &request_id,
                ))
                .await?
                .into_inner();
            while let Some(response) = responses.message().await? {
                let Some((i, slot)) = waiting.remove(&response.seq) else {
                    continue;
                };
                let answer = match response.written {
                    Some(written) if response.code == 0 => Ok(Uploaded {
                        url: format!("{}/{}", slot.locations[0].origin_url(), written.blob_id),
                        blob_id: written.blob_id,
                        size: written.size,
                        etag: written.etag,
                        request_id: request_id.clone(),
                    }),
                    _ => {
                        let error = Error::Status(tonic::Status::new(
                            Code::from_i32(response.code),
                            response.message,
                        ));
                        if retry_upload(&error) {
                            self.forget_reserved(&slot.collection, slot.blob.volume_id)
                                .await;
                        }
                        Err(error)
                    }
                };
                answers.push((i, answer));
            }
            Ok::<_, Error>(())
        }
        .await;
        let broke = outcome.err();
        for (_, (i, slot)) in waiting {
            self.forget_reserved(&slot.collection, slot.blob.volume_id)
                .await;
            answers.push((
                i,
                Err(Error::Status(tonic::Status::unavailable(format!(
                    "the batch stream to {addr} ended without an answer for this blob{}",
                    broke.as_ref().map_or(String::new(), |e| format!(": {e}"))
                )))),
            ));
        }
        answers
    }

    /// Uploads a file, streaming it in chunks (bounded memory for any size).
    pub async fn upload_file(&self, path: &Path, options: &UploadOptions) -> Result<Uploaded> {
        let size = tokio::fs::metadata(path).await?.len();
        let path = path.to_owned();
        self.upload_from(size, options, move || {
            Body::Stream(file_chunks(path.clone()))
        })
        .await
    }

    /// Uploads `size` bytes from a source that can be restarted (`body` is
    /// called again for each attempt).
    async fn upload_from(
        &self,
        size: u64,
        options: &UploadOptions,
        body: impl Fn() -> Body + Send + Sync,
    ) -> Result<Uploaded> {
        let mut last_error = None;
        let request_id = options
            .request_id
            .clone()
            .unwrap_or_else(hayloft_proto::new_request_id);
        for attempt in 0..ATTEMPTS {
            let slot = self.take_id(&options.collection, &request_id).await?;
            let header = write_header(&slot, size, options);
            let Slot {
                blob, locations, ..
            } = slot;
            let location = &locations[0];
            let (errors_tx, mut errors_rx) = tokio::sync::oneshot::channel();
            let requests = write_requests(header, body(), errors_tx);
            let result = match self.volume_client(&location.grpc_addr) {
                Ok(mut client) => client
                    .write(hayloft_proto::with_request_id(requests, &request_id))
                    .await
                    .map_err(Error::from),
                Err(e) => Err(e),
            };
            if let Ok(local) = errors_rx.try_recv() {
                return Err(Error::Io(local));
            }
            match result {
                Ok(response) => {
                    let response = response.into_inner();
                    return Ok(Uploaded {
                        url: format!("{}/{}", location.origin_url(), response.blob_id),
                        blob_id: response.blob_id,
                        size: response.size,
                        etag: response.etag,
                        request_id,
                    });
                }
                Err(error) if retry_upload(&error) && attempt + 1 < ATTEMPTS => {
                    tracing::warn!(server = %location.server_id, %error, attempt, "upload failed; retrying with a new id");
                    self.forget_reserved(&options.collection, blob.volume_id)
                        .await;
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                    last_error = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or(Error::NoLocation(0)))
    }

    /// Where a volume lives (cached until a read through it fails).
    async fn locate(&self, volume: u32, refresh: bool) -> Result<Vec<ServerLocation>> {
        if !refresh && let Some(found) = self.locations.lock().get(&volume) {
            return Ok(found.clone());
        }
        let response = self
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
        self.locations.lock().insert(volume, locations.clone());
        Ok(locations)
    }

    /// Runs `call` against a server holding the blob's volume, looking the
    /// volume up again if the cached server is unreachable.
    async fn with_volume<T, F, Fut>(&self, blob_id: &str, call: F) -> Result<T>
    where
        F: Fn(VolumeClient<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let volume = blob_id.parse::<BlobId>()?.volume().0;
        let mut refresh = false;
        loop {
            let locations = self.locate(volume, refresh).await?;
            let mut last_error = None;
            for location in &locations {
                match call(self.volume_client(&location.grpc_addr)?).await {
                    // A copy that is down, or whose bytes failed their
                    // checksum: the next copy answers.
                    Err(e)
                        if matches!(
                            e.code(),
                            Some(Code::Unavailable | Code::Unknown | Code::DataLoss)
                        ) =>
                    {
                        last_error = Some(e)
                    }
                    other => return other,
                }
            }
            if refresh {
                return Err(last_error.unwrap_or(Error::NoLocation(volume)));
            }
            refresh = true;
        }
    }

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

    /// A signed URL for `blob_id` on the HTTP origin of a server holding
    /// it, valid for `ttl` (see [`sign_url`]).
    pub async fn signed_url(
        &self,
        ring: &hayloft_access::Keyring,
        blob_id: &str,
        ttl: Duration,
        bind: Option<ipnet::IpNet>,
    ) -> Result<String> {
        let volume = blob_id.parse::<BlobId>()?.volume().0;
        let locations = self.locate(volume, false).await?;
        let location = locations.first().ok_or(Error::NoLocation(volume))?;
        sign_url(ring, &location.origin_url(), blob_id, None, ttl, bind)
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

    /// A signed URL for `blob_id` signed by the directory (`SignUrl`), for
    /// a client holding a token with the `sign:<collection>` scope but not
    /// the key ring: valid for `ttl`, `/<blob id>/<name>` if named, for
    /// clients in `bind` only if given. The answer's `path` goes after a
    /// CDN's base; its `urls` are the path at each live copy's origin.
    pub async fn request_signed_url(
        &self,
        blob_id: &str,
        ttl: Duration,
        name: Option<&str>,
        bind: Option<ipnet::IpNet>,
    ) -> Result<hayloft_proto::SignUrlResponse> {
        let request = hayloft_proto::SignUrlRequest {
            blob_id: blob_id.to_owned(),
            ttl_seconds: ttl.as_secs().max(1),
            name: name.unwrap_or_default().to_owned(),
            client_network: bind.map(|net| net.to_string()).unwrap_or_default(),
        };
        Ok(self
            .directory
            .call(|mut directory| {
                let request = request.clone();
                async move { directory.sign_url(request).await }
            })
            .await?)
    }

    /// The cluster's servers and volumes.
    pub async fn status(&self) -> Result<StatusResponse> {
        Ok(self
            .directory
            .call(|mut directory| async move { directory.status(StatusRequest {}).await })
            .await?)
    }
}

/// The messages of one `Write` call: the header, then the chunks.
///
/// A task reads the source into a channel of two messages, so memory stays
/// bounded and the stream handed to tonic is `Sync` whatever the source is.
/// A local read error ends the stream early (so the server discards the
/// partial blob) and is handed back through `errors`.
/// The header of a write of `size` bytes under a reserved id.
fn write_header(slot: &Slot, size: u64, options: &UploadOptions) -> WriteHeader {
    WriteHeader {
        blob_id: slot.blob.blob_id.clone(),
        size,
        content_type: options.content_type.clone(),
        file_name: options.file_name.clone(),
        // Counted from the write, not from when the id was reserved.
        expires_at: options
            .ttl
            .map_or(0, |ttl| now_unix().saturating_add(ttl.as_secs().max(1))),
        last_modified: 0,
        // The primary forwards the blob to every other copy.
        replicas: slot.locations.clone(),
        forwarded: false,
        grant: slot.blob.grant.clone(),
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn write_requests(
    header: WriteHeader,
    body: Body,
    errors: tokio::sync::oneshot::Sender<std::io::Error>,
) -> Either<stream::Iter<std::vec::IntoIter<WriteRequest>>, ReceiverStream<WriteRequest>> {
    let header = WriteRequest {
        part: Some(Part::Header(header)),
    };
    let mut chunks = match body {
        // Nothing to read and nothing that can fail: the messages go out
        // as they are (no task, no channel: a small upload costs one call).
        Body::Memory(data) => {
            let mut messages = vec![header];
            for start in (0..data.len()).step_by(hayloft_proto::CHUNK_BYTES) {
                let end = (start + hayloft_proto::CHUNK_BYTES).min(data.len());
                messages.push(WriteRequest {
                    part: Some(Part::Chunk(data.slice(start..end))),
                });
            }
            return Either::Left(stream::iter(messages));
        }
        Body::Stream(chunks) => chunks,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        if tx.send(header).await.is_err() {
            return;
        }
        while let Some(chunk) = chunks.next().await {
            match chunk {
                Ok(chunk) => {
                    if tx
                        .send(WriteRequest {
                            part: Some(Part::Chunk(chunk)),
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = errors.send(e);
                    return;
                }
            }
        }
    });
    Either::Right(ReceiverStream::new(rx))
}

/// The bytes of an upload: in memory, or read as they are sent (a read
/// error ends the upload with that error).
enum Body {
    Memory(Bytes),
    Stream(BoxStream<'static, std::io::Result<Bytes>>),
}

/// A file's contents as a stream of chunks.
fn file_chunks(path: std::path::PathBuf) -> BoxStream<'static, std::io::Result<Bytes>> {
    let state = (None::<tokio::fs::File>, path, false);
    Box::pin(stream::unfold(state, |(file, path, done)| async move {
        if done {
            return None;
        }
        let mut file = match file {
            Some(file) => file,
            None => match tokio::fs::File::open(&path).await {
                Ok(file) => file,
                Err(e) => return Some((Err(e), (None, path, true))),
            },
        };
        let mut buffer = BytesMut::with_capacity(hayloft_proto::CHUNK_BYTES);
        while buffer.len() < hayloft_proto::CHUNK_BYTES {
            match file.read_buf(&mut buffer).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Some((Err(e), (None, path, true))),
            }
        }
        if buffer.is_empty() {
            None
        } else {
            Some((Ok(buffer.freeze()), (Some(file), path, false)))
        }
    }))
}
