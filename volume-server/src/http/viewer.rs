//! A read of a blob this server holds no copy of, answered for its viewer.
//!
//! Step by step (see ARCHITECTURE.md, "Who checks what, where"):
//!
//! 1. The directory's `Lookup` (cached by [`crate::proxy::RemoteReader`])
//!    names the volume's collection. If it is signed, this server checks the
//!    URL itself, against the viewer's address (the TCP peer, or the client
//!    trusted proxies name), and refuses here what the holder would refuse.
//! 2. The request goes on to a copy with a vouch for the viewer's address
//!    ([`hayloft_access::viewer`]), signed with this server's key ring: the
//!    copy checks the URL again against that address, never against this
//!    server's own.
//! 3. A refusal from the copy comes back with its reason
//!    ([`crate::proxy::REFUSAL`]), which this server logs and takes out.
//!
//! So a URL bound to an address gets one verdict wherever the read lands.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, Method, StatusCode};

use super::{Response, denied, plain};

/// A read to answer from another copy, with what its checks need.
pub struct ReadForViewer {
    /// Finds the copies and fetches from them.
    pub remote: Arc<crate::proxy::RemoteReader>,
    /// Signed collections and the key ring (none: every blob is public).
    pub access: Option<Arc<crate::access::OriginAccess>>,
    /// The blob's volume.
    pub volume: u32,
    /// The request's path and query, as sent.
    pub path_and_query: String,
    /// Its method and headers.
    pub method: Method,
    /// Its headers (validators and range are passed on).
    pub headers: HeaderMap,
    /// The viewer's address.
    pub viewer: Option<IpAddr>,
    /// The server keeps an audit log (the collection is wanted for it).
    pub audited: bool,
}

impl ReadForViewer {
    /// The answer, why it was refused if it was, and the blob's collection
    /// as people name it (when there is an audit log and the directory
    /// said).
    pub async fn answer(self) -> (Response, Option<Cow<'static, str>>, Option<String>) {
        let collection = self.remote.collection(self.volume).await;
        let named = collection
            .as_deref()
            .filter(|_| self.audited)
            .map(|c| hayloft_access::collection_name(c).to_owned());
        if let (Some(access), Some(collection)) = (&self.access, &collection)
            && !access.all_public()
            && access.is_signed(collection)
        {
            let (path, query) = match self.path_and_query.split_once('?') {
                Some((path, query)) => (path, Some(query)),
                None => (self.path_and_query.as_str(), None),
            };
            if let Err(refused) = access.check(path, query, self.viewer) {
                return (
                    denied(refused),
                    Some(Cow::Borrowed(refused.reason())),
                    named,
                );
            }
        }
        let vouch = match (&self.access, self.viewer) {
            (Some(access), Some(viewer)) => access.vouch(&self.path_and_query, viewer),
            _ => None,
        };
        let read = self
            .remote
            .read(
                self.volume,
                &self.path_and_query,
                &self.method,
                &self.headers,
                vouch,
            )
            .await;
        let mut response = match read {
            Ok(response) => response,
            Err(crate::proxy::RemoteMiss::Unknown) => plain(StatusCode::NOT_FOUND, "not found\n"),
            Err(crate::proxy::RemoteMiss::Unreachable) => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "no copy of this blob is reachable\n",
            ),
        };
        let refusal = response
            .headers_mut()
            .remove(crate::proxy::REFUSAL)
            .and_then(|value| value.to_str().ok().map(|v| Cow::Owned(v.to_owned())));
        (response, refusal, named)
    }
}
