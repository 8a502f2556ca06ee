//! `hayloft sign`: a signed URL for a blob of a `signed` collection.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::commands::Connection;

/// `hayloft sign` arguments.
#[derive(Args)]
pub struct SignArgs {
    /// The blob id.
    blob_id: String,
    /// How long the URL works, e.g. "15m" (at most the servers'
    /// signed_url_max_lifetime, 24 h by default).
    #[arg(long, default_value = "15m")]
    ttl: humantime_serde::re::humantime::Duration,
    /// The key ring (its signing key signs).
    #[arg(long, env = "HAYLOFT_KEYRING")]
    keyring: PathBuf,
    /// Base of the URL, e.g. "https://cdn.example.com" (default: the HTTP
    /// origin of a server holding the blob, asked of the directory).
    #[arg(long)]
    base: Option<String>,
    /// A file name after the id (`/<id>/<name>`), for the browser.
    #[arg(long)]
    name: Option<String>,
    /// Only clients in this network may use it ("203.0.113.7", "2001:db8::/32").
    #[arg(long)]
    ip: Option<String>,
    #[command(flatten)]
    connection: Connection,
}

pub async fn sign(args: SignArgs) -> anyhow::Result<()> {
    let ring = hayloft_access::Keyring::load(&args.keyring)?;
    let bind = match &args.ip {
        Some(ip) => Some(
            ip.parse::<ipnet::IpNet>()
                .or_else(|_| ip.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .with_context(|| format!("--ip {ip:?} is not an address or network"))?,
        ),
        None => None,
    };
    let url = match &args.base {
        Some(base) => hayloft_client::sign_url(
            &ring,
            base,
            &args.blob_id,
            args.name.as_deref(),
            args.ttl.into(),
            bind,
        )?,
        None => {
            let client = args.connection.client().await?;
            let origin = client
                .signed_url(&ring, &args.blob_id, args.ttl.into(), bind)
                .await
                .with_context(|| format!("finding the origin of {}", args.blob_id))?;
            match &args.name {
                // Signed again with the name in the path.
                Some(name) => {
                    let base = origin.split('/').take(3).collect::<Vec<_>>().join("/");
                    hayloft_client::sign_url(
                        &ring,
                        &base,
                        &args.blob_id,
                        Some(name),
                        args.ttl.into(),
                        bind,
                    )?
                }
                None => origin,
            }
        }
    };
    println!("{url}");
    Ok(())
}
