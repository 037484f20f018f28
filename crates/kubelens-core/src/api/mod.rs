//! The types the v1 API speaks: ours, camelCase, never raw Kubernetes objects.
//!
//! They carry what a log viewer's UI needs (phase, readiness, containers and their states,
//! restarts, node, age, owning app) and nothing that could hold secret material (no env, no
//! volumes, no annotations). Later features add their own types here (pod details, metrics,
//! log lines).

mod discovery;

pub use discovery::{
    AppDetail, AppKind, AppSummary, ContainerState, ContainerSummary, NamespaceSummary, OwnerApp,
    PodEvent, PodSummary, UnknownAppKind,
};
