//! The server roles' configuration files and signals, and the roles
//! `hayloft directory` and `hayloft volume` (`hayloft server` is
//! [`crate::server`]).

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use hayloft_directory::{Directory, DirectoryConfig};
use hayloft_volume::{VolumeServer, VolumeServerConfig};
use serde::de::DeserializeOwned;

use crate::server::{Addresses, Embedded};

/// Loads a TOML configuration file, or the defaults without one.
pub fn load_config<T: DeserializeOwned + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
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
    /// The embedded server's settings: the zero-configuration layout at
    /// this file's data directory and addresses, with the sections' keys
    /// over the directory's and the volume server's configs.
    pub fn embedded(&self) -> anyhow::Result<Embedded> {
        let defaults = Addresses::default();
        let addresses = Addresses {
            directory: self.directory_listen.unwrap_or(defaults.directory),
            grpc: self.grpc_listen.unwrap_or(defaults.grpc),
            http: self.http_listen.unwrap_or(defaults.http),
            metrics: self.metrics_listen.or(defaults.metrics),
        };
        let embedded = Embedded::new(
            self.data_dir
                .as_deref()
                .unwrap_or_else(|| Path::new("data")),
            addresses,
        );
        Ok(Embedded {
            directory: overlay(
                embedded.directory,
                &self.directory,
                "directory",
                &DIRECTORY_OWN,
            )?,
            volume: overlay(embedded.volume, &self.volume, "volume", &VOLUME_OWN)?,
            ..embedded
        })
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

/// Runs `hayloft server` ([`crate::server`]) until a signal, saying where
/// it serves.
pub async fn server(config: Embedded) -> anyhow::Result<()> {
    let running = crate::server::start(config, shutdown_signal()).await?;
    let addresses = running.addresses;
    println!("hayloft server: data in {}", running.data_dir.display());
    println!("  directory (gRPC)  {}", addresses.directory);
    println!("  volume    (gRPC)  {}", addresses.grpc);
    let origin = if running.origin_https {
        "https"
    } else {
        "http"
    };
    println!(
        "  origin    (HTTP)  {origin}://{}/<blob id>",
        addresses.http
    );
    if let Some(metrics) = addresses.metrics {
        println!("  operator page     http://{metrics}/");
        println!("  metrics   (HTTP)  http://{metrics}/metrics");
    }
    println!("try: hayloft put FILE --url; hayloft status");
    running.stopped().await?;
    Ok(())
}

/// Runs a directory server until a signal.
pub async fn directory(config: DirectoryConfig) -> anyhow::Result<()> {
    let stop = shutdown_signal();
    let metrics = config.metrics_listen;
    if let Some(addr) = metrics {
        crate::metrics::check_listen(addr, &config)?;
    }
    let require_token = config.require_tokens;
    let directory = Directory::bind(config)
        .await
        .context("starting the directory")?;
    println!("directory listening on {}", directory.local_addr());
    if let Some(addr) = metrics {
        let metrics = crate::metrics::serve(addr, std::future::pending()).await?;
        metrics.serve_page(crate::metrics::PageSource {
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
            crate::metrics::serve(addr, std::future::pending())
                .await?
                .addr
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
        // Erasure codes: the default, and thumbnails' own.
        let codes = hayloft_directory::erasure::EcCodes::from_config(&directory).unwrap();
        assert_eq!(codes.for_collection("photos").to_string(), "10+4");
        assert_eq!(codes.for_collection("thumbnails").to_string(), "6+3");
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
        let embedded = file.embedded().unwrap();
        let (directory, volume) = (embedded.directory, embedded.volume);
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
            let embedded = file.embedded()?;
            Ok((embedded.directory, embedded.volume))
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
