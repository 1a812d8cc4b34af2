//! Where objects come from. A catalog only produces `Snapshot`s and signals changes; the
//! compile loop (`publish`) decides when to compile.

mod dir;

pub use dir::{snapshot_from_texts, DirCatalog, DirWatch};
