//! Building a blob's response: headers, conditional answers, ranges.

#[allow(unused_imports)]
use super::*;

/// 429 with `Retry-After`.
pub(super) fn too_many(limited: &hayloft_access::limits::Limited) -> Response {
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

/// What a read of a blob answers, decided from the request's headers and
/// what is known of the blob before its data (size, ETag, date): the one
/// decision both [`wanted`] (what to read) and [`respond`] (what to send)
/// make, so that a read from disk fetches exactly what the answer needs.
pub(super) enum Answer {
    NotModified,
    Failed,
    Unsatisfiable,
    /// Bytes `first..=last`.
    Range(u64, u64),
    Whole,
}

pub(super) fn answer(
    method: &Method,
    headers: &HeaderMap,
    size: u64,
    tag: &str,
    modified: u64,
) -> Answer {
    match preconditions(headers, tag, modified, method) {
        Precondition::Proceed => {}
        Precondition::NotModified => return Answer::NotModified,
        Precondition::Failed => return Answer::Failed,
    }
    let range = headers
        .get(header::RANGE)
        .filter(|_| method == Method::GET && if_range_holds(headers, tag, modified))
        .and_then(|value| value.to_str().ok())
        .map(|value| parse_range(value, size));
    match range {
        Some(RangeSpec::Unsatisfiable) => Answer::Unsatisfiable,
        Some(RangeSpec::Bytes(first, last)) => Answer::Range(first, last),
        Some(RangeSpec::Ignore) | None => Answer::Whole,
    }
}

/// What a read from disk must fetch of the blob to answer the request: no
/// data for a HEAD, a 304, 412 or 416; the range's bytes for a range.
pub(super) fn wanted(method: &Method, headers: &HeaderMap, info: &NeedleInfo<'_>) -> Part {
    let tag = etag(info.checksum, info.size);
    match answer(method, headers, info.size, &tag, info.meta.last_modified) {
        Answer::Range(first, last) => Part::Bytes {
            start: first,
            end: last + 1,
        },
        Answer::Whole if method == Method::GET => Part::Whole,
        _ => Part::Nothing,
    }
}

/// What a request will probably need of a blob, before anything is known
/// of it (to choose how to read it from disk).
pub(super) fn hint(method: &Method, headers: &HeaderMap) -> Hint {
    if method == Method::HEAD {
        Hint::Head
    } else if headers.contains_key(header::RANGE) {
        Hint::Range
    } else {
        Hint::Whole
    }
}

/// The response for a needle read (whole, or the part [`wanted`] asked
/// for): validators, preconditions, range.
pub(super) fn respond(
    state: &HttpState,
    part: NeedlePart,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
    let size = part.size;
    let tag = etag(part.needle.checksum, size);
    let modified = part.needle.meta.last_modified;

    let mut base = HeaderMap::with_capacity(12);
    base.insert(header::CACHE_CONTROL, state.cache_control.clone());
    base.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    insert(
        &mut base,
        header::LAST_MODIFIED,
        httpdate::fmt_http_date(unix(modified)),
    );
    let answer = answer(method, headers, size, &tag, modified);
    insert(&mut base, header::ETAG, tag);

    match answer {
        Answer::NotModified => {
            return with_headers(StatusCode::NOT_MODIFIED, base, Bytes::new());
        }
        Answer::Failed => {
            return with_headers(StatusCode::PRECONDITION_FAILED, base, Bytes::new());
        }
        Answer::Unsatisfiable | Answer::Range(..) | Answer::Whole => {}
    }

    let meta = &part.needle.meta;
    if meta.content_type.is_empty() {
        base.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    } else {
        insert(&mut base, header::CONTENT_TYPE, meta.content_type.clone());
    }
    if !meta.file_name.is_empty() {
        insert(
            &mut base,
            header::CONTENT_DISPOSITION,
            content_disposition(&meta.file_name),
        );
    }

    match answer {
        Answer::Unsatisfiable => {
            insert(&mut base, header::CONTENT_RANGE, format!("bytes */{size}"));
            with_headers(StatusCode::RANGE_NOT_SATISFIABLE, base, Bytes::new())
        }
        Answer::Range(first, last) => {
            let Some(body) = part.bytes(first, last + 1) else {
                return part_missing(&part);
            };
            insert(
                &mut base,
                header::CONTENT_RANGE,
                format!("bytes {first}-{last}/{size}"),
            );
            base.insert(header::CONTENT_LENGTH, HeaderValue::from(last - first + 1));
            with_headers(StatusCode::PARTIAL_CONTENT, base, body)
        }
        _ => {
            // A HEAD sends the length and no body (none may have been read).
            let body = if method == Method::HEAD {
                Bytes::new()
            } else {
                match part.bytes(0, size) {
                    Some(body) => body,
                    None => return part_missing(&part),
                }
            };
            base.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
            with_headers(StatusCode::OK, base, body)
        }
    }
}

/// A part read that lacks what the answer needs: cannot happen ([`wanted`]
/// and [`respond`] decide alike), answered as an error rather than with
/// wrong bytes if it ever did.
fn part_missing(part: &NeedlePart) -> Response {
    tracing::error!(needle = %part.needle.id, start = part.start, len = part.needle.data.len(),
        "a part read lacks the bytes its answer needs");
    plain(StatusCode::INTERNAL_SERVER_ERROR, "error reading blob\n")
}

pub(super) fn unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Inserts a header made at request time (no copy); a value that is not a
/// valid header value (a control character in stored metadata) is left out.
pub(super) fn insert(headers: &mut HeaderMap, name: header::HeaderName, value: String) {
    if let Ok(value) = HeaderValue::try_from(value) {
        headers.insert(name, value);
    }
}

pub(super) fn with_headers(status: StatusCode, headers: HeaderMap, body: Bytes) -> Response {
    let mut response = http::Response::new(Either::Left(Full::new(body)));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// `inline; filename="ascii"; filename*=UTF-8''percent-encoded` (RFC 6266).
pub(super) fn content_disposition(file_name: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
