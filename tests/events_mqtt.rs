//! MQTT inputs through the real binary, from the machine's Mosquitto (127.0.0.1:1883,
//! `scripts/services.sh`), into real Dapr apps (`dapr_app` over HTTP, as the Node
//! samples speak, and AppCallback gRPC) and the Node samples as functions on the official
//! Dapr JS SDK (`tests/node`). Messages are published with `mosquitto_pub`.

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

/// Publishes each of `messages` at QoS 1 to `topic` on the machine's Mosquitto, in order.
fn publish(topic: &str, messages: &[String]) {
    publish_on(1883, topic, messages)
}

fn publish_on(port: u16, topic: &str, messages: &[String]) {
    let mut child = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-l",
        ])
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

/// A catalog in a new folder: function `reader` with MQTT input binding `min` (`kind`) on
/// `topic` of the broker at `url`, with client `consumer`, delivered to `app` over
/// `protocol`.
fn binding_reader(
    kind: &str,
    url: &str,
    topic: &str,
    consumer: &str,
    protocol: &str,
    app: &DaprApp,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_atomically(
        dir.path(),
        "fn.yaml",
        &[
            mqtt_component(
                "min",
                kind,
                &format!("    - name: topic\n      value: \"{topic}\"\n    - name: consumerID\n      value: \"{consumer}\"\n"),
            )
            .replace(BROKER, url),
            dapr_function_yaml("reader", "min", None, protocol, app.addr.port(), ""),
            endpoint_slice("default", "reader", &[app.addr], true),
        ]
        .join("---\n"),
    );
    dir
}

#[test]
fn a_binding_delivers_each_message_in_order_with_its_topic_and_retries_a_failure() {
    let topic = unique("fngate/bind");
    let app = DaprApp::start("http", "min", "");
    let dir = binding_reader("bindings.mqtt", BROKER, &topic, "{uuid}", "http", &app);
    let gate = Fngate::start(dir.path());
    wait_connected(&gate, "reader");
    let messages: Vec<String> = (0..20)
        .map(|i| {
            if i == 3 {
                format!("m{i} retry-once")
            } else {
                format!("m{i}")
            }
        })
        .collect();
    publish(&topic, &messages);
    let events = app.wait_for("every message", |e| accepted_data(e).len() >= 20);
    assert_eq!(
        accepted_data(&events),
        messages,
        "in publish order, each once"
    );
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
    let dir = binding_reader("bindings.mqtt3", BROKER, &topic, &consumer, "grpc", &app);
    let gate = Fngate::start(dir.path());
    wait_connected(&gate, "reader");
    let first: Vec<String> = (0..10)
        .map(|i| {
            if i == 5 {
                "a5 held".to_owned()
            } else {
                format!("a{i}")
            }
        })
        .collect();
    publish(&topic, &first);
    app.wait_for("the messages before the held one", |e| {
        accepted_data(e).len() >= 5
    });
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

/// `mosquitto_sub` subscribed to `topic` (it has the SUBACK when this returns), printing
/// `topic payload` lines; its first `count` messages, within 30 s.
struct Subscriber {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Subscriber {
    fn start(topic: &str, count: usize) -> Subscriber {
        use std::io::BufRead;
        // Line-buffered: piped, mosquitto_sub would hold its output back.
        let mut child = std::process::Command::new("stdbuf")
            .args([
                "-oL",
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                "1883",
                "-q",
                "1",
                "-d",
                "-v",
            ])
            .args(["-t", topic])
            .args(["-C", &count.to_string(), "-W", "60"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("mosquitto_sub (Debian package mosquitto-clients, scripts/setup.sh)");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        loop {
            let line = lines
                .recv_timeout(std::time::Duration::from_secs(30))
                .expect("mosquitto_sub subscribed");
            if line.contains("SUBACK") {
                break;
            }
        }
        Subscriber { child, lines }
    }

    /// The payloads received on `topic`, `count` of them.
    fn received(self, topic: &str, count: usize) -> Vec<String> {
        let prefix = format!("{topic} ");
        let mut out = Vec::new();
        while out.len() < count {
            let line = self
                .lines
                .recv_timeout(std::time::Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("only {out:?} arrived on {topic}"));
            if let Some(payload) = line.strip_prefix(&prefix) {
                out.push(payload.to_owned());
            }
        }
        let mut child = self.child;
        let _ = child.kill();
        let _ = child.wait();
        out
    }
}

#[test]
fn publish_and_bindings_reach_mqtt_through_the_dapr_http_and_grpc_apis() {
    let (events, default_topic, other) = (
        unique("fngate/out/events"),
        unique("fngate/out/default"),
        unique("fngate/out/other"),
    );
    let echo = Echo::start("producer", "default");
    let dir = tempfile::tempdir().unwrap();
    write_atomically(
        dir.path(),
        "fn.yaml",
        &[
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: producer-token\n  namespace: default\nstringData:\n  token: tok-producer\n".to_owned(),
            format!(
                "{}    annotations:\n      dapr.io/api-token-secret: producer-token\n",
                function_yaml("default", "producer", "")
            ),
            endpoint_slice("default", "producer", &[echo.addr], true),
            mqtt_component("mbus", "pubsub.mqtt", ""),
            mqtt_component(
                "mlocked",
                "pubsub.mqtt",
                &format!("    - name: publishingScopes\n      value: \"producer-default={events}\"\n"),
            ),
            mqtt_component(
                "mout",
                "bindings.mqtt",
                &format!("    - name: topic\n      value: \"{default_topic}\"\n"),
            ),
        ]
        .join("---\n"),
    );
    let (dapr_http, dapr_grpc) = (free_port(), free_port());
    let _gate = Fngate::start_full(
        dir.path(),
        &format!("  dapr_http: 127.0.0.1:{dapr_http}\n  dapr_grpc: 127.0.0.1:{dapr_grpc}\n"),
        "",
    );
    let dapr: std::net::SocketAddr = format!("127.0.0.1:{dapr_http}").parse().unwrap();
    let token = [("dapr-api-token", "tok-producer")];
    let call = |path: &str, body: &[u8]| {
        let r = request(dapr, "POST", "localhost", path, &token, body).unwrap();
        assert!(
            (200..300).contains(&r.status),
            "{path}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    };

    // Publish: daprd's CloudEvent envelope, on the topic named in the call.
    let sub = Subscriber::start(&events, 1);
    // A metadata key with `é` across byte 11 (once a panic in the envelope's
    // `cloudevent.` override lookup) is just metadata.
    call(
        &format!("/v1.0/publish/mbus/{events}?metadata.aaaaaaaaaa%C3%A9x=v"),
        br#"{"order":7}"#,
    );
    let got = sub.received(&events, 1);
    let event: serde_json::Value = serde_json::from_str(&got[0]).unwrap();
    // No content type in the call: text, as daprd takes it.
    assert_eq!(
        (
            event["data"].as_str(),
            event["datacontenttype"].as_str(),
            event["topic"].as_str(),
            event["pubsubname"].as_str()
        ),
        (
            Some(r#"{"order":7}"#),
            Some("text/plain"),
            Some(events.as_str()),
            Some("mbus")
        ),
        "{event}"
    );

    // A binding: the data as JSON, on the component's topic, or the request's.
    let sub = Subscriber::start(&default_topic, 1);
    call(
        "/v1.0/bindings/mout",
        br#"{"operation":"create","data":{"n":1}}"#,
    );
    assert_eq!(sub.received(&default_topic, 1), [r#"{"n":1}"#]);
    let sub = Subscriber::start(&other, 1);
    call(
        "/v1.0/bindings/mout",
        format!(r#"{{"operation":"create","data":"two","metadata":{{"topic":"{other}"}}}}"#)
            .as_bytes(),
    );
    assert_eq!(sub.received(&other, 1), [r#""two""#]);

    // Topic ACLs as daprd enforces them: producer may publish to `events` only.
    let refused = request(
        dapr,
        "POST",
        "localhost",
        &format!("/v1.0/publish/mlocked/{other}"),
        &token,
        b"{}",
    )
    .unwrap();
    let body = String::from_utf8_lossy(&refused.body);
    assert_eq!(refused.status, 403, "{body}");
    assert!(
        body.contains("ERR_PUBSUB_FORBIDDEN")
            && body.contains(&format!(
                "topic {other} is not allowed for app id producer-default"
            )),
        "{body}"
    );
    let sub = Subscriber::start(&events, 1);
    call(&format!("/v1.0/publish/mlocked/{events}"), b"{}");
    sub.received(&events, 1);

    // The gRPC surface: the same envelope and binding, the data as given (bytes).
    use dapr::dapr::proto::runtime::v1 as rt;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut client = dapr_client(&runtime, dapr_grpc);
    let sub = Subscriber::start(&events, 1);
    runtime
        .block_on(client.publish_event(with_token(
            rt::PublishEventRequest {
                pubsub_name: "mbus".into(),
                topic: events.clone(),
                data: br#"{"order":8}"#.to_vec(),
                data_content_type: "application/json".into(),
                metadata: Default::default(),
            },
            "tok-producer",
        )))
        .unwrap();
    let event: serde_json::Value = serde_json::from_str(&sub.received(&events, 1)[0]).unwrap();
    assert_eq!(
        (
            &event["data"],
            &event["datacontenttype"],
            &event["pubsubname"]
        ),
        (
            &serde_json::json!({"order": 8}),
            &serde_json::json!("application/json"),
            &serde_json::json!("mbus")
        ),
        "{event}"
    );
    let sub = Subscriber::start(&other, 1);
    runtime
        .block_on(client.invoke_binding(with_token(
            rt::InvokeBindingRequest {
                name: "mout".into(),
                data: b"raw bytes".to_vec(),
                metadata: [("topic".to_owned(), other.clone())].into_iter().collect(),
                operation: "create".into(),
            },
            "tok-producer",
        )))
        .unwrap();
    assert_eq!(sub.received(&other, 1), ["raw bytes"]);
    let forbidden = runtime
        .block_on(client.publish_event(with_token(
            rt::PublishEventRequest {
                pubsub_name: "mlocked".into(),
                topic: other.clone(),
                data: b"{}".to_vec(),
                data_content_type: "application/json".into(),
                metadata: Default::default(),
            },
            "tok-producer",
        )))
        .unwrap_err();
    assert_eq!(
        forbidden.code(),
        tonic::Code::PermissionDenied,
        "{forbidden:?}"
    );
}

/// A Mosquitto of the test's own (port and persistence file), so it can be restarted.
struct OwnMosquitto {
    child: Option<std::process::Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl OwnMosquitto {
    fn start() -> OwnMosquitto {
        OwnMosquitto::start_with("")
    }

    /// With `listener` options added (TLS files).
    fn start_with(listener: &str) -> OwnMosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        std::fs::write(
            dir.path().join("mosquitto.conf"),
            format!(
                "listener {port} 127.0.0.1\n{listener}allow_anonymous true\npersistence true\npersistence_location {}/\nautosave_interval 1\nuser root\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let mut m = OwnMosquitto {
            child: None,
            port,
            dir,
        };
        m.restart();
        m
    }

    /// Stopped with SIGTERM (it saves its sessions), then started again on the same port.
    fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
        let child = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto (Debian package mosquitto, scripts/setup.sh)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for OwnMosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_broker_restart_loses_nothing() {
    let mut broker = OwnMosquitto::start();
    let topic = unique("fngate/restart");
    let app = DaprApp::start("grpc", "min", "");
    let url = format!("tcp://127.0.0.1:{}", broker.port);
    let dir = binding_reader(
        "bindings.mqtt",
        &url,
        &topic,
        &unique("restart"),
        "grpc",
        &app,
    );
    let gate = Fngate::start(dir.path());
    wait_connected(&gate, "reader");
    let before: Vec<String> = (0..20).map(|i| format!("r{i}")).collect();
    publish_on(broker.port, &topic, &before);
    broker.restart();
    let connected = "fngate_broker_connected{broker=\"mqtt\",function=\"reader\"";
    gate.wait_until(
        || gate.metric_opt(connected) == Some(1.0),
        "fngate reconnected and subscribed again",
    );
    let after: Vec<String> = (20..40).map(|i| format!("r{i}")).collect();
    publish_on(broker.port, &topic, &after);
    let all: HashSet<String> = before.iter().chain(&after).cloned().collect();
    app.wait_for("every message, across the restart", |e| {
        accepted_data(e).into_iter().collect::<HashSet<_>>() == all
    });
}

/// A published OpenFunction sample with its broker (EMQX in the samples) rewritten to the
/// machine's Mosquitto and `replace` applied, its function at `pod`, `extra` objects
/// beside it.
fn sample_catalog(
    file: &str,
    replace: &[(&str, &str)],
    pod: std::net::SocketAddr,
    extra: &str,
) -> tempfile::TempDir {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/samples/openfunction")
        .join(file);
    let mut manifest =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    manifest = manifest.replace("@emqx:1883", "@127.0.0.1:1883");
    for (from, to) in replace {
        assert!(manifest.contains(from), "{file} has no {from:?}");
        manifest = manifest.replace(from, to);
    }
    let name = manifest
        .lines()
        .find_map(|l| l.strip_prefix("  name: "))
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    write_atomically(dir.path(), "sample.yaml", &manifest);
    write_atomically(
        dir.path(),
        "slice.yaml",
        &endpoint_slice("default", &name, &[pod], true),
    );
    if !extra.is_empty() {
        write_atomically(dir.path(), "extra.yaml", extra);
    }
    dir
}

/// A metadata item whose value is a PEM file's text, as a YAML block.
fn pem_item(name: &str, path: &std::path::Path) -> String {
    let pem = std::fs::read_to_string(path).unwrap();
    let mut item = format!("    - name: {name}\n      value: |\n");
    for line in pem.lines() {
        item.push_str(&format!("        {line}\n"));
    }
    item
}

#[test]
fn over_tls_with_a_client_certificate_bindings_go_in_and_out_and_a_wrong_ca_is_refused() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = ca_and_server_cert(certs.path());
    let (client_cert, client_key) = client_cert_from_ca(certs.path());
    let other_ca = tempfile::tempdir().unwrap();
    let (wrong_ca, _, _) = ca_and_server_cert(other_ca.path());
    // Mosquitto asks for a client certificate signed by the CA: no certificate, no session.
    let broker = OwnMosquitto::start_with(&format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
        ca.display(),
        cert.display(),
        key.display()
    ));
    let url = format!("ssl://127.0.0.1:{}", broker.port);
    let topic = unique("fngate/tls");
    let tls = [
        pem_item("caCert", &ca),
        pem_item("clientCert", &client_cert),
        pem_item("clientKey", &client_key),
    ]
    .concat();
    let app = DaprApp::start("grpc", "min", "");
    let echo = Echo::start("producer", "default");
    let dir = tempfile::tempdir().unwrap();
    write_atomically(
        dir.path(),
        "fn.yaml",
        &[
            mqtt_component(
                "min",
                "bindings.mqtt",
                &format!("    - name: topic\n      value: \"{topic}\"\n    - name: consumerID\n      value: \"{{uuid}}\"\n{tls}"),
            )
            .replace(BROKER, &url),
            dapr_function_yaml("reader", "min", None, "grpc", app.addr.port(), ""),
            endpoint_slice("default", "reader", &[app.addr], true),
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: producer-token\n  namespace: default\nstringData:\n  token: tok-producer\n".to_owned(),
            format!(
                "{}    annotations:\n      dapr.io/api-token-secret: producer-token\n",
                function_yaml("default", "producer", "")
            ),
            endpoint_slice("default", "producer", &[echo.addr], true),
            mqtt_component(
                "mout",
                "bindings.mqtt",
                &format!("    - name: topic\n      value: \"{topic}\"\n{tls}"),
            )
            .replace(BROKER, &url),
            mqtt_component(
                "mbad",
                "bindings.mqtt",
                &format!(
                    "    - name: topic\n      value: \"{topic}\"\n{}{}{}",
                    pem_item("caCert", &wrong_ca),
                    pem_item("clientCert", &client_cert),
                    pem_item("clientKey", &client_key)
                ),
            )
            .replace(BROKER, &url),
        ]
        .join("---\n"),
    );
    let dapr_http = free_port();
    let gate = Fngate::start_full(
        dir.path(),
        &format!("  dapr_http: 127.0.0.1:{dapr_http}\n"),
        "",
    );
    let diagnostics =
        String::from_utf8(admin_get(gate.admin, "/diagnostics").unwrap().body).unwrap();
    assert!(!diagnostics.contains("mqtt"), "{diagnostics}");
    wait_connected(&gate, "reader");
    let dapr: std::net::SocketAddr = format!("127.0.0.1:{dapr_http}").parse().unwrap();
    let token = [("dapr-api-token", "tok-producer")];
    let sent = request(
        dapr,
        "POST",
        "localhost",
        "/v1.0/bindings/mout",
        &token,
        br#"{"operation":"create","data":{"over":"tls"}}"#,
    )
    .unwrap();
    assert_eq!(sent.status, 204, "{}", String::from_utf8_lossy(&sent.body));
    let events = app.wait_for("the message sent over TLS", |e| {
        !accepted_data(e).is_empty()
    });
    assert_eq!(accepted_data(&events), [r#"{"over":"tls"}"#]);

    // A broker certificate the component's CA did not sign: the call fails and says why.
    let refused = request(
        dapr,
        "POST",
        "localhost",
        "/v1.0/bindings/mbad",
        &token,
        br#"{"operation":"create","data":"never"}"#,
    )
    .unwrap();
    let body = String::from_utf8_lossy(&refused.body);
    assert_eq!(refused.status, 500, "{body}");
    assert!(
        body.contains("not connected to the MQTT broker") && body.contains("certificate"),
        "{body}"
    );
}

#[test]
fn with_back_off_max_retries_a_message_the_function_keeps_failing_is_dropped_and_the_rest_flow() {
    let topic = unique("fngate/maxretries");
    let app = DaprApp::start("http", "min", "");
    let dir = binding_reader("bindings.mqtt3", BROKER, &topic, "{uuid}", "http", &app);
    let manifest = std::fs::read_to_string(dir.path().join("fn.yaml")).unwrap();
    write_atomically(
        dir.path(),
        "fn.yaml",
        &manifest.replace(
            "    - name: consumerID\n",
            "    - name: backOffMaxRetries\n      value: \"2\"\n    - name: consumerID\n",
        ),
    );
    let gate = Fngate::start(dir.path());
    wait_connected(&gate, "reader");
    let messages = ["a".to_owned(), "b always-retry".to_owned(), "c".to_owned()];
    publish(&topic, &messages);
    let events = app.wait_for("the messages after the failing one", |e| {
        accepted_data(e).contains(&"c".to_owned())
    });
    assert_eq!(accepted_data(&events), ["a", "c"]);
    let tries = events
        .iter()
        .filter(|e| e["data"] == "b always-retry")
        .count();
    assert_eq!(tries, 3, "the first try and backOffMaxRetries (2) retries");
    assert_eq!(
        gate.metric(
            "fngate_events_total{function=\"reader\",namespace=\"default\",outcome=\"drop\",trigger=\"min\"}"
        ),
        1.0
    );
}

#[test]
fn app_max_concurrency_holds_deliveries_across_a_functions_triggers_and_loses_none() {
    let (a, b) = (unique("fngate/slots/a"), unique("fngate/slots/b"));
    let released = tempfile::tempdir().unwrap().keep().join("released");
    let app = DaprApp::start_with(
        "grpc",
        "127.0.0.1:0",
        "ma,mb",
        "",
        &["--hold-marked", released.to_str().unwrap()],
    );
    let binding = |name: &str, topic: &str| {
        mqtt_component(
            name,
            "bindings.mqtt",
            &format!("    - name: topic\n      value: \"{topic}\"\n    - name: consumerID\n      value: \"{{uuid}}\"\n"),
        )
    };
    let dir = tempfile::tempdir().unwrap();
    write_atomically(
        dir.path(),
        "fn.yaml",
        &[
            binding("ma", &a),
            binding("mb", &b),
            dapr_function_yaml("busy", "ma", None, "grpc", app.addr.port(), "")
                .replace(
                    "      dapr.io/app-protocol: grpc\n",
                    "      dapr.io/app-protocol: grpc\n      dapr.io/app-max-concurrency: \"1\"\n",
                )
                .replace(
                    "        - {name: ma}\n",
                    "        - {name: ma}\n        - {name: mb}\n",
                ),
            endpoint_slice("default", "busy", &[app.addr], true),
        ]
        .join("---\n"),
    );
    let gate = Fngate::start(dir.path());
    gate.wait_until(
        || {
            gate.metric_opt("fngate_broker_connected{broker=\"mqtt\",function=\"busy\",namespace=\"default\",trigger=\"ma\"}") == Some(1.0)
                && gate.metric_opt("fngate_broker_connected{broker=\"mqtt\",function=\"busy\",namespace=\"default\",trigger=\"mb\"}") == Some(1.0)
        },
        "both triggers subscribed",
    );
    // The app holds both; with one slot, the second waits in fngate, not in the app.
    publish(&a, &["held a".to_owned()]);
    publish(&b, &["held b".to_owned()]);
    let waiting = "fngate_events_waiting_for_app{function=\"busy\",namespace=\"default\"}";
    gate.wait_until(
        || gate.metric_opt(waiting) == Some(1.0),
        "one delivery waiting for the function's slot",
    );
    std::fs::write(&released, b"").unwrap();
    let events = app.wait_for("both events", |e| accepted_data(e).len() == 2);
    let mut got = accepted_data(&events);
    got.sort();
    assert_eq!(got, ["held a", "held b"]);
    gate.wait_until(|| gate.metric_opt(waiting) == Some(0.0), "nothing waits");
}

#[test]
fn two_replicas_on_a_shared_subscription_deliver_each_message_once() {
    let topic = unique("fngate/shared");
    let app = DaprApp::start("grpc", "min", "");
    let filter = format!("$share/{}/{topic}", unique("group"));
    let dir = binding_reader("bindings.mqtt", BROKER, &filter, "{uuid}", "grpc", &app);
    let one = Fngate::start(dir.path());
    let two = Fngate::start(dir.path());
    wait_connected(&one, "reader");
    wait_connected(&two, "reader");
    let messages: Vec<String> = (0..40).map(|i| format!("s{i}")).collect();
    publish(&topic, &messages);
    let events = app.wait_for("every message", |e| {
        accepted_data(e).into_iter().collect::<HashSet<_>>().len() == messages.len()
    });
    assert_eq!(
        accepted_data(&events).len(),
        messages.len(),
        "each message once across the two replicas"
    );
    let delivered = |gate: &Fngate| {
        gate.metric_opt(
            "fngate_events_total{function=\"reader\",namespace=\"default\",outcome=\"success\",trigger=\"min\"}",
        )
        .unwrap_or(0.0)
    };
    assert_eq!(delivered(&one) + delivered(&two), messages.len() as f64);
}

/// The sample's own Secret-free manifest gets the API token a function needs for fngate's
/// Dapr API (`dapr.io/api-token-secret`), and this Secret.
/// Where a Node function listens: the Dapr JS SDK's server binds every address, whatever
/// host it is given, so each test takes a free port and sets it as the app port.
fn node_pod() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], free_port()))
}

const NODE_TOKEN: &str = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: node-token\n  namespace: default\nstringData:\n  token: tok-node\n";

/// An async Node sample: its manifest with `replace` applied, its function given a token
/// and a free app port, fngate with a Dapr HTTP API, and the function on the JS SDK with
/// `inputs` and `outputs`, started and subscribed.
fn node_async_sample(
    file: &str,
    function_name: &str,
    replace: &[(&str, &str)],
    inputs: &str,
    outputs: &str,
) -> (Fngate, NodeFunction, tempfile::TempDir) {
    let pod = node_pod();
    let annotations = format!(
        "      dapr.io/app-protocol: http\n      dapr.io/api-token-secret: node-token\n      dapr.io/app-port: \"{}\"\n",
        pod.port()
    );
    let mut replace = replace.to_vec();
    replace.push(("      dapr.io/app-protocol: http\n", &annotations));
    let dir = sample_catalog(file, &replace, pod, NODE_TOKEN);
    let dapr_http = free_port();
    let gate = Fngate::start_full(
        dir.path(),
        &format!("  dapr_http: 127.0.0.1:{dapr_http}\n"),
        "",
    );
    let function = NodeFunction::start(pod, dapr_http, "tok-node", inputs, outputs);
    function.wait_line("STARTED");
    wait_connected(&gate, function_name);
    let diagnostics =
        String::from_utf8(admin_get(gate.admin, "/diagnostics").unwrap().body).unwrap();
    assert!(!diagnostics.contains("not run by fngate"), "{diagnostics}");
    (gate, function, dir)
}

#[test]
fn openfunctions_node_mqtt_bindings_sample_runs_on_the_dapr_js_sdk_input_to_output() {
    // mqtt-io-node async-bindings as published: input binding `mqtt-in` (topic `in`),
    // output `mqtt-out` (topic `out`, operation create); its function sends what it
    // receives to its outputs (`ctx.send(data)`), through fngate's Dapr HTTP API.
    let (input, output) = (unique("fngate/node/in"), unique("fngate/node/out"));
    let (_gate, function, _dir) = node_async_sample(
        "OpenFunction_samples@318ee24__functions__async__mqtt-io-node__async-bindings.yaml",
        "sample-node-async-bindings",
        &[
            ("value: in\n", &format!("value: {input}\n")),
            ("value: out\n", &format!("value: {output}\n")),
        ],
        r#"[{"name":"mqtt-in","type":"bindings"}]"#,
        r#"[{"name":"mqtt-out","type":"bindings","operation":"create"}]"#,
    );
    let sub = Subscriber::start(&output, 1);
    publish(&input, &[r#"{"reading":42}"#.to_owned()]);
    let event = function.wait_line("EVENT");
    assert_eq!(event["data"], serde_json::json!({"reading": 42}), "{event}");
    function.wait_line("SENT");
    assert_eq!(sub.received(&output, 1), [r#"{"reading":42}"#]);
}

#[test]
fn openfunctions_node_mqtt_pubsub_sample_runs_on_the_dapr_js_sdk_topic_to_topic() {
    // mqtt-io-node async-pubsub: subscription `mqtt-pubsub` on `sub`, output the same
    // pub/sub on topic `pub`.
    let (input, output) = (unique("fngate/node/sub"), unique("fngate/node/pub"));
    let (_gate, function, _dir) = node_async_sample(
        "OpenFunction_samples@318ee24__functions__async__mqtt-io-node__async-pubsub.yaml",
        "sample-node-async-pubsub",
        &[
            ("topic: sub\n", &format!("topic: {input}\n")),
            ("topic: pub\n", &format!("topic: {output}\n")),
        ],
        &format!(r#"[{{"name":"mqtt-pubsub","type":"pubsub","topic":"{input}"}}]"#),
        &format!(r#"[{{"name":"mqtt-pubsub","type":"pubsub","topic":"{output}"}}]"#),
    );
    let sub = Subscriber::start(&output, 1);
    publish(&input, &[r#"{"order":7}"#.to_owned()]);
    let event = function.wait_line("EVENT");
    assert_eq!(event["data"], serde_json::json!({"order": 7}), "{event}");
    function.wait_line("SENT");
    let published: serde_json::Value = serde_json::from_str(&sub.received(&output, 1)[0]).unwrap();
    assert_eq!(
        (
            &published["data"],
            &published["topic"],
            &published["pubsubname"]
        ),
        (
            &serde_json::json!({"order": 7}),
            &serde_json::json!(output),
            &serde_json::json!("mqtt-pubsub")
        ),
        "{published}"
    );
}

#[test]
fn openfunctions_node_http_function_sends_to_its_mqtt_output_binding() {
    // with-output-binding-node: an HTTP function with output `mqtt-out` (no operation:
    // create) on topic `out`; a request through fngate's gateway ends up on the topic.
    let output = unique("fngate/node/http-out");
    let pod = node_pod();
    let file = "OpenFunction_samples@318ee24__functions__knative__with-output-binding-node__http-trigger.yaml";
    let dir = sample_catalog(
        file,
        &[
            ("value: out\n", &format!("value: {output}\n")),
            (
                "      dapr.io/log-level: debug\n",
                "      dapr.io/log-level: debug\n      dapr.io/api-token-secret: node-token\n",
            ),
            (
                "        port: 8080\n",
                &format!("        port: {}\n", pod.port()),
            ),
        ],
        pod,
        NODE_TOKEN,
    );
    let manifest = std::fs::read_to_string(dir.path().join("sample.yaml")).unwrap();
    let name = manifest
        .lines()
        .find_map(|l| l.strip_prefix("  name: "))
        .unwrap()
        .to_owned();
    let dapr_http = free_port();
    let gate = Fngate::start_full(
        dir.path(),
        &format!("  dapr_http: 127.0.0.1:{dapr_http}\n"),
        "",
    );
    let function = NodeFunction::start_http(
        pod,
        dapr_http,
        "tok-node",
        r#"[{"name":"mqtt-out","type":"bindings"}]"#,
    );
    function.wait_line("STARTED");
    let sub = Subscriber::start(&output, 1);
    let host = format!("{name}.default.ofn.io");
    let reply = request(
        gate.http,
        "POST",
        &host,
        "/",
        &[("content-type", "application/json")],
        br#"{"hello":"mqtt"}"#,
    )
    .unwrap();
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(sub.received(&output, 1), [r#"{"hello":"mqtt"}"#]);
    let diagnostics =
        String::from_utf8(admin_get(gate.admin, "/diagnostics").unwrap().body).unwrap();
    assert!(!diagnostics.contains("not run by fngate"), "{diagnostics}");
}
