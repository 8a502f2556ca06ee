//! End-to-end region failover with real processes: two `hayloft server`s,
//! regions `a` (number 0) and `b` (number 1), each told of the other.
//!
//! - The Rust client and the CLI given `[a, b]` upload to `a`; with `a`
//!   hung (SIGSTOP) the client's uploads go to `b`, and back to `a` once
//!   it resumes; with `a` killed (SIGKILL) their uploads go to `b` (ids of
//!   region 1) and read
//!   back, `b`'s blobs read, a blob only `a` holds fails naming both
//!   regions; `a` restarted, uploads go to `a` again.
//! - A real nginx with `a`'s origin first and `b`'s as `backup`
//!   (`deploy/nginx/`): with `a` killed, blobs of `b` are served through
//!   it, signed URLs checked by the edge and by `b` with the one key ring.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use hayloft_client::{Client, Failover, RegionDirectory, UploadOptions};
use reqwest::StatusCode;
use support::access::{K1, get, write_keyring};
use support::regions::ports;
use support::{content, eventually, secs, try_eventually_blocking};

/// One region's `hayloft server`: its addresses, how to start it again,
/// and its process while it runs.
struct Region {
    directory: String,
    http: String,
    args: Vec<String>,
    log: PathBuf,
    server: Option<support::Proc>,
}

impl Region {
    /// Region `me` (`NAME:NUMBER`) in `root/<name>`, told of `other`
    /// (`NAME:NUMBER=ADDR`); its collection `private` is signed with the
    /// key ring `ring`.
    fn start(
        root: &Path,
        name: &str,
        me: &str,
        other: &str,
        ports: &[String; 4],
        ring: &Path,
    ) -> Region {
        let [directory, grpc, http, metrics] = ports.clone();
        let config = root.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            "[directory]\npulse = \"500ms\"\n[directory.collections.private]\naccess = \"signed\"\n",
        )
        .unwrap();
        let args: Vec<String> = [
            "server",
            "--config",
            &config.display().to_string(),
            "--data-dir",
            &root.join(name).display().to_string(),
            "--directory-listen",
            &directory,
            "--grpc-listen",
            &grpc,
            "--http-listen",
            &http,
            "--metrics-listen",
            &metrics,
            "--keyring",
            &ring.display().to_string(),
            "--region",
            me,
            "--regions",
            other,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        let log = root.join(format!("{name}.log"));
        let server = Some(support::spawn(&args, &log));
        Region {
            directory,
            http,
            args,
            log,
            server,
        }
    }

    /// SIGKILL: the region is gone at once, nothing drained.
    fn kill(&mut self) {
        if let Some(server) = self.server.take() {
            server.kill();
        }
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): a region that takes
    /// connections (the kernel does) but answers nothing.
    fn pause(&self, paused: bool) {
        let signal = if paused { libc::SIGSTOP } else { libc::SIGCONT };
        self.server.as_ref().unwrap().signal(signal);
    }

    /// Starts it again on its addresses and data.
    fn restart(&mut self) {
        self.server = Some(support::spawn(&self.args, &self.log));
    }
}

/// Regions `a` (0) and `b` (1) on free ports, one key ring for both.
struct TwoRegions {
    a: Region,
    b: Region,
    ring: PathBuf,
    root: tempfile::TempDir,
}

impl TwoRegions {
    async fn start() -> TwoRegions {
        let root = tempfile::tempdir().unwrap();
        let ring = write_keyring(root.path(), false);
        let (ports_a, ports_b) = (ports(), ports());
        let a = Region::start(
            root.path(),
            "a",
            "a:0",
            &format!("b:1={}", ports_b[0]),
            &ports_a,
            &ring,
        );
        let b = Region::start(
            root.path(),
            "b",
            "b:1",
            &format!("a:0={}", ports_a[0]),
            &ports_b,
            &ring,
        );
        let regions = TwoRegions { a, b, ring, root };
        // Each region takes uploads on its own before the test starts.
        for directory in [&regions.a.directory, &regions.b.directory] {
            let client = regions.connect_one(directory).await;
            upload_eventually(&client, 0, &UploadOptions::default()).await;
        }
        regions
    }

    async fn connect_one(&self, directory: &str) -> Client {
        eventually(secs(30), "a region's directory to answer", async || {
            Client::connect(directory).await
        })
        .await
    }

    /// The list `a=...;b=...`, as `--regions` takes it.
    fn list(&self) -> String {
        format!("a={};b={}", self.a.directory, self.b.directory)
    }

    fn logs(&self) -> String {
        support::log_tails(self.root.path())
    }
}

/// The region number of a blob id.
fn region_of(blob_id: &str) -> u8 {
    blob_id
        .parse::<hayloft_storage::BlobId>()
        .unwrap()
        .volume()
        .region()
        .0
}

/// Uploads `content(seed)` (waiting for a region still starting).
async fn upload_eventually(
    client: &Client,
    seed: u64,
    options: &UploadOptions,
) -> (hayloft_client::Uploaded, Bytes) {
    let data = Bytes::from(content(seed, 30_000));
    let uploaded = eventually(secs(60), "an upload", async || {
        client
            .upload(data.clone(), options)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    (uploaded, data)
}

/// Runs `hayloft` with `env`: success, stdout, stderr.
fn hayloft(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let output = std::process::Command::new(support::BIN)
        .args(args)
        .env_remove("HAYLOFT_DIRECTORY")
        .env_remove("HAYLOFT_CLIENT_REGIONS")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_region_a_killed_uploads_go_to_b_and_come_back_to_a() {
    let mut regions = TwoRegions::start().await;
    let list = vec![
        RegionDirectory {
            name: "a".into(),
            directory: vec![regions.a.directory.clone()],
        },
        RegionDirectory {
            name: "b".into(),
            directory: vec![regions.b.directory.clone()],
        },
    ];
    // A second skipped, so that the test sees a's return soon; the
    // default patience (5 s) for a region that does not answer.
    let failover = Failover {
        skip_for: Duration::from_secs(1),
        ..Failover::default()
    };
    let client = Client::connect_regions(list, hayloft_proto::Credential::none())
        .await
        .unwrap()
        .with_failover(failover);
    assert_eq!(client.regions(), ["a", "b"]);
    let options = UploadOptions::default();

    // Both up: uploads go to the local region, a.
    let (in_a, data_in_a) = upload_eventually(&client, 1, &options).await;
    assert_eq!((in_a.region.as_str(), region_of(&in_a.blob_id)), ("a", 0));
    let only_b = regions.connect_one(&regions.b.directory).await;
    let (in_b, data_in_b) = upload_eventually(&only_b, 2, &options).await;
    assert_eq!(region_of(&in_b.blob_id), 1);
    // A blob of b reads through the list with a up too (a does not hold it).
    assert_eq!(client.download(&in_b.blob_id).await.unwrap().1, data_in_b);

    // a hangs (SIGSTOP) while the client holds ids reserved there: the
    // write gets no answer (HTTP/2 pings), a's directory none either, and
    // the upload is made in b.
    regions.a.pause(true);
    let data = Bytes::from(content(5, 50_000));
    let uploaded = client.upload(data.clone(), &options).await.unwrap();
    assert_eq!(region_of(&uploaded.blob_id), 1, "{uploaded:?}");
    regions.a.pause(false);
    assert_eq!(client.download(&uploaded.blob_id).await.unwrap().1, data);
    eventually(
        secs(60),
        "uploads to go to a again after its pause",
        async || {
            let data = Bytes::from(content(6, 1_000));
            match client.upload(data, &options).await {
                Ok(uploaded) if uploaded.region == "a" => Ok(()),
                Ok(uploaded) => Err(format!("went to {}", uploaded.region)),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;

    // a is killed while the client holds ids reserved there: the next
    // upload fails there, is made whole again in b, with b's id.
    regions.a.kill();
    for seed in 10..14 {
        let data = Bytes::from(content(seed, 50_000));
        let uploaded = client.upload(data.clone(), &options).await.unwrap();
        assert_eq!(
            (uploaded.region.as_str(), region_of(&uploaded.blob_id)),
            ("b", 1),
            "{uploaded:?}"
        );
        assert_eq!(client.download(&uploaded.blob_id).await.unwrap().1, data);
    }
    // A batch too.
    let batch: Vec<(Bytes, UploadOptions)> = (20..25)
        .map(|seed| (Bytes::from(content(seed, 2_000)), options.clone()))
        .collect();
    for (result, (data, _)) in client
        .upload_batch(batch.clone())
        .await
        .into_iter()
        .zip(&batch)
    {
        let uploaded = result.unwrap();
        assert_eq!(region_of(&uploaded.blob_id), 1, "{uploaded:?}");
        assert_eq!(&client.download(&uploaded.blob_id).await.unwrap().1, data);
    }
    // b's blob from before reads; a's (not replicated) cannot, and the
    // error names each region and why.
    assert_eq!(client.download(&in_b.blob_id).await.unwrap().1, data_in_b);
    let lost = client.download(&in_a.blob_id).await.unwrap_err();
    let text = lost.to_string();
    assert!(
        matches!(lost, hayloft_client::Error::Regions(_)),
        "{lost:?}"
    );
    assert!(
        text.contains("region a (unreachable)") && text.contains("region b (answered)"),
        "{text}"
    );
    assert_eq!(lost.code(), Some(tonic::Code::Unavailable), "{text}");

    // The CLI with the list, by flag and by environment: the same.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cli.bin");
    std::fs::write(&file, content(30, 10_000)).unwrap();
    let (ok, out, err) = hayloft(
        &["put", "--regions", &regions.list(), file.to_str().unwrap()],
        &[],
    );
    assert!(ok, "{err}\n{}", regions.logs());
    let from_cli = out.trim().to_owned();
    assert_eq!(region_of(&from_cli), 1, "{out}");
    let copy = dir.path().join("copy.bin");
    let (ok, _, err) = hayloft(
        &["get", &from_cli, "-o", copy.to_str().unwrap()],
        &[("HAYLOFT_CLIENT_REGIONS", &regions.list())],
    );
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&copy).unwrap(), content(30, 10_000));
    // Only a given: the CLI says why it cannot connect.
    let (ok, _, err) = hayloft(
        &[
            "get",
            &from_cli,
            "--regions",
            &format!("a={}", regions.a.directory),
        ],
        &[],
    );
    assert!(!ok && err.contains("connecting to the regions a"), "{err}");

    // a is back: once its skip is over, uploads go to a again.
    regions.a.restart();
    let back = eventually(secs(60), "an upload to go to region a again", async || {
        let data = Bytes::from(content(40, 1_000));
        match client.upload(data, &options).await {
            Ok(uploaded) if uploaded.region == "a" => Ok(uploaded),
            Ok(uploaded) => Err(format!("went to {}", uploaded.region)),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    assert_eq!(region_of(&back.blob_id), 0);
    // a's blob from before a was killed reads again.
    assert_eq!(client.download(&in_a.blob_id).await.unwrap().1, data_in_a);
    let (ok, out, err) = hayloft(
        &["put", "--regions", &regions.list(), file.to_str().unwrap()],
        &[],
    );
    assert!(ok, "{err}");
    assert_eq!(region_of(out.trim()), 0, "{out}");
}

/// A real nginx running `deploy/nginx/`'s edge with region a's origin
/// first and region b's as `backup` (as `nginx.conf.example`), on a free
/// loopback port; stopped when dropped.
struct Edge {
    child: std::process::Child,
    dir: tempfile::TempDir,
    base: String,
}

impl Edge {
    async fn start(primary: &str, backup: &str, keyring: &Path) -> Edge {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/nginx")
            .canonicalize()
            .unwrap();
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
               upstream hayloft_origins {{\n\
                 server {primary} max_fails=1 fail_timeout=10s;\n\
                 server {backup} backup;\n\
                 keepalive 8;\n\
               }}\n\
               server {{\n\
                 listen 127.0.0.1:{port};\n\
                 set $hayloft_keyring {ring};\n\
                 location / {{\n\
                   include {deploy}/hayloft-edge.conf;\n\
                   include {deploy}/hayloft-backup-region.conf;\n\
                   add_header X-Upstream $upstream_addr always;\n\
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
}

impl Drop for Edge {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (SIGKILL would orphan them).
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = try_eventually_blocking(Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten()
        });
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A URL of `blob_id` under `base` signed with k1 for ten minutes.
fn signed(base: &str, blob_id: &str) -> String {
    let path = format!("/{blob_id}");
    let query =
        hayloft_access::signed_url::sign(K1, "k1", &path, support::access::now() + 600, None);
    format!("{base}{path}?{query}")
}

/// Status, `X-Upstream` (the origins nginx tried), `X-Cache-Status` and
/// body of a GET.
async fn through(url: &str) -> (StatusCode, String, String, Bytes) {
    let response = get(url).await;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (upstream, cache) = (header("x-upstream"), header("x-cache-status"));
    (
        response.status(),
        upstream,
        cache,
        response.bytes().await.unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_of_region_a_is_answered_by_region_b_while_a_is_down() {
    let mut regions = TwoRegions::start().await;
    let edge = Edge::start(&regions.a.http, &regions.b.http, &regions.ring).await;
    let in_b = regions.connect_one(&regions.b.directory).await;
    let private = UploadOptions {
        collection: "private".into(),
        ..UploadOptions::default()
    };
    let (before, data_before) = upload_eventually(&in_b, 1, &UploadOptions::default()).await;
    let (public, data_public) = upload_eventually(&in_b, 2, &UploadOptions::default()).await;
    let (secret, data_secret) = upload_eventually(&in_b, 3, &private).await;
    // Both regions' origins refuse an unsigned private read once they
    // heard the collection is signed.
    for http in [&regions.a.http, &regions.b.http] {
        support::access::wait_refused(&format!("http://{http}/{}", secret.blob_id)).await;
    }

    // a up: a's origin answers (reading b's blob across regions).
    let (status, upstream, _, body) = through(&format!("{}/{}", edge.base, before.blob_id)).await;
    assert_eq!(status, StatusCode::OK, "{}", edge.logs());
    assert_eq!(upstream, regions.a.http, "a answers while it is up");
    assert_eq!(body, data_before);

    // a killed: b answers what the edge has not cached.
    regions.a.kill();
    let (status, upstream, cache, body) =
        through(&format!("{}/{}", edge.base, public.blob_id)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}\n{}",
        edge.logs(),
        regions.logs()
    );
    assert!(upstream.ends_with(&regions.b.http), "{upstream}");
    assert_eq!(cache, "MISS");
    assert_eq!(body, data_public);
    // A signed URL verifies at the edge and at b (one key ring); unsigned
    // and forged ones are refused at the edge.
    let url = signed(&edge.base, &secret.blob_id);
    let (status, upstream, _, body) = through(&url).await;
    assert_eq!(status, StatusCode::OK, "{}", edge.logs());
    assert!(upstream.ends_with(&regions.b.http), "{upstream}");
    assert_eq!(body, data_secret);
    let unsigned = format!("{}/{}", edge.base, secret.blob_id);
    assert_eq!(get(&unsigned).await.status(), StatusCode::FORBIDDEN);
    let forged = url.replace("&s=", "&s=A");
    assert_eq!(get(&forged).await.status(), StatusCode::FORBIDDEN);
}
