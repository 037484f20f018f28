//! KubeLens core: the runtime-agnostic, stream-based library behind the KubeLens backend.
//!
//! It owns the domain types, configuration, authentication and access policy, Kubernetes
//! discovery, the log pipeline and the storage traits. It knows no HTTP framework and no
//! database driver: `kubelens-salvo` adapts it to HTTP/SSE and `kubelens-storage` implements
//! its storage traits. The `examples/` crate embeds it directly.
#![deny(missing_docs)]

pub mod api;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod cluster;
pub mod config;
pub mod inspect;
pub mod kubeclient;
pub mod logs;
pub mod metrics;
pub mod names;
pub mod policy;
pub mod readiness;
pub mod retention;
pub mod storage;

pub use config::Config;
pub use metrics::Metrics;
pub use readiness::{Readiness, ReadinessCheck};
