//! The credential a client sends with every call: `authorization: Bearer
//! <token>` (see `hayloft_access::token`). Clients are built over an
//! [`AuthChannel`], a channel that adds the credential to each request.

use std::sync::Arc;

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// The metadata key a token travels in.
pub const AUTHORIZATION: &str = "authorization";

/// What a client presents: nothing, a fixed token, or one made fresh when
/// needed (a server's own cluster token). Cheap to clone.
#[derive(Clone, Default)]
pub struct Credential(Option<Arc<dyn Fn() -> Option<AsciiMetadataValue> + Send + Sync>>);

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.write_str(if self.0.is_some() {
            "Credential(bearer)"
        } else {
            "Credential(none)"
        })
    }
}

impl Credential {
    /// No credential (a cluster that does not require tokens).
    pub fn none() -> Credential {
        Credential(None)
    }

    /// A fixed bearer token.
    ///
    /// # Errors
    /// INVALID_ARGUMENT if the token cannot travel in a header.
    pub fn bearer(token: &str) -> Result<Credential, Status> {
        let value: AsciiMetadataValue = MetadataValue::try_from(format!("Bearer {}", token.trim()))
            .map_err(|_| {
                Status::invalid_argument("the token has characters a header cannot carry")
            })?;
        Ok(Credential(Some(Arc::new(move || Some(value.clone())))))
    }

    /// The token in `HAYLOFT_TOKEN`, if set (what the command line and
    /// the tiering worker present).
    pub fn from_env() -> Credential {
        match std::env::var("HAYLOFT_TOKEN") {
            Ok(token) if !token.trim().is_empty() => Credential::bearer(&token).unwrap_or_default(),
            _ => Credential::none(),
        }
    }

    /// A token made by `token` at each call (it should cache it).
    pub fn from_fn(token: impl Fn() -> Option<String> + Send + Sync + 'static) -> Credential {
        Credential(Some(Arc::new(move || {
            MetadataValue::try_from(format!("Bearer {}", token()?)).ok()
        })))
    }

    /// A client of the volume server at `addr` (host:port) that sends the
    /// token in `HAYLOFT_TOKEN`, if set: what operators' commands use.
    ///
    /// # Errors
    /// The server cannot be reached.
    pub async fn volume_client(
        addr: &str,
    ) -> Result<crate::volume_client::VolumeClient<AuthChannel>, tonic::transport::Error> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        Ok(crate::volume_client::VolumeClient::new(
            Credential::from_env().channel(channel),
        ))
    }

    /// `channel`, sending this credential with every request.
    pub fn channel(&self, channel: Channel) -> AuthChannel {
        InterceptedService::new(channel, self.clone())
    }
}

impl tonic::service::Interceptor for Credential {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = self.0.as_ref().and_then(|token| token()) {
            request.metadata_mut().insert(AUTHORIZATION, value);
        }
        Ok(request)
    }
}

/// A channel whose requests carry a [`Credential`].
pub type AuthChannel = InterceptedService<Channel, Credential>;
