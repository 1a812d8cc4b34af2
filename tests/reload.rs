//! Hot reload of the catalog directory under a running fngate: every kind of file change
//! is followed, bad edits keep the last good version serving, unchanged content does not
//! recompile, and requests on unchanged routes never fail while plans are swapped.

mod common;

use common::{
    admin_get, endpoint_slice, function_yaml, write_atomically, Echo, Fngate, KeepAliveClient,
};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

fn routed(gate: &Fngate, host: &str) -> bool {
    gate.get(host, "/").status == 200
}

#[test]
fn creates_modifies_renames_and_deletes_are_followed() {
    let echo = Echo::start("shared", "default");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("slice.yaml"),
        endpoint_slice("default", "shared", &[echo.addr], true),
    )
    .unwrap();
    let gate = Fngate::start(dir.path());
    let backend =
        "        route:\n          rules:\n          - backendRefs: [{name: shared, port: 8080}]\n";

    // Create.
    let r0 = gate.revision();
    std::fs::write(
        dir.path().join("a.yaml"),
        function_yaml("default", "a", backend),
    )
    .unwrap();
    gate.wait_for_revision_after(r0);
    assert!(routed(&gate, "a.default.ofn.io"));

    // Modify in place: the function now only answers on /v2.
    let r1 = gate.revision();
    let v2 = "        route:\n          rules:\n          - matches: [{path: {value: /v2}}]\n            backendRefs: [{name: shared, port: 8080}]\n";
    std::fs::write(dir.path().join("a.yaml"), function_yaml("default", "a", v2)).unwrap();
    gate.wait_for_revision_after(r1);
    assert_eq!(gate.get("a.default.ofn.io", "/").status, 404);
    assert_eq!(gate.get("a.default.ofn.io", "/v2").status, 200);

    // Editor-style atomic replace (write a temp file, rename over).
    let r2 = gate.revision();
    write_atomically(
        dir.path(),
        "a.yaml",
        &function_yaml("default", "a", backend),
    );
    gate.wait_for_revision_after(r2);
    assert!(routed(&gate, "a.default.ofn.io"));

    // Rename to another YAML name: same object, still served; to a non-YAML name: gone.
    std::fs::rename(dir.path().join("a.yaml"), dir.path().join("b.yml")).unwrap();
    let r3 = gate.revision();
    std::fs::write(
        dir.path().join("c.yaml"),
        function_yaml("default", "c", backend),
    )
    .unwrap();
    gate.wait_for_revision_after(r3);
    assert!(routed(&gate, "a.default.ofn.io") && routed(&gate, "c.default.ofn.io"));
    let r4 = gate.revision();
    std::fs::rename(dir.path().join("b.yml"), dir.path().join("b.yml.disabled")).unwrap();
    gate.wait_for_revision_after(r4);
    assert_eq!(gate.get("a.default.ofn.io", "/").status, 404);

    // Delete.
    let r5 = gate.revision();
    std::fs::remove_file(dir.path().join("c.yaml")).unwrap();
    gate.wait_for_revision_after(r5);
    assert_eq!(gate.get("c.default.ofn.io", "/").status, 404);
}

#[test]
fn a_broken_edit_is_reported_and_the_last_good_version_keeps_serving() {
    let echo = Echo::start("f", "default");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("slice.yaml"),
        endpoint_slice("default", "f", &[echo.addr], true),
    )
    .unwrap();
    std::fs::write(dir.path().join("f.yaml"), function_yaml("default", "f", "")).unwrap();
    let gate = Fngate::start(dir.path());
    assert!(routed(&gate, "f.default.ofn.io"));

    // Not YAML at all.
    let r = gate.revision();
    std::fs::write(
        dir.path().join("f.yaml"),
        "apiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata: [oops\n",
    )
    .unwrap();
    gate.wait_for_revision_after(r);
    assert!(
        routed(&gate, "f.default.ofn.io"),
        "last good version of the file still serves"
    );
    let diags = String::from_utf8(admin_get(gate.admin, "/diagnostics").unwrap().body).unwrap();
    assert!(
        diags.contains("f.yaml") && diags.contains("invalid YAML"),
        "{diags}"
    );

    // Valid YAML, invalid object: the diagnostic names the field.
    let r = gate.revision();
    std::fs::write(
        dir.path().join("f.yaml"),
        function_yaml(
            "default",
            "f",
            "        route:\n          rules:\n          - matches: [{method: FETCH}]\n",
        ),
    )
    .unwrap();
    gate.wait_for_revision_after(r);
    assert!(routed(&gate, "f.default.ofn.io"));
    let diags = String::from_utf8(admin_get(gate.admin, "/diagnostics").unwrap().body).unwrap();
    assert!(
        diags.contains("spec.serving.triggers.http.route.rules[0].matches[0].method"),
        "{diags}"
    );
    assert!(gate
        .metrics()
        .contains("fngate_diagnostics{severity=\"error\"} 1"));

    // Fixed: the new version serves and the diagnostics clear.
    let r = gate.revision();
    std::fs::write(
        dir.path().join("f.yaml"),
        function_yaml(
            "default",
            "f",
            "        route:\n          rules:\n          - matches: [{path: {value: /fixed}}]\n",
        ),
    )
    .unwrap();
    gate.wait_for_revision_after(r);
    assert_eq!(gate.get("f.default.ofn.io", "/fixed").status, 200);
    assert_eq!(gate.get("f.default.ofn.io", "/").status, 404);
    assert!(gate
        .metrics()
        .contains("fngate_diagnostics{severity=\"error\"} 0"));
}

#[test]
fn rewriting_a_file_with_the_same_content_does_not_recompile() {
    let echo = Echo::start("f", "default");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("slice.yaml"),
        endpoint_slice("default", "f", &[echo.addr], true),
    )
    .unwrap();
    let text = function_yaml("default", "f", "");
    std::fs::write(dir.path().join("f.yaml"), &text).unwrap();
    let gate = Fngate::start(dir.path());
    let before = gate.revision();
    // Same bytes, and same content with a different layout (comments, key order).
    std::fs::write(dir.path().join("f.yaml"), &text).unwrap();
    write_atomically(dir.path(), "f.yaml", &format!("# a comment\n{text}"));
    // The watcher saw the edits and decided there was nothing to publish.
    gate.wait_until(
        || {
            gate.metrics()
                .contains("fngate_reloads_total{outcome=\"unchanged\"}")
        },
        "an unchanged reload",
    );
    assert_eq!(gate.revision(), before);
    // A real change afterwards must be exactly the next revision.
    std::fs::write(dir.path().join("g.yaml"), function_yaml("default", "g", "")).unwrap();
    let after = gate.wait_for_revision_after(before);
    assert_eq!(
        after,
        before + 1,
        "the unchanged rewrites published no plan"
    );
}

#[test]
fn requests_on_unchanged_routes_never_fail_while_plans_are_swapped() {
    let echo = Echo::start("stable", "default");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("slice.yaml"),
        endpoint_slice("default", "stable", &[echo.addr], true),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("stable.yaml"),
        function_yaml("default", "stable", ""),
    )
    .unwrap();
    let gate = Arc::new(Fngate::start(dir.path()));

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), gate.http);
            std::thread::spawn(move || {
                let mut client = KeepAliveClient::connect(addr).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    match client.get("stable.default.ofn.io", "/") {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => {
                            client = KeepAliveClient::connect(addr).unwrap();
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();

    let reloads = 50;
    for i in 0..reloads {
        let r = gate.revision();
        let path = format!(
            "        route:\n          rules:\n          - matches: [{{path: {{value: /v{i}}}}}]\n"
        );
        write_atomically(
            dir.path(),
            "churn.yaml",
            &function_yaml("default", "churn", &path),
        );
        gate.wait_for_revision_after(r);
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert!(gate.revision() > reloads, "every edit published a plan");
    assert!(ok.load(Ordering::Relaxed) > 0);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reloads ({} succeeded)",
        ok.load(Ordering::Relaxed)
    );
}

#[test]
fn a_catalog_folder_created_after_start_is_picked_up() {
    let echo = Echo::start("late", "default");
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("not-yet");
    let gate = Fngate::start(&dir);
    assert_eq!(gate.get("late.default.ofn.io", "/").status, 404);
    let diags = String::from_utf8(admin_get(gate.admin, "/diagnostics").unwrap().body).unwrap();
    assert!(diags.contains("cannot read catalog directory"), "{diags}");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("slice.yaml"),
        endpoint_slice("default", "late", &[echo.addr], true),
    )
    .unwrap();
    std::fs::write(dir.join("late.yaml"), function_yaml("default", "late", "")).unwrap();
    gate.wait_until(
        || routed(&gate, "late.default.ofn.io"),
        "the late folder to be served",
    );
    // From then on it is watched like any other.
    let r = gate.revision();
    std::fs::remove_file(dir.join("late.yaml")).unwrap();
    gate.wait_for_revision_after(r);
    assert_eq!(gate.get("late.default.ofn.io", "/").status, 404);
}
