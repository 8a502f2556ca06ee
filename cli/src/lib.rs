//! The `hayloft` command as a library: everything the binary runs, callable
//! in process (the binary only parses arguments and configuration).
//!
//! # Layout
//!
//! - [`server`]: `hayloft server` — a directory, a volume server and the
//!   tiering worker in this process, started with [`server::start`] /
//!   [`server::run`] on any addresses (port 0 included: it reports the ports
//!   it got), stopped in order. Tests start a whole single-node hayloft
//!   with it.
//! - [`cluster`]: a directory and N volume servers in this process, each on
//!   port 0 (a builder, and verbs to stop, crash and restart a server):
//!   what the in-process tests of `hayloft-volume` and `hayloft-client` run.
//! - [`metrics`]: the process's Prometheus `/metrics` endpoint, which also
//!   serves the operator page ([`page`], [`page_access`]: who may see it;
//!   [`capacity`]: the capacity report it shows).
//! - [`daemons`]: the servers' configuration files, signals, and the roles
//!   `hayloft directory` and `hayloft volume`; [`regions`]: their region
//!   flags.
//! - The client and operator commands: [`commands`] (`put`, `get`, `rm`,
//!   `status`), [`compact`], [`tier`] ([`erasure`]: `tier ec`, and the
//!   layouts `status` shows; [`decode`]: `tier decode`), [`repair`], [`group`] (`directory
//!   add-node` and friends), [`sign`], [`token`], [`keyring`], [`bench`].

pub mod bench;
pub mod capacity;
pub mod cluster;
pub mod commands;
pub mod compact;
pub mod daemons;
pub mod decode;
pub mod erasure;
pub mod group;
pub mod keyring;
pub mod metrics;
pub mod page;
pub use page::access as page_access;
pub mod reencode;
pub mod regions;
pub mod repair;
pub mod server;
pub mod sign;
pub mod tier;
pub mod token;
