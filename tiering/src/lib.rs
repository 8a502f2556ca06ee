//! hayloft's tiering: the cold tier's object stores ([`object`]), the
//! lifecycle policy ([`policy`]), and the worker that applies it
//! ([`worker`]).

pub mod object;
pub mod policy;
pub mod replicas;
pub mod worker;

pub use object::{ObjectError, ObjectStore, ObjectStoreConfig};
pub use policy::{Action, Plan, Policy};
