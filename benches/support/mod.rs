//! Helpers the benchmarks share (included with `mod support;`).
#![allow(dead_code)]

pub mod app;
pub mod state;

use std::io::{Read, Write};

/// The first command-line argument that parses as a `T` (cargo bench passes `--bench`
/// first), else `default`.
pub fn number_arg<T: std::str::FromStr>(default: T) -> T {
    std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(default)
}

/// Pins every thread of this process (the load generator and the peers) to CPU 0, so fngate
/// alone has CPU 1; whether `taskset` did it.
pub fn pin_self_to_cpu0() -> bool {
    std::process::Command::new("taskset")
        .args(["-a", "-pc", "0", &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Resident set size of process `pid`, in KiB.
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap()
}

/// The `q` quantile of `v` (sorted in place).
pub fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
}

/// Closed loop: `workers` tasks each running `call(worker, i)` for i = 0, 1, … until `secs`
/// pass; each call returns how many operations it made. Operations per second, and how
/// many were made.
pub async fn closed_loop<F, Fut>(workers: usize, secs: f64, call: F) -> (f64, u64)
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = u64> + Send,
{
    use std::sync::atomic::{AtomicU64, Ordering};
    let ops = std::sync::Arc::new(AtomicU64::new(0));
    let stop = std::time::Instant::now() + std::time::Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (call, ops) = (call.clone(), ops.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while std::time::Instant::now() < stop {
                ops.fetch_add(call(w, i).await, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    let started = std::time::Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    let n = ops.load(Ordering::Relaxed);
    (n as f64 / started.elapsed().as_secs_f64(), n)
}

/// Open loop: `count` calls `call(i)` started at `rate` per second whatever the earlier
/// ones do; p50 and p99 of their latency, in ms.
pub async fn open_loop<F, Fut>(rate: u64, count: u64, call: F) -> (f64, f64)
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut interval = tokio::time::interval(std::time::Duration::from_micros(1_000_000 / rate));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(count as usize);
    for i in 0..count {
        interval.tick().await;
        let call = call(i);
        tasks.push(tokio::spawn(async move {
            let start = std::time::Instant::now();
            call.await;
            start.elapsed().as_secs_f64() * 1000.0
        }));
    }
    let mut lat = Vec::with_capacity(tasks.len());
    for t in tasks {
        lat.push(t.await.unwrap());
    }
    (pct(&mut lat, 0.5), pct(&mut lat, 0.99))
}

/// A bare hyper HTTP/1.1 server on `port` answering every request with `handle`.
pub async fn serve_http1<F, Fut>(port: u16, handle: F) -> !
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = hyper::Response<http_body_util::Full<bytes::Bytes>>>
        + Send
        + 'static,
{
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = handle(req);
                async move { Ok::<_, std::convert::Infallible>(answer.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// One `GET` with `Connection: close` on a fresh connection; the whole response as text,
/// empty when nothing listens.
pub fn http_get(port: u16, host: &str, path: &str) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// tansu (a Kafka-protocol broker) in memory on a free port, with `topics` (name,
/// partitions) created; `None` when tansu is not installed (scripts/install-tansu.sh).
pub struct Tansu {
    child: std::process::Child,
    /// `tcp://127.0.0.1:<port>`, as tansu's own commands take it.
    pub url: String,
    /// `127.0.0.1:<port>`, as Kafka clients take it.
    pub brokers: String,
}

impl Tansu {
    pub fn start(topics: &[(&str, u32)]) -> Option<Tansu> {
        use std::process::{Command, Stdio};
        let home = std::env::var("HOME").unwrap_or_default();
        let installed = format!("{home}/.cargo/bin/tansu");
        let bin = if std::path::Path::new(&installed).exists() {
            installed
        } else {
            "tansu".into()
        };
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let brokers = format!("127.0.0.1:{port}");
        let child = match Command::new(&bin)
            .args(["broker", "--storage-engine", "memory://tansu/"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("tansu not found ({e}); scripts/install-tansu.sh installs it");
                return None;
            }
        };
        while std::net::TcpStream::connect(&brokers).is_err() {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        for (topic, partitions) in topics {
            Command::new(&bin)
                .args(["topic", "create", topic, "--broker", &url])
                .args(["--partitions", &partitions.to_string()])
                .stdout(Stdio::null())
                .status()
                .expect("tansu topic create");
        }
        Some(Tansu {
            child,
            url,
            brokers,
        })
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
