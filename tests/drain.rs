//! Graceful drain on SIGTERM through the real binary: what is in flight finishes, nothing
//! new gets in, held requests are handed back, event streams stop where a restarted
//! process resumes, and the process exits 0.

mod common;

use common::*;
use std::io::Read;

const SLOW_HOST: &str = "slow.default.ofn.io";
const COLD_HOST: &str = "cold.default.ofn.io";
const COLD_WAITING: &str = "fngate_activator_waiting{function=\"cold\",namespace=\"default\"}";

/// Function `slow`, whose requests wait until the test releases them.
fn slow_function(dir: &std::path::Path) -> GatedFunction {
    let function = GatedFunction::start();
    write_atomically(dir, "fn.yaml", &function_yaml("default", "slow", ""));
    write_atomically(
        dir,
        "slice.yaml",
        &endpoint_slice("default", "slow", &[function.addr], true),
    );
    function
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
    let function = slow_function(dir.path());
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

    // These wait at the function until the test releases them.
    let n = 4;
    let in_flight: Vec<_> = (0..n)
        .map(|i| get_on_thread(gate.http, SLOW_HOST, format!("/hold/{i}")))
        .collect();
    gate.wait_until(
        || gate.metric("fngate_requests_in_flight") == n as f64 && function.arrived() == n + 1,
        "every request in flight at the function",
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
    function.release();
    for (i, client) in in_flight.into_iter().enumerate() {
        let response = client
            .join()
            .unwrap()
            .expect("an answer, not a cut connection");
        assert_eq!(response.status, 200, "request {i}");
        assert_eq!(
            response.json()["path"],
            format!("/hold/{i}"),
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
    gate.wait_until(
        || gate.metric_opt(COLD_WAITING) == Some(1.0),
        "the request held",
    );
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
    gate.wait_until(
        || gate.metric_opt(COLD_WAITING) == Some(1.0),
        "the request held",
    );
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
    // The function of a request in flight saves state and publishes before it answers:
    // the Dapr API outlives the proxied requests.
    let redis = common::redis_server::Redis::start();
    let subject = unique("fngate-drain.");
    let stream_name = unique("FNGATE_DRAIN_").replace('.', "_");
    let dir = tempfile::tempdir().unwrap();
    let function = slow_function(dir.path());
    write_atomically(
        dir.path(),
        "fn.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: slow-token\n  namespace: default\nstringData:\n  token: tok-slow\n---\n{}    annotations:\n      dapr.io/api-token-secret: slow-token\n    states:\n      cart:\n        spec:\n          type: state.redis\n          version: v1\n          metadata:\n            - name: redisHost\n              value: {}\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: bus\n  namespace: default\nspec:\n  type: pubsub.jetstream\n  version: v1\n  metadata:\n    - name: natsURL\n      value: nats://127.0.0.1:4222\n",
            function_yaml("default", "slow", ""),
            redis.addr()
        ),
    );
    let nats = tokio::runtime::Runtime::new().unwrap();
    let stream = nats.block_on(common::jetstream_stream(&stream_name, &subject));
    let dapr_http = free_port();
    let mut gate = Fngate::start_full(
        dir.path(),
        &format!("  dapr_http: 127.0.0.1:{dapr_http}\n"),
        "shutdown:\n  drain: 30s\n",
    );
    let in_flight = get_on_thread(gate.http, SLOW_HOST, "/hold".into());
    gate.wait_until(
        || gate.metric("fngate_requests_in_flight") == 1.0 && function.arrived() == 1,
        "the request in flight at the function",
    );
    gate.terminate();
    gate.wait_until(
        || {
            std::net::TcpStream::connect(gate.http)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
        },
        "the proxy listener closed",
    );
    assert_eq!(gate.metric("fngate_draining"), 1.0);
    let dapr: std::net::SocketAddr = format!("127.0.0.1:{dapr_http}").parse().unwrap();
    let token = [("dapr-api-token", "tok-slow")];
    let saved = request(
        dapr,
        "POST",
        "localhost",
        "/v1.0/state/cart",
        &token,
        br#"[{"key":"during-drain","value":"kept"}]"#,
    )
    .expect("the Dapr API still answers while a request is in flight");
    assert_eq!(
        saved.status,
        204,
        "{}",
        String::from_utf8_lossy(&saved.body)
    );
    let read = request(
        dapr,
        "GET",
        "localhost",
        "/v1.0/state/cart/during-drain",
        &token,
        b"",
    )
    .unwrap();
    assert_eq!((read.status, &read.body[..]), (200, &br#""kept""#[..]));
    let published = request(
        dapr,
        "POST",
        "localhost",
        &format!("/v1.0/publish/bus/{subject}"),
        &token,
        b"published while draining",
    )
    .unwrap();
    assert_eq!(
        published.status,
        204,
        "{}",
        String::from_utf8_lossy(&published.body)
    );
    let message = nats.block_on(async {
        stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .unwrap()
    });
    let event: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(event["data"], "published while draining");

    // The function answers: the request in flight comes back whole, and then fngate exits.
    function.release();
    let answer = in_flight.join().unwrap().unwrap();
    assert_eq!(
        (answer.status, answer.json()["path"].as_str()),
        (200, Some("/hold"))
    );
    let status = gate.wait_exit();
    assert!(status.success(), "{status}");
    nats.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect("127.0.0.1:4222").await.unwrap());
        let _ = js.delete_stream(&stream_name).await;
    });
}
