//! Soak: fngate under a steady mixed load for a long time (`-- SECONDS`, default 1800).
//!
//! - HTTP: 150 requests/s spread over three functions whose routes never change (keep-alive
//!   clients, as an ingress), plus 10/s to a function that goes 1 → 0 → 1 every minute
//!   (killed and its EndpointSlice turned not ready for 15 s, then started again);
//! - the catalog: a fourth Function rewritten every second (its path and an annotation);
//! - events: 50/s on a Kafka topic (tansu, bindings.kafka) and 50/s on a JetStream subject
//!   (pubsub.jetstream), delivered to one gRPC app that records each event's id.
//!
//! Every 10 s fngate's RSS, open file descriptors and threads are sampled. The pass
//! criteria are printed: zero failed requests on the unchanged routes, zero lost events,
//! RSS and fds flat after warm-up (first and last fifth of the samples after the first
//! 6 minutes compared, and every 3-minute window's RSS and fds range printed). Samples go to `target/soak/samples.csv` for `benches/soak.sh` to
//! plot. fngate is pinned to CPU 1 when `SOAK_PIN` is set (the script sets it), the load
//! here to CPU 0.

mod support;

use http_body_util::{BodyExt, Empty};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::app::{serve_grpc, EventSink};
use support::state::{wait_port, Proc};
use support::{free_port, Tansu};

const HTTP_FUNCTIONS: [&str; 3] = ["alpha", "beta", "gamma"];
const HTTP_RATE: u64 = 150;
const BLINKER_RATE: u64 = 10;
const EVENT_RATE: u64 = 50;
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// RSS settles within about 6 minutes (allocator arenas, pools at their working size).
const WARM_UP: Duration = Duration::from_secs(360);

/// Event ids the app received (`k<n>` from Kafka, `j<n>` from JetStream), and repeats.
#[derive(Default)]
struct Received {
    ids: Mutex<HashSet<String>>,
    repeats: AtomicU64,
}

impl Received {
    fn record(&self, data: &[u8]) {
        let id = String::from_utf8_lossy(data).into_owned();
        if !self.ids.lock().unwrap().insert(id) {
            self.repeats.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn count(&self, prefix: char) -> usize {
        self.ids
            .lock()
            .unwrap()
            .iter()
            .filter(|i| i.starts_with(prefix))
            .count()
    }
}

impl EventSink for Received {
    fn hit(&self, data: &[u8]) {
        self.record(data);
    }
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_fngate"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn echo(service: &str, port: u16) -> Proc {
    let child = Command::new(target_dir().join("examples/echo"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--service",
            service,
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("target/*/examples/echo: build it with `cargo build --release --examples`");
    wait_port(port);
    Proc(child)
}

fn slice(name: &str, port: u16, ready: bool) -> String {
    format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nendpoints:\n  - addresses: [\"127.0.0.1\"]\n    conditions: {{ready: {ready}}}\nports:\n  - {{name: http, port: {port}}}\n")
}

fn http_function(name: &str, port: u16, extra: &str) -> String {
    format!("apiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata:\n  name: {name}\n  namespace: default\n{extra}spec:\n  serving:\n    triggers:\n      http:\n        port: {port}\n---\n{}", slice(name, port, true))
}

fn event_function(name: &str, component: &str, topic: Option<&str>, app: SocketAddr) -> String {
    let topic = topic.map(|t| format!(", topic: {t}")).unwrap_or_default();
    format!("apiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  serving:\n    annotations:\n      dapr.io/app-protocol: grpc\n      dapr.io/app-port: \"{}\"\n    triggers:\n      dapr:\n        - {{name: {component}{topic}}}\n---\n{}", app.port(), slice(name, app.port(), true))
}

fn write_atomically(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

#[derive(Default)]
struct Outcomes {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// One sample of fngate's process and of the load so far.
struct Sample {
    at: Duration,
    rss_kb: u64,
    fds: usize,
    threads: u64,
    http_ok: u64,
    http_failed: u64,
    blinker_ok: u64,
    blinker_failed: u64,
    kafka_sent: u64,
    jetstream_sent: u64,
    received: usize,
}

fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Sends `per_second` requests a second to `host` until `stop`, each counted.
async fn paced_requests(
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Empty<bytes::Bytes>,
    >,
    port: u16,
    hosts: Vec<String>,
    per_second: u64,
    outcomes: Arc<Outcomes>,
    stop: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_second));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut i = 0usize;
    let mut in_flight = tokio::task::JoinSet::new();
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let host = hosts[i % hosts.len()].clone();
        i += 1;
        let (client, outcomes) = (client.clone(), outcomes.clone());
        in_flight.spawn(async move {
            let req = hyper::Request::get(format!("http://127.0.0.1:{port}/soak/{i}"))
                .header("host", host)
                .body(Empty::new())
                .unwrap();
            let ok = match client.request(req).await {
                Ok(resp) => {
                    let status = resp.status();
                    resp.into_body().collect().await.is_ok() && status == 200
                }
                Err(_) => false,
            };
            if ok {
                outcomes.ok.fetch_add(1, Ordering::Relaxed);
            } else {
                outcomes.failed.fetch_add(1, Ordering::Relaxed);
            }
        });
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
}

fn main() {
    let seconds: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1800);
    let out_dir = target_dir().parent().unwrap().join("soak");
    std::fs::create_dir_all(&out_dir).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(soak(seconds, &out_dir));
}

async fn soak(seconds: u64, out_dir: &Path) {
    // Kafka (tansu, in memory) with a 3-partition topic; JetStream on the machine's NATS.
    let tansu = Tansu::start(&[("soak", 3)]).expect("tansu");
    let brokers = tansu.brokers.clone();
    let nats = async_nats::connect("127.0.0.1:4222")
        .await
        .expect("NATS with JetStream on 127.0.0.1:4222 (scripts/services.sh)");
    let js = async_nats::jetstream::new(nats);
    let stream = format!("SOAK{}", std::process::id());
    let subject = format!("{stream}.events");
    js.create_stream(async_nats::jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{stream}.>")],
        ..Default::default()
    })
    .await
    .unwrap();

    let received = Arc::new(Received::default());
    let app = serve_grpc(received.clone(), subject.clone(), false).await;

    // The catalog.
    let work = tempfile::tempdir().unwrap();
    let catalog = work.path().join("catalog");
    std::fs::create_dir(&catalog).unwrap();
    let mut backends = Vec::new();
    for name in HTTP_FUNCTIONS {
        let port = free_port();
        backends.push(echo(name, port));
        write_atomically(
            &catalog,
            &format!("{name}.yaml"),
            &http_function(name, port, ""),
        );
    }
    let blinker_port = free_port();
    let mut blinker = Some(echo("blinker", blinker_port));
    write_atomically(
        &catalog,
        "blinker.yaml",
        &http_function("blinker", blinker_port, ""),
    );
    let churn_port = free_port();
    backends.push(echo("churn", churn_port));
    write_atomically(
        &catalog,
        "churn.yaml",
        &http_function("churn", churn_port, ""),
    );
    write_atomically(
        &catalog,
        "events.yaml",
        &[
            format!("apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: kin\n  namespace: default\nspec:\n  type: bindings.kafka\n  metadata:\n    - {{name: brokers, value: \"{brokers}\"}}\n    - {{name: topics, value: soak}}\n    - {{name: consumerGroup, value: fngate-soak}}\n    - {{name: initialOffset, value: oldest}}\n"),
            event_function("kq", "kin", None, app),
            format!("apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: ps\n  namespace: default\nspec:\n  type: pubsub.jetstream\n  metadata:\n    - {{name: natsURL, value: \"nats://127.0.0.1:4222\"}}\n    - {{name: durableName, value: fngate-soak}}\n"),
            event_function("jq", "ps", Some(&subject), app),
        ]
        .join("---\n"),
    );

    let (http, admin) = (free_port(), free_port());
    let settings = work.path().join("fngate.yaml");
    std::fs::write(
        &settings,
        format!("listen:\n  http: 127.0.0.1:{http}\n  admin: 127.0.0.1:{admin}\n  dapr_grpc: \"\"\n  dapr_http: \"\"\ncatalog:\n  dir: {}\nthreads: 1\nevents:\n  threads: 1\nactivator:\n  hold_timeout: 60s\n", catalog.display()),
    )
    .unwrap();
    let pin = std::env::var("SOAK_PIN").is_ok();
    let mut command = if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "1"]).arg(env!("CARGO_BIN_EXE_fngate"));
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_fngate"))
    };
    let fngate = Proc(
        command
            .args(["run", "--config"])
            .arg(&settings)
            .env("RUST_LOG", "error")
            .spawn()
            .expect("fngate"),
    );
    let pid = fngate.0.id();
    while !support::http_get(admin, "localhost", "/readyz").starts_with("HTTP/1.1 200") {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if pin {
        let _ = Command::new("taskset")
            .args(["-cp", "0", &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status();
    }

    let stop = Arc::new(AtomicBool::new(false));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http::<Empty<bytes::Bytes>>();
    let steady = Arc::new(Outcomes::default());
    let blinking = Arc::new(Outcomes::default());
    let hosts = HTTP_FUNCTIONS
        .iter()
        .map(|f| format!("{f}.default.ofn.io"))
        .collect();
    let mut load = tokio::task::JoinSet::new();
    load.spawn(paced_requests(
        client.clone(),
        http,
        hosts,
        HTTP_RATE,
        steady.clone(),
        stop.clone(),
    ));
    load.spawn(paced_requests(
        client.clone(),
        http,
        vec!["blinker.default.ofn.io".into()],
        BLINKER_RATE,
        blinking.clone(),
        stop.clone(),
    ));
    let kafka_sent = Arc::new(AtomicU64::new(0));
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    load.spawn({
        let (stop, sent) = (stop.clone(), kafka_sent.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / EVENT_RATE));
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let id = format!("k{i}");
                let key = format!("key{}", i % 16);
                // A failed produce is retried: what counts is what the broker took.
                while producer
                    .send(
                        FutureRecord::to("soak").key(&key).payload(&id),
                        Duration::from_secs(10),
                    )
                    .await
                    .is_err()
                {}
                sent.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }
    });
    let jetstream_sent = Arc::new(AtomicU64::new(0));
    load.spawn({
        let (stop, sent, js, subject) = (
            stop.clone(),
            jetstream_sent.clone(),
            js.clone(),
            subject.clone(),
        );
        async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / EVENT_RATE));
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let id = format!("j{i}");
                loop {
                    if let Ok(ack) = js.publish(subject.clone(), id.clone().into()).await {
                        if ack.await.is_ok() {
                            break;
                        }
                    }
                }
                sent.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }
    });

    // Catalog edits every second; the blinker 1 → 0 → 1 every minute; samples every 10 s.
    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut edit = 0u64;
    let mut next_sample = Duration::ZERO;
    let mut catalog_tick = tokio::time::interval(Duration::from_secs(1));
    println!(
        "{:>6} {:>9} {:>5} {:>7} {:>10} {:>8} {:>12} {:>14} {:>10} {:>10}",
        "t (s)",
        "RSS (MB)",
        "fds",
        "threads",
        "HTTP ok",
        "failed",
        "blinker ok",
        "blinker fail",
        "events sent",
        "received"
    );
    while started.elapsed() < Duration::from_secs(seconds) {
        catalog_tick.tick().await;
        edit += 1;
        write_atomically(
            &catalog,
            "churn.yaml",
            &http_function(
                "churn",
                churn_port,
                &format!("  annotations:\n    soak/edit: \"{edit}\"\n"),
            ),
        );
        let in_minute = started.elapsed().as_secs() % 60;
        if in_minute == 30 && blinker.is_some() {
            write_atomically(
                &catalog,
                "blinker.yaml",
                &format!(
                    "{}",
                    http_function("blinker", blinker_port, "")
                        .replace("ready: true", "ready: false")
                ),
            );
            blinker = None;
        } else if in_minute == 45 && blinker.is_none() {
            blinker = Some(echo("blinker", blinker_port));
            write_atomically(
                &catalog,
                "blinker.yaml",
                &http_function("blinker", blinker_port, ""),
            );
        }
        if started.elapsed() >= next_sample {
            next_sample += SAMPLE_EVERY;
            let s = Sample {
                at: started.elapsed(),
                rss_kb: proc_status(pid, "VmRSS:"),
                fds: open_fds(pid),
                threads: proc_status(pid, "Threads:"),
                http_ok: steady.ok.load(Ordering::Relaxed),
                http_failed: steady.failed.load(Ordering::Relaxed),
                blinker_ok: blinking.ok.load(Ordering::Relaxed),
                blinker_failed: blinking.failed.load(Ordering::Relaxed),
                kafka_sent: kafka_sent.load(Ordering::Relaxed),
                jetstream_sent: jetstream_sent.load(Ordering::Relaxed),
                received: received.ids.lock().unwrap().len(),
            };
            println!(
                "{:>6} {:>9.1} {:>5} {:>7} {:>10} {:>8} {:>12} {:>14} {:>10} {:>10}",
                s.at.as_secs(),
                s.rss_kb as f64 / 1024.0,
                s.fds,
                s.threads,
                s.http_ok,
                s.http_failed,
                s.blinker_ok,
                s.blinker_failed,
                s.kafka_sent + s.jetstream_sent,
                s.received
            );
            samples.push(s);
        }
    }
    stop.store(true, Ordering::Relaxed);
    // Requests still held for the blinker are released before the load is awaited.
    if blinker.is_none() {
        blinker = Some(echo("blinker", blinker_port));
        write_atomically(
            &catalog,
            "blinker.yaml",
            &http_function("blinker", blinker_port, ""),
        );
    }
    while load.join_next().await.is_some() {}
    // Every event sent must arrive; give the consumers time to catch up.
    let (ks, jss) = (
        kafka_sent.load(Ordering::Relaxed) as usize,
        jetstream_sent.load(Ordering::Relaxed) as usize,
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while (received.count('k') < ks || received.count('j') < jss) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (kr, jr) = (received.count('k'), received.count('j'));
    drop(blinker);
    drop(fngate);

    let mut csv = String::from("seconds,rss_kb,fds,threads,http_ok,http_failed,blinker_ok,blinker_failed,events_sent,events_received\n");
    for s in &samples {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{}\n",
            s.at.as_secs(),
            s.rss_kb,
            s.fds,
            s.threads,
            s.http_ok,
            s.http_failed,
            s.blinker_ok,
            s.blinker_failed,
            s.kafka_sent + s.jetstream_sent,
            s.received
        ));
    }
    std::fs::write(out_dir.join("samples.csv"), csv).unwrap();

    let mut after: Vec<&Sample> = samples.iter().filter(|s| s.at >= WARM_UP).collect();
    if after.is_empty() {
        // A run shorter than the warm-up: compare what there is.
        after = samples.iter().collect();
    }
    let fifth = (after.len() / 5).max(1);
    let mean = |xs: &[&Sample], f: &dyn Fn(&Sample) -> f64| {
        xs.iter().map(|s| f(s)).sum::<f64>() / xs.len().max(1) as f64
    };
    let (first, last) = (
        &after[..fifth.min(after.len())],
        &after[after.len().saturating_sub(fifth)..],
    );
    let rss = |s: &Sample| s.rss_kb as f64 / 1024.0;
    let fds = |s: &Sample| s.fds as f64;
    let (rss_first, rss_last) = (mean(first, &rss), mean(last, &rss));
    let (fds_first, fds_last) = (mean(first, &fds), mean(last, &fds));
    let rss_range = after
        .iter()
        .map(|s| rss(s))
        .fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    println!(
        "\n{:>9} {:>22} {:>12} {:>8}",
        "minutes", "RSS min/median/max MB", "fds min-max", "threads"
    );
    for window in samples.chunks(18) {
        let mut rss: Vec<f64> = window.iter().map(|s| s.rss_kb as f64 / 1024.0).collect();
        rss.sort_by(|a, b| a.total_cmp(b));
        let fds = window.iter().map(|s| s.fds);
        let threads = window.iter().map(|s| s.threads);
        println!(
            "{:>4}-{:<4} {:>22} {:>12} {:>8}",
            window[0].at.as_secs() / 60,
            window[window.len() - 1].at.as_secs() / 60 + 1,
            format!(
                "{:.1} / {:.1} / {:.1}",
                rss[0],
                rss[rss.len() / 2],
                rss[rss.len() - 1]
            ),
            format!("{}-{}", fds.clone().min().unwrap(), fds.max().unwrap()),
            format!(
                "{}-{}",
                threads.clone().min().unwrap(),
                threads.max().unwrap()
            ),
        );
    }
    let failed = steady.failed.load(Ordering::Relaxed);
    let lost = (ks - kr.min(ks)) + (jss - jr.min(jss));
    println!(
        "\nsoak of {seconds} s (samples after {} s of warm-up: {})",
        WARM_UP.as_secs(),
        after.len()
    );
    println!(
        "requests on unchanged routes: {} ok, {failed} failed",
        steady.ok.load(Ordering::Relaxed)
    );
    println!(
        "requests to the 1→0→1 function: {} ok, {} failed (held while at zero)",
        blinking.ok.load(Ordering::Relaxed),
        blinking.failed.load(Ordering::Relaxed)
    );
    println!(
        "events: Kafka {kr}/{ks}, JetStream {jr}/{jss} received, {lost} lost, {} delivered more than once",
        received.repeats.load(Ordering::Relaxed)
    );
    println!("catalog edits: {edit}");
    println!(
        "RSS after warm-up: {:.1}–{:.1} MB; first fifth {rss_first:.1} MB, last fifth {rss_last:.1} MB ({:+.1} %)",
        rss_range.0,
        rss_range.1,
        (rss_last / rss_first - 1.0) * 100.0
    );
    println!("fds after warm-up: first fifth {fds_first:.1}, last fifth {fds_last:.1}");
    let pass = failed == 0 && lost == 0;
    println!(
        "{}",
        if pass {
            "PASS: no failed request on unchanged routes, no lost event"
        } else {
            "FAIL"
        }
    );
}
