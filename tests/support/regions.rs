//! Regions as real processes, for `e2e_regions`: one region's `hayloft
//! server` ([`Region`]) started by flags, its shipping metrics, uploads
//! and the checks that every blob reads from a region.

use bytes::Bytes;
use hayloft_client::UploadOptions;

use super::{content, eventually, secs};

/// A free loopback address (`127.0.0.1:PORT`).
pub fn addr() -> String {
    format!("127.0.0.1:{}", super::free_port())
}

/// A region's four addresses: directory, gRPC, HTTP, metrics.
pub fn ports() -> [String; 4] {
    [addr(), addr(), addr(), addr()]
}

/// One region's `hayloft server`: its ports and process.
pub struct Region {
    pub directory: String,
    pub http: String,
    pub metrics: String,
    pub server: super::Proc,
}

pub fn start(
    root: &std::path::Path,
    name: &str,
    me: &str,
    other: &str,
    ports: [String; 4],
) -> Region {
    start_with(root, name, me, other, ports, &[], name)
}

/// [`start`] with more flags, logging to `<log>.log`.
pub fn start_with(
    root: &std::path::Path,
    name: &str,
    me: &str,
    other: &str,
    ports: [String; 4],
    extra: &[&str],
    log: &str,
) -> Region {
    start_env(root, name, me, other, ports, extra, log, &[])
}

/// [`start_with`] with more environment variables.
#[allow(clippy::too_many_arguments)]
pub fn start_env(
    root: &std::path::Path,
    name: &str,
    me: &str,
    other: &str,
    ports: [String; 4],
    extra: &[&str],
    log: &str,
    env: &[(String, String)],
) -> Region {
    let [directory, grpc, http, metrics] = ports;
    let args: Vec<String> = [
        "server",
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
        "--region",
        me,
        "--regions",
        other,
    ]
    .iter()
    .chain(extra)
    .map(|a| a.to_string())
    .collect();
    let server = super::spawn_with_env(&args, &root.join(format!("{log}.log")), env);
    Region {
        directory,
        http,
        metrics,
        server,
    }
}

/// The value of the metric line starting with `name{labels} ` in `text`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

pub async fn metrics_of(region: &Region) -> String {
    match reqwest::get(format!("http://{}/metrics", region.metrics)).await {
        Ok(answer) => answer.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Waits until `region` has applied `needles` needles and `tombstones`
/// tombstones from the logs of regions `from` (since it started, summed)
/// and is caught up with each.
pub async fn shipped(
    root: &std::path::Path,
    region: &Region,
    from: &[&str],
    needles: f64,
    tombstones: f64,
) {
    eventually(secs(60), "the other regions' logs applied", async || {
        let text = metrics_of(region).await;
        let value = |name: &str, from: &str| metric(&text, &format!("{name}{{from=\"{from}\"}}"));
        let sum = |name: &str| -> f64 { from.iter().filter_map(|f| value(name, f)).sum() };
        let ok = sum("hayloft_region_shipped_needles_total") >= needles
            && sum("hayloft_region_shipped_tombstones_total") >= tombstones
            && from
                .iter()
                .all(|f| value("hayloft_region_lag_entries", f) == Some(0.0));
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{}\n{}",
                text.lines()
                    .filter(|l| l.starts_with("hayloft_region_"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                super::log_tails(root)
            ))
        }
    })
    .await;
}

/// Uploads `content(seed, len)` through `client` (retried while the
/// cluster settles): its blob id and bytes.
pub async fn upload_seeded(
    client: &hayloft_client::Client,
    seed: u64,
    len: usize,
) -> (String, Bytes) {
    let data = Bytes::from(content(seed, len));
    let uploaded = eventually(secs(30), "an upload", async || {
        client
            .upload(data.clone(), &UploadOptions::default())
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    (uploaded.blob_id, data)
}

/// Region a (number 0) replicating to region b (number 1), on `ports_a`.
pub fn region_a(root: &std::path::Path, ports_a: &[String; 4], ports_b: &[String; 4]) -> Region {
    start_with(
        root,
        "a",
        "a:0",
        &format!("b:1={}", ports_b[0]),
        ports_a.clone(),
        &["--replicate-to", "b"],
        "a",
    )
}

/// Region b (number 1), told of region a, logging to `<log>.log`, with
/// `env`.
pub fn region_b(
    root: &std::path::Path,
    ports_a: &[String; 4],
    ports_b: &[String; 4],
    log: &str,
    env: &[(String, String)],
) -> Region {
    start_env(
        root,
        "b",
        "b:1",
        &format!("a:0={}", ports_a[0]),
        ports_b.clone(),
        &[],
        log,
        env,
    )
}

/// Region b (number 1), told of region a, with `toml` as its config
/// file, logging to `b.log`.
pub fn region_b_configured(
    root: &std::path::Path,
    ports_a: &[String; 4],
    ports_b: &[String; 4],
    toml: &str,
) -> Region {
    let config = root.join("b.toml");
    std::fs::write(&config, toml).unwrap();
    start_with(
        root,
        "b",
        "b:1",
        &format!("a:0={}", ports_a[0]),
        ports_b.clone(),
        &["--config", &config.display().to_string()],
        "b",
    )
}

pub async fn client_of(directory: &str) -> hayloft_client::Client {
    eventually(secs(30), "a client", async || {
        hayloft_client::Client::connect(directory)
            .await
            .map_err(|e| e.to_string())
    })
    .await
}

/// Every blob of `live` reads back byte-identical from `region` over HTTP
/// and gRPC, and every one of `deleted` is gone (404, NOT_FOUND).
pub async fn reads_all_from(region: &Region, live: &[(String, Bytes)], deleted: &[String]) {
    let client = client_of(&region.directory).await;
    for (id, data) in live {
        let read = reqwest::get(format!("http://{}/{id}", region.http))
            .await
            .unwrap();
        assert_eq!(read.status(), 200, "{id}");
        assert_eq!(&read.bytes().await.unwrap(), data, "{id} over HTTP");
        let (_, bytes) = client.download(id).await.unwrap();
        assert_eq!(&bytes, data, "{id} over gRPC");
    }
    for id in deleted {
        let read = reqwest::get(format!("http://{}/{id}", region.http))
            .await
            .unwrap();
        assert_eq!(read.status(), 404, "deleted {id}");
        assert!(client.download(id).await.is_err(), "deleted {id} over gRPC");
    }
}

/// Waits until `hayloft status --json` at `directory` shows the other
/// region `other` with `field` (`lag` or `behind`) at 0 entries and some
/// bytes shipped.
pub async fn caught_up_in_status(directory: &str, other: &str, field: &str) {
    eventually(secs(30), "a lag of 0 in the status", async || {
        let status = std::process::Command::new(super::BIN)
            .args(["status", "--json", "--directory", directory])
            .output()
            .map_err(|e| e.to_string())?;
        let json: serde_json::Value =
            serde_json::from_slice(&status.stdout).map_err(|e| e.to_string())?;
        let lag = &json["regions"][1][field];
        if json["regions"][1]["name"] == other
            && lag["entries"] == 0
            && lag["shipped_bytes"].as_u64().is_some_and(|b| b > 0)
        {
            Ok(())
        } else {
            Err(format!("{field}: {}", json["regions"]))
        }
    })
    .await;
}

/// Every file under `dir`.
pub fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
