//! The key ring: key ids with their secrets, one of them for signing.
//!
//! ```toml
//! signing = "2026-11"             # signs new URLs; every key listed verifies
//!
//! [[keys]]
//! id = "2026-11"
//! secret_file = "keys/2026-11"    # relative to this file; the whole file is the secret
//!
//! [[keys]]
//! id = "2026-10"
//! secret_env = "HAYLOFT_KEY_2026_10"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::Deserialize;

use crate::reload::{FileStamps, Reload};

/// Shortest secret accepted, in bytes (HMAC-SHA256's block of entropy).
pub const MIN_SECRET_BYTES: usize = 32;

/// Longest key id.
pub const MAX_KEY_ID: usize = 64;

/// Why a key ring could not be loaded. Never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// A file could not be read.
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    /// The key ring file is not valid TOML of the expected shape.
    #[error("{0}: {1}")]
    Parse(PathBuf, String),
    /// A key is misdeclared (bad id, no secret, a short one...).
    #[error("key {id:?}: {why}")]
    Key {
        /// The key id.
        id: String,
        /// What is wrong with it.
        why: String,
    },
    /// `signing` names no key of the ring.
    #[error("the signing key {0:?} is not among the keys")]
    UnknownSigningKey(String),
}

/// A secret: its bytes never leave through `Debug`.
#[derive(Clone)]
struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// The keys that sign and verify URLs.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    keys: BTreeMap<String, Secret>,
    signing: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    signing: Option<String>,
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: String,
    secret_file: Option<PathBuf>,
    secret_env: Option<String>,
}

/// Whether `id` may name a key: 1-64 of `[A-Za-z0-9._-]` (it travels in
/// URLs unescaped).
pub fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_KEY_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Keyring {
    /// Reads the key ring at `path` and every secret it names. Answers the
    /// ring and the files it read (to notice changes).
    fn read(path: &Path) -> Result<(Keyring, Vec<PathBuf>), KeyringError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| KeyringError::Io(path.to_owned(), e))?;
        Keyring::parse(path, &text)
    }

    /// The key ring `text` would be if it were the file at `path` (secret
    /// files relative to its folder), and the files it names: to validate
    /// an edit before it is written.
    ///
    /// # Errors
    /// What [`Keyring::load`] would answer for that file.
    pub fn parse(path: &Path, text: &str) -> Result<(Keyring, Vec<PathBuf>), KeyringError> {
        let file: KeyringFile = toml::from_str(text)
            .map_err(|e| KeyringError::Parse(path.to_owned(), e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut files = vec![path.to_owned()];
        let mut secrets = Vec::new();
        for key in file.keys {
            let bad = |why: String| KeyringError::Key {
                id: key.id.clone(),
                why,
            };
            let secret = match (&key.secret_file, &key.secret_env) {
                (Some(file), None) => {
                    let file = base.join(file);
                    let bytes =
                        std::fs::read(&file).map_err(|e| KeyringError::Io(file.clone(), e))?;
                    files.push(file);
                    // A trailing newline from `echo` or an editor is not part of it.
                    let end = bytes
                        .iter()
                        .rposition(|b| !b.is_ascii_whitespace())
                        .map_or(0, |i| i + 1);
                    bytes[..end].to_vec()
                }
                (None, Some(var)) => std::env::var(var)
                    .map_err(|_| bad(format!("the environment variable {var} is not set")))?
                    .trim()
                    .as_bytes()
                    .to_vec(),
                _ => return Err(bad("give exactly one of secret_file and secret_env".into())),
            };
            secrets.push((key.id, secret));
        }
        let ring = Keyring::from_secrets(file.signing.as_deref(), secrets)?;
        Ok((ring, files))
    }

    /// Reads the key ring file at `path` (see the module docs).
    pub fn load(path: &Path) -> Result<Keyring, KeyringError> {
        Keyring::read(path).map(|(ring, _)| ring)
    }

    /// A ring of `keys` (id, secret), `signing` naming the one that signs.
    pub fn from_secrets(
        signing: Option<&str>,
        keys: impl IntoIterator<Item = (String, Vec<u8>)>,
    ) -> Result<Keyring, KeyringError> {
        let mut ring = Keyring::default();
        for (id, secret) in keys {
            let bad = |why: String| KeyringError::Key {
                id: id.clone(),
                why,
            };
            if !valid_key_id(&id) {
                return Err(bad(format!(
                    "a key id is 1-{MAX_KEY_ID} letters, digits, '.', '_' or '-'"
                )));
            }
            if secret.len() < MIN_SECRET_BYTES {
                return Err(bad(format!(
                    "the secret has {} bytes; at least {MIN_SECRET_BYTES} are needed \
                     (e.g. `head -c 32 /dev/urandom | base64`)",
                    secret.len()
                )));
            }
            if ring.keys.insert(id.clone(), Secret(secret)).is_some() {
                return Err(bad("listed twice".into()));
            }
        }
        if let Some(signing) = signing {
            if !ring.keys.contains_key(signing) {
                return Err(KeyringError::UnknownSigningKey(signing.to_owned()));
            }
            ring.signing = Some(signing.to_owned());
        }
        Ok(ring)
    }

    /// The key that signs new URLs: its id and secret.
    pub fn signing_key(&self) -> Option<(&str, &[u8])> {
        let id = self.signing.as_deref()?;
        Some((id, &self.keys.get(id)?.0))
    }

    /// The secret of key `id`, if the ring holds it.
    pub fn secret(&self, id: &str) -> Option<&[u8]> {
        self.keys.get(id).map(|s| s.0.as_slice())
    }

    /// The key ids, in order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// True if the ring holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A key ring a server keeps, reloaded from its file without a restart
/// ([`SharedKeyring::reload`] on SIGHUP, or when [`SharedKeyring::changed`]).
/// A reload that fails keeps the keys in use and says why: the ring is then
/// stale ([`SharedKeyring::stale`], the gauge [`STALE_METRIC`] at 1) until
/// a reload succeeds, and a key removed from the file still verifies here.
#[derive(Debug)]
pub struct SharedKeyring {
    path: PathBuf,
    current: RwLock<Arc<Keyring>>,
    stamps: Mutex<FileStamps>,
    /// Why the last reload failed, while the file and the keys in use
    /// disagree.
    stale: Mutex<Option<String>>,
}

/// The gauge that is 1 while the key ring in use is not what its file says
/// (the last reload failed), 0 otherwise (`deploy/prometheus/alerts.yml`,
/// `HayloftKeyringStale`).
pub const STALE_METRIC: &str = "hayloft_keyring_stale";

impl SharedKeyring {
    /// Loads the key ring at `path`.
    pub fn load(path: &Path) -> Result<Arc<SharedKeyring>, KeyringError> {
        let (ring, files) = Keyring::read(path)?;
        metrics::gauge!(STALE_METRIC).set(0.0);
        Ok(Arc::new(SharedKeyring {
            path: path.to_owned(),
            current: RwLock::new(Arc::new(ring)),
            stamps: Mutex::new(FileStamps::of(files)),
            stale: Mutex::new(None),
        }))
    }

    /// Why the keys in use are not what the file says (its last reload
    /// failed), if they are not: a key removed from the file since still
    /// verifies here.
    pub fn stale(&self) -> Option<String> {
        self.stale.lock().clone()
    }

    /// The keys in use.
    pub fn get(&self) -> Arc<Keyring> {
        Arc::clone(&self.current.read())
    }

    /// The key ring file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the key ring file, or a secret file it names, changed since
    /// it was last read.
    pub fn changed(&self) -> bool {
        self.stamps.lock().changed()
    }

    /// Reads the file again and puts its keys in use. On error the keys in
    /// use stay (and the error says why); the change is noticed again only
    /// when the files change again.
    pub fn reload(&self) -> Result<Arc<Keyring>, KeyringError> {
        match Keyring::read(&self.path) {
            Ok((ring, files)) => {
                let ring = Arc::new(ring);
                *self.current.write() = Arc::clone(&ring);
                *self.stamps.lock() = FileStamps::of(files);
                *self.stale.lock() = None;
                metrics::gauge!(STALE_METRIC).set(0.0);
                Ok(ring)
            }
            Err(e) => {
                let mut stamps = self.stamps.lock();
                *stamps = stamps.restamp();
                *self.stale.lock() = Some(format!("{}: {e}", self.path.display()));
                metrics::gauge!(STALE_METRIC).set(1.0);
                Err(e)
            }
        }
    }
}

impl Reload for SharedKeyring {
    const WHAT: &'static str = "key ring";
    const METRIC: &'static str = "hayloft_keyring_reloads_total";

    fn changed(&self) -> bool {
        SharedKeyring::changed(self)
    }

    fn reload(&self) -> Result<String, String> {
        SharedKeyring::reload(self)
            .map(|ring| {
                format!(
                    "{}: keys {:?}",
                    self.path.display(),
                    ring.ids().collect::<Vec<_>>()
                )
            })
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

/// Why a key cannot be removed from a key ring file.
#[derive(Debug, thiserror::Error)]
pub enum RemoveKeyError {
    /// The file cannot be read or written.
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    /// The file is not a key ring now: fix it first.
    #[error("the key ring as it is does not load (fix it first): {0}")]
    Invalid(KeyringError),
    /// No `[[keys]]` entry has that id.
    #[error("no key {0:?} in {1}")]
    NoSuchKey(String, PathBuf),
    /// The key signs: another must sign first.
    #[error("key {0:?} is the signing key: make another key `signing` first")]
    Signing(String),
    /// The ring without the key would not load (it cannot happen for a
    /// ring that loads, but the edit is checked before it is written).
    #[error("the key ring without the key would not load: {0}")]
    Result(KeyringError),
}

/// The text of the key ring file `text` (at `path`) without the key `id`,
/// keeping everything else as written (comments included), checked to load
/// before it is answered. The removal cannot fail halfway on a typo: the
/// edit is made by the program, and refused whole if anything is wrong.
///
/// # Errors
/// See [`RemoveKeyError`].
pub fn without_key(path: &Path, text: &str, id: &str) -> Result<String, RemoveKeyError> {
    let (ring, _) = Keyring::parse(path, text).map_err(RemoveKeyError::Invalid)?;
    if ring.secret(id).is_none() {
        return Err(RemoveKeyError::NoSuchKey(id.to_owned(), path.to_owned()));
    }
    if ring.signing_key().is_some_and(|(signing, _)| signing == id) {
        return Err(RemoveKeyError::Signing(id.to_owned()));
    }
    let mut document: toml_edit::DocumentMut =
        text.parse().map_err(|e: toml_edit::TomlError| {
            RemoveKeyError::Invalid(KeyringError::Parse(path.to_owned(), e.to_string()))
        })?;
    let keys = document
        .get_mut("keys")
        .and_then(toml_edit::Item::as_array_of_tables_mut)
        .ok_or_else(|| RemoveKeyError::NoSuchKey(id.to_owned(), path.to_owned()))?;
    keys.retain(|key| key.get("id").and_then(toml_edit::Item::as_str) != Some(id));
    let edited = document.to_string();
    let (after, _) = Keyring::parse(path, &edited).map_err(RemoveKeyError::Result)?;
    if after.secret(id).is_some() || after.ids().count() + 1 != ring.ids().count() {
        return Err(RemoveKeyError::NoSuchKey(id.to_owned(), path.to_owned()));
    }
    Ok(edited)
}

/// Reloads `keyring` on SIGHUP and when its files change, until `stop`.
/// A reload that fails keeps the keys in use, and says why.
pub async fn watch_keyring(
    keyring: std::sync::Arc<SharedKeyring>,
    stop: impl std::future::Future<Output = ()>,
) {
    crate::reload::watch(keyring, stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_ring_loads_from_files_and_the_environment_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k1"), format!("{SECRET}\n")).unwrap();
        // SAFETY: no other test reads or writes this variable.
        unsafe { std::env::set_var("HAYLOFT_TEST_KEY_K2", "x".repeat(40)) };
        let path = dir.path().join("keys.toml");
        std::fs::write(
            &path,
            "signing = \"k1\"\n[[keys]]\nid = \"k1\"\nsecret_file = \"k1\"\n\
             [[keys]]\nid = \"k2\"\nsecret_env = \"HAYLOFT_TEST_KEY_K2\"\n",
        )
        .unwrap();
        let shared = SharedKeyring::load(&path).unwrap();
        let ring = shared.get();
        assert_eq!(ring.signing_key(), Some(("k1", SECRET.as_bytes())));
        assert_eq!(ring.secret("k2").map(<[u8]>::len), Some(40));
        assert_eq!(ring.ids().collect::<Vec<_>>(), ["k1", "k2"]);
        assert!(!format!("{ring:?}").contains(SECRET), "{ring:?}");
        assert!(!shared.changed());

        // k2 removed: after the reload it verifies nothing.
        std::fs::write(
            &path,
            "signing = \"k1\"\n[[keys]]\nid = \"k1\"\nsecret_file = \"k1\"\n",
        )
        .unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(shared.changed());
        shared.reload().unwrap();
        assert!(shared.get().secret("k2").is_none());

        // A broken file keeps the keys in use.
        std::fs::write(&path, "signing = \"nope\"\n").unwrap();
        let error = shared.reload().unwrap_err().to_string();
        assert!(error.contains("nope"), "{error}");
        assert!(shared.get().secret("k1").is_some());
    }

    #[test]
    fn a_failed_reload_leaves_the_ring_stale_until_one_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k1"), SECRET).unwrap();
        let path = dir.path().join("keys.toml");
        let good = "signing = \"k1\"\n[[keys]]\nid = \"k1\"\nsecret_file = \"k1\"\n";
        std::fs::write(&path, good).unwrap();
        let shared = SharedKeyring::load(&path).unwrap();
        assert_eq!(shared.stale(), None);
        std::fs::write(&path, "signing = \"k1\"\n[[keys]\n").unwrap();
        assert!(shared.reload().is_err());
        let why = shared.stale().unwrap();
        assert!(why.contains("keys.toml"), "{why}");
        std::fs::write(&path, good).unwrap();
        shared.reload().unwrap();
        assert_eq!(shared.stale(), None);
    }

    #[test]
    fn a_key_is_removed_by_an_edit_checked_before_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        for key in ["k1", "k2"] {
            std::fs::write(dir.path().join(key), SECRET).unwrap();
        }
        let path = dir.path().join("keys.toml");
        let text = "# the ring\nsigning = \"k1\"\n\n[[keys]]\nid = \"k1\"\nsecret_file = \"k1\"\n\n\
                    # leaked on 2026-11-30\n[[keys]]\nid = \"k2\"\nsecret_file = \"k2\"\n";
        let edited = without_key(&path, text, "k2").unwrap();
        assert!(edited.starts_with("# the ring\n"), "{edited}");
        let (ring, _) = Keyring::parse(&path, &edited).unwrap();
        assert_eq!(ring.ids().collect::<Vec<_>>(), ["k1"]);
        assert!(matches!(
            without_key(&path, text, "k1"),
            Err(RemoveKeyError::Signing(_))
        ));
        assert!(matches!(
            without_key(&path, text, "k3"),
            Err(RemoveKeyError::NoSuchKey(..))
        ));
        assert!(matches!(
            without_key(&path, "signing = [", "k2"),
            Err(RemoveKeyError::Invalid(_))
        ));
    }

    #[test]
    fn the_example_key_ring_loads() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/keyring.example.toml");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.toml");
        std::fs::copy(example, &path).unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        std::fs::write(dir.path().join("keys/2026-11"), SECRET).unwrap();
        // SAFETY: no other test reads or writes this variable.
        unsafe { std::env::set_var("HAYLOFT_KEY_2026_10", SECRET) };
        let ring = Keyring::load(&path).unwrap();
        assert_eq!(ring.signing_key().map(|(id, _)| id), Some("2026-11"));
        assert_eq!(ring.ids().collect::<Vec<_>>(), ["2026-10", "2026-11"]);
    }

    #[test]
    fn bad_rings_say_why_without_the_secret() {
        let key = |id: &str, secret: &str| (id.to_owned(), secret.as_bytes().to_vec());
        let short = Keyring::from_secrets(None, [key("a", "short-secret")]).unwrap_err();
        assert!(short.to_string().contains("12 bytes"), "{short}");
        assert!(!short.to_string().contains("short-secret"));
        let bad_id = Keyring::from_secrets(None, [key("a b", SECRET)]).unwrap_err();
        assert!(bad_id.to_string().contains("key id"), "{bad_id}");
        let twice = Keyring::from_secrets(None, [key("a", SECRET), key("a", SECRET)]).unwrap_err();
        assert!(twice.to_string().contains("twice"), "{twice}");
        let signing = Keyring::from_secrets(Some("b"), [key("a", SECRET)]).unwrap_err();
        assert!(signing.to_string().contains("\"b\""), "{signing}");
    }
}
