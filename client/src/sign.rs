//! Signed URLs: signed here with a key, or by the directory.

#[allow(unused_imports)]
use crate::prelude::*;

/// A signed URL for `blob_id` (optionally `/<name>` after it, for the
/// browser's sake) under `base` (`https://cdn.example.com`), valid for
/// `ttl` from now, for clients in `bind` only if given. Signed with the
/// ring's signing key: see `hayloft_access::signed_url`.
pub fn sign_url(
    ring: &hayloft_access::Keyring,
    base: &str,
    blob_id: &str,
    name: Option<&str>,
    ttl: Duration,
    bind: Option<ipnet::IpNet>,
) -> Result<String> {
    let blob: BlobId = blob_id.parse()?;
    let path = hayloft_access::signed_url::blob_path(&blob.to_string(), name)
        .map_err(Error::InvalidArgument)?;
    let expires = hayloft_storage::unix_now().saturating_add(ttl.as_secs().max(1));
    let query =
        hayloft_access::signed_url::sign_with(ring, &path, expires, bind).ok_or_else(|| {
            Error::InvalidArgument(
                "the key ring names no signing key (signing = \"<key id>\")".into(),
            )
        })?;
    Ok(format!("{}{path}?{query}", base.trim_end_matches('/')))
}

impl Client {
    /// A signed URL for `blob_id` on the HTTP origin of a server holding
    /// it, valid for `ttl` (see [`sign_url`]).
    pub async fn signed_url(
        &self,
        ring: &hayloft_access::Keyring,
        blob_id: &str,
        ttl: Duration,
        bind: Option<ipnet::IpNet>,
    ) -> Result<String> {
        let volume = blob_id.parse::<BlobId>()?.volume().0;
        let locations = self
            .in_regions(|region| async move {
                match self.locate(region, volume, false).await {
                    Ok(locations) => Ok(locations),
                    Err(e @ Error::NoLocation(_)) => Err(Miss::NotHere(e)),
                    Err(e) => Err(Miss::directory(e)),
                }
            })
            .await?;
        let location = locations.first().ok_or(Error::NoLocation(volume))?;
        sign_url(ring, &location.origin_url(), blob_id, None, ttl, bind)
    }

    /// A signed URL for `blob_id` signed by the directory (`SignUrl`), for
    /// a client holding a token with the `sign:<collection>` scope but not
    /// the key ring: valid for `ttl`, `/<blob id>/<name>` if named, for
    /// clients in `bind` only if given. The answer's `path` goes after a
    /// CDN's base; its `urls` are the path at each live copy's origin.
    /// With several regions, signed by the first region that knows the
    /// blob's volume (one key ring per deployment: any region's signature
    /// verifies in every region).
    pub async fn request_signed_url(
        &self,
        blob_id: &str,
        ttl: Duration,
        name: Option<&str>,
        bind: Option<ipnet::IpNet>,
    ) -> Result<hayloft_proto::SignUrlResponse> {
        let request = hayloft_proto::SignUrlRequest {
            blob_id: blob_id.to_owned(),
            ttl_seconds: ttl.as_secs().max(1),
            name: name.unwrap_or_default().to_owned(),
            client_network: bind.map(|net| net.to_string()).unwrap_or_default(),
        };
        let request = &request;
        self.in_regions(|region| async move {
            self.regions[region]
                .directory
                .call(|mut directory| {
                    let request = request.clone();
                    async move { directory.sign_url(request).await }
                })
                .await
                .map_err(|status| match Error::Status(status) {
                    e if e.code() == Some(Code::NotFound) => Miss::NotHere(e),
                    e => Miss::directory(e),
                })
        })
        .await
    }
}
