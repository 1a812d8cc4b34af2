//! MQTT QoS 1 input: events/s and CPU per event through fngate (a `bindings.mqtt`
//! trigger into a trivial Dapr gRPC app, each message acknowledged after the app took
//! it) against a raw rumqttc consumer (the crate fngate uses, manual acks) in the same
//! run. Both drain the same backlog: N messages queued by a Mosquitto of the bench's own
//! for a persistent session while its consumer is away. The consumer under test (fngate,
//! or this binary re-run as the raw consumer) is pinned to core 1, everything else to 0.
//!
//!   cargo bench --bench mqtt [N]        (default 20,000 messages of 1 KiB)

mod support;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::app::{serve_grpc, EventSink};
use support::state::{cpu_seconds, start_fngate};

const TOPIC: &str = "bench/mqtt";

#[derive(Default)]
struct Count(AtomicU64);

impl EventSink for Count {
    fn hit(&self, _: &[u8]) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// A Mosquitto that queues without limit for offline persistent sessions.
struct Broker {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = support::free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nuser root\n"),
        )
        .unwrap();
        let child = std::process::Command::new("taskset")
            .args(["-c", "0", "mosquitto", "-c"])
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto (scripts/setup.sh)");
        support::state::wait_port(port);
        Broker {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn publish(port: u16, n: usize) {
    let mut options = MqttOptions::new("bench-publisher", "127.0.0.1", port);
    options
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    let payload = vec![b'x'; 1024];
    let sender = tokio::spawn(async move {
        for _ in 0..n {
            client
                .publish(TOPIC, QoS::AtLeastOnce, false, payload.clone())
                .await
                .unwrap();
        }
        client
    });
    let mut acked = 0;
    while acked < n {
        if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await.unwrap() {
            acked += 1;
        }
    }
    let _ = sender.await;
}

/// The raw consumer: `raw-consumer PORT N CLIENT` receives N messages, acking each, and
/// prints the seconds and the CPU seconds it took from the first.
async fn raw_consumer(port: u16, n: usize, client_id: &str) {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(1 << 20, 1 << 20);
    // Acks are queued from the polling loop itself: room for all of them, or the queue
    // fills while nothing drains it.
    let (client, mut eventloop) = AsyncClient::new(options, n + 100);
    let mut got = 0;
    let mut first = None;
    let mut cpu_at_first = 0.0;
    let mut subscribed = false;
    // With `n` 0 it only makes the session: connected and subscribed, then gone.
    while got < n || !subscribed {
        match eventloop.poll().await.unwrap() {
            Event::Incoming(Packet::ConnAck(_)) => {
                client.subscribe(TOPIC, QoS::AtLeastOnce).await.unwrap();
            }
            Event::Incoming(Packet::SubAck(_)) => subscribed = true,
            Event::Incoming(Packet::Publish(p)) => {
                if first.is_none() {
                    first = Some(Instant::now());
                    cpu_at_first = cpu_seconds(std::process::id());
                }
                client.ack(&p).await.unwrap();
                got += 1;
            }
            _ => {}
        }
    }
    let elapsed = first.map(|f| f.elapsed().as_secs_f64()).unwrap_or_default();
    println!(
        "{elapsed} {}",
        cpu_seconds(std::process::id()) - cpu_at_first
    );
}

fn run_raw(port: u16, n: usize, id: &str) -> std::process::Child {
    std::process::Command::new("taskset")
        .args(["-c", "1"])
        .arg(std::env::current_exe().unwrap())
        .args(["raw-consumer", &port.to_string(), &n.to_string(), id])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    if args.get(1).map(String::as_str) == Some("raw-consumer") {
        let (port, n) = (args[2].parse().unwrap(), args[3].parse().unwrap());
        rt.block_on(raw_consumer(port, n, &args[4]));
        return;
    }
    let n: usize = args
        .iter()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    assert!(support::pin_self_to_cpu0(), "taskset (util-linux)");
    let broker = Broker::start();

    // Raw: make the session, queue the backlog, then drain it.
    let mut session = run_raw(broker.port, 0, "bench-raw");
    session.wait().unwrap();
    rt.block_on(publish(broker.port, n));
    let out = run_raw(broker.port, n, "bench-raw")
        .wait_with_output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (raw_secs, raw_cpu) = text.trim().split_once(' ').unwrap();
    let (raw_secs, raw_cpu): (f64, f64) = (raw_secs.parse().unwrap(), raw_cpu.parse().unwrap());
    let raw_rate = n as f64 / raw_secs;

    // fngate: the same, its trigger's session made by a first start.
    let count = Arc::new(Count::default());
    let app = rt.block_on(serve_grpc(count.clone(), "unused".into(), false));
    let catalog = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: kin\n  namespace: default\nspec:\n  type: bindings.mqtt\n  version: v1\n  metadata:\n    - name: url\n      value: tcp://127.0.0.1:{}\n    - name: topic\n      value: {TOPIC}\n    - name: consumerID\n      value: bench-fngate\n---\napiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata:\n  name: reader\n  namespace: default\nspec:\n  serving:\n    annotations:\n      dapr.io/app-protocol: grpc\n      dapr.io/app-port: \"{}\"\n    triggers:\n      dapr:\n        - name: kin\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: reader\n  namespace: default\n  labels:\n    kubernetes.io/service-name: reader\naddressType: IPv4\nendpoints:\n  - addresses: [\"127.0.0.1\"]\n    conditions:\n      ready: true\nports:\n  - port: {}\n",
        broker.port,
        app.port(),
        app.port()
    );
    {
        let first = start_fngate(&catalog, "1");
        // Connected and subscribed: the broker keeps the session from now on.
        std::thread::sleep(Duration::from_secs(2));
        drop(first);
    }
    rt.block_on(publish(broker.port, n));
    let gate = start_fngate(&catalog, "1");
    let pid = gate.proc.0.id();
    let deadline = Instant::now() + Duration::from_secs(600);
    while count.0.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "nothing delivered");
        std::thread::sleep(Duration::from_millis(1));
    }
    let (t0, cpu0) = (Instant::now(), cpu_seconds(pid));
    while count.0.load(Ordering::Relaxed) < n as u64 {
        assert!(
            Instant::now() < deadline,
            "fngate delivered {} of {n}",
            count.0.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let (secs, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds(pid) - cpu0);
    let rate = n as f64 / secs;
    println!("\n{n} MQTT messages of 1 KiB at QoS 1, a persistent session's backlog");
    println!(
        "{:<44} {:>10} {:>10} {:>16}",
        "consumer", "events/s", "/ raw", "CPU per event"
    );
    println!(
        "{:<44} {:>10.0} {:>10} {:>13.1} µs",
        "raw rumqttc (manual acks)",
        raw_rate,
        "1.00",
        raw_cpu / n as f64 * 1e6
    );
    println!(
        "{:<44} {:>10.0} {:>10.2} {:>13.1} µs  ({:.1}× raw)",
        "fngate bindings.mqtt -> gRPC app, ack after",
        rate,
        rate / raw_rate,
        cpu / n as f64 * 1e6,
        cpu / raw_cpu.max(1e-9)
    );
}
