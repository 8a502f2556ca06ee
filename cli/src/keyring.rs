//! `hayloft keyring remove KEY_ID`: takes a key out of a key ring file in a
//! way a typo cannot turn into a key that stays valid.
//!
//! A server whose ring file does not load keeps its last good keys (it
//! must keep serving), so a hand edit with a typo leaves a revoked key
//! valid there. This command makes the edit itself: it checks the file
//! loads as it is, removes the `[[keys]]` entry (comments and the rest kept
//! as written), checks the result loads without the key, and only then
//! writes it: to a temp file, fsynced, renamed over the ring, the folder
//! fsynced. Servers pick the new ring up within 2 s (or on SIGHUP).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

/// `hayloft keyring` arguments.
#[derive(Args)]
pub struct KeyringArgs {
    #[command(subcommand)]
    command: KeyringCommand,
}

#[derive(Subcommand)]
enum KeyringCommand {
    /// Remove a key from the ring file (checked before it is written, then
    /// replaced atomically): every URL, token and grant it signed is
    /// refused once the servers reload it.
    Remove {
        /// The key's id.
        key_id: String,
        /// The key ring file.
        #[arg(long, env = "HAYLOFT_KEYRING")]
        keyring: PathBuf,
    },
}

/// Runs `hayloft keyring ...`.
pub fn keyring(args: KeyringArgs) -> anyhow::Result<()> {
    match args.command {
        KeyringCommand::Remove { key_id, keyring } => {
            let text = std::fs::read_to_string(&keyring)
                .with_context(|| format!("reading {}", keyring.display()))?;
            let edited = hayloft_access::without_key(&keyring, &text, &key_id)?;
            hayloft_storage::write_atomically(&keyring, edited.as_bytes())
                .with_context(|| format!("writing {}", keyring.display()))?;
            eprintln!(
                "removed key {key_id:?} from {}; servers reload it within 2 s \
                 (`hayloft status` lists any that did not)",
                keyring.display()
            );
            Ok(())
        }
    }
}
