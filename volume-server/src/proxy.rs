//! Reads of blobs this server holds no copy of: every volume server answers
//! `GET`/`HEAD /<blob id>` for any blob in the cluster, so a CDN can put one
//! hostname in front of all of them.
//!
//! The volume's copies come from the directory (`Lookup`, cached for
//! [`LOCATION_TTL`], looked up again when every cached copy fails). By
//! default the request is proxied to a healthy copy: same method, range and
//! validators, the body streamed through as it arrives (bounded memory
//! whatever the blob's size); a copy that cannot be reached or answers 5xx is
//! skipped for the next. With `remote_reads = "redirect"` the answer is a
//! `307` to the copy's origin instead. A proxied request carries
//! [`PROXIED`], and a server never proxies such a request again (no loops).
//! A copy whose origin serves HTTPS (`ServerLocation.http_tls`) is reached
//! over HTTPS, trusting the cluster's CA (`[tls] ca`).
//!
//! A volume another region allocated (its id's region number, see
//! `hayloft_storage::region`) is looked up in that region's directory
//! group instead (`--regions`), and read from its copies there the same
//! way; such an answer carries [`FromRegion`] (counted as
//! `source="region"`). That region's directory unreachable: 503, like
//! copies that do not answer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hayloft_proto::regions::Regions;
use hayloft_proto::{LookupRequest, ServerLocation, VolumeLocation};
use hayloft_storage::VolumeId;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Header marking a request proxied by another volume server.
pub const PROXIED: &str = "x-hayloft-proxied";

/// Response header naming why a proxied request was refused (the reason
/// of the audit log), so that the server that proxied it logs the same
/// reason; that server takes it out before answering.
pub const REFUSAL: &str = "x-hayloft-refusal";

/// How long a volume's copies are cached.
pub const LOCATION_TTL: Duration = Duration::from_secs(10);

/// How long a copy may take to start answering a proxied read.
const PROXY_TIMEOUT: Duration = Duration::from_secs(10);

/// Request headers passed on to the copy.
const FORWARDED_HEADERS: [header::HeaderName; 7] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::ACCEPT_ENCODING,
];

/// What a server does with a read of a blob it holds no copy of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RemoteReads {
    /// Fetch it from a copy and stream it through (the default).
    Proxy,
    /// Answer `307 Temporary Redirect` to a copy's origin.
    Redirect,
    /// Answer 404, as a server without replication did.
    Off,
}

/// An origin response body: a slice of the local map, or a proxied stream.
pub type Body = http_body_util::Either<
    http_body_util::Full<Bytes>,
    http_body_util::combinators::BoxBody<Bytes, hyper::Error>,
>;

/// Marks (in its extensions) an answer fetched from a copy in another
/// region: that region's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromRegion(pub String);

/// Why a blob could not be read from another copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteMiss {
    /// No live copy of the volume is known.
    Unknown,
    /// Copies are known but none answered, or the directory of the
    /// region that allocated the volume did not answer.
    Unreachable,
}

type Empty = http_body_util::Empty<Bytes>;

/// The HTTP clients of other origins: plain, and over TLS when this server
/// has `[tls]` (rebuilt when its certificates are reloaded: a new CA).
struct Http {
    plain: Client<HttpConnector, Empty>,
    tls: Option<TlsHttp>,
}

/// The HTTPS client, rebuilt when the certificates are reloaded.
struct TlsHttp {
    tls: Arc<hayloft_access::tls::ServerTls>,
    /// The reload generation it was built at, and the client.
    client: Mutex<(u64, HttpsClient)>,
}

/// A client of origins that serve HTTPS.
type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty>;

fn connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector
}

fn tls_client(config: Arc<rustls::ClientConfig>) -> HttpsClient {
    let mut http = connector();
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(Arc::unwrap_or_clone(config))
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(connector)
}

impl Http {
    fn new(tls: Option<Arc<hayloft_access::tls::ServerTls>>) -> Http {
        Http {
            plain: Client::builder(TokioExecutor::new()).build(connector()),
            tls: tls.map(|tls| {
                let (generation, config) = tls.origin_client();
                TlsHttp {
                    tls,
                    client: Mutex::new((generation, tls_client(config))),
                }
            }),
        }
    }

    async fn request(
        &self,
        request: http::Request<Empty>,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        if request.uri().scheme() != Some(&http::uri::Scheme::HTTPS) {
            return self.plain.request(request).await.map_err(|e| e.to_string());
        }
        let Some(TlsHttp { tls, client }) = &self.tls else {
            return Err(
                "the copy serves HTTPS and this server has no [tls] to trust it with".into(),
            );
        };
        let client = {
            let mut current = client.lock();
            let (generation, config) = tls.origin_client();
            if current.0 != generation {
                *current = (generation, tls_client(config));
            }
            current.1.clone()
        };
        client.request(request).await.map_err(|e| e.to_string())
    }
}

/// Finds the copies of volumes and fetches blobs from them.
pub struct RemoteReader {
    mode: RemoteReads,
    server_id: String,
    directory: hayloft_proto::Directories,
    http: Http,
    /// Volume id -> when looked up, and what.
    /// Held for a map lookup or insert, never across an `.await`.
    cache: Mutex<HashMap<u32, (Instant, Located)>>,
    /// The deployment's regions, and a client of each other region's
    /// directory group (in the order of `regions.others`).
    regions: Regions,
    region_directories: Vec<hayloft_proto::Directories>,
    /// (region, volume) -> when looked up, and the copies there
    /// ([`RemoteReader::copies_in`]). Held for a map lookup or insert,
    /// never across an `.await`.
    copies_cache: Mutex<HashMap<(String, u32), Found>>,
}

/// When copies were looked up, and which.
type Found = (Instant, Vec<ServerLocation>);

/// What the directory says of a volume this server holds no copy of.
#[derive(Debug, Clone, Default)]
struct Located {
    /// Its collection as stored (`None`: a directory of an earlier release
    /// did not say).
    collection: Option<String>,
    /// HTTP addresses of healthy copies.
    copies: Vec<ServerLocation>,
    /// The other region whose directory was asked (`None`: this one's).
    region: Option<String>,
    /// That directory did not answer (not cached).
    unreachable: bool,
}

impl RemoteReader {
    /// A reader that looks volumes up at the directory `directory`
    /// ("host:port") and never proxies to `server_id` (this server); over
    /// HTTPS with `tls` (unless its origins serve plain HTTP).
    ///
    /// # Errors
    /// A malformed directory address.
    pub fn new(
        mode: RemoteReads,
        server_id: String,
        directory: &str,
        credential: hayloft_proto::Credential,
        tls: Option<Arc<hayloft_access::tls::ServerTls>>,
    ) -> Result<Self, tonic::Status> {
        let directory = hayloft_proto::Directories::new(directory)?
            .with_credential(credential)?
            .with_patience(Duration::from_secs(5));
        Ok(RemoteReader {
            mode,
            server_id,
            directory,
            http: Http::new(tls),
            cache: Mutex::new(HashMap::new()),
            regions: Regions::single(),
            region_directories: Vec::new(),
            copies_cache: Mutex::new(HashMap::new()),
        })
    }

    /// Reads volumes of the other regions of `regions` from their copies
    /// there, looked up in their directory groups with `credential` (one
    /// key ring per deployment).
    ///
    /// # Errors
    /// A malformed directory address.
    pub fn with_regions(
        mut self,
        regions: Regions,
        credential: &hayloft_proto::Credential,
    ) -> Result<Self, tonic::Status> {
        self.region_directories = regions
            .others
            .iter()
            .map(|region| {
                Ok(
                    hayloft_proto::Directories::new(&region.directory.join(","))?
                        .with_credential(credential.clone())?
                        .with_call_timeout(Duration::from_secs(5))?
                        .with_patience(Duration::from_secs(5)),
                )
            })
            .collect::<Result<_, tonic::Status>>()?;
        self.regions = regions;
        Ok(self)
    }

    /// The other region that allocated `volume` and its directory group,
    /// or `None` if this region did (or a region not configured here).
    fn owner(&self, volume: u32) -> Option<(&str, &hayloft_proto::Directories)> {
        let number = VolumeId(volume).region();
        self.regions
            .others
            .iter()
            .zip(&self.region_directories)
            .find(|(region, _)| region.number == number && number != self.regions.local.number)
            .map(|(region, directory)| (region.name.as_str(), directory))
    }

    /// Whether `volume` was allocated by another region configured here
    /// (reads of it go there).
    pub fn is_foreign(&self, volume: u32) -> bool {
        self.owner(volume).is_some()
    }

    /// The copies of a volume of another region, for a gRPC read: their
    /// gRPC addresses and the region's name.
    ///
    /// # Errors
    /// [`RemoteMiss::Unknown`] (not another region's, or none known),
    /// [`RemoteMiss::Unreachable`] (its directory did not answer).
    pub async fn foreign_copies(
        &self,
        volume: u32,
        refresh: bool,
    ) -> Result<(String, Vec<ServerLocation>), RemoteMiss> {
        let located = self.locate(volume, refresh).await;
        match located.region {
            Some(_) if located.unreachable => Err(RemoteMiss::Unreachable),
            Some(region) if !located.copies.is_empty() => Ok((region, located.copies)),
            _ => Err(RemoteMiss::Unknown),
        }
    }

    /// The copies of `volume` in region `region` (another region's name),
    /// as its directory group answered within [`LOCATION_TTL`] (or now):
    /// their gRPC addresses, for a follower of that region's log.
    ///
    /// # Errors
    /// [`RemoteMiss::Unknown`] (no such region, or it keeps no copy),
    /// [`RemoteMiss::Unreachable`] (its directory did not answer).
    pub async fn copies_in(
        &self,
        region: &str,
        volume: u32,
    ) -> Result<Vec<ServerLocation>, RemoteMiss> {
        let key = (region.to_owned(), volume);
        if let Some((at, copies)) = self.copies_cache.lock().get(&key)
            && at.elapsed() < LOCATION_TTL
        {
            return Ok(copies.clone());
        }
        let Some(directory) = self
            .regions
            .others
            .iter()
            .zip(&self.region_directories)
            .find(|(r, _)| r.name == region)
            .map(|(_, d)| d)
        else {
            return Err(RemoteMiss::Unknown);
        };
        let copies: Vec<ServerLocation> = look_up(directory, volume)
            .await
            .map_err(|_| RemoteMiss::Unreachable)?
            .into_iter()
            .flat_map(|v| v.locations)
            .filter(|l| !l.grpc_addr.is_empty())
            .collect();
        if copies.is_empty() {
            return Err(RemoteMiss::Unknown);
        }
        self.copies_cache
            .lock()
            .insert(key, (Instant::now(), copies.clone()));
        Ok(copies)
    }

    /// Forgets the copies [`RemoteReader::copies_in`] found of `volume` in
    /// `region` (none of them served): the next call looks them up again.
    pub fn forget_copies_in(&self, region: &str, volume: u32) {
        self.copies_cache
            .lock()
            .remove(&(region.to_owned(), volume));
    }

    /// The mode it was configured with.
    pub fn mode(&self) -> RemoteReads {
        self.mode
    }

    /// The collection of `volume` (as stored), if the directory says.
    pub async fn collection(&self, volume: u32) -> Option<String> {
        self.locate(volume, false).await.collection
    }

    async fn locate(&self, volume: u32, refresh: bool) -> Located {
        if !refresh
            && let Some((at, found)) = self.cache.lock().get(&volume)
            && at.elapsed() < LOCATION_TTL
        {
            return found.clone();
        }
        let (directory, region) = match self.owner(volume) {
            Some((region, directory)) => (directory, Some(region.to_owned())),
            None => (&self.directory, None),
        };
        let found = match look_up(directory, volume).await {
            Ok(rows) => {
                let mut found = Located {
                    region: region.clone(),
                    ..Located::default()
                };
                // Server ids are unique within a region only: another
                // region's copies are all someone else.
                let foreign = region.is_some();
                for v in rows {
                    found.collection = v.collection;
                    found.copies.extend(v.locations.into_iter().filter(|l| {
                        (foreign || l.server_id != self.server_id) && !l.http_addr.is_empty()
                    }));
                }
                found
            }
            Err(status) => {
                tracing::warn!(volume, region = region.as_deref().unwrap_or(&self.regions.local.name),
                    error = %status.message(), "directory lookup failed");
                // The region that created the volume does not answer: the
                // copies this region keeps of it, if any, answer instead
                // (ARCHITECTURE.md, "Shipping between regions").
                if region.is_some()
                    && let Some(kept) = self.kept_here(volume).await
                {
                    return kept;
                }
                return Located {
                    unreachable: region.is_some(),
                    region,
                    ..Located::default()
                };
            }
        };
        self.cache
            .lock()
            .insert(volume, (Instant::now(), found.clone()));
        found
    }

    /// The copies this region keeps of another region's volume, as this
    /// region's directory answers (`None`: none, or no answer).
    async fn kept_here(&self, volume: u32) -> Option<Located> {
        let rows = look_up(&self.directory, volume).await.ok()?;
        let mut found = Located::default();
        for v in rows {
            found.collection = v.collection;
            found.copies.extend(
                v.locations
                    .into_iter()
                    .filter(|l| l.server_id != self.server_id && !l.http_addr.is_empty()),
            );
        }
        (!found.copies.is_empty()).then_some(found)
    }

    /// Answers a read of `path` (a blob of `volume`) from another copy,
    /// sending `viewer` (a [`hayloft_access::viewer::VIEWER_HEADER`] value
    /// vouching for the viewer's address) with it if given.
    ///
    /// # Errors
    /// [`RemoteMiss::Unknown`] if the directory knows no live copy of the
    /// volume (404), [`RemoteMiss::Unreachable`] if none answered (503).
    pub async fn read(
        &self,
        volume: u32,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
        viewer: Option<HeaderValue>,
    ) -> Result<http::Response<Body>, RemoteMiss> {
        let mut miss = RemoteMiss::Unknown;
        for refresh in [false, true] {
            let located = self.locate(volume, refresh).await;
            if located.unreachable {
                miss = RemoteMiss::Unreachable;
            }
            let copies = located.copies;
            if self.mode == RemoteReads::Redirect {
                return copies.first().map(|copy| redirect(copy, path)).ok_or(miss);
            }
            for copy in &copies {
                match self
                    .fetch(copy, path, method, headers, viewer.as_ref())
                    .await
                {
                    Ok(mut response) => {
                        if let Some(region) = located.region {
                            response.extensions_mut().insert(FromRegion(region));
                        }
                        return Ok(response);
                    }
                    Err(reason) => {
                        miss = RemoteMiss::Unreachable;
                        tracing::debug!(server = %copy.server_id, %reason, "proxied read failed")
                    }
                }
            }
        }
        Err(miss)
    }

    async fn fetch(
        &self,
        copy: &ServerLocation,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
        viewer: Option<&HeaderValue>,
    ) -> Result<http::Response<Body>, String> {
        let mut request = http::Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", copy.origin_url()))
            .header(PROXIED, HeaderValue::from_static("1"))
            .body(http_body_util::Empty::new())
            .map_err(|e| e.to_string())?;
        if let Some(viewer) = viewer {
            request
                .headers_mut()
                .insert(hayloft_access::viewer::VIEWER_HEADER, viewer.clone());
        }
        for name in FORWARDED_HEADERS
            .iter()
            .chain([&header::HeaderName::from_static(hayloft_proto::REQUEST_ID)])
        {
            if let Some(value) = headers.get(name) {
                request.headers_mut().insert(name.clone(), value.clone());
            }
        }
        let response = tokio::time::timeout(PROXY_TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| format!("no answer within {PROXY_TIMEOUT:?}"))??;
        if response.status().is_server_error() {
            return Err(format!("answered {}", response.status()));
        }
        let (parts, body) = response.into_parts();
        Ok(http::Response::from_parts(
            parts,
            http_body_util::Either::Right(body.boxed()),
        ))
    }
}

/// What `directory` says of `volume`: its rows (normally one).
async fn look_up(
    directory: &hayloft_proto::Directories,
    volume: u32,
) -> Result<Vec<VolumeLocation>, tonic::Status> {
    let answer = directory
        .call(|mut directory| async move {
            directory
                .lookup(LookupRequest {
                    volume_ids: vec![volume],
                    blob_ids: Vec::new(),
                })
                .await
        })
        .await?;
    Ok(answer
        .volumes
        .into_iter()
        .filter(|v| v.volume_id == volume)
        .collect())
}

fn redirect(copy: &ServerLocation, path: &str) -> http::Response<Body> {
    let mut response = http::Response::new(http_body_util::Either::Left(
        http_body_util::Full::new(Bytes::new()),
    ));
    *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    if let Ok(location) = HeaderValue::try_from(format!("{}{path}", copy.origin_url())) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    // The copy may change; a CDN should not remember where it went.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
