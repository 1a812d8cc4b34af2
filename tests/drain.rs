//! Graceful drain on SIGTERM through the real binary: what is in flight finishes, nothing
//! new gets in, held requests are handed back, event streams stop where a restarted
//! process resumes, and the process exits 0.

mod common;

use common::*;
use std::io::Read;

const SLOW_HOST: &str = "slow.default.ofn.io";
const COLD_HOST: &str = "cold.default.ofn.io";
const COLD_WAITING: &str = "fngate_activator_waiting{function=\"cold\",namespace=\"default\"}";

fn slow_function(dir: &std::path::Path) -> Echo {
    let echo = Echo::start("slow", "default");
    write_atomically(dir, "fn.yaml", &function_yaml("default", "slow", ""));
    write_atomically(
        dir,
        "slice.yaml",
        &endpoint_slice("default", "slow", &[echo.addr], true),
    );
    echo
}

fn get_on_thread(
    addr: std::net::SocketAddr,
    host: &'static str,
    path: String,
) -> std::thread::JoinHandle<std::io::Result<Response>> {
    std::thread::spawn(move || request(addr, "GET", host, &path, &[], b""))
}

#[test]
fn sigterm_finishes_requests_in_flight_refuses_new_connections_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let _echo = slow_function(dir.path());
    let mut gate = Fngate::start_with(dir.path(), "shutdown:\n  drain: 30s\n");

    // A keep-alive connection left idle between requests.
    let mut idle = std::net::TcpStream::connect(gate.http).unwrap();
    idle.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    std::io::Write::write_all(
        &mut idle,
        format!("GET /first HTTP/1.1\r\nHost: {SLOW_HOST}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut idle = std::io::BufReader::new(idle);
    let first = read_response(&mut idle, false).unwrap();
    assert_eq!(first.status, 200);

    let n = 4;
    let in_flight: Vec<_> = (0..n)
        .map(|i| get_on_thread(gate.http, SLOW_HOST, format!("/work/{i}?delay=2s")))
        .collect();
    gate.wait_until(
        || gate.metric("fngate_requests_in_flight") == n as f64,
        "every request in flight",
    );
    gate.terminate();

    // The Service stops sending traffic: readiness fails, while the admin listener serves.
    gate.wait_until(
        || admin_get(gate.admin, "/readyz").is_ok_and(|r| r.status == 503),
        "/readyz answering 503",
    );
    assert_eq!(gate.metric("fngate_draining"), 1.0);
    // New connections are refused.
    gate.wait_until(
        || {
            std::net::TcpStream::connect(gate.http)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
        },
        "new connections refused",
    );
    // The idle keep-alive connection is closed by fngate, not left to a next request.
    let mut rest = Vec::new();
    let read = idle.read_to_end(&mut rest);
    assert!(
        read.is_ok() && rest.is_empty(),
        "the idle connection ends cleanly: {read:?} {rest:?}"
    );

    // Every request in flight at the signal gets its whole answer, and its connection
    // is closed after it.
    for (i, client) in in_flight.into_iter().enumerate() {
        let response = client
            .join()
            .unwrap()
            .expect("an answer, not a cut connection");
        assert_eq!(response.status, 200, "request {i}");
        assert_eq!(
            response.json()["path"],
            format!("/work/{i}?delay=2s"),
            "request {i} reached the function and came back whole"
        );
        assert_eq!(response.header("connection"), Some("close"), "request {i}");
    }
    let status = gate.wait_exit();
    assert!(status.success(), "fngate exits 0 after the drain: {status}");
}

#[test]
fn a_request_held_at_sigterm_is_released_when_its_function_starts_during_the_drain() {
    let dir = tempfile::tempdir().unwrap();
    let addr = cold_function(dir.path(), "cold");
    let mut gate = Fngate::start_with(
        dir.path(),
        "shutdown:\n  drain: 30s\nactivator:\n  hold_timeout: 60s\n",
    );
    let held = get_on_thread(gate.http, COLD_HOST, "/held".into());
    gate.wait_until(|| gate.metric(COLD_WAITING) == 1.0, "the request held");
    gate.terminate();
    gate.wait_until(
        || admin_get(gate.admin, "/readyz").is_ok_and(|r| r.status == 503),
        "/readyz answering 503",
    );
    // The platform starts the function: the catalog is still followed during the drain.
    let _echo = start_cold_function(dir.path(), "cold", addr);
    let response = held.join().unwrap().expect("an answer");
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["path"], "/held");
    let status = gate.wait_exit();
    assert!(status.success(), "{status}");
}

#[test]
fn a_request_still_held_at_the_drain_deadline_gets_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    cold_function(dir.path(), "cold");
    let mut gate = Fngate::start_with(
        dir.path(),
        "shutdown:\n  drain: 2s\nactivator:\n  hold_timeout: 120s\n",
    );
    let held = get_on_thread(gate.http, COLD_HOST, "/held".into());
    gate.wait_until(|| gate.metric(COLD_WAITING) == 1.0, "the request held");
    gate.terminate();
    let response = held
        .join()
        .unwrap()
        .expect("an answer, not a cut connection");
    assert_eq!(response.status, 503);
    assert!(
        response.header("retry-after").is_some(),
        "a client is told to retry (another replica)"
    );
    let status = gate.wait_exit();
    assert!(status.success(), "{status}");
}

#[test]
fn a_function_answering_a_request_in_flight_can_still_use_the_dapr_api_during_the_drain() {
    // The function of a request in flight calls fngate's Dapr API (state, publish) before
    // it answers: that API outlives the proxied requests.
    let dir = tempfile::tempdir().unwrap();
    let _echo = slow_function(dir.path());
    let dapr_http = free_port();
    let mut gate = Fngate::start_full(
        dir.path(),
        &format!("  dapr_http: 127.0.0.1:{dapr_http}\n"),
        "shutdown:\n  drain: 30s\n",
    );
    let in_flight = get_on_thread(gate.http, SLOW_HOST, "/work?delay=2s".into());
    gate.wait_until(
        || gate.metric("fngate_requests_in_flight") == 1.0,
        "the request in flight",
    );
    gate.terminate();
    gate.wait_until(
        || {
            std::net::TcpStream::connect(gate.http)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
        },
        "the proxy listener closed",
    );
    let dapr: std::net::SocketAddr = format!("127.0.0.1:{dapr_http}").parse().unwrap();
    let answer = request(dapr, "GET", "localhost", "/v1.0/healthz", &[], b"")
        .expect("the Dapr API still answers while a request is in flight");
    assert_eq!(answer.status, 204);
    assert_eq!(in_flight.join().unwrap().unwrap().status, 200);
    let status = gate.wait_exit();
    assert!(status.success(), "{status}");
}
