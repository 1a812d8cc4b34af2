//! Gateway API HTTPRoute conformance, run against a live fngate.
//!
//! Reads `../shared/conformance/gateway-api-httproute.json`, writes every HTTPRoute of a
//! suite as an OpenFunction Function (the route spec goes verbatim into
//! `spec.serving.triggers.http.route`, `parentRefs[0]` becomes its `gatewayRef`), every
//! Gateway listener into an OpenFunction Gateway (with `hostTemplate: ""` and
//! `clusterDomain: ""` so no default hostnames are added, as the suites expect), and the
//! three infra backends as EndpointSlices pointing at real `echo` processes. Then every
//! case is sent through fngate and checked; a table of passed/failed per suite is printed.

mod common;

use common::{endpoint_slice, Echo, Fngate};
use serde_json::{json, Value};
use std::collections::BTreeMap;

const NS: &str = "gateway-conformance-infra";

/// Cases that do not apply to fngate, and why. Everything else must pass.
fn excluded(suite: &str, case: &Value) -> Option<&'static str> {
    match suite {
        "HTTPRouteListenerPortMatching" => {
            Some("routes attach to listeners on ports 8080/8090; fngate has one HTTP listener, so listener port selection does not apply")
        }
        "HTTPRouteRedirectPortAndScheme" if case["gateway_port"] == 443 => {
            Some("needs an HTTPS Gateway listener on 443 with SNI; the runner drives the HTTP listener only")
        }
        _ => None,
    }
}

/// Cases in the data file as of this writing, and how many of them fngate passes: fewer
/// means the file was cut or cases stopped being run, not that all is well.
const CASES: usize = 187;
const PASSING: usize = 176;

fn data_file() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/conformance/gateway-api-httproute.json")
}

fn gateway_yaml(gw: &Value) -> String {
    let listeners: Vec<Value> = gw["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| json!({"name": l["name"], "hostname": l.get("hostname").cloned().unwrap_or(Value::Null), "port": l["port"], "protocol": l["protocol"]}))
        .collect();
    let obj = json!({
        "apiVersion": "networking.openfunction.io/v1alpha1",
        "kind": "Gateway",
        "metadata": {"name": gw["name"], "namespace": gw["namespace"]},
        "spec": {"hostTemplate": "", "clusterDomain": "", "gatewaySpec": {"listeners": listeners}},
    });
    serde_yaml::to_string(&obj).unwrap()
}

fn function_yaml(route: &Value) -> String {
    let mut spec = route["spec"].clone();
    let ns = route["namespace"].as_str().unwrap();
    if let Some(p) = spec["parentRefs"].get(0).cloned() {
        spec["gatewayRef"] = json!({"name": p["name"], "namespace": p.get("namespace").cloned().unwrap_or(json!(ns))});
    }
    let order = route["manifest_order"].as_u64().unwrap_or(0);
    let obj = json!({
        "apiVersion": "core.openfunction.io/v1beta2",
        "kind": "Function",
        "metadata": {"name": route["name"], "namespace": ns, "creationTimestamp": format!("2026-01-01T00:{:02}:{:02}Z", order / 60, order % 60)},
        "spec": {"serving": {"triggers": {"http": {"port": 8080, "route": spec}}}},
    });
    serde_yaml::to_string(&obj).unwrap()
}

struct Outcome {
    passed: usize,
    failed: Vec<String>,
    excluded: Vec<String>,
}

fn check_case(gate: &Fngate, echoes: &BTreeMap<String, Echo>, case: &Value) -> Result<(), String> {
    let req = &case["request"];
    let port = case["gateway_port"].as_u64().unwrap_or(80);
    let host = match req["host"].as_str() {
        Some(h) => h.to_owned(),
        None if port == 80 => "127.0.0.1".to_owned(),
        None => format!("127.0.0.1:{port}"),
    };
    let path = req["path"].as_str().unwrap();
    let method = req["method"].as_str().unwrap_or("GET");
    let expect = &case["expect"];
    let mut headers: Vec<(String, String)> = req["headers"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                .collect()
        })
        .unwrap_or_default();
    if let Some(set) = expect["backend_sets_response_headers"].as_object() {
        let spec: Vec<String> = set
            .iter()
            .map(|(k, v)| format!("{k}:{}", v.as_str().unwrap_or("")))
            .collect();
        headers.push(("x-echo-set-response-headers".into(), spec.join(",")));
    }
    let header_refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mirror_before: BTreeMap<String, usize> = echoes
        .iter()
        .map(|(k, e)| (k.clone(), e.requests_seen().len()))
        .collect();
    let resp = common::request(gate.http, method, &host, path, &header_refs, b"")
        .map_err(|e| format!("request failed: {e}"))?;

    let statuses: Vec<u64> = match &expect["status"] {
        Value::Array(a) => a.iter().filter_map(Value::as_u64).collect(),
        v => vec![v.as_u64().unwrap_or(200)],
    };
    if !statuses.contains(&(resp.status as u64)) {
        return Err(format!(
            "status {} (want {:?}); body {}",
            resp.status,
            statuses,
            String::from_utf8_lossy(&resp.body)
        ));
    }
    if let Some(backend) = expect["backend"].as_str() {
        let seen = resp.json();
        if seen["service"] != backend {
            return Err(format!("answered by {} (want {backend})", seen["service"]));
        }
        if let Some(ns) = expect["namespace"].as_str() {
            if seen["namespace"] != ns {
                return Err(format!("namespace {} (want {ns})", seen["namespace"]));
            }
        }
    }
    if let Some(p) = expect["path"].as_str() {
        if expect["backend"].is_string() && resp.json()["path"] != p {
            return Err(format!(
                "backend saw path {} (want {p})",
                resp.json()["path"]
            ));
        }
    }
    if let Some(h) = expect["upstream_host"].as_str() {
        if resp.json()["host"] != h {
            return Err(format!(
                "backend saw host {} (want {h})",
                resp.json()["host"]
            ));
        }
    }
    if let Some(want) = expect["headers"].as_object() {
        for (name, value) in want {
            let got = resp.seen_header(name);
            if got.as_deref() != value.as_str() {
                return Err(format!("backend saw {name}: {got:?} (want {value})"));
            }
        }
    }
    for name in expect["absent_headers"].as_array().into_iter().flatten() {
        let name = name.as_str().unwrap();
        if let Some(v) = resp.seen_header(name) {
            return Err(format!("backend saw {name}: {v} (want absent)"));
        }
    }
    if let Some(want) = expect["response_headers"].as_object() {
        for (name, value) in want {
            let got = resp.header_values(&name.to_ascii_lowercase()).join(",");
            if Some(got.as_str()) != value.as_str() {
                return Err(format!("response {name}: {got:?} (want {value})"));
            }
        }
    }
    for name in expect["response_absent_headers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = name.as_str().unwrap().to_ascii_lowercase();
        if resp.header(&name).is_some() {
            return Err(format!("response has {name} (want absent)"));
        }
    }
    if let Some(want) = expect["redirect"].as_object() {
        let loc = resp.header("location").ok_or("no Location")?;
        let (scheme, rest) = loc
            .split_once("://")
            .ok_or_else(|| format!("Location {loc:?} is not absolute"))?;
        let (authority, lpath) = rest
            .find('/')
            .map(|i| (&rest[..i], &rest[i..]))
            .unwrap_or((rest, "/"));
        let (lhost, lport) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        let req_host = host.split(':').next().unwrap();
        let want_scheme = want.get("scheme").and_then(Value::as_str).unwrap_or("http");
        let want_host = want.get("host").and_then(Value::as_str).unwrap_or(req_host);
        let want_path = want.get("path").and_then(Value::as_str).unwrap_or(path);
        let default_port = if want_scheme == "https" { "443" } else { "80" };
        let port_ok = match want.get("port").and_then(Value::as_str) {
            Some(p) => lport == Some(p),
            None => lport.is_none() || lport == Some(default_port),
        };
        if scheme != want_scheme || lhost != want_host || lpath != want_path || !port_ok {
            return Err(format!("Location {loc} (want {want:?})"));
        }
    }
    for m in expect["mirrored_to"].as_array().into_iter().flatten() {
        let name = m["BackendRef"]["Name"].as_str().unwrap();
        let echo = &echoes[name];
        let before = mirror_before[name];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while echo.requests_seen().len() <= before {
            if std::time::Instant::now() > deadline {
                return Err(format!("{name} never received the mirrored request"));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    Ok(())
}

fn check_distribution(gate: &Fngate, check: &Value) -> Result<(), String> {
    let path = check["request"]["path"].as_str().unwrap_or("/");
    let n = 600;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..n {
        let r = common::request(gate.http, "GET", "127.0.0.1", path, &[], b"")
            .map_err(|e| e.to_string())?;
        *counts
            .entry(r.json()["service"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    for (backend, weight) in check["expected_weights"].as_object().unwrap() {
        let got = *counts.get(backend).unwrap_or(&0) as f64 / n as f64;
        let want = weight.as_f64().unwrap();
        // The conformance suite's tolerance for weighted splits.
        if (got - want).abs() > 0.05 {
            return Err(format!(
                "{backend} got {got:.3} of requests (want {want:.2} ± 0.05): {counts:?}"
            ));
        }
    }
    Ok(())
}

#[test]
fn gateway_api_httproute_conformance() {
    let file = data_file();
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| {
        panic!(
            "the conformance data {} (shared/ beside the repository): {e}",
            file.display()
        )
    });
    let data: Value = serde_json::from_str(&text).unwrap();
    let in_file: usize = data["suites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["cases"].as_array().map_or(0, |c| c.len()))
        .sum();
    let echoes: BTreeMap<String, Echo> =
        ["infra-backend-v1", "infra-backend-v2", "infra-backend-v3"]
            .iter()
            .map(|s| (s.to_string(), Echo::start(s, NS)))
            .collect();

    let mut results: Vec<(String, Outcome)> = Vec::new();
    for suite in data["suites"].as_array().unwrap() {
        let name = suite["name"].as_str().unwrap().to_owned();
        let dir = tempfile::tempdir().unwrap();
        for (svc, echo) in &echoes {
            std::fs::write(
                dir.path().join(format!("{svc}.yaml")),
                endpoint_slice(NS, svc, &[echo.addr], true),
            )
            .unwrap();
        }
        for (i, gw) in suite["gateways"].as_array().unwrap().iter().enumerate() {
            std::fs::write(
                dir.path().join(format!("gateway-{i}.yaml")),
                gateway_yaml(gw),
            )
            .unwrap();
        }
        for (i, route) in suite["routes"].as_array().unwrap().iter().enumerate() {
            std::fs::write(
                dir.path().join(format!("route-{i}.yaml")),
                function_yaml(route),
            )
            .unwrap();
        }
        let gate = Fngate::start(dir.path());
        let mut outcome = Outcome {
            passed: 0,
            failed: Vec::new(),
            excluded: Vec::new(),
        };
        for case in suite["cases"].as_array().unwrap() {
            let label = format!(
                "{} {} (line {})",
                case["request"]["method"].as_str().unwrap_or("GET"),
                case["request"]["path"].as_str().unwrap_or(""),
                case["source_line"]
            );
            if let Some(why) = excluded(&name, case) {
                outcome.excluded.push(format!("{label}: {why}"));
                continue;
            }
            let result = if let Some(check) = suite.get("distribution_check") {
                check_distribution(&gate, check)
            } else {
                check_case(&gate, &echoes, case)
            };
            match result {
                Ok(()) => outcome.passed += 1,
                Err(e) => outcome
                    .failed
                    .push(format!("{label} host={}: {e}", case["request"]["host"])),
            }
        }
        results.push((name, outcome));
    }

    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    println!("Gateway API HTTPRoute conformance through fngate:");
    for (name, o) in &results {
        println!(
            "  {name:<40} passed {:>3}  failed {:>3}  excluded {:>3}",
            o.passed,
            o.failed.len(),
            o.excluded.len()
        );
        for f in &o.failed {
            println!("      FAILED {f}");
        }
        passed += o.passed;
        failed += o.failed.len();
        skipped += o.excluded.len();
    }
    println!("excluded cases:");
    for (_, o) in &results {
        for e in &o.excluded {
            println!("      {e}");
        }
    }
    println!("conformance total: passed {passed}, failed {failed}, excluded {skipped}");
    assert_eq!(failed, 0, "conformance cases failed; see the table above");
    assert_eq!(
        passed + skipped,
        in_file,
        "every case in the file is run or excluded by name"
    );
    assert!(
        in_file >= CASES,
        "{in_file} cases in the file, {CASES} expected"
    );
    assert!(passed >= PASSING, "{passed} cases passed, {PASSING} before");
}
