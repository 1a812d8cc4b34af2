//! `bindings.cron` through the real binary into real Dapr apps (the `dapr_app` example over
//! AppCallback gRPC and Dapr's HTTP protocol): ticks with daprd's metadata, a tick held
//! for a function at zero, a missed tick counted.

mod common;

use common::*;

fn cron_component(name: &str, schedule: &str) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  type: bindings.cron\n  version: v1\n  metadata:\n    - name: schedule\n      value: \"{schedule}\"\n"
    )
}

/// Go's `Time.String()` of a UTC time: `2026-12-07 06:00:01.000000123 +0000 UTC`.
fn is_go_utc_time(s: &str) -> bool {
    let Some(rest) = s.strip_suffix(" +0000 UTC") else {
        return false;
    };
    let (whole, fraction) = rest.split_once('.').unwrap_or((rest, ""));
    let shape_ok = whole.len() == 19
        && whole.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b' ',
            13 | 16 => b == b':',
            _ => b.is_ascii_digit(),
        });
    shape_ok
        && fraction.len() <= 9
        && fraction.bytes().all(|b| b.is_ascii_digit())
        && !fraction.ends_with('0')
}

#[test]
fn ticks_reach_grpc_and_http_apps_as_daprd_sends_them() {
    for protocol in ["grpc", "http"] {
        let app = DaprApp::start(protocol, "every-second", "");
        let dir = tempfile::tempdir().unwrap();
        write_atomically(
            dir.path(),
            "fn.yaml",
            &[
                cron_component("every-second", "@every 1s"),
                dapr_function_yaml(
                    "ticker",
                    "every-second",
                    None,
                    protocol,
                    app.addr.port(),
                    "",
                ),
                endpoint_slice("default", "ticker", &[app.addr], true),
            ]
            .join("---\n"),
        );
        let gate = Fngate::start(dir.path());
        let events = app.wait_for("two ticks", |e| e.len() >= 2);
        for e in &events[..2] {
            assert_eq!(e["kind"], "binding", "{e}");
            assert_eq!(e["name"], "every-second", "{e}");
            assert_eq!(e["data"], "", "a tick has no data: {e}");
            let metadata = &e["metadata"];
            // HTTP: the metadata as lower-cased headers; gRPC: as given.
            let (zone, read) = if protocol == "http" {
                assert_eq!(metadata["content-type"], "application/json", "{e}");
                (&metadata["timezone"], &metadata["readtimeutc"])
            } else {
                (&metadata["timeZone"], &metadata["readTimeUTC"])
            };
            assert_eq!(zone, "Local", "daprd's scheduler location: {e}");
            assert!(is_go_utc_time(read.as_str().unwrap_or("")), "{e}");
        }
        // Each tick once: two ticks of one second read at different seconds.
        let read = |e: &serde_json::Value| {
            let m = &e["metadata"];
            m["readTimeUTC"]
                .as_str()
                .or(m["readtimeutc"].as_str())
                .unwrap()[..19]
                .to_owned()
        };
        assert_ne!(read(&events[0]), read(&events[1]));
        gate.wait_until(
            || {
                gate.metric_opt("fngate_events_total{function=\"ticker\",namespace=\"default\",outcome=\"success\",trigger=\"every-second\"}")
                    .is_some_and(|n| n >= 2.0)
            },
            "ticks counted as delivered",
        );
    }
}

#[test]
fn a_tick_for_a_function_at_zero_waits_for_it_and_one_past_the_hold_timeout_is_missed() {
    // `ticker` is at zero when its first tick comes; `gone` never starts, and holds for 1 s.
    let app = DaprApp::start("grpc", "tick", "");
    let dir = tempfile::tempdir().unwrap();
    let gone = dapr_function_yaml("gone", "tick", None, "grpc", 9, "").replace(
        "  namespace: default\nspec:",
        "  namespace: default\n  annotations:\n    fngate.io/hold-timeout: 1s\nspec:",
    );
    write_atomically(
        dir.path(),
        "fn.yaml",
        &[
            cron_component("tick", "@every 1s"),
            dapr_function_yaml("ticker", "tick", None, "grpc", app.addr.port(), ""),
            gone,
        ]
        .join("---\n"),
    );
    write_atomically(
        dir.path(),
        "slice.yaml",
        &endpoint_slice("default", "ticker", &[app.addr], false),
    );
    let (hook, told) = webhook_receiver();
    let gate = Fngate::start_with(
        dir.path(),
        &format!("activator:\n  webhook: http://{hook}/scale\n"),
    );
    // The platform is told that `ticker` has work waiting, as for a held request.
    loop {
        let body = told
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the webhook is called for ticker's waiting tick");
        if body["function"] == "ticker" {
            assert_eq!(body["namespace"], "default", "{body}");
            break;
        }
    }
    let missed = "fngate_events_total{function=\"gone\",namespace=\"default\",outcome=\"missed\",trigger=\"tick\"}";
    gate.wait_until(
        || gate.metric_opt(missed).is_some_and(|n| n >= 1.0),
        "a tick for `gone` missed after its 1 s hold",
    );
    // `ticker`'s ticks have been waiting all that time (the default hold is 30 s).
    assert!(app.events().is_empty(), "nothing delivered while at zero");
    write_atomically(
        dir.path(),
        "slice.yaml",
        &endpoint_slice("default", "ticker", &[app.addr], true),
    );
    let events = app.wait_for("the held ticks", |e| !e.is_empty());
    assert_eq!(events[0]["name"], "tick");
    assert_eq!(
        gate.metric_or_zero("fngate_events_total{function=\"ticker\",namespace=\"default\",outcome=\"missed\",trigger=\"tick\"}"),
        0.0,
        "no tick of the function that started in time was missed"
    );
}

#[test]
fn a_bad_schedule_is_reported_at_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fn.yaml");
    std::fs::write(
        &file,
        [
            cron_component("bad", "0 0 * * 7"),
            dapr_function_yaml("ticker", "bad", None, "grpc", 9, ""),
        ]
        .join("---\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fngate"))
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    let stdout = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("Component default/bad")
            && stdout.contains("spec.metadata[0] (schedule)")
            && stdout.contains("days are 0-6"),
        "{stdout}"
    );
    assert!(!stdout.contains("not run by fngate"), "{stdout}");
}

#[test]
fn openfunctions_cron_input_sample_fires_into_its_function() {
    // The sample as published: a Go function (AppCallback gRPC on the default port 8080)
    // with an inline `@every 2s` cron binding named `cron`. Its pod is a loopback address
    // of this test's own, so port 8080 is free there.
    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(
        "../shared/samples/openfunction/OpenFunction_samples@318ee24__functions__async__bindings__cron-input__cron-input.yaml",
    );
    let manifest =
        std::fs::read_to_string(&sample).unwrap_or_else(|e| panic!("{}: {e}", sample.display()));
    let pod = format!(
        "127.1.{}.{}:8080",
        std::process::id() % 250 + 1,
        free_port() % 250 + 1
    );
    let app = DaprApp::start_on("grpc", &pod, "cron", "");
    let dir = tempfile::tempdir().unwrap();
    write_atomically(dir.path(), "cron-input.yaml", &manifest);
    write_atomically(
        dir.path(),
        "slice.yaml",
        &endpoint_slice("default", "cron-input", &[app.addr], true),
    );
    let gate = Fngate::start(dir.path());
    let events = app.wait_for("the sample's first tick", |e| !e.is_empty());
    assert_eq!(events[0]["name"], "cron");
    assert_eq!(events[0]["metadata"]["timeZone"], "Local");
    let diagnostics =
        String::from_utf8(admin_get(gate.admin, "/diagnostics").unwrap().body).unwrap();
    assert!(!diagnostics.contains("not run by fngate"), "{diagnostics}");
}

#[test]
fn a_bindings_route_metadata_is_where_an_http_app_gets_its_ticks() {
    // The app listens on /jobs/nightly only: without the route, POST /tick answers 404.
    let app = DaprApp::start("http", "jobs/nightly", "");
    let dir = tempfile::tempdir().unwrap();
    write_atomically(
        dir.path(),
        "fn.yaml",
        &[
            format!(
                "{}    - name: route\n      value: /jobs/nightly\n",
                cron_component("tick", "@every 1s")
            ),
            dapr_function_yaml("nightly", "tick", None, "http", app.addr.port(), ""),
            endpoint_slice("default", "nightly", &[app.addr], true),
        ]
        .join("---\n"),
    );
    let gate = Fngate::start(dir.path());
    let diagnostics =
        String::from_utf8(admin_get(gate.admin, "/diagnostics").unwrap().body).unwrap();
    assert!(!diagnostics.contains("route"), "{diagnostics}");
    let events = app.wait_for("a tick on the route", |e| !e.is_empty());
    assert_eq!(events[0]["name"], "jobs/nightly", "{}", events[0]);
    assert_eq!(events[0]["answer"], "SUCCESS", "{}", events[0]);
}
