//! Access control for hayloft: key rings and signed URLs.
//!
//! - [`Keyring`]: the HMAC keys that sign and verify URLs, read from a TOML
//!   file whose secrets come from files or the environment, and
//!   [`SharedKeyring`], the copy a server keeps and reloads without a
//!   restart. Secrets never appear in `Debug` output, logs or errors.
//! - [`signed_url`]: signing a blob's URL path for a limited time, and
//!   checking such a URL (HMAC-SHA256 over a canonical string, compared in
//!   constant time).
//! - [`token`]: bearer tokens for gRPC (JWTs with scopes) and write grants
//!   for single blobs.
//! - [`audit`]: the audit log, one JSON line per access.
//! - [`limits`]: rate limits per client address (HTTP) and per caller and
//!   operation (gRPC).

pub mod audit;
pub mod grpc;
mod keyring;
pub mod limits;
pub mod signed_url;
pub mod token;

pub use keyring::{Keyring, KeyringError, SharedKeyring, valid_key_id, watch_keyring};
pub use signed_url::{Denied, UrlPolicy};

/// Why a server refuses to serve gRPC on `addr`: a non-loopback address
/// without tokens required, unless the operator said `insecure` (then it
/// only warns, at every start). `None`: it may serve.
pub fn insecure_listen(
    addr: std::net::SocketAddr,
    require_tokens: bool,
    insecure: bool,
) -> Option<String> {
    if addr.ip().is_loopback() || require_tokens {
        return None;
    }
    if insecure {
        tracing::warn!(%addr, "serving gRPC on a non-loopback address without tokens (insecure = true): \
            anyone who reaches it can read, write and delete any blob");
        return None;
    }
    Some(format!(
        "refusing to serve gRPC on {addr} without tokens: anyone who reaches it could read, \
         write and delete any blob. Set require_tokens = true with a keyring (--keyring K \
         --require-tokens), listen on a loopback address, or pass --insecure (insecure = true) \
         on a network you trust"
    ))
}

/// How a collection's blobs may be read over HTTP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Anyone with the blob id (its random cookie is the capability).
    #[default]
    Public,
    /// Only with a valid signature (`?e=&k=&s=`), see [`signed_url`].
    Signed,
}

impl std::str::FromStr for Access {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "public" => Ok(Access::Public),
            "signed" => Ok(Access::Signed),
            other => Err(format!(
                "unknown access mode {other:?} (expected \"public\" or \"signed\")"
            )),
        }
    }
}
