//! hayloft's tiering: the cold tier's object stores ([`object`]), the
//! lifecycle policy and its planner ([`policy`]), what a plan is made of
//! ([`plan`]), the moves of replicated volumes ([`replicas`]), the encode
//! rules that erasure-code warm volumes ([`encode`]), and the
//! worker that carries plans out ([`worker`], a `hayloft_proto::background`
//! worker).
//!
//! Dependencies go one way: `plan` <- `replicas` <- `encode` <- `policy` <-
//! `worker`.

pub mod encode;
pub mod object;
pub mod plan;
pub mod policy;
pub mod replicas;
pub mod worker;

pub use object::{ObjectError, ObjectStore, ObjectStoreConfig};
pub use plan::{Action, Plan};
pub use policy::Policy;
