//! Who a proxied read is for.
//!
//! Every volume server answers HTTP reads of any blob: one that holds no
//! copy proxies the request to a server that does, from its own address.
//! A signed URL bound to the viewer's network (`ip=`) must still be checked
//! against the viewer, not the proxying server. So the proxying server
//! vouches for the viewer's address in the [`VIEWER_HEADER`] of the request
//! it sends on: `<address>;<valid until>;<key id>;<MAC>`, where the MAC is
//! HMAC-SHA256 over `<path and query>\n<address>\n<valid until>` with a key
//! derived from a key ring secret (label `hayloft proxied viewer key v1`,
//! so it cannot stand in for a URL signature, a token or a write grant).
//!
//! The server holding the copy believes the address only if the MAC
//! verifies with its own ring for that very request path (query included)
//! and has not expired: a viewer who sends the header itself cannot pick
//! its own address, and a vouch seen on the wire opens nothing but the
//! same URL for the same address within a minute. Whoever holds the key
//! ring could forge a vouch, but could as well sign a URL for any
//! address: it gains nothing.

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};

use crate::Keyring;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The request header a proxying volume server vouches for the viewer in.
pub const VIEWER_HEADER: &str = "x-hayloft-viewer";

/// How long a vouch is good for after it is made (plus the clock skew the
/// checking server allows).
pub const VOUCH_LIFETIME: u64 = 30;

const VIEWER_LABEL: &[u8] = b"hayloft proxied viewer key v1";

fn vouch_mac(secret: &[u8], path: &str, viewer: IpAddr, until: u64) -> HmacSha256 {
    let key = crate::token::derived_key(secret, VIEWER_LABEL);
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&key).expect("HMAC takes any key");
    mac.update(format!("{path}\n{viewer}\n{until}").as_bytes());
    mac
}

/// The [`VIEWER_HEADER`] value vouching that the request for `path` (path
/// and query, exactly as sent on) is made for `viewer`, valid until `now`
/// + [`VOUCH_LIFETIME`]. `None` if the ring has no signing key.
pub fn vouch(ring: &Keyring, path: &str, viewer: IpAddr, now: u64) -> Option<String> {
    let (kid, secret) = ring.signing_key()?;
    let until = now.saturating_add(VOUCH_LIFETIME);
    let mac = vouch_mac(secret, path, viewer, until).finalize();
    Some(format!(
        "{viewer};{until};{kid};{}",
        URL_SAFE_NO_PAD.encode(mac.into_bytes())
    ))
}

/// The viewer a [`VIEWER_HEADER`] value vouches for, if it is genuine for
/// `path` (path and query as received) and unexpired at `now`, allowing
/// `skew` seconds. `None` for anything else: the request is then taken to
/// come from its TCP peer.
pub fn vouched(ring: &Keyring, value: &str, path: &str, now: u64, skew: u64) -> Option<IpAddr> {
    let mut parts = value.split(';');
    let (Some(viewer), Some(until), Some(kid), Some(mac), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let viewer: IpAddr = viewer.parse().ok()?;
    // Digits, no leading zero: one spelling per time.
    if until.is_empty()
        || until.len() > 20
        || (until.len() > 1 && until.starts_with('0'))
        || !until.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let until: u64 = until.parse().ok()?;
    let secret = ring.secret(kid)?;
    let given = URL_SAFE_NO_PAD.decode(mac).ok()?;
    vouch_mac(secret, path, viewer, until)
        .verify_slice(&given)
        .ok()?;
    (now <= until.saturating_add(skew)).then_some(viewer)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn ring(secret: u8) -> Keyring {
        Keyring::from_secrets(Some("k1"), [("k1".to_owned(), vec![secret; 32])]).unwrap()
    }

    #[test]
    fn a_vouch_names_its_viewer_for_its_request_until_it_expires() {
        let viewer: IpAddr = "127.0.0.2".parse().unwrap();
        let path = "/3000000015c12c473?e=1&k=k1&s=x&ip=127.0.0.2";
        let value = vouch(&ring(7), path, viewer, NOW).unwrap();
        assert_eq!(vouched(&ring(7), &value, path, NOW, 60), Some(viewer));
        assert_eq!(vouched(&ring(7), &value, path, NOW + 90, 60), Some(viewer));
        assert_eq!(vouched(&ring(7), &value, path, NOW + 91, 60), None);
        // Another request, another ring, another address.
        assert_eq!(
            vouched(&ring(7), &value, "/3000000015c12c473", NOW, 60),
            None
        );
        assert_eq!(vouched(&ring(8), &value, path, NOW, 60), None);
        let moved = value.replacen("127.0.0.2", "127.0.0.3", 1);
        assert_eq!(vouched(&ring(7), &moved, path, NOW, 60), None);
        let later = value.replacen(
            &(NOW + VOUCH_LIFETIME).to_string(),
            &(NOW + 999).to_string(),
            1,
        );
        assert_eq!(vouched(&ring(7), &later, path, NOW, 60), None);
    }

    proptest! {
        #[test]
        fn no_changed_byte_of_a_vouch_passes(at in 0usize..200, byte in any::<u8>()) {
            let viewer: IpAddr = "10.1.2.3".parse().unwrap();
            let value = vouch(&ring(7), "/1a", viewer, NOW).unwrap().into_bytes();
            let mut changed = value.clone();
            // The last character's two spare bits (43 base64url
            // characters for 32 bytes) may change without changing the MAC.
            let at = at % (changed.len() - 1);
            prop_assume!(changed[at] != byte);
            changed[at] = byte;
            let text = String::from_utf8_lossy(&changed);
            prop_assert!(vouched(&ring(7), &text, "/1a", NOW, 60).is_none());
        }
    }
}
