// Generates the KEDA external scaler service (server for fngate, client for its tests)
// from the project's own proto. Needs `protoc` (Debian: protobuf-compiler).
fn main() {
    println!("cargo:rerun-if-changed=proto/externalscaler.proto");
    tonic_prost_build::configure()
        .compile_protos(&["proto/externalscaler.proto"], &["proto"])
        .expect("compiling proto/externalscaler.proto (is protoc installed? scripts/setup.sh installs it)");
}
