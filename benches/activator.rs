//! Scale from zero, measured on the real binary (release build):
//! - signal latency: a request arrives for a function at zero → `true` on a KEDA
//!   StreamIsActive stream (100 rounds; each request then times out so the function goes
//!   idle again);
//! - added latency: a request waits for a function at zero whose pod then starts
//!   (listed, not yet marked ready); time from the backend accepting connections to the
//!   held request's response, minus the backend's own time (100 cold starts);
//! - memory: RSS of fngate holding 10,000 waiting requests, per request, and as the peer
//!   the same number of open connections that sent nothing (pingora's own cost).
//!
//! `cargo bench --bench activator [-- N]` (N waiting requests, default 10,000);
//! `BENCH_ONLY=memory` runs the memory part alone.

mod support;

use fngate::activator::scaler::proto::ScaledObjectRef;
use fngate::activator::scaler::ExternalScalerClient;
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use support::{free_port, pct, rss_kb};
use tokio::io::AsyncWriteExt;

struct Gate {
    child: Child,
    http: u16,
    admin: u16,
    scaler: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(hold_timeout: &str, max_waiting: usize) -> Gate {
    start_with_backend_port(hold_timeout, max_waiting, free_port())
}

/// fngate with one function whose only endpoint, 127.0.0.1:`dead`, is listed not ready.
fn start_with_backend_port(hold_timeout: &str, max_waiting: usize, dead: u16) -> Gate {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("fns")).unwrap();
    std::fs::write(
        dir.path().join("fns/f.yaml"),
        format!(
            "apiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata:\n  name: cold\n  annotations: {{fngate.io/hold-timeout: \"{hold_timeout}\"}}\nspec:\n  serving:\n    triggers:\n      http: {{port: 8080}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: cold\n  labels: {{kubernetes.io/service-name: cold}}\nendpoints:\n  - addresses: [\"127.0.0.1\"]\n    conditions: {{ready: false}}\nports: [{{port: {dead}}}]\n"
        ),
    )
    .unwrap();
    let (http, admin, scaler) = (free_port(), free_port(), free_port());
    std::fs::write(
        dir.path().join("fngate.yaml"),
        format!("listen:\n  http: 127.0.0.1:{http}\n  admin: 127.0.0.1:{admin}\n  scaler: 127.0.0.1:{scaler}\ncatalog:\n  dir: fns\nthreads: 2\nactivator:\n  max_waiting_per_function: {max_waiting}\n  max_waiting: {max_waiting}\n"),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_fngate"))
        .args(["run", "--config"])
        .arg(dir.path().join("fngate.yaml"))
        .env("RUST_LOG", "error")
        .spawn()
        .unwrap();
    Gate {
        child,
        http,
        admin,
        scaler,
        _dir: dir,
    }
}

async fn metric(admin: u16, name: &str) -> f64 {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", admin)).await else {
        return -1.0;
    };
    let _ = s
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let mut body = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut body).await;
    String::from_utf8_lossy(&body)
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

async fn get(port: u16) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: cold.default.ofn.io\r\n\r\n")
        .await
        .unwrap();
    s
}

async fn signal_latency() -> Vec<f64> {
    let gate = start("20ms", 1000);
    let object = ScaledObjectRef {
        name: "cold".into(),
        namespace: "default".into(),
        scaler_metadata: Default::default(),
    };
    let mut client = loop {
        if let Ok(c) =
            ExternalScalerClient::connect(format!("http://127.0.0.1:{}", gate.scaler)).await
        {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut stream = client.stream_is_active(object).await.unwrap().into_inner();
    assert!(!stream.message().await.unwrap().unwrap().result);
    let mut samples = Vec::new();
    for _ in 0..100 {
        let t0 = Instant::now();
        let _conn = get(gate.http).await;
        let m = stream.message().await.unwrap().unwrap();
        assert!(m.result);
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
        // The request times out (20 ms), the function goes idle: `false`.
        while stream.message().await.unwrap().unwrap().result {}
    }
    samples
}

/// RSS before and after `n` connections that each sent a request for the cold function
/// (`idle`: connections that sent nothing — the peer: what pingora alone spends).
async fn memory(n: usize, idle: bool) -> (f64, f64, f64) {
    let gate = start("600s", n + 10);
    while metric(gate.admin, "fngate_config_revision").await < 1.0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Warm the path once so lazily built state is not counted per request.
    drop(get(gate.http).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kb(gate.child.id());
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        if idle {
            conns.push(
                tokio::net::TcpStream::connect(("127.0.0.1", gate.http))
                    .await
                    .unwrap(),
            );
        } else {
            conns.push(get(gate.http).await);
        }
    }
    let waiting = "fngate_activator_waiting{function=\"cold\",namespace=\"default\"}";
    while !idle && metric(gate.admin, waiting).await < n as f64 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kb(gate.child.id());
    drop(conns);
    (
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after - before) as f64 / n as f64,
    )
}

/// A trivial function: answers every request at once, until its task is aborted.
async fn backend(listener: tokio::net::TcpListener) {
    // Connections live in the set, so aborting the server closes them too (pod gone).
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        connections.spawn(async move {
            let mut buf = [0u8; 4096];
            loop {
                match tokio::io::AsyncReadExt::read(&mut s, &mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
    }
}

async fn added_latency() -> Vec<f64> {
    let port = free_port();
    let gate = start_with_backend_port("60s", 1000, port);
    while metric(gate.admin, "fngate_config_revision").await < 1.0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waiting = "fngate_activator_waiting{function=\"cold\",namespace=\"default\"}";
    let mut samples = Vec::new();
    for _ in 0..100 {
        let mut conn = get(gate.http).await;
        while metric(gate.admin, waiting).await < 1.0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let t0 = Instant::now();
        let server = tokio::spawn(backend(listener));
        let mut buf = [0u8; 256];
        let n = tokio::io::AsyncReadExt::read(&mut conn, &mut buf)
            .await
            .unwrap();
        let took = t0.elapsed();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        samples.push(took.as_secs_f64() * 1000.0);
        // Back to zero: the pod goes away (its connections with it).
        server.abort();
        drop(conn);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    samples
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let memory_only = std::env::var("BENCH_ONLY").as_deref() == Ok("memory");
    let (mut lat, mut added) = if memory_only {
        (vec![f64::NAN], vec![f64::NAN])
    } else {
        (rt.block_on(signal_latency()), rt.block_on(added_latency()))
    };
    let (before, after, per) = rt.block_on(memory(n, false));
    let (_, _, per_idle) = rt.block_on(memory(n, true));
    println!("signal latency, request in -> StreamIsActive true (100 rounds): p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms", pct(&mut lat, 0.5), pct(&mut lat, 0.99), pct(&mut lat, 1.0));
    println!("added latency, backend accepting -> held request answered (100 cold starts; backend time ~0): p50 {:.2} ms  p99 {:.2} ms", pct(&mut added, 0.5), pct(&mut added, 0.99));
    println!("memory: RSS {before:.1} MB idle, {after:.1} MB with {n} waiting requests: {per:.1} KiB per waiting request");
    println!("peer: {n} open connections that sent nothing: {per_idle:.1} KiB each; the hold itself: {:.1} KiB per request", per - per_idle);
}
