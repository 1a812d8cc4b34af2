//! MQTT inputs through the real binary, from the machine's Mosquitto (127.0.0.1:1883,
//! `scripts/services.sh`), into real Dapr apps (`dapr_app` over HTTP, as the Node
//! samples speak, and AppCallback gRPC). Messages are published with `mosquitto_pub`.

mod common;

use common::*;
use std::collections::HashSet;
use std::io::Write;

const BROKER: &str = "tcp://127.0.0.1:1883";

fn mqtt_component(name: &str, kind: &str, extra: &str) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  type: {kind}\n  version: v1\n  metadata:\n    - name: url\n      value: \"{BROKER}\"\n{extra}"
    )
}

/// Publishes each of `messages` at QoS 1 to `topic`, in order.
fn publish(topic: &str, messages: &[String]) {
    let mut child = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", "1883", "-q", "1", "-t", topic, "-l"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_pub (Debian package mosquitto-clients, scripts/setup.sh)");
    let mut stdin = child.stdin.take().unwrap();
    for m in messages {
        writeln!(stdin, "{m}").unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success(), "mosquitto_pub failed");
}

/// Waits until the broker has the trigger's subscription: the consumer's gauge turns 1 at
/// the SUBACK.
fn wait_connected(gate: &Fngate, function: &str) {
    let connected = format!("fngate_broker_connected{{broker=\"mqtt\",function=\"{function}\"");
    gate.wait_until(
        || gate.metric_opt(&connected) == Some(1.0),
        "the MQTT consumer connected",
    );
}

#[test]
fn a_binding_delivers_each_message_in_order_with_its_topic_and_retries_a_failure() {
    let topic = unique("fngate/bind");
    let app = DaprApp::start("http", "min", "");
    let dir = tempfile::tempdir().unwrap();
    write_atomically(
        dir.path(),
        "fn.yaml",
        &[
            mqtt_component(
                "min",
                "bindings.mqtt",
                &format!("    - name: topic\n      value: \"{topic}\"\n    - name: consumerID\n      value: \"{{uuid}}\"\n"),
            ),
            dapr_function_yaml("reader", "min", None, "http", app.addr.port(), ""),
            endpoint_slice("default", "reader", &[app.addr], true),
        ]
        .join("---\n"),
    );
    let gate = Fngate::start(dir.path());
    wait_connected(&gate, "reader");
    let messages: Vec<String> = (0..20)
        .map(|i| if i == 3 { format!("m{i} retry-once") } else { format!("m{i}") })
        .collect();
    publish(&topic, &messages);
    let events = app.wait_for("every message", |e| accepted_data(e).len() >= 20);
    assert_eq!(accepted_data(&events), messages, "in publish order, each once");
    assert!(
        events.iter().any(|e| e["answer"] == "RETRY"),
        "the failed delivery was retried"
    );
    let first = events.iter().find(|e| e["answer"] == "SUCCESS").unwrap();
    assert_eq!(first["metadata"]["topic"], topic.as_str(), "{first}");
}

#[test]
fn with_a_persistent_session_what_arrives_while_fngate_is_down_is_delivered_after_restart() {
    let topic = unique("fngate/persist");
    let consumer = unique("fngate-test");
    // The app holds `a5 held` unanswered until `released` exists: fngate is killed with
    // it in flight, so only an ack sent after delivery brings it back.
    let hold = tempfile::tempdir().unwrap();
    let released = hold.path().join("released");
    let app = DaprApp::start_with(
        "grpc",
        "127.0.0.1:0",
        "min",
        "",
        &["--hold-marked", released.to_str().unwrap()],
    );
    let dir = tempfile::tempdir().unwrap();
    write_atomically(
        dir.path(),
        "fn.yaml",
        &[
            mqtt_component(
                "min",
                "bindings.mqtt3",
                &format!("    - name: topic\n      value: \"{topic}\"\n    - name: consumerID\n      value: \"{consumer}\"\n"),
            ),
            dapr_function_yaml("reader", "min", None, "grpc", app.addr.port(), ""),
            endpoint_slice("default", "reader", &[app.addr], true),
        ]
        .join("---\n"),
    );
    let gate = Fngate::start(dir.path());
    wait_connected(&gate, "reader");
    let first: Vec<String> = (0..10)
        .map(|i| if i == 5 { "a5 held".to_owned() } else { format!("a{i}") })
        .collect();
    publish(&topic, &first);
    app.wait_for("the messages before the held one", |e| accepted_data(e).len() >= 5);
    gate.kill_hard();
    std::fs::write(&released, b"").unwrap();
    let second: Vec<String> = (0..30).map(|i| format!("b{i}")).collect();
    publish(&topic, &second);
    let gate = Fngate::start(dir.path());
    wait_connected(&gate, "reader");
    let all: HashSet<String> = first.iter().chain(&second).cloned().collect();
    let events = app.wait_for("every message, those sent while down too", |e| {
        accepted_data(e).into_iter().collect::<HashSet<_>>() == all
    });
    // At least once: the order of first deliveries is the publish order.
    let mut seen = HashSet::new();
    let firsts: Vec<String> = accepted_data(&events)
        .into_iter()
        .filter(|d| seen.insert(d.clone()))
        .collect();
    let expected: Vec<String> = first.iter().chain(&second).cloned().collect();
    assert_eq!(firsts, expected);
}

#[test]
fn a_pubsub_subscription_gets_cloud_events() {
    let topic = unique("fngate/ps");
    let app = DaprApp::start("grpc", "", &format!("mps:{topic}"));
    let dir = tempfile::tempdir().unwrap();
    write_atomically(
        dir.path(),
        "fn.yaml",
        &[
            mqtt_component("mps", "pubsub.mqtt", ""),
            dapr_function_yaml("sub", "mps", Some(&topic), "grpc", app.addr.port(), ""),
            endpoint_slice("default", "sub", &[app.addr], true),
        ]
        .join("---\n"),
    );
    let gate = Fngate::start(dir.path());
    wait_connected(&gate, "sub");
    let ce = format!(
        r#"{{"specversion":"1.0","id":"e-1","source":"shop","type":"order","datacontenttype":"application/json","data":{{"n":1}},"topic":"{topic}","pubsubname":"mps"}}"#
    );
    publish(&topic, &["raw-1".to_owned(), ce]);
    let events = app.wait_for("both", |e| accepted_data(e).len() >= 2);
    let ok: Vec<&serde_json::Value> = events.iter().filter(|e| e["answer"] == "SUCCESS").collect();
    assert_eq!(ok[0]["pubsub"], "mps", "{}", ok[0]);
    assert_eq!(ok[0]["topic"], topic.as_str(), "{}", ok[0]);
    assert_eq!(ok[0]["data"], "raw-1", "a raw payload wrapped: {}", ok[0]);
    assert_eq!(ok[1]["id"], "e-1", "a CloudEvent passed through: {}", ok[1]);
}
