//! Event delivery throughput and latency, against the raw client library as the ceiling.
//!
//! `cargo bench --bench events [-- N]` (default N = 100,000 messages of 1 KiB):
//! - Kafka (tansu on loopback) and NATS JetStream (127.0.0.1:4222): produce N messages,
//!   then measure (a) the raw consume rate of the client alone (rdkafka consumer storing
//!   offsets; async-nats pull consumer acking each message) and (b) fngate delivering them
//!   into a trivial Dapr app over AppCallback gRPC and over Dapr HTTP, ordering relaxed
//!   (`fngate.io/concurrency: 64`). Prints events/s and the ratio to the ceiling.
//! - End-to-end latency at 1,000 events/s (ordered, the default): publish → app receives.
//! - The floor of one call per event: a bare tonic client (the channel fngate delivers
//!   through) and a bare hyper client sending the same binding events into the same apps,
//!   each alone on one thread; their CPU per call beside fngate's CPU per event
//!   (`BENCH_ONLY=floor` runs only this).
//!
//! Both apps run in this process (real gRPC and HTTP servers on loopback); fngate is the
//! release binary, so everything shares the machine's cores.

mod support;

use dapr::dapr::proto::runtime::v1::{app_callback_client, BindingEventRequest};
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::net::SocketAddr;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::app::{serve_grpc, EventSink, BULK_MAX};
use support::{free_port, Tansu};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What the trivial app saw: a count, first/last arrival, and latencies of stamped events.
#[derive(Default)]
struct Sink {
    count: AtomicU64,
    window: Mutex<Option<(Instant, Instant)>>,
    latencies_us: Mutex<Vec<u64>>,
}

impl EventSink for Sink {
    fn hit(&self, data: &[u8]) {
        let now = Instant::now();
        {
            let mut w = self.window.lock().unwrap();
            *w = Some(match *w {
                None => (now, now),
                Some((first, _)) => (first, now),
            });
        }
        if let Some(stamp) = data
            .strip_prefix(b"ts=")
            .and_then(|d| std::str::from_utf8(&d[..19.min(d.len())]).ok())
            .and_then(|s| s.parse::<u128>().ok())
        {
            let sent = stamp;
            let recv = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            self.latencies_us
                .lock()
                .unwrap()
                .push((recv.saturating_sub(sent) / 1000) as u64);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

impl Sink {
    fn reset(&self) {
        self.count.store(0, Ordering::Relaxed);
        *self.window.lock().unwrap() = None;
        self.latencies_us.lock().unwrap().clear();
    }
    async fn wait_for(&self, n: u64, limit: Duration) -> Option<f64> {
        let deadline = Instant::now() + limit;
        while self.count.load(Ordering::Relaxed) < n {
            if Instant::now() > deadline {
                eprintln!(
                    "timed out with {} of {n}",
                    self.count.load(Ordering::Relaxed)
                );
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (first, last) = self.window.lock().unwrap().expect("events arrived");
        Some(n as f64 / (last - first).as_secs_f64().max(1e-9))
    }
}

async fn serve_http(sink: Arc<Sink>, topic: String, bulk: bool) -> SocketAddr {
    use http_body_util::{BodyExt, Full};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let _ = s.set_nodelay(true);
            let (sink, topic) = (sink.clone(), topic.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (sink, topic) = (sink.clone(), topic.clone());
                        async move {
                            let get = req.method() == hyper::Method::GET;
                            let options = req.method() == hyper::Method::OPTIONS;
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let out = if get {
                                let bulk = if bulk {
                                    format!(
                                        r#","bulkSubscribe":{{"enabled":true,"maxMessagesCount":{BULK_MAX},"maxAwaitDurationMs":1000}}"#
                                    )
                                } else {
                                    String::new()
                                };
                                format!(
                                    r#"[{{"pubsubname":"ps","topic":"{topic}","route":"/in"{bulk}}}]"#
                                )
                            } else if bulk && !options {
                                let envelope: serde_json::Value =
                                    serde_json::from_slice(&body).unwrap_or_default();
                                let mut statuses = Vec::new();
                                for entry in envelope["entries"].as_array().into_iter().flatten() {
                                    use base64::Engine as _;
                                    let b64 =
                                        entry["event"]["data_base64"].as_str().unwrap_or_default();
                                    sink.hit(
                                        &base64::engine::general_purpose::STANDARD
                                            .decode(b64)
                                            .unwrap_or_default(),
                                    );
                                    statuses.push(serde_json::json!({"entryId": entry["entryId"], "status": "SUCCESS"}));
                                }
                                serde_json::json!({ "statuses": statuses }).to_string()
                            } else {
                                if !options {
                                    // Pub/sub bodies are CloudEvents: the payload is in data_base64.
                                    match serde_json::from_slice::<serde_json::Value>(&body)
                                        .ok()
                                        .and_then(|v| v["data_base64"].as_str().map(str::to_owned))
                                    {
                                        Some(b64) => {
                                            use base64::Engine as _;
                                            sink.hit(
                                                &base64::engine::general_purpose::STANDARD
                                                    .decode(b64)
                                                    .unwrap_or_default(),
                                            );
                                        }
                                        None => sink.hit(&body),
                                    }
                                }
                                String::new()
                            };
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                bytes::Bytes::from(out),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// (protocol, bulk subscribe) of the throughput runs; `BENCH_RUNS=bulk` (or `single`)
/// keeps only those.
fn runs() -> Vec<(&'static str, bool)> {
    let only = std::env::var("BENCH_RUNS").unwrap_or_default();
    [
        ("grpc", false),
        ("http", false),
        ("grpc", true),
        ("http", true),
    ]
    .into_iter()
    .filter(|(_, bulk)| match only.as_str() {
        "bulk" => *bulk,
        "single" => !*bulk,
        _ => true,
    })
    .collect()
}

/// In-flight events per partition / consumer: relaxed ordering.
fn concurrency_of(bulk: bool) -> u32 {
    if bulk {
        bulk_concurrency()
    } else {
        64
    }
}

/// Enough in flight to fill batches of `BULK_MAX`; `BENCH_BULK_CONCURRENCY` overrides it.
fn bulk_concurrency() -> u32 {
    std::env::var("BENCH_BULK_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn run_name(protocol: &str, bulk: bool) -> String {
    if bulk {
        format!(
            "{protocol} app, bulk subscribe (concurrency {})",
            bulk_concurrency()
        )
    } else {
        format!("{protocol} app (concurrency 64)")
    }
}

async fn serve(protocol: &str, bulk: bool, sink: Arc<Sink>, topic: String) -> SocketAddr {
    if protocol == "grpc" {
        serve_grpc(sink, topic, bulk).await
    } else {
        serve_http(sink, topic, bulk).await
    }
}

/// librdkafka `fetch.wait.max.ms` for fngate and the raw client alike: tansu holds every
/// fetch for at least half of it (Apache Kafka answers as soon as data is there).
const FETCH_WAIT_MS: u64 = 1;

struct Fngate(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Fngate {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_fngate(objects: &str) -> Fngate {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("fns")).unwrap();
    std::fs::write(dir.path().join("fns/f.yaml"), objects).unwrap();
    let settings = dir.path().join("fngate.yaml");
    std::fs::write(&settings, format!("listen:\n  http: 127.0.0.1:{}\n  admin: 127.0.0.1:{}\n  dapr_grpc: \"\"\n  dapr_http: \"\"\ncatalog:\n  dir: fns\nthreads: {}\nevents:\n  kafka_fetch_wait: {FETCH_WAIT_MS}ms\n", free_port(), free_port(), std::env::var("BENCH_FNGATE_THREADS").unwrap_or_else(|_| "2".into()))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_fngate"))
        .args(["run", "--config"])
        .arg(&settings)
        .env(
            "RUST_LOG",
            std::env::var("BENCH_FNGATE_LOG").unwrap_or_else(|_| "error".into()),
        )
        .spawn()
        .expect("fngate");
    Fngate(child, dir)
}

fn function(
    component: &str,
    kind_meta: &str,
    topic: Option<&str>,
    protocol: &str,
    app: SocketAddr,
    concurrency: u32,
) -> String {
    let topic = topic.map(|t| format!(", topic: {t}")).unwrap_or_default();
    format!(
        "{kind_meta}---\napiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata:\n  name: bench\n  annotations:\n    fngate.io/concurrency: \"{concurrency}\"\nspec:\n  serving:\n    annotations:\n      dapr.io/app-protocol: {protocol}\n      dapr.io/app-port: \"{}\"\n    triggers:\n      dapr:\n        - {{name: {component}{topic}}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: bench\n  labels: {{kubernetes.io/service-name: bench}}\nendpoints:\n  - addresses: [\"127.0.0.1\"]\n",
        app.port()
    )
}

fn payload(i: usize) -> Vec<u8> {
    let mut p = format!("msg {i} ").into_bytes();
    p.resize(1024, b'x');
    p
}

fn stamped() -> Vec<u8> {
    let mut p = format!(
        "ts={:019}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
    .into_bytes();
    p.resize(1024, b'x');
    p
}

fn p(lat: &mut [u64], q: f64) -> f64 {
    lat.sort_unstable();
    if lat.is_empty() {
        return f64::NAN;
    }
    lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)] as f64 / 1000.0
}

/// A path, its events/s, its share of the ceiling, and fngate's CPU time per event (µs).
struct Row(String, f64, Option<f64>, Option<f64>);

/// CPU time (user + system) in seconds from a `/proc/.../stat` file.
fn stat_cpu_seconds(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let ticks: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse().ok())
        .collect();
    ticks.iter().sum::<f64>() / 100.0
}

/// CPU time a process has used so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// CPU time the calling thread has used so far, in seconds.
fn thread_cpu_seconds() -> f64 {
    stat_cpu_seconds("/proc/thread-self/stat")
}

/// Broker metadata as fngate gives a Kafka binding event.
fn binding_metadata(i: usize) -> Vec<(&'static str, String)> {
    vec![
        ("__key", format!("k{}", i % 64)),
        ("__offset", i.to_string()),
        ("__partition", (i % 3).to_string()),
        ("__topic", "bench".into()),
        ("__timestamp", "1764500000000".into()),
    ]
}

/// One call per event through the client libraries alone: `n` binding events, 64 in flight
/// (as fngate's runs), from one thread of its own; calls/s and that thread's CPU per call.
fn client_floor(protocol: &'static str, addr: SocketAddr, n: usize) -> (f64, f64) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let calls: Box<dyn Fn(usize) -> futures::future::BoxFuture<'static, ()>> = if protocol
                == "grpc"
            {
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .unwrap();
                Box::new(move |i| {
                    let mut client = app_callback_client::AppCallbackClient::new(channel.clone());
                    Box::pin(async move {
                        let request = BindingEventRequest {
                            name: "kin".into(),
                            data: payload(i),
                            metadata: binding_metadata(i)
                                .into_iter()
                                .map(|(k, v)| (k.to_owned(), v))
                                .collect(),
                        };
                        client.on_binding_event(request).await.unwrap();
                    })
                })
            } else {
                let client = hyper_util::client::legacy::Client::builder(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .build_http::<http_body_util::Full<bytes::Bytes>>();
                Box::new(move |i| {
                    let client = client.clone();
                    Box::pin(async move {
                        let mut request = hyper::Request::post(format!("http://{addr}/kin"))
                            .header("content-type", "application/octet-stream");
                        for (k, v) in binding_metadata(i) {
                            request = request.header(k, v);
                        }
                        let request = request
                            .body(http_body_util::Full::new(bytes::Bytes::from(payload(i))))
                            .unwrap();
                        let response = client.request(request).await.unwrap();
                        use http_body_util::BodyExt;
                        let _ = response.into_body().collect().await;
                    })
                })
            };
            // Warm up (connections, pools), then measure.
            futures::stream::iter((0..1000).map(&calls))
                .buffer_unordered(64)
                .collect::<Vec<_>>()
                .await;
            let (cpu, started) = (thread_cpu_seconds(), Instant::now());
            futures::stream::iter((0..n).map(&calls))
                .buffer_unordered(64)
                .collect::<Vec<_>>()
                .await;
            (
                n as f64 / started.elapsed().as_secs_f64(),
                (thread_cpu_seconds() - cpu) * 1e6 / n as f64,
            )
        })
    })
    .join()
    .unwrap()
}

/// The floor rows: each client library alone, into this process's trivial apps.
async fn floor(n: usize, rows: &mut Vec<Row>) {
    for protocol in ["grpc", "http"] {
        let sink = Arc::new(Sink::default());
        let addr = serve(protocol, false, sink, "bench".into()).await;
        let (rate, cpu) = tokio::task::spawn_blocking(move || client_floor(protocol, addr, n))
            .await
            .unwrap();
        let client = if protocol == "grpc" {
            "bare tonic client"
        } else {
            "bare hyper client"
        };
        rows.push(Row(
            format!("floor  {client} -> {protocol} app, one call per event (client CPU)"),
            rate,
            None,
            Some(cpu),
        ));
    }
}

/// Waits for `n` events; the rate, and fngate's CPU µs per event from the first one on.
async fn throughput(sink: &Sink, gate: &Fngate, n: usize) -> Option<(f64, f64)> {
    sink.wait_for(1, Duration::from_secs(600)).await?;
    let cpu_before = cpu_seconds(gate.0.id());
    let rate = sink.wait_for(n as u64, Duration::from_secs(600)).await?;
    let per_event = (cpu_seconds(gate.0.id()) - cpu_before) * 1e6 / n as f64;
    Some((rate, per_event))
}

async fn kafka(n: usize, rows: &mut Vec<Row>, latency: &mut Vec<String>) {
    // Each latency run gets its own topic: tansu's in-memory store slows down as a
    // partition accumulates batches, so a shared topic would penalise whoever runs second.
    let Some(tansu) = Tansu::start(&[("bench", 3), ("lat", 1), ("lat-fngate", 1)]) else {
        eprintln!("kafka skipped");
        return;
    };
    let brokers = tansu.brokers.clone();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let started = Instant::now();
    let sends: Vec<_> = (0..n)
        .map(|i| {
            let p = producer.clone();
            async move {
                let data = payload(i);
                let key = format!("k{}", i % 64);
                p.send(
                    FutureRecord::to("bench").key(&key).payload(&data),
                    Duration::from_secs(60),
                )
                .await
                .expect("produce");
            }
        })
        .collect();
    futures::stream::iter(sends)
        .buffer_unordered(1000)
        .collect::<Vec<_>>()
        .await;
    eprintln!(
        "kafka: produced {n} in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // Ceiling: the client alone, storing offsets as fngate does.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "raw")
        .set("fetch.wait.max.ms", FETCH_WAIT_MS.to_string())
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.offset.store", "false")
        .create()
        .unwrap();
    consumer.subscribe(&["bench"]).unwrap();
    let mut got = 0;
    let mut first = None;
    while got < n {
        let m = consumer.recv().await.unwrap();
        first.get_or_insert_with(Instant::now);
        consumer.store_offset_from_message(&m).unwrap();
        got += 1;
    }
    let ceiling = n as f64 / first.unwrap().elapsed().as_secs_f64();
    drop(consumer);
    rows.push(Row(
        "kafka  rdkafka consumer alone (ceiling)".into(),
        ceiling,
        None,
        None,
    ));

    // Latency at 1,000 events/s: first the raw client as the peer, then fngate, ordered
    // (one in flight per partition).
    let lat_producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "0")
        .create()
        .unwrap();
    {
        let raw_sink = Arc::new(Sink::default());
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "rawlat")
            .set("fetch.wait.max.ms", FETCH_WAIT_MS.to_string())
            .set("auto.offset.reset", "latest")
            .create()
            .unwrap();
        consumer.subscribe(&["lat"]).unwrap();
        let consumer = Arc::new(consumer);
        let (c, rs) = (consumer.clone(), raw_sink.clone());
        let reader = tokio::spawn(async move {
            loop {
                if let Ok(m) = c.recv().await {
                    use rdkafka::Message;
                    rs.hit(m.payload().unwrap_or_default());
                }
            }
        });
        while raw_sink.count.load(Ordering::Relaxed) == 0 {
            let _ = lat_producer
                .send(
                    FutureRecord::<(), _>::to("lat").payload(&payload(0)),
                    Duration::from_secs(5),
                )
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        raw_sink.reset();
        let total = rate_run(1000, 5, |data| {
            let p = lat_producer.clone();
            async move {
                let _ = p
                    .send(
                        FutureRecord::<(), _>::to("lat").payload(&data),
                        Duration::from_secs(5),
                    )
                    .await;
            }
        })
        .await;
        raw_sink.wait_for(total, Duration::from_secs(60)).await;
        reader.abort();
        let mut l = raw_sink.latencies_us.lock().unwrap().clone();
        latency.push(format!(
            "kafka  rdkafka consumer alone, 1,000/s for 5 s: p50 {:.2} ms  p99 {:.2} ms  (n={})",
            p(&mut l, 0.5),
            p(&mut l, 0.99),
            l.len()
        ));
    }
    let sink = Arc::new(Sink::default());
    let addr = serve_grpc(sink.clone(), "lat-fngate".into(), false).await;
    let component = format!("apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: kin\nspec:\n  type: bindings.kafka\n  metadata:\n    - {{name: brokers, value: \"{brokers}\"}}\n    - {{name: topics, value: lat-fngate}}\n    - {{name: consumerGroup, value: fngate-lat}}\n");
    let _gate = start_fngate(&function("kin", &component, None, "grpc", addr, 1));
    // Warm up until the consumer has joined and delivers, then measure.
    while sink.count.load(Ordering::Relaxed) == 0 {
        let _ = lat_producer
            .send(
                FutureRecord::<(), _>::to("lat-fngate").payload(&payload(0)),
                Duration::from_secs(5),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sink.reset();
    let total = rate_run(1000, 5, |data| {
        let p = lat_producer.clone();
        async move {
            let _ = p
                .send(
                    FutureRecord::<(), _>::to("lat-fngate").payload(&data),
                    Duration::from_secs(5),
                )
                .await;
        }
    })
    .await;
    sink.wait_for(total, Duration::from_secs(60)).await;
    let mut l = sink.latencies_us.lock().unwrap().clone();
    if std::env::var("BENCH_TRACE").is_ok() {
        for (i, chunk) in l.chunks(500).enumerate() {
            let mut c = chunk.to_vec();
            eprintln!(
                "chunk {i}: p50 {:.2} ms max {:.2} ms",
                p(&mut c, 0.5),
                p(&mut c, 1.0)
            );
        }
    }
    latency.push(format!(
        "kafka  -> grpc app, 1,000/s for 5 s: p50 {:.2} ms  p99 {:.2} ms  (n={})",
        p(&mut l, 0.5),
        p(&mut l, 0.99),
        l.len()
    ));
    // Throughput last: tansu slows down once its in-memory store holds the consumed
    // backlog and its consumer groups, which would penalise the latency runs.
    for (protocol, bulk) in runs() {
        let sink = Arc::new(Sink::default());
        let addr = serve(protocol, bulk, sink.clone(), "bench".into()).await;
        // Bindings have no bulk form in Dapr; the bulk runs use the pub/sub component.
        let (component, topic) = if bulk {
            (format!("apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: ps\nspec:\n  type: pubsub.kafka\n  metadata:\n    - {{name: brokers, value: \"{brokers}\"}}\n    - {{name: consumerGroup, value: fngate-{protocol}-bulk}}\n    - {{name: initialOffset, value: oldest}}\n"), Some("bench"))
        } else {
            (format!("apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: kin\nspec:\n  type: bindings.kafka\n  metadata:\n    - {{name: brokers, value: \"{brokers}\"}}\n    - {{name: topics, value: bench}}\n    - {{name: consumerGroup, value: fngate-{protocol}}}\n    - {{name: initialOffset, value: oldest}}\n"), None)
        };
        let name = if bulk { "ps" } else { "kin" };
        let concurrency = concurrency_of(bulk);
        let gate = start_fngate(&function(
            name,
            &component,
            topic,
            protocol,
            addr,
            concurrency,
        ));
        if let Some((rate, cpu)) = throughput(&sink, &gate, n).await {
            rows.push(Row(
                format!("kafka  fngate -> {}", run_name(protocol, bulk)),
                rate,
                Some(rate / ceiling),
                Some(cpu),
            ));
        }
    }

    drop(tansu);
}

/// Sends `per_second` stamped messages a second for `seconds`; returns how many.
async fn rate_run<F, Fut>(per_second: u64, seconds: u64, send: F) -> u64
where
    F: Fn(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_second));
    let total = per_second * seconds;
    for _ in 0..total {
        tick.tick().await;
        tokio::spawn(send(stamped()));
    }
    total
}

async fn jetstream(n: usize, rows: &mut Vec<Row>, latency: &mut Vec<String>) {
    use async_nats::jetstream::{self, consumer::pull};
    let client = match async_nats::connect("127.0.0.1:4222").await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("jetstream skipped: {e}");
            return;
        }
    };
    let js = jetstream::new(client);
    let name = format!("BENCH{}", std::process::id());
    let _ = js.delete_stream(&name).await;
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
    let subject = format!("{name}.bench");
    let started = Instant::now();
    let mut acks = Vec::with_capacity(n);
    for i in 0..n {
        acks.push(
            js.publish(subject.clone(), payload(i).into())
                .await
                .unwrap(),
        );
        if acks.len() >= 2000 {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in acks {
        a.await.unwrap();
    }
    eprintln!(
        "jetstream: published {n} in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let raw = stream
        .create_consumer(pull::Config {
            durable_name: Some("raw".into()),
            filter_subject: subject.clone(),
            max_ack_pending: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = raw.messages().await.unwrap();
    let mut first = None;
    for _ in 0..n {
        let m = messages.next().await.unwrap().unwrap();
        first.get_or_insert_with(Instant::now);
        m.ack().await.unwrap();
    }
    let ceiling = n as f64 / first.unwrap().elapsed().as_secs_f64();
    drop(messages);
    rows.push(Row(
        "nats   async-nats pull consumer, ack each (ceiling)".into(),
        ceiling,
        None,
        None,
    ));

    for (protocol, bulk) in runs() {
        let sink = Arc::new(Sink::default());
        let addr = serve(protocol, bulk, sink.clone(), subject.clone()).await;
        let component = format!("apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: ps\nspec:\n  type: pubsub.jetstream\n  metadata:\n    - {{name: natsURL, value: \"nats://127.0.0.1:4222\"}}\n    - {{name: durableName, value: fngate-{protocol}-{bulk}}}\n");
        let gate = start_fngate(&function(
            "ps",
            &component,
            Some(&subject),
            protocol,
            addr,
            concurrency_of(bulk),
        ));
        if let Some((rate, cpu)) = throughput(&sink, &gate, n).await {
            rows.push(Row(
                format!("nats   fngate -> {}", run_name(protocol, bulk)),
                rate,
                Some(rate / ceiling),
                Some(cpu),
            ));
        }
    }

    let lat_subject = format!("{name}.lat");
    let sink = Arc::new(Sink::default());
    let addr = serve_grpc(sink.clone(), lat_subject.clone(), false).await;
    let component = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: ps\nspec:\n  type: pubsub.jetstream\n  metadata:\n    - {name: natsURL, value: \"nats://127.0.0.1:4222\"}\n    - {name: durableName, value: fngate-lat}\n    - {name: deliverPolicy, value: new}\n";
    let _gate = start_fngate(&function(
        "ps",
        component,
        Some(&lat_subject),
        "grpc",
        addr,
        1,
    ));
    while sink.count.load(Ordering::Relaxed) == 0 {
        let _ = js.publish(lat_subject.clone(), payload(0).into()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    sink.reset();
    let total = rate_run(1000, 5, |data| {
        let (js, s) = (js.clone(), lat_subject.clone());
        async move {
            if let Ok(ack) = js.publish(s, data.into()).await {
                let _ = ack.await;
            }
        }
    })
    .await;
    sink.wait_for(total, Duration::from_secs(60)).await;
    let mut l = sink.latencies_us.lock().unwrap().clone();
    latency.push(format!(
        "nats   -> grpc app, 1,000/s for 5 s: p50 {:.2} ms  p99 {:.2} ms  (n={})",
        p(&mut l, 0.5),
        p(&mut l, 0.99),
        l.len()
    ));
    let _ = js.delete_stream(&name).await;
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    let mut latency = Vec::new();
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    rt.block_on(async {
        if only.is_empty() || only == "kafka" {
            kafka(n, &mut rows, &mut latency).await;
        }
        if only.is_empty() || only == "nats" {
            jetstream(n, &mut rows, &mut latency).await;
        }
        if only.is_empty() || only == "floor" {
            floor(n, &mut rows).await;
        }
    });
    println!("\n{n} messages of 1 KiB");
    println!(
        "{:<75} {:>12} {:>10} {:>14}",
        "path", "events/s", "/ceiling", "CPU/event"
    );
    for Row(name, rate, ratio, cpu) in &rows {
        println!(
            "{name:<75} {rate:>12.0} {:>10} {:>14}",
            ratio.map(|r| format!("{r:.2}")).unwrap_or_default(),
            cpu.map(|c| format!("{c:.1} µs")).unwrap_or_default()
        );
    }
    for l in &latency {
        println!("{l}");
    }
}
