//! The credential a client sends with every call: `authorization: Bearer
//! <token>` (see `hayloft_access::token`), and over TLS the CA it trusts
//! and its client certificate. Clients are built over an
//! [`AuthChannel`], a channel that adds the credential to each request.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

/// The metadata key a token travels in.
pub const AUTHORIZATION: &str = "authorization";

/// What a client presents: a bearer token (none, a fixed one, or one made
/// fresh when needed: a server's own cluster token), and for a cluster
/// that serves TLS the CA it trusts and, where servers require client
/// certificates, its own certificate. Cheap to clone.
#[derive(Clone, Default)]
pub struct Credential {
    token: Option<Arc<dyn Fn() -> Option<AsciiMetadataValue> + Send + Sync>>,
    tls: Option<Arc<dyn Fn() -> ClientTlsConfig + Send + Sync>>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("Credential")
            .field("bearer", &self.token.is_some())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// The environment variables [`Credential::from_env`] reads.
pub const TOKEN_ENV: &str = "HAYLOFT_TOKEN";
/// PEM file of the CA that signed the cluster's certificates: set, calls
/// go over TLS and trust this CA only.
pub const TLS_CA_ENV: &str = "HAYLOFT_TLS_CA";
/// PEM file of the client certificate (chain) presented to servers that
/// require one.
pub const TLS_CERT_ENV: &str = "HAYLOFT_TLS_CERT";
/// PEM file of the client certificate's private key.
pub const TLS_KEY_ENV: &str = "HAYLOFT_TLS_KEY";

fn read_pem(what: &str, path: &Path) -> Result<Vec<u8>, Status> {
    std::fs::read(path).map_err(|e| {
        Status::invalid_argument(format!("cannot read the {what} {}: {e}", path.display()))
    })
}

impl Credential {
    /// No credential (a cluster that does not require tokens, over plain
    /// TCP).
    pub fn none() -> Credential {
        Credential::default()
    }

    /// A fixed bearer token.
    ///
    /// # Errors
    /// INVALID_ARGUMENT if the token cannot travel in a header.
    pub fn bearer(token: &str) -> Result<Credential, Status> {
        Credential::none().with_token(token)
    }

    /// The same credential with the fixed bearer `token` instead of its own.
    ///
    /// # Errors
    /// INVALID_ARGUMENT if the token cannot travel in a header.
    pub fn with_token(mut self, token: &str) -> Result<Credential, Status> {
        let value: AsciiMetadataValue = MetadataValue::try_from(format!("Bearer {}", token.trim()))
            .map_err(|_| {
                Status::invalid_argument("the token has characters a header cannot carry")
            })?;
        self.token = Some(Arc::new(move || Some(value.clone())));
        Ok(self)
    }

    /// The same credential over TLS: `tls` gives the CA to trust and the
    /// client certificate, asked each time a connection is made (a server
    /// reloads its certificates without a restart).
    pub fn with_tls(
        mut self,
        tls: impl Fn() -> ClientTlsConfig + Send + Sync + 'static,
    ) -> Credential {
        self.tls = Some(Arc::new(tls));
        self
    }

    /// The same credential over TLS trusting the CA in the PEM file `ca`,
    /// presenting the certificate and key in `identity` (PEM files) if
    /// given.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming a file that cannot be read.
    pub fn with_tls_files(
        self,
        ca: &Path,
        identity: Option<(&Path, &Path)>,
    ) -> Result<Credential, Status> {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read_pem("CA certificate", ca)?));
        if let Some((cert, key)) = identity {
            config = config.identity(Identity::from_pem(
                read_pem("client certificate", cert)?,
                read_pem("client key", key)?,
            ));
        }
        Ok(self.with_tls(move || config.clone()))
    }

    /// What the command line and the tiering worker present: the token in
    /// `HAYLOFT_TOKEN`, and TLS if `HAYLOFT_TLS_CA` names a CA (with the
    /// client certificate in `HAYLOFT_TLS_CERT` and `HAYLOFT_TLS_KEY`).
    ///
    /// # Errors
    /// INVALID_ARGUMENT: an unreadable file, a certificate without its key,
    /// or a token a header cannot carry.
    pub fn from_env() -> Result<Credential, Status> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let mut credential = Credential::none();
        if let Some(token) = std::env::var(TOKEN_ENV)
            .ok()
            .filter(|t| !t.trim().is_empty())
        {
            credential = credential.with_token(&token)?;
        }
        let identity = match (var(TLS_CERT_ENV), var(TLS_KEY_ENV)) {
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            (None, None) => None,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "{TLS_CERT_ENV} and {TLS_KEY_ENV} go together: set both or neither"
                )));
            }
        };
        match var(TLS_CA_ENV) {
            Some(ca) => credential.with_tls_files(
                Path::new(&ca),
                identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            ),
            None if identity.is_some() => Err(Status::invalid_argument(format!(
                "a client certificate needs {TLS_CA_ENV} (the CA that signed the servers' certificates)"
            ))),
            None => Ok(credential),
        }
    }

    /// A token made by `token` at each call (it should cache it).
    pub fn from_fn(token: impl Fn() -> Option<String> + Send + Sync + 'static) -> Credential {
        Credential {
            token: Some(Arc::new(move || {
                MetadataValue::try_from(format!("Bearer {}", token()?)).ok()
            })),
            tls: None,
        }
    }

    /// Whether calls go over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The URL scheme of the cluster's gRPC and HTTP addresses for this
    /// credential: `https` over TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.is_tls() { "https" } else { "http" }
    }

    /// An endpoint for the server at `addr` ("host:port", or a URL), over
    /// TLS if this credential has it. Settings are the caller's.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for an address that is not one.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, Status> {
        let uri = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("{}://{addr}", self.scheme())
        };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|e| Status::invalid_argument(format!("bad server address {addr:?}: {e}")))?
            .initial_stream_window_size(crate::STREAM_WINDOW_BYTES)
            .initial_connection_window_size(crate::CONNECTION_WINDOW_BYTES)
            .max_frame_size(crate::MAX_FRAME_BYTES);
        match &self.tls {
            Some(tls) => endpoint
                .tls_config(tls())
                .map_err(|e| Status::invalid_argument(format!("TLS settings for {addr}: {e}"))),
            None => Ok(endpoint),
        }
    }

    /// A client of the volume server at `addr` (host:port) presenting what
    /// [`Credential::from_env`] finds: what operators' commands use.
    ///
    /// # Errors
    /// A bad environment or address, or the server cannot be reached.
    pub async fn volume_client(
        addr: &str,
    ) -> Result<crate::volume_client::VolumeClient<AuthChannel>, Status> {
        let credential = Credential::from_env()?;
        let channel = credential
            .endpoint(addr)?
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("cannot reach {addr}: {e}")))?;
        Ok(crate::volume_client::VolumeClient::new(
            credential.channel(channel),
        ))
    }

    /// `channel`, sending this credential with every request.
    pub fn channel(&self, channel: Channel) -> AuthChannel {
        InterceptedService::new(channel, self.clone())
    }
}

impl tonic::service::Interceptor for Credential {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = self.token.as_ref().and_then(|token| token()) {
            request.metadata_mut().insert(AUTHORIZATION, value);
        }
        Ok(request)
    }
}

/// A channel whose requests carry a [`Credential`].
pub type AuthChannel = InterceptedService<Channel, Credential>;

/// Why a connection failed, if TLS refused it: the two sides disagree
/// (plain text against TLS), the server refused this side's certificate
/// (or its absence), or this side does not trust the server's. Such a
/// failure does not pass by itself, so callers give up at once instead of
/// retrying (FAILED_PRECONDITION); the text says what to change. `None`
/// for anything else.
pub fn tls_refusal(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        let text = error.to_string();
        if let Some(alert) = text.split("received fatal alert: ").nth(1) {
            let alert = alert
                .split(|c: char| !c.is_ascii_alphanumeric())
                .next()
                .unwrap_or_default();
            return Some(if alert.starts_with("CertificateRequired") {
                format!(
                    "the server requires a client certificate ({TLS_CERT_ENV} and {TLS_KEY_ENV}, \
                     or [tls] cert and key on a server)"
                )
            } else {
                format!("the server refused the TLS handshake ({alert})")
            });
        }
        if let Some(why) = text.split("invalid peer certificate: ").nth(1) {
            return Some(format!(
                "the server's certificate is not trusted ({why}): {TLS_CA_ENV} (or [tls] ca) must \
                 name the CA that signed it"
            ));
        }
        if text.contains("frame with invalid size") {
            return Some(format!(
                "the server speaks TLS and this client does not: set {TLS_CA_ENV} (or [tls] on a \
                 server)"
            ));
        }
        if text.contains("InvalidContentType") || text.contains("corrupt message") {
            return Some(
                "the server does not speak TLS and this client does: unset HAYLOFT_TLS_* (or [tls])"
                    .to_owned(),
            );
        }
        cause = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Chain(&'static str, Option<Box<Chain>>);

    impl std::fmt::Display for Chain {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Chain {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|c| c as _)
        }
    }

    fn refusal(deepest: &'static str) -> Option<String> {
        let chain = Chain(
            "transport error",
            Some(Box::new(Chain(
                "connection error",
                Some(Box::new(Chain(deepest, None))),
            ))),
        );
        tls_refusal(&chain)
    }

    #[test]
    fn tls_refusals_are_told_apart_from_other_failures() {
        let said = refusal("received fatal alert: CertificateRequired").unwrap();
        assert!(said.contains(TLS_CERT_ENV), "{said}");
        let said = refusal("received fatal alert: UnknownCA\" })))").unwrap();
        assert!(said.ends_with("(UnknownCA)"), "{said}");
        let said = refusal("invalid peer certificate: UnknownIssuer").unwrap();
        assert!(said.contains(TLS_CA_ENV), "{said}");
        let said = refusal("connection error detected: frame with invalid size").unwrap();
        assert!(said.contains("speaks TLS"), "{said}");
        let said = refusal("received corrupt message of type InvalidContentType").unwrap();
        assert!(said.contains("does not speak TLS"), "{said}");
        // What passes by itself is retried as before.
        assert_eq!(refusal("Connection refused (os error 111)"), None);
        assert_eq!(refusal("stream closed because of a broken pipe"), None);
    }

    #[test]
    fn the_environment_gives_tls_only_whole() {
        // Read with set_var in one test only: no other test of this crate
        // reads these variables.
        let dir = std::env::temp_dir().join(format!("hayloft-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "not checked until a connection is made").unwrap();
        let set = |vars: &[(&str, Option<&Path>)]| {
            for (name, value) in vars {
                // SAFETY: this is the only test of the crate touching them.
                unsafe {
                    match value {
                        Some(v) => std::env::set_var(name, v),
                        None => std::env::remove_var(name),
                    }
                }
            }
        };
        set(&[
            (TLS_CA_ENV, None),
            (TLS_CERT_ENV, None),
            (TLS_KEY_ENV, None),
        ]);
        assert!(!Credential::from_env().unwrap().is_tls());
        set(&[(TLS_CA_ENV, Some(&ca))]);
        let credential = Credential::from_env().unwrap();
        assert!(credential.is_tls());
        assert_eq!(credential.scheme(), "https");
        set(&[(TLS_CERT_ENV, Some(&ca))]);
        let error = Credential::from_env().unwrap_err();
        assert!(error.message().contains("go together"), "{error:?}");
        set(&[(TLS_KEY_ENV, Some(&dir.join("missing.key")))]);
        let error = Credential::from_env().unwrap_err();
        assert!(error.message().contains("missing.key"), "{error:?}");
        set(&[(TLS_CA_ENV, None), (TLS_KEY_ENV, Some(&ca))]);
        let error = Credential::from_env().unwrap_err();
        assert!(error.message().contains(TLS_CA_ENV), "{error:?}");
        set(&[(TLS_CERT_ENV, None), (TLS_KEY_ENV, None)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
