//! Raw bytes as one client connection to fngate's HTTP listener (the real pingora listener,
//! in this process), proxying to a strict HTTP/1 backend (hyper): never a panic, every
//! answer a well-formed HTTP/1.1 status line, and never an ambiguous forward — the backend
//! parses everything fngate sends it, and gets exactly as many requests as the client got
//! answers from it.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Sent after every input: its answer ends the connection.
const SENTINEL: &[u8] =
    b"GET /fuzz-end HTTP/1.1\r\nHost: f.default.ofn.io\r\nConnection: close\r\n\r\n";

static BACKEND_REQUESTS: AtomicUsize = AtomicUsize::new(0);
/// Requests whose head the backend has and whose body it is still reading.
static BACKEND_OPEN: AtomicUsize = AtomicUsize::new(0);
static BACKEND_PARSE_ERRORS: AtomicUsize = AtomicUsize::new(0);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A backend that answers every request with its body length and a marker header.
fn start_backend() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        |req: hyper::Request<hyper::body::Incoming>| async move {
                            use http_body_util::BodyExt;
                            BACKEND_OPEN.fetch_add(1, Ordering::SeqCst);
                            let open = OpenRequest;
                            let n = req.into_body().collect().await.map(|b| b.to_bytes().len());
                            // Counted once whole: a body cut by the client is not a forward.
                            if n.is_ok() {
                                BACKEND_REQUESTS.fetch_add(1, Ordering::SeqCst);
                            }
                            drop(open);
                            let body = format!("{n:?}");
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .header("x-fuzz-backend", "1")
                                    .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                                    .unwrap(),
                            )
                        },
                    );
                    let served = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                    if let Err(e) = served {
                        if e.is_parse() {
                            BACKEND_PARSE_ERRORS.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
    });
    addr
}

/// Marks a request the backend is reading; dropped (also when hyper drops the future of a
/// connection that broke) once it is done with it.
struct OpenRequest;

impl Drop for OpenRequest {
    fn drop(&mut self) {
        BACKEND_OPEN.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Gateway {
    http: SocketAddr,
    admin: SocketAddr,
    thread: std::thread::JoinHandle<()>,
}

/// fngate itself, serving Function `f` (host `f.default.ofn.io`) backed by the backend.
fn fngate() -> &'static Gateway {
    static GATEWAY: OnceLock<Gateway> = OnceLock::new();
    let gateway = GATEWAY.get_or_init(|| {
        let backend = start_backend();
        let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
        let catalog = dir.path().join("catalog");
        std::fs::create_dir(&catalog).unwrap();
        std::fs::write(
            catalog.join("f.yaml"),
            format!(
                "apiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata:\n  name: f\n  namespace: default\nspec:\n  serving:\n    triggers:\n      http:\n        port: {port}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: f\n  namespace: default\n  labels:\n    kubernetes.io/service-name: f\naddressType: IPv4\nendpoints:\n  - addresses: [\"127.0.0.1\"]\n    conditions:\n      ready: true\nports:\n  - name: http\n    port: {port}\n",
                port = backend.port()
            ),
        )
        .unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let settings_file = dir.path().join("fngate.yaml");
        std::fs::write(
            &settings_file,
            format!(
                "listen:\n  http: {http}\n  admin: {admin}\n  dapr_grpc: \"\"\n  dapr_http: \"\"\ncatalog:\n  dir: {}\nthreads: 1\nlimits:\n  max_header_bytes: 8192\n  max_body_bytes: 65536\n",
                catalog.display()
            ),
        )
        .unwrap();
        let settings = fngate::config::Settings::load(&settings_file).unwrap();
        let thread = std::thread::spawn(move || {
            if let Err(e) = fngate::server::run(settings) {
                eprintln!("fngate stopped: {e:#}");
            }
        });
        // Ready once the plan is compiled.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut s) = TcpStream::connect(admin) {
                let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut answer = String::new();
                let _ = s.read_to_string(&mut answer);
                if answer.starts_with("HTTP/1.1 200") {
                    break;
                }
            }
            assert!(!thread.is_finished(), "the in-process fngate stopped before it served");
            assert!(std::time::Instant::now() < deadline, "fngate did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Gateway { http, admin, thread }
    });
    assert!(
        !gateway.thread.is_finished(),
        "the in-process fngate stopped: every later input would be unchecked"
    );
    gateway
}

/// fngate's `fngate_requests_in_flight`, read from its admin listener.
fn requests_in_flight(admin: SocketAddr) -> i64 {
    let mut s = TcpStream::connect(admin).expect("fngate's admin listener answers");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
        .lines()
        .find_map(|l| l.strip_prefix("fngate_requests_in_flight "))
        .and_then(|v| v.trim().parse().ok())
        .expect("fngate_requests_in_flight is exported")
}

/// Waits until fngate has no request left and the backend none half read: everything this
/// input made fngate forward has been counted.
fn settle(gateway: &Gateway) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while requests_in_flight(gateway.admin) != 0 || BACKEND_OPEN.load(Ordering::SeqCst) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "fngate or the backend still busy 20 s after the client left"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Splits what came back into responses; each must start with a status line.
fn responses(raw: &[u8]) -> Vec<(u16, bool)> {
    let text = String::from_utf8_lossy(raw).replace("HTTP/1.0 ", "HTTP/1.1 ");
    let mut out = Vec::new();
    for (i, part) in text.split("HTTP/1.1 ").enumerate() {
        if i == 0 {
            assert!(
                part.is_empty(),
                "bytes before the first status line: {part:?}"
            );
            continue;
        }
        let status: u16 = part
            .get(..3)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a malformed status line: {part:?}"));
        let from_backend = part.to_ascii_lowercase().contains("x-fuzz-backend: 1");
        out.push((status, from_backend));
    }
    out
}

pub fn check(data: &[u8]) {
    let gateway = fngate();
    let before = BACKEND_REQUESTS.load(Ordering::SeqCst);
    let mut stream = TcpStream::connect(gateway.http).expect("fngate's HTTP listener accepts");
    // A client that half-closes is taken as gone (the request is abandoned, as nginx does):
    // instead, the input is followed by a last request that asks fngate to close after it.
    // Input that leaves a request unfinished swallows it; then the read gives up.
    stream
        .set_read_timeout(Some(Duration::from_millis(250)))
        .unwrap();
    let mut sent = data.to_vec();
    sent.extend_from_slice(SENTINEL);
    // fngate may answer and close before it has read everything (a 400): a failed write
    // is part of the exchange, what came back is still checked.
    let _ = stream.write_all(&sent);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    drop(stream);
    settle(gateway);
    // An HTTP/2 preface switches the connection to h2 (binary frames back): only the
    // backend's side is checked then.
    let h2 = data.starts_with(b"PRI * HTTP/2.0");
    let answers = if h2 { Vec::new() } else { responses(&raw) };
    for (status, _) in &answers {
        assert!((100..600).contains(status), "status {status}");
    }
    assert_eq!(
        BACKEND_PARSE_ERRORS.load(Ordering::SeqCst),
        0,
        "fngate forwarded something the backend could not parse; input {data:?}"
    );
    let forwarded = BACKEND_REQUESTS.load(Ordering::SeqCst) - before;
    let answered_by_backend = answers.iter().filter(|(_, b)| *b).count();
    assert!(
        h2 || forwarded <= answered_by_backend,
        "the backend got {forwarded} requests, the client {answered_by_backend} answers from it: {data:?} -> {:?}",
        String::from_utf8_lossy(&raw)
    );
}
