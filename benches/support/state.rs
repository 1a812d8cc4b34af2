//! What the Dapr state benches share: the processes they start, CPU readings, the calls
//! each path makes, and the closed-loop throughput phase.

use bytes::Bytes;
use dapr::dapr::proto::runtime::v1 as rt;
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use http_body_util::{BodyExt, Full};
use std::future::Future;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "bench-token";
pub const CONCURRENCY: usize = 16;
pub const VALUE: &[u8] = &[b'v'; 256];

pub type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

pub fn http_client() -> HttpClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(CONCURRENCY)
        .build_http()
}

/// (user, system) CPU seconds of `pid`.
pub fn cpu_split(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) / 100.0, ticks(12) / 100.0)
}

pub fn cpu_seconds(pid: u32) -> f64 {
    let (user, sys) = cpu_split(pid);
    user + sys
}

pub struct Proc(pub Child);
impl Drop for Proc {
    /// SIGTERM first, so a profiler wrapping fngate writes its output.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wait_port(port: u16) {
    // Generous: fngate may be starting under a profiler.
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// fngate, running `catalog` with one thread, pinned to `cpu`: its Dapr API ports.
pub struct Gate {
    pub proc: Proc,
    pub grpc: u16,
    pub http: u16,
    _dir: tempfile::TempDir,
}

/// Starts fngate on `catalog` (YAML) and waits until it is ready; `BENCH_FNGATE_PREFIX`
/// (for example `valgrind --tool=callgrind`) runs it under a profiler.
pub fn start_fngate(catalog: &str, cpu: &str) -> Gate {
    let dir = tempfile::tempdir().unwrap();
    let fns = dir.path().join("functions");
    std::fs::create_dir(&fns).unwrap();
    std::fs::write(fns.join("catalog.yaml"), catalog).unwrap();
    let (grpc, http, admin, proxy) = (
        super::free_port(),
        super::free_port(),
        super::free_port(),
        super::free_port(),
    );
    let settings = dir.path().join("fngate.yaml");
    std::fs::write(
        &settings,
        format!(
            "listen:\n  http: 127.0.0.1:{proxy}\n  admin: 127.0.0.1:{admin}\n  dapr_grpc: 127.0.0.1:{grpc}\n  dapr_http: 127.0.0.1:{http}\ncatalog:\n  dir: functions\nthreads: 1\n"
        ),
    )
    .unwrap();
    let prefix = std::env::var("BENCH_FNGATE_PREFIX").unwrap_or_default();
    let child = Command::new("taskset")
        .args(["-c", cpu])
        .args(prefix.split_whitespace())
        .args([env!("CARGO_BIN_EXE_fngate"), "run", "--config"])
        .arg(&settings)
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("taskset (util-linux) and the fngate binary");
    let proc = Proc(child);
    wait_port(http);
    wait_port(grpc);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !super::http_get(admin, "x", "/readyz").contains("200 OK") {
        assert!(Instant::now() < deadline, "fngate never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    Gate {
        proc,
        grpc,
        http,
        _dir: dir,
    }
}

/// SaveState of `VALUE` under `key` (raw bytes).
pub async fn grpc_save(c: &mut DaprClient<tonic::transport::Channel>, store: &str, key: &str) {
    let mut r = tonic::Request::new(rt::SaveStateRequest {
        store_name: store.into(),
        states: vec![dapr::dapr::proto::common::v1::StateItem {
            key: key.into(),
            value: VALUE.to_vec(),
            ..Default::default()
        }],
    });
    r.metadata_mut()
        .insert("dapr-api-token", TOKEN.parse().unwrap());
    c.save_state(r).await.unwrap();
}

pub async fn grpc_get(c: &mut DaprClient<tonic::transport::Channel>, store: &str, key: &str) {
    let mut r = tonic::Request::new(rt::GetStateRequest {
        store_name: store.into(),
        key: key.into(),
        ..Default::default()
    });
    r.metadata_mut()
        .insert("dapr-api-token", TOKEN.parse().unwrap());
    c.get_state(r).await.unwrap();
}

/// `POST /v1.0/state/{store}` of `VALUE` as a JSON string.
pub async fn http_save(c: &HttpClient, port: u16, store: &str, key: &str) {
    let body = format!(
        r#"[{{"key":"{key}","value":"{}"}}]"#,
        std::str::from_utf8(VALUE).unwrap()
    );
    let req = http::Request::post(format!("http://127.0.0.1:{port}/v1.0/state/{store}"))
        .header("dapr-api-token", TOKEN)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 204);
    resp.into_body().collect().await.unwrap();
}

pub async fn http_get(c: &HttpClient, port: u16, store: &str, key: &str) {
    let req = http::Request::get(format!("http://127.0.0.1:{port}/v1.0/state/{store}/{key}"))
        .header("dapr-api-token", TOKEN)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert!(
        resp.status() == 200 || resp.status() == 204,
        "{}",
        resp.status()
    );
    resp.into_body().collect().await.unwrap();
}

/// The direct path's save: `VALUE` under the app's prefixed key, as fngate would write it.
pub async fn direct_save(store: &dyn fngate::runtime::state::StateStore, key: &str) {
    store
        .set(fngate::runtime::state::SetRequest {
            key: format!("bench-default||{key}"),
            value: Bytes::from_static(VALUE),
            json: false,
            etag: None,
            concurrency: Default::default(),
            ttl: None,
        })
        .await
        .unwrap()
}

pub async fn direct_get(store: &dyn fngate::runtime::state::StateStore, key: &str) {
    store.get(&format!("bench-default||{key}")).await.unwrap();
}

/// One way of saving and reading a key (a direct client, or a path through fngate).
pub trait StateTarget: Clone + Send + Sync + 'static {
    fn save(&mut self, key: &str) -> impl Future<Output = ()> + Send;
    fn get(&mut self, key: &str) -> impl Future<Output = ()> + Send;
}

/// `CONCURRENCY` workers alternating save and get for `secs`: operations per second, and
/// how many were made.
pub async fn throughput<T: StateTarget>(target: &T, secs: f64) -> (f64, u64) {
    let target = target.clone();
    super::closed_loop(CONCURRENCY, secs, move |w, i| {
        let mut t = target.clone();
        async move {
            let key = format!("w{w}-{}", i % 64);
            t.save(&key).await;
            t.get(&key).await;
            2
        }
    })
    .await
}
