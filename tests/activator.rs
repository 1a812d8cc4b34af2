//! Scale from zero through the real binary: requests for a function with no ready
//! endpoint wait and are released the moment one is ready; waiting is bounded.

mod common;

use common::*;
use std::sync::{Arc, Barrier};

/// Requests held for the function `cold` of `cold_function`.
const COLD_WAITING: &str = "fngate_activator_waiting{function=\"cold\",namespace=\"default\"}";

/// `cold_function(dir, "cold")` with one annotation on the Function.
fn annotated_cold_function(dir: &std::path::Path, key: &str, value: &str) -> std::net::SocketAddr {
    let addr = cold_function(dir, "cold");
    write_atomically(
        dir,
        "fn.yaml",
        &with_annotation(&function_yaml("default", "cold", ""), key, value),
    );
    addr
}

fn held_requests(gate: &Fngate, host: &'static str, n: usize) -> Vec<std::thread::JoinHandle<u16>> {
    let start = Arc::new(Barrier::new(n));
    (0..n)
        .map(|i| {
            let (addr, start) = (gate.http, start.clone());
            std::thread::spawn(move || {
                start.wait();
                request(addr, "GET", host, &format!("/job/{i}"), &[], b"")
                    .map(|r| r.status)
                    .unwrap_or(0)
            })
        })
        .collect()
}

#[test]
fn held_requests_are_all_released_when_a_late_backend_becomes_ready() {
    let dir = tempfile::tempdir().unwrap();
    let addr = cold_function(dir.path(), "cold");
    let gate = Fngate::start(dir.path());
    let waiting = COLD_WAITING;
    let n = 500;
    let clients = held_requests(&gate, "cold.default.ofn.io", n);
    gate.wait_until(
        || gate.metric_opt(waiting) == Some(n as f64),
        "every request held",
    );

    let _echo = start_cold_function(dir.path(), "cold", addr);
    let statuses: Vec<u16> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "{:?}",
        count_by(statuses)
    );
    assert_eq!(gate.metric(waiting), 0.0);
    assert_eq!(
        gate.metric("fngate_activator_releases_total{function=\"cold\",namespace=\"default\"}"),
        n as f64
    );
}

#[test]
fn over_the_per_function_limit_a_request_gets_503_at_once_and_other_functions_are_unaffected() {
    let echo = Echo::start("hello", "default");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cold_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    write_atomically(
        dir.path(),
        "cold.yaml",
        &function_yaml("default", "cold", ""),
    );
    write_atomically(
        dir.path(),
        "cold-slice.yaml",
        &endpoint_slice("default", "cold", &[cold_addr], false),
    );
    write_atomically(
        dir.path(),
        "hello.yaml",
        &function_yaml("default", "hello", ""),
    );
    write_atomically(
        dir.path(),
        "hello-slice.yaml",
        &endpoint_slice("default", "hello", &[echo.addr], true),
    );
    let gate = Fngate::start_with(dir.path(), "activator:\n  max_waiting_per_function: 3\n");
    let held = held_requests(&gate, "cold.default.ofn.io", 3);
    gate.wait_until(
        || gate.metric_opt(COLD_WAITING) == Some(3.0),
        "three requests held",
    );
    let over = gate.get("cold.default.ofn.io", "/");
    assert_eq!(over.status, 503);
    assert_eq!(over.header("retry-after"), Some("1"));
    assert_eq!(gate.get("hello.default.ofn.io", "/").status, 200);
    assert_eq!(
        gate.metric("fngate_activator_overflows_total{function=\"cold\",namespace=\"default\"}"),
        1.0
    );
    // The held ones still get through once the function is up.
    let cold = Echo::start_on("cold", "default", &cold_addr.to_string());
    write_atomically(
        dir.path(),
        "cold-slice.yaml",
        &endpoint_slice("default", "cold", &[cold.addr], true),
    );
    for h in held {
        assert_eq!(h.join().unwrap(), 200);
    }
}

#[test]
fn a_client_that_hangs_up_frees_its_slot_with_or_without_a_body() {
    let dir = tempfile::tempdir().unwrap();
    // Held far longer than this test waits: only the hang-up can free the slot.
    annotated_cold_function(dir.path(), "fngate.io/hold-timeout", "10m");
    let gate = Fngate::start(dir.path());
    let waiting = COLD_WAITING;
    let requests: [&[u8]; 2] = [
        b"GET / HTTP/1.1\r\nHost: cold.default.ofn.io\r\n\r\n",
        // The body is not read while the request waits: the hang-up must be seen anyway.
        b"POST /orders HTTP/1.1\r\nHost: cold.default.ofn.io\r\nContent-Length: 5\r\n\r\nhello",
    ];
    for request in requests {
        {
            use std::io::Write;
            let mut s = std::net::TcpStream::connect(gate.http).unwrap();
            s.write_all(request).unwrap();
            gate.wait_until(|| gate.metric_opt(waiting) == Some(1.0), "the request held");
        }
        gate.wait_until(
            || gate.metric_opt(waiting) == Some(0.0),
            "the slot freed after the client left",
        );
    }
}

#[test]
fn a_listed_endpoint_that_answers_is_used_before_the_platform_marks_it_ready() {
    // The pod is up but its EndpointSlice still says not ready (readiness lags): the
    // activator's probe finds it and the waiting request goes through.
    let echo = Echo::start("warm", "default");
    let dir = tempfile::tempdir().unwrap();
    write_atomically(dir.path(), "fn.yaml", &function_yaml("default", "warm", ""));
    write_atomically(
        dir.path(),
        "slice.yaml",
        &endpoint_slice("default", "warm", &[echo.addr], false),
    );
    let gate = Fngate::start(dir.path());
    let r = gate.get("warm.default.ofn.io", "/");
    assert_eq!(r.status, 200);
    assert!(
        gate.metric(
            "fngate_activator_probes_total{function=\"warm\",namespace=\"default\",result=\"up\"}"
        ) >= 1.0
    );
}

#[test]
fn repeated_scale_to_zero_and_back_under_load_loses_no_request() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    write_atomically(dir.path(), "fn.yaml", &function_yaml("default", "flip", ""));
    write_atomically(
        dir.path(),
        "slice.yaml",
        &endpoint_slice("default", "flip", &[addr], true),
    );
    let mut backend = Some(Echo::start_on("flip", "default", &addr.to_string()));
    let gate = Fngate::start(dir.path());
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, http) = (stop.clone(), ok.clone(), gate.http);
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match request(http, "GET", "flip.default.ofn.io", "/", &[], b"") {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(r) => failures.push(r.status),
                        Err(e) => failures.push(e.raw_os_error().unwrap_or(-1) as u16),
                    }
                }
                failures
            })
        })
        .collect();
    let waiting = "fngate_activator_waiting{function=\"flip\",namespace=\"default\"}";
    for cycle in 0..4 {
        let before = ok.load(Ordering::SeqCst);
        gate.wait_until(
            || ok.load(Ordering::SeqCst) >= before + 50,
            "traffic flowing",
        );
        // 1 -> 0: the pod is gone. Odd cycles the platform also marks it not ready; even
        // cycles the slice still says ready (the kill is not noticed yet).
        drop(backend.take());
        if cycle % 2 == 1 {
            write_atomically(
                dir.path(),
                "slice.yaml",
                &endpoint_slice("default", "flip", &[addr], false),
            );
        }
        gate.wait_until(
            || gate.metric_opt(waiting) >= Some(1.0),
            "requests waiting while the function is gone",
        );
        // 0 -> 1 on the same address.
        backend = Some(Echo::start_on("flip", "default", &addr.to_string()));
        if cycle % 2 == 1 {
            write_atomically(
                dir.path(),
                "slice.yaml",
                &endpoint_slice("default", "flip", &[addr], true),
            );
        }
    }
    let before = ok.load(Ordering::SeqCst);
    gate.wait_until(
        || ok.load(Ordering::SeqCst) >= before + 50,
        "traffic flowing at the end",
    );
    stop.store(true, Ordering::SeqCst);
    let failures: Vec<u16> = load.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert!(
        failures.is_empty(),
        "failed requests: {:?}",
        count_by(failures)
    );
}

#[test]
fn a_fresh_pod_gets_no_more_released_requests_at_once_than_its_release_limit() {
    let dir = tempfile::tempdir().unwrap();
    let addr = annotated_cold_function(dir.path(), "fngate.io/release-concurrency", "2");
    let gate = Fngate::start(dir.path());
    let waiting = COLD_WAITING;
    let n = 12;
    let clients: Vec<_> = (0..n)
        .map(|i| {
            let http = gate.http;
            std::thread::spawn(move || {
                request(
                    http,
                    "GET",
                    "cold.default.ofn.io",
                    &format!("/job/{i}?delay=100ms"),
                    &[],
                    b"",
                )
                .unwrap()
            })
        })
        .collect();
    gate.wait_until(
        || gate.metric_opt(waiting) == Some(n as f64),
        "every request held",
    );
    let _echo = start_cold_function(dir.path(), "cold", addr);
    let responses: Vec<Response> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(responses.iter().all(|r| r.status == 200));
    let at_once: Vec<usize> = responses
        .iter()
        .map(|r| r.header("x-echo-in-flight").unwrap().parse().unwrap())
        .collect();
    assert!(
        at_once.iter().all(|n| *n <= 2),
        "the pod got more than 2 at once: {at_once:?}"
    );
}

#[test]
fn an_app_listening_before_it_is_ready_gets_no_request_until_its_readiness_path_passes() {
    let dir = tempfile::tempdir().unwrap();
    let addr = annotated_cold_function(dir.path(), "fngate.io/readiness-path", "/ready");
    let gate = Fngate::start(dir.path());
    let waiting = COLD_WAITING;
    let clients = held_requests(&gate, "cold.default.ofn.io", 5);
    gate.wait_until(
        || gate.metric_opt(waiting) == Some(5.0),
        "every request held",
    );
    // It takes connections at once but answers 503 for its first 300 ms; its slice
    // stays "not ready", so only the probe can release the requests.
    let _echo = Echo::start_with(
        "cold",
        "default",
        &addr.to_string(),
        &["--ready-after", "300ms"],
    );
    let statuses: Vec<u16> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "{:?}",
        count_by(statuses)
    );
}
