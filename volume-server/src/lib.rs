//! The volume server: serves the storage engine over gRPC and HTTP. Not built
//! yet (issue "Directory and volume servers over gRPC").
