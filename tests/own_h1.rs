//! fngate's own HTTP/1 loop beside pingora-proxy: the same requests, through a fngate on
//! each path (`http1.own_loop` on and off), must give the function and the client the same
//! thing — and the metric must say which path served them.

mod common;

use common::{read_response, Echo, Fngate, Response};
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const HOST: &str = "hello.default.ofn.io";

fn catalog(echo: &Echo) -> tempfile::TempDir {
    let route = "        route:\n          rules:\n          - matches:\n            - path: {type: PathPrefix, value: /edit}\n            filters:\n            - type: RequestHeaderModifier\n              requestHeaderModifier: {set: [{name: x-added, value: by-route}], remove: [x-drop]}\n            - type: ResponseHeaderModifier\n              responseHeaderModifier: {add: [{name: x-answered, value: via-fngate}]}\n            - type: URLRewrite\n              urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /rewritten}}\n          - matches:\n            - path: {type: PathPrefix, value: /}\n";
    common::hello_catalog(route, &[echo.addr])
}

/// One request's raw bytes, and whether its answer has no body (HEAD).
struct Case {
    name: &'static str,
    raw: Vec<u8>,
    head_only: bool,
}

fn case(name: &'static str, head: &str, body: &[u8]) -> Case {
    let mut raw = head.replace("{HOST}", HOST).into_bytes();
    raw.extend_from_slice(body);
    Case {
        name,
        head_only: head.starts_with("HEAD "),
        raw,
    }
}

/// Requests for one keep-alive connection: all of them ones the own loop forwards.
fn keep_alive_cases() -> Vec<Case> {
    vec![
        case(
            "GET with hop-by-hop and forwarding headers",
            "GET /a?x=1 HTTP/1.1\r\nHost: {HOST}\r\nX-Forwarded-For: 10.0.0.1\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: secret\r\nTE: trailers\r\nConnection: keep-alive\r\nX-Kept: k\r\n\r\n",
            b"",
        ),
        case("HEAD", "HEAD /a HTTP/1.1\r\nHost: {HOST}\r\n\r\n", b""),
        case(
            "POST echoed back (a chunked answer)",
            "POST /stream HTTP/1.1\r\nHost: {HOST}\r\nx-echo-body: stream\r\nContent-Length: 11\r\n\r\n",
            b"hello world",
        ),
        case(
            "PUT with a small body",
            "PUT /put HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n",
            b"{\"a\":[1,2,3]}",
        ),
        case(
            "route filters: header edits and a path rewrite",
            "GET /edit/deeper?q=2 HTTP/1.1\r\nHost: {HOST}\r\nX-Drop: gone\r\nX-Added: client\r\n\r\n",
            b"",
        ),
        case(
            "response headers set by the function, hop-by-hop ones stripped",
            "GET /set HTTP/1.1\r\nHost: {HOST}\r\nx-echo-set-response-headers: X-Fn:one,Keep-Alive:timeout=1,Cache-Control:no-cache\r\n\r\n",
            b"",
        ),
        case("DELETE", "DELETE /item/7 HTTP/1.1\r\nHost: {HOST}\r\n\r\n", b""),
        case(
            "a large JSON answer",
            "GET /big?pad=0123456789012345678901234567890123456789012345678901234567890123456789 HTTP/1.1\r\nHost: {HOST}\r\nX-Pad: 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789\r\n\r\n",
            b"",
        ),
    ]
}

/// Requests that each take a connection of their own (they end it, or take it off the
/// own loop).
fn single_cases() -> Vec<Case> {
    let big = vec![b'z'; 100 * 1024];
    vec![
        case("no route: 404", "GET / HTTP/1.1\r\nHost: nobody.default.ofn.io\r\n\r\n", b""),
        case("HTTP/1.0", "GET /old HTTP/1.0\r\nHost: {HOST}\r\n\r\n", b""),
        case(
            "Connection: close",
            "GET /bye HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n",
            b"",
        ),
        case(
            "a body over 64 KiB (streamed by pingora-proxy)",
            &format!("POST /stream HTTP/1.1\r\nHost: {{HOST}}\r\nx-echo-body: stream\r\nContent-Length: {}\r\n\r\n", big.len()),
            &big,
        ),
        case(
            "a chunked body",
            "POST /stream HTTP/1.1\r\nHost: {HOST}\r\nx-echo-body: stream\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        ),
        case(
            "a header line without a colon",
            "GET /a HTTP/1.1\r\nHost: {HOST}\r\nNo colon here\r\n\r\n",
            b"",
        ),
        case(
            "a malformed request target",
            "GET /a b HTTP/1.1\r\nHost: {HOST}\r\n\r\n",
            b"",
        ),
    ]
}

/// What a client and the function saw, without what differs by design between two
/// processes and two moments (`Date`, the function's in-flight count).
fn comparable(r: &Response) -> (u16, Vec<(String, String)>, String) {
    let headers = r
        .headers
        .iter()
        .filter(|(n, _)| n != "date" && n != "x-echo-in-flight")
        .cloned()
        .collect();
    (
        r.status,
        headers,
        String::from_utf8_lossy(&r.body).into_owned(),
    )
}

fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    BufReader::new(s)
}

fn exchange(conn: &mut BufReader<TcpStream>, c: &Case) -> Response {
    conn.get_mut().write_all(&c.raw).unwrap();
    read_response(conn, c.head_only).unwrap_or_else(|e| panic!("{}: no answer: {e}", c.name))
}

fn path_count(gate: &Fngate, path: &str) -> u64 {
    let line = format!("fngate_http_requests_by_path_total{{path=\"{path}\"}} ");
    gate.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&line).map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0)
}

#[test]
fn both_paths_give_the_function_and_the_client_the_same() {
    let echo = Echo::start("hello", "default");
    let dir = catalog(&echo);
    let own = Fngate::start(dir.path());
    let proxy = Fngate::start_with(dir.path(), "http1:\n  own_loop: false\n");

    let answers = |gate: &Fngate| {
        let mut seen = Vec::new();
        let mut conn = connect(gate.http);
        for c in keep_alive_cases() {
            seen.push((c.name, comparable(&exchange(&mut conn, &c))));
        }
        // Pipelined: two requests in one write, answered in order.
        let cases = keep_alive_cases();
        let mut both = cases[0].raw.clone();
        both.extend_from_slice(&cases[6].raw);
        conn.get_mut().write_all(&both).unwrap();
        for c in [&cases[0], &cases[6]] {
            let r = read_response(&mut conn, false).unwrap();
            seen.push((c.name, comparable(&r)));
        }
        for c in single_cases() {
            seen.push((c.name, comparable(&exchange(&mut connect(gate.http), &c))));
        }
        seen
    };
    let by_own = answers(&own);
    let by_proxy = answers(&proxy);
    for ((name, a), (_, b)) in by_own.iter().zip(&by_proxy) {
        assert_eq!(
            a, b,
            "{name}: own loop (left) and pingora-proxy (right) differ"
        );
    }
    // The answers are the function's, not two identical failures.
    let first = &by_own[0].1;
    assert_eq!(first.0, 200);
    assert!(first.2.contains("\"x-kept\":[\"k\"]"), "{}", first.2);
    assert!(!first.2.contains("proxy-authorization"), "{}", first.2);
    assert_eq!(by_own[2].1 .2, "hello world");
    let edited = &by_own[4].1;
    assert!(
        edited.2.contains("\"path\":\"/rewritten/deeper?q=2\""),
        "{}",
        edited.2
    );
    assert!(
        edited.2.contains("\"x-added\":[\"by-route\"]"),
        "{}",
        edited.2
    );
    assert!(!edited.2.contains("x-drop"), "{}", edited.2);
    assert!(edited
        .1
        .contains(&("x-answered".into(), "via-fngate".into())));

    // Which path served what: the keep-alive connection's 10 requests, HTTP/1.0 and
    // Connection: close by the own loop; nothing by it with the loop off.
    assert!(
        path_count(&own, "own_h1") >= 12,
        "own loop served {}",
        path_count(&own, "own_h1")
    );
    assert_eq!(path_count(&proxy, "own_h1"), 0);
    assert!(path_count(&proxy, "pingora_proxy") >= 16);
    let metrics = own.metrics();
    for reason in ["local_answer", "streamed_body", "unparsed_head"] {
        assert!(
            metrics.contains(&format!(
                "fngate_http_handoffs_total{{reason=\"{reason}\"}} "
            )),
            "no hand-off counted for {reason}"
        );
    }
}
