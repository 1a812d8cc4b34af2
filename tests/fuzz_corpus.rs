//! Every committed fuzz corpus input (`fuzz/corpus/<target>/`) replayed through its fuzz
//! target's check (`fuzz/checks/<target>.rs`), on stable Rust: what the fuzzers once found
//! and what they covered stays a regression test without a nightly toolchain. Live fuzzing
//! is `scripts/fuzz.sh`.

#[path = "../fuzz/checks/broker_event.rs"]
mod broker_event;
#[path = "../fuzz/checks/catalog.rs"]
mod catalog;
#[path = "../fuzz/checks/dapr_grpc.rs"]
mod dapr_grpc;
// Loaded inside dapr_grpc, which shares its harness.
use dapr_grpc::http_check as dapr_http;
#[path = "../fuzz/checks/http_head.rs"]
mod http_head;

use std::path::PathBuf;

/// Runs `check` on every input of `target`'s corpus; names the file that failed.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the {target} corpus {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    // A corpus is hundreds of inputs; a handful means it was lost or not checked out.
    assert!(
        files.len() >= 100,
        "{} holds only {} inputs",
        dir.display(),
        files.len()
    );
    for file in &files {
        let data = std::fs::read(file).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{target}: {} fails its check: {message}", file.display());
        }
    }
    eprintln!("{target}: {} corpus inputs replayed", files.len());
}

#[test]
fn catalog_corpus() {
    replay("catalog", catalog::check);
}

#[test]
fn broker_event_corpus() {
    replay("broker_event", broker_event::check);
}

#[test]
fn dapr_http_corpus() {
    replay("dapr_http", dapr_http::check);
}

#[test]
fn dapr_grpc_corpus() {
    replay("dapr_grpc", dapr_grpc::check);
}

#[test]
fn http_head_corpus() {
    replay("http_head", http_head::check);
}
