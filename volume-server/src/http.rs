//! The HTTP origin the CDN reads from: `GET`/`HEAD /<blob id>` and
//! `/<blob id>/<file name>`, with single byte ranges, strong ETags and the
//! conditional requests of RFC 9110 (sections 13 and 14).
//!
//! The body is a zero-copy slice of the mmapped volume: no lock is held while
//! a slow client drains it.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::tier::ColdReadError;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use hayloft_storage::{BlobId, Store};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use crate::error::{etag, http_status};

/// What the HTTP handlers share.
pub struct HttpState {
    /// The volumes.
    pub store: Arc<Store>,
    /// Cold reads and read statistics.
    pub tiering: Arc<crate::tier::Tiering>,
    /// `Cache-Control` sent with every blob.
    pub cache_control: HeaderValue,
}

/// The origin's routes.
pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/{blob_id}", get(blob))
        .route("/{blob_id}/{file_name}", get(blob_with_name))
        .with_state(state)
}

/// The `Cache-Control` value for blobs: they never change once written.
pub fn cache_control(max_age: Duration) -> HeaderValue {
    HeaderValue::from_str(&format!("public, max-age={}, immutable", max_age.as_secs()))
        .unwrap_or(HeaderValue::from_static("public, immutable"))
}

async fn blob(
    State(state): State<Arc<HttpState>>,
    Path(blob_id): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    serve(&state, &blob_id, &method, &headers).await
}

async fn blob_with_name(
    State(state): State<Arc<HttpState>>,
    Path((blob_id, _file_name)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    serve(&state, &blob_id, &method, &headers).await
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn serve(state: &HttpState, blob_id: &str, method: &Method, headers: &HeaderMap) -> Response {
    let started = std::time::Instant::now();
    let op = if method == Method::HEAD {
        "http_head"
    } else {
        "http_get"
    };
    // The CDN's request id, if it sends one, names this request in the logs
    // and is echoed back. The span is at debug level: at the default level it
    // costs nothing on this hot path.
    let request_id = headers
        .get(hayloft_proto::REQUEST_ID)
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .cloned();
    let span = tracing::debug_span!(
        "request",
        op,
        request_id = request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
    );
    let mut response =
        tracing::Instrument::instrument(respond(state, blob_id, method, headers), span.clone())
            .await;
    crate::metrics::observe(
        op,
        crate::metrics::http_status_label(response.status()),
        started,
    );
    span.in_scope(|| {
        tracing::debug!(
            status = response.status().as_u16(),
            micros = started.elapsed().as_micros() as u64,
            "request done"
        )
    });
    if method == Method::GET
        && let Some(length) = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    {
        crate::metrics::bytes_out("http", length);
    }
    if let Some(value) = request_id {
        response
            .headers_mut()
            .insert(hayloft_proto::REQUEST_ID, value);
    }
    response
}

/// The needle, from the local map or (for a cold volume) one ranged GET.
async fn read_blob(state: &HttpState, blob: BlobId) -> Result<hayloft_storage::Needle, Response> {
    state.tiering.reads.record(blob.volume());
    let error = match state.store.read(blob.volume(), blob.needle, blob.cookie) {
        Ok(needle) => return Ok(needle),
        Err(hayloft_storage::Error::Cold(volume)) => match state.store.cold_volume(volume) {
            Ok(cold) => match state
                .tiering
                .read_cold(&cold, blob.needle, blob.cookie)
                .await
            {
                Ok(needle) => return Ok(needle),
                Err(ColdReadError::Storage(e)) => e,
                Err(ColdReadError::Archived(retry_after)) => {
                    let mut response = plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "blob is archived; a restore is under way\n",
                    );
                    insert(
                        response.headers_mut(),
                        header::RETRY_AFTER,
                        &retry_after.as_secs().max(1).to_string(),
                    );
                    return Err(response);
                }
                Err(ColdReadError::Unavailable(reason)) => {
                    tracing::warn!(%reason, "cold read failed");
                    let mut response = plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "cold storage unreachable\n",
                    );
                    insert(response.headers_mut(), header::RETRY_AFTER, "30");
                    return Err(response);
                }
            },
            Err(e) => e,
        },
        Err(e) => e,
    };
    // Missing, deleted, expired and wrong-cookie all look the same.
    if error.is_not_found() {
        return Err(plain(StatusCode::NOT_FOUND, "not found\n"));
    }
    Err(plain(http_status(&error), "error reading blob\n"))
}

async fn respond(
    state: &HttpState,
    blob_id: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
    let Ok(blob) = blob_id.parse::<BlobId>() else {
        return plain(StatusCode::BAD_REQUEST, "malformed blob id\n");
    };
    let needle = match read_blob(state, blob).await {
        Ok(needle) => needle,
        Err(response) => return response,
    };
    let size = needle.data.len() as u64;
    let tag = etag(needle.checksum, size);
    let modified = needle.meta.last_modified;

    let mut base = HeaderMap::new();
    insert(&mut base, header::ETAG, &tag);
    insert(
        &mut base,
        header::LAST_MODIFIED,
        &httpdate::fmt_http_date(unix(modified)),
    );
    base.insert(header::CACHE_CONTROL, state.cache_control.clone());
    base.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));

    match preconditions(headers, &tag, modified, method) {
        Precondition::Proceed => {}
        Precondition::NotModified => {
            return with_headers(StatusCode::NOT_MODIFIED, base, Body::empty());
        }
        Precondition::Failed => {
            return with_headers(StatusCode::PRECONDITION_FAILED, base, Body::empty());
        }
    }

    let content_type = if needle.meta.content_type.is_empty() {
        "application/octet-stream"
    } else {
        &needle.meta.content_type
    };
    insert(&mut base, header::CONTENT_TYPE, content_type);
    if !needle.meta.file_name.is_empty() {
        insert(
            &mut base,
            header::CONTENT_DISPOSITION,
            &content_disposition(&needle.meta.file_name),
        );
    }

    let range = headers
        .get(header::RANGE)
        .filter(|_| method == Method::GET && if_range_holds(headers, &tag, modified))
        .and_then(|value| value.to_str().ok())
        .map(|value| parse_range(value, size));
    match range {
        Some(RangeSpec::Unsatisfiable) => {
            insert(&mut base, header::CONTENT_RANGE, &format!("bytes */{size}"));
            with_headers(StatusCode::RANGE_NOT_SATISFIABLE, base, Body::empty())
        }
        Some(RangeSpec::Bytes(first, last)) => {
            insert(
                &mut base,
                header::CONTENT_RANGE,
                &format!("bytes {first}-{last}/{size}"),
            );
            insert(
                &mut base,
                header::CONTENT_LENGTH,
                &(last - first + 1).to_string(),
            );
            let body = needle.data.slice(first as usize..=last as usize);
            with_headers(StatusCode::PARTIAL_CONTENT, base, Body::from(body))
        }
        Some(RangeSpec::Ignore) | None => {
            insert(&mut base, header::CONTENT_LENGTH, &size.to_string());
            with_headers(StatusCode::OK, base, Body::from(needle.data))
        }
    }
}

fn unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn insert(headers: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

fn with_headers(status: StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// `inline; filename="ascii"; filename*=UTF-8''percent-encoded` (RFC 6266).
fn content_disposition(file_name: &str) -> String {
    let ascii: String = file_name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for byte in file_name.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("inline; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
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
