//! The `fngate check` and `fngate routes` commands, run as a user would.

use std::process::Command;

fn fngate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fngate"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn check_exits_1_and_names_file_object_and_field_on_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata: {name: f}\nspec:\n  serving:\n    triggers:\n      http:\n        route:\n          rules:\n          - matches: [{path: {type: Exact, value: relative}}]\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("good.yaml"), "apiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata: {name: g}\nspec:\n  serving:\n    triggers:\n      http: {}\n").unwrap();
    let (code, stdout, stderr) = fngate(&["check", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("bad.yaml: Function default/f: field spec.serving.triggers.http.route.rules[0].matches[0].path.value"), "{stderr}");
    assert!(
        stdout.contains("2 files, 2 objects, 1 HTTP functions") && stdout.contains("1 errors"),
        "{stdout}"
    );

    let (code, stdout, _) = fngate(&["check", dir.path().join("good.yaml").to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}");
}

#[test]
fn routes_prints_the_compiled_table_of_the_configured_catalog() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("fns")).unwrap();
    std::fs::write(dir.path().join("fngate.yaml"), "catalog:\n  dir: fns\n").unwrap();
    std::fs::write(
        dir.path().join("fns/f.yaml"),
        "apiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata: {name: hello, namespace: demo}\nspec:\n  serving:\n    triggers:\n      http:\n        port: 8080\n        route:\n          rules:\n          - matches: [{path: {type: Exact, value: /hi}, method: GET}]\n",
    )
    .unwrap();
    let config = dir.path().join("fngate.yaml");
    let (code, stdout, stderr) = fngate(&["routes", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("demo/hello"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        line.contains("hello.demo.ofn.io")
            && line.contains("GET Exact /hi")
            && line.contains("demo/hello:8080"),
        "{line}"
    );
    let (code, json, _) = fngate(&["routes", "--config", config.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0);
    let routes: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(routes[0]["function"], "demo/hello");

    let (code, _, stderr) = fngate(&["routes", "--config", "/nonexistent/fngate.yaml"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("does not exist"), "{stderr}");
}
