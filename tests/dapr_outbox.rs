//! daprd's transactional outbox through fngate against the real binary: a transaction on
//! a Redis store with outbox metadata writes the state value and publishes the event (its
//! projection when the transaction has one) to the outbox topic on real NATS JetStream and
//! on a Kafka-protocol broker (tansu), through daprd's internal topic and marker; combinations fngate cannot relay are
//! compile errors at the store.

mod common;

use common::redis_server::Redis;
use common::*;
use dapr::dapr::proto::common::v1 as common_v1;
use dapr::dapr::proto::runtime::v1 as rt;
use fngate::catalog::snapshot_from_texts;
use fngate::compile::{compile, CompileSettings};
use futures::StreamExt as _;
use std::time::Duration;

const TOKEN: &str = "tok-orders";

fn catalog(redis: &Redis, topic: &str, extra_state_meta: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: orders-token, namespace: shop}}
stringData: {{token: {TOKEN}}}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {{name: bus, namespace: shop}}
spec:
  type: pubsub.jetstream
  metadata:
    - {{name: natsURL, value: "nats://127.0.0.1:4222"}}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {{name: cart, namespace: shop}}
spec:
  type: state.redis
  metadata:
    - {{name: redisHost, value: "{}"}}
    - {{name: outboxPublishPubsub, value: bus}}
    - {{name: outboxPublishTopic, value: "{topic}"}}
{extra_state_meta}---
apiVersion: core.openfunction.io/v1beta2
kind: Function
metadata: {{name: orders, namespace: shop}}
spec:
  serving:
    annotations:
      dapr.io/api-token-secret: orders-token
"#,
        redis.addr()
    )
}

#[test]
fn a_transaction_writes_the_state_and_publishes_its_projection_through_the_outbox() {
    let redis = Redis::start();
    let topic = unique("fngate-outbox.");
    let stream_name = unique("FNGATE_OUTBOX_").replace('.', "_");
    // daprd's internal topic: <namespace><app-id><publishTopic>outbox.
    let internal = format!("shoporders-shop{topic}outbox");
    let nats = tokio::runtime::Runtime::new().unwrap();
    let js = nats.block_on(async {
        async_nats::jetstream::new(async_nats::connect("127.0.0.1:4222").await.unwrap())
    });
    let stream = nats
        .block_on(js.create_stream(async_nats::jetstream::stream::Config {
            name: stream_name.clone(),
            subjects: vec![topic.clone(), internal.clone()],
            ..Default::default()
        }))
        .unwrap();
    let reader = nats
        .block_on(
            stream.create_consumer(async_nats::jetstream::consumer::pull::Config {
                filter_subject: topic.clone(),
                ..Default::default()
            }),
        )
        .unwrap();
    let mut published = nats.block_on(reader.messages()).unwrap();
    let mut next_event = || -> serde_json::Value {
        let message = nats
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(60), published.next()).await
            })
            .expect("an event on the outbox topic within 60 s")
            .unwrap()
            .unwrap();
        nats.block_on(message.ack()).unwrap();
        serde_json::from_slice(&message.payload).unwrap()
    };

    let dir = tempfile::tempdir().unwrap();
    write_atomically(dir.path(), "catalog.yaml", &catalog(&redis, &topic, ""));
    let gate = DaprGate::start(dir.path());

    // HTTP: the state keeps val1, the event carries the projection val2.
    let r = gate.http(
        "POST",
        "/v1.0/state/cart/transaction",
        Some(TOKEN),
        br#"{"operations":[
            {"operation":"upsert","request":{"key":"order-1","value":"val1"}},
            {"operation":"upsert","request":{"key":"order-1","value":"val2","metadata":{"outbox.projection":"true"}}}
        ]}"#,
    );
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    let r = gate.http("GET", "/v1.0/state/cart/order-1", Some(TOKEN), b"");
    assert_eq!(r.body, b"\"val1\"", "the state value, not the projection");
    let event = next_event();
    assert_eq!(event["data"], "val2", "{event}");
    assert_eq!(event["topic"], topic.as_str());
    assert_eq!(event["pubsubname"], "bus");
    assert_eq!(event["source"], "orders-shop");
    let id = event["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("outbox-"), "{event}");
    // The marker leaves the store once the event is out.
    gate.fngate
        .wait_until(|| redis.hash(&id).is_empty(), "the outbox marker deleted");

    // gRPC: raw bytes, no projection: the value itself is published, JSON as JSON.
    let mut client = gate.client();
    gate.rt
        .block_on(client.execute_state_transaction(with_token(
            rt::ExecuteStateTransactionRequest {
                store_name: "cart".into(),
                operations: vec![rt::TransactionalStateOperation {
                    operation_type: "upsert".into(),
                    request: Some(common_v1::StateItem {
                        key: "order-2".into(),
                        value: br#"{"qty":2}"#.to_vec(),
                        metadata:
                            [("contentType".to_owned(), "application/json".to_owned())].into(),
                        ..Default::default()
                    }),
                }],
                metadata: Default::default(),
            },
            TOKEN,
        )))
        .unwrap();
    let event = next_event();
    assert_eq!(event["data"], serde_json::json!({"qty": 2}), "{event}");
    assert_eq!(event["datacontenttype"], "application/json");
    assert_eq!(redis.hash("orders-shop||order-2")["data"], br#"{"qty":2}"#);

    let _ = nats.block_on(js.delete_stream(&stream_name));
}

#[test]
fn an_outbox_fngate_cannot_relay_is_a_compile_error_at_the_store() {
    let redis_addr = "127.0.0.1:6379";
    let store = |pubsub: &str, extra: &str| {
        format!(
            "---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: cart, namespace: shop}}\nspec:\n  type: state.redis\n  metadata:\n    - {{name: redisHost, value: \"{redis_addr}\"}}\n    - {{name: outboxPublishPubsub, value: {pubsub}}}\n{extra}"
        )
    };
    let function = "apiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata: {name: orders, namespace: shop}\nspec:\n  serving:\n    annotations:\n      dapr.io/api-token-secret: t\n";
    let mqtt = "---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: mq, namespace: shop}\nspec:\n  type: pubsub.mqtt3\n  metadata:\n    - {name: url, value: \"tcp://127.0.0.1:1883\"}\n";
    let errors = |yaml: String| -> Vec<String> {
        compile(
            &snapshot_from_texts([("t.yaml", yaml.as_str())]),
            &CompileSettings::default(),
            None,
        )
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.to_string())
        .collect()
    };
    let cases = [
        (
            format!("{function}{}", store("bus", "")),
            "outboxPublishTopic is required",
        ),
        (
            format!(
                "{function}{}",
                store("nowhere", "    - {name: outboxPublishTopic, value: t}\n")
            ),
            "\"nowhere\" is not a pub/sub this app may use",
        ),
        (
            format!(
                "{function}{}{mqtt}",
                store("mq", "    - {name: outboxPublishTopic, value: t}\n")
            ),
            "relays through Kafka and JetStream only",
        ),
    ];
    for (yaml, expected) in cases {
        let e = errors(yaml);
        assert!(e.iter().any(|e| e.contains(expected)), "{e:#?}");
    }
}

#[test]
fn the_outbox_relays_through_kafka_too() {
    let kafka = common::kafka::Kafka::start();
    let redis = Redis::start();
    let topic = unique("outbox-k-");
    // daprd's internal topic for app orders-shop in namespace shop.
    let internal = format!("shoporders-shop{topic}outbox");
    kafka.create_topic(&topic, 1);
    kafka.create_topic(&internal, 1);
    let brokers = &kafka.brokers;
    let yaml = catalog(&redis, &topic, "").replace(
        "  type: pubsub.jetstream\n  metadata:\n    - {name: natsURL, value: \"nats://127.0.0.1:4222\"}\n",
        &format!("  type: pubsub.kafka\n  metadata:\n    - {{name: brokers, value: \"{brokers}\"}}\n"),
    );
    assert!(yaml.contains("pubsub.kafka"));
    let dir = tempfile::tempdir().unwrap();
    write_atomically(dir.path(), "catalog.yaml", &yaml);
    let gate = DaprGate::start(dir.path());
    let r = gate.http(
        "POST",
        "/v1.0/state/cart/transaction",
        Some(TOKEN),
        br#"{"operations":[
            {"operation":"upsert","request":{"key":"k1","value":{"total":10}}},
            {"operation":"upsert","request":{"key":"k1","value":{"total":10,"public":true},"metadata":{"outbox.projection":"true","contentType":"application/json"}}},
            {"operation":"delete","request":{"key":"gone"}}
        ]}"#,
    );
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    let published = kafka.read_all(&topic, 1);
    let event: serde_json::Value = serde_json::from_str(&published[0]).unwrap();
    assert_eq!(
        event["data"],
        serde_json::json!({"public": true, "total": 10}),
        "{event}"
    );
    assert_eq!(event["topic"], topic.as_str());
    let r = gate.http("GET", "/v1.0/state/cart/k1", Some(TOKEN), b"");
    assert_eq!(json_value(&r.body), serde_json::json!({"total": 10}));
    // The internal topic holds daprd's internal event: the same id, the outbox pub/sub.
    let internal_events = kafka.read_all(&internal, 1);
    let internal_event: serde_json::Value = serde_json::from_str(&internal_events[0]).unwrap();
    assert_eq!(internal_event["id"], event["id"]);
    assert_eq!(internal_event["pubsubname"], "bus");
}

fn json_value(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap()
}
