//! The server roles: `hayloft server`, `hayloft directory`, `hayloft volume`.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use hayloft_directory::{Directory, DirectoryConfig};
use hayloft_volume::{VolumeServer, VolumeServerConfig};
use serde::de::DeserializeOwned;

/// Loads a TOML configuration file, or the defaults without one.
pub fn load_config<T: DeserializeOwned + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Where the operator page asks for what it shows: the directory (or the
/// directory group) and what to present to it.
#[derive(Clone)]
pub struct PageSource {
    /// gRPC address(es) of the directory.
    pub directory: String,
    /// The directory's own credential (its cluster token, its TLS client
    /// certificate).
    pub credential: hayloft_proto::Credential,
    /// The directory requires tokens: the page is shown only to a viewer
    /// presenting one, and asks with the viewer's (see `page_access`).
    pub require_token: bool,
}

/// Refuses to serve the metrics address `addr` of a directory with
/// `config` where it would show the cluster to anyone (see
/// [`hayloft_access::insecure_metrics_listen`]).
fn check_metrics_listen(addr: SocketAddr, config: &DirectoryConfig) -> anyhow::Result<()> {
    match hayloft_access::insecure_metrics_listen(
        addr,
        config.require_tokens,
        config
            .tls
            .as_ref()
            .is_some_and(|tls| tls.require_client_certs),
        config.insecure,
    ) {
        Some(refusal) => anyhow::bail!(refusal),
        None => Ok(()),
    }
}

/// The metrics endpoint of this process, and (on a directory) the
/// operator page, served once its source is set.
pub struct MetricsEndpoint {
    /// The bound address.
    pub addr: SocketAddr,
    page: std::sync::Arc<std::sync::OnceLock<PageSource>>,
}

impl MetricsEndpoint {
    /// Serves the operator page at `/` from `source` (a directory's).
    pub fn serve_page(&self, source: PageSource) {
        let _ = self.page.set(source);
    }
}

/// Installs the Prometheus exporter for this process and serves `/metrics`
/// on `addr` (and `/`, the operator page, once [`MetricsEndpoint::serve_page`]
/// is called).
pub async fn serve_metrics(addr: SocketAddr) -> anyhow::Result<MetricsEndpoint> {
    use metrics_exporter_prometheus::PrometheusBuilder;
    // Latency buckets from 100 µs to 10 s.
    let buckets = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets(&buckets)
        .context("metrics buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
    let local = listener.local_addr()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let page: std::sync::Arc<std::sync::OnceLock<PageSource>> = Default::default();
    let source = std::sync::Arc::clone(&page);
    let app = axum::Router::new()
        .route(
            "/login",
            axum::routing::post(
                |axum::Form(form): axum::Form<Vec<(String, String)>>| async move {
                    crate::page_access::login(&form)
                },
            ),
        )
        .route(
            "/logout",
            axum::routing::post(|| async { crate::page_access::logout() }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || {
                let handle = handle.clone();
                async move { handle.render() }
            }),
        )
        .route(
            "/",
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                use axum::response::IntoResponse;
                let source = source.get().cloned();
                async move {
                    match source {
                        Some(source) => crate::page_access::answer(&source, &headers).await,
                        None => (
                            axum::http::StatusCode::NOT_FOUND,
                            axum::response::Html(
                                "no operator page here: it is served by directories".to_owned(),
                            ),
                        )
                            .into_response(),
                    }
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(MetricsEndpoint { addr: local, page })
}

/// Completes on SIGINT or SIGTERM. The handlers are installed when this
/// is called, not when the future is first polled: call it before binding
/// any port, so that a signal during start-up (a test or an init system
/// stopping a server that just started) shuts down cleanly instead of
/// killing the process.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let streams = signal(SignalKind::interrupt()).and_then(|interrupt| {
        signal(SignalKind::terminate()).map(|terminate| (interrupt, terminate))
    });
    async move {
        match streams {
            Ok((mut interrupt, mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGINT and SIGTERM");
                std::future::pending::<()>().await;
            }
        }
        tracing::info!("shutting down: draining requests and syncing volumes");
    }
}

/// The one configuration file of `hayloft server` (`--config`): the
/// embedded layout's addresses, the tiering worker's policy and interval,
/// and `[directory]` / `[volume]` sections with any key of the directory's
/// and the volume server's own configs (config/server.example.toml). Keys
/// not given keep the embedded defaults (the cold tier a local directory,
/// one node, one copy).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Where everything is stored. Default `data`.
    pub data_dir: Option<std::path::PathBuf>,
    /// The directory's gRPC address. Default `127.0.0.1:9330`.
    pub directory_listen: Option<SocketAddr>,
    /// The volume server's gRPC address. Default `127.0.0.1:9331`.
    pub grpc_listen: Option<SocketAddr>,
    /// The HTTP origin's address. Default `127.0.0.1:9380`.
    pub http_listen: Option<SocketAddr>,
    /// Prometheus `/metrics` of the process. Default `127.0.0.1:9390`.
    pub metrics_listen: Option<SocketAddr>,
    /// The tiering worker's lifecycle policy file. Default: built in.
    pub policy: Option<std::path::PathBuf>,
    /// Time between tiering rounds. Default `10m`.
    #[serde(default, with = "humantime_serde")]
    pub tier_interval: Option<std::time::Duration>,
    /// Keys of the directory's config.
    pub directory: toml::Table,
    /// Keys of the volume server's config.
    pub volume: toml::Table,
}

/// Keys of the sections the embedded layout sets itself (at the top of
/// the file), or that would make it more than one node.
const DIRECTORY_OWN: [&str; 6] = [
    "listen",
    "data_dir",
    "metrics_listen",
    "node_id",
    "peers",
    "join",
];
const VOLUME_OWN: [&str; 4] = ["grpc_listen", "http_listen", "directory", "metrics_listen"];

impl ServerConfig {
    /// The directory's and the volume server's configs: the embedded
    /// defaults at this file's layout, with the sections' keys over them.
    pub fn configs(&self) -> anyhow::Result<(DirectoryConfig, VolumeServerConfig)> {
        let addr = |given: Option<SocketAddr>, default: &str| {
            given.unwrap_or_else(|| default.parse().expect("a valid default address"))
        };
        let (directory, volume) = embedded_configs(
            self.data_dir
                .as_deref()
                .unwrap_or_else(|| Path::new("data")),
            addr(self.directory_listen, "127.0.0.1:9330"),
            addr(self.grpc_listen, "127.0.0.1:9331"),
            addr(self.http_listen, "127.0.0.1:9380"),
            addr(self.metrics_listen, "127.0.0.1:9390"),
        );
        Ok((
            overlay(directory, &self.directory, "directory", &DIRECTORY_OWN)?,
            overlay(volume, &self.volume, "volume", &VOLUME_OWN)?,
        ))
    }
}

/// `config` with the keys of `section` put over its own (each key replaces
/// the whole value), checked as the config type checks its files.
fn overlay<T: serde::Serialize + DeserializeOwned>(
    config: T,
    section: &toml::Table,
    name: &str,
    own: &[&str],
) -> anyhow::Result<T> {
    if let Some(key) = section.keys().find(|k| own.contains(&k.as_str())) {
        anyhow::bail!(
            "[{name}] {key}: the embedded server sets it itself (give the addresses and data_dir \
             at the top of the file; it is one node)"
        );
    }
    let mut table = toml::Table::try_from(&config).context("encoding the defaults")?;
    for (key, value) in section {
        table.insert(key.clone(), value.clone());
    }
    table
        .try_into()
        .with_context(|| format!("the [{name}] section"))
}

/// The configurations of the embedded `hayloft server`.
pub fn embedded_configs(
    data_dir: &Path,
    directory_listen: SocketAddr,
    grpc_listen: SocketAddr,
    http_listen: SocketAddr,
    metrics_listen: SocketAddr,
) -> (DirectoryConfig, VolumeServerConfig) {
    // One process, one metrics endpoint (carried by the directory's config).
    let directory = DirectoryConfig {
        listen: directory_listen,
        data_dir: data_dir.join("directory"),
        metrics_listen: Some(metrics_listen),
        ..DirectoryConfig::default()
    };
    let volume = VolumeServerConfig {
        server_id: "local".into(),
        grpc_listen,
        http_listen,
        hot_dirs: vec![data_dir.join("hot")],
        warm_dirs: vec![data_dir.join("warm")],
        metrics_listen: None,
        // The cold tier of the embedded default is a local directory behind
        // the same interface as S3, so nothing else needs installing.
        cold: Some(hayloft_tiering::ObjectStoreConfig::Local {
            path: data_dir.join("cold"),
        }),
        ..VolumeServerConfig::default()
    };
    (directory, volume)
}

/// Runs the directory and a volume server in this process until a signal.
pub async fn server(
    (directory_config, mut volume_config): (DirectoryConfig, VolumeServerConfig),
    policy: hayloft_tiering::Policy,
    tier_interval: std::time::Duration,
) -> anyhow::Result<()> {
    let stop = shutdown_signal();
    let data_dir = directory_config
        .data_dir
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default();
    let metrics = match directory_config.metrics_listen {
        Some(addr) => {
            check_metrics_listen(addr, &directory_config)?;
            Some(serve_metrics(addr).await?)
        }
        None => None,
    };
    let require_token = directory_config.require_tokens;
    let directory = Directory::bind(directory_config)
        .await
        .context("starting the directory")?;
    if let Some(metrics) = &metrics {
        metrics.serve_page(PageSource {
            directory: directory.local_addr().to_string(),
            credential: directory.credential(),
            require_token,
        });
    }
    volume_config.directory = directory.local_addr().to_string();
    let origin_https = volume_config.tls.as_ref().is_some_and(|tls| tls.origin);
    let volume = VolumeServer::bind(volume_config)
        .await
        .context("starting the volume server")?;
    println!("hayloft server: data in {}", data_dir.display());
    println!("  directory (gRPC)  {}", directory.local_addr());
    println!("  volume    (gRPC)  {}", volume.grpc_addr());
    let origin = if origin_https { "https" } else { "http" };
    println!(
        "  origin    (HTTP)  {origin}://{}/<blob id>",
        volume.http_addr()
    );
    if let Some(metrics) = &metrics {
        println!("  operator page     http://{}/", metrics.addr);
        println!("  metrics   (HTTP)  http://{}/metrics", metrics.addr);
    }
    println!("try: hayloft put FILE --url; hayloft status");

    let (stop_volume, volume_stopped) = tokio::sync::oneshot::channel::<()>();
    let (stop_directory, directory_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut volume_task = tokio::spawn(volume.serve(async {
        let _ = volume_stopped.await;
    }));
    let directory_addr = directory.local_addr().to_string();
    let worker_credential = directory.credential();
    let directory_workers = directory.workers();
    let mut directory_task = tokio::spawn(directory.serve(async {
        let _ = directory_stopped.await;
    }));
    let (stop_worker, worker_stopped) = tokio::sync::watch::channel(false);
    // The worker calls with the directory's own credential (a cluster
    // token when the server has a key ring), not HAYLOFT_TOKEN; it is
    // listed in status with the directory's background jobs.
    let mut worker =
        hayloft_proto::background::Runner::with_registry(worker_stopped, directory_workers);
    worker.spawn(
        hayloft_tiering::worker::TieringWorker::new(directory_addr, policy, tier_interval)
            .with_credential(worker_credential),
    );
    tokio::select! {
        _ = stop => {}
        result = &mut volume_task => {
            result?.context("volume server")?;
            anyhow::bail!("volume server stopped unexpectedly");
        }
        result = &mut directory_task => {
            result?.context("directory")?;
            anyhow::bail!("directory stopped unexpectedly");
        }
    }
    // The worker stops first (moves run on in the volume server and resume
    // after a restart); then the volume server, so its volumes are synced
    // while the directory still answers.
    let _ = stop_worker.send(true);
    worker.join().await;
    let _ = stop_volume.send(());
    volume_task.await?.context("volume server")?;
    let _ = stop_directory.send(());
    directory_task.await?.context("directory")?;
    Ok(())
}

/// Runs a directory server until a signal.
pub async fn directory(config: DirectoryConfig) -> anyhow::Result<()> {
    let stop = shutdown_signal();
    let metrics = config.metrics_listen;
    if let Some(addr) = metrics {
        check_metrics_listen(addr, &config)?;
    }
    let require_token = config.require_tokens;
    let directory = Directory::bind(config)
        .await
        .context("starting the directory")?;
    println!("directory listening on {}", directory.local_addr());
    if let Some(addr) = metrics {
        let metrics = serve_metrics(addr).await?;
        metrics.serve_page(PageSource {
            directory: directory.local_addr().to_string(),
            credential: directory.credential(),
            require_token,
        });
        println!("directory operator page on http://{}/", metrics.addr);
        println!("directory metrics on http://{}/metrics", metrics.addr);
    }
    directory.serve(stop).await?;
    Ok(())
}

/// Runs a volume server until a signal.
pub async fn volume(config: VolumeServerConfig) -> anyhow::Result<()> {
    let stop = shutdown_signal();
    let metrics = config.metrics_listen;
    let volume = VolumeServer::bind(config)
        .await
        .context("starting the volume server")?;
    println!("volume server gRPC listening on {}", volume.grpc_addr());
    println!("volume server HTTP listening on {}", volume.http_addr());
    if let Some(addr) = metrics {
        println!(
            "volume server metrics on http://{}/metrics",
            serve_metrics(addr).await?.addr
        );
    }
    volume.serve(stop).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_configs_parse_to_the_defaults() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let directory: DirectoryConfig =
            load_config(Some(&root.join("directory.example.toml"))).unwrap();
        let defaults = DirectoryConfig::default();
        assert_eq!(directory.listen, defaults.listen);
        assert_eq!(directory.dead_after, defaults.dead_after);
        assert_eq!(directory.repair_after, defaults.repair_after);
        assert_eq!(directory.node_id, defaults.node_id);
        assert_eq!(directory.election_timeout, defaults.election_timeout);
        assert_eq!(directory.raft_heartbeat, defaults.raft_heartbeat);
        assert_eq!(directory.raft_snapshot_every, defaults.raft_snapshot_every);
        assert_eq!(
            directory.linearizable_lookups,
            defaults.linearizable_lookups
        );
        // The cluster example keeps three copies, thumbnails two.
        assert_eq!(directory.replication_for("photos"), 3);
        assert_eq!(directory.replication_for("thumbnails"), 2);
        assert_eq!(directory.signed_collections(), ["private"]);
        let volume: VolumeServerConfig =
            load_config(Some(&root.join("volume.example.toml"))).unwrap();
        let defaults = VolumeServerConfig::default();
        assert_eq!(volume.max_volume_size, defaults.max_volume_size);
        assert_eq!(volume.min_free_space, defaults.min_free_space);
        assert_eq!(volume.min_free_percent, defaults.min_free_percent);
        assert_eq!(volume.cache_max_age, defaults.cache_max_age);
        assert_eq!(volume.hot_dirs, defaults.hot_dirs);
        assert_eq!(volume.read_window, defaults.read_window);
        assert_eq!(volume.zone, defaults.zone);
        assert_eq!(volume.scrub_interval, defaults.scrub_interval);
        assert_eq!(volume.verify_reads_up_to, defaults.verify_reads_up_to);
        assert_eq!(volume.disk_reads_in_flight, defaults.disk_reads_in_flight);
        assert_eq!(volume.disk_reads_queued, defaults.disk_reads_queued);
        assert!(volume.cold.is_some());
        assert_eq!(
            volume.signed_url_max_lifetime,
            defaults.signed_url_max_lifetime
        );
        assert_eq!(volume.signed_url_clock_skew, defaults.signed_url_clock_skew);

        let policy = std::fs::read_to_string(root.join("policy.example.toml")).unwrap();
        let policy = hayloft_tiering::Policy::parse(&policy).unwrap();
        assert_eq!(policy.rules.len(), 2);
        assert_eq!(policy.promotions.len(), 1);
        assert_eq!(policy.expiries.len(), 1);
        // The built-in policy of `hayloft server` parses too.
        crate::tier::load_policy(None).unwrap();
    }

    /// The example's commented-out `[tls]` block, uncommented.
    fn tls_block(example: &str) -> String {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../config")
                .join(example),
        )
        .unwrap();
        text.lines()
            .skip_while(|line| *line != "# [tls]")
            .take_while(|line| line.starts_with("# "))
            .map(|line| format!("{}\n", &line[2..]))
            .collect()
    }

    #[test]
    fn the_examples_tls_blocks_parse() {
        let volume: VolumeServerConfig = toml::from_str(&tls_block("volume.example.toml")).unwrap();
        let tls = volume.tls.unwrap();
        assert!(tls.require_client_certs && tls.origin);
        assert_eq!(tls.ca, Path::new("/etc/hayloft/tls/ca.pem"));
        let directory: DirectoryConfig =
            toml::from_str(&tls_block("directory.example.toml")).unwrap();
        assert!(directory.tls.unwrap().require_client_certs);
    }

    #[test]
    fn the_server_example_overlays_the_embedded_defaults() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let file: ServerConfig = load_config(Some(&root.join("server.example.toml"))).unwrap();
        let (directory, volume) = file.configs().unwrap();
        // The embedded layout: one node under data/, a local cold tier.
        assert_eq!(directory.data_dir, Path::new("data/directory"));
        assert_eq!(directory.listen, "127.0.0.1:9330".parse().unwrap());
        assert!(directory.peers.is_empty());
        assert_eq!(volume.hot_dirs, [Path::new("data/hot")]);
        assert!(matches!(
            volume.cold,
            Some(hayloft_tiering::ObjectStoreConfig::Local { .. })
        ));
        assert_eq!(volume.directory, "127.0.0.1:9330");
        // The sections' keys over them.
        assert_eq!(directory.replication_for("thumbnails"), 1);
        assert_eq!(directory.min_writable_volumes, 2);
        assert_eq!(volume.server_id, "local");
        assert_eq!(
            file.tier_interval,
            Some(std::time::Duration::from_secs(600))
        );

        // Any key of either config reaches it; a typo or a key the layout
        // owns is refused with the section named.
        let parse = |text: &str| -> anyhow::Result<(DirectoryConfig, VolumeServerConfig)> {
            let file: ServerConfig = toml::from_str(text)?;
            file.configs()
        };
        let (directory, volume) = parse(
            "[directory.collections.private]\naccess = \"signed\"\n\
             [volume]\nkeyring = \"/etc/hayloft/keyring.toml\"\ncompaction_threshold = 0.5\n\
             [volume.cold]\ntype = \"s3\"\nendpoint = \"http://127.0.0.1:9000\"\n",
        )
        .unwrap();
        assert_eq!(directory.signed_collections(), ["private"]);
        assert_eq!(
            volume.keyring.as_deref(),
            Some(Path::new("/etc/hayloft/keyring.toml"))
        );
        assert_eq!(volume.compaction_threshold, 0.5);
        assert!(matches!(
            volume.cold,
            Some(hayloft_tiering::ObjectStoreConfig::S3 { .. })
        ));
        let error = format!(
            "{:#}",
            parse("[volume]\ncompaction_treshold = 0.5\n").unwrap_err()
        );
        assert!(
            error.contains("[volume]") && error.contains("compaction_treshold"),
            "{error}"
        );
        let error = format!(
            "{:#}",
            parse("[directory]\npeers = [\"1=a:1\"]\n").unwrap_err()
        );
        assert!(error.contains("[directory] peers"), "{error}");
        assert!(parse("data_dir = \"x\"\nlisten = \"127.0.0.1:1\"\n").is_err());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\nlisten_typo = 3\n").unwrap();
        let error = load_config::<DirectoryConfig>(Some(&path)).unwrap_err();
        assert!(format!("{error:#}").contains("listen_typo"), "{error:#}");
    }
}
