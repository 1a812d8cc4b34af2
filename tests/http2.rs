//! HTTP/2: clients over h2c (prior knowledge) and over TLS (ALPN), gRPC functions over h2c,
//! scale from zero on h2, and hostile h2 input. Real processes: the fngate binary, the echo
//! function, and a tonic gRPC server (KEDA's external scaler service, the one proto the
//! project compiles) standing in for a gRPC function.

mod common;

use bytes::Bytes;
use common::{endpoint_slice, function_yaml, with_annotation, write_atomically, Echo, Fngate};
use fngate::activator::scaler::proto::external_scaler_server::{
    ExternalScaler, ExternalScalerServer,
};
use fngate::activator::scaler::proto::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, ScaledObjectRef,
};
use fngate::activator::scaler::ExternalScalerClient;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::{Code, Request, Response, Status};

// ---------------------------------------------------------------------------------------
// Clients

async fn h2_connect(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

struct H2Response {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

impl H2Response {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

async fn h2_request(
    send: &mut h2::client::SendRequest<Bytes>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<H2Response, h2::Error> {
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut ready = send.clone().ready().await?;
    let (resp, mut stream) = ready.send_request(req.body(()).unwrap(), body.is_empty())?;
    if !body.is_empty() {
        stream.send_data(Bytes::copy_from_slice(body), true)?;
    }
    let resp = resp.await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut recv = resp.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    Ok(H2Response {
        status,
        headers,
        body: out.into(),
    })
}

fn hello_catalog(echo: &Echo) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_atomically(
        dir.path(),
        "hello.yaml",
        &function_yaml(
            "default",
            "hello",
            "        route:\n          rules:\n          - filters:\n            - type: RequestHeaderModifier\n              requestHeaderModifier: {set: [{name: x-added, value: by-route}]}\n            - type: ResponseHeaderModifier\n              responseHeaderModifier: {add: [{name: x-answered, value: via-fngate}]}\n",
        ),
    );
    write_atomically(
        dir.path(),
        "hello-slice.yaml",
        &endpoint_slice("default", "hello", &[echo.addr], true),
    );
    dir
}

/// The echo function `hello`, its catalog, and fngate serving it with `settings` added.
fn hello_gateway(settings: &str) -> (Echo, tempfile::TempDir, Fngate) {
    let echo = Echo::start("hello", "default");
    let dir = hello_catalog(&echo);
    let gate = Fngate::start_with(dir.path(), settings);
    (echo, dir, gate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_get_the_same_routes_filters_limits_metrics_and_reloads() {
    let (_echo, dir, gate) = hello_gateway("");
    let mut h2 = h2_connect(gate.http).await;

    let r = h2_request(
        &mut h2,
        "GET",
        "http://hello.default.ofn.io/over/h2?x=1",
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = r.json();
    assert_eq!(seen["path"], "/over/h2?x=1");
    assert_eq!(seen["headers"]["x-added"][0], "by-route");
    // The function speaks HTTP/1.1: it needs a Host, taken from :authority.
    assert_eq!(seen["headers"]["host"][0], "hello.default.ofn.io");
    assert_eq!(r.headers["x-answered"], "via-fngate");

    let r = h2_request(
        &mut h2,
        "POST",
        "http://hello.default.ofn.io/upload",
        &[],
        b"a body sent over h2",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_bytes"], 19, "the body reached the function");

    let r = h2_request(&mut h2, "GET", "http://nobody.default.ofn.io/", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 404, "no route: the same answer as on HTTP/1");

    // limits.max_body_bytes holds on h2, where a body needs no Content-Length.
    drop(h2);
    drop(gate);
    let gate = Fngate::start_with(dir.path(), "limits:\n  max_body_bytes: 1024\n");
    let mut h2 = h2_connect(gate.http).await;
    let big = vec![b'x'; 64 * 1024];
    let r = h2_request(
        &mut h2,
        "POST",
        "http://hello.default.ofn.io/big",
        &[],
        &big,
    )
    .await;
    assert!(
        matches!(&r, Ok(r) if r.status == 413) || r.is_err(),
        "a body over the limit is refused: {:?}",
        r.as_ref().map(|r| r.status)
    );
    let mut h2 = h2_connect(gate.http).await;

    // A catalog edit reaches streams opened on a connection made before it.
    let second = Echo::start("second", "default");
    let before = gate.revision();
    write_atomically(
        dir.path(),
        "second.yaml",
        &format!(
            "{}---\n{}",
            function_yaml("default", "second", ""),
            endpoint_slice("default", "second", &[second.addr], true)
        ),
    );
    gate.wait_for_revision_after(before);
    let r = h2_request(&mut h2, "GET", "http://second.default.ofn.io/new", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["service"], "second");

    // Counted once the request is logged, just after its answer went out.
    let counted = || {
        gate.metrics().lines().any(|l| {
            l.starts_with("fngate_requests_total")
                && l.contains("function=\"second\"")
                && l.contains("2xx")
        })
    };
    tokio::task::block_in_place(|| {
        gate.wait_until(counted, "h2 requests to be counted like any other")
    });
}

#[test]
fn tls_clients_get_h2_by_alpn_and_http1_without_it() {
    let echo = Echo::start("hello", "default");
    let dir = hello_catalog(&echo);
    let (gate, https_port, _certs) = Fngate::start_with_tls(dir.path());
    let curl = |version_flag: &str| {
        let out = std::process::Command::new("curl")
            .args([
                "-sk",
                version_flag,
                "-w",
                "\n%{http_version}",
                "--resolve",
                &format!("hello.default.ofn.io:{https_port}:127.0.0.1"),
            ])
            .arg(format!("https://hello.default.ofn.io:{https_port}/secure"))
            .output()
            .expect("curl is installed by scripts/setup.sh");
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, version) = text.rsplit_once('\n').unwrap();
        let body: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|_| panic!("{text}"));
        (body, version.to_owned())
    };
    let (body, version) = curl("--http2");
    assert_eq!(version, "2", "ALPN picked h2");
    assert_eq!(body["path"], "/secure");
    assert_eq!(body["headers"]["x-forwarded-proto"][0], "https");
    assert_eq!(body["headers"]["x-added"][0], "by-route");
    let (body, version) = curl("--http1.1");
    assert_eq!(version, "1.1");
    assert_eq!(body["path"], "/secure");
    drop(gate);
}

// ---------------------------------------------------------------------------------------
// gRPC functions

/// A gRPC function: IsActive answers whether the name is "yes" (NOT_FOUND for "missing");
/// StreamIsActive streams three answers, then fails with a status carrying trailer
/// metadata when the name is "fail"; GetMetrics records the deadline it was given and
/// answers, or for metric "wait" waits past any deadline first.
#[derive(Clone, Default)]
struct GrpcFunction {
    deadlines: Arc<Mutex<Vec<String>>>,
}

type AnswerStream =
    Pin<Box<dyn futures::Stream<Item = Result<IsActiveResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ExternalScaler for GrpcFunction {
    async fn is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        let name = request.get_ref().name.clone();
        if name == "missing" {
            let mut status = Status::not_found("no such object");
            status
                .metadata_mut()
                .insert("x-fn-detail", "looked everywhere".parse().unwrap());
            return Err(status);
        }
        Ok(Response::new(IsActiveResponse {
            result: name == "yes",
        }))
    }

    type StreamIsActiveStream = AnswerStream;

    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<AnswerStream>, Status> {
        let fail = request.get_ref().name == "fail";
        let mut items: Vec<Result<IsActiveResponse, Status>> = (0..3)
            .map(|i| Ok(IsActiveResponse { result: i % 2 == 0 }))
            .collect();
        if fail {
            items.push(Err(Status::resource_exhausted("ran out half way")));
        }
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    async fn get_metric_spec(
        &self,
        _request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        Ok(Response::new(GetMetricSpecResponse::default()))
    }

    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        let deadline = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        self.deadlines.lock().unwrap().push(deadline);
        if request.get_ref().metric_name == "wait" {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Ok(Response::new(GetMetricsResponse::default()))
    }
}

/// A `grpc-timeout` value (gRPC over HTTP/2: digits and a unit) in milliseconds.
fn grpc_timeout_millis(value: &str) -> u64 {
    let (digits, unit) = value.split_at(value.len().saturating_sub(1));
    let n: u64 = digits
        .parse()
        .unwrap_or_else(|_| panic!("grpc-timeout {value:?}"));
    match unit {
        "H" => n * 3_600_000,
        "M" => n * 60_000,
        "S" => n * 1000,
        "m" => n,
        "u" => n / 1000,
        "n" => n / 1_000_000,
        _ => panic!("grpc-timeout {value:?}"),
    }
}

/// Serves `function` over h2c (tonic's server speaks HTTP/2 only) on `listener`.
fn serve_grpc(function: GrpcFunction, listener: std::net::TcpListener) {
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(ExternalScalerServer::new(function))
            .serve_with_incoming(futures::stream::unfold(listener, |l| async move {
                let conn = l.accept().await.map(|(stream, _)| stream);
                Some((conn, l))
            }))
            .await
            .unwrap();
    });
}

/// A gRPC client talking to fngate, with `host` as the `:authority` fngate routes on.
async fn grpc_client(gate: &Fngate, host: &str) -> ExternalScalerClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", gate.http))
        .unwrap()
        .origin(format!("http://{host}").parse().unwrap())
        .connect()
        .await
        .expect("connect to fngate");
    ExternalScalerClient::new(channel)
}

fn object(name: &str) -> ScaledObjectRef {
    ScaledObjectRef {
        name: name.into(),
        ..Default::default()
    }
}

/// An EndpointSlice whose port declares `appProtocol: kubernetes.io/h2c`.
fn h2c_slice(service: &str, addr: SocketAddr, ready: bool) -> String {
    endpoint_slice("default", service, &[addr], ready)
        .replace("    port:", "    appProtocol: kubernetes.io/h2c\n    port:")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_functions_work_end_to_end_over_h2c() {
    let function = GrpcFunction::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    serve_grpc(function.clone(), listener);
    let dir = tempfile::tempdir().unwrap();
    // One Function finds h2c in its EndpointSlice's appProtocol, the other in its own
    // annotation over a plain port: the same gRPC server behind both.
    write_atomically(
        dir.path(),
        "grpc.yaml",
        &format!(
            "{}---\n{}",
            function_yaml("default", "grpcfn", ""),
            h2c_slice("grpcfn", addr, true)
        ),
    );
    write_atomically(
        dir.path(),
        "annotated.yaml",
        &format!(
            "{}---\n{}",
            with_annotation(
                &function_yaml("default", "annotated", ""),
                "fngate.io/upstream-protocol",
                "h2c"
            ),
            endpoint_slice("default", "annotated", &[addr], true)
        ),
    );
    let gate = Fngate::start(dir.path());

    for host in ["grpcfn.default.ofn.io", "annotated.default.ofn.io"] {
        let mut client = grpc_client(&gate, host).await;
        let yes = client.is_active(object("yes")).await.unwrap();
        assert!(yes.get_ref().result, "unary call through {host}");
        assert!(
            !client
                .is_active(object("no"))
                .await
                .unwrap()
                .get_ref()
                .result
        );
    }
    let mut client = grpc_client(&gate, "grpcfn.default.ofn.io").await;

    // An error status, with the function's trailer metadata, reaches the client.
    let err = client.is_active(object("missing")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(err.message(), "no such object");
    assert_eq!(
        err.metadata().get("x-fn-detail").unwrap(),
        "looked everywhere"
    );

    // Server streaming: every message, then the status in the trailers.
    let mut stream = client
        .stream_is_active(object("ok"))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(item) = stream.message().await.unwrap() {
        got.push(item.result);
    }
    assert_eq!(got, [true, false, true]);
    let mut stream = client
        .stream_is_active(object("fail"))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    let status = loop {
        match stream.message().await {
            Ok(Some(item)) => got.push(item.result),
            Ok(None) => panic!("the stream ended without its error status"),
            Err(status) => break status,
        }
    };
    assert_eq!(got.len(), 3, "messages before the error all arrive");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.message(), "ran out half way");

    // The client's deadline travels to the function as `grpc-timeout` (a deadline long
    // enough that the call reaches the function however loaded the machine is) ...
    let mut req = Request::new(GetMetricsRequest {
        scaled_object_ref: Some(object("slow")),
        metric_name: "answer".into(),
    });
    req.set_timeout(Duration::from_secs(120));
    client.get_metrics(req).await.expect("answered at once");
    let deadlines = function.deadlines.lock().unwrap().clone();
    assert_eq!(deadlines.len(), 1, "the call reached the function");
    let millis = grpc_timeout_millis(&deadlines[0]);
    assert!(
        (1..=120_000).contains(&millis),
        "grpc-timeout forwarded: {deadlines:?}"
    );
    // ... and a call whose function never answers ends at its deadline.
    let mut req = Request::new(GetMetricsRequest {
        scaled_object_ref: Some(object("slow")),
        metric_name: "wait".into(),
    });
    req.set_timeout(Duration::from_secs(1));
    let err = client.get_metrics(req).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );

    // fngate's own errors are gRPC statuses a gRPC client can read.
    let mut lost = grpc_client(&gate, "nobody.default.ofn.io").await;
    let err = lost.is_active(object("yes")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "no route: {err:?}");
    assert!(err.message().contains("no route"), "{err:?}");

    // And the connection is still good for more calls after all that.
    assert!(
        client
            .is_active(object("yes"))
            .await
            .unwrap()
            .get_ref()
            .result
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_to_a_function_at_zero_waits_and_is_released_when_it_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    // Scaled to zero: listed, not ready, and nothing listens at its address yet.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    write_atomically(
        dir.path(),
        "fn.yaml",
        &function_yaml("default", "coldgrpc", ""),
    );
    write_atomically(
        dir.path(),
        "slice.yaml",
        &h2c_slice("coldgrpc", addr, false),
    );
    let gate = Fngate::start(dir.path());
    let mut client = grpc_client(&gate, "coldgrpc.default.ofn.io").await;
    let call = tokio::spawn(async move { client.is_active(object("yes")).await });
    gate.wait_until(
        || gate.metric_opt("fngate_activator_waiting{") >= Some(1.0),
        "the call to be held",
    );
    assert!(!call.is_finished());

    // The platform starts the function and its endpoint turns ready.
    let listener = std::net::TcpListener::bind(addr).unwrap();
    serve_grpc(GrpcFunction::default(), listener);
    write_atomically(dir.path(), "slice.yaml", &h2c_slice("coldgrpc", addr, true));
    let answer = call.await.unwrap().expect("the held call is answered");
    assert!(answer.get_ref().result);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_that_resets_a_held_stream_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    common::cold_function(dir.path(), "cold");
    // A hold longer than the test waits: only the reset can end this one.
    let gate = Fngate::start_with(dir.path(), "activator:\n  hold_timeout: 300s\n");
    let mut h2 = h2_connect(gate.http).await;
    let mut ready = h2.clone().ready().await.unwrap();
    // A request with a body still to come: fngate must not read it while holding, so
    // only the stream's reset can tell it the client left.
    let req = http::Request::post("http://cold.default.ofn.io/wait")
        .body(())
        .unwrap();
    let (response, body) = ready.send_request(req, false).unwrap();
    let waiting = |gate: &Fngate| gate.metric_opt("fngate_activator_waiting{");
    tokio::task::block_in_place(|| {
        gate.wait_until(|| waiting(&gate) >= Some(1.0), "the request to be held")
    });
    // Dropping the response future resets the stream (RST_STREAM CANCEL); the connection
    // stays open.
    drop((response, body));
    tokio::task::block_in_place(|| {
        gate.wait_until(|| waiting(&gate) == Some(0.0), "the held slot to be freed")
    });
    let r = h2_request(&mut h2, "GET", "http://nobody.default.ofn.io/", &[], b"")
        .await
        .expect("the same connection still works");
    assert_eq!(r.status, 404);
}

// ---------------------------------------------------------------------------------------
// Hostile input, written frame by frame.

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// A literal header field without indexing, new name (RFC 7541 §6.2.2), no Huffman.
fn hpack_literal(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00];
    hpack_int(&mut out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(&mut out, 0, 7, value.len());
    out.extend_from_slice(value);
    out
}

fn request_block(host: &str, path: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", path),
        (":authority", host),
    ] {
        b.extend(hpack_literal(n, v.as_bytes()));
    }
    b
}

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

/// Reads frames until the server closes the connection or `done` says enough.
async fn read_frames(
    stream: &mut tokio::net::tcp::OwnedReadHalf,
    mut done: impl FnMut(&Frame) -> bool,
) -> Vec<Frame> {
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while buf.len() >= 9 {
            let len = (buf[0] as usize) << 16 | (buf[1] as usize) << 8 | buf[2] as usize;
            if buf.len() < 9 + len {
                break;
            }
            let f = Frame {
                kind: buf[3],
                flags: buf[4],
                stream: u32::from_be_bytes(buf[5..9].try_into().unwrap()) & 0x7fff_ffff,
                payload: buf[9..9 + len].to_vec(),
            };
            buf.drain(..9 + len);
            let stop = done(&f);
            frames.push(f);
            if stop {
                return frames;
            }
        }
        match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return frames,
        }
    }
}

/// A raw connection that has sent the preface and an empty SETTINGS frame.
async fn raw_h2(
    addr: SocketAddr,
) -> (
    tokio::net::tcp::OwnedReadHalf,
    tokio::net::tcp::OwnedWriteHalf,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (read, mut write) = tcp.into_split();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    write.write_all(&hello).await.unwrap();
    (read, write)
}

/// After an attack, the same process still answers a well-behaved client.
async fn still_serving(gate: &Fngate) {
    let mut h2 = h2_connect(gate.http).await;
    let r = h2_request(
        &mut h2,
        "GET",
        "http://hello.default.ofn.io/after",
        &[],
        b"",
    )
    .await
    .expect("a fresh connection is served");
    assert_eq!(r.status, 200);
    let h1 = tokio::task::block_in_place(|| gate.get("hello.default.ofn.io", "/after-h1"));
    assert_eq!(h1.status, 200, "and HTTP/1.1 on the same listener");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_gets_goaway_and_the_gateway_keeps_serving() {
    const STREAMS: u32 = 2000;
    let (echo, _dir, gate) = hello_gateway("");
    let (mut read, mut write) = raw_h2(gate.http).await;
    // CVE-2023-44487: open a stream and cancel it at once, as fast as the socket takes it.
    let mut attack = Vec::new();
    for i in 0..STREAMS {
        let id = 2 * i + 1;
        attack.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &request_block("hello.default.ofn.io", "/reset"),
        ));
        attack.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
    }
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&attack).await;
        write
    });
    let frames = read_frames(&mut read, |f| f.kind == GOAWAY).await;
    let goaway = frames
        .iter()
        .find(|f| f.kind == GOAWAY)
        .expect("the attacking connection is sent GOAWAY");
    assert_eq!(goaway.error_code(), 0xb, "ENHANCE_YOUR_CALM");
    drop(writer.await);
    // Counted once fngate is done with every stream of the attack (answered or dropped),
    // and the function's log has caught up with a request sent after that: a stream that
    // was answered was logged before its answer.
    tokio::task::block_in_place(|| {
        gate.wait_until(
            || gate.metric("fngate_requests_in_flight") == 0.0,
            "fngate done with the attack's streams",
        )
    });
    still_serving(&gate).await;
    tokio::task::block_in_place(|| {
        gate.wait_until(
            || echo.requests_seen().iter().any(|l| l.contains("/after-h1")),
            "the function's log to catch up",
        )
    });
    let forwarded = echo
        .requests_seen()
        .iter()
        .filter(|l| l.contains("/reset"))
        .count();
    assert!(
        forwarded < STREAMS as usize,
        "not every cancelled stream was worked on ({forwarded} reached the function)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off_and_the_gateway_keeps_serving() {
    let (_echo, _dir, gate) = hello_gateway("");
    let (mut read, mut write) = raw_h2(gate.http).await;
    // CVE-2024-27316 style: a header block that never ends, 16 KiB at a time, up to 64 MiB.
    let writer = tokio::spawn(async move {
        let head = frame(
            HEADERS,
            END_STREAM,
            1,
            &request_block("hello.default.ofn.io", "/"),
        );
        if write.write_all(&head).await.is_err() {
            return 0usize;
        }
        let mut sent = 0;
        for i in 0..4096 {
            let block = hpack_literal(&format!("x-flood-{i}"), &[b'a'; 16_000]);
            if write
                .write_all(&frame(CONTINUATION, 0, 1, &block))
                .await
                .is_err()
            {
                break;
            }
            sent += 1;
        }
        sent
    });
    let frames = read_frames(&mut read, |f| f.kind == GOAWAY).await;
    let goaway = frames
        .iter()
        .find(|f| f.kind == GOAWAY)
        .expect("the flooding connection is sent GOAWAY");
    assert_ne!(goaway.error_code(), 0, "GOAWAY names an error");
    drop(read);
    let sent = writer.await.unwrap();
    assert!(sent < 4096, "the connection was closed under the flood");
    still_serving(&gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_header_list_gets_431_and_the_connection_stays_usable() {
    let (echo, _dir, gate) = hello_gateway("limits:\n  max_header_bytes: 8192\n");
    let mut h2 = h2_connect(gate.http).await;
    let big = "v".repeat(12_000);
    let r = h2_request(
        &mut h2,
        "GET",
        "http://hello.default.ofn.io/big-head",
        &[("x-big", &big)],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 431);
    assert!(
        !echo.requests_seen().iter().any(|l| l.contains("/big-head")),
        "the function never saw it"
    );
    let r = h2_request(
        &mut h2,
        "GET",
        "http://hello.default.ofn.io/small",
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "the same connection goes on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_the_concurrency_limit_are_refused() {
    const LIMIT: u32 = 8;
    let (_echo, _dir, gate) =
        hello_gateway(&format!("http2:\n  max_concurrent_streams: {LIMIT}\n"));
    let (mut read, mut write) = raw_h2(gate.http).await;
    // The limit binds once the client acknowledged the server's SETTINGS.
    read_frames(&mut read, |f| f.kind == SETTINGS).await;
    write
        .write_all(&frame(SETTINGS, 0x1, 0, &[]))
        .await
        .unwrap();
    // Open LIMIT + 1 requests whose bodies never come: every one stays open.
    let mut burst = Vec::new();
    for i in 0..=LIMIT {
        burst.extend(frame(
            HEADERS,
            END_HEADERS,
            2 * i + 1,
            &request_block("hello.default.ofn.io", "/open"),
        ));
    }
    write.write_all(&burst).await.unwrap();
    let last = 2 * LIMIT + 1;
    let frames = read_frames(&mut read, |f| f.kind == RST_STREAM && f.stream == last).await;
    let resets: Vec<&Frame> = frames.iter().filter(|f| f.kind == RST_STREAM).collect();
    assert_eq!(resets.len(), 1, "only the stream over the limit is reset");
    assert_eq!(resets[0].stream, last);
    assert_eq!(resets[0].error_code(), 0x7, "REFUSED_STREAM");
    drop(write);
    still_serving(&gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2_connection_is_closed_after_http2_idle_timeout() {
    let (echo, _dir, gate) = hello_gateway("http2:\n  idle_timeout: 300ms\n");
    // A client that opened a connection, made one request, and went quiet.
    let (mut read, mut write) = raw_h2(gate.http).await;
    let request = frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request_block("hello.default.ofn.io", "/once"),
    );
    write.write_all(&request).await.unwrap();
    let mut closed = false;
    let mut chunk = vec![0u8; 64 * 1024];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(20), read.read(&mut chunk)).await
    {
        if n == 0 {
            closed = true;
            break;
        }
    }
    assert!(closed, "fngate closed the idle connection");
    tokio::task::block_in_place(|| {
        gate.wait_until(
            || echo.requests_seen().iter().any(|l| l.contains("/once")),
            "the request before it to reach the function",
        )
    });
    still_serving(&gate).await;
}

/// What fngate answers a gRPC client itself (no route, a function that never gets ready, an
/// unreachable function) is gRPC's Trailers-Only form: one HEADERS frame with END_STREAM.
/// tonic also reads a head without END_STREAM followed by an empty DATA frame; grpc-go and
/// C-core (grpcio) take that as a protocol error and lose the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fngates_own_grpc_answers_are_trailers_only_and_read_right_by_grpcio() {
    let echo = Echo::start("hello", "default");
    let dir = hello_catalog(&echo);
    // `cold`: listed, never ready; `down`: ready, but nothing listens there.
    let nowhere: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    for (name, ready) in [("cold", false), ("down", true)] {
        write_atomically(
            dir.path(),
            &format!("{name}.yaml"),
            &function_yaml("default", name, ""),
        );
        write_atomically(
            dir.path(),
            &format!("{name}-slice.yaml"),
            &endpoint_slice("default", name, &[nowhere], ready),
        );
    }
    let gate = Fngate::start_with(dir.path(), "activator:\n  hold_timeout: 1s\n");

    // On the wire: the answer to an unrouted gRPC call is exactly one frame.
    let (mut read, mut write) = raw_h2(gate.http).await;
    let mut block = Vec::new();
    for (n, v) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/externalscaler.ExternalScaler/IsActive"),
        (":authority", "nobody.default.ofn.io"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        block.extend(hpack_literal(n, v.as_bytes()));
    }
    let mut request = frame(HEADERS, END_HEADERS, 1, &block);
    request.extend(frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 0]));
    write.write_all(&request).await.unwrap();
    let frames = read_frames(&mut read, |f| {
        f.stream == 1 && (f.flags & END_STREAM != 0 || f.kind == RST_STREAM)
    })
    .await;
    let answer: Vec<(u8, u8)> = frames
        .iter()
        .filter(|f| f.stream == 1)
        .map(|f| (f.kind, f.flags & END_STREAM))
        .collect();
    assert_eq!(
        answer,
        vec![(HEADERS, END_STREAM)],
        "one HEADERS frame with END_STREAM, (kind, END_STREAM) per frame"
    );

    // And as the C-core client reads it: the status and message fngate meant.
    let python = tokio::task::block_in_place(common::python_venv);
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(&python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/python/grpc_status_check.py"
            ))
            .arg(gate.http.to_string())
            .args([
                "nobody.default.ofn.io",
                "cold.default.ofn.io",
                "down.default.ofn.io",
            ])
            .output()
            .unwrap()
    });
    assert!(
        out.status.success(),
        "grpc_status_check.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let got: Vec<(String, String)> = results
        .iter()
        .map(|r| {
            (
                r["code"].as_str().unwrap().to_owned(),
                r["details"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(got[0].0, "UNIMPLEMENTED", "no route: {got:?}");
    assert!(got[0].1.contains("no route"), "{got:?}");
    assert_eq!(got[1].0, "UNAVAILABLE", "hold timeout: {got:?}");
    assert!(
        got[1]
            .1
            .contains("no endpoint of the function became ready"),
        "{got:?}"
    );
    assert_eq!(got[2].0, "UNAVAILABLE", "unreachable function: {got:?}");
}
