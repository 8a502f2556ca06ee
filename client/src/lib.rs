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
//! - [`Client::connect_regions`]: several regions, the local one first;
//!   each call goes to the first region that serves it, a region that
//!   fails is skipped for a while ([`regions`], `failover.rs`).
//!
//! Large blobs stream in [`hayloft_proto::CHUNK_BYTES`] chunks both ways, so
//! memory stays bounded whatever their size.

#[allow(unused_imports)]
use crate::prelude::*;

mod batch;
mod download;
mod error;
mod failover;
mod locate;
pub mod regions;
mod reserve;
mod sign;
mod upload;

pub use batch::BATCH_BLOB_MAX;
pub use error::{Error, Result};
pub use failover::RegionFailure;
pub use locate::STARTUP_WAIT;
pub use regions::{Failover, RegionDirectory, parse_regions};
pub use reserve::{RESERVATION_MAX_AGE, RESERVE_IDS};
pub use sign::sign_url;
pub use upload::{UploadOptions, Uploaded};

/// A hayloft client. Cheap to share: clone-free, all methods take `&self`.
pub struct Client {
    /// The regions it uses, local first (one for [`Client::connect`]).
    regions: Vec<RegionState>,
    /// Which regions failed lately (see [`regions`]).
    router: Mutex<Router>,
    failover: Failover,
    channels: Mutex<HashMap<String, Channel>>,
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
        while_starting(STARTUP_WAIT, || async {
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
        let region = RegionState::new(hayloft_proto::regions::DEFAULT_REGION.into(), directory);
        Ok(Client::with_regions(vec![region], credential))
    }

    /// Connects to several regions, `regions` in order, the local one
    /// first (see [`parse_regions`] for the text form): each call goes to
    /// the first region that serves it, an upload to the first whose
    /// directory answers (the blob's id is then that region's), a read to
    /// the first that holds the blob. A region that fails is skipped for
    /// [`Failover::skip_for`], then tried again (see [`regions`]).
    ///
    /// Waits up to [`STARTUP_WAIT`] for one region's directory to accept
    /// a connection; those that do not are skipped from the start. One
    /// region behaves exactly as [`Client::connect_with`].
    ///
    /// # Errors
    /// No region given, a bad address, or no region reachable
    /// ([`Error::Regions`], naming each).
    pub async fn connect_regions(
        regions: Vec<RegionDirectory>,
        credential: hayloft_proto::Credential,
    ) -> Result<Client> {
        if regions.len() == 1
            && let Some(region) = regions.first()
        {
            let mut client = Client::connect_with(&region.directory.join(","), credential).await?;
            if let Some(only) = client.regions.first_mut() {
                only.name.clone_from(&region.name);
            }
            return Ok(client);
        }
        if regions.is_empty() {
            return Err(Error::InvalidArgument("no region given".into()));
        }
        let failover = Failover::default();
        let states = regions
            .into_iter()
            .map(|r| {
                let directory = hayloft_proto::Directories::new(&r.directory.join(","))
                    .and_then(|d| d.with_credential(credential.clone()))
                    .map_err(Error::Status)?
                    .with_patience(failover.patience);
                Ok(RegionState::new(r.name, directory))
            })
            .collect::<Result<Vec<_>>>()?;
        let client = Client::with_regions(states, credential);
        // One region that accepts a connection is enough to start; the
        // others are skipped until their time is up.
        while_starting(STARTUP_WAIT, || async {
            let mut failures = Vec::new();
            for (index, region) in client.regions.iter().enumerate() {
                match client.check_region(region).await {
                    Ok(()) => client.router.lock().answered(index),
                    Err(error) => {
                        client.router.lock().failed(index, Instant::now());
                        failures.push(RegionFailure {
                            region: region.name.clone(),
                            error,
                            unreachable: true,
                        });
                    }
                }
            }
            if failures.len() < client.regions.len() {
                Ok(())
            } else {
                Err(Error::Regions(failures))
            }
        })
        .await?;
        Ok(client)
    }

    fn with_regions(regions: Vec<RegionState>, credential: hayloft_proto::Credential) -> Client {
        let failover = Failover::default();
        Client {
            router: Mutex::new(Router::new(regions.len(), failover.skip_for)),
            regions,
            failover,
            channels: Mutex::new(HashMap::new()),
            credential,
        }
    }

    /// The same client failing over as `failover` says (a client of one
    /// region has nowhere to fail over to: it keeps its patience).
    pub fn with_failover(mut self, failover: Failover) -> Client {
        if self.multi_region() {
            for region in &mut self.regions {
                region.directory = region.directory.clone().with_patience(failover.patience);
            }
        }
        self.router = Mutex::new(Router::new(self.regions.len(), failover.skip_for));
        self.failover = failover;
        self
    }

    /// The regions the client uses, in its order (one, `default`, for
    /// [`Client::connect`]).
    pub fn regions(&self) -> Vec<String> {
        self.regions.iter().map(|r| r.name.clone()).collect()
    }

    /// The same client, sending `token` (from `hayloft token create`) with
    /// every call: for clusters that require tokens.
    ///
    /// # Errors
    /// A token that cannot travel in a header.
    pub fn with_token(mut self, token: &str) -> Result<Client> {
        self.credential = self.credential.with_token(token).map_err(Error::Status)?;
        for region in &mut self.regions {
            region.directory = region
                .directory
                .clone()
                .with_credential(self.credential.clone())
                .map_err(Error::Status)?;
        }
        Ok(self)
    }

    /// The local region's directory group (the first region).
    pub(crate) fn local(&self) -> &RegionState {
        &self.regions[0]
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
    pub(crate) use crate::failover::*;
    pub(crate) use crate::locate::*;
    pub(crate) use crate::regions::Router;
    pub(crate) use crate::reserve::*;
    pub(crate) use crate::upload::*;
}
