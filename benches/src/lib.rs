//! hayloft's benchmarks. `cargo bench -p hayloft-benches` runs the criterion
//! suites in `benches/`; `src/bin` holds measurement tools that report a
//! number rather than a time (index memory per needle, load time).
