//! The HTTP origin the CDN reads from: `GET`/`HEAD /<blob id>` and
//! `/<blob id>/<file name>`, with single byte ranges, strong ETags and the
//! conditional requests of RFC 9110 (sections 13 and 14).
//!
//! The body is a zero-copy slice of the mmapped volume: no lock is held while
//! a slow client drains it.

mod audit;
mod conditional;
mod counts;
mod handler;
mod response;
pub mod viewer;

#[allow(unused_imports)]
use audit::*;
#[allow(unused_imports)]
use conditional::*;
#[allow(unused_imports)]
use counts::*;
pub(crate) use handler::denied;
#[allow(unused_imports)]
use handler::*;
pub(crate) use response::plain;
#[allow(unused_imports)]
use response::*;

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hayloft_storage::{
    BlobId, ColdVolume, DiskRead, Hint, NeedleInfo, NeedlePart, Part, ReadPlan, Store, Volume,
};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::disk_reads::{DiskReads, ReadError, Source};
use crate::error::{cold_http, etag, http_status};
use crate::tier::ColdReadError;
/// An origin response: the body is one chunk (a slice of the volume map),
/// or a stream proxied from another copy.
pub type Response = http::Response<crate::proxy::Body>;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How often an HTTP thread publishes the counts it keeps.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(100);

/// How long a shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What every origin request shares.
#[derive(Clone)]
pub struct HttpState {
    store: Arc<Store>,
    tiering: Arc<crate::tier::Tiering>,
    cache_control: HeaderValue,
    metrics: HttpMetrics,
    /// The runtime cold reads run on (where the object store client lives).
    main: tokio::runtime::Handle,
    /// Reads of blobs held by other servers.
    remote: Option<Arc<crate::proxy::RemoteReader>>,
    /// Reads that wait for the disk (shared with gRPC).
    disk: Arc<DiskReads>,
    /// Blobs up to this size are checksummed on every read.
    verify_up_to: u64,
    /// Signed collections and the key ring (none: every blob is public).
    access: Option<Arc<crate::access::OriginAccess>>,
    /// Requests per client address (none: no limit).
    limits: Option<Arc<hayloft_access::limits::RateLimits>>,
    /// The audit log (none: no audit log).
    audit: Option<Arc<hayloft_access::audit::AuditLog>>,
    /// TLS (none, or an origin that serves plain HTTP: plain HTTP).
    tls: Option<Arc<hayloft_access::tls::ServerTls>>,
    /// Reads of erasure-coded volumes held here.
    erasure: Arc<crate::erasure::ErasureReads>,
}

impl HttpState {
    /// The origin over `store`, reading cold volumes through `tiering`, with
    /// `Cache-Control: public, max-age=<cache_max_age>, immutable` on blobs.
    /// Registers its metrics, so the process's recorder must be installed;
    /// cold reads will run on the runtime this is called from.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn new(
        store: Arc<Store>,
        tiering: Arc<crate::tier::Tiering>,
        cache_max_age: Duration,
    ) -> Self {
        HttpState {
            store,
            tiering,
            cache_control: cache_control(cache_max_age),
            metrics: HttpMetrics::new(),
            main: tokio::runtime::Handle::current(),
            remote: None,
            disk: Arc::new(DiskReads::new(
                Default::default(),
                tokio::runtime::Handle::current(),
            )),
            verify_up_to: 0,
            access: None,
            tls: None,
            limits: None,
            audit: None,
            erasure: Arc::new(crate::erasure::ErasureReads::local()),
        }
    }

    /// Reads needles of erasure-coded volumes held here through `erasure`
    /// (the holders it knows, and restores).
    pub fn with_erasure(mut self, erasure: Arc<crate::erasure::ErasureReads>) -> Self {
        self.erasure = erasure;
        self
    }

    /// Reads from disk through `disk` (the pool gRPC reads share).
    pub fn with_disk_reads(mut self, disk: Arc<DiskReads>) -> Self {
        self.disk = disk;
        self
    }

    /// Logs refusals, and reads as the log's `reads` says, to `audit`.
    pub fn with_audit(mut self, audit: Option<Arc<hayloft_access::audit::AuditLog>>) -> Self {
        self.audit = audit;
        self
    }

    /// Serves HTTPS with `tls`'s certificate (unless it says `origin =
    /// false`).
    pub fn with_tls(mut self, tls: Option<Arc<hayloft_access::tls::ServerTls>>) -> Self {
        self.tls = tls;
        self
    }

    /// Counts requests per client against `limits` (429 past them).
    pub fn with_limits(mut self, limits: Option<Arc<hayloft_access::limits::RateLimits>>) -> Self {
        self.limits = limits;
        self
    }

    /// Serves blobs of signed collections only to requests with a valid
    /// signed URL (see [`crate::access`]).
    pub fn with_access(mut self, access: Arc<crate::access::OriginAccess>) -> Self {
        self.access = Some(access);
        self
    }

    /// Checksums blobs of up to `bytes` on every read (a corrupt one is
    /// read from another copy, or answers 500; never wrong bytes).
    pub fn with_verified_reads(mut self, bytes: u64) -> Self {
        self.verify_up_to = bytes;
        self
    }

    /// Answers reads of blobs this server holds no copy of through `remote`
    /// (proxied or redirected to a copy).
    pub fn with_remote(mut self, remote: Arc<crate::proxy::RemoteReader>) -> Self {
        self.remote = (remote.mode() != crate::proxy::RemoteReads::Off).then_some(remote);
        self
    }
}

/// The `Cache-Control` value for blobs: they never change once written.
pub fn cache_control(max_age: Duration) -> HeaderValue {
    HeaderValue::from_str(&format!("public, max-age={}, immutable", max_age.as_secs()))
        .unwrap_or(HeaderValue::from_static("public, immutable"))
}

/// Serves HTTP/1.1 on `listener` with `threads` threads (0: one per core)
/// until `stop` turns true, then lets the requests in flight finish (for at
/// most ten seconds).
///
/// Like nginx's workers, each thread runs its own single-threaded event
/// loop, and a connection lives on one thread: no work stealing or
/// cross-thread wake-ups on the read path. The caller's runtime accepts and
/// deals connections out in turn. hyper drives each connection; the one
/// route needs no router. A request for a local blob is answered without
/// leaving the connection's task and without a lock held while the body
/// drains; cold reads (S3 requests) run on the caller's runtime, where the
/// object store client lives.
pub async fn serve(
    listener: TcpListener,
    state: Arc<HttpState>,
    threads: usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let mut workers = Vec::with_capacity(threads);
    let mut finished = Vec::with_capacity(threads);
    for i in 0..threads {
        let (connections, incoming) = tokio::sync::mpsc::unbounded_channel();
        // A copy per thread: the per-request reference counting stays in
        // this core's cache.
        let state = Arc::new(HttpState::clone(&state));
        let (done, finished_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("hayloft-http-{i}"))
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map(|runtime| runtime.block_on(worker(incoming, state)));
                let _ = done.send(result);
            })?;
        workers.push(connections);
        finished.push(finished_rx);
    }
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stopped);
    for next in (0..threads).cycle() {
        let tcp = tokio::select! {
            tcp = hayloft_access::tls::accept(&listener, "HTTP") => tcp,
            () = &mut stopped => break,
        };
        // Deregistered here, registered again by the worker's event loop.
        match tcp.into_std() {
            Ok(tcp) => {
                if workers[next].send(tcp).is_err() {
                    return Err(std::io::Error::other("an HTTP thread stopped"));
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot hand a connection over"),
        }
    }
    drop(listener);
    drop(workers);
    for finished in finished {
        finished
            .await
            .map_err(|_| std::io::Error::other("an HTTP thread panicked"))??;
    }
    Ok(())
}

/// One HTTP thread: serves the connections it is handed until the sender
/// goes (the server stops), then waits for the requests in flight.
async fn worker(
    mut incoming: tokio::sync::mpsc::UnboundedReceiver<std::net::TcpStream>,
    state: Arc<HttpState>,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let publisher = tokio::spawn({
        let state = Arc::clone(&state);
        async move {
            let mut every = tokio::time::interval(PUBLISH_INTERVAL);
            loop {
                every.tick().await;
                state.publish();
            }
        }
    });
    while let Some(tcp) = incoming.recv().await {
        let peer = tcp.peer_addr().ok().map(|a| a.ip());
        let tcp = match tokio::net::TcpStream::from_std(tcp) {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "cannot serve an HTTP connection");
                continue;
            }
        };
        let ended = |result: Result<(), hyper::Error>| {
            if let Err(e) = result {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        };
        let acceptor = state.tls.as_ref().and_then(|tls| tls.origin_acceptor());
        let state = Arc::clone(&state);
        let service = hyper::service::service_fn(move |request| {
            let state = Arc::clone(&state);
            async move { Ok::<_, Infallible>(handle(state, request, peer).await) }
        });
        match acceptor {
            None => {
                let connection =
                    graceful.watch(builder.serve_connection(TokioIo::new(tcp), service));
                tokio::spawn(async move { ended(connection.await) });
            }
            Some(acceptor) => {
                // The handshake in the connection's own task: a slow client
                // holds up no one.
                let watcher = graceful.watcher();
                let builder = builder.clone();
                tokio::spawn(async move {
                    if let Some(tls) = hayloft_access::tls::handshake(&acceptor, tcp, "http").await
                    {
                        let connection = builder.serve_connection(TokioIo::new(tls), service);
                        ended(watcher.watch(connection).await);
                    }
                });
            }
        }
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP requests still in flight after the shutdown grace period");
    }
    publisher.abort();
    state.publish();
}
