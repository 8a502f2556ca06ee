//! The directory server: the map from needle ids to volumes and volume
//! servers. Not built yet (issue "Directory and volume servers over gRPC").
