//! The audit line of an HTTP request, and why a refusal was one.

#[allow(unused_imports)]
use super::*;

/// The audit line of an HTTP request, if it takes one: refusals always,
/// reads as the log's `reads` setting says.
pub(super) fn audit_request(
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
pub(super) fn refused(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::FORBIDDEN | StatusCode::GONE | StatusCode::TOO_MANY_REQUESTS
    )
}

/// Why a request was refused (`None` if it was not): the signed-URL
/// check's reason (here, or at the copy a read was proxied to), or the
/// rate limit. Every refusal has one.
pub(super) fn refusal_reason(status: StatusCode, served: &Served) -> Option<Cow<'static, str>> {
    if !refused(status) {
        return None;
    }
    Some(match &served.refusal {
        Some(reason) => reason.clone(),
        None if status == StatusCode::TOO_MANY_REQUESTS => Cow::Borrowed("rate limit http"),
        None => Cow::Borrowed("refused"),
    })
}
