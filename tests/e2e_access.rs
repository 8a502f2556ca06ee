//! End-to-end: signed URLs for a `signed` collection, checked by a real
//! volume server's HTTP origin with a key ring reloaded on SIGHUP.
//!
//! Why one file of ~1560 lines: its 9 scenarios share one signed-collection
//! set-up (key ring, tokens, nginx edge) and each runs several minutes' worth
//! of real-process steps; split by theme (URLs, tokens, edge) when the next
//! one lands.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use hayloft_access::signed_url::sign;
use hayloft_client::UploadOptions;
use reqwest::{StatusCode, header};
use support::access::{
    Embedded, K1, K2, audit_lines, connect_when_up, get, now, wait_refused, write_keyring,
};
use support::{Cluster, eventually, hayloft, secs, try_eventually_blocking};

/// A cluster of one volume server whose collection `private` is signed
/// (key ring: k1 signing, k2), with two private blobs and a public one
/// uploaded; returned once the origin refuses unsigned private reads (it
/// heard of the signed collections in its first heartbeat's answer).
struct Signed {
    keys: tempfile::TempDir,
    ring: std::path::PathBuf,
    cluster: Cluster,
    client: hayloft_client::Client,
    blob: hayloft_client::Uploaded,
    other: hayloft_client::Uploaded,
    public: hayloft_client::Uploaded,
}

impl Signed {
    async fn start(contents: [&'static [u8]; 3]) -> Signed {
        let keys = tempfile::tempdir().unwrap();
        let ring = write_keyring(keys.path(), true);
        let config = keys.path().join("directory.toml");
        std::fs::write(&config, "[collections.private]\naccess = \"signed\"\n").unwrap();
        let cluster = Cluster::builder()
            .zones(&["a"])
            .replication(1)
            .directory_args(["--config", config.to_str().unwrap()])
            .volume_args(["--keyring", ring.to_str().unwrap()])
            .start()
            .await;
        let client = cluster.client().await;
        let private = UploadOptions {
            collection: "private".into(),
            ..UploadOptions::default()
        };
        let upload = |bytes: &'static [u8], options: UploadOptions| {
            let client = &client;
            async move {
                client
                    .upload(Bytes::from_static(bytes), &options)
                    .await
                    .unwrap()
            }
        };
        let blob = upload(contents[0], private.clone()).await;
        let other = upload(contents[1], private).await;
        let public = upload(contents[2], UploadOptions::default()).await;
        wait_refused(&blob.url).await;
        Signed {
            keys,
            ring,
            cluster,
            client,
            blob,
            other,
            public,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signed_urls_open_private_blobs_and_nothing_else() {
    let Signed {
        keys,
        ring,
        cluster,
        client: _,
        blob: secret,
        other,
        public,
    } = Signed::start([b"private bytes", b"other private bytes", b"public bytes"]).await;
    let origin = secret.url.rsplit_once('/').unwrap().0.to_owned();
    let path = format!("/{}", secret.blob_id);

    // Unsigned: refused (Signed::start waited for it); the public blob
    // needs nothing.
    let public_read = get(&public.url).await;
    assert_eq!(public_read.status(), StatusCode::OK);
    let public_cache_control = public_read.headers()[header::CACHE_CONTROL]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(public_read.bytes().await.unwrap().as_ref(), b"public bytes");

    // `hayloft sign` (the origin found through the directory): 200, 206,
    // 304, HEAD; tagged for purges.
    let (ok, out) = hayloft(
        &cluster,
        &[
            "sign",
            &secret.blob_id,
            "--ttl",
            "10m",
            "--keyring",
            ring.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    let url = out.trim().to_owned();
    assert!(url.starts_with(&format!("{origin}{path}?e=")), "{url}");
    let read = get(&url).await;
    assert_eq!(read.status(), StatusCode::OK);
    // No shared cache keeps it past the URL's expiry (10 minutes).
    let cache_control = read.headers()[header::CACHE_CONTROL].to_str().unwrap();
    assert!(
        (500..=600).contains(&max_age(cache_control)),
        "{cache_control}"
    );
    assert!(
        public_cache_control.starts_with("public"),
        "{public_cache_control}"
    );
    let etag = read.headers()[header::ETAG].to_str().unwrap().to_owned();
    let keys_header = read.headers()["surrogate-key"].to_str().unwrap().to_owned();
    assert!(
        keys_header.contains(&format!("blob-{}", secret.blob_id)),
        "{keys_header}"
    );
    assert!(keys_header.contains("collection-private"), "{keys_header}");
    assert_eq!(read.bytes().await.unwrap().as_ref(), b"private bytes");
    let http = reqwest::Client::new();
    let range = http
        .get(&url)
        .header(header::RANGE, "bytes=0-6")
        .send()
        .await
        .unwrap();
    assert_eq!(range.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(range.bytes().await.unwrap().as_ref(), b"private");
    let cached = http
        .get(&url)
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(
        http.head(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
    // Conditional and ranged requests need the signature too.
    let unsigned = http
        .get(&secret.url)
        .header(header::RANGE, "bytes=0-6")
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        http.head(&secret.url).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );

    // Forged, truncated, another blob's, expired, too long-lived, an
    // unknown key: refused, and a refusal never says whether the blob
    // exists.
    let query = url.split_once('?').unwrap().1.to_owned();
    let mut forged = url.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let expired = sign(K1, "k1", &path, now() - 3600, None);
    let forever = sign(K1, "k1", &path, now() + 3 * 86_400, None);
    let unknown = sign(K1, "k9", &path, now() + 600, None);
    let missing_blob = format!("{}ffffff", &secret.blob_id[..secret.blob_id.len() - 6]);
    let refused = [
        (forged, StatusCode::FORBIDDEN),
        (url[..url.len() - 5].to_owned(), StatusCode::FORBIDDEN),
        (format!("{}?{query}", other.url), StatusCode::FORBIDDEN),
        (format!("{origin}{path}?{expired}"), StatusCode::GONE),
        (format!("{origin}{path}?{forever}"), StatusCode::FORBIDDEN),
        (format!("{origin}{path}?{unknown}"), StatusCode::FORBIDDEN),
        (
            format!("{origin}/{missing_blob}?{query}"),
            StatusCode::FORBIDDEN,
        ),
    ];
    let mut bodies = Vec::new();
    for (url, status) in &refused {
        let response = get(url).await;
        assert_eq!(response.status(), *status, "{url}");
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        bodies.push(response.text().await.unwrap());
    }
    assert_eq!(
        bodies[2], bodies[6],
        "a missing blob is refused like an existing one"
    );
    let signed_missing = sign(K1, "k1", &format!("/{missing_blob}"), now() + 600, None);
    assert_eq!(
        get(&format!("{origin}/{missing_blob}?{signed_missing}"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );

    // Keys rotate without a restart: a URL signed with k2 works until k2
    // leaves the ring; SIGHUP (or the file's change) and it is revoked.
    let by_k2 = format!(
        "{origin}{path}?{}",
        sign(K2, "k2", &path, now() + 600, None)
    );
    assert_eq!(get(&by_k2).await.status(), StatusCode::OK);
    write_keyring(keys.path(), false);
    cluster.signal_volume(0, libc::SIGHUP);
    eventually(
        secs(10),
        "a removed key to stop opening URLs",
        async || match get(&by_k2).await.status() {
            StatusCode::FORBIDDEN => Ok(()),
            status => Err(status),
        },
    )
    .await;
    assert_eq!(get(&url).await.status(), StatusCode::OK, "k1 still signs");
}

/// A real nginx running the edge configuration of `deploy/nginx/` in front
/// of one HTTP origin, on a free loopback port; stopped when dropped.
struct Edge {
    child: std::process::Child,
    dir: tempfile::TempDir,
    base: String,
}

impl Edge {
    async fn start(origin: &str, keyring: &std::path::Path) -> Edge {
        let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx");
        let deploy = deploy.canonicalize().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let port = support::free_port();
        let d = dir.path().display();
        let conf = format!(
            "load_module /usr/lib/nginx/modules/ngx_http_js_module.so;\n\
             user root;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log;\n\
             events {{}}\n\
             http {{\n\
               access_log {d}/access.log;\n\
               js_path {deploy};\n\
               include {deploy}/hayloft-http.conf;\n\
               proxy_cache_path {d}/cache keys_zone=hayloft:8m levels=1:2 use_temp_path=off;\n\
               upstream hayloft_origins {{ server {origin}; keepalive 8; }}\n\
               server {{\n\
                 listen 127.0.0.1:{port};\n\
                 set $hayloft_keyring {ring};\n\
                 location / {{\n\
                   include {deploy}/hayloft-edge.conf;\n\
                   proxy_pass http://hayloft_origins;\n\
                 }}\n\
               }}\n\
             }}\n",
            deploy = deploy.display(),
            ring = keyring.display(),
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = std::process::Command::new("nginx")
            .args(["-e", "stderr", "-p"])
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .args(["-g", "daemon off;"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .expect("nginx (with libnginx-mod-http-js) is installed by scripts/setup.sh");
        let base = format!("http://127.0.0.1:{port}");
        let mut edge = Edge { child, dir, base };
        eventually(secs(10), "nginx to start", async || {
            assert!(
                edge.child.try_wait().unwrap().is_none(),
                "nginx exited: {}",
                edge.logs()
            );
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map(drop)
                .map_err(|e| format!("{e}\n{}", edge.logs()))
        })
        .await;
        edge
    }

    fn logs(&self) -> String {
        ["stderr.log", "error.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn cache_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("cache")
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (SIGKILL would orphan them).
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        // Up to 10 s for it to go; SIGKILL after that.
        let _ = try_eventually_blocking(Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten()
        });
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Status, `X-Cache-Status`, `Cache-Control` and body of a GET.
async fn through(url: &str) -> (StatusCode, String, String, Bytes) {
    let response = get(url).await;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (cache, control) = (header("x-cache-status"), header("cache-control"));
    (
        response.status(),
        cache,
        control,
        response.bytes().await.unwrap(),
    )
}

fn max_age(cache_control: &str) -> u64 {
    cache_control
        .strip_prefix("private, max-age=")
        .unwrap_or_else(|| panic!("{cache_control}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_nginx_edge_checks_signatures_before_its_cache_and_keeps_one_copy() {
    let Signed {
        keys,
        ring,
        cluster,
        client,
        blob,
        other,
        public,
    } = Signed::start([
        b"one private photo",
        b"another private photo",
        b"a public photo",
    ])
    .await;
    let origin = cluster.http_base(0);
    let edge = Edge::start(origin.trim_start_matches("http://"), &ring).await;
    let path = format!("/{}", blob.blob_id);
    let at_edge = |query: &str| format!("{}{path}?{query}", edge.base);

    // Two viewers, two valid URLs (other expiries, other keys): one origin
    // fetch, then a hit; each told to keep it only as long as its URL lives.
    let first = at_edge(&sign(K1, "k1", &path, now() + 600, None));
    let second = at_edge(&sign(K2, "k2", &path, now() + 300, None));
    let (status, cache, control, body) = through(&first).await;
    assert_eq!(status, StatusCode::OK, "{}", edge.logs());
    assert_eq!(
        (cache.as_str(), body.as_ref()),
        ("MISS", &b"one private photo"[..])
    );
    assert!((590..=600).contains(&max_age(&control)), "{control}");
    let (status, cache, control, body) = through(&second).await;
    assert_eq!((status, cache.as_str()), (StatusCode::OK, "HIT"));
    assert_eq!(body.as_ref(), b"one private photo");
    assert!((290..=300).contains(&max_age(&control)), "{control}");
    // A range of the cached copy.
    let range = reqwest::Client::new()
        .get(&second)
        .header(header::RANGE, "bytes=4-10")
        .send()
        .await
        .unwrap();
    assert_eq!(range.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(range.bytes().await.unwrap().as_ref(), b"private");

    // While it is cached, nothing but a valid URL gets it: forged, other
    // blob's signature, unknown key, too long, malformed -> 403; expired
    // -> 410; unsigned -> the origin's 403. None is a hit, none is stored.
    let genuine = sign(K1, "k1", &path, now() + 600, None);
    let forged = {
        let mut q = genuine.clone();
        let last = q.pop().unwrap();
        q.push(if last == 'A' { 'B' } else { 'A' });
        q
    };
    let other_path = format!("/{}", other.blob_id);
    let refused = [
        (forged, StatusCode::FORBIDDEN),
        (
            sign(K1, "k1", &other_path, now() + 600, None),
            StatusCode::FORBIDDEN,
        ),
        (
            sign(K1, "k9", &path, now() + 600, None),
            StatusCode::FORBIDDEN,
        ),
        (
            sign(K1, "k1", &path, now() + 30 * 86_400, None),
            StatusCode::FORBIDDEN,
        ),
        (format!("e={}&k=k1", now() + 600), StatusCode::FORBIDDEN),
        (sign(K1, "k1", &path, now() - 3600, None), StatusCode::GONE),
        ("utm=x".to_owned(), StatusCode::FORBIDDEN),
    ];
    for (query, want) in &refused {
        let (status, cache, control, body) = through(&at_edge(query)).await;
        assert_eq!(status, *want, "{query}");
        assert_ne!(cache, "HIT", "{query}");
        assert_eq!(control, "no-store", "{query}");
        assert!(!body.windows(7).any(|w| w == b"private"), "{query}");
    }
    // Bound to a network: the edge sees the viewer's own address.
    let bound = sign(
        K1,
        "k1",
        &path,
        now() + 600,
        Some("127.0.0.0/8".parse().unwrap()),
    );
    assert_eq!(through(&at_edge(&bound)).await.0, StatusCode::OK);
    let elsewhere = sign(
        K1,
        "k1",
        &path,
        now() + 600,
        Some("203.0.113.0/24".parse().unwrap()),
    );
    assert_eq!(through(&at_edge(&elsewhere)).await.0, StatusCode::FORBIDDEN);

    // A public blob needs no signature, and is cached too.
    let public_url = format!("{}/{}", edge.base, public.blob_id);
    let (status, cache, _, body) = through(&public_url).await;
    assert_eq!((status, cache.as_str()), (StatusCode::OK, "MISS"));
    assert_eq!(body.as_ref(), b"a public photo");
    assert_eq!(through(&public_url).await.1, "HIT");

    // Revocation, without a reload: k2 leaves the key ring; its URL is
    // refused at once though the blob is cached; k1's still works.
    write_keyring(keys.path(), false);
    assert_eq!(through(&second).await.0, StatusCode::FORBIDDEN);
    assert_eq!(through(&first).await.1, "HIT");

    // Deleted blob: purged from the edge by its tag, then gone there too.
    client.delete(&blob.blob_id).await.unwrap();
    assert_eq!(through(&first).await.1, "HIT", "still cached until purged");
    let purge = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx/purge.sh");
    let output = std::process::Command::new("bash")
        .arg(&purge)
        .arg(edge.cache_dir())
        .arg(format!("blob-{}", blob.blob_id))
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(printed.trim(), "1", "one cached response (the signed one)");
    let (status, cache, ..) = through(&first).await;
    assert_eq!((status, cache.as_str()), (StatusCode::NOT_FOUND, "MISS"));
    // The public blob's copy was left alone.
    assert_eq!(through(&public_url).await.1, "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hayloft_server_takes_every_setting_from_one_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let ring = write_keyring(dir.path(), false);
    let server = Embedded::start(
        dir.path(),
        &format!(
            "[directory]\npulse = \"1s\"\n\
             [directory.collections.private]\naccess = \"signed\"\n\
             [volume]\nkeyring = \"{ring}\"\ncache_max_age = \"1h\"\n\
             [volume.limits]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
            ring = ring.display(),
        ),
        &[],
    );
    let (addr, http, metrics) = (server.addr.clone(), server.http, server.metrics);
    let client = connect_when_up(&addr).await;
    let private = UploadOptions {
        collection: "private".into(),
        ..UploadOptions::default()
    };
    let blob = client
        .upload(Bytes::from_static(b"embedded and private"), &private)
        .await
        .unwrap();
    let public = client
        .upload(
            Bytes::from_static(b"embedded and public"),
            &UploadOptions::default(),
        )
        .await
        .unwrap();
    // The file's addresses; its [directory] collection and [volume] key ring
    // and cache lifetime.
    assert!(blob.url.starts_with(&format!("http://127.0.0.1:{http}/")));
    wait_refused(&blob.url).await;
    let path = format!("/{}", blob.blob_id);
    let signed = format!(
        "http://127.0.0.1:{http}{path}?{}",
        sign(K1, "k1", &path, now() + 600, None)
    );
    let read = get(&signed).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(
        read.bytes().await.unwrap().as_ref(),
        b"embedded and private"
    );
    // A URL bound to the viewers' network, behind a trusted proxy (this
    // test, from 127.0.0.1): checked against the client the proxy names in
    // X-Forwarded-For, the rightmost address that is not a trusted proxy.
    let bound = format!(
        "http://127.0.0.1:{http}{path}?{}",
        sign(
            K1,
            "k1",
            &path,
            now() + 600,
            hayloft_access::signed_url::parse_bind("203.0.113.0/24")
        )
    );
    let http_client = reqwest::Client::new();
    for (forwarded, expected) in [
        (Some("203.0.113.7"), StatusCode::OK),
        (Some("198.51.100.1, 203.0.113.7"), StatusCode::OK),
        (Some("198.51.100.1"), StatusCode::FORBIDDEN),
        (Some("203.0.113.7, 198.51.100.1"), StatusCode::FORBIDDEN),
        (None, StatusCode::FORBIDDEN),
    ] {
        let mut request = http_client.get(&bound);
        if let Some(forwarded) = forwarded {
            request = request.header("x-forwarded-for", forwarded);
        }
        let status = request.send().await.unwrap().status();
        assert_eq!(status, expected, "X-Forwarded-For: {forwarded:?}");
    }
    let read = get(&public.url).await;
    assert_eq!(
        read.headers()[header::CACHE_CONTROL],
        "public, max-age=3600, immutable"
    );
    let scrape = get(&format!("http://127.0.0.1:{metrics}/metrics")).await;
    assert!(
        scrape
            .text()
            .await
            .unwrap()
            .contains("hayloft_http_denied_total")
    );
    assert!(dir.path().join("data/directory").is_dir());
}

/// `hayloft token create` with the test key ring.
fn mint(ring: &std::path::Path, scopes: &[&str]) -> String {
    mint_with_id(ring, scopes).0
}

/// [`mint`], with the token's id.
fn mint_with_id(ring: &std::path::Path, scopes: &[&str]) -> (String, String) {
    support::mint_token(ring, scopes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_gate_every_grpc_call_and_grants_write_one_blob() {
    use hayloft_proto::volume_client::VolumeClient;
    use hayloft_proto::{
        AssignRequest, Credential, StatusRequest, WriteHeader, WriteRequest, write_request::Part,
    };
    use tonic::Code;

    let dir = tempfile::tempdir().unwrap();
    let ring = write_keyring(dir.path(), false);
    let port = support::free_port;
    let (directory, grpc, http, metrics) = (port(), port(), port(), port());
    let server = support::spawn(
        &[
            "server",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--directory-listen",
            &format!("127.0.0.1:{directory}"),
            "--grpc-listen",
            &format!("127.0.0.1:{grpc}"),
            "--http-listen",
            &format!("127.0.0.1:{http}"),
            "--metrics-listen",
            &format!("127.0.0.1:{metrics}"),
            "--keyring",
            ring.to_str().unwrap(),
            "--require-tokens",
        ]
        .map(str::to_owned),
        &dir.path().join("server.log"),
    );
    let addr = format!("127.0.0.1:{directory}");
    let photos = UploadOptions {
        collection: "photos".into(),
        ..UploadOptions::default()
    };
    let connect = || connect_when_up(&addr);
    let upload = |client: hayloft_client::Client, options: UploadOptions| async move {
        client
            .upload(Bytes::from_static(b"a photo"), &options)
            .await
            .map_err(|e| e.code())
    };

    // No token, or a forged one: UNAUTHENTICATED.
    assert_eq!(
        upload(connect().await, photos.clone()).await.unwrap_err(),
        Some(Code::Unauthenticated)
    );
    let (writer, writer_id) = mint_with_id(&ring, &["write:photos", "read:photos"]);
    let forged = format!("{}x", &writer[..writer.len() - 1]);
    let with = |token: &str| {
        let token = token.to_owned();
        async move { connect().await.with_token(&token).unwrap() }
    };
    assert_eq!(
        upload(with(&forged).await, photos.clone())
            .await
            .unwrap_err(),
        Some(Code::Unauthenticated)
    );
    // A token without the scope: PERMISSION_DENIED.
    let (reader, reader_id) = mint_with_id(&ring, &["read:photos"]);
    assert_eq!(
        upload(with(&reader).await, photos.clone())
            .await
            .unwrap_err(),
        Some(Code::PermissionDenied)
    );
    let videos = UploadOptions {
        collection: "videos".into(),
        ..UploadOptions::default()
    };
    assert_eq!(
        upload(with(&writer).await, videos).await.unwrap_err(),
        Some(Code::PermissionDenied)
    );
    // The right scope writes, and reads back over gRPC.
    let client = with(&writer).await;
    let written = client
        .upload(Bytes::from_static(b"a photo"), &photos)
        .await
        .unwrap();
    assert_eq!(
        client.download(&written.blob_id).await.unwrap().1.as_ref(),
        b"a photo"
    );
    // Status is an admin call.
    let status = |token: String| {
        let addr = addr.clone();
        async move {
            hayloft_proto::Directories::new(&addr)
                .unwrap()
                .with_credential(Credential::bearer(&token).unwrap())
                .unwrap()
                .call(|mut d| async move { d.status(StatusRequest::default()).await })
                .await
                .map(|_| ())
                .map_err(|e| e.code())
        }
    };
    assert_eq!(status(writer.clone()).await, Err(Code::PermissionDenied));
    let admin = mint(&ring, &["admin"]);
    assert_eq!(status(admin.clone()).await, Ok(()));

    // A write grant writes its own blob only. Two ids, then a write of the
    // second with the first's grant, by a caller with no write scope.
    let assigned = hayloft_proto::Directories::new(&addr)
        .unwrap()
        .with_credential(Credential::bearer(&writer).unwrap())
        .unwrap()
        .call(|mut d| async move {
            d.assign(AssignRequest {
                count: 2,
                collection: "photos".into(),
                ..AssignRequest::default()
            })
            .await
        })
        .await
        .unwrap();
    let (first, second) = (&assigned.blobs[0], &assigned.blobs[1]);
    assert!(!first.grant.is_empty() && first.grant != second.grant);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut volume = VolumeClient::new(Credential::bearer(&reader).unwrap().channel(channel));
    let write = |blob_id: &str, grant: &str| {
        let header = WriteHeader {
            blob_id: blob_id.to_owned(),
            size: 5,
            grant: grant.to_owned(),
            ..WriteHeader::default()
        };
        futures::stream::iter([
            WriteRequest {
                part: Some(Part::Header(header)),
            },
            WriteRequest {
                part: Some(Part::Chunk(Bytes::from_static(b"hello"))),
            },
        ])
    };
    let stolen = volume
        .write(write(&second.blob_id, &first.grant))
        .await
        .unwrap_err();
    assert_eq!(stolen.code(), Code::PermissionDenied, "{stolen:?}");
    assert!(stolen.message().contains("grant"), "{}", stolen.message());
    volume
        .write(write(&second.blob_id, &second.grant))
        .await
        .unwrap();
    // The blob written with its grant reads back to a reader.
    let reader_client = with(&reader).await;
    assert_eq!(
        reader_client
            .download(&second.blob_id)
            .await
            .unwrap()
            .1
            .as_ref(),
        b"hello"
    );

    // Revocation by id: `hayloft token revoke` with an admin token. The
    // directory refuses the writer at once; the volume server refuses the
    // reader from its next heartbeat on.
    let revoke = |id: String| {
        let (admin, addr) = (admin.clone(), addr.clone());
        async move {
            let out = tokio::process::Command::new(support::BIN)
                .args(["token", "revoke", &id])
                .env("HAYLOFT_TOKEN", admin)
                .env("HAYLOFT_DIRECTORY", addr)
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    // Without admin: refused.
    let out = tokio::process::Command::new(support::BIN)
        .args(["token", "revoke", &writer_id])
        .env("HAYLOFT_TOKEN", &writer)
        .env("HAYLOFT_DIRECTORY", &addr)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    revoke(writer_id).await;
    revoke(reader_id).await;
    let refused = with(&writer)
        .await
        .upload(Bytes::from_static(b"after"), &photos)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(Code::Unauthenticated), "{refused}");
    assert!(refused.to_string().contains("revoked"), "{refused}");
    let refused = eventually(secs(30), "the volume server to refuse it", async || {
        let read = volume
            .read(hayloft_proto::ReadRequest {
                blob_id: second.blob_id.clone(),
                ..hayloft_proto::ReadRequest::default()
            })
            .await;
        match read {
            Err(status) if status.code() == Code::Unauthenticated => Ok(status),
            other => Err(other.map(|_| "read")),
        }
    })
    .await;
    assert!(refused.message().contains("revoked"), "{refused:?}");
    // Other tokens still work.
    assert_eq!(status(admin).await, Ok(()));
    // Every kind of refusal is counted.
    let scrape = get(&format!("http://127.0.0.1:{metrics}/metrics"))
        .await
        .text()
        .await
        .unwrap();
    for reason in ["invalid", "scope", "grant", "revoked"] {
        let series = format!("hayloft_grpc_denied_total{{reason=\"{reason}\"}}");
        assert!(scrape.contains(&series), "{series} missing");
    }

    // The volume server keeps the list on its disk: restarted with no
    // directory to hear from, it still refuses the revoked token (and takes
    // a fresh one).
    server.stop();
    let grpc = port();
    let _volume = support::spawn(
        &[
            "volume",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--grpc-listen",
            &format!("127.0.0.1:{grpc}"),
            "--http-listen",
            &format!("127.0.0.1:{}", port()),
            "--metrics-listen",
            &format!("127.0.0.1:{}", port()),
            "--directory",
            &format!("127.0.0.1:{}", port()),
            "--keyring",
            ring.to_str().unwrap(),
            "--require-tokens",
        ]
        .map(str::to_owned),
        &dir.path().join("volume.log"),
    );
    let read_with = |token: String| {
        let blob_id = second.blob_id.clone();
        async move {
            let channel = eventually(secs(30), "the volume server up", async || {
                tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc}"))
                    .unwrap()
                    .connect()
                    .await
            })
            .await;
            VolumeClient::new(Credential::bearer(&token).unwrap().channel(channel))
                .read(hayloft_proto::ReadRequest {
                    blob_id,
                    ..hayloft_proto::ReadRequest::default()
                })
                .await
                .map(|_| ())
        }
    };
    let refused = read_with(reader.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("revoked"), "{refused:?}");
    read_with(mint(&ring, &["read:photos"])).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sign_url_hands_out_urls_to_the_sign_scope_of_the_blobs_collection_only() {
    use tonic::Code;

    let dir = tempfile::tempdir().unwrap();
    let ring = write_keyring(dir.path(), false);
    let server = Embedded::start(
        dir.path(),
        "[directory]\nsigned_url_max_lifetime = \"1h\"\n\
         [directory.collections.private]\naccess = \"signed\"\n",
        &["--keyring", ring.to_str().unwrap(), "--require-tokens"],
    );
    let (addr, http) = (server.addr.clone(), server.http);
    let with = |token: String| {
        let addr = addr.clone();
        async move { std::sync::Arc::new(connect_when_up(&addr).await.with_token(&token).unwrap()) }
    };
    let writer = with(mint(&ring, &["write:*"])).await;
    let upload = |collection: &str| {
        let options = UploadOptions {
            collection: collection.into(),
            ..UploadOptions::default()
        };
        let writer = writer.clone();
        async move {
            writer
                .upload(Bytes::from_static(b"for signers"), &options)
                .await
                .unwrap()
        }
    };
    let private = upload("private").await;
    let photos = upload("photos").await;
    wait_refused(&private.url).await;

    // A token to sign the private collection's URLs gets a URL that works,
    // at the origin of each copy; the path goes behind any CDN base.
    let token = mint(&ring, &["sign:private"]);
    let signer = with(token.clone()).await;
    let ten_minutes = Duration::from_secs(600);
    let signed = signer
        .request_signed_url(&private.blob_id, ten_minutes, None, None)
        .await
        .unwrap();
    assert!(
        signed.path.starts_with(&format!("/{}?e=", private.blob_id)),
        "{}",
        signed.path
    );
    assert!((now() + 590..=now() + 610).contains(&signed.expires_at));
    assert_eq!(
        signed.urls,
        [format!("http://127.0.0.1:{http}{}", signed.path)]
    );
    let read = get(&signed.urls[0]).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(read.bytes().await.unwrap().as_ref(), b"for signers");
    // Named, and bound to a network: works from it, not from elsewhere.
    let bound = |network: &str| {
        let (signer, blob) = (signer.clone(), private.blob_id.clone());
        let network: ipnet::IpNet = network.parse().unwrap();
        async move {
            signer
                .request_signed_url(&blob, ten_minutes, Some("cat.jpg"), Some(network))
                .await
                .unwrap()
                .urls[0]
                .clone()
        }
    };
    let here = bound("127.0.0.0/8").await;
    assert!(
        here.contains("/cat.jpg?") && here.contains("&ip=127.0.0.0/8"),
        "{here}"
    );
    assert_eq!(get(&here).await.status(), StatusCode::OK);
    let elsewhere = bound("203.0.113.7/32").await;
    assert_eq!(get(&elsewhere).await.status(), StatusCode::FORBIDDEN);

    // Another collection's blob, a token without the scope, no token:
    // refused. So are a lifetime over the limit, a bad name, a malformed
    // id and an unknown volume.
    let code = |client: std::sync::Arc<hayloft_client::Client>,
                blob: String,
                ttl: Duration,
                name: &'static str| async move {
        client
            .request_signed_url(&blob, ttl, Some(name).filter(|n| !n.is_empty()), None)
            .await
            .unwrap_err()
            .code()
            .unwrap()
    };
    let anonymous = std::sync::Arc::new(connect_when_up(&addr).await);
    let unknown = format!("{:x}{:08x}", (999u64 << 32) | 1, 0xdead_beef_u32);
    let two_hours = Duration::from_secs(7200);
    let refusals = [
        (
            &signer,
            &photos.blob_id,
            ten_minutes,
            "",
            Code::PermissionDenied,
        ),
        (
            &writer,
            &private.blob_id,
            ten_minutes,
            "",
            Code::PermissionDenied,
        ),
        (
            &anonymous,
            &private.blob_id,
            ten_minutes,
            "",
            Code::Unauthenticated,
        ),
        (
            &signer,
            &private.blob_id,
            two_hours,
            "",
            Code::InvalidArgument,
        ),
        (
            &signer,
            &private.blob_id,
            ten_minutes,
            "../x",
            Code::InvalidArgument,
        ),
        (
            &signer,
            &"zz".to_owned(),
            ten_minutes,
            "",
            Code::InvalidArgument,
        ),
        (&signer, &unknown, ten_minutes, "", Code::NotFound),
    ];
    for (client, blob, ttl, name, expected) in refusals {
        let got = code(std::sync::Arc::clone(client), blob.clone(), ttl, name).await;
        assert_eq!(got, expected, "{blob} {ttl:?} {name:?}");
    }

    // `hayloft sign` without a key ring asks the directory, with the token.
    let out = tokio::process::Command::new(support::BIN)
        .args([
            "sign",
            &private.blob_id,
            "--base",
            "https://cdn.example.com",
        ])
        .env("HAYLOFT_TOKEN", &token)
        .env("HAYLOFT_DIRECTORY", &addr)
        .env_remove("HAYLOFT_KEYRING")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8(out.stdout).unwrap();
    let path = url
        .trim()
        .strip_prefix("https://cdn.example.com")
        .expect("the CDN's base");
    assert!(
        path.starts_with(&format!("/{}?e=", private.blob_id)),
        "{url}"
    );
    let read = get(&format!("http://127.0.0.1:{http}{path}")).await;
    assert_eq!(read.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limits_refuse_bursts_with_a_retry_hint_and_spare_everyone_else() {
    use hayloft_proto::{AssignRequest, Credential};
    use tonic::Code;

    let dir = tempfile::tempdir().unwrap();
    let ring = write_keyring(dir.path(), false);
    let server = Embedded::start(
        dir.path(),
        "[directory.limits.grpc]\n\"write:assigns\" = { per_minute = 2 }\n\
         [volume.limits]\ntrusted_proxies = [\"127.0.0.4/32\"]\n\
         http = { per_minute = 3 }\n\
         [volume.limits.grpc]\n\"read:*\" = { per_minute = 2 }\n\
         \"write:limited\" = { per_minute = 3 }\n",
        &["--keyring", ring.to_str().unwrap(), "--require-tokens"],
    );
    let (addr, metrics) = (server.addr.clone(), server.metrics);
    let token_of = |subject: &str| {
        let out = std::process::Command::new(support::BIN)
            .args(["token", "create", "--keyring", ring.to_str().unwrap()])
            .args([
                "--scope",
                "write:*",
                "--scope",
                "read:*",
                "--subject",
                subject,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let (alice_token, bob_token) = (token_of("alice"), token_of("bob"));
    let alice = connect_when_up(&addr)
        .await
        .with_token(&alice_token)
        .unwrap();
    let bob = connect_when_up(&addr).await.with_token(&bob_token).unwrap();
    let retry_hint = |error: &hayloft_client::Error| match error {
        hayloft_client::Error::Status(status) => {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert!(status.message().contains("retry in"), "{status:?}");
            let millis: u64 = status
                .metadata()
                .get("retry-after-ms")
                .expect("a retry hint")
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60_000).contains(&millis), "{millis}");
        }
        other => panic!("{other}"),
    };

    // gRPC writes: three a minute into `limited` per subject, then
    // RESOURCE_EXHAUSTED with the wait; other collections and other
    // subjects are not limited by it.
    let limited = UploadOptions {
        collection: "limited".into(),
        ..UploadOptions::default()
    };
    let blob = Bytes::from_static(b"limited bytes");
    for _ in 0..3 {
        alice.upload(blob.clone(), &limited).await.unwrap();
    }
    retry_hint(&alice.upload(blob.clone(), &limited).await.unwrap_err());
    let public = alice
        .upload(blob.clone(), &UploadOptions::default())
        .await
        .unwrap();
    bob.upload(blob.clone(), &limited).await.unwrap();

    // gRPC reads: two a minute per subject.
    for _ in 0..2 {
        alice.download(&public.blob_id).await.unwrap();
    }
    retry_hint(&alice.download(&public.blob_id).await.unwrap_err());
    bob.download(&public.blob_id).await.unwrap();

    // The directory counts Assign calls into `assigns`.
    let assign = || {
        let (addr, token) = (addr.clone(), alice_token.clone());
        async move {
            hayloft_proto::Directories::new(&addr)
                .unwrap()
                .with_credential(Credential::bearer(&token).unwrap())
                .unwrap()
                .call(|mut d| async move {
                    d.assign(AssignRequest {
                        collection: "assigns".into(),
                        ..AssignRequest::default()
                    })
                    .await
                })
                .await
        }
    };
    assign().await.unwrap();
    assign().await.unwrap();
    retry_hint(&hayloft_client::Error::Status(assign().await.unwrap_err()));

    // HTTP: three a minute per client address, then 429 + Retry-After.
    let from = |source: &str| {
        reqwest::Client::builder()
            .local_address(source.parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap()
    };
    let url = public.url.clone();
    let status = |client: reqwest::Client, forwarded: Option<&'static str>| {
        let url = url.clone();
        async move {
            let mut request = client.get(&url);
            if let Some(forwarded) = forwarded {
                request = request.header("x-forwarded-for", forwarded);
            }
            let response = request.send().await.unwrap();
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            (response.status(), retry_after)
        }
    };
    let here = from("127.0.0.1");
    for _ in 0..3 {
        assert_eq!(status(here.clone(), None).await.0, StatusCode::OK);
    }
    let (code, retry_after) = status(here.clone(), None).await;
    assert_eq!(code, StatusCode::TOO_MANY_REQUESTS);
    assert!((1..=60).contains(&retry_after.unwrap()), "{retry_after:?}");
    // A forged X-Forwarded-For from an untrusted peer changes nothing.
    assert_eq!(
        status(here.clone(), Some("198.51.100.9")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another client is not affected.
    assert_eq!(status(from("127.0.0.3"), None).await.0, StatusCode::OK);
    // Behind the trusted proxy, each forwarded client has its own budget.
    let proxy = from("127.0.0.4");
    for _ in 0..3 {
        let (code, _) = status(proxy.clone(), Some("203.0.113.5, 198.51.100.1")).await;
        assert_eq!(code, StatusCode::OK);
    }
    assert_eq!(
        status(proxy.clone(), Some("198.51.100.1")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        status(proxy.clone(), Some("198.51.100.2")).await.0,
        StatusCode::OK
    );

    // Every refusal is counted, per limit.
    let scrape = get(&format!("http://127.0.0.1:{metrics}/metrics"))
        .await
        .text()
        .await
        .unwrap();
    for limit in ["http", "read:*", "write:limited", "write:assigns"] {
        let series = format!("hayloft_rate_limited_total{{limit=\"{limit}\"}}");
        let count = scrape
            .lines()
            .find_map(|line| line.strip_prefix(&series))
            .unwrap_or_else(|| panic!("{series} missing"));
        assert!(
            count.trim().parse::<f64>().unwrap() >= 1.0,
            "{series}{count}"
        );
    }
}

/// The JSON lines of an audit log once one is `last` (or after 15 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_audit_log_has_a_line_for_every_access_with_its_fields() {
    let dir = tempfile::tempdir().unwrap();
    let ring = write_keyring(dir.path(), false);
    let (directory_log, volume_log) = (dir.path().join("d.log"), dir.path().join("v.log"));
    let server = Embedded::start(
        dir.path(),
        &format!(
            "[directory]\npulse = \"1s\"\n\
             [directory.audit]\npath = \"{directory_log}\"\n\
             [directory.collections.private]\naccess = \"signed\"\n\
             [volume.audit]\npath = \"{volume_log}\"\n",
            directory_log = directory_log.display(),
            volume_log = volume_log.display(),
        ),
        &["--keyring", ring.to_str().unwrap(), "--require-tokens"],
    );
    let addr = server.addr.clone();
    let (token, token_id) = mint_with_id(&ring, &["write:*", "read:*", "sign:private"]);
    let alice = connect_when_up(&addr).await.with_token(&token).unwrap();
    let options = |collection: &str| UploadOptions {
        collection: collection.into(),
        ..UploadOptions::default()
    };
    // Writes (one and a batch of two), a read, a refused delete, a call
    // without a token.
    let photo = alice
        .upload(Bytes::from_static(b"a photo"), &options("photos"))
        .await
        .unwrap();
    let private = alice
        .upload(Bytes::from_static(b"private bytes"), &options("private"))
        .await
        .unwrap();
    wait_refused(&private.url).await;
    let batch = alice
        .upload_batch(vec![
            (Bytes::from_static(b"one"), options("photos")),
            (Bytes::from_static(b"two"), options("photos")),
        ])
        .await;
    assert!(batch.iter().all(Result::is_ok));
    alice.download(&photo.blob_id).await.unwrap();
    let refused = alice.delete(&photo.blob_id).await.unwrap_err();
    assert_eq!(refused.code(), Some(tonic::Code::PermissionDenied));
    let anonymous = connect_when_up(&addr).await;
    assert!(anonymous.download(&photo.blob_id).await.is_err());
    // A signed URL from the directory; HTTP reads with it (ranged), with a
    // forged one, and of a public blob (not logged by default).
    let signed = alice
        .request_signed_url(&private.blob_id, Duration::from_secs(600), None, None)
        .await
        .unwrap();
    let ranged = reqwest::Client::new()
        .get(&signed.urls[0])
        .header(header::RANGE, "bytes=0-6")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    let forged = signed.urls[0].replace("&s=", "&s=A");
    assert_eq!(get(&forged).await.status(), StatusCode::FORBIDDEN);
    assert_eq!(get(&photo.url).await.status(), StatusCode::OK);

    let volume = audit_lines(&volume_log, |l| l["status"] == "403").await;
    let find = |lines: &[serde_json::Value], op: &str, status: &str| {
        lines
            .iter()
            .find(|l| l["op"] == op && l["status"] == status)
            .unwrap_or_else(|| panic!("no {op} {status} line in {lines:#?}"))
            .clone()
    };
    // Every line names its server, time and duration.
    for line in &volume {
        assert!(
            line["server"].as_str().unwrap().starts_with("volume:"),
            "{line}"
        );
        assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");
        assert!(line["micros"].is_u64(), "{line}");
    }
    let write = volume
        .iter()
        .find(|l| l["op"] == "Write" && l["blob"] == photo.blob_id.as_str())
        .unwrap_or_else(|| panic!("no write of the photo in {volume:#?}"));
    assert_eq!(write["protocol"], "grpc");
    assert_eq!(write["status"], "OK");
    assert_eq!(write["subject"], "hayloft-cli");
    assert_eq!(write["token_id"], token_id.as_str());
    assert_eq!(write["client"], "127.0.0.1");
    assert_eq!(write["collection"], "photos");
    assert_eq!(write["bytes"], 7);
    let batched: Vec<_> = volume.iter().filter(|l| l["op"] == "WriteBatch").collect();
    assert_eq!(batched.len(), 2, "{volume:#?}");
    // One line per blob, in the order they became durable.
    for uploaded in &batch {
        let id = uploaded.as_ref().unwrap().blob_id.as_str();
        let line = batched.iter().find(|l| l["blob"] == id).expect("its line");
        assert_eq!(line["status"], "OK");
        assert_eq!(line["bytes"], 3);
        assert_eq!(line["collection"], "photos");
    }
    let read = find(&volume, "Read", "OK");
    assert_eq!(read["blob"], photo.blob_id.as_str());
    // No delete scope at all: refused by the gate, before the blob is read.
    let delete = find(&volume, "Delete", "PERMISSION_DENIED");
    assert!(
        delete["reason"].as_str().unwrap().contains("delete"),
        "{delete}"
    );
    let http = find(&volume, "GET", "206");
    assert_eq!(http["protocol"], "http");
    assert_eq!(http["subject"], "key:k1");
    assert_eq!(http["blob"], private.blob_id.as_str());
    assert_eq!(http["collection"], "private");
    assert_eq!(http["range"], "bytes=0-6");
    assert_eq!(http["bytes"], 7);
    let forged_line = find(&volume, "GET", "403");
    assert!(
        !forged_line["reason"].as_str().unwrap().is_empty(),
        "{forged_line}"
    );
    assert!(
        !volume
            .iter()
            .any(|l| l["op"] == "GET" && l["blob"] == photo.blob_id.as_str()),
        "a public read is not logged by default"
    );

    // The directory: Assign and SignUrl lines, and an admin revocation.
    let out = tokio::process::Command::new(support::BIN)
        .args(["token", "revoke", &token_id])
        .env("HAYLOFT_TOKEN", mint(&ring, &["admin"]))
        .env("HAYLOFT_DIRECTORY", &addr)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let directory = audit_lines(&directory_log, |l| l["op"] == "RevokeToken").await;
    // The server's own tiering worker calls with the server's cluster
    // token: never refused (and not logged).
    assert!(
        !directory.iter().any(|l| l["op"] == "Status"),
        "{directory:#?}"
    );
    let assign = find(&directory, "Assign", "OK");
    assert_eq!(assign["subject"], "hayloft-cli");
    assert!(assign["server"].as_str().unwrap().starts_with("directory:"));
    let sign = find(&directory, "SignUrl", "OK");
    assert_eq!(sign["blob"], private.blob_id.as_str());
    assert_eq!(sign["collection"], "private");
    // The anonymous read went no further than the directory's Lookup.
    let anonymous = find(&directory, "Lookup", "UNAUTHENTICATED");
    assert!(anonymous.get("subject").is_none(), "{anonymous}");
    assert!(!anonymous["reason"].as_str().unwrap().is_empty());
    let revoke = find(&directory, "RevokeToken", "OK");
    assert_eq!(revoke["target"], token_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replicated_cluster_that_requires_tokens_replicates_and_deletes_with_its_own() {
    let keys = tempfile::tempdir().unwrap();
    let ring = write_keyring(keys.path(), false);
    let auth = ["--keyring", ring.to_str().unwrap(), "--require-tokens"];
    // Status (for the cluster to come up) needs admin.
    let operator = mint(
        &ring,
        &["admin", "write:photos", "read:photos", "delete:photos"],
    );
    let mut cluster = Cluster::builder()
        .zones(&["a", "b"])
        .replication(2)
        .directory_args(auth)
        .volume_args(auth)
        .token(&operator)
        .start()
        .await;
    let client = cluster.client().await;
    let photos = UploadOptions {
        collection: "photos".into(),
        ..UploadOptions::default()
    };
    // A volume server without the key ring presents no token: its
    // heartbeats are refused, and it never joins.
    let bare = cluster.start_bare_volume_server("c");
    assert_eq!(bare, 2);
    eventually(secs(30), "vs2's heartbeat refused", async || {
        cluster
            .log("vs2.log")
            .contains("requires a token")
            .then_some(())
            .ok_or_else(|| support::log_tails(&cluster.log_dir()))
    })
    .await;
    let status = client.status().await.unwrap();
    assert!(
        status
            .servers
            .iter()
            .all(|s| s.location.as_ref().unwrap().server_id != "vs2"),
        "{:?}",
        status.servers
    );
    // A replicated write: the primary forwards it to the other copy with
    // its own cluster token, or the upload fails.
    let written = client
        .upload(Bytes::from_static(b"two copies"), &photos)
        .await
        .unwrap();
    let volume_id = written
        .blob_id
        .parse::<hayloft_storage::BlobId>()
        .unwrap()
        .volume()
        .0;
    let status = client.status().await.unwrap();
    let volume = status
        .volumes
        .iter()
        .find(|v| v.status.as_ref().is_some_and(|s| s.volume_id == volume_id))
        .unwrap();
    assert_eq!(volume.replicas.len(), 2);
    for server in 0..2 {
        let url = format!("{}/{}", cluster.http_base(server), written.blob_id);
        let read = get(&url).await;
        assert_eq!(read.status(), StatusCode::OK, "{url}");
        assert_eq!(read.bytes().await.unwrap().as_ref(), b"two copies");
    }
    // Without a token, nothing.
    let anonymous = hayloft_client::Client::connect(&cluster.directory_addr())
        .await
        .unwrap();
    let refused = anonymous
        .upload(Bytes::from_static(b"no"), &photos)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(tonic::Code::Unauthenticated));
    assert_eq!(
        anonymous.delete(&written.blob_id).await.unwrap_err().code(),
        Some(tonic::Code::Unauthenticated)
    );
    // The delete reaches both copies (forwarded with the cluster token).
    client.delete(&written.blob_id).await.unwrap();
    for server in 0..2 {
        let url = format!("{}/{}", cluster.http_base(server), written.blob_id);
        assert_eq!(get(&url).await.status(), StatusCode::NOT_FOUND, "{url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_a_public_address_without_tokens_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[String]| {
        let out = std::process::Command::new(support::BIN)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let public = |port: u16| format!("0.0.0.0:{port}");
    let data = |name: &str| dir.path().join(name).display().to_string();
    let directory = [
        "directory".to_owned(),
        "--listen".into(),
        public(support::free_port()),
        "--data-dir".into(),
        data("directory"),
    ];
    let volume = [
        "volume".to_owned(),
        "--grpc-listen".into(),
        public(support::free_port()),
        "--http-listen".into(),
        format!("127.0.0.1:{}", support::free_port()),
        "--data-dir".into(),
        data("volume"),
    ];
    for args in [&directory[..], &volume[..]] {
        let (ok, stderr) = run(args);
        assert!(!ok, "{args:?} started");
        assert!(
            stderr.contains("refusing to serve gRPC on 0.0.0.0:"),
            "{stderr}"
        );
        assert!(stderr.contains("--insecure"), "{stderr}");
        // One line per cause, no backtrace.
        assert!(stderr.trim().lines().count() <= 2, "{stderr}");
        assert!(!stderr.contains("backtrace"), "{stderr}");
    }
    // With --insecure it starts, and says what that means in its log.
    let port = support::free_port();
    let log = dir.path().join("insecure.log");
    let server = support::spawn(
        &[
            "directory".to_owned(),
            "--listen".into(),
            public(port),
            "--data-dir".into(),
            data("insecure"),
            "--metrics-listen".into(),
            format!("127.0.0.1:{}", support::free_port()),
            "--insecure".into(),
        ],
        &log,
    );
    eventually(secs(30), "the directory on a public address", async || {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map(drop)
            .map_err(|_| std::fs::read_to_string(&log).unwrap())
    })
    .await;
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("without tokens (insecure = true)")
    );
    server.stop();
}
