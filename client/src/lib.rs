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

#[allow(unused_imports)]
use crate::prelude::*;

mod batch;
mod download;
mod error;
mod locate;
mod reserve;
mod sign;
mod upload;

pub use batch::BATCH_BLOB_MAX;
pub use error::{Error, Result};
pub use locate::STARTUP_WAIT;
pub use reserve::{RESERVATION_MAX_AGE, RESERVE_IDS};
pub use sign::sign_url;
pub use upload::{UploadOptions, Uploaded};

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
}

/// What every room of the client uses (each takes `crate::prelude::*`).
mod prelude {
    pub(crate) use std::collections::{HashMap, VecDeque};
    pub(crate) use std::path::Path;
    pub(crate) use std::time::{Duration, Instant};

    pub(crate) use bytes::{Bytes, BytesMut};
    pub(crate) use futures::future::Either;
    pub(crate) use futures::stream::{self, BoxStream, StreamExt};
    pub(crate) use hayloft_proto::AuthChannel;
    pub(crate) use hayloft_proto::volume_client::VolumeClient;
    pub(crate) use hayloft_proto::write_request::Part;
    pub(crate) use hayloft_proto::{
        AssignRequest, AssignedBlob, BlobInfo, DeleteRequest, LookupRequest, ReadRequest,
        ServerLocation, StatRequest, StatusRequest, StatusResponse, WriteBatchRequest, WriteHeader,
        WriteRequest,
    };
    pub(crate) use hayloft_storage::BlobId;
    pub(crate) use parking_lot::Mutex;
    pub(crate) use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
    pub(crate) use tokio_stream::wrappers::ReceiverStream;
    pub(crate) use tonic::Code;
    pub(crate) use tonic::transport::{Channel, Endpoint};

    pub(crate) use crate::Client;
    pub(crate) use crate::error::*;
    pub(crate) use crate::locate::*;
    pub(crate) use crate::reserve::*;
    pub(crate) use crate::upload::*;
}
