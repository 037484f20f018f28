//! The log pipeline: reading container logs from Kubernetes, bounding and parsing lines,
//! resuming exactly, fanning one upstream out to many viewers and merging app streams.

pub mod admission;
pub mod upstream;
