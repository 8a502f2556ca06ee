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

/// The response for a needle read: validators, preconditions, range.
pub(super) fn respond(
    state: &HttpState,
    needle: Needle,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
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
