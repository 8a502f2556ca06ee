//! The HTTP origin's access checks: which collections need signed URLs
//! (the directory says, with each heartbeat's answer) and the key ring that
//! verifies them (reloaded on SIGHUP, or when its files change); and the
//! viewer's address of a read proxied between servers
//! ([`hayloft_access::viewer`]), so that an address-bound URL gets the same
//! verdict from every server.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use hayloft_access::{Denied, SharedKeyring, UrlPolicy};
use parking_lot::RwLock;

/// Collection names as volumes store them: `default` (what a directory of
/// an earlier release sent for `[collections.default]`) is the empty name.
fn stored_names(collections: Vec<String>) -> BTreeSet<String> {
    collections
        .iter()
        .map(|name| hayloft_access::stored_collection(name).to_owned())
        .collect()
}

/// What the origin checks before serving a blob.
pub struct OriginAccess {
    keyring: Option<Arc<SharedKeyring>>,
    policy: UrlPolicy,
    /// Collections read only through signed URLs.
    signed: RwLock<Arc<BTreeSet<String>>>,
    /// Where the last set the directory sent is kept, so that a restarted
    /// server guards them before its first heartbeat is answered.
    saved: Option<PathBuf>,
}

impl OriginAccess {
    /// Checks with `keyring` (none: a signed collection's blobs are refused
    /// to everyone) under `policy`; the signed collections are kept in
    /// `saved` (and read back from it now).
    pub fn new(
        keyring: Option<Arc<SharedKeyring>>,
        policy: UrlPolicy,
        saved: Option<PathBuf>,
    ) -> OriginAccess {
        let signed = saved
            .as_deref()
            .and_then(|path| std::fs::read_to_string(path).ok())
            .and_then(|text| serde_json::from_str::<Vec<String>>(&text).ok())
            .map(stored_names)
            .unwrap_or_default();
        OriginAccess {
            keyring,
            policy,
            signed: RwLock::new(Arc::new(signed)),
            saved,
        }
    }

    /// No collection needs a signature (the check can be skipped).
    pub fn all_public(&self) -> bool {
        self.signed.read().is_empty()
    }

    /// Whether `collection` (as its volumes store it) is read only through
    /// signed URLs.
    pub fn is_signed(&self, collection: &str) -> bool {
        self.signed.read().contains(collection)
    }

    /// The directory's list of signed collections; kept on disk when it
    /// changes.
    pub fn set_signed(&self, collections: Vec<String>) {
        let collections = stored_names(collections);
        if **self.signed.read() == collections {
            return;
        }
        if !collections.is_empty() && self.keyring.is_none() {
            tracing::warn!(
                ?collections,
                "collections are signed but this server has no key ring \
                (keyring in its config): their blobs are refused to every reader"
            );
        }
        tracing::info!(?collections, "collections read through signed URLs only");
        if let Some(path) = &self.saved
            && let Ok(json) = serde_json::to_vec(&collections)
            && let Err(e) = hayloft_storage::write_atomically(path, &json)
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot keep the signed collections");
        }
        *self.signed.write() = Arc::new(collections);
    }

    /// Why the key ring did not reload, if it did not (it keeps the last
    /// good keys; the directory lists it as a problem).
    pub fn keyring_problem(&self) -> Option<String> {
        self.keyring.as_ref()?.stale()
    }

    /// The value of [`hayloft_access::viewer::VIEWER_HEADER`] vouching that
    /// a request for `path_and_query`, proxied to another copy, is made for
    /// `viewer` (none without a key ring to sign it).
    pub fn vouch(&self, path_and_query: &str, viewer: IpAddr) -> Option<http::HeaderValue> {
        let ring = self.keyring.as_ref()?.get();
        let value = hayloft_access::viewer::vouch(&ring, path_and_query, viewer, now())?;
        http::HeaderValue::try_from(value).ok()
    }

    /// The viewer a proxied request for `path_and_query` is made for, if
    /// its [`hayloft_access::viewer::VIEWER_HEADER`] is genuine (made by a
    /// holder of this key ring for this very request, not expired).
    pub fn vouched_viewer(
        &self,
        headers: &http::HeaderMap,
        path_and_query: &str,
    ) -> Option<IpAddr> {
        let value = headers
            .get(hayloft_access::viewer::VIEWER_HEADER)?
            .to_str()
            .ok()?;
        let ring = self.keyring.as_ref()?.get();
        let skew = self.policy.clock_skew.as_secs();
        let viewer = hayloft_access::viewer::vouched(&ring, value, path_and_query, now(), skew);
        if viewer.is_none() {
            tracing::debug!("a proxied read's viewer is not vouched for: taken from its peer");
        }
        viewer
    }

    /// Checks a request for a blob of a signed collection: `path` and
    /// `query` as sent, from `client`.
    pub fn check(
        &self,
        path: &str,
        query: Option<&str>,
        client: Option<IpAddr>,
    ) -> Result<(), Denied> {
        let Some(keyring) = &self.keyring else {
            return Err(Denied::UnknownKey);
        };
        hayloft_access::signed_url::verify(&keyring.get(), path, query, now(), &self.policy, client)
    }
}

use hayloft_storage::unix_now as now;
