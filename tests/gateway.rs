//! The fngate binary against real HTTP functions (the `echo` example) on loopback:
//! proxying, errors, limits, streaming, upgrades, failover, TLS and metrics.

mod common;

use common::{
    endpoint_slice, function_yaml, request, with_annotation, Echo, Fngate, KeepAliveClient,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn catalog_with_hello(echo: &Echo) -> tempfile::TempDir {
    common::hello_catalog("", &[echo.addr])
}

#[test]
fn proxies_by_host_sets_forwarded_headers_and_strips_hop_by_hop() {
    let echo = Echo::start("hello", "default");
    let dir = catalog_with_hello(&echo);
    let gate = Fngate::start(dir.path());

    let r = request(
        gate.http,
        "GET",
        "hello.default.ofn.io:8080",
        "/some/path?x=1",
        &[
            ("X-Forwarded-For", "10.1.1.1"),
            ("Connection", "close, X-Secret"),
            ("X-Secret", "s"),
            ("Keep-Alive", "timeout=5"),
            ("X-Kept", "k"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let seen = r.json();
    assert_eq!(seen["path"], "/some/path?x=1");
    assert_eq!(
        seen["host"], "hello.default.ofn.io:8080",
        "Host passes through unchanged"
    );
    assert_eq!(
        r.seen_header("x-forwarded-for").unwrap(),
        "10.1.1.1, 127.0.0.1"
    );
    assert_eq!(r.seen_header("x-forwarded-proto").unwrap(), "http");
    assert_eq!(
        r.seen_header("x-forwarded-host").unwrap(),
        "hello.default.ofn.io:8080"
    );
    assert_eq!(r.seen_header("x-kept").unwrap(), "k");
    assert_eq!(
        r.seen_header("x-secret"),
        None,
        "headers named in Connection are hop-by-hop"
    );
    assert_eq!(r.seen_header("keep-alive"), None);

    assert_eq!(gate.get("hello.default.svc.cluster.local", "/").status, 200);
    assert_eq!(gate.get("nobody.default.ofn.io", "/").status, 404);
    let head = request(gate.http, "HEAD", "hello.default.ofn.io", "/", &[], b"").unwrap();
    assert_eq!(head.status, 200);
}

#[test]
fn missing_service_is_500_and_a_function_that_never_gets_ready_is_504_after_its_hold_timeout() {
    let echo = Echo::start("hello", "default");
    let dir = catalog_with_hello(&echo);
    std::fs::write(
        dir.path().join("ghost.yaml"),
        function_yaml("default", "ghost", "        route:\n          rules:\n          - backendRefs: [{name: no-such-service, port: 80}]\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("cold.yaml"),
        with_annotation(
            &function_yaml("default", "cold", ""),
            "fngate.io/hold-timeout",
            "200ms",
        ),
    )
    .unwrap();
    // Listed, not ready, and nothing listening there (so the activator's probe fails too).
    let nowhere: std::net::SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    std::fs::write(
        dir.path().join("cold-slice.yaml"),
        endpoint_slice("default", "cold", &[nowhere], false),
    )
    .unwrap();
    let gate = Fngate::start(dir.path());
    assert_eq!(gate.get("ghost.default.ofn.io", "/").status, 500);
    assert_eq!(gate.get("cold.default.ofn.io", "/").status, 504);
    assert_eq!(
        gate.get("hello.default.ofn.io", "/").status,
        200,
        "other functions are unaffected"
    );
    assert_eq!(
        gate.metric("fngate_activator_timeouts_total{function=\"cold\",namespace=\"default\"}"),
        1.0
    );
}

#[test]
fn a_refused_endpoint_is_skipped_for_the_next_one() {
    let echo = Echo::start("hello", "default");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hello.yaml"),
        function_yaml("default", "hello", ""),
    )
    .unwrap();
    // 127.0.0.2 is loopback too, but nothing listens there on the echo's port.
    let dead: std::net::SocketAddr = format!("127.0.0.2:{}", echo.addr.port()).parse().unwrap();
    std::fs::write(
        dir.path().join("slice.yaml"),
        endpoint_slice("default", "hello", &[dead, echo.addr], true),
    )
    .unwrap();
    let gate = Fngate::start(dir.path());
    for _ in 0..10 {
        assert_eq!(gate.get("hello.default.ofn.io", "/").status, 200);
    }
    let metrics = gate.metrics();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("fngate_upstream_connect_errors_total{"))
        .expect("connect errors counted");
    assert!(line.contains("function=\"hello\""), "{line}");
}

#[test]
fn bodies_stream_both_ways_without_buffering() {
    let echo = Echo::start("hello", "default");
    let dir = catalog_with_hello(&echo);
    let gate = Fngate::start(dir.path());
    let mut s = TcpStream::connect(gate.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: hello.default.ofn.io\r\nTransfer-Encoding: chunked\r\nx-echo-body: stream\r\n\r\n5\r\nfirst\r\n").unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.contains(" 200 "), "{status}");
    loop {
        let mut l = String::new();
        reader.read_line(&mut l).unwrap();
        if l.trim().is_empty() {
            break;
        }
    }
    // The first chunk comes back while the request body is still open: nothing in between
    // waited for the whole body.
    let mut size = String::new();
    reader.read_line(&mut size).unwrap();
    let mut chunk = vec![0; usize::from_str_radix(size.trim(), 16).unwrap() + 2];
    reader.read_exact(&mut chunk).unwrap();
    assert_eq!(&chunk[..chunk.len() - 2], b"first");
    s.write_all(b"6\r\nsecond\r\n0\r\n\r\n").unwrap();
    let mut rest = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        let mut c = vec![0; n + 2];
        reader.read_exact(&mut c).unwrap();
        if n == 0 {
            break;
        }
        rest.extend_from_slice(&c[..n]);
    }
    assert_eq!(rest, b"second");
}

#[test]
fn oversized_headers_get_431_and_oversized_bodies_413() {
    let echo = Echo::start("hello", "default");
    let dir = catalog_with_hello(&echo);
    let gate = Fngate::start_with(
        dir.path(),
        "limits:\n  max_header_bytes: 2048\n  max_body_bytes: 1000\n",
    );
    let big = "x".repeat(4096);
    let r = request(
        gate.http,
        "GET",
        "hello.default.ofn.io",
        "/",
        &[("X-Big", &big)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 431);
    let r = request(
        gate.http,
        "POST",
        "hello.default.ofn.io",
        "/",
        &[],
        &[b'a'; 2000],
    )
    .unwrap();
    assert_eq!(r.status, 413);
    // Chunked bodies have no length up front; they are cut off when they pass the limit.
    let mut s = TcpStream::connect(gate.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: hello.default.ofn.io\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 600, "b".repeat(600));
    let _ = s.write_all(chunk.as_bytes());
    let _ = s.write_all(chunk.as_bytes());
    let _ = s.write_all(b"0\r\n\r\n");
    let r = common::read_response(&mut BufReader::new(s), false).unwrap();
    assert_eq!(r.status, 413);
    let ok = request(
        gate.http,
        "POST",
        "hello.default.ofn.io",
        "/",
        &[],
        &[b'a'; 900],
    )
    .unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["body_bytes"], 900);
}

#[test]
fn websocket_upgrade_passes_through() {
    let echo = Echo::start("hello", "default");
    let dir = catalog_with_hello(&echo);
    let gate = Fngate::start(dir.path());
    let mut s = TcpStream::connect(gate.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: hello.default.ofn.io\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.contains(" 101 "), "{status}");
    let mut upgrade_header = false;
    loop {
        let mut l = String::new();
        reader.read_line(&mut l).unwrap();
        if l.to_ascii_lowercase().starts_with("upgrade: websocket") {
            upgrade_header = true;
        }
        if l.trim().is_empty() {
            break;
        }
    }
    assert!(upgrade_header, "Upgrade header kept on the 101");
    s.write_all(b"ping over the upgraded connection").unwrap();
    let mut buf = vec![0; 33];
    reader.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping over the upgraded connection");
}

#[test]
fn route_timeout_answers_504_when_the_function_is_slower() {
    let echo = Echo::start("slow", "default");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("slow.yaml"),
        function_yaml(
            "default",
            "slow",
            "        route:\n          rules:\n          - timeouts: {request: 300ms}\n",
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("slice.yaml"),
        endpoint_slice("default", "slow", &[echo.addr], true),
    )
    .unwrap();
    let gate = Fngate::start(dir.path());
    assert_eq!(gate.get("slow.default.ofn.io", "/?delay=3s").status, 504);
    assert_eq!(gate.get("slow.default.ofn.io", "/").status, 200);
}

#[test]
fn metrics_count_requests_by_function_and_status_class() {
    let echo = Echo::start("hello", "default");
    let dir = catalog_with_hello(&echo);
    let gate = Fngate::start(dir.path());
    let value = |m: &str, series: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let no_route = "fngate_requests_total{code=\"4xx\",function=\"\",namespace=\"\"}";
    let no_route_before = value(&gate.metrics(), no_route);
    let mut client = KeepAliveClient::connect(gate.http).unwrap();
    for _ in 0..5 {
        assert_eq!(client.get("hello.default.ofn.io", "/").unwrap().status, 200);
    }
    assert_eq!(gate.get("nobody.example", "/").status, 404);
    // A request is counted in its logging phase, which may run just after the client has
    // its response; wait for the count rather than racing it.
    let counted = |m: &str| {
        value(
            m,
            "fngate_requests_total{code=\"2xx\",function=\"hello\",namespace=\"default\"}",
        ) == 5
            && value(m, no_route) == no_route_before + 1
    };
    gate.wait_until(|| counted(&gate.metrics()), "requests counted in /metrics");
    let m = gate.metrics();
    assert!(
        m.contains(
            "fngate_request_duration_seconds_count{function=\"hello\",namespace=\"default\"} 5"
        ),
        "{m}"
    );
    assert!(m.contains("fngate_functions 1"), "{m}");
    assert!(m.contains("fngate_config_revision 1"), "{m}");
    assert!(m.contains("fngate_build_info{version="), "{m}");
    assert!(
        m.contains("fngate_reloads_total{outcome=\"success\"} 1"),
        "{m}"
    );
}

#[test]
fn tls_is_terminated_on_the_https_listener() {
    let echo = Echo::start("hello", "default");
    let dir = catalog_with_hello(&echo);
    let (gate, https_port, _certs) = Fngate::start_with_tls(dir.path());
    let out = std::process::Command::new("curl")
        .args([
            "-sk",
            "--resolve",
            &format!("hello.default.ofn.io:{https_port}:127.0.0.1"),
        ])
        .arg(format!("https://hello.default.ofn.io:{https_port}/secure"))
        .output()
        .expect("curl is installed by scripts/setup.sh");
    let body: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(body["path"], "/secure");
    assert_eq!(body["headers"]["x-forwarded-proto"][0], "https");
    drop(gate);
}

#[test]
fn mirrored_requests_carry_the_body_and_do_not_change_the_answer() {
    let main = Echo::start("main", "default");
    let shadow = Echo::start("shadow", "default");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("m.yaml"),
        function_yaml(
            "default",
            "m",
            "        route:\n          rules:\n          - filters:\n            - type: RequestMirror\n              requestMirror: {backendRef: {name: shadow, port: 8080}}\n            backendRefs: [{name: main, port: 8080}]\n",
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("main.yaml"),
        endpoint_slice("default", "main", &[main.addr], true),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("shadow.yaml"),
        endpoint_slice("default", "shadow", &[shadow.addr], true),
    )
    .unwrap();
    let gate = Fngate::start(dir.path());
    let r = request(
        gate.http,
        "POST",
        "m.default.ofn.io",
        "/orders",
        &[],
        b"hello world",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["service"], "main");
    assert_eq!(r.json()["body_bytes"], 11);
    let seen = |want: &str| {
        let lines = shadow.requests_seen();
        assert!(lines.len() < 50, "{lines:?}");
        lines.iter().any(|l| l == want)
    };
    gate.wait_until(
        || seen("REQ POST /orders bytes=11"),
        "the mirror to get the body",
    );
    let r = request(gate.http, "GET", "m.default.ofn.io", "/list", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    gate.wait_until(
        || seen("REQ GET /list bytes=0"),
        "the mirror to get the GET",
    );
}

/// Found by the `http_head` fuzzer: pingora passed `POST host.nameGET /x HTTP/1.1` (a
/// target in no form: no leading `/`, no scheme) and fngate forwarded
/// `POST host.nameGET%20/x`, a request line the function could not parse. Such targets
/// get 400 and never reach the function; the valid forms still pass, and a space inside
/// an origin-form target is forwarded escaped (pingora's leniency, as nginx's).
#[test]
fn a_request_target_that_is_not_one_gets_400_and_is_not_forwarded() {
    let echo = Echo::start("hello", "default");
    let dir = catalog_with_hello(&echo);
    let gate = Fngate::start(dir.path());
    let raw = |line: &str| {
        let mut s = TcpStream::connect(gate.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(
            format!("{line}\r\nHost: hello.default.ofn.io\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        common::read_response(&mut BufReader::new(s), false).unwrap()
    };
    for bad in [
        "POST hello.default.ofn.ioGET /fuzz-end HTTP/1.1",
        "GET hello HTTP/1.1",
        "GET * HTTP/1.1",
    ] {
        assert_eq!(raw(bad).status, 400, "{bad}");
    }
    for good in [
        "GET /ok HTTP/1.1",
        "GET http://hello.default.ofn.io/abs HTTP/1.1",
    ] {
        assert_eq!(raw(good).status, 200, "{good}");
    }
    // A valid target no route matches.
    assert_eq!(raw("OPTIONS * HTTP/1.1").status, 404);
    assert_eq!(raw("GET /a b HTTP/1.1").json()["path"], "/a%20b");
    // Refused by fngate, not passed on for the function to refuse: the function's series
    // count the three it answered (counted once each is logged, after its answer) and
    // no 4xx.
    gate.wait_until(
        || {
            gate.metric_opt(
                "fngate_requests_total{code=\"2xx\",function=\"hello\",namespace=\"default\"}",
            ) == Some(3.0)
        },
        "the three answered requests counted",
    );
    assert_eq!(
        gate.metric_or_zero(
            "fngate_requests_total{code=\"4xx\",function=\"hello\",namespace=\"default\"}"
        ),
        0.0
    );
    let seen = echo.requests_seen();
    assert!(
        seen.iter()
            .all(|r| !r.contains("fuzz-end") && !r.contains("hello ")),
        "{seen:?}"
    );
}

/// Found by the `http_head` fuzzer: a request whose target pingora had to escape
/// (`/x x`), followed on the same connection by the next request before its answer, was
/// forwarded to the function and then answered 400 — the function's answer lost. With
/// HTTP/1.1 pipelining (RFC 9112 §9.3.2) every pipelined request gets its answer, in order.
#[test]
fn pipelined_requests_are_answered_in_order_an_escaped_target_included() {
    let echo = Echo::start("hello", "default");
    let dir = catalog_with_hello(&echo);
    let gate = Fngate::start(dir.path());
    let mut s = TcpStream::connect(gate.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let host = "Host: hello.default.ofn.io";
    s.write_all(
        format!(
            "POST /x x HTTP/1.1\r\n{host}\r\n\r\nGET /two HTTP/1.1\r\n{host}\r\n\r\nGET /three HTTP/1.1\r\n{host}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    for path in ["/x%20x", "/two", "/three"] {
        let r = common::read_response(&mut reader, false).unwrap();
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.json()["path"], path);
    }
}
