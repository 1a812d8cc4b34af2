//! Kubernetes mode at scale, on the real binary (release build), against the in-process
//! API server double of the tests, loaded with 10,000 Functions and 10,000
//! EndpointSlices of 5 endpoints each (50,000 endpoints):
//!
//! - watch → serving: a Function's hostnames change on the API server; time until a
//!   request for the new hostname is answered by the function through fngate. The peer
//!   is a bare kube-runtime watcher in this process: time until it receives the same
//!   event (the floor any watch-based gateway pays). 200 changes.
//! - memory: fngate's RSS with that catalog loaded and compiled, and as the peer the RSS
//!   of a process holding the same objects in kube-runtime reflector stores (what
//!   caching them costs a kube-rs program that does nothing else).
//!
//! `cargo bench --bench kube_watch [-- FUNCTIONS]` (default 10,000).

#[path = "../tests/common/kube_api.rs"]
mod kube_api;
mod support;

use fngate::api::ObjectKind;
use fngate::catalog::WatchedKind;
use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::runtime::watcher;
use kube_api::FakeApiServer;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{free_port, http_get, pct, rss_kb};

const ENDPOINTS_PER_SLICE: usize = 5;
const CHANGES: usize = 200;

fn function(i: usize, host: Option<&str>) -> String {
    let route = host
        .map(|h| format!("        route:\n          hostnames: [\"{h}\"]\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata:\n  name: fn-{i}\n  namespace: default\nspec:\n  serving:\n    triggers:\n      http:\n        port: 8080\n{route}"
    )
}

fn slice(i: usize, port: u16) -> String {
    let mut s = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: fn-{i}-abcde\n  namespace: default\n  labels:\n    kubernetes.io/service-name: fn-{i}\naddressType: IPv4\nendpoints:\n"
    );
    for e in 0..ENDPOINTS_PER_SLICE {
        // 127.0.0.0/8 is all loopback: every endpoint reaches the one backend.
        s.push_str(&format!(
            "  - addresses: [\"127.0.{}.{}\"]\n    conditions:\n      ready: true\n",
            i % 250,
            e + 1
        ));
    }
    s.push_str(&format!("ports:\n  - name: http\n    port: {port}\n"));
    s
}

/// A function: answers every request 200.
fn backend() -> u16 {
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0
                        || stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    port
}

fn status_of(http: u16, host: &str, path: &str) -> u16 {
    http_get(http, host, path)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// (sum, count) of fngate's compile+publish histogram.
fn compile_seconds(admin: u16) -> (f64, f64) {
    let out = http_get(admin, "x", "/metrics");
    let value = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    (
        value("fngate_reload_duration_seconds_sum"),
        value("fngate_reload_duration_seconds_count"),
    )
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn client_for(kubeconfig: &std::path::Path) -> kube::Client {
    let config = futures::executor::block_on(async {
        let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
        kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap()
    });
    kube::Client::try_from(config).unwrap()
}

/// Peer process: kube-runtime reflector stores of Functions and EndpointSlices; prints
/// `synced` once both are listed, then waits to be killed.
fn reflector_peer(kubeconfig: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = client_for(std::path::Path::new(kubeconfig));
        let mut stores = Vec::new();
        for r in [
            WatchedKind::of(ObjectKind::Function).api_resource(),
            WatchedKind::of(ObjectKind::EndpointSlice).api_resource(),
        ] {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &r);
            let writer = kube::runtime::reflector::store::Writer::new(r.clone());
            let reader = writer.as_reader();
            let stream =
                kube::runtime::reflector(writer, watcher::watcher(api, Default::default()));
            tokio::spawn(stream.for_each(|_| async {}));
            stores.push(reader);
        }
        for r in &stores {
            r.wait_until_ready().await.unwrap();
        }
        println!("synced {}", stores.iter().map(|s| s.len()).sum::<usize>());
        std::io::stdout().flush().unwrap();
        futures::future::pending::<()>().await;
    });
}

fn main() {
    if let Ok(kubeconfig) = std::env::var("FNGATE_BENCH_REFLECTOR_PEER") {
        return reflector_peer(&kubeconfig);
    }
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000);
    let api = FakeApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path());
    let port = backend();
    for i in 0..n {
        api.apply(&function(i, None));
        api.apply(&slice(i, port));
    }
    println!(
        "catalog: {n} Functions, {n} EndpointSlices, {} endpoints",
        n * ENDPOINTS_PER_SLICE
    );

    // fngate, ready once every kind is listed and compiled.
    let (http, admin) = (free_port(), free_port());
    std::fs::write(
        dir.path().join("fngate.yaml"),
        format!(
            "listen:\n  http: 127.0.0.1:{http}\n  admin: 127.0.0.1:{admin}\ncatalog:\n  kubernetes:\n    enabled: true\n    kubeconfig: {}\nthreads: 2\n",
            kubeconfig.display()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let mut gate: Child = Command::new(env!("CARGO_BIN_EXE_fngate"))
        .args(["run", "--config"])
        .arg(dir.path().join("fngate.yaml"))
        .env(
            "RUST_LOG",
            std::env::var("FNGATE_BENCH_LOG").unwrap_or_else(|_| "error".into()),
        )
        .spawn()
        .unwrap();
    wait_for("fngate ready", Duration::from_secs(300), || {
        status_of(admin, "x", "/readyz") == 200
    });
    let ready_after = started.elapsed();
    assert_eq!(status_of(http, "fn-7.default.ofn.io", "/"), 200);
    std::thread::sleep(Duration::from_secs(1));
    let fngate_rss = rss_kb(gate.id());

    // The peer's memory.
    let mut peer = Command::new(std::env::current_exe().unwrap())
        .env("FNGATE_BENCH_REFLECTOR_PEER", &kubeconfig)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    {
        use std::io::BufRead;
        let mut out = std::io::BufReader::new(peer.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
    }
    assert!(line.starts_with("synced"), "peer: {line}");
    std::thread::sleep(Duration::from_secs(1));
    let peer_rss = rss_kb(peer.id());
    let _ = peer.kill();
    let _ = peer.wait();

    // Latency: fngate serving the change vs a bare watcher receiving it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(String, Instant)>();
    let client = rt.block_on(async { client_for(&kubeconfig) });
    rt.spawn(async move {
        let api: Api<DynamicObject> = Api::all_with(
            client,
            &WatchedKind::of(ObjectKind::Function).api_resource(),
        );
        let mut events = watcher::watcher(api, Default::default()).boxed();
        while let Some(Ok(event)) = events.next().await {
            if let watcher::Event::Apply(o) = event {
                let _ = tx.send((
                    o.metadata.resource_version.unwrap_or_default(),
                    Instant::now(),
                ));
            }
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    let (mut via_fngate, mut via_watcher) = (Vec::new(), Vec::new());
    let compiles_before = compile_seconds(admin);
    for c in 0..CHANGES {
        let i = (c * 7919) % n;
        let host = format!("v{c}.fn-{i}.example.com");
        let path = format!("/default/fn-{i}");
        let t0 = Instant::now();
        let rv = api.apply(&function(i, Some(&host))).to_string();
        while status_of(http, &host, &path) != 200 {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "change {c} never served"
            );
        }
        via_fngate.push(t0.elapsed().as_secs_f64() * 1000.0);
        loop {
            let (seen, at) = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("watcher event");
            if seen == rv {
                via_watcher.push(at.duration_since(t0).as_secs_f64() * 1000.0);
                break;
            }
        }
    }
    let compiles_after = compile_seconds(admin);
    let _ = gate.kill();
    let _ = gate.wait();
    let compile_ms = (compiles_after.0 - compiles_before.0) * 1000.0
        / (compiles_after.1 - compiles_before.1).max(1.0);

    let (f50, f99) = (pct(&mut via_fngate, 0.50), pct(&mut via_fngate, 0.99));
    let (w50, w99) = (pct(&mut via_watcher, 0.50), pct(&mut via_watcher, 0.99));
    println!(
        "initial list + compile until ready: {:.2} s",
        ready_after.as_secs_f64()
    );
    println!(
        "watch -> serving ({CHANGES} changes): fngate p50 {f50:.2} ms p99 {f99:.2} ms; bare watcher receives p50 {w50:.2} ms p99 {w99:.2} ms; p99 ratio {:.2} (target: fngate p99 < 20 ms: {})",
        f99 / w99.max(0.001),
        if f99 < 20.0 { "met" } else { "NOT met" }
    );
    println!(
        "compile + publish per change (fngate_reload_duration_seconds): mean {compile_ms:.2} ms over {} compiles",
        compiles_after.1 - compiles_before.1
    );
    println!(
        "memory: fngate RSS {:.1} MB; kube-runtime reflector stores of the same objects {:.1} MB; ratio {:.2}",
        fngate_rss as f64 / 1024.0,
        peer_rss as f64 / 1024.0,
        fngate_rss as f64 / peer_rss as f64
    );
}
