//! TLS for gRPC and the HTTP origin (rustls over aws-lc-rs).
//!
//! ```toml
//! [tls]
//! cert = "/etc/hayloft/tls/server.pem"   # this server's certificate chain (PEM)
//! key = "/etc/hayloft/tls/server.key"    # its private key (PEM)
//! ca = "/etc/hayloft/tls/ca.pem"         # the cluster's CA: verifies the servers this one calls,
//!                                        # and client certificates when they are required
//! require_client_certs = true            # gRPC callers must present a certificate signed by `ca`
//! origin = true                          # the HTTP origin serves HTTPS too (default)
//! ```
//!
//! A server with `[tls]` serves gRPC over TLS (ALPN `h2`), and its HTTP
//! origin over TLS unless `origin = false`. Its own calls to the others
//! (heartbeats, forwarded writes, repair, Raft, proxied reads) go over TLS,
//! trusting `ca` only and presenting `cert` as a client certificate: so with
//! `require_client_certs` everywhere, only holders of a certificate from the
//! cluster's CA reach any gRPC port (mTLS). A cluster is TLS throughout or
//! not at all.
//!
//! The files are read again on SIGHUP and when they change ([`watch`]):
//! new connections get the new certificate, connections open stay as they
//! are. A reload that fails (a key that does not match, a half-written file)
//! keeps what is in use and says why.
//!
//! [`watch`]: crate::reload::watch

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::reload::{FileStamps, Reload};

/// The `[tls]` settings of a server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// This server's certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The cluster's CA certificate(s), PEM: the roots this server trusts
    /// for the servers it calls and, if required, for client certificates.
    pub ca: PathBuf,
    /// gRPC callers must present a certificate signed by `ca`. Default
    /// false.
    #[serde(default)]
    pub require_client_certs: bool,
    /// The HTTP origin serves HTTPS with the same certificate (a volume
    /// server; client certificates are never asked there). Default true.
    #[serde(default = "yes")]
    pub origin: bool,
}

fn yes() -> bool {
    true
}

/// Why TLS could not be set up. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{what} {}: {source}", path.display())]
    Read {
        /// Which file it is.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM object of the kind expected.
    #[error("{what} {}: {why}", path.display())]
    Pem {
        /// Which file it is.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// rustls refused the combination (a key that does not match the
    /// certificate, a CA that is not a CA...).
    #[error("{0}")]
    Rustls(String),
}

/// What one reading of the files gives.
struct Loaded {
    grpc: Arc<rustls::ServerConfig>,
    http: Arc<rustls::ServerConfig>,
    /// For tonic clients: the CA, and this server's certificate as a
    /// client certificate.
    client: tonic::transport::ClientTlsConfig,
    /// For HTTP clients of other origins (proxied reads).
    origin_client: Arc<rustls::ClientConfig>,
    /// Successful reloads before this reading (0: the one at start).
    generation: u64,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// The certificates in `pem`, read from `path`.
fn certificates(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |why: String| TlsError::Pem {
        what,
        path: path.to_owned(),
        why,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error("no CERTIFICATE in it".into()));
    }
    Ok(certs)
}

fn rustls_error(e: impl std::fmt::Display) -> TlsError {
    TlsError::Rustls(e.to_string())
}

impl Loaded {
    fn read(config: &TlsConfig, generation: u64) -> Result<Loaded, TlsError> {
        let cert_pem = read("certificate", &config.cert)?;
        let key_pem = read("key", &config.key)?;
        let ca_pem = read("CA certificate", &config.ca)?;
        let chain = certificates("certificate", &config.cert, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
            what: "key",
            path: config.key.clone(),
            why: e.to_string(),
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in certificates("CA certificate", &config.ca, &ca_pem)? {
            roots.add(ca).map_err(|e| TlsError::Pem {
                what: "CA certificate",
                path: config.ca.clone(),
                why: e.to_string(),
            })?;
        }
        let roots = Arc::new(roots);
        let server = || {
            rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(rustls_error)
        };
        let client_verifier = if config.require_client_certs {
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::clone(&roots),
                provider(),
            )
            .build()
            .map_err(rustls_error)?
        } else {
            rustls::server::WebPkiClientVerifier::no_client_auth()
        };
        let mut grpc = server()?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(rustls_error)?;
        grpc.alpn_protocols = vec![b"h2".to_vec()];
        let mut http = server()?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(rustls_error)?;
        http.alpn_protocols = vec![b"http/1.1".to_vec()];
        // No ALPN here: the HTTP client that uses it sets its own.
        let origin_client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(rustls_error)?
            .with_root_certificates(Arc::clone(&roots))
            .with_no_client_auth();
        let client = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
            .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
        Ok(Loaded {
            grpc: Arc::new(grpc),
            http: Arc::new(http),
            client,
            origin_client: Arc::new(origin_client),
            generation,
        })
    }
}

/// A server's TLS settings, reloaded from their files without a restart.
pub struct ServerTls {
    config: TlsConfig,
    current: RwLock<Arc<Loaded>>,
    stamps: Mutex<FileStamps>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the files `config` names.
    ///
    /// # Errors
    /// A file that cannot be read or parsed, a key that does not fit.
    pub fn load(config: &TlsConfig) -> Result<Arc<ServerTls>, TlsError> {
        let loaded = Loaded::read(config, 0)?;
        Ok(Arc::new(ServerTls {
            stamps: Mutex::new(FileStamps::of(Self::files(config))),
            config: config.clone(),
            current: RwLock::new(Arc::new(loaded)),
        }))
    }

    fn files(config: &TlsConfig) -> Vec<PathBuf> {
        vec![config.cert.clone(), config.key.clone(), config.ca.clone()]
    }

    fn current(&self) -> Arc<Loaded> {
        Arc::clone(&self.current.read())
    }

    /// Whether gRPC callers must present a client certificate.
    pub fn requires_client_certs(&self) -> bool {
        self.config.require_client_certs
    }

    /// Accepts gRPC connections with the certificate in use.
    pub fn grpc_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.current().grpc))
    }

    /// Accepts HTTP origin connections with the certificate in use; `None`
    /// when the origin serves plain HTTP (`origin = false`).
    pub fn origin_acceptor(&self) -> Option<TlsAcceptor> {
        self.config
            .origin
            .then(|| TlsAcceptor::from(Arc::clone(&self.current().http)))
    }

    /// Whether the HTTP origins of the cluster serve HTTPS.
    pub fn origin(&self) -> bool {
        self.config.origin
    }

    /// The rustls client settings for other origins (proxied reads), and
    /// the reload generation they belong to.
    pub fn origin_client(&self) -> (u64, Arc<rustls::ClientConfig>) {
        let loaded = self.current();
        (loaded.generation, Arc::clone(&loaded.origin_client))
    }

    /// `credential` over TLS with this server's CA and certificate: what
    /// its calls to the other servers present.
    pub fn credential(
        self: &Arc<Self>,
        credential: hayloft_proto::Credential,
    ) -> hayloft_proto::Credential {
        let tls = Arc::clone(self);
        credential.with_tls(move || tls.current().client.clone())
    }

    /// Reads the files again and puts them in use for new connections.
    ///
    /// # Errors
    /// As [`ServerTls::load`]; what is in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let result = Loaded::read(&self.config, self.current().generation + 1);
        let mut stamps = self.stamps.lock();
        *stamps = FileStamps::of(Self::files(&self.config));
        *self.current.write() = Arc::new(result?);
        Ok(())
    }
}

impl Reload for ServerTls {
    const WHAT: &'static str = "TLS certificates";
    const METRIC: &'static str = "hayloft_tls_reloads_total";

    fn changed(&self) -> bool {
        self.stamps.lock().changed()
    }

    fn reload(&self) -> Result<String, String> {
        ServerTls::reload(self)
            .map(|()| self.config.cert.display().to_string())
            .map_err(|e| e.to_string())
    }
}

/// Longest a client may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Completes the TLS handshake of `tcp` with `acceptor` within
/// [`HANDSHAKE_TIMEOUT`]. A client that fails it (no certificate where one
/// is required, one from another CA, plain text, silence) is logged at
/// debug, counted in `hayloft_tls_handshake_failures_total{port}`, and
/// dropped once it has read the alert that says why ([`linger`]).
pub async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    port: &'static str,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let peer = tcp.peer_addr().ok();
    let accept = acceptor.accept(tcp).into_fallible();
    let (why, refused) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(stream)) => return Some(stream),
        Ok(Err((e, tcp))) => (e.to_string(), Some(tcp)),
        Err(_) => (format!("no handshake within {HANDSHAKE_TIMEOUT:?}"), None),
    };
    metrics::counter!("hayloft_tls_handshake_failures_total", "port" => port).increment(1);
    tracing::debug!(?peer, port, %why, "TLS handshake failed");
    if let Some(tcp) = refused {
        linger(tcp).await;
    }
    None
}

/// Longest a refused client is waited for to close its side.
const LINGER: Duration = Duration::from_secs(2);

/// Closes a refused connection so that the client reads the TLS alert
/// (which says why it was refused) before it learns of the close: our side
/// is shut down after the alert, and what the client had already sent is
/// read and discarded until it closes too, for at most [`LINGER`]. Closed
/// with unread data, the socket would answer a reset, and the client would
/// see "broken pipe" and lose the alert.
async fn linger(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(1..) = tcp.read(&mut sink).await {}
    })
    .await;
}

/// A gRPC connection: plain TCP, or TLS over it.
#[allow(clippy::large_enum_variant)]
pub enum Conn {
    /// Without TLS.
    Plain(TcpStream),
    /// With TLS, the handshake done.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match self {
            Conn::Plain(tcp) => tcp.connect_info(),
            Conn::Tls(tls) => tls.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Conn::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Conn::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Conn::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(tcp) => tcp.is_write_vectored(),
            Conn::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Conn::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Conn::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The next connection on `listener`, with `TCP_NODELAY`. A failed accept
/// (out of descriptors, a connection reset before it was accepted) is not
/// fatal: logged, and tried again after a short pause.
pub async fn accept(listener: &TcpListener, port: &str) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                return tcp;
            }
            Err(e) => {
                tracing::warn!(error = %e, port, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The connections a gRPC server serves from `listener`: over TLS with
/// `tls`, each handshake in its own task (a slow client holds up no one),
/// else plain. Accepting stops, and the listener closes, when the stream
/// is dropped (the server stops).
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
) -> impl tokio_stream::Stream<Item = std::io::Result<Conn>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Conn>>(64);
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                () = tx.closed() => break,
                tcp = accept(&listener, "gRPC") => tcp,
            };
            match &tls {
                None => {
                    if tx.send(Ok(Conn::Plain(tcp))).await.is_err() {
                        break;
                    }
                }
                Some(tls) => {
                    let acceptor = tls.grpc_acceptor();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        if let Some(stream) = handshake(&acceptor, tcp, "grpc").await {
                            let _ = tx.send(Ok(Conn::Tls(Box::new(stream)))).await;
                        }
                    });
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_files(dir: &Path) -> TlsConfig {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &rcgen::Issuer::from_params(&params, &ca_key))
            .unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
        TlsConfig {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            ca: dir.join("ca.pem"),
            require_client_certs: true,
            origin: true,
        }
    }

    #[test]
    fn loads_reloads_and_keeps_what_works_when_a_reload_fails() {
        let dir = tempfile::tempdir().unwrap();
        let config = pem_files(dir.path());
        let tls = ServerTls::load(&config).unwrap();
        assert!(!tls.changed());
        let (generation, _) = tls.origin_client();
        assert_eq!(generation, 0);

        // A half-written key: the reload fails, saying which file; the
        // certificate in use stays.
        std::fs::write(&config.key, "-----BEGIN PRIVATE KEY-----\nAAAA").unwrap();
        let error = ServerTls::reload(&tls).unwrap_err().to_string();
        assert!(error.contains("server.key"), "{error}");
        assert!(!error.contains("AAAA"), "{error}");
        assert_eq!(tls.origin_client().0, 0);
        assert!(
            !tls.changed(),
            "a failed reload is not retried until the files change again"
        );

        // New files: noticed, and put in use.
        pem_files(dir.path());
        ServerTls::reload(&tls).unwrap();
        assert_eq!(tls.origin_client().0, 1);
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = pem_files(dir.path());
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&config.key, other.serialize_pem()).unwrap();
        let error = ServerTls::load(&config).unwrap_err().to_string();
        assert!(!error.is_empty());
        let missing = TlsConfig {
            ca: dir.path().join("nope.pem"),
            ..config
        };
        let error = ServerTls::load(&missing).unwrap_err().to_string();
        assert!(
            error.contains("CA certificate") && error.contains("nope.pem"),
            "{error}"
        );
    }
}
