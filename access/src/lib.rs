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
//! - [`viewer`]: a volume server that proxies a read vouches for the
//!   viewer's address, so a signed URL bound to it is checked against the
//!   viewer wherever the read lands.
//! - [`tls`]: TLS for gRPC and the HTTP origin, client certificates between
//!   servers, reloaded without a restart ([`reload`]).
//! - [`grpc`]: the gate in front of a server's gRPC services (tokens,
//!   scopes, revocations, quotas, audit); [`keyring`]: the key ring file.

pub mod audit;
pub mod grpc;
mod keyring;
pub mod limits;
pub mod reload;
pub mod signed_url;
pub mod tls;
pub mod token;
pub mod viewer;

pub use keyring::{
    Keyring, KeyringError, RemoveKeyError, STALE_METRIC, SharedKeyring, valid_key_id,
    watch_keyring, without_key,
};
pub use signed_url::{Denied, UrlPolicy};

/// Why a server refuses to serve gRPC on `addr`: a non-loopback address
/// where no caller must prove who it is (neither tokens nor client
/// certificates required), unless the operator said `insecure` (then it
/// only warns, at every start). `None`: it may serve.
pub fn insecure_listen(
    addr: std::net::SocketAddr,
    require_tokens: bool,
    require_client_certs: bool,
    insecure: bool,
) -> Option<String> {
    if addr.ip().is_loopback() || require_tokens || require_client_certs {
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
         --require-tokens) or [tls] require_client_certs = true, listen on a loopback address, or pass --insecure (insecure = true) \
         on a network you trust"
    ))
}

/// Why a directory refuses to serve its metrics address `addr` (`/metrics`
/// and the operator page): a non-loopback address in a cluster secured by
/// client certificates alone, where the page could not ask its viewer for
/// any credential and would show the cluster with the directory's own.
/// With `require_tokens` the page asks for an `admin` token (and
/// `/metrics`, counters only, stays open for Prometheus); without any
/// security the gRPC rule ([`insecure_listen`]) already decided. `insecure`
/// lets it serve, warning at every start. `None`: it may serve.
pub fn insecure_metrics_listen(
    addr: std::net::SocketAddr,
    require_tokens: bool,
    require_client_certs: bool,
    insecure: bool,
) -> Option<String> {
    if addr.ip().is_loopback() || require_tokens || !require_client_certs {
        return None;
    }
    if insecure {
        tracing::warn!(%addr, "serving the operator page on a non-loopback address without tokens \
            (insecure = true): anyone who reaches it sees the cluster's servers and volumes");
        return None;
    }
    Some(format!(
        "refusing to serve the operator page and /metrics on {addr}: this cluster requires client \
         certificates, which the page cannot ask of a browser, so anyone who reaches it would see \
         the cluster's servers, addresses and volumes. Set require_tokens = true (the page then \
         asks for an admin token), listen on a loopback address, or pass --insecure \
         (insecure = true) on a network you trust"
    ))
}

/// The default collection's name wherever people write or read one: in
/// config (`[collections.default]`), scopes (`read:default`), purge tags
/// (`collection-default`), status and the audit log.
pub const DEFAULT_COLLECTION: &str = "default";

/// A collection's name as people write it: the empty name that the API and
/// the volumes store for the default collection is [`DEFAULT_COLLECTION`].
pub fn collection_name(stored: &str) -> &str {
    if stored.is_empty() {
        DEFAULT_COLLECTION
    } else {
        stored
    }
}

/// The name a collection is stored under (in the API and in volumes):
/// [`DEFAULT_COLLECTION`] is the empty name. With [`collection_name`], one
/// collection has one name whichever way it is spelt.
pub fn stored_collection(name: &str) -> &str {
    if name == DEFAULT_COLLECTION { "" } else { name }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_grpc_address_needs_tokens_or_client_certificates_or_insecure() {
        let public: std::net::SocketAddr = "0.0.0.0:9331".parse().unwrap();
        let loopback: std::net::SocketAddr = "127.0.0.1:9331".parse().unwrap();
        assert!(insecure_listen(loopback, false, false, false).is_none());
        let refusal = insecure_listen(public, false, false, false).unwrap();
        assert!(refusal.contains("require_client_certs") && refusal.contains("--insecure"));
        assert!(insecure_listen(public, true, false, false).is_none());
        assert!(insecure_listen(public, false, true, false).is_none());
        assert!(insecure_listen(public, false, false, true).is_none());
    }

    #[test]
    fn a_public_metrics_address_needs_the_page_protected_or_insecure() {
        let public: std::net::SocketAddr = "0.0.0.0:9339".parse().unwrap();
        let loopback: std::net::SocketAddr = "127.0.0.1:9339".parse().unwrap();
        // Secured by client certificates alone: the page cannot ask.
        assert!(insecure_metrics_listen(loopback, false, true, false).is_none());
        let refusal = insecure_metrics_listen(public, false, true, false).unwrap();
        assert!(refusal.contains("require_tokens") && refusal.contains("--insecure"));
        assert!(insecure_metrics_listen(public, false, true, true).is_none());
        // With tokens the page asks for one.
        assert!(insecure_metrics_listen(public, true, true, false).is_none());
        assert!(insecure_metrics_listen(public, true, false, false).is_none());
    }

    #[test]
    fn the_default_collection_has_one_name() {
        assert_eq!(collection_name(""), "default");
        assert_eq!(collection_name("photos"), "photos");
        assert_eq!(stored_collection("default"), "");
        assert_eq!(stored_collection("photos"), "photos");
        for name in ["", "default", "photos"] {
            assert_eq!(
                stored_collection(collection_name(name)),
                stored_collection(name)
            );
        }
    }
}
