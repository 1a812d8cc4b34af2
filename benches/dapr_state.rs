//! The Dapr API's cost: state save + get through fngate (gRPC and HTTP) against the same
//! operations made directly with the store client fngate uses (`RedisStore`: the same
//! Lua scripts and HGETALL on one multiplexed connection), same concurrency, same run;
//! publish through fngate against the raw JetStream client; memory per idle function.
//!
//! `cargo bench --bench dapr_state [-- SECONDS]` (default 5 s per throughput phase).
//! `BENCH_ONLY=state|publish|memory` runs one part, `BENCH_PATH=grpc|http` one surface; `BENCH_FNGATE_PREFIX="valgrind
//! --tool=callgrind"` runs fngate under a profiler.
//! fngate runs alone on CPU 1 (`taskset`, one worker thread); redis-server, nats-server and
//! this process (the load generator) share CPU 0, so the ratio measures fngate, not the
//! sharing of two cores. fngate's CPU per operation is read from `/proc/<pid>/stat`.
//! Beside them, on fngate's core, the framework floor: bare tonic and bare hyper servers
//! answering the same requests at once (no store, no token, no metrics).

mod support;

use bytes::Bytes;
use dapr::dapr::proto::runtime::v1 as rt;
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use fngate::plan::RedisSettings;
use fngate::runtime::state::RedisStore;
use http_body_util::{BodyExt, Full};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::state::{
    cpu_seconds, cpu_split, direct_get, direct_save, grpc_get, grpc_save, http_client, http_get,
    http_save, start_fngate, throughput, wait_port, HttpClient, Proc, StateTarget, CONCURRENCY,
    TOKEN, VALUE,
};
use support::{free_port, rss_kb};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NATS: &str = "nats://127.0.0.1:4222";

/// `functions` Functions; the first (`bench`) with the token, the Redis store and the
/// JetStream pub/sub when `with_dapr`.
fn catalog(redis: u16, functions: usize, with_dapr: bool) -> String {
    let mut yaml = String::new();
    for i in 0..functions {
        let name = if i == 0 {
            "bench".to_owned()
        } else {
            format!("idle{i}")
        };
        if with_dapr {
            yaml.push_str(&format!(
                "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}-token, namespace: default}}\nstringData: {{token: {}}}\n---\n",
                if i == 0 { TOKEN.to_owned() } else { format!("token-{i}") }
            ));
        }
        yaml.push_str(&format!(
            "apiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  serving:\n"
        ));
        if with_dapr {
            yaml.push_str(&format!(
                "    annotations:\n      dapr.io/api-token-secret: {name}-token\n    states:\n      store:\n        spec:\n          type: state.redis\n          metadata:\n            - {{name: redisHost, value: \"127.0.0.1:{redis}\"}}\n    pubsub:\n      bus:\n        type: pubsub.jetstream\n        metadata:\n          - {{name: natsURL, value: \"{NATS}\"}}\n"
            ));
        } else {
            yaml.push_str("    labels: {idle: \"true\"}\n");
        }
        yaml.push_str("---\n");
    }
    yaml
}

#[derive(Clone)]
enum Target {
    Direct(Arc<RedisStore>),
    Grpc(DaprClient<tonic::transport::Channel>),
    Http(HttpClient, u16),
    /// The same requests to the bare framework servers (see `bare`).
    BareGrpc(DaprClient<tonic::transport::Channel>),
    BareHttp(HttpClient, u16),
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Direct(_) => "direct",
            Target::Grpc(_) => "fngate gRPC",
            Target::Http(..) => "fngate HTTP",
            Target::BareGrpc(_) => "bare tonic",
            Target::BareHttp(..) => "bare hyper",
        }
    }
}

impl StateTarget for Target {
    async fn save(&mut self, key: &str) {
        match self {
            Target::Direct(store) => direct_save(&**store, key).await,
            Target::Grpc(c) | Target::BareGrpc(c) => grpc_save(c, "store", key).await,
            Target::Http(c, port) | Target::BareHttp(c, port) => {
                http_save(c, *port, "store", key).await
            }
        }
    }

    async fn get(&mut self, key: &str) {
        match self {
            Target::Direct(store) => direct_get(&**store, key).await,
            Target::Grpc(c) | Target::BareGrpc(c) => grpc_get(c, "store", key).await,
            Target::Http(c, port) | Target::BareHttp(c, port) => {
                http_get(c, *port, "store", key).await
            }
        }
    }
}

/// Latency of single operations issued at `rate` per second (open loop): p50, p99 in ms.
async fn latency_at(target: &Target, rate: u64, count: u64) -> (f64, f64) {
    support::open_loop(rate, count, |i| {
        let mut t = target.clone();
        async move {
            let key = format!("lat-{}", i % 100);
            if i % 2 == 0 {
                t.save(&key).await;
            } else {
                t.get(&key).await;
            }
        }
    })
    .await
}

fn main() {
    if let Ok(ports) = std::env::var("BENCH_PEER") {
        let (g, h) = ports.split_once(',').unwrap();
        bare::serve(g.parse().unwrap(), h.parse().unwrap());
    }
    let secs: f64 = support::number_arg(5.0);
    support::pin_self_to_cpu0();
    let redis_port = free_port();
    let redis_dir = tempfile::tempdir().unwrap();
    let _redis = Proc(
        Command::new("taskset")
            .args(["-c", "0", "redis-server", "--port", &redis_port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(redis_dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    wait_port(redis_port);
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let part = |name: &str| only.is_empty() || only == name;
    if !part("state") && !part("publish") {
        memory(redis_port);
        return;
    }
    let gate = start_fngate(&catalog(redis_port, 1, true), "1");
    let pid = gate.proc.0.id();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Arc::new(
            RedisStore::new(&RedisSettings {
                host: format!("127.0.0.1:{redis_port}"),
                username: None,
                password: None,
                db: 0,
                tls: false,
                insecure_skip_verify: false,
                dial_timeout: Duration::from_secs(5),
                command_timeout: Duration::from_secs(5),
            })
            .unwrap(),
        );
        let grpc = DaprClient::connect(format!("http://127.0.0.1:{}", gate.grpc))
            .await
            .unwrap();
        let http = http_client();
        // The framework floor on fngate's core: bare tonic and bare hyper servers.
        let (peer_grpc, peer_http) = (free_port(), free_port());
        let peer = Proc(
            Command::new("taskset")
                .args(["-c", "1"])
                .arg(std::env::current_exe().unwrap())
                .env("BENCH_PEER", format!("{peer_grpc},{peer_http}"))
                .spawn()
                .unwrap(),
        );
        wait_port(peer_grpc);
        wait_port(peer_http);
        let peer_client = DaprClient::connect(format!("http://127.0.0.1:{peer_grpc}"))
            .await
            .unwrap();
        let targets: Vec<Target> = [
            Target::Direct(store),
            Target::Grpc(grpc.clone()),
            Target::Http(http.clone(), gate.http),
            Target::BareGrpc(peer_client),
            Target::BareHttp(http, peer_http),
        ]
        .into_iter()
        .filter(|t| match std::env::var("BENCH_PATH").as_deref() {
            Ok("grpc") => !matches!(t, Target::Http(..) | Target::BareHttp(..)),
            Ok("http") => !matches!(t, Target::Grpc(_) | Target::BareGrpc(_)),
            _ => true,
        })
        .collect();
        if !part("state") {
            publish(grpc, pid, secs).await;
            return;
        }
        println!("state save+get, {CONCURRENCY} concurrent, {secs} s each, 256-byte values");
        println!("{:<12} {:>10} {:>8} {:>16}", "path", "ops/s", "ratio", "server CPU/op");
        let mut direct_rate = 0.0;
        for t in &targets {
            // Warm up connections and script caches.
            throughput(t, 0.5).await;
            // For the direct path the store client runs in this process: its CPU per
            // operation is what any caller of Redis pays, fngate included.
            let server = match t {
                Target::BareGrpc(_) | Target::BareHttp(..) => peer.0.id(),
                Target::Direct(_) => std::process::id(),
                _ => pid,
            };
            let (user0, sys0) = cpu_split(server);
            let (rate, n) = throughput(t, secs).await;
            let (user1, sys1) = cpu_split(server);
            let cpu = (user1 + sys1 - user0 - sys0) / n as f64 * 1e6;
            let sys_share = (sys1 - sys0) / (user1 + sys1 - user0 - sys0).max(1e-9);
            if let Target::Direct(_) = t {
                direct_rate = rate;
                println!(
                    "{:<12} {:>10.0} {:>8} {:>13.1} µs (the store client itself, in the load generator)",
                    t.name(),
                    rate,
                    "1.00",
                    cpu
                );
            } else {
                println!(
                    "{:<12} {:>10.0} {:>8.2} {:>13.1} µs ({:.0}% in the kernel)",
                    t.name(),
                    rate,
                    rate / direct_rate,
                    cpu,
                    sys_share * 100.0
                );
            }
        }
        println!("\nlatency at 1,000 ops/s (5,000 ops, half saves), ms");
        println!("{:<12} {:>8} {:>8} {:>14}", "path", "p50", "p99", "p99 added");
        let mut direct_p99 = 0.0;
        for t in &targets {
            let (p50, p99) = latency_at(t, 1000, 5000).await;
            if let Target::Direct(_) = t {
                direct_p99 = p99;
                println!("{:<12} {:>8.3} {:>8.3} {:>14}", t.name(), p50, p99, "-");
            } else {
                println!(
                    "{:<12} {:>8.3} {:>8.3} {:>14.3}",
                    t.name(),
                    p50,
                    p99,
                    p99 - direct_p99
                );
            }
        }
        if part("publish") {
            publish(grpc, pid, secs).await;
        }
    });
    drop(gate);
    if part("memory") {
        memory(redis_port);
    }
}

/// PublishEvent to JetStream through fngate against async-nats publishing the same
/// bytes, same concurrency.
async fn publish(grpc: DaprClient<tonic::transport::Channel>, pid: u32, secs: f64) {
    let subject = format!("bench-dapr-publish-{}", std::process::id());
    let client = async_nats::connect(NATS).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = format!("BENCH_DAPR_PUBLISH_{}", std::process::id());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![subject.clone()],
        max_messages: 100_000,
        ..Default::default()
    })
    .await
    .unwrap();
    let payload = Bytes::from(vec![b'x'; 1024]);
    let run = |through_fngate: bool| {
        let (js, grpc, subject, payload) =
            (js.clone(), grpc.clone(), subject.clone(), payload.clone());
        async move {
            let ops = Arc::new(AtomicU64::new(0));
            let stop = Instant::now() + Duration::from_secs_f64(secs);
            let mut tasks = Vec::new();
            for _ in 0..CONCURRENCY {
                let (js, mut grpc, subject, payload, ops) = (
                    js.clone(),
                    grpc.clone(),
                    subject.clone(),
                    payload.clone(),
                    ops.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < stop {
                        if through_fngate {
                            let mut r = tonic::Request::new(rt::PublishEventRequest {
                                pubsub_name: "bus".into(),
                                topic: subject.clone(),
                                data: payload.to_vec(),
                                data_content_type: "application/octet-stream".into(),
                                ..Default::default()
                            });
                            r.metadata_mut()
                                .insert("dapr-api-token", TOKEN.parse().unwrap());
                            grpc.publish_event(r).await.unwrap();
                        } else {
                            js.publish(subject.clone(), payload.clone())
                                .await
                                .unwrap()
                                .await
                                .unwrap();
                        }
                        ops.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            let started = Instant::now();
            for t in tasks {
                t.await.unwrap();
            }
            let n = ops.load(Ordering::Relaxed);
            (n as f64 / started.elapsed().as_secs_f64(), n)
        }
    };
    run(false).await;
    let me = std::process::id();
    let before = cpu_seconds(me);
    let (raw, raw_n) = run(false).await;
    let raw_cpu = (cpu_seconds(me) - before) / raw_n as f64 * 1e6;
    let cpu0 = cpu_seconds(pid);
    let (through, n) = run(true).await;
    let cpu = (cpu_seconds(pid) - cpu0) / n as f64 * 1e6;
    println!("\npublish 1 KiB to JetStream, {CONCURRENCY} concurrent, {secs} s");
    println!("raw async-nats {raw:.0}/s ({raw_cpu:.1} µs of client CPU per publish), fngate gRPC {through:.0}/s, ratio {:.2}, fngate CPU {cpu:.1} µs per publish", through / raw);
    let _ = js.delete_stream(&stream).await;
}

/// RSS of 1,000 idle Functions, each with a token and two components, against the same
/// Functions without them.
fn memory(redis_port: u16) {
    const N: usize = 1000;
    let mut rss = [0u64; 2];
    for (i, with_dapr) in [false, true].into_iter().enumerate() {
        let gate = start_fngate(&catalog(redis_port, N, with_dapr), "0-1");
        std::thread::sleep(Duration::from_millis(500));
        rss[i] = rss_kb(gate.proc.0.id());
    }
    println!(
        "\nmemory: {N} idle Functions {} KB RSS; with a token and two components each {} KB: {:.2} KiB per function for the Dapr API",
        rss[0],
        rss[1],
        (rss[1] as f64 - rss[0] as f64) / N as f64
    );
}

/// The framework floor: a gRPC server (tonic, as fngate's) and an HTTP/1 server (hyper, as
/// fngate's) that answer SaveState / GetState and the HTTP state routes at once, with no
/// store, no token check and no metrics. Run as its own process on fngate's core
/// (`BENCH_PEER=grpc_port,http_port`), so its CPU per request is read the same way.
mod bare {
    use super::*;
    use std::convert::Infallible;
    use std::future::Future;
    use std::marker::PhantomData;
    use std::pin::Pin;
    use tonic::codegen::{http as thttp, Body as HttpBody, BoxFuture, Service, StdError};

    #[derive(Clone)]
    struct BareDapr;

    impl tonic::server::NamedService for BareDapr {
        const NAME: &'static str = "dapr.proto.runtime.v1.Dapr";
    }

    struct Answer<Req, Resp>(Resp, PhantomData<fn(Req)>);

    impl<Req: Send + 'static, Resp: Clone + Send + 'static> tonic::server::UnaryService<Req>
        for Answer<Req, Resp>
    {
        type Response = Resp;
        type Future =
            Pin<Box<dyn Future<Output = Result<tonic::Response<Resp>, tonic::Status>> + Send>>;
        fn call(&mut self, _: tonic::Request<Req>) -> Self::Future {
            let r = self.0.clone();
            Box::pin(async move { Ok(tonic::Response::new(r)) })
        }
    }

    impl<B> Service<thttp::Request<B>> for BareDapr
    where
        B: HttpBody + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        type Response = thttp::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = BoxFuture<Self::Response, Infallible>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Infallible>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: thttp::Request<B>) -> Self::Future {
            Box::pin(async move {
                Ok(match req.uri().path() {
                    "/dapr.proto.runtime.v1.Dapr/SaveState" => {
                        let mut g = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                            (),
                            rt::SaveStateRequest,
                        >::default());
                        g.unary(Answer((), PhantomData), req).await
                    }
                    _ => {
                        let mut g = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                            rt::GetStateResponse,
                            rt::GetStateRequest,
                        >::default());
                        let answer = rt::GetStateResponse {
                            data: VALUE.to_vec(),
                            etag: "1".into(),
                            ..Default::default()
                        };
                        g.unary(Answer(answer, PhantomData), req).await
                    }
                })
            })
        }
    }

    pub fn serve(grpc: u16, http: u16) -> ! {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            tokio::spawn(crate::support::serve_http1(
                http,
                |req: http::Request<hyper::body::Incoming>| async move {
                    let get = req.method() == http::Method::GET;
                    let _ = req.into_body().collect().await;
                    let response = if get {
                        http::Response::builder()
                            .status(200)
                            .header("content-type", "application/json")
                            .header("etag", "1")
                            .body(Full::new(Bytes::from_static(b"\"v\"")))
                    } else {
                        http::Response::builder()
                            .status(204)
                            .body(Full::new(Bytes::new()))
                    };
                    response.unwrap()
                },
            ));
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(BareDapr)
                .serve(([127, 0, 0, 1], grpc).into())
                .await
                .unwrap();
        });
        std::process::exit(0)
    }
}
