//! Where objects come from. A catalog only produces `Snapshot`s and signals changes; the
//! compile loop (`plan_swap`) decides when to compile.

mod dir;
mod kube;

pub use dir::{snapshot_from_texts, DirCatalog, DirWatch};
pub use kube::{
    resource_version, watch_scope, EventCounter, EventOutcome, FunctionStatusView, KubeCatalog,
    KubeSource, ObservedStatus, Scope, WatchedKind, WATCHED_KINDS,
};
