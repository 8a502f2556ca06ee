//! hayloft's end-to-end tests, which start the real binaries and drive them
//! with real gRPC and HTTP clients. They arrive with the servers; the storage
//! engine's own tests live in `storage/tests`.
