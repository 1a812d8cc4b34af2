//! Arbitrary bytes as one catalog file beside a valid one, then a compile: never a panic,
//! every problem reported against the file (and, once an object is known, the object),
//! and the valid file's Function still serves.
use fngate::api::{ObjectKey, ObjectKind};
use fngate::catalog::snapshot_from_texts;
use fngate::compile::{compile, CompileSettings};

const KEEPER: &str = "apiVersion: core.openfunction.io/v1beta2
kind: Function
metadata:
  name: keeper
  namespace: fuzz-keeper
spec:
  serving:
    triggers:
      http:
        port: 8080
";

pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let snapshot = snapshot_from_texts([("fuzz.yaml", &*text), ("keeper.yaml", KEEPER)]);
    for d in &snapshot.diagnostics {
        assert!(d.file.is_some(), "a read problem names its file: {d:?}");
    }
    let plan = compile(&snapshot, &CompileSettings::default(), None);
    for d in &plan.diagnostics {
        assert!(
            d.file.is_some() || d.object.is_some(),
            "a compile problem names its file or object: {d:?}"
        );
    }
    // Unless the fuzzed file redefines it, the valid Function compiles whatever else is
    // in the catalog.
    if !text.contains("fuzz-keeper") {
        let key = ObjectKey::new(ObjectKind::Function, "fuzz-keeper", "keeper");
        assert!(
            plan.functions.contains_key(&key),
            "the valid Function is compiled beside the fuzzed file: {:?}",
            plan.diagnostics
        );
    }
}
