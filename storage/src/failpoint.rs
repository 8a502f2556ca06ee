//! Failures injected by name, for the crash and fault tests:
//! `HAYLOFT_FAILPOINT=<name>` (always) or `<name>@<path>` (while the file
//! `path` exists). Read once; costs a comparison where it is checked.

use std::path::PathBuf;
use std::sync::OnceLock;

fn named(name: &str) -> Option<&'static Option<PathBuf>> {
    static FAILPOINT: OnceLock<Option<(String, Option<PathBuf>)>> = OnceLock::new();
    let (armed, trigger) = FAILPOINT
        .get_or_init(|| {
            let text = std::env::var("HAYLOFT_FAILPOINT").ok()?;
            Some(match text.split_once('@') {
                Some((name, path)) => (name.to_owned(), Some(PathBuf::from(path))),
                None => (text, None),
            })
        })
        .as_ref()?;
    (armed == name).then_some(trigger)
}

/// True while the failpoint `name` is armed (for a caller that fails in
/// its own way).
pub fn active(name: &str) -> bool {
    match named(name) {
        Some(Some(trigger)) => trigger.exists(),
        Some(None) => true,
        None => false,
    }
}

/// Aborts the process at the step `name` (a crash at that point).
pub fn abort_at(name: &str) {
    if active(name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

/// An I/O error at the step `name` (a disk that fails it).
pub(crate) fn fail_at(name: &str) -> std::io::Result<()> {
    if active(name) {
        return Err(std::io::Error::other(format!(
            "failpoint {name}: injected failure"
        )));
    }
    Ok(())
}
