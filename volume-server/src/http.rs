//! The HTTP origin the CDN reads from: `GET`/`HEAD /<blob id>` and
//! `/<blob id>/<file name>`, with single byte ranges, strong ETags and the
//! conditional requests of RFC 9110 (sections 13 and 14).
//!
//! The body is a zero-copy slice of the mmapped volume: no lock is held while
//! a slow client drains it.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hayloft_storage::{BlobId, ColdVolume, DiskRead, Needle, ReadPlan, Store, Volume};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::disk_reads::{DiskReads, ReadError, Source};
use crate::error::{etag, http_status};
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
        }
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
    pub fn with_remote(mut self, remote: crate::proxy::RemoteReader) -> Self {
        self.remote = (remote.mode() != crate::proxy::RemoteReads::Off).then(|| Arc::new(remote));
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

/// The audit line of an HTTP request, if it takes one: refusals always,
/// reads as the log's `reads` setting says.
fn audit_request(
    audit: &hayloft_access::audit::AuditLog,
    request: &Request<Incoming>,
    client: Option<std::net::IpAddr>,
    response: &Response,
    served: &Served,
    started: Instant,
) {
    use hayloft_access::audit::{AuditReads, Event};
    let status = response.status();
    let logged = refused(status)
        || match audit.reads() {
            AuditReads::All => true,
            // The signature was checked: it passed or was refused.
            AuditReads::Signed => served.signed_until.is_some() || served.refusal.is_some(),
            AuditReads::None => false,
        };
    if !logged {
        return;
    }
    let header = |name: header::HeaderName| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let key = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("k="))
        .filter(|key| hayloft_access::valid_key_id(key));
    audit.record(Event {
        request_id: hayloft_proto::request_id_header(request.headers()).to_owned(),
        subject: key.map(|key| format!("key:{key}")).unwrap_or_default(),
        client: client.map(|ip| ip.to_string()).unwrap_or_default(),
        protocol: "http",
        op: request.method().as_str().to_owned(),
        blob: blob_id_of(request.uri().path())
            .unwrap_or_default()
            .to_owned(),
        collection: served.collection.clone().unwrap_or_default(),
        range: header(header::RANGE),
        status: status.as_u16().to_string(),
        reason: refusal_reason(status, served)
            .map(|reason| reason.into_owned())
            .unwrap_or_default(),
        bytes: if request.method() == Method::HEAD {
            0
        } else {
            response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0)
        },
        micros: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        ..Event::default()
    });
}

/// Whether an answer is a refusal (what the audit log always takes).
fn refused(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::FORBIDDEN | StatusCode::GONE | StatusCode::TOO_MANY_REQUESTS
    )
}

/// Why a request was refused (`None` if it was not): the signed-URL
/// check's reason (here, or at the copy a read was proxied to), or the
/// rate limit. Every refusal has one.
fn refusal_reason(status: StatusCode, served: &Served) -> Option<Cow<'static, str>> {
    if !refused(status) {
        return None;
    }
    Some(match &served.refusal {
        Some(reason) => reason.clone(),
        None if status == StatusCode::TOO_MANY_REQUESTS => Cow::Borrowed("rate limit http"),
        None => Cow::Borrowed("refused"),
    })
}

/// 429 with `Retry-After`.
fn too_many(limited: &hayloft_access::limits::Limited) -> Response {
    let mut response = plain(StatusCode::TOO_MANY_REQUESTS, "too many requests\n");
    insert(
        response.headers_mut(),
        header::RETRY_AFTER,
        limited.retry_after_secs().to_string(),
    );
    response
}

pub(crate) fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut response =
        http::Response::new(Either::Left(Full::new(Bytes::from_static(text.as_bytes()))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// One request: `GET`/`HEAD /<blob id>` or `/<blob id>/<file name>`.
async fn handle(
    state: Arc<HttpState>,
    request: Request<Incoming>,
    peer: Option<std::net::IpAddr>,
) -> Response {
    let started = Instant::now();
    let op = match *request.method() {
        Method::GET => Op::Get,
        Method::HEAD => Op::Head,
        _ => Op::Other,
    };
    // The CDN's request id, if it sends one, names this request in the logs
    // and is echoed back. The span is at debug level: at the default level it
    // costs nothing on this hot path.
    let request_id = request
        .headers()
        .get(hayloft_proto::REQUEST_ID)
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .cloned();
    let span = tracing::debug_span!(
        "request",
        op = op.name(),
        request_id = request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
    );
    let mut served = Served::default();
    // A read another server proxied here: the viewer it vouches for (so a
    // URL bound to the viewer's address is checked against the viewer). The
    // proxying server counted the viewer against its own rate limit: the
    // read is not counted again here, where the address is the proxy's
    // (all its viewers would share one limit).
    let vouched = match &state.access {
        Some(access)
            if request
                .headers()
                .contains_key(hayloft_access::viewer::VIEWER_HEADER) =>
        {
            let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
            access.vouched_viewer(request.headers(), path)
        }
        _ => None,
    };
    // The client (behind trusted proxies, the address they name), and its
    // rate limit.
    let (peer, limited) = match (&state.limits, peer) {
        _ if vouched.is_some() => (vouched, None),
        (Some(limits), Some(ip)) => {
            let client = if limits.trusts_proxies() {
                let forwarded = request
                    .headers()
                    .get("x-forwarded-for")
                    .and_then(|v| v.to_str().ok());
                limits.client_of(ip, forwarded)
            } else {
                ip
            };
            (Some(client), limits.check_http(client).err())
        }
        _ => (peer, None),
    };
    let local = match limited {
        Some(limited) => Local::Done(too_many(&limited)),
        None => span.in_scope(|| local_read(&state, &request, peer, &mut served)),
    };
    let mut response = match local {
        Local::Done(response) => response,
        // The cold path is a task of its own (its future, an S3 request, is
        // large, and the hot path should not carry it), on the runtime that
        // owns the object store's connections.
        Local::Cold(volume, blob) => {
            let (method, headers) = (request.method().clone(), request.headers().clone());
            let main = state.main.clone();
            let state = Arc::clone(&state);
            let cold = async move { from_cold(&state, volume, blob, &method, &headers).await };
            match main.spawn(cold.instrument(span.clone())).await {
                Ok(response) => response,
                Err(e) => {
                    tracing::error!(error = %e, "cold read task failed");
                    plain(StatusCode::INTERNAL_SERVER_ERROR, "error reading blob\n")
                }
            }
        }
        // Another server holds the volume: on the main runtime too, where
        // the directory client and the connection pool live.
        Local::Remote(remote, volume) => {
            remote_read(&state, remote, volume, &request, peer, &span, &mut served).await
        }
        // Not in the page cache: read on the pool while this thread serves
        // its other connections.
        Local::Disk(volume, plan, blob) => match state.disk.read_from_disk(plan).await {
            Ok(needle) => {
                served.source = Some(Source::Disk);
                served.tags = purge_tags(blob, volume.collection());
                respond(&state, needle, request.method(), request.headers())
            }
            Err(ReadError::Busy) => busy(),
            // Corrupt here: another copy answers, as for a read from memory.
            Err(ReadError::Storage(e)) => match (&e, state.remote.clone()) {
                (hayloft_storage::Error::Corrupt { .. }, Some(remote))
                    if !request.headers().contains_key(crate::proxy::PROXIED) =>
                {
                    let volume = blob.volume().0;
                    let response =
                        remote_read(&state, remote, volume, &request, peer, &span, &mut served)
                            .await;
                    instead_of_corrupt(response, &e)
                }
                _ => read_error(&e),
            },
        },
        Local::Corrupt(remote, volume, error) => {
            let response =
                remote_read(&state, remote, volume, &request, peer, &span, &mut served).await;
            instead_of_corrupt(response, &error)
        }
    };
    observe(op, &response, served.source, started);
    if let Some(audit) = &state.audit {
        audit_request(audit, &request, peer, &response, &served, started);
    }
    // A read proxied here by another server: it logs the same reason.
    if request.headers().contains_key(crate::proxy::PROXIED)
        && let Some(reason) = refusal_reason(response.status(), &served)
        && let Ok(value) = HeaderValue::try_from(reason.as_ref())
    {
        response.headers_mut().insert(crate::proxy::REFUSAL, value);
    }
    span.in_scope(|| {
        tracing::debug!(
            status = response.status().as_u16(),
            micros = started.elapsed().as_micros() as u64,
            "request done"
        )
    });
    if let Some(value) = request_id {
        response
            .headers_mut()
            .insert(hayloft_proto::REQUEST_ID, value);
    }
    if response.status().is_success() || response.status() == StatusCode::NOT_MODIFIED {
        if let Some((keys, tags)) = served.tags {
            response.headers_mut().insert("surrogate-key", keys);
            response.headers_mut().insert("cache-tag", tags);
        }
        // A private blob read through a signed URL: no shared cache keeps it
        // past the URL's expiry unless told to (an edge that checks
        // signatures itself overrides this; see deploy/).
        if let Some(expires) = served.signed_until
            && response.headers().contains_key(header::CACHE_CONTROL)
        {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            insert(
                response.headers_mut(),
                header::CACHE_CONTROL,
                format!("private, max-age={}", expires.saturating_sub(now)),
            );
        }
    }
    response
}

/// A read of a blob another server holds (or whose copy here is corrupt):
/// proxied or redirected, on the main runtime, where the directory client
/// and the connection pool live.
async fn remote_read(
    state: &HttpState,
    remote: Arc<crate::proxy::RemoteReader>,
    volume: u32,
    request: &Request<Incoming>,
    peer: Option<std::net::IpAddr>,
    span: &tracing::Span,
    served: &mut Served,
) -> Response {
    served.source = Some(Source::Remote);
    let read = crate::viewer::ReadForViewer {
        remote,
        access: state.access.clone(),
        volume,
        path_and_query: request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned(),
        method: request.method().clone(),
        headers: request.headers().clone(),
        viewer: peer,
        audited: state.audit.is_some(),
    };
    match state
        .main
        .spawn(read.answer().instrument(span.clone()))
        .await
    {
        Ok((response, refusal, collection)) => {
            served.refusal = refusal;
            served.collection = collection;
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "proxied read task failed");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "error reading blob\n")
        }
    }
}

/// The answer of another copy to a read whose copy here is corrupt; if no
/// other copy is known (404), the local error (500): the blob exists, its
/// bytes here are bad.
fn instead_of_corrupt(response: Response, error: &hayloft_storage::Error) -> Response {
    if response.status() == StatusCode::NOT_FOUND {
        return read_error(error);
    }
    response
}

/// 503 with `Retry-After`: the reads from disk are at their bound (see
/// `disk_reads.rs`); another copy, or this one a moment later, answers.
fn busy() -> Response {
    let mut response = plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many reads from disk in flight; retry\n",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    // Never cached: the blob is there, only busy.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `Surrogate-Key` (Fastly, space-separated) and `Cache-Tag` (Cloudflare,
/// Akamai; comma-separated) for a blob of a volume held here: `blob-<id>`,
/// `volume-<id>` and `collection-<name>`, so that a CDN purges a blob, a
/// volume or a collection by tag. (A read proxied from another copy carries
/// the tags that copy's server set.)
fn purge_tags(blob: BlobId, collection: &str) -> Option<(HeaderValue, HeaderValue)> {
    use std::fmt::Write;
    let mut keys = String::with_capacity(80);
    let _ = write!(keys, "blob-{blob} volume-{}", blob.volume().0);
    let name = hayloft_access::collection_name(collection);
    // Only characters a tag header carries unescaped.
    if name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        keys.push_str(" collection-");
        keys.push_str(name);
    }
    let tags = keys.replace(' ', ",");
    Some((
        HeaderValue::from_maybe_shared(Bytes::from(keys)).ok()?,
        HeaderValue::from_maybe_shared(Bytes::from(tags)).ok()?,
    ))
}

/// The answer to a request refused by the signed-URL check: 403 or 410,
/// the same whether the blob exists or not.
pub(crate) fn denied(denied: hayloft_access::Denied) -> Response {
    metrics::counter!("hayloft_http_denied_total", "reason" => denied.reason()).increment(1);
    let (status, text) = match denied.status() {
        410 => (StatusCode::GONE, "this signed URL has expired\n"),
        _ if denied == hayloft_access::Denied::Unsigned => {
            (StatusCode::FORBIDDEN, "this blob needs a signed URL\n")
        }
        _ => (StatusCode::FORBIDDEN, "invalid signed URL\n"),
    };
    let mut response = plain(status, text);
    // Never cached: the next request may carry a valid URL.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// What a request comes to without leaving the task.
enum Local {
    Done(Response),
    /// The blob is in a cold volume: one ranged GET away.
    Cold(Arc<ColdVolume>, BlobId),
    /// This server holds no copy of the volume: another server does.
    Remote(Arc<crate::proxy::RemoteReader>, u32),
    /// The blob is here, but not all in the page cache: a read from disk.
    Disk(Arc<Volume>, DiskRead, BlobId),
    /// The copy here is corrupt: another copy answers, if there is one.
    Corrupt(Arc<crate::proxy::RemoteReader>, u32, hayloft_storage::Error),
}

/// What a request answered here adds to its response.
#[derive(Default)]
struct Served {
    /// The expiry of the signed URL it was read through.
    signed_until: Option<u64>,
    /// The blob's collection, when there is an audit log.
    collection: Option<String>,
    /// Why it was refused (its signed URL, here or at the copy it was
    /// proxied to).
    refusal: Option<Cow<'static, str>>,
    /// `Surrogate-Key` and `Cache-Tag` of a blob of a volume held here.
    tags: Option<(HeaderValue, HeaderValue)>,
    /// Where the blob's bytes came from (none: no blob was read).
    source: Option<Source>,
}

/// What a request comes to. One look-up of the volume serves the
/// signed-URL check, the read and the purge tags.
fn local_read(
    state: &HttpState,
    request: &Request<Incoming>,
    peer: Option<std::net::IpAddr>,
    served: &mut Served,
) -> Local {
    let method = request.method();
    if method != Method::GET && method != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Local::Done(response);
    }
    let Some(blob_id) = blob_id_of(request.uri().path()) else {
        return Local::Done(plain(StatusCode::NOT_FOUND, "not found\n"));
    };
    let Ok(blob) = blob_id.parse::<BlobId>() else {
        return Local::Done(plain(StatusCode::BAD_REQUEST, "malformed blob id\n"));
    };
    let handle = match state.store.handle(blob.volume()) {
        Ok(handle) => handle,
        // Not here: another copy answers, and checks a signed URL itself.
        Err(e) => {
            return match &state.remote {
                Some(remote) if !request.headers().contains_key(crate::proxy::PROXIED) => {
                    Local::Remote(Arc::clone(remote), blob.volume().0)
                }
                _ => Local::Done(read_error(&e)),
            };
        }
    };
    if state.audit.is_some() {
        served.collection = Some(hayloft_access::collection_name(handle.collection()).to_owned());
    }
    // A signed collection's blob: the signature is checked before the blob
    // is looked up, so a refusal says nothing of whether it exists.
    if let Some(access) = &state.access
        && !access.all_public()
        && access.is_signed(handle.collection())
    {
        let (path, query) = (request.uri().path(), request.uri().query());
        if let Err(refused) = access.check(path, query, peer) {
            served.refusal = Some(Cow::Borrowed(refused.reason()));
            return Local::Done(denied(refused));
        }
        served.signed_until = hayloft_access::signed_url::expires(query);
    }
    COUNTS.with_borrow_mut(|counts| *counts.reads.entry(blob.volume()).or_default() += 1);
    // The purge tags are made only for answers from here (a read proxied
    // to another copy carries that copy's).
    let volume = match handle {
        hayloft_storage::Handle::Local(volume) => volume,
        hayloft_storage::Handle::Cold(cold) => {
            served.tags = purge_tags(blob, cold.collection());
            served.source = Some(Source::Cold);
            return Local::Cold(cold, blob);
        }
    };
    let error = match volume.plan_read(blob.needle, blob.cookie, state.verify_up_to) {
        Ok(ReadPlan::Resident(needle)) => {
            served.tags = purge_tags(blob, volume.collection());
            served.source = Some(Source::Memory);
            return Local::Done(respond(state, needle, method, request.headers()));
        }
        Ok(ReadPlan::Disk(plan)) => return Local::Disk(volume, plan, blob),
        // Corrupt here: another copy answers (a bad copy never serves
        // wrong bytes, and the reader does not see the fault).
        Err(e @ hayloft_storage::Error::Corrupt { .. })
            if !request.headers().contains_key(crate::proxy::PROXIED) =>
        {
            match &state.remote {
                Some(remote) => return Local::Corrupt(Arc::clone(remote), blob.volume().0, e),
                None => e,
            }
        }
        Err(e) => e,
    };
    Local::Done(read_error(&error))
}

/// The blob id of `/<blob id>` or `/<blob id>/<file name>` (the name is for
/// the browser's sake; the id alone finds the blob).
fn blob_id_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix('/')?;
    let (id, name) = match rest.split_once('/') {
        Some((id, name)) => (id, Some(name)),
        None => (rest, None),
    };
    if id.is_empty() || name.is_some_and(|name| name.is_empty() || name.contains('/')) {
        return None;
    }
    Some(id)
}

/// Missing, deleted, expired and wrong-cookie all look the same: 404.
fn read_error(error: &hayloft_storage::Error) -> Response {
    if error.is_not_found() {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    plain(http_status(error), "error reading blob\n")
}

/// A blob of a cold volume: one ranged GET, or 503 + Retry-After while the
/// object is archived or the object store is out of reach.
async fn from_cold(
    state: &HttpState,
    volume: Arc<ColdVolume>,
    blob: BlobId,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
    let reason = match state
        .tiering
        .read_cold(&volume, blob.needle, blob.cookie)
        .await
    {
        Ok(needle) => return respond(state, needle, method, headers),
        Err(ColdReadError::Storage(e)) => return read_error(&e),
        Err(ColdReadError::Archived(retry_after)) => {
            let mut response = plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "blob is archived; a restore is under way\n",
            );
            insert(
                response.headers_mut(),
                header::RETRY_AFTER,
                retry_after.as_secs().max(1).to_string(),
            );
            return response;
        }
        Err(ColdReadError::Unavailable(reason)) => reason,
    };
    // A restore may have committed while this read was on its way: the
    // object is gone, the volume is local again. Reads never fail because a
    // move is in progress (invariant 4).
    if let Ok(volume) = state.store.volume(blob.volume())
        && let Ok((needle, _)) = state
            .disk
            .read(&volume, blob.needle, blob.cookie, state.verify_up_to)
            .await
    {
        return respond(state, needle, method, headers);
    }
    tracing::warn!(%reason, "cold read failed");
    let mut response = plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "cold storage unreachable\n",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
    response
}

/// The response for a needle read: validators, preconditions, range.
fn respond(state: &HttpState, needle: Needle, method: &Method, headers: &HeaderMap) -> Response {
    let size = needle.data.len() as u64;
    let tag = etag(needle.checksum, size);
    let modified = needle.meta.last_modified;

    let mut base = HeaderMap::with_capacity(12);
    base.insert(header::CACHE_CONTROL, state.cache_control.clone());
    base.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    insert(
        &mut base,
        header::LAST_MODIFIED,
        httpdate::fmt_http_date(unix(modified)),
    );
    let precondition = preconditions(headers, &tag, modified, method);
    let range = headers
        .get(header::RANGE)
        .filter(|_| method == Method::GET && if_range_holds(headers, &tag, modified))
        .and_then(|value| value.to_str().ok())
        .map(|value| parse_range(value, size));
    insert(&mut base, header::ETAG, tag);

    match precondition {
        Precondition::Proceed => {}
        Precondition::NotModified => {
            return with_headers(StatusCode::NOT_MODIFIED, base, Bytes::new());
        }
        Precondition::Failed => {
            return with_headers(StatusCode::PRECONDITION_FAILED, base, Bytes::new());
        }
    }

    let meta = needle.meta;
    if meta.content_type.is_empty() {
        base.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    } else {
        insert(&mut base, header::CONTENT_TYPE, meta.content_type);
    }
    if !meta.file_name.is_empty() {
        insert(
            &mut base,
            header::CONTENT_DISPOSITION,
            content_disposition(&meta.file_name),
        );
    }

    match range {
        Some(RangeSpec::Unsatisfiable) => {
            insert(&mut base, header::CONTENT_RANGE, format!("bytes */{size}"));
            with_headers(StatusCode::RANGE_NOT_SATISFIABLE, base, Bytes::new())
        }
        Some(RangeSpec::Bytes(first, last)) => {
            insert(
                &mut base,
                header::CONTENT_RANGE,
                format!("bytes {first}-{last}/{size}"),
            );
            base.insert(header::CONTENT_LENGTH, HeaderValue::from(last - first + 1));
            let body = needle.data.slice(first as usize..=last as usize);
            with_headers(StatusCode::PARTIAL_CONTENT, base, body)
        }
        Some(RangeSpec::Ignore) | None => {
            base.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
            with_headers(StatusCode::OK, base, needle.data)
        }
    }
}

/// Which metrics a request counts under.
#[derive(Clone, Copy)]
enum Op {
    Get,
    Head,
    /// Any other method (answered 405).
    Other,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Get => "http_get",
            Op::Head => "http_head",
            Op::Other => "http_other",
        }
    }
}

/// The origin's metric handles, registered once: recording a request is a
/// few atomic operations, not a registry lookup by labels.
#[derive(Clone)]
struct HttpMetrics {
    get: OpMetrics,
    head: OpMetrics,
    bytes_out: metrics::Counter,
    /// Reads and their durations by where the bytes came from (index:
    /// [`Source::index`]).
    sources: [(metrics::Counter, metrics::Histogram); Source::ALL.len()],
}

/// The statuses the origin sends, with a counter each.
const STATUSES: [u16; 10] = [200, 206, 304, 400, 404, 405, 412, 416, 500, 503];

#[derive(Clone)]
struct OpMetrics {
    duration: metrics::Histogram,
    requests: [metrics::Counter; STATUSES.len()],
}

impl OpMetrics {
    fn new(op: &'static str) -> Self {
        OpMetrics {
            duration: metrics::histogram!("hayloft_volume_request_duration_seconds", "op" => op),
            requests: STATUSES.map(|status| {
                metrics::counter!("hayloft_volume_requests_total", "op" => op,
                    "status" => crate::metrics::http_status_label(status))
            }),
        }
    }
}

impl HttpMetrics {
    fn new() -> Self {
        HttpMetrics {
            get: OpMetrics::new(Op::Get.name()),
            head: OpMetrics::new(Op::Head.name()),
            bytes_out: metrics::counter!("hayloft_volume_bytes_out_total", "protocol" => "http"),
            sources: Source::ALL.map(|source| {
                (
                    metrics::counter!("hayloft_volume_reads_total", "source" => source.name()),
                    metrics::histogram!("hayloft_volume_read_duration_seconds",
                        "source" => source.name()),
                )
            }),
        }
    }
}

/// What one HTTP thread counted since it last published: plain integers in
/// the thread's own cache, so that a request touches no memory another core
/// writes. Published to the shared metrics and read statistics every
/// [`PUBLISH_INTERVAL`] (and when the thread stops).
#[derive(Default)]
struct LocalCounts {
    /// Requests by op (GET, HEAD) and status (index in [`STATUSES`]).
    requests: [[u64; STATUSES.len()]; 2],
    /// Request durations in seconds, by op.
    durations: [Vec<f64>; 2],
    bytes_out: u64,
    /// Durations of GETs and HEADs that read a blob, by where its bytes
    /// came from ([`Source::index`]).
    by_source: [Vec<f64>; Source::ALL.len()],
    /// Reads by volume, for the lifecycle policy.
    reads: std::collections::HashMap<hayloft_storage::VolumeId, u64>,
}

thread_local! {
    static COUNTS: std::cell::RefCell<LocalCounts> = std::cell::RefCell::default();
}

/// Counts one finished request.
fn observe(op: Op, response: &Response, source: Option<Source>, started: Instant) {
    let status = response.status().as_u16();
    let (i, index) = match (op, STATUSES.iter().position(|s| *s == status)) {
        (Op::Get, Some(index)) => (0, index),
        (Op::Head, Some(index)) => (1, index),
        // Rare: straight to the registry.
        _ => {
            crate::metrics::observe(
                op.name(),
                crate::metrics::http_status_label(status),
                started,
            );
            return;
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    COUNTS.with_borrow_mut(|counts| {
        counts.requests[i][index] += 1;
        counts.durations[i].push(seconds);
        if let Some(source) = source {
            counts.by_source[source.index()].push(seconds);
        }
        // Blob bytes sent (error texts are not counted).
        if i == 0 && (status == 200 || status == 206) {
            counts.bytes_out += hyper::body::Body::size_hint(response.body()).lower();
        }
    });
}

impl HttpState {
    /// Adds this thread's counts to the shared metrics and read statistics.
    fn publish(&self) {
        let counts = COUNTS.take();
        for (op, (requests, durations)) in [&self.metrics.get, &self.metrics.head]
            .into_iter()
            .zip(counts.requests.iter().zip(&counts.durations))
        {
            for (counter, n) in op.requests.iter().zip(requests) {
                if *n > 0 {
                    counter.increment(*n);
                }
            }
            for seconds in durations {
                op.duration.record(*seconds);
            }
        }
        if counts.bytes_out > 0 {
            self.metrics.bytes_out.increment(counts.bytes_out);
        }
        for ((reads, duration), seconds) in self.metrics.sources.iter().zip(&counts.by_source) {
            if !seconds.is_empty() {
                reads.increment(seconds.len() as u64);
            }
            for seconds in seconds {
                duration.record(*seconds);
            }
        }
        for (volume, reads) in counts.reads {
            self.tiering.reads.record_many(volume, reads);
        }
    }
}

fn unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Inserts a header made at request time (no copy); a value that is not a
/// valid header value (a control character in stored metadata) is left out.
fn insert(headers: &mut HeaderMap, name: header::HeaderName, value: String) {
    if let Ok(value) = HeaderValue::try_from(value) {
        headers.insert(name, value);
    }
}

fn with_headers(status: StatusCode, headers: HeaderMap, body: Bytes) -> Response {
    let mut response = http::Response::new(Either::Left(Full::new(body)));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// `inline; filename="ascii"; filename*=UTF-8''percent-encoded` (RFC 6266).
fn content_disposition(file_name: &str) -> String {
    use std::fmt::Write as _;
    let mut value = String::with_capacity(40 + 2 * file_name.len());
    value.push_str("inline; filename=\"");
    value.extend(file_name.chars().map(|c| {
        if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
            c
        } else {
            '_'
        }
    }));
    value.push_str("\"; filename*=UTF-8''");
    for byte in file_name.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            value.push(byte as char);
        } else {
            let _ = write!(value, "%{byte:02X}");
        }
    }
    value
}

enum Precondition {
    Proceed,
    NotModified,
    Failed,
}

/// Evaluates the preconditions in the order RFC 9110 section 13.2.2 gives.
fn preconditions(headers: &HeaderMap, tag: &str, modified: u64, method: &Method) -> Precondition {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let date = |name| text(name).and_then(|v| httpdate::parse_http_date(v).ok());
    let modified_at = unix(modified);
    if let Some(if_match) = text(header::IF_MATCH) {
        if !etag_list_matches(if_match, tag, true) {
            return Precondition::Failed;
        }
    } else if let Some(since) = date(header::IF_UNMODIFIED_SINCE)
        && modified_at > since
    {
        return Precondition::Failed;
    }
    let safe = method == Method::GET || method == Method::HEAD;
    if let Some(if_none_match) = text(header::IF_NONE_MATCH) {
        if etag_list_matches(if_none_match, tag, false) {
            return if safe {
                Precondition::NotModified
            } else {
                Precondition::Failed
            };
        }
    } else if safe
        && let Some(since) = date(header::IF_MODIFIED_SINCE)
        && modified_at <= since
    {
        return Precondition::NotModified;
    }
    Precondition::Proceed
}

/// Does a comma-separated entity-tag list (or `*`) match `tag`? Strong
/// comparison refuses weak tags; weak comparison ignores the `W/` prefix.
fn etag_list_matches(list: &str, tag: &str, strong: bool) -> bool {
    list.split(',').map(str::trim).any(|candidate| {
        if candidate == "*" {
            return true;
        }
        match candidate.strip_prefix("W/") {
            Some(weak) => !strong && weak == tag,
            None => candidate == tag,
        }
    })
}

/// `If-Range`: the range applies only if the validator still matches (a
/// strong ETag, or exactly the Last-Modified date).
fn if_range_holds(headers: &HeaderMap, tag: &str, modified: u64) -> bool {
    let Some(value) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let value = value.trim();
    if value.starts_with('"') {
        return value == tag;
    }
    httpdate::parse_http_date(value).is_ok_and(|date| date == unix(modified))
}

#[derive(Debug, PartialEq, Eq)]
enum RangeSpec {
    /// Inclusive byte positions, clamped to the representation.
    Bytes(u64, u64),
    /// Syntactically valid but nothing in it overlaps the representation.
    Unsatisfiable,
    /// Not a single byte range we serve (invalid or multiple): send it all.
    Ignore,
}

/// Parses a `Range` header for a representation of `size` bytes.
///
/// Hand-written on purpose, after looking at the crates: `headers::Range`
/// and `http-range-header` parse multi-range sets (which the origin never
/// serves: one range per request, so that a request cannot amplify into
/// many reads) and fold "unsatisfiable" and "invalid" into one error, where
/// RFC 9110 wants 416 for the first and the whole blob for the second. What
/// is left is twenty lines; `ranges` and the proptest below pin it down.
fn parse_range(value: &str, size: u64) -> RangeSpec {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeSpec::Ignore;
    };
    if spec.contains(',') {
        return RangeSpec::Ignore;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return RangeSpec::Ignore;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // bytes=-N: the last N bytes.
        return match last.parse::<u64>() {
            Ok(0) => RangeSpec::Unsatisfiable,
            Ok(_) if size == 0 => RangeSpec::Unsatisfiable,
            Ok(suffix) => RangeSpec::Bytes(size - suffix.min(size), size - 1),
            Err(_) => RangeSpec::Ignore,
        };
    }
    let Ok(first) = first.parse::<u64>() else {
        return RangeSpec::Ignore;
    };
    let last = if last.is_empty() {
        u64::MAX
    } else {
        match last.parse::<u64>() {
            Ok(last) if last >= first => last,
            _ => return RangeSpec::Ignore,
        }
    };
    if first >= size {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Bytes(first, last.min(size - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeSpec::Bytes(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), RangeSpec::Bytes(90, 99));
        assert_eq!(parse_range("bytes=90-500", 100), RangeSpec::Bytes(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), RangeSpec::Bytes(90, 99));
        assert_eq!(parse_range("bytes=-500", 100), RangeSpec::Bytes(0, 99));
        assert_eq!(parse_range("bytes=100-", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), RangeSpec::Ignore);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeSpec::Ignore);
        assert_eq!(parse_range("items=0-1", 100), RangeSpec::Ignore);
        assert_eq!(parse_range("bytes=abc", 100), RangeSpec::Ignore);
        assert_eq!(parse_range("bytes=-", 100), RangeSpec::Ignore);
    }

    proptest::proptest! {
        /// Whatever the header, a range served lies inside the blob.
        #[test]
        fn a_range_never_leaves_the_blob(value in "(bytes=)?[-0-9, a-z]{0,24}", size in 0u64..1000) {
            if let RangeSpec::Bytes(first, last) = parse_range(&value, size) {
                proptest::prop_assert!(first <= last && last < size, "{value} of {size}");
            }
        }

        /// Every single range that overlaps the blob is served as such.
        #[test]
        fn overlapping_ranges_are_served(first in 0u64..2000, len in 0u64..2000, size in 1u64..1000) {
            let last = first + len;
            let spec = parse_range(&format!("bytes={first}-{last}"), size);
            if first < size {
                proptest::prop_assert_eq!(spec, RangeSpec::Bytes(first, last.min(size - 1)));
            } else {
                proptest::prop_assert_eq!(spec, RangeSpec::Unsatisfiable);
            }
        }
    }

    #[test]
    fn blob_paths() {
        assert_eq!(blob_id_of("/abc"), Some("abc"));
        assert_eq!(blob_id_of("/abc/cat.jpg"), Some("abc"));
        assert_eq!(blob_id_of("/"), None);
        assert_eq!(blob_id_of("/abc/"), None);
        assert_eq!(blob_id_of("/abc/a/b"), None);
        assert_eq!(blob_id_of("//x"), None);
        assert_eq!(blob_id_of("abc"), None);
    }

    #[test]
    fn etag_comparisons() {
        assert!(etag_list_matches("\"a\", \"b\"", "\"b\"", true));
        assert!(etag_list_matches("W/\"b\"", "\"b\"", false));
        assert!(!etag_list_matches("W/\"b\"", "\"b\"", true));
        assert!(etag_list_matches("*", "\"b\"", true));
        assert!(!etag_list_matches("\"c\"", "\"b\"", false));
    }

    #[test]
    fn dispositions_are_safe_and_encoded() {
        assert_eq!(
            content_disposition("cat photo.jpg"),
            "inline; filename=\"cat photo.jpg\"; filename*=UTF-8''cat%20photo.jpg"
        );
        assert_eq!(
            content_disposition("été\".png"),
            "inline; filename=\"_t__.png\"; filename*=UTF-8''%C3%A9t%C3%A9%22.png"
        );
    }
}
