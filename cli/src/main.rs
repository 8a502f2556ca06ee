//! The `hayloft` command.
//!
//! `main` only parses arguments and configuration and hands over to the
//! `hayloft` library: [`hayloft::server`] (`hayloft server`), [`daemons`]
//! (the other server roles) or the client commands ([`commands`] and the
//! others).
//!
//! About 610 lines, most of them the flags' `--help` text; the region
//! flags shared by the server roles live in `hayloft::regions`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use hayloft::{bench, commands, compact, daemons, group, keyring, repair, sign, tier, token};

/// hayloft: a Haystack-style blob store with hot, warm and cold tiers.
#[derive(Parser)]
// A flag given twice: the last one wins (scripts and tests append overrides).
#[command(version, about, propagate_version = true, args_override_self = true)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "HAYLOFT_LOG_JSON")]
    log_json: bool,
    /// On failure, print the error with every detail (and a backtrace if
    /// RUST_BACKTRACE asks for one) instead of one line per cause.
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Directory and volume server in one process: the zero-configuration
    /// default (data under ./data, listening on localhost).
    Server(ServerArgs),
    /// A directory server, for deployments with several volume servers.
    Directory(DirectoryArgs),
    /// A volume server.
    Volume(Box<VolumeArgs>),
    /// Upload files; prints one blob id per file.
    Put(commands::PutArgs),
    /// Download a blob to stdout or a file.
    Get(commands::GetArgs),
    /// Delete blobs.
    Rm(commands::RmArgs),
    /// Show the cluster's servers and volumes.
    Status(commands::StatusArgs),
    /// Reclaim the space of deleted blobs, while volumes keep serving.
    Compact(compact::CompactArgs),
    /// Load a running cluster: uploads, HTTP reads (uniform, Zipf), mixed.
    Bench(bench::BenchArgs),
    /// Tier moves: plan, run, status, restore, move, and the tiering worker.
    Tier(tier::TierArgs),
    /// Repair degraded volumes now (or --dry-run: say what would be done).
    Repair(repair::RepairArgs),
    /// Print a signed URL for a blob of a `signed` collection.
    Sign(sign::SignArgs),
    /// Tokens for clusters that require them (`hayloft token create`).
    Token(token::TokenArgs),
    /// Edit a key ring file safely (`hayloft keyring remove KEY_ID`).
    Keyring(keyring::KeyringArgs),
}

/// A server's access-control flags.
#[derive(Args)]
struct AuthArgs {
    /// Key ring: verifies signed URLs and tokens, signs write grants and
    /// the server's own calls to the others (reloaded on SIGHUP and change).
    #[arg(long, env = "HAYLOFT_KEYRING")]
    keyring: Option<PathBuf>,
    /// Every gRPC call must carry a token signed by a key of the key ring
    /// (`hayloft token create`).
    #[arg(long)]
    require_tokens: bool,
    /// Serve gRPC on a non-loopback address without tokens (refused
    /// otherwise): only on a network you trust.
    #[arg(long)]
    insecure: bool,
    /// TLS: this server's certificate chain (PEM). With --tls-key and
    /// --tls-ca; overrides the config's [tls] (reloaded on SIGHUP and
    /// change).
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// TLS: the certificate's private key (PEM).
    #[arg(long, requires_all = ["tls_cert", "tls_ca"])]
    tls_key: Option<PathBuf>,
    /// TLS: the cluster's CA (PEM): trusted for the servers this one calls
    /// and for client certificates.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// gRPC callers must present a client certificate signed by the CA
    /// (mTLS).
    #[arg(long, requires = "tls_cert")]
    require_client_certs: bool,
}

impl AuthArgs {
    /// The `[tls]` these flags give, over the config's `file`.
    fn tls(
        &self,
        file: Option<hayloft_access::tls::TlsConfig>,
    ) -> Option<hayloft_access::tls::TlsConfig> {
        let mut tls = match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (Some(cert), Some(key), Some(ca)) => Some(hayloft_access::tls::TlsConfig {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
                require_client_certs: false,
                origin: file.as_ref().is_none_or(|f| f.origin),
            }),
            _ => file,
        };
        if let Some(tls) = &mut tls {
            tls.require_client_certs |= self.require_client_certs;
        }
        tls
    }
}

#[derive(Args)]
struct ServerArgs {
    /// One TOML file with every setting of the embedded server: its
    /// addresses, and `[directory]` and `[volume]` sections taking the keys
    /// of the directory's and the volume server's configs (see
    /// config/server.example.toml). Flags override it.
    #[arg(long, env = "HAYLOFT_CONFIG")]
    config: Option<PathBuf>,
    /// Where everything is stored (default "data").
    #[arg(long, env = "HAYLOFT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Directory gRPC address (default 127.0.0.1:9330).
    #[arg(long)]
    directory_listen: Option<SocketAddr>,
    /// Volume server gRPC address (default 127.0.0.1:9331).
    #[arg(long)]
    grpc_listen: Option<SocketAddr>,
    /// HTTP origin address (default 127.0.0.1:9380).
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Prometheus /metrics address (default 127.0.0.1:9390).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Lifecycle policy of the built-in tiering worker (default: the
    /// built-in policy; see `hayloft tier plan`).
    #[arg(long, env = "HAYLOFT_TIER_POLICY")]
    policy: Option<PathBuf>,
    /// Time between tiering rounds (default 10m).
    #[arg(long)]
    tier_interval: Option<humantime_serde::re::humantime::Duration>,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(flatten)]
    regions: hayloft::regions::RegionArgs,
    #[command(flatten)]
    replicate_to: hayloft::regions::ReplicateToArgs,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct DirectoryArgs {
    #[command(subcommand)]
    group: Option<group::GroupCommand>,
    /// TOML configuration file (see README); flags and environment override it.
    #[arg(long, env = "HAYLOFT_DIRECTORY_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC listen address.
    #[arg(long, env = "HAYLOFT_DIRECTORY_LISTEN")]
    listen: Option<SocketAddr>,
    /// Where the RocksDB database lives.
    #[arg(long, env = "HAYLOFT_DIRECTORY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Heartbeat interval asked of volume servers, e.g. "5s".
    #[arg(long)]
    pulse: Option<humantime_serde::re::humantime::Duration>,
    /// A volume server is dead after this long without heartbeats, e.g. "15s".
    #[arg(long)]
    dead_after: Option<humantime_serde::re::humantime::Duration>,
    /// Prometheus /metrics address.
    #[arg(long, env = "HAYLOFT_DIRECTORY_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// How often to record bytes per tier in the history, e.g. "10m".
    #[arg(long)]
    history_interval: Option<humantime_serde::re::humantime::Duration>,
    /// Copies of every volume, on distinct servers spread over zones and
    /// racks (per-collection overrides in the config file).
    #[arg(long, env = "HAYLOFT_REPLICATION")]
    replication: Option<usize>,
    /// The erasure code `hayloft tier ec` uses when it names none, `K+M`
    /// (K data shards, M parity shards; default 10+4; per-collection
    /// `ec_code` in the config file overrides it for their volumes).
    #[arg(long, env = "HAYLOFT_EC_CODE", value_name = "K+M")]
    ec_code: Option<hayloft_storage::erasure::Code>,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(flatten)]
    regions: hayloft::regions::RegionArgs,
    #[command(flatten)]
    replicate_to: hayloft::regions::ReplicateToArgs,
    /// A copy whose server is silent this long is made again elsewhere, e.g. "10m".
    #[arg(long)]
    repair_after: Option<humantime_serde::re::humantime::Duration>,
    /// Writable volumes kept per collection, created ahead of need.
    #[arg(long)]
    min_writable_volumes: Option<usize>,
    /// This node's id in the directory group (default 1).
    #[arg(long)]
    node_id: Option<u64>,
    /// Every node of the directory group, this one included, e.g.
    /// "1=10.0.0.1:9330,2=10.0.0.2:9330,3=10.0.0.3:9330". The lowest id
    /// initialises the group on its first start. Default: this node alone.
    #[arg(long)]
    peers: Option<String>,
    /// A node that hears from no leader this long starts an election, e.g. "1s".
    #[arg(long)]
    election_timeout: Option<humantime_serde::re::humantime::Duration>,
    /// Snapshot the map and purge the Raft log every this many entries.
    #[arg(long)]
    raft_snapshot_every: Option<u64>,
    /// Join an existing group: never initialise one; wait to be added
    /// (`hayloft directory add-node`). For new and replacement nodes.
    #[arg(long)]
    join: bool,
    /// Confirm leadership with a majority before each lookup (a read
    /// index): lookups never miss a newer leader's change, at a round trip
    /// each.
    #[arg(long)]
    linearizable_lookups: bool,
}

#[derive(Args)]
struct VolumeArgs {
    /// TOML configuration file (see README); flags and environment override it.
    #[arg(long, env = "HAYLOFT_VOLUME_CONFIG")]
    config: Option<PathBuf>,
    /// Stable id of this server.
    #[arg(long, env = "HAYLOFT_SERVER_ID")]
    server_id: Option<String>,
    /// Zone this server stands in (placement spreads copies over zones).
    #[arg(long, env = "HAYLOFT_ZONE")]
    zone: Option<String>,
    /// Rack within the zone (placement spreads copies over racks next).
    #[arg(long, env = "HAYLOFT_RACK")]
    rack: Option<String>,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(flatten)]
    regions: hayloft::regions::RegionArgs,
    /// A copy silent for this long fails a replicated write, e.g. "10s".
    #[arg(long)]
    replica_timeout: Option<humantime_serde::re::humantime::Duration>,
    /// How often copies compare and pull what they lack, e.g. "10m" (0 = never).
    #[arg(long)]
    anti_entropy_interval: Option<humantime_serde::re::humantime::Duration>,
    /// How often replicated volumes are scrubbed and healed, e.g. "1d".
    #[arg(long)]
    scrub_interval: Option<humantime_serde::re::humantime::Duration>,
    /// Anti-entropy and repair copy rate per second, e.g. "64MiB".
    #[arg(long)]
    repair_rate: Option<bytesize::ByteSize>,
    /// Reads from disk running at once (see `disk_reads_in_flight`).
    #[arg(long)]
    disk_reads_in_flight: Option<usize>,
    /// Reads from disk that may wait for a place before reads are refused
    /// (503 / RESOURCE_EXHAUSTED).
    #[arg(long)]
    disk_reads_queued: Option<usize>,
    /// gRPC listen address.
    #[arg(long, env = "HAYLOFT_GRPC_LISTEN")]
    grpc_listen: Option<SocketAddr>,
    /// HTTP origin listen address.
    #[arg(long, env = "HAYLOFT_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// The directory's gRPC address.
    #[arg(long, env = "HAYLOFT_DIRECTORY")]
    directory: Option<String>,
    /// Shorthand for hot_dirs = [DIR/hot], warm_dirs = [DIR/warm].
    #[arg(long, env = "HAYLOFT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Largest blob accepted, e.g. "1GiB".
    #[arg(long)]
    max_upload_size: Option<bytesize::ByteSize>,
    /// Largest volume, e.g. "30GiB".
    #[arg(long)]
    max_volume_size: Option<bytesize::ByteSize>,
    /// Free space each disk keeps, e.g. "1GiB" (the larger of this and
    /// --min-free-percent; never less than compacting its largest volume takes).
    #[arg(long)]
    min_free_space: Option<bytesize::ByteSize>,
    /// Free space each disk keeps, in percent of the disk.
    #[arg(long)]
    min_free_percent: Option<f64>,
    /// Heartbeat interval, e.g. "5s".
    #[arg(long)]
    pulse: Option<humantime_serde::re::humantime::Duration>,
    /// Compact automatically at this garbage ratio (0 = on demand only).
    #[arg(long)]
    compaction_threshold: Option<f64>,
    /// How often to look for volumes to compact, e.g. "1m".
    #[arg(long)]
    compaction_check_interval: Option<humantime_serde::re::humantime::Duration>,
    /// Skip volumes with less garbage than this, e.g. "1MiB".
    #[arg(long)]
    compaction_min_garbage: Option<bytesize::ByteSize>,
    /// Compaction copy rate per second, e.g. "64MiB" (0 = unlimited).
    #[arg(long)]
    compaction_rate: Option<bytesize::ByteSize>,
    /// Prometheus /metrics address.
    #[arg(long, env = "HAYLOFT_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let daemon = match &cli.command {
        Command::Server(_) | Command::Volume(_) => true,
        Command::Directory(args) => args.group.is_none(),
        Command::Tier(args) => args.is_daemon(),
        _ => false,
    };
    if !daemon {
        // A client command whose output is cut short (`hayloft status |
        // head`) ends quietly, like any Unix tool, instead of panicking on
        // the broken pipe. Daemons keep SIGPIPE ignored. Sockets are
        // unaffected: their writes never raise it (MSG_NOSIGNAL).
        // SAFETY: at start, before any thread exists; SIG_DFL is a valid
        // disposition for SIGPIPE.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let verbose = cli.verbose;
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            if verbose {
                eprintln!("error: {error:?}");
            } else {
                eprint!("{}", error_lines(&error));
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error as one readable line per cause, without a backtrace: "error:
/// what failed", then "  caused by: why" for each cause that says something
/// the line before did not.
fn error_lines(error: &anyhow::Error) -> String {
    let mut lines = String::new();
    let mut last = String::new();
    for (i, cause) in error.chain().enumerate() {
        // A status says its code and message; the line before said both.
        let text = match cause.downcast_ref::<tonic::Status>() {
            Some(status) => status.message().to_owned(),
            None => cause.to_string(),
        };
        if i > 0 && last.contains(&text) {
            continue;
        }
        lines.push_str(if i == 0 { "error: " } else { "  caused by: " });
        lines.push_str(&text);
        lines.push('\n');
        last = text;
    }
    lines
}

fn run(cli: Cli) -> anyhow::Result<()> {
    init_logging(cli.log_json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hayloft")
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Server(args) => {
                let mut file: daemons::ServerConfig = daemons::load_config(args.config.as_deref())?;
                // Flags over the file.
                file.data_dir = args.data_dir.or(file.data_dir);
                file.directory_listen = args.directory_listen.or(file.directory_listen);
                file.grpc_listen = args.grpc_listen.or(file.grpc_listen);
                file.http_listen = args.http_listen.or(file.http_listen);
                file.metrics_listen = args.metrics_listen.or(file.metrics_listen);
                let mut embedded = file.embedded()?;
                let (directory, volume) = (&mut embedded.directory, &mut embedded.volume);
                if let Some(keyring) = args.auth.keyring.clone() {
                    volume.keyring = Some(keyring);
                }
                // The directory signs grants and checks tokens with the
                // volume server's key ring.
                directory.keyring = directory.keyring.take().or_else(|| volume.keyring.clone());
                directory.require_tokens |= args.auth.require_tokens;
                volume.require_tokens |= args.auth.require_tokens;
                directory.insecure |= args.auth.insecure;
                volume.insecure |= args.auth.insecure;
                // One certificate for both, unless the file gives each its own.
                volume.tls = args.auth.tls(volume.tls.take());
                directory.tls = args
                    .auth
                    .tls(directory.tls.take().or_else(|| volume.tls.clone()));
                // One region for both roles.
                args.regions
                    .apply(&mut directory.region, &mut directory.regions);
                args.regions.apply(&mut volume.region, &mut volume.regions);
                args.replicate_to.apply(&mut directory.replicate_to);
                embedded.policy =
                    tier::load_policy(args.policy.as_deref().or(file.policy.as_deref()))?;
                embedded.tier_interval = args
                    .tier_interval
                    .map(Into::into)
                    .or(file.tier_interval)
                    .unwrap_or(std::time::Duration::from_secs(600));
                daemons::server(embedded).await
            }
            Command::Directory(DirectoryArgs {
                group: Some(command),
                ..
            }) => group::run(command).await,
            Command::Directory(args) => {
                let mut config: hayloft_directory::DirectoryConfig =
                    daemons::load_config(args.config.as_deref())?;
                if let Some(listen) = args.listen {
                    config.listen = listen;
                }
                if let Some(dir) = args.data_dir {
                    config.data_dir = dir;
                }
                if let Some(pulse) = args.pulse {
                    config.pulse = pulse.into();
                }
                if let Some(dead_after) = args.dead_after {
                    config.dead_after = dead_after.into();
                }
                if let Some(addr) = args.metrics_listen {
                    config.metrics_listen = Some(addr);
                }
                if let Some(interval) = args.history_interval {
                    config.history_interval = interval.into();
                }
                if let Some(copies) = args.replication {
                    anyhow::ensure!(copies >= 1, "--replication must be at least 1");
                    config.replication = copies;
                }
                if let Some(code) = args.ec_code {
                    config.ec_code = code.to_string();
                }
                if let Some(keyring) = args.auth.keyring.clone() {
                    config.keyring = Some(keyring);
                }
                config.require_tokens |= args.auth.require_tokens;
                config.insecure |= args.auth.insecure;
                config.tls = args.auth.tls(config.tls.take());
                if let Some(after) = args.repair_after {
                    config.repair_after = after.into();
                }
                if let Some(count) = args.min_writable_volumes {
                    config.min_writable_volumes = count;
                }
                if let Some(id) = args.node_id {
                    config.node_id = id;
                }
                if let Some(peers) = args.peers {
                    config.peers = vec![peers];
                }
                if let Some(timeout) = args.election_timeout {
                    config.election_timeout = timeout.into();
                }
                if let Some(every) = args.raft_snapshot_every {
                    config.raft_snapshot_every = every;
                }
                if args.join {
                    config.join = true;
                }
                if args.linearizable_lookups {
                    config.linearizable_lookups = true;
                }
                args.regions.apply(&mut config.region, &mut config.regions);
                args.replicate_to.apply(&mut config.replicate_to);
                daemons::directory(config).await
            }
            Command::Volume(args) => {
                let mut config: hayloft_volume::VolumeServerConfig =
                    daemons::load_config(args.config.as_deref())?;
                if let Some(id) = args.server_id {
                    config.server_id = id;
                }
                if let Some(zone) = args.zone {
                    config.zone = zone;
                }
                if let Some(rack) = args.rack {
                    config.rack = rack;
                }
                args.regions.apply(&mut config.region, &mut config.regions);
                if let Some(keyring) = args.auth.keyring.clone() {
                    config.keyring = Some(keyring);
                }
                config.require_tokens |= args.auth.require_tokens;
                config.insecure |= args.auth.insecure;
                config.tls = args.auth.tls(config.tls.take());
                if let Some(timeout) = args.replica_timeout {
                    config.replica_timeout = timeout.into();
                }
                if let Some(interval) = args.anti_entropy_interval {
                    config.anti_entropy_interval = interval.into();
                }
                if let Some(interval) = args.scrub_interval {
                    config.scrub_interval = interval.into();
                }
                if let Some(n) = args.disk_reads_in_flight {
                    config.disk_reads_in_flight = n;
                }
                if let Some(n) = args.disk_reads_queued {
                    config.disk_reads_queued = n;
                }
                if let Some(rate) = args.repair_rate {
                    config.repair_rate = rate;
                }
                if let Some(addr) = args.grpc_listen {
                    config.grpc_listen = addr;
                }
                if let Some(addr) = args.http_listen {
                    config.http_listen = addr;
                }
                if let Some(directory) = args.directory {
                    config.directory = directory;
                }
                if let Some(dir) = args.data_dir {
                    config.hot_dirs = vec![dir.join("hot")];
                    config.warm_dirs = vec![dir.join("warm")];
                }
                if let Some(size) = args.max_upload_size {
                    config.max_upload_size = size;
                }
                if let Some(size) = args.max_volume_size {
                    config.max_volume_size = size;
                }
                if let Some(size) = args.min_free_space {
                    config.min_free_space = size;
                }
                if let Some(percent) = args.min_free_percent {
                    config.min_free_percent = percent;
                }
                if let Some(pulse) = args.pulse {
                    config.pulse = pulse.into();
                }
                if let Some(threshold) = args.compaction_threshold {
                    config.compaction_threshold = threshold;
                }
                if let Some(interval) = args.compaction_check_interval {
                    config.compaction_check_interval = interval.into();
                }
                if let Some(rate) = args.compaction_rate {
                    config.compaction_rate = rate;
                }
                if let Some(bytes) = args.compaction_min_garbage {
                    config.compaction_min_garbage = bytes;
                }
                if let Some(addr) = args.metrics_listen {
                    config.metrics_listen = Some(addr);
                }
                daemons::volume(config).await
            }
            Command::Put(args) => commands::put(args).await,
            Command::Get(args) => commands::get(args).await,
            Command::Rm(args) => commands::rm(args).await,
            Command::Status(args) => commands::status(args).await,
            Command::Compact(args) => compact::compact(args).await,
            Command::Bench(args) => bench::bench(args).await,
            Command::Tier(args) => tier::tier(args).await,
            Command::Repair(args) => repair::repair(args).await,
            Command::Sign(args) => sign::sign(args).await,
            Command::Token(args) => token::token(args).await,
            Command::Keyring(args) => keyring::keyring(args),
        }
    })
}

fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    // Colours only for a person at a terminal: log files and the journal get
    // plain text (and no request pays for formatting escape codes).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[cfg(test)]
mod tests {
    use super::error_lines;

    #[test]
    fn errors_print_one_line_per_cause_without_repeats() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let error = anyhow::Error::new(io)
            .context("tcp connect error")
            .context("cannot connect to 127.0.0.1:9: tcp connect error")
            .context("connecting to the directory at 127.0.0.1:9");
        assert_eq!(
            error_lines(&error),
            "error: connecting to the directory at 127.0.0.1:9\n  \
             caused by: cannot connect to 127.0.0.1:9: tcp connect error\n  \
             caused by: connection refused\n"
        );
    }
}
