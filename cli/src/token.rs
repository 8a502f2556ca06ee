//! `hayloft token create`: a bearer token for clusters that require them.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::commands::Connection;

/// `hayloft token` arguments.
#[derive(Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint a token from the key ring's signing key; prints the token (and,
    /// on stderr, its id).
    Create {
        /// What it allows: write:<collection>, read:, delete:, sign:
        /// (`*` for every collection), admin, cluster. Repeat for several.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// How long it works, e.g. "30d".
        #[arg(long, default_value = "30d")]
        ttl: humantime_serde::re::humantime::Duration,
        /// Who holds it (shown in refusals and logs).
        #[arg(long, default_value = "hayloft-cli")]
        subject: String,
        /// The cluster's key ring.
        #[arg(long, env = "HAYLOFT_KEYRING")]
        keyring: PathBuf,
    },
    /// Revoke a token by id (what `create` printed): every server refuses
    /// it, directory nodes at once, volume servers from their next
    /// heartbeat. Needs an `admin` token in HAYLOFT_TOKEN.
    Revoke {
        /// The token's id.
        token_id: String,
        /// How long the cluster remembers the revocation: at least as long
        /// as the token had left to live.
        #[arg(long, default_value = "400d")]
        keep: humantime_serde::re::humantime::Duration,
        #[command(flatten)]
        connection: Connection,
    },
}

/// Runs a `hayloft token` command.
pub async fn token(args: TokenArgs) -> anyhow::Result<()> {
    match args.command {
        TokenCommand::Revoke {
            token_id,
            keep,
            connection,
        } => {
            let now = hayloft_storage::unix_now();
            let request = hayloft_proto::RevokeTokenRequest {
                token_id: token_id.clone(),
                expires_at: now.saturating_add(std::time::Duration::from(keep).as_secs()),
            };
            connection
                .directories()?
                .call(|mut directory| {
                    let request = request.clone();
                    async move { directory.revoke_token(request).await }
                })
                .await
                .with_context(|| format!("revoking token {token_id}"))?;
            println!("token {token_id} revoked");
            Ok(())
        }
        TokenCommand::Create {
            scopes,
            ttl,
            subject,
            keyring,
        } => {
            let scopes = scopes
                .iter()
                .map(|s| s.parse::<hayloft_access::token::Scope>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?;
            let ring = hayloft_access::Keyring::load(&keyring)
                .with_context(|| format!("loading the key ring {}", keyring.display()))?;
            let now = hayloft_storage::unix_now();
            let (token, id) =
                hayloft_access::token::mint(&ring, &subject, &scopes, ttl.into(), now)?;
            eprintln!("token id {id}");
            println!("{token}");
            Ok(())
        }
    }
}
