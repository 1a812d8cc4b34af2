//! Every manifest in ../shared/samples/openfunction: the well-formed ones load and compile,
//! the five broken upstream ones are reported naming file, object and field.

use fngate::catalog::snapshot_from_texts;
use fngate::compile::{compile, CompileSettings};
use std::path::Path;

const BROKEN: [(&str, &str); 5] = [
    ("networking__route.md__block4.yaml", "invalid YAML"),
    ("function_output.md__block1.yaml", "invalid YAML"),
    ("function_output.md__block2.yaml", "invalid YAML"),
    (
        "baas_integration.md__block1.yaml",
        "field spec.serving.outputs[0].dapr: missing field `name`",
    ),
    (
        "20230330-support-dapr-state-management.md__block2.yaml",
        "field spec.serving.states: invalid type: sequence",
    ),
];

#[test]
fn openfunction_samples_load_and_the_broken_ones_are_reported() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/samples/openfunction");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "the samples {} (shared/ beside the repository): {e}",
                dir.display()
            )
        })
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 40,
        "expected the sample set, found {} files",
        files.len()
    );
    let mut good_functions = 0;
    let mut triggers = Vec::new();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        // Samples reuse names, so each file is its own catalog.
        let snapshot = snapshot_from_texts([(name.as_str(), text.as_str())]);
        let plan = compile(&snapshot, &CompileSettings::default(), None);
        let errors: Vec<String> = plan
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(|d| d.to_string())
            .collect();
        match BROKEN.iter().find(|(suffix, _)| name.ends_with(suffix)) {
            Some((_, expected)) => {
                assert!(
                    errors
                        .iter()
                        .any(|e| e.contains(&name) && e.contains(expected)),
                    "{name}: expected an error containing {expected:?}, got {errors:#?}"
                );
                if !expected.contains("YAML") {
                    assert!(
                        errors.iter().any(|e| e.contains("Function default/")),
                        "{name}: error must name the object: {errors:#?}"
                    );
                }
            }
            None => {
                assert!(
                    errors.is_empty(),
                    "{name}: well-formed sample rejected: {errors:#?}"
                );
                assert!(
                    !snapshot.objects.is_empty() || text.contains("kind: Component"),
                    "{name}: nothing loaded"
                );
                good_functions += plan.functions.len();
                triggers.extend(
                    plan.triggers
                        .triggers
                        .keys()
                        .map(|k| format!("{name}: {k}")),
                );
            }
        }
    }
    eprintln!("event triggers compiled from samples: {triggers:#?}");
    // The Kafka input samples (v1beta2 and v1beta1) and the Kafka pub/sub subscribers.
    assert!(
        triggers.iter().filter(|t| t.contains("kafka")).count() >= 2,
        "Kafka triggers from samples: {triggers:#?}"
    );
    assert!(
        good_functions >= 10,
        "HTTP functions compiled from samples: {good_functions}"
    );
}
