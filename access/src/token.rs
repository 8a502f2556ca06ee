//! Bearer tokens for gRPC and write grants for single blobs.
//!
//! A **token** is a JWT (RFC 7519) signed with HS256 by a key of the key
//! ring; its header names the key (`kid`), its claims name the subject
//! (`sub`), the scopes (`scope`, space-separated as in RFC 8693), the issue
//! and expiry times and a random id (`jti`, what revocation names). A scope
//! is an operation on a collection (`write:photos`, `read:*`) or one of the
//! two collection-less powers, `admin` (status, compaction, tiering, volume
//! and cluster operations) and `cluster` (the servers' own calls to each
//! other; it allows everything).
//!
//! A **write grant** is what `Assign` hands out with each blob id when
//! tokens are required: `<valid until>.<key id>.<MAC>`, an HMAC-SHA256 over
//! the blob id and the grant's own expiry. A volume
//! server checks it without asking the directory, and it writes that one
//! blob (a volume refuses a second write of an id), for a minute.
//!
//! Neither uses a key ring secret directly: each derives its own key
//! (HMAC-SHA256 of the secret over a label), so a signed URL's signature, a
//! token's and a grant's can never stand in for each other.
//!
//! Why one file of ~680 lines: a third of it is its tests; tokens and write
//! grants share the signing, the key ring and the clock-skew rules.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::Keyring;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// What a scope lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Read blobs of a collection (gRPC `Read`, `Stat`).
    Read,
    /// Upload blobs into a collection (`Assign`, `Write`, `WriteBatch`).
    Write,
    /// Delete blobs of a collection.
    Delete,
    /// Have signed URLs issued for a collection's blobs (`SignUrl`).
    Sign,
    /// Status, compaction, tiering, volume and cluster operations.
    Admin,
    /// The servers' own calls to each other (heartbeats, replication,
    /// repair, Raft); allows everything.
    Cluster,
}

impl Op {
    /// The scope word.
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Delete => "delete",
            Op::Sign => "sign",
            Op::Admin => "admin",
            Op::Cluster => "cluster",
        }
    }

    /// Whether a scope of this operation names a collection.
    pub(crate) fn has_collection(self) -> bool {
        !matches!(self, Op::Admin | Op::Cluster)
    }
}

/// One scope of a token: `<op>:<collection>` (`*` for every collection),
/// `admin` or `cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    op: Op,
    /// `None`: every collection (`*`), or a collection-less scope.
    collection: Option<String>,
}

impl Scope {
    /// `op` on `collection` (`"*"`: every collection).
    pub fn new(op: Op, collection: &str) -> Scope {
        Scope {
            op,
            collection: (op.has_collection() && collection != "*").then(|| collection.to_owned()),
        }
    }

    /// The operation this scope is for.
    pub fn op(&self) -> Op {
        self.op
    }

    /// Whether this scope allows `op` on `collection` (`""`, the default
    /// collection, is `default` in a scope).
    pub fn allows(&self, op: Op, collection: &str) -> bool {
        let collection = crate::collection_name(collection);
        self.op == Op::Cluster
            || (self.op == op
                && self
                    .collection
                    .as_deref()
                    .is_none_or(|mine| mine == collection))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.collection, self.op.has_collection()) {
            (_, false) => f.write_str(self.op.name()),
            (None, true) => write!(f, "{}:*", self.op.name()),
            (Some(collection), true) => write!(f, "{}:{collection}", self.op.name()),
        }
    }
}

/// Collection names a scope may carry: what a volume's collection may be
/// called, plus `*`.
fn valid_collection(name: &str) -> bool {
    name == "*"
        || (!name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')))
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Scope, String> {
        let (word, collection) = match s.split_once(':') {
            Some((word, collection)) => (word, Some(collection)),
            None => (s, None),
        };
        let op = match word {
            "read" => Op::Read,
            "write" => Op::Write,
            "delete" => Op::Delete,
            "sign" => Op::Sign,
            "admin" => Op::Admin,
            "cluster" => Op::Cluster,
            _ => {
                return Err(format!(
                    "unknown scope {s:?} (expected read:, write:, delete: or sign:<collection>, admin or cluster)"
                ));
            }
        };
        match (op.has_collection(), collection) {
            (true, Some(collection)) if valid_collection(collection) => {
                Ok(Scope::new(op, collection))
            }
            (true, _) => Err(format!(
                "scope {s:?} needs a collection: {word}:<collection> or {word}:* (letters, digits, '_', '-', '.')"
            )),
            (false, None) => Ok(Scope::new(op, "")),
            (false, Some(_)) => Err(format!("scope {word:?} takes no collection")),
        }
    }
}

/// Who called, as their token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's subject (`sub`).
    pub subject: String,
    /// The token's id (`jti`), what revocation names.
    pub token_id: String,
    /// What the token allows.
    pub scopes: Vec<Scope>,
    /// Unix seconds.
    pub expires_at: u64,
}

impl Principal {
    /// Whether any scope allows `op` on `collection`.
    pub fn allows(&self, op: Op, collection: &str) -> bool {
        self.scopes.iter().any(|s| s.allows(op, collection))
    }

    /// Whether any scope allows `op` on some collection.
    pub fn allows_some(&self, op: Op) -> bool {
        self.scopes
            .iter()
            .any(|s| s.op == Op::Cluster || s.op == op)
    }
}

/// Why a token or grant was refused. The message names no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token hayloft issued: bad format, unknown key or bad signature.
    #[error("invalid token")]
    Invalid,
    /// Past its expiry (and the clock-skew allowance).
    #[error("the token has expired")]
    Expired,
    /// Its id is on the cluster's deny list.
    #[error("the token has been revoked")]
    Revoked,
    /// The key ring has no key to sign with.
    #[error("the key ring has no signing key")]
    NoSigningKey,
    /// A token must carry at least one scope.
    #[error("a token needs at least one scope")]
    NoScope,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    scope: String,
    iat: u64,
    exp: u64,
    jti: String,
}

/// The key a purpose derives from a key ring secret.
pub(crate) fn derived_key(secret: &[u8], label: &[u8]) -> [u8; 32] {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(label);
    mac.finalize().into_bytes().into()
}

const TOKEN_LABEL: &[u8] = b"hayloft token key v1";
const GRANT_LABEL: &[u8] = b"hayloft write grant key v1";

/// A new token for `subject` with `scopes`, valid for `ttl` from `now`
/// (Unix seconds), signed with the key ring's signing key. Returns the
/// token and its id.
///
/// # Errors
/// [`TokenError::NoSigningKey`], [`TokenError::NoScope`].
pub fn mint(
    keyring: &Keyring,
    subject: &str,
    scopes: &[Scope],
    ttl: Duration,
    now: u64,
) -> Result<(String, String), TokenError> {
    if scopes.is_empty() {
        return Err(TokenError::NoScope);
    }
    let (kid, secret) = keyring.signing_key().ok_or(TokenError::NoSigningKey)?;
    let id = {
        let bytes: [u8; 16] = rand::random();
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let claims = Claims {
        sub: subject.to_owned(),
        scope: scopes
            .iter()
            .map(Scope::to_string)
            .collect::<Vec<_>>()
            .join(" "),
        iat: now,
        exp: now.saturating_add(ttl.as_secs()),
        jti: id.clone(),
    };
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    let key = EncodingKey::from_secret(&derived_key(secret, TOKEN_LABEL))
        .map_err(|_| TokenError::NoSigningKey)?;
    let token = jsonwebtoken::encode(&header, &claims, &key).map_err(|_| TokenError::Invalid)?;
    Ok((token, id))
}

/// Checks a token: signed by a key of the ring (named by its `kid`), not
/// expired (allowing `skew` seconds), every scope well-formed. The expiry
/// is checked against `now` (Unix seconds).
///
/// # Errors
/// [`TokenError::Invalid`] or [`TokenError::Expired`].
pub fn verify(
    keyring: &Keyring,
    token: &str,
    now: u64,
    skew: Duration,
) -> Result<Principal, TokenError> {
    if token.len() > 8192 {
        return Err(TokenError::Invalid);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
    if header.alg != Algorithm::HS256 {
        return Err(TokenError::Invalid);
    }
    let kid = header.kid.ok_or(TokenError::Invalid)?;
    let secret = keyring.secret(&kid).ok_or(TokenError::Invalid)?;
    let key = DecodingKey::from_secret(&derived_key(secret, TOKEN_LABEL))
        .map_err(|_| TokenError::Invalid)?;
    let mut validation = Validation::new(Algorithm::HS256);
    // The expiry is checked below, against the caller's clock.
    validation.validate_exp = false;
    validation.required_spec_claims = HashSet::new();
    let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
        .map_err(|_| TokenError::Invalid)?
        .claims;
    if claims.exp.saturating_add(skew.as_secs()) <= now {
        return Err(TokenError::Expired);
    }
    let scopes = claims
        .scope
        .split(' ')
        .map(str::parse)
        .collect::<Result<Vec<Scope>, _>>()
        .map_err(|_| TokenError::Invalid)?;
    if scopes.is_empty() {
        return Err(TokenError::Invalid);
    }
    Ok(Principal {
        subject: claims.sub,
        token_id: claims.jti,
        scopes,
        expires_at: claims.exp,
    })
}

/// The token a server presents to the others: scope `cluster`, minted
/// from the key ring's signing key, made again before it expires or when
/// the signing key changes.
pub struct ClusterToken {
    keyring: std::sync::Arc<crate::SharedKeyring>,
    subject: String,
    /// The token, its expiry and the key id it was signed with.
    cached: parking_lot::Mutex<Option<(String, u64, String)>>,
}

impl std::fmt::Debug for ClusterToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterToken")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// How long a server's own token lives, and how long before its expiry a
/// new one is made.
const CLUSTER_TOKEN_TTL: Duration = Duration::from_secs(3600);
const CLUSTER_TOKEN_RENEW: u64 = 900;

impl ClusterToken {
    /// The token of the server called `subject`.
    pub fn new(keyring: std::sync::Arc<crate::SharedKeyring>, subject: &str) -> ClusterToken {
        ClusterToken {
            keyring,
            subject: subject.to_owned(),
            cached: parking_lot::Mutex::new(None),
        }
    }

    /// The current token (`None` if the key ring has no signing key).
    pub fn current(&self) -> Option<String> {
        let now = hayloft_proto::unix_now();
        let ring = self.keyring.get();
        let kid = ring.signing_key()?.0.to_owned();
        let mut cached = self.cached.lock();
        if let Some((token, expires, signed_with)) = cached.as_ref()
            && *signed_with == kid
            && now + CLUSTER_TOKEN_RENEW < *expires
        {
            return Some(token.clone());
        }
        let scopes = [Scope::new(Op::Cluster, "")];
        let (token, _) = mint(&ring, &self.subject, &scopes, CLUSTER_TOKEN_TTL, now).ok()?;
        *cached = Some((token.clone(), now + CLUSTER_TOKEN_TTL.as_secs(), kid));
        Some(token)
    }
}

/// The MAC of a write grant.
fn grant_mac(secret: &[u8], blob_id: &str, until: u64) -> HmacSha256 {
    let key = derived_key(secret, GRANT_LABEL);
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&key).expect("HMAC takes any key");
    mac.update(format!("{blob_id}\n{until}").as_bytes());
    mac
}

/// A grant to write `blob_id` until `until` (Unix seconds).
///
/// # Errors
/// [`TokenError::NoSigningKey`].
pub fn grant(keyring: &Keyring, blob_id: &str, until: u64) -> Result<String, TokenError> {
    let (kid, secret) = keyring.signing_key().ok_or(TokenError::NoSigningKey)?;
    let mac = grant_mac(secret, blob_id, until).finalize();
    Ok(format!(
        "{until}.{kid}.{}",
        URL_SAFE_NO_PAD.encode(mac.into_bytes())
    ))
}

/// Checks a write grant for `blob_id` at `now` (Unix seconds), allowing
/// `skew` seconds.
///
/// # Errors
/// [`TokenError::Invalid`] (malformed, unknown key, another blob, forged)
/// or [`TokenError::Expired`].
pub fn check_grant(
    keyring: &Keyring,
    grant: &str,
    blob_id: &str,
    now: u64,
    skew: Duration,
) -> Result<(), TokenError> {
    let mut parts = grant.splitn(3, '.');
    let (Some(until), Some(kid), Some(mac)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Invalid);
    };
    // Digits, no leading zero: one spelling per time.
    if until.is_empty()
        || until.len() > 20
        || (until.len() > 1 && until.starts_with('0'))
        || !until.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(TokenError::Invalid);
    }
    let until: u64 = until.parse().map_err(|_| TokenError::Invalid)?;
    let secret = keyring.secret(kid).ok_or(TokenError::Invalid)?;
    let given = URL_SAFE_NO_PAD
        .decode(mac)
        .map_err(|_| TokenError::Invalid)?;
    grant_mac(secret, blob_id, until)
        .verify_slice(&given)
        .map_err(|_| TokenError::Invalid)?;
    if until.saturating_add(skew.as_secs()) <= now {
        return Err(TokenError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_800_000_000;
    const SKEW: Duration = Duration::from_secs(60);

    fn ring() -> Keyring {
        Keyring::from_secrets(
            Some("k1"),
            [
                (
                    "k1".to_owned(),
                    b"first secret, 32 bytes long.....".to_vec(),
                ),
                (
                    "k2".to_owned(),
                    b"second secret, 32 bytes long....".to_vec(),
                ),
            ],
        )
        .unwrap()
    }

    fn scopes(list: &[&str]) -> Vec<Scope> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn scopes_parse_print_and_match() {
        for text in [
            "write:photos",
            "read:*",
            "delete:a.b-c_d",
            "sign:x",
            "admin",
            "cluster",
        ] {
            assert_eq!(text.parse::<Scope>().unwrap().to_string(), text);
        }
        for bad in [
            "",
            "write",
            "write:",
            "admin:x",
            "erase:photos",
            "read:a/b",
            "read:a b",
        ] {
            assert!(bad.parse::<Scope>().is_err(), "{bad:?}");
        }
        let write: Scope = "write:photos".parse().unwrap();
        assert!(write.allows(Op::Write, "photos"));
        assert!(!write.allows(Op::Write, "videos"));
        assert!(!write.allows(Op::Delete, "photos"));
        let any: Scope = "read:*".parse().unwrap();
        assert!(any.allows(Op::Read, "photos") && any.allows(Op::Read, ""));
        let default: Scope = "write:default".parse().unwrap();
        assert!(default.allows(Op::Write, "") && !default.allows(Op::Write, "photos"));
        assert!(!any.allows(Op::Admin, ""));
        let admin: Scope = "admin".parse().unwrap();
        assert!(admin.allows(Op::Admin, "") && !admin.allows(Op::Write, "photos"));
        let cluster: Scope = "cluster".parse().unwrap();
        assert!(cluster.allows(Op::Write, "photos") && cluster.allows(Op::Admin, ""));
    }

    #[test]
    fn minted_tokens_verify_until_they_expire() {
        let ring = ring();
        let (token, id) = mint(
            &ring,
            "app",
            &scopes(&["write:photos", "sign:photos"]),
            Duration::from_secs(3600),
            NOW,
        )
        .unwrap();
        let who = verify(&ring, &token, NOW + 10, SKEW).unwrap();
        assert_eq!(who.subject, "app");
        assert_eq!(who.token_id, id);
        assert_eq!(who.expires_at, NOW + 3600);
        assert!(who.allows(Op::Write, "photos") && who.allows(Op::Sign, "photos"));
        assert!(!who.allows(Op::Write, "other") && !who.allows(Op::Admin, ""));
        assert!(who.allows_some(Op::Write) && !who.allows_some(Op::Delete));
        // Within the skew allowance, then not.
        assert!(verify(&ring, &token, NOW + 3600 + 30, SKEW).is_ok());
        assert_eq!(
            verify(&ring, &token, NOW + 3600 + 60, SKEW),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn a_removed_key_or_a_foreign_ring_refuses_the_token() {
        let (token, _) = mint(
            &ring(),
            "app",
            &scopes(&["admin"]),
            Duration::from_secs(60),
            NOW,
        )
        .unwrap();
        let without_k1 = Keyring::from_secrets(
            Some("k2"),
            [(
                "k2".to_owned(),
                b"second secret, 32 bytes long....".to_vec(),
            )],
        )
        .unwrap();
        assert_eq!(
            verify(&without_k1, &token, NOW, SKEW),
            Err(TokenError::Invalid)
        );
        let other = Keyring::from_secrets(
            Some("k1"),
            [(
                "k1".to_owned(),
                b"another first secret, 32 bytes..".to_vec(),
            )],
        )
        .unwrap();
        assert_eq!(verify(&other, &token, NOW, SKEW), Err(TokenError::Invalid));
        assert_eq!(
            mint(&ring(), "app", &[], Duration::from_secs(60), NOW),
            Err(TokenError::NoScope)
        );
    }

    #[test]
    fn a_token_signed_with_the_raw_secret_is_refused() {
        // Someone who knows how URLs are signed cannot make a token with
        // the same secret: tokens use a derived key.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".to_owned());
        let claims = Claims {
            sub: "x".into(),
            scope: "cluster".into(),
            iat: NOW,
            exp: NOW + 60,
            jti: "1".into(),
        };
        let token = jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(b"first secret, 32 bytes long.....").unwrap(),
        )
        .unwrap();
        assert_eq!(verify(&ring(), &token, NOW, SKEW), Err(TokenError::Invalid));
    }

    #[test]
    fn grants_write_one_blob_until_they_expire() {
        let ring = ring();
        let g = grant(&ring, "100000001abcdef01", NOW + 60).unwrap();
        assert!(check_grant(&ring, &g, "100000001abcdef01", NOW, SKEW).is_ok());
        assert_eq!(
            check_grant(&ring, &g, "100000002abcdef01", NOW, SKEW),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            check_grant(&ring, &g, "100000001abcdef01", NOW + 120, SKEW),
            Err(TokenError::Expired)
        );
        // A later expiry written over the grant's breaks its MAC.
        let (_, rest) = g.split_once('.').unwrap();
        let stretched = format!("{}.{rest}", NOW + 9999);
        assert_eq!(
            check_grant(&ring, &stretched, "100000001abcdef01", NOW + 120, SKEW),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn a_servers_own_token_follows_the_signing_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k1"), b"first secret, 32 bytes long.....").unwrap();
        std::fs::write(dir.path().join("k2"), b"second secret, 32 bytes long....").unwrap();
        let ring_file = dir.path().join("ring.toml");
        let write_ring = |signing: &str| {
            std::fs::write(
                &ring_file,
                format!(
                    "signing = \"{signing}\"\n[[keys]]\nid = \"k1\"\nsecret_file = \"k1\"\n\
                     [[keys]]\nid = \"k2\"\nsecret_file = \"k2\"\n"
                ),
            )
            .unwrap();
        };
        write_ring("k1");
        let shared = crate::SharedKeyring::load(&ring_file).unwrap();
        let own = ClusterToken::new(std::sync::Arc::clone(&shared), "volume:vs0");
        let first = own.current().unwrap();
        assert_eq!(own.current().unwrap(), first, "kept while it is fresh");
        let kid = |token: &str| jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
        assert_eq!(kid(&first), "k1");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let who = verify(&shared.get(), &first, now, SKEW).unwrap();
        assert_eq!(who.subject, "volume:vs0");
        assert!(who.allows(Op::Write, "anything") && who.allows(Op::Admin, ""));
        // A new signing key: the next call signs with it.
        write_ring("k2");
        shared.reload().unwrap();
        assert_eq!(kid(&own.current().unwrap()), "k2");
    }

    proptest! {
        #[test]
        fn token_parsing_never_panics(text in ".{0,400}") {
            let _ = verify(&ring(), &text, NOW, SKEW);
            let _ = check_grant(&ring(), &text, "100000001abcdef01", NOW, SKEW);
        }

        #[test]
        fn no_single_byte_change_to_a_token_is_accepted(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let ring = ring();
            let (token, _) = mint(&ring, "app", &scopes(&["read:photos"]), Duration::from_secs(60), NOW).unwrap();
            let mut bytes = token.clone().into_bytes();
            let i = at.index(bytes.len());
            prop_assume!(bytes[i] != byte);
            bytes[i] = byte;
            if let Ok(changed) = String::from_utf8(bytes) {
                // Base64 has a few encodings of the last character's spare
                // bits; a change that decodes to the same bytes is the same
                // token, anything else must fail.
                if let Ok(who) = verify(&ring, &changed, NOW, SKEW) {
                    prop_assert_eq!(who, verify(&ring, &token, NOW, SKEW).unwrap());
                }
            }
        }

        #[test]
        fn no_single_byte_change_to_a_grant_is_accepted(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let ring = ring();
            let g = grant(&ring, "100000001abcdef01", NOW + 60).unwrap();
            let mut bytes = g.clone().into_bytes();
            let i = at.index(bytes.len());
            prop_assume!(bytes[i] != byte);
            bytes[i] = byte;
            if let Ok(changed) = String::from_utf8(bytes) {
                let accepted = check_grant(&ring, &changed, "100000001abcdef01", NOW, SKEW).is_ok();
                // Only a change in the MAC's last character's unused bits
                // leaves the decoded MAC the same.
                prop_assert!(!accepted || i == g.len() - 1);
            }
        }
    }
}
