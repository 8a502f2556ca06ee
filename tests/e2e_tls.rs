//! End-to-end: a replicated cluster with TLS on every gRPC port and HTTP
//! origin and client certificates required everywhere (mTLS): servers call
//! each other with their own certificates, clients without one from the
//! cluster's CA are turned away at the handshake, and a renewed certificate
//! is served after SIGHUP without a restart.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::{Access, Cluster, eventually, hayloft, secs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A certificate authority made by the test, in `dir`.
struct Pki {
    dir: PathBuf,
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    ca: PathBuf,
}

/// A certificate and its key, as files.
struct Issued {
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        let ca = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca, params.self_signed(&key).unwrap().pem()).unwrap();
        Pki {
            dir: dir.to_owned(),
            params,
            key,
            ca,
        }
    }

    /// A certificate for `name` at 127.0.0.1, for servers and clients
    /// alike (a server presents it to the others as a client).
    fn issue(&self, name: &str) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &rcgen::Issuer::from_params(&self.params, &self.key))
            .unwrap();
        let issued = Issued {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
            der: cert.der().to_vec(),
        };
        // Written whole, then renamed: a server reloading sees old or new.
        for (path, text) in [
            (&issued.key, key.serialize_pem()),
            (&issued.cert, cert.pem()),
        ] {
            let partial = path.with_extension("partial");
            std::fs::write(&partial, text).unwrap();
            std::fs::rename(&partial, path).unwrap();
        }
        issued
    }

    /// A server's flags: its certificate, this CA, client certificates
    /// required.
    fn server_args(&self, issued: &Issued) -> Vec<String> {
        [
            "--tls-cert",
            &issued.cert.display().to_string(),
            "--tls-key",
            &issued.key.display().to_string(),
            "--tls-ca",
            &self.ca.display().to_string(),
            "--require-client-certs",
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

/// The environment of a `hayloft` command trusting `ca` and presenting
/// `identity`.
fn client_env(ca: &Path, identity: Option<&Issued>) -> Vec<(String, String)> {
    let mut env = vec![("HAYLOFT_TLS_CA".to_owned(), ca.display().to_string())];
    if let Some(identity) = identity {
        env.push((
            "HAYLOFT_TLS_CERT".to_owned(),
            identity.cert.display().to_string(),
        ));
        env.push((
            "HAYLOFT_TLS_KEY".to_owned(),
            identity.key.display().to_string(),
        ));
    }
    env
}

/// A TLS handshake with 127.0.0.1:`port` trusting `ca`, presenting
/// `identity`, offering `alpn`: the stream, and the certificate the server
/// presented.
async fn connect(
    port: u16,
    ca: &Path,
    identity: Option<&Issued>,
    alpn: &[u8],
) -> Result<
    (
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        Vec<u8>,
    ),
    String,
> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&identity.cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(&identity.key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let presented = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| cert.to_vec())
        .unwrap_or_default();
    Ok((stream, presented))
}

/// `GET path` over HTTPS from the origin at 127.0.0.1:`port`: status and
/// body.
async fn https_get(port: u16, path: &str, ca: &Path) -> (u16, Vec<u8>) {
    let (mut stream, _) = connect(port, ca, None, b"http/1.1").await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    // A server that closes without close_notify ends the read with an
    // error after the whole answer; the answer is what counts.
    let _ = stream.read_to_end(&mut answer).await;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer[split + 4..].to_vec())
}

/// `(port, "/<blob id>")` of an `https://127.0.0.1:port/<blob id>` URL.
fn port_and_path(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("https://127.0.0.1:").expect(url);
    let (port, path) = rest.split_once('/').unwrap();
    (port.parse().unwrap(), format!("/{path}"))
}

async fn directory_metric(cluster: &Cluster, name: &str) -> f64 {
    let text = reqwest::get(format!(
        "http://127.0.0.1:{}/metrics",
        cluster.directory_metrics_port()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_over_mutual_tls_serves_its_own_and_turns_strangers_away() {
    let keys = tempfile::tempdir().unwrap();
    let pki = Pki::new(&keys.path().join("cluster"), "cluster");
    let stranger_pki = Pki::new(&keys.path().join("stranger"), "stranger");
    let directory = pki.issue("directory");
    let servers: Vec<Issued> = (0..3).map(|i| pki.issue(&format!("vs{i}"))).collect();
    let client = pki.issue("client");
    let stranger = stranger_pki.issue("client");
    let credential = hayloft_proto::Credential::none()
        .with_tls_files(&pki.ca, Some((&client.cert, &client.key)))
        .unwrap();

    // Every heartbeat, volume creation and forwarded write below goes over
    // TLS with the servers' own certificates: the directory and the volume
    // servers all require one.
    let cluster = Cluster::builder()
        .zones(&["a", "b", "c"])
        .replication(2)
        .directory_args(pki.server_args(&directory))
        .volume_args_each(servers.iter().map(|s| pki.server_args(s)))
        .access(Access {
            token: None,
            credential,
            env: client_env(&pki.ca, Some(&client)),
        })
        .start()
        .await;

    // An upload by the command line answers an https:// URL, and every
    // origin serves the blob: the two holding a copy from disk, the third by
    // proxying to one of them over HTTPS.
    let file = keys.path().join("photo.jpg");
    let content = support::content(7, 300_000);
    std::fs::write(&file, &content).unwrap();
    let (ok, out) = hayloft(&cluster, &["put", file.to_str().unwrap(), "--url"]);
    assert!(ok, "{out}\n{}", support::log_tails(&cluster.log_dir()));
    let url = out
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .unwrap_or_else(|| panic!("no https URL in {out}"))
        .to_owned();
    let (_, path) = port_and_path(&url);
    for ports in (0..cluster.volume_count()).map(|i| cluster.volume_ports(i)) {
        let (status, body) = https_get(ports.http, &path, &pki.ca).await;
        assert_eq!(status, 200, "origin {} {path}", ports.http);
        assert!(body == content, "origin {} served other bytes", ports.http);
    }
    // The Rust client, reading over TLS from a copy.
    let rust_client = cluster.client().await;
    let blob_id = path.trim_start_matches('/').to_owned();
    assert_eq!(rust_client.download(&blob_id).await.unwrap().1, content);

    // Turned away at the handshake: plain text, no client certificate, a
    // certificate from another CA, and a client that does not trust the
    // cluster's CA. Each fails with a short error, not a backtrace.
    let failures_before = directory_metric(&cluster, "hayloft_tls_handshake_failures_total").await;
    // Each is told what to change, at once (no retrying for half a minute).
    let refused = |env: Vec<(String, String)>, why: &str, says: &str| {
        let started = Instant::now();
        let output = std::process::Command::new(support::BIN)
            .args(["status"])
            .env("HAYLOFT_DIRECTORY", cluster.directory_addr())
            .envs(env)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!output.status.success(), "{why}: status succeeded");
        assert!(!stderr.contains("backtrace"), "{why}: {stderr}");
        assert!(stderr.trim().lines().count() <= 2, "{why}: {stderr}");
        assert!(stderr.contains(says), "{why}: {stderr}");
        assert!(started.elapsed() < Duration::from_secs(8), "{why}: retried");
    };
    refused(Vec::new(), "plain text", "the server speaks TLS");
    refused(
        client_env(&pki.ca, None),
        "no client certificate",
        "requires a client certificate",
    );
    refused(
        client_env(&pki.ca, Some(&stranger)),
        "a certificate from another CA",
        "refused the TLS handshake",
    );
    refused(
        client_env(&stranger_pki.ca, Some(&client)),
        "not trusting the cluster's CA",
        "certificate is not trusted",
    );
    assert!(
        directory_metric(&cluster, "hayloft_tls_handshake_failures_total").await
            >= failures_before + 3.0,
        "the directory counts the handshakes it refused"
    );
    // The origin speaks only TLS; a client certificate is not asked there.
    assert!(
        reqwest::get(format!(
            "http://127.0.0.1:{}{path}",
            cluster.volume_ports(0).http
        ))
        .await
        .is_err()
    );
    // The gRPC port refuses a handshake without a client certificate.
    let grpc_port = cluster.volume_ports(0).grpc;
    let without = connect(grpc_port, &pki.ca, None, b"h2").await;
    if let Ok((mut stream, _)) = without {
        // TLS 1.3: the refusal arrives with the first read.
        let mut byte = [0u8; 1];
        assert!(
            stream.read(&mut byte).await.is_err(),
            "the gRPC port served a client without a certificate"
        );
    }

    // A renewed certificate for vs0, then SIGHUP: new connections to both
    // its ports get it; the cluster keeps working through it.
    let renewed = pki.issue("vs0");
    assert_ne!(renewed.der, servers[0].der);
    cluster.signal_volume(0, libc::SIGHUP);
    let http_port = cluster.volume_ports(0).http;
    eventually(
        secs(20),
        "vs0 to present its renewed certificate",
        async || {
            let (_, http_cert) = connect(http_port, &pki.ca, None, b"http/1.1")
                .await
                .unwrap();
            let (_, grpc_cert) = connect(grpc_port, &pki.ca, Some(&client), b"h2")
                .await
                .unwrap();
            (http_cert == renewed.der && grpc_cert == renewed.der)
                .then_some(())
                .ok_or_else(|| support::log_tails(&cluster.log_dir()))
        },
    )
    .await;
    let again = rust_client
        .upload(
            bytes::Bytes::copy_from_slice(&content[..1000]),
            &hayloft_client::UploadOptions::default(),
        )
        .await
        .unwrap();
    let (port, path) = port_and_path(&again.url);
    assert_eq!(
        https_get(port, &path, &pki.ca).await,
        (200, content[..1000].to_vec())
    );
}

/// Writes a key ring with one key, `k1`, in `dir`.
fn write_keyring(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("k1"), "k1-secret-k1-secret-k1-secret-k1-secret").unwrap();
    let ring = dir.join("keys.toml");
    std::fs::write(
        &ring,
        "signing = \"k1\"\n[[keys]]\nid = \"k1\"\nsecret_file = \"k1\"\n",
    )
    .unwrap();
    ring
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_directory_group_over_mutual_tls_with_tokens_outlives_its_leader() {
    let keys = tempfile::tempdir().unwrap();
    let pki = Pki::new(&keys.path().join("cluster"), "cluster");
    let node = pki.issue("directory");
    let servers: Vec<Issued> = (0..2).map(|i| pki.issue(&format!("vs{i}"))).collect();
    let client = pki.issue("client");
    let ring = write_keyring(keys.path());
    let (token, _) = support::mint_token(&ring, &["admin", "write:*", "read:*"]);
    let tokens = [
        "--keyring".to_owned(),
        ring.display().to_string(),
        "--require-tokens".into(),
    ];

    // Raft, heartbeats and forwarded writes between the nodes and servers
    // carry both the servers' certificates and their own cluster tokens.
    let mut directory_args = pki.server_args(&node);
    directory_args.extend(tokens.iter().cloned());
    directory_args.extend(["--replication".to_owned(), "2".into()]);
    let mut env = client_env(&pki.ca, Some(&client));
    env.push(("HAYLOFT_TOKEN".to_owned(), token.clone()));
    let tls = hayloft_proto::Credential::none()
        .with_tls_files(&pki.ca, Some((&client.cert, &client.key)))
        .unwrap();
    let mut cluster = Cluster::builder()
        .group(3)
        .zones(&["a", "b"])
        .directory_args(directory_args)
        .volume_args(tokens.iter())
        .volume_args_each(servers.iter().map(|s| pki.server_args(s)))
        .access(Access {
            token: Some(token),
            credential: tls.clone(),
            env,
        })
        .start()
        .await;
    let client = cluster.client().await;
    let first = client
        .upload(
            bytes::Bytes::from_static(b"before the election"),
            &Default::default(),
        )
        .await
        .unwrap();
    assert!(first.url.starts_with("https://"), "{}", first.url);

    // The leader dies; the others elect one over mTLS and go on.
    let leader = cluster.leader().await;
    cluster.kill_node(leader);
    let next = cluster.leader().await;
    assert_ne!(next, leader);
    let second = client
        .upload(
            bytes::Bytes::from_static(b"after the election"),
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        &client.download(&first.blob_id).await.unwrap().1[..],
        b"before the election"
    );
    assert_eq!(
        &client.download(&second.blob_id).await.unwrap().1[..],
        b"after the election"
    );
    let (ok, out) = hayloft(&cluster, &["status"]);
    assert!(ok, "{out}");

    // A certificate is not a token: without one, UNAUTHENTICATED.
    let anonymous = hayloft_client::Client::connect_with(&cluster.directory_addr(), tls)
        .await
        .unwrap();
    assert_eq!(
        anonymous.status().await.unwrap_err().code(),
        Some(tonic::Code::Unauthenticated)
    );
}

/// A directory secured by client certificates alone cannot have its
/// operator page ask a browser for one: it refuses to serve the page (and
/// `/metrics`) on a public address, unless told `--insecure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_operator_page_without_tokens_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "cluster");
    let directory = pki.issue("directory");
    let metrics = support::free_port();
    let args = |insecure: bool| {
        let mut args = vec![
            "directory".to_owned(),
            "--listen".into(),
            format!("127.0.0.1:{}", support::free_port()),
            "--data-dir".into(),
            dir.path().join("directory").display().to_string(),
            "--metrics-listen".into(),
            format!("0.0.0.0:{metrics}"),
        ];
        args.extend(pki.server_args(&directory));
        if insecure {
            args.push("--insecure".into());
        }
        args
    };
    let out = std::process::Command::new(support::BIN)
        .args(args(false))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started: {stderr}");
    assert!(
        stderr.contains("refusing to serve the operator page and /metrics on 0.0.0.0:"),
        "{stderr}"
    );
    assert!(stderr.contains("--insecure"), "{stderr}");
    // Told --insecure, it serves the page there, and says so.
    let log = dir.path().join("insecure.log");
    let server = support::spawn(&args(true), &log);
    eventually(secs(30), "the operator page on 0.0.0.0", async || {
        reqwest::get(format!("http://127.0.0.1:{metrics}/metrics"))
            .await
            .map(|_| ())
            .map_err(|_| std::fs::read_to_string(&log).unwrap())
    })
    .await;
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("serving the operator page on a non-loopback address")
    );
    server.stop();
}
