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
    /// The key ring (its signing key signs). Without one, the directory
    /// signs (`SignUrl`), for a token with the `sign:<collection>` scope
    /// (HAYLOFT_TOKEN).
    #[arg(long, env = "HAYLOFT_KEYRING")]
    keyring: Option<PathBuf>,
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

/// `hayloft sign`: prints a signed URL.
pub async fn sign(args: SignArgs) -> anyhow::Result<()> {
    let bind = match &args.ip {
        Some(ip) => Some(
            hayloft_access::signed_url::parse_bind(ip)
                .with_context(|| format!("--ip {ip:?} is not an address or network"))?,
        ),
        None => None,
    };
    let Some(keyring) = &args.keyring else {
        let client = args.connection.client().await?;
        let signed = client
            .request_signed_url(&args.blob_id, args.ttl.into(), args.name.as_deref(), bind)
            .await
            .with_context(|| format!("asking the directory to sign {}", args.blob_id))?;
        let url = match (&args.base, signed.urls.first()) {
            (Some(base), _) => format!("{}{}", base.trim_end_matches('/'), signed.path),
            (None, Some(url)) => url.clone(),
            (None, None) => anyhow::bail!(
                "no live server holds {}; signed path: {}",
                args.blob_id,
                signed.path
            ),
        };
        println!("{url}");
        return Ok(());
    };
    let ring = hayloft_access::Keyring::load(keyring)?;
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
