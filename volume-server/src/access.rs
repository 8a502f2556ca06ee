//! The HTTP origin's access checks: which collections need signed URLs
//! (the directory says, with each heartbeat's answer) and the key ring that
//! verifies them (reloaded on SIGHUP, or when its files change).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use hayloft_access::{Denied, SharedKeyring, UrlPolicy};
use parking_lot::RwLock;

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
            .and_then(|text| serde_json::from_str::<BTreeSet<String>>(&text).ok())
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

    /// Whether `collection` is read only through signed URLs.
    pub fn is_signed(&self, collection: &str) -> bool {
        self.signed.read().contains(collection)
    }

    /// The directory's list of signed collections; kept on disk when it
    /// changes.
    pub fn set_signed(&self, collections: Vec<String>) {
        let collections: BTreeSet<String> = collections.into_iter().collect();
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
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        hayloft_access::signed_url::verify(&keyring.get(), path, query, now, &self.policy, client)
    }
}
