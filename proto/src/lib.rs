//! hayloft's gRPC API. Not built yet: the `.proto` files and generated code
//! arrive with the servers (issue "Directory and volume servers over gRPC").
