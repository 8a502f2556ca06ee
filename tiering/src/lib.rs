//! The tiering worker: moves volumes hot -> warm -> cold by a lifecycle
//! policy. Not built yet (issue "Tiering").
