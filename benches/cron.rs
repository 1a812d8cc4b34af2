//! Cron tick lateness: 100 `bindings.cron` triggers of `@every 1s` through fngate into a
//! trivial Dapr gRPC app, against a peer in the same run: 100 tokio tasks that sleep to
//! each whole second on the wall clock and call the same app's `OnBindingEvent` directly
//! (the least a timer and a gRPC call cost here). Lateness is the arrival time at the app
//! minus the whole second the tick was due; every tick due in the window is counted, so a
//! missed or doubled tick shows. fngate runs pinned to core 1, this process to core 0.
//!
//!   cargo bench --bench cron [SECONDS]        (default 20 s measured per side)

mod support;

use dapr::dapr::proto::runtime::v1::app_callback_client::AppCallbackClient;
use dapr::dapr::proto::runtime::v1::BindingEventRequest;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::app::{serve_grpc, EventSink};
use support::pct;
use support::state::{cpu_seconds, start_fngate};

const TRIGGERS: usize = 100;
/// Seconds left out at the start of each side (start-up, first connections).
const WARM_UP: u64 = 3;

/// Arrival times, as seconds since the epoch.
#[derive(Default)]
struct Arrivals(Mutex<Vec<f64>>);

impl EventSink for Arrivals {
    fn hit(&self, _: &[u8]) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        self.0.lock().unwrap().push(now.as_secs_f64());
    }
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Lateness (ms) of the arrivals due in whole seconds `[from, to)`, and how many there
/// were against how many were due.
fn lateness(arrivals: &[f64], from: u64, to: u64) -> (Vec<f64>, usize, usize) {
    let late: Vec<f64> = arrivals
        .iter()
        .filter(|a| (from as f64..to as f64).contains(*a))
        .map(|a| (a - a.floor()) * 1000.0)
        .collect();
    let n = late.len();
    (late, n, TRIGGERS * (to - from) as usize)
}

fn catalog(app_port: u16) -> String {
    (0..TRIGGERS)
        .map(|i| {
            format!(
                "apiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata:\n  name: tick-{i}\n  namespace: default\nspec:\n  serving:\n    annotations:\n      dapr.io/app-protocol: grpc\n      dapr.io/app-port: \"{app_port}\"\n    bindings:\n      kin:\n        type: bindings.cron\n        version: v1\n        metadata:\n          - name: schedule\n            value: \"@every 1s\"\n    triggers:\n      dapr:\n        - name: kin\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: tick-{i}\n  namespace: default\n  labels:\n    kubernetes.io/service-name: tick-{i}\naddressType: IPv4\nendpoints:\n  - addresses: [\"127.0.0.1\"]\n    conditions:\n      ready: true\nports:\n  - port: {app_port}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

fn report(name: &str, arrivals: &[f64], from: u64, to: u64, cpu_per_tick: Option<f64>) -> f64 {
    let (mut late, got, due) = lateness(arrivals, from, to);
    let (p50, p99) = (pct(&mut late, 0.5), pct(&mut late, 0.99));
    println!(
        "{name:<28} ticks {got:>5} of {due:<5} p50 {p50:>7.2} ms  p99 {p99:>7.2} ms  max {:>7.2} ms{}",
        late.last().copied().unwrap_or_default(),
        cpu_per_tick
            .map(|c| format!("  fngate CPU {c:.1} µs/tick"))
            .unwrap_or_default()
    );
    p99
}

fn main() {
    let seconds: u64 = support::number_arg(20);
    assert!(support::pin_self_to_cpu0(), "taskset (util-linux)");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let fngate_arrivals = std::sync::Arc::new(Arrivals::default());
    let peer_arrivals = std::sync::Arc::new(Arrivals::default());

    // fngate.
    let app = rt.block_on(serve_grpc(fngate_arrivals.clone(), "unused".into(), false));
    let gate = start_fngate(&catalog(app.port()), "1");
    let from = now_secs().ceil() as u64 + WARM_UP;
    let to = from + seconds;
    std::thread::sleep(Duration::from_secs_f64(from as f64 - now_secs()));
    let cpu0 = cpu_seconds(gate.proc.0.id());
    std::thread::sleep(Duration::from_secs_f64(to as f64 - now_secs() + 0.5));
    let cpu1 = cpu_seconds(gate.proc.0.id());
    drop(gate);
    let fngate_arrivals = fngate_arrivals.0.lock().unwrap().clone();
    let ticks = lateness(&fngate_arrivals, from, to).1.max(1);

    // The peer: a timer and a direct call per trigger.
    let app = rt.block_on(serve_grpc(peer_arrivals.clone(), "unused".into(), false));
    let from_peer = now_secs().ceil() as u64 + WARM_UP;
    let to_peer = from_peer + seconds;
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..TRIGGERS {
            tasks.spawn(async move {
                let mut client = AppCallbackClient::connect(format!("http://{app}"))
                    .await
                    .unwrap();
                loop {
                    let next = now_secs().floor() + 1.0;
                    if next >= (to_peer + 1) as f64 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs_f64((next - now_secs()).max(0.0))).await;
                    let _ = client
                        .on_binding_event(BindingEventRequest {
                            name: "kin".into(),
                            ..Default::default()
                        })
                        .await;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    });
    let peer_arrivals = peer_arrivals.0.lock().unwrap().clone();

    println!("\n{TRIGGERS} cron triggers of @every 1s, {seconds} s measured after {WARM_UP} s");
    let p99 = report(
        "fngate",
        &fngate_arrivals,
        from,
        to,
        Some((cpu1 - cpu0) / ticks as f64 * 1e6),
    );
    let peer = report(
        "tokio timer + tonic call",
        &peer_arrivals,
        from_peer,
        to_peer,
        None,
    );
    println!("p99 ratio fngate / peer: {:.2}", p99 / peer.max(1e-3));
}
