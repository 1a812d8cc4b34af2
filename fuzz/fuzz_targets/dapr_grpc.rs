//! libFuzzer target for the check in `fuzz/checks/dapr_grpc.rs` (what it feeds and asserts is
//! documented there); `tests/fuzz_corpus.rs` replays the committed corpus through the same
//! check on stable Rust.
#![no_main]

#[path = "../checks/dapr_grpc.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
