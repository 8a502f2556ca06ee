//! Signed URLs for blobs of `signed` collections:
//!
//! ```text
//! GET /<blob id>[/<file name>]?e=<expiry>&k=<key id>&s=<signature>[&ip=<network>]
//! ```
//!
//! - `e`: Unix seconds after which the URL no longer works;
//! - `k`: the id of the key that signed it (see [`Keyring`]);
//! - `ip` (optional): the URL works only for clients in this network, an
//!   address or a CIDR block (`203.0.113.7`, `2001:db8::/32`);
//! - `s`: HMAC-SHA256 with the key's secret over the canonical string,
//!   base64url without padding (43 characters):
//!
//! ```text
//! hayloft-url-v1\n<path>\n<e>\n<k>\n<ip or nothing>
//! ```
//!
//! `<path>` is the request path exactly as sent (the file name, if any,
//! included: a URL cannot be replayed under another name). Other query
//! parameters are ignored (CDNs add their own) and signed by nothing.
//!
//! A check ([`verify`]) finds, in this order: no signature ([`Denied::Unsigned`]),
//! a malformed one, an unknown key, a signature that does not match
//! (compared in constant time), an expiry further than the maximum lifetime
//! ahead, an expired URL (after the clock-skew allowance), a client outside
//! the bound network. Only a genuine URL learns that it expired (410); all
//! the others get the same 403, and none of them tells whether the blob
//! exists (the check comes before the blob is looked up).

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use ipnet::IpNet;

use crate::Keyring;
use crate::keyring::valid_key_id;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The canonical string's first line: the scheme's version.
const VERSION: &str = "hayloft-url-v1";

/// Length of a signature: 32 bytes in base64url without padding.
const SIGNATURE_CHARS: usize = 43;

/// How long signed URLs may live, and how far clocks may disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UrlPolicy {
    /// A URL expiring further ahead than this (plus the skew) is refused:
    /// a leaked URL cannot be made to work for years. Default 24 h.
    pub max_lifetime: Duration,
    /// A URL still works this long after its expiry (the signer's clock
    /// may be ahead of the server's). Default 60 s.
    pub clock_skew: Duration,
}

impl Default for UrlPolicy {
    fn default() -> Self {
        UrlPolicy {
            max_lifetime: Duration::from_secs(24 * 3600),
            clock_skew: Duration::from_secs(60),
        }
    }
}

/// Why a request for a blob of a `signed` collection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No signature at all.
    Unsigned,
    /// The signing parameters are incomplete, repeated or malformed.
    Malformed(&'static str),
    /// Signed with a key the ring does not hold (never did, or removed:
    /// revoked).
    UnknownKey,
    /// The signature does not match the path and parameters.
    BadSignature,
    /// The expiry is further ahead than the maximum lifetime allows.
    TooLong,
    /// The URL has expired.
    Expired,
    /// The URL is bound to a network the client is not in.
    WrongAddress,
}

impl Denied {
    /// The HTTP status to answer: 410 for an expired URL, 403 for the rest.
    pub fn status(self) -> u16 {
        match self {
            Denied::Expired => 410,
            _ => 403,
        }
    }

    /// A short name for logs and metrics labels.
    pub fn reason(self) -> &'static str {
        match self {
            Denied::Unsigned => "unsigned",
            Denied::Malformed(_) => "malformed",
            Denied::UnknownKey => "unknown_key",
            Denied::BadSignature => "bad_signature",
            Denied::TooLong => "too_long",
            Denied::Expired => "expired",
            Denied::WrongAddress => "wrong_address",
        }
    }
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denied::Unsigned => f.write_str("this blob needs a signed URL"),
            Denied::Malformed(what) => write!(f, "malformed signed URL: {what}"),
            Denied::UnknownKey | Denied::BadSignature | Denied::TooLong | Denied::WrongAddress => {
                f.write_str("invalid signed URL")
            }
            Denied::Expired => f.write_str("this signed URL has expired"),
        }
    }
}

/// The signing parameters of a query.
#[derive(Debug, PartialEq, Eq)]
struct Params<'a> {
    expires: u64,
    key: &'a str,
    signature: &'a str,
    bind: Option<&'a str>,
}

/// Finds `e`, `k`, `s` and `ip` in `query`; `Ok(None)` when none of them
/// is there.
fn params(query: Option<&str>) -> Result<Option<Params<'_>>, Denied> {
    let (mut e, mut k, mut s, mut ip) = (None, None, None, None);
    for pair in query.unwrap_or("").split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match name {
            "e" => &mut e,
            "k" => &mut k,
            "s" => &mut s,
            "ip" => &mut ip,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(Denied::Malformed("a signing parameter appears twice"));
        }
    }
    if e.is_none() && k.is_none() && s.is_none() && ip.is_none() {
        return Ok(None);
    }
    let (Some(e), Some(k), Some(s)) = (e, k, s) else {
        return Err(Denied::Malformed("e, k and s are all needed"));
    };
    if e.is_empty() || e.len() > 20 || !e.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Denied::Malformed("e is not a Unix time"));
    }
    let expires = e
        .parse()
        .map_err(|_| Denied::Malformed("e is not a Unix time"))?;
    if !valid_key_id(k) {
        return Err(Denied::Malformed("k is not a key id"));
    }
    if s.len() != SIGNATURE_CHARS {
        return Err(Denied::Malformed("s is not a signature"));
    }
    Ok(Some(Params {
        expires,
        key: k,
        signature: s,
        bind: ip,
    }))
}

/// The network an `ip` parameter names: an address or a CIDR block.
fn network(bind: &str) -> Option<IpNet> {
    let bind = bind.replace("%2F", "/").replace("%2f", "/");
    parse_bind(&bind.replace("%3A", ":").replace("%3a", ":"))
}

fn mac(secret: &[u8], path: &str, expires: u64, key: &str, bind: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(format!("{VERSION}\n{path}\n{expires}\n{key}\n{bind}").as_bytes());
    mac
}

/// The query string (`e=..&k=..&s=..`, then `&ip=..` if bound) that signs
/// `path` until `expires` (Unix seconds) with key `key` and its `secret`,
/// optionally for clients in `bind` only.
pub fn sign(secret: &[u8], key: &str, path: &str, expires: u64, bind: Option<IpNet>) -> String {
    let bind = bind.map(|net| net.to_string()).unwrap_or_default();
    let tag = mac(secret, path, expires, key, &bind)
        .finalize()
        .into_bytes();
    let signature = URL_SAFE_NO_PAD.encode(tag);
    if bind.is_empty() {
        format!("e={expires}&k={key}&s={signature}")
    } else {
        format!("e={expires}&k={key}&s={signature}&ip={bind}")
    }
}

/// [`sign`] with the ring's signing key; `None` if it has none.
pub fn sign_with(ring: &Keyring, path: &str, expires: u64, bind: Option<IpNet>) -> Option<String> {
    let (key, secret) = ring.signing_key()?;
    Some(sign(secret, key, path, expires, bind))
}

/// The path a signed URL for `blob_id` names: `/<blob id>`, or
/// `/<blob id>/<name>` so a browser saves it under that name (letters,
/// digits, `.`, `_` and `-` only). The blob id is the caller's to check.
pub fn blob_path(blob_id: &str, name: Option<&str>) -> Result<String, String> {
    match name {
        Some(name) => {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                return Err(format!(
                    "file name {name:?}: letters, digits, '.', '_' and '-' only"
                ));
            }
            Ok(format!("/{blob_id}/{name}"))
        }
        None => Ok(format!("/{blob_id}")),
    }
}

/// Parses the network a signed URL is bound to: an address
/// (`203.0.113.7`) or a CIDR block (`2001:db8::/32`).
pub fn parse_bind(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

/// The expiry (`e`) of a signed URL's query, if it has a well-formed one
/// (say nothing of whether it is genuine: [`verify`] first).
pub fn expires(query: Option<&str>) -> Option<u64> {
    params(query).ok().flatten().map(|p| p.expires)
}

/// Checks that `path?query` is a genuine, unexpired URL signed with a key
/// of `ring`, for `client` if it is bound to a network. `now`: Unix
/// seconds.
pub fn verify(
    ring: &Keyring,
    path: &str,
    query: Option<&str>,
    now: u64,
    policy: &UrlPolicy,
    client: Option<IpAddr>,
) -> Result<(), Denied> {
    let params = params(query)?.ok_or(Denied::Unsigned)?;
    let secret = ring.secret(params.key).ok_or(Denied::UnknownKey)?;
    let signature = URL_SAFE_NO_PAD
        .decode(params.signature)
        .map_err(|_| Denied::Malformed("s is not base64url"))?;
    mac(
        secret,
        path,
        params.expires,
        params.key,
        params.bind.unwrap_or(""),
    )
    .verify_slice(&signature)
    .map_err(|_| Denied::BadSignature)?;
    let skew = policy.clock_skew.as_secs();
    if params.expires > now.saturating_add(policy.max_lifetime.as_secs() + skew) {
        return Err(Denied::TooLong);
    }
    if now > params.expires.saturating_add(skew) {
        return Err(Denied::Expired);
    }
    if let Some(bind) = params.bind {
        let net = network(bind).ok_or(Denied::Malformed("ip is not an address or network"))?;
        if !client.is_some_and(|client| net.contains(&client)) {
            return Err(Denied::WrongAddress);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn ring() -> Keyring {
        Keyring::from_secrets(
            Some("k1"),
            [
                ("k1".to_owned(), vec![7; 32]),
                ("k2".to_owned(), vec![9; 32]),
            ],
        )
        .unwrap()
    }

    fn check(path: &str, query: &str) -> Result<(), Denied> {
        verify(&ring(), path, Some(query), NOW, &UrlPolicy::default(), None)
    }

    #[test]
    fn genuine_urls_pass_and_every_fault_is_named() {
        let ring = ring();
        let path = "/3000000015c12c473";
        let query = sign_with(&ring, path, NOW + 900, None).unwrap();
        assert_eq!(check(path, &query), Ok(()));
        assert_eq!(check(path, &format!("{query}&utm=cdn")), Ok(()));
        assert_eq!(check(path, ""), Err(Denied::Unsigned));
        assert_eq!(
            verify(&ring, path, None, NOW, &UrlPolicy::default(), None),
            Err(Denied::Unsigned)
        );
        // Another blob's signature, another name, a changed expiry.
        assert_eq!(
            check("/3000000015c12c474", &query),
            Err(Denied::BadSignature)
        );
        assert_eq!(
            check(&format!("{path}/x.html"), &query),
            Err(Denied::BadSignature)
        );
        let later = query.replacen(&format!("e={}", NOW + 900), &format!("e={}", NOW + 901), 1);
        assert_eq!(check(path, &later), Err(Denied::BadSignature));
        // Truncated, repeated, unknown key, signed by the other key.
        assert!(matches!(
            check(path, &query[..query.len() - 1]),
            Err(Denied::Malformed(_))
        ));
        assert!(matches!(
            check(path, &format!("{query}&e=1")),
            Err(Denied::Malformed(_))
        ));
        assert_eq!(
            check(path, &query.replace("k=k1", "k=k3")),
            Err(Denied::UnknownKey)
        );
        assert_eq!(
            check(path, &query.replace("k=k1", "k=k2")),
            Err(Denied::BadSignature)
        );
        let by_k2 = sign(&[9; 32], "k2", path, NOW + 900, None);
        assert_eq!(check(path, &by_k2), Ok(()));
        // Expired (after the skew), too long-lived.
        let expired = sign_with(&ring, path, NOW - 61, None).unwrap();
        assert_eq!(check(path, &expired), Err(Denied::Expired));
        assert_eq!(Denied::Expired.status(), 410);
        let skewed = sign_with(&ring, path, NOW - 59, None).unwrap();
        assert_eq!(check(path, &skewed), Ok(()));
        let forever = sign_with(&ring, path, NOW + 90_000, None).unwrap();
        assert_eq!(check(path, &forever), Err(Denied::TooLong));
    }

    #[test]
    fn bound_urls_work_only_inside_their_network() {
        let ring = ring();
        let path = "/3000000015c12c473";
        let net: IpNet = "203.0.113.0/24".parse().unwrap();
        let query = sign_with(&ring, path, NOW + 60, Some(net)).unwrap();
        let policy = UrlPolicy::default();
        let from = |addr: &str| {
            verify(
                &ring,
                path,
                Some(&query),
                NOW,
                &policy,
                Some(addr.parse().unwrap()),
            )
        };
        assert_eq!(from("203.0.113.7"), Ok(()));
        assert_eq!(from("198.51.100.7"), Err(Denied::WrongAddress));
        assert_eq!(
            verify(&ring, path, Some(&query), NOW, &policy, None),
            Err(Denied::WrongAddress)
        );
        // Widening the network breaks the signature.
        let wider = query.replace("/24", "/16");
        assert_eq!(
            verify(
                &ring,
                path,
                Some(&wider),
                NOW,
                &policy,
                Some("203.0.113.7".parse().unwrap())
            ),
            Err(Denied::BadSignature)
        );
        let encoded = query.replace('/', "%2F");
        assert_eq!(
            verify(
                &ring,
                path,
                Some(&encoded),
                NOW,
                &policy,
                Some("203.0.113.7".parse().unwrap())
            ),
            Err(Denied::BadSignature),
            "the signature covers the parameter as sent"
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics_and_never_passes(path in "\\PC{0,40}", query in "\\PC{0,120}") {
            prop_assert!(check(&path, &query).is_err());
        }

        #[test]
        fn any_change_to_a_signed_url_is_refused(
            name in "[0-9a-f]{17}(/[a-z]{1,8}\\.jpg)?",
            ttl in 1u64..80_000,
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let path = format!("/{name}");
            let query = sign_with(&ring(), &path, NOW + ttl, None).unwrap();
            prop_assert_eq!(check(&path, &query), Ok(()));
            // Change one byte of the path or of the query's e, k or s.
            let mut url = format!("{path}?{query}").into_bytes();
            let i = at.index(url.len());
            prop_assume!(url[i] != byte && url[i] != b'?' && byte != b'&' && byte != b'?');
            url[i] = byte;
            let url = String::from_utf8_lossy(&url).into_owned();
            let (path, query) = url.split_once('?').unwrap_or((&url, ""));
            prop_assert!(check(path, query).is_err(), "{}?{} passed", path, query);
        }
    }
}
