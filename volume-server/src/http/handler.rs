//! One HTTP request: rate limit, access, a local read (from memory, from
//! disk, or cold), else a read proxied to a copy that has the blob.

#[allow(unused_imports)]
use super::*;

/// One request: `GET`/`HEAD /<blob id>` or `/<blob id>/<file name>`.
pub(super) async fn handle(
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
        // its other connections; only what the answer needs (a HEAD no
        // data, a range its chunks: see `DiskRead::run_part`).
        Local::Disk(volume, plan, blob) => match read_from_disk(&state, plan, &request).await {
            Ok(part) => {
                served.source = Some(Source::Disk);
                served.tags = purge_tags(blob, volume.collection());
                respond(&state, part, request.method(), request.headers())
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
        // An erasure-coded volume: its pieces from the shards, here or on
        // their holders, restored from the others if need be.
        Local::Erasure(erasure, blob) => match state.erasure.read(&erasure, blob).await {
            Ok((needle, from)) => {
                served.source = Some(from.source());
                respond(
                    &state,
                    NeedlePart::whole(needle),
                    request.method(),
                    request.headers(),
                )
            }
            Err(e) => read_error(&e),
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
            let now = hayloft_storage::unix_now();
            insert(
                response.headers_mut(),
                header::CACHE_CONTROL,
                format!("private, max-age={}", expires.saturating_sub(now)),
            );
        }
    }
    response
}

/// A read from disk of what the request's answer needs: the decision of
/// [`wanted`] is made on the pool's thread once the needle's header and
/// tail are read, with the request's method and headers.
async fn read_from_disk(
    state: &HttpState,
    plan: DiskRead,
    request: &Request<Incoming>,
) -> Result<NeedlePart, ReadError> {
    let (method, headers) = (request.method().clone(), request.headers().clone());
    let hint = hint(&method, &headers);
    state
        .disk
        .read_part_from_disk(plan, hint, move |info| wanted(&method, &headers, info))
        .await
}

/// A read of a blob another server holds (or whose copy here is corrupt):
/// proxied or redirected, on the main runtime, where the directory client
/// and the connection pool live.
pub(super) async fn remote_read(
    state: &HttpState,
    remote: Arc<crate::proxy::RemoteReader>,
    volume: u32,
    request: &Request<Incoming>,
    peer: Option<std::net::IpAddr>,
    span: &tracing::Span,
    served: &mut Served,
) -> Response {
    served.source = Some(Source::Remote);
    let read = super::viewer::ReadForViewer {
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
            if response
                .extensions()
                .get::<crate::proxy::FromRegion>()
                .is_some()
            {
                served.source = Some(Source::Region);
            }
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
pub(super) fn instead_of_corrupt(response: Response, error: &hayloft_storage::Error) -> Response {
    if response.status() == StatusCode::NOT_FOUND {
        return read_error(error);
    }
    response
}

/// 503 with `Retry-After`: the reads from disk are at their bound (see
/// `disk_reads.rs`); another copy, or this one a moment later, answers.
pub(super) fn busy() -> Response {
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
pub(super) fn purge_tags(blob: BlobId, collection: &str) -> Option<(HeaderValue, HeaderValue)> {
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
pub(super) enum Local {
    Done(Response),
    /// The blob is in a cold volume: one ranged GET away.
    Cold(Arc<ColdVolume>, BlobId),
    /// This server holds no copy of the volume: another server does.
    Remote(Arc<crate::proxy::RemoteReader>, u32),
    /// The blob is here, but not all in the page cache: a read from disk.
    Disk(Arc<Volume>, DiskRead, BlobId),
    /// The copy here is corrupt: another copy answers, if there is one.
    Corrupt(Arc<crate::proxy::RemoteReader>, u32, hayloft_storage::Error),
    /// The volume is erasure-coded and held here: read from its shards.
    Erasure(Arc<hayloft_storage::erasure::EcVolume>, BlobId),
}

/// What a request answered here adds to its response.
#[derive(Default)]
pub(super) struct Served {
    /// The expiry of the signed URL it was read through.
    pub(super) signed_until: Option<u64>,
    /// The blob's collection, when there is an audit log.
    pub(super) collection: Option<String>,
    /// Why it was refused (its signed URL, here or at the copy it was
    /// proxied to).
    pub(super) refusal: Option<Cow<'static, str>>,
    /// `Surrogate-Key` and `Cache-Tag` of a blob of a volume held here.
    pub(super) tags: Option<(HeaderValue, HeaderValue)>,
    /// Where the blob's bytes came from (none: no blob was read).
    pub(super) source: Option<Source>,
}

/// What a request comes to. One look-up of the volume serves the
/// signed-URL check, the read and the purge tags.
pub(super) fn local_read(
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
    let (handle, erasure) = match state.store.handle(blob.volume()) {
        Ok(handle) => (Some(handle), None),
        Err(e) => match state.store.erasure(blob.volume()) {
            Ok(erasure) => (None, Some(erasure)),
            // Not here: another copy answers, and checks a signed URL itself.
            Err(_) => {
                return match &state.remote {
                    Some(remote) if !request.headers().contains_key(crate::proxy::PROXIED) => {
                        Local::Remote(Arc::clone(remote), blob.volume().0)
                    }
                    _ => Local::Done(read_error(&e)),
                };
            }
        },
    };
    let collection = match (&handle, &erasure) {
        (Some(handle), _) => handle.collection(),
        (None, Some(erasure)) => erasure.collection(),
        (None, None) => "",
    };
    if state.audit.is_some() {
        served.collection = Some(hayloft_access::collection_name(collection).to_owned());
    }
    // A signed collection's blob: the signature is checked before the blob
    // is looked up, so a refusal says nothing of whether it exists.
    if let Some(access) = &state.access
        && !access.all_public()
        && access.is_signed(collection)
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
    let volume = match (handle, erasure) {
        (_, Some(erasure)) => {
            served.tags = purge_tags(blob, erasure.collection());
            return Local::Erasure(erasure, blob);
        }
        (None, None) => return Local::Done(plain(StatusCode::NOT_FOUND, "not found\n")),
        (Some(hayloft_storage::Handle::Local(volume)), None) => volume,
        (Some(hayloft_storage::Handle::Cold(cold)), None) => {
            served.tags = purge_tags(blob, cold.collection());
            served.source = Some(Source::Cold);
            return Local::Cold(cold, blob);
        }
    };
    let error = match volume.plan_read(blob.needle, blob.cookie, state.verify_up_to) {
        Ok(ReadPlan::Resident(needle)) => {
            served.tags = purge_tags(blob, volume.collection());
            served.source = Some(Source::Memory);
            let whole = NeedlePart::whole(needle);
            return Local::Done(respond(state, whole, method, request.headers()));
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
        // Another region's volume whose copy here lacks the needle (not
        // shipped here yet, nor deleted here): the region that created it
        // answers (ARCHITECTURE.md, "Shipping between regions").
        Err(e @ hayloft_storage::Error::NeedleNotFound { .. })
            if !request.headers().contains_key(crate::proxy::PROXIED)
                && !volume.is_deleted(blob.needle) =>
        {
            match &state.remote {
                Some(remote) if remote.is_foreign(blob.volume().0) => {
                    return Local::Remote(Arc::clone(remote), blob.volume().0);
                }
                _ => e,
            }
        }
        Err(e) => e,
    };
    Local::Done(read_error(&error))
}

/// The blob id of `/<blob id>` or `/<blob id>/<file name>` (the name is for
/// the browser's sake; the id alone finds the blob).
pub(super) fn blob_id_of(path: &str) -> Option<&str> {
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
pub(super) fn read_error(error: &hayloft_storage::Error) -> Response {
    if error.is_not_found() {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    plain(http_status(error), "error reading blob\n")
}

/// A blob of a cold volume: one ranged GET, or 503 + Retry-After while the
/// object is archived or the object store is out of reach.
pub(super) async fn from_cold(
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
        Ok(needle) => return respond(state, NeedlePart::whole(needle), method, headers),
        Err(ColdReadError::Unavailable(reason)) => reason,
        Err(error) => return cold_refusal(&error),
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
        return respond(state, NeedlePart::whole(needle), method, headers);
    }
    tracing::warn!(%reason, "cold read failed");
    cold_refusal(&ColdReadError::Unavailable(reason))
}

/// A failed cold read as HTTP answers it (see [`cold_http`]).
fn cold_refusal(error: &ColdReadError) -> Response {
    let (status, body, retry_after) = cold_http(error);
    let mut response = plain(status, body);
    if let Some(seconds) = retry_after {
        insert(
            response.headers_mut(),
            header::RETRY_AFTER,
            seconds.to_string(),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
