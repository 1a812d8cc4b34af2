//! Event triggers from Kafka into real Dapr apps. The broker is tansu, an
//! Apache-Kafka-compatible broker (`scripts/install-tansu.sh`), started here on a free port.

mod common;

use common::kafka::Kafka;
use common::*;
use std::collections::{HashMap, HashSet};

fn component(name: &str, kind: &str, brokers: &str, extra: &str) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  type: {kind}\n  version: v1\n  metadata:\n    - name: brokers\n      value: \"{brokers}\"\n    - name: initialOffset\n      value: oldest\n{extra}"
    )
}

/// Writes the catalog of `kafka_binding_function` with `app` as its ready endpoint.
fn write_kafka_binding_catalog(
    dir: &std::path::Path,
    kafka: &Kafka,
    topic: &str,
    function: &str,
    app: &DaprApp,
) {
    write_atomically(
        dir,
        "fn.yaml",
        &[
            kafka_binding_function(kafka, topic, function, app),
            endpoint_slice("default", function, &[app.addr], true),
        ]
        .join("---\n"),
    );
}

/// A `bindings.kafka` component `kin` on `topic` (a consumer group of its own) and Function
/// `function` triggered by it, delivered to `app` over gRPC.
fn kafka_binding_function(kafka: &Kafka, topic: &str, function: &str, app: &DaprApp) -> String {
    [
        component(
            "kin",
            "bindings.kafka",
            &kafka.brokers,
            &format!(
                "    - name: topics\n      value: {topic}\n    - name: consumerGroup\n      value: {}\n",
                unique("g")
            ),
        ),
        dapr_function_yaml(function, "kin", None, "grpc", app.addr.port(), ""),
    ]
    .join("---\n")
}

#[test]
fn binding_over_grpc_gets_dapr_kafka_metadata_in_partition_order_with_retries() {
    let kafka = Kafka::start();
    let topic = unique("in");
    kafka.create_topic(&topic, 3);
    let app = DaprApp::start("grpc", "kin", "");
    let dir = tempfile::tempdir().unwrap();
    write_kafka_binding_catalog(dir.path(), &kafka, &topic, "ingest", &app);
    let gate = Fngate::start(dir.path());
    let total = 30;
    for i in 0..total {
        let payload = if i % 7 == 3 {
            format!("p{i} retry-once")
        } else {
            format!("p{i}")
        };
        kafka.produce(
            &topic,
            &format!("k{}", i % 3),
            &payload,
            &[("source", "test")],
        );
    }
    let events = app.wait_for("every record", |e| accepted_data(e).len() == total);
    let first = &events[0];
    assert_eq!(first["kind"], "binding");
    assert_eq!(first["name"], "kin");
    let md = &first["metadata"];
    assert_eq!(md["__topic"], topic.as_str());
    assert!(md["__key"].as_str().unwrap().starts_with('k'));
    assert_eq!(md["source"], "test", "record headers travel as metadata");
    for k in ["__offset", "__partition", "__timestamp"] {
        assert!(md[k].as_str().unwrap().parse::<i64>().is_ok(), "{k}: {md}");
    }
    // Per partition: offsets arrive in order, a retried record before everything after it.
    let mut last: HashMap<String, i64> = HashMap::new();
    for e in &events {
        let p = e["metadata"]["__partition"].as_str().unwrap().to_owned();
        let o: i64 = e["metadata"]["__offset"].as_str().unwrap().parse().unwrap();
        let prev = last.insert(p.clone(), o);
        match e["answer"].as_str().unwrap() {
            "RETRY" => assert!(
                prev.is_none_or(|x| x < o),
                "partition {p}: {prev:?} then {o}"
            ),
            _ => assert!(
                prev.is_none_or(|x| x <= o),
                "partition {p}: {prev:?} then {o}"
            ),
        }
    }
    let retried = events.iter().filter(|e| e["answer"] == "RETRY").count();
    assert_eq!(retried, 4, "p3, p10, p17, p24 each answered RETRY once");
    gate.wait_until(
        || gate.metric_opt("fngate_events_total{function=\"ingest\",namespace=\"default\",outcome=\"success\",trigger=\"kin\"}") == Some(total as f64),
        "successes counted",
    );
}

#[test]
fn a_partition_held_by_its_function_does_not_hold_back_the_other_partitions() {
    let kafka = Kafka::start();
    let topic = unique("hol");
    kafka.create_topic(&topic, 3);
    let release = tempfile::tempdir().unwrap();
    let release_file = release.path().join("release");
    let app = DaprApp::start_with(
        "grpc",
        "127.0.0.1:0",
        "kin",
        "",
        &["--hold-marked", release_file.to_str().unwrap()],
    );
    let dir = tempfile::tempdir().unwrap();
    write_kafka_binding_catalog(dir.path(), &kafka, &topic, "ordered", &app);
    // Partition 0: its first event is held by the function; the rest wait behind it, in
    // order (one event in flight per partition), far more than a dispatch queue holds.
    let behind = 200;
    kafka.produce_to(&topic, 0, "slow", "slow0 held");
    for i in 1..=behind {
        kafka.produce_to(&topic, 0, "slow", &format!("slow{i}"));
    }
    let gate = Fngate::start(dir.path());
    gate.wait_until(
        || gate.metric_opt("fngate_events_in_flight{function=\"ordered\",namespace=\"default\",trigger=\"kin\"}") >= Some(1.0),
        "the held event in flight",
    );
    // Fetched behind partition 0's backlog, the other partitions still flow.
    let fast = 50;
    for i in 0..fast {
        kafka.produce_to(&topic, 1, "a", &format!("fast-a{i}"));
        kafka.produce_to(&topic, 2, "b", &format!("fast-b{i}"));
    }
    let events = app.wait_for("partitions 1 and 2 while partition 0 is held", |e| {
        accepted_data(e)
            .iter()
            .filter(|d| d.starts_with("fast"))
            .count()
            == 2 * fast
    });
    assert!(
        accepted_data(&events).iter().all(|d| d.starts_with("fast")),
        "nothing of partition 0 passed its held event"
    );
    std::fs::write(&release_file, "").unwrap();
    let events = app.wait_for("partition 0 once released", |e| {
        accepted_data(e).len() == 2 * fast + behind + 1
    });
    let slow: Vec<String> = accepted_data(&events)
        .into_iter()
        .filter(|d| d.starts_with("slow"))
        .collect();
    let expected: Vec<String> = std::iter::once("slow0 held".to_owned())
        .chain((1..=behind).map(|i| format!("slow{i}")))
        .collect();
    assert_eq!(slow, expected, "partition 0 in order");
}

#[test]
fn pubsub_over_http_dead_letters_a_drop_and_survives_sigkill_without_losing_an_event() {
    let kafka = Kafka::start();
    let topic = unique("orders");
    let dead = unique("dead");
    kafka.create_topic(&topic, 3);
    kafka.create_topic(&dead, 1);
    let app = DaprApp::start("http", "", &format!("kps:{topic}:/orders"));
    let dir = tempfile::tempdir().unwrap();
    write_atomically(
        dir.path(),
        "fn.yaml",
        &[
            component(
                "kps",
                "pubsub.kafka",
                &kafka.brokers,
                &format!("    - name: deadLetterTopic\n      value: {dead}\n"),
            ),
            dapr_function_yaml("orders", "kps", Some(&topic), "http", app.addr.port(), ""),
            endpoint_slice("default", "orders", &[app.addr], true),
        ]
        .join("---\n"),
    );
    let total = 300;
    for i in 0..total {
        let payload = if i == 5 {
            "o5 drop-me".to_owned()
        } else {
            format!("o{i}")
        };
        kafka.produce(&topic, &format!("c{}", i % 10), &payload, &[]);
    }
    let gate = Fngate::start(dir.path());
    app.wait_for("some events", |e| e.len() >= 30);
    gate.kill_hard();
    let _gate = Fngate::start(dir.path());
    let events = app.wait_for("every event", |e| {
        accepted_data(e).into_iter().collect::<HashSet<_>>().len() == total - 1
    });
    let first = &events[0];
    assert_eq!(
        first["metadata"]["content-type"],
        "application/cloudevents+json"
    );
    assert_eq!(first["pubsub"], "kps");
    assert_eq!(
        first["metadata"]["pubsubname"], "kps",
        "pub/sub adds pubsubName"
    );
    // At least once across the SIGKILL: a drop whose offset was not yet committed at the
    // kill is delivered and dead-lettered again. Read to the end of the topic: nothing
    // else may be there.
    let dead_letters = kafka.read_all(&dead, 1);
    assert!(
        dead_letters.iter().all(|d| d == "o5 drop-me"),
        "only the dropped event is dead-lettered: {dead_letters:?}"
    );
}

#[test]
fn a_broker_restart_loses_nothing() {
    let store = tempfile::tempdir().unwrap();
    let mut kafka = Kafka::start_with_storage("sqlite://tansu.db", store.path());
    let topic = unique("r");
    kafka.create_topic(&topic, 2);
    let app = DaprApp::start("grpc", "kin", "");
    let dir = tempfile::tempdir().unwrap();
    write_atomically(
        dir.path(),
        "fn.yaml",
        &kafka_binding_function(&kafka, &topic, "restart", &app),
    );
    let slice = |ready| endpoint_slice("default", "restart", &[app.addr], ready);
    write_atomically(dir.path(), "slice.yaml", &slice(true));
    let gate = Fngate::start(dir.path());
    for i in 0..50 {
        kafka.produce(&topic, &format!("k{}", i % 4), &format!("r{i}"), &[]);
    }
    app.wait_for("the first batch", |e| accepted_data(e).len() >= 50);
    // The function goes to zero; a second batch waits in the broker, which then restarts:
    // it must come back from the broker's own storage and committed offsets.
    let before = gate.revision();
    write_atomically(dir.path(), "slice.yaml", &slice(false));
    gate.wait_for_revision_after(before);
    for i in 50..100 {
        kafka.produce(&topic, &format!("k{}", i % 4), &format!("r{i}"), &[]);
    }
    kafka.restart();
    write_atomically(dir.path(), "slice.yaml", &slice(true));
    let events = app.wait_for("the second batch", |e| {
        accepted_data(e).into_iter().collect::<HashSet<_>>().len() == 100
    });
    assert_first_deliveries_in_produce_order_per_key(&events);
}

/// Per key (so per partition), first deliveries keep the produce order; payloads are a
/// letter and the produce sequence number.
fn assert_first_deliveries_in_produce_order_per_key(events: &[serde_json::Value]) {
    let mut firsts: HashMap<String, Vec<usize>> = HashMap::new();
    let mut seen = HashSet::new();
    for e in events.iter().filter(|e| e["answer"] == "SUCCESS") {
        let data = e["data"].as_str().unwrap().to_owned();
        if seen.insert(data.clone()) {
            let n: usize = data[1..].parse().unwrap();
            firsts
                .entry(e["metadata"]["__key"].as_str().unwrap().to_owned())
                .or_default()
                .push(n);
        }
    }
    for (key, ns) in firsts {
        assert!(ns.windows(2).all(|w| w[0] < w[1]), "key {key}: {ns:?}");
    }
}

/// A pub/sub Function `function` subscribed over gRPC to a fresh topic of `partitions`, on a
/// broker with SQLite storage: tansu's memory store does not resume a group from a
/// committed offset, and these tests restart consumers.
struct Restartable {
    kafka: Kafka,
    topic: String,
    app: DaprApp,
    dir: tempfile::TempDir,
    /// Last: fields drop in order, and the SQLite folder must outlive the broker.
    _store: tempfile::TempDir,
}

fn restartable(function: &str, partitions: u32) -> Restartable {
    let store = tempfile::tempdir().unwrap();
    let kafka = Kafka::start_with_storage("sqlite://tansu.db", store.path());
    let topic = unique(function);
    kafka.create_topic(&topic, partitions);
    let app = DaprApp::start("grpc", "", &format!("sps:{topic}:/orders"));
    let dir = tempfile::tempdir().unwrap();
    write_atomically(
        dir.path(),
        "fn.yaml",
        &[
            component("sps", "pubsub.kafka", &kafka.brokers, ""),
            dapr_function_yaml(function, "sps", Some(&topic), "grpc", app.addr.port(), ""),
            endpoint_slice("default", function, &[app.addr], true),
        ]
        .join("---\n"),
    );
    Restartable {
        _store: store,
        kafka,
        topic,
        app,
        dir,
    }
}

/// `total` events on `keys` keys, paced so they keep arriving while replicas come and go.
fn produce_paced(kafka: &Kafka, topic: &str, total: usize, keys: usize) {
    for i in 0..total {
        kafka.produce(topic, &format!("k{}", i % keys), &format!("e{i}"), &[]);
        if i % 100 == 99 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Settings giving a replica Kafka instance id `prefix` made unique: an instance id is
/// claimed host-wide, and tests run side by side.
fn instance_settings(prefix: &str) -> String {
    format!("events:\n  kafka_instance_id: {}\n", unique(prefix))
}

#[test]
fn a_replica_restarted_at_once_takes_its_partitions_back_with_static_membership() {
    let r = restartable("statics", 3);
    let total = 3000;
    let identity = &instance_settings("replica-a");
    std::thread::scope(|scope| {
        // Events keep arriving while the replica dies and comes back.
        let producer = scope.spawn(|| produce_paced(&r.kafka, &r.topic, total, 12));
        let gate = Fngate::start_with(r.dir.path(), identity);
        r.app.wait_for("some events", |e| e.len() >= 60);
        // A container restart: killed, and the same replica back half a second later,
        // while the dead member's session is still open on the broker.
        gate.kill_hard();
        std::thread::sleep(std::time::Duration::from_millis(500));
        let _gate = Fngate::start_with(r.dir.path(), identity);
        producer.join().unwrap();
        r.app.wait_for("every event after the restart", |e| {
            accepted_data(e).into_iter().collect::<HashSet<_>>().len() == total
        });
    });
}

#[test]
fn two_replicas_share_a_topic_and_one_killed_and_restarted_loses_nothing() {
    let r = restartable("shared", 4);
    let total = 2000;
    let (id_a, id_b) = (
        &instance_settings("replica-a"),
        &instance_settings("replica-b"),
    );
    let a = Fngate::start_with(r.dir.path(), id_a);
    let b = Fngate::start_with(r.dir.path(), id_b);
    std::thread::scope(|scope| {
        let producer = scope.spawn(|| produce_paced(&r.kafka, &r.topic, total, 16));
        // Both replicas deliver: the group split the partitions between them.
        a.wait_until(
            || a.events_delivered() > 0.0 && b.events_delivered() > 0.0,
            "both replicas delivering",
        );
        a.kill_hard();
        std::thread::sleep(std::time::Duration::from_millis(500));
        let _a = Fngate::start_with(r.dir.path(), id_a);
        producer.join().unwrap();
        r.app
            .wait_for("every event with one replica restarted", |e| {
                accepted_data(e).into_iter().collect::<HashSet<_>>().len() == total
            });
    });
    drop(b);
}

/// Two replicas, one stopped for good mid-stream (scale-in, SIGTERM): it leaves the group at
/// once (a static member too) and the other takes its partitions; nothing is lost or
/// reordered per key. A replica added to a live group is not tested against Kafka: tansu 0.6
/// gives a live member that rejoins no partitions in the new generation (the code before
/// per-partition queues too), so the group never covers the topic again.
#[test]
fn a_replica_stopped_for_good_mid_stream_hands_its_partitions_over_and_loses_nothing() {
    let r = restartable("scalein", 6);
    let a = Fngate::start_with(r.dir.path(), &instance_settings("scalein-a"));
    let b = Fngate::start_with(r.dir.path(), &instance_settings("scalein-b"));
    let producing = std::sync::atomic::AtomicBool::new(true);
    std::thread::scope(|scope| {
        // Events keep coming, a paced stream on 24 keys, until the removal is done.
        let producer = scope.spawn(|| {
            send_paced_until(&producing, 100, |i| {
                r.kafka
                    .produce(&r.topic, &format!("k{}", i % 24), &format!("e{i}"), &[])
            })
        });
        a.wait_until(
            || a.events_delivered() > 100.0 && b.events_delivered() > 100.0,
            "both replicas delivering",
        );
        let b_before = b.events_delivered();
        a.stop_gracefully();
        b.wait_until(
            || b.events_delivered() > b_before + 1000.0,
            "the remaining replica delivering after the removal",
        );
        producing.store(false, std::sync::atomic::Ordering::Relaxed);
        let total = producer.join().unwrap();
        r.app.wait_for("every event", |e| {
            accepted_data(e).into_iter().collect::<HashSet<_>>().len() == total
        });
    });
    assert_first_deliveries_in_produce_order_per_key(&r.app.events());
    drop(b);
}

/// `fngate run` with `settings` appended to a minimal settings file: `Err` with its exit
/// code and stderr when it refuses to start, `Ok` with the running process (killed when
/// dropped) once its admin listener answers, which it opens only after claiming its
/// identity.
fn start_or_refusal(
    dir: &std::path::Path,
    settings: &str,
    pod: Option<&str>,
) -> Result<KillOnDrop, (i32, String)> {
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let file = dir.join(format!("{}.yaml", unique("settings")));
    std::fs::write(
        &file,
        format!(
            "listen:\n  http: 127.0.0.1:{}\n  admin: {admin}\n  dapr_grpc: \"\"\n  dapr_http: \"\"\ncatalog:\n  dir: {}\n{settings}",
            free_port(),
            dir.display()
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_fngate"));
    cmd.args(["run", "--config"])
        .arg(&file)
        .env("RUST_LOG", "error")
        .env_remove("POD_NAME")
        .stderr(std::process::Stdio::piped());
    if let Some(pod) = pod {
        cmd.env("POD_NAME", pod);
    }
    let mut child = KillOnDrop(cmd.spawn().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read as _;
            child
                .0
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return Err((status.code().unwrap_or(-1), err));
        }
        if admin_get(admin, "/healthz").is_ok_and(|r| r.status == 200) {
            return Ok(child);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "fngate neither exited nor opened its admin listener in 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn two_live_processes_cannot_claim_one_kafka_instance_id() {
    let dir = tempfile::tempdir().unwrap();
    let settings = instance_settings("twin");
    let first = Fngate::start_with(dir.path(), &settings);
    let Err((code, stderr)) = start_or_refusal(dir.path(), &settings, None) else {
        panic!("the second process started")
    };
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("events.kafka_instance_id")
            && stderr.contains("in use by another fngate on this host")
            && stderr.contains(&first.pid().to_string()),
        "{stderr}"
    );
    // Gone (even killed), its identity is free for the replica that replaces it.
    first.kill_hard();
    if let Err((code, stderr)) = start_or_refusal(dir.path(), &settings, None) {
        panic!("the replacement was refused ({code}): {stderr}");
    }
    // Under Kubernetes a fixed id in the shared settings file would be every replica's.
    let Err((code, stderr)) = start_or_refusal(
        dir.path(),
        "events:\n  kafka_instance_id: fixed\n",
        Some("gw-7"),
    ) else {
        panic!("a fixed id under Kubernetes was accepted")
    };
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("events.kafka_instance_id") && stderr.contains("gw-7"),
        "{stderr}"
    );
}
