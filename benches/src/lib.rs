//! hayloft's benchmarks. `cargo bench -p hayloft-benches` runs the criterion
//! suites in `benches/`; `src/bin` holds measurement tools that report a
//! number rather than a time (index memory per needle, load time).
//!
//! Everything here writes under `HAYLOFT_BENCH_DIR` (default: the system
//! temp directory), so point it at the disk you want measured.

use std::path::PathBuf;

/// A fresh temporary directory on the disk under test.
pub fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("HAYLOFT_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).expect("create HAYLOFT_BENCH_DIR");
    tempfile::tempdir_in(base).expect("create a temp dir for the benchmark")
}

/// The best (shortest) time of `rounds` runs of `f` (at least one run).
pub fn best_of(rounds: usize, mut f: impl FnMut()) -> std::time::Duration {
    (0..rounds.max(1))
        .map(|_| {
            let started = std::time::Instant::now();
            f();
            started.elapsed()
        })
        .min()
        .unwrap_or_default()
}
