//! Publishing and output bindings to Kafka through fngate's Dapr API, read back with a
//! plain librdkafka consumer from tansu (a Kafka-protocol broker): daprd's envelope,
//! metadata as record headers, keys on the partitions Dapr's Sarama producer picks.

mod common;

use common::kafka::{Kafka, Record};
use common::*;
use dapr::dapr::proto::runtime::v1 as rt;
use std::collections::HashMap;

fn with_token<T>(message: T) -> tonic::Request<T> {
    common::with_token(message, "tok-pub")
}

fn header<'a>(r: &'a Record, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn publish_and_bindings_reach_kafka_as_daprd_sends_them() {
    let kafka = Kafka::start();
    let topic = unique("orders-");
    let out = unique("out-");
    kafka.create_topic(&topic, 3);
    kafka.create_topic(&out, 3);
    let dir = tempfile::tempdir().unwrap();
    let brokers = &kafka.brokers;
    std::fs::write(
        dir.path().join("catalog.yaml"),
        format!(
            r#"apiVersion: v1
kind: Secret
metadata: {{name: pub-token, namespace: shop}}
stringData: {{token: tok-pub}}
---
apiVersion: core.openfunction.io/v1beta2
kind: Function
metadata: {{name: plan_swap, namespace: shop}}
spec:
  serving:
    annotations:
      dapr.io/api-token-secret: pub-token
    outputs:
      - dapr: {{name: kbus, topic: {topic}}}
      - dapr: {{name: kout, operation: create}}
    pubsub:
      kbus:
        type: pubsub.kafka
        metadata:
          - {{name: brokers, value: "{brokers}"}}
    bindings:
      kout:
        type: bindings.kafka
        metadata:
          - {{name: brokers, value: "{brokers}"}}
          - {{name: publishTopic, value: "{out}"}}
"#
        ),
    )
    .unwrap();
    let (grpc, http) = (free_port(), free_port());
    let fngate = Fngate::start_full(
        dir.path(),
        &format!("  dapr_grpc: 127.0.0.1:{grpc}\n  dapr_http: 127.0.0.1:{http}\n"),
        "",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut c = dapr_client(&rt, grpc);
    // 15 events on five keys, JSON, with a cloudevent override and a TTL.
    rt.block_on(async {
        for i in 0..15 {
            let mut metadata = HashMap::new();
            metadata.insert("partitionKey".to_owned(), format!("key-{}", i % 5));
            metadata.insert("ttlInSeconds".to_owned(), "60".to_owned());
            metadata.insert("cloudevent.type".to_owned(), "order.created".to_owned());
            c.publish_event(with_token(rt::PublishEventRequest {
                pubsub_name: "kbus".into(),
                topic: topic.clone(),
                data: format!(r#"{{"n":{i}}}"#).into_bytes(),
                data_content_type: "application/json".into(),
                metadata,
            }))
            .await
            .unwrap();
        }
        // Bulk: each entry wrapped on its own.
        let entries = (0..3)
            .map(|i| rt::BulkPublishRequestEntry {
                entry_id: format!("e{i}"),
                event: format!("bulk {i}").into_bytes(),
                content_type: "text/plain".into(),
                metadata: HashMap::new(),
            })
            .collect();
        let r = c
            .bulk_publish_event(with_token(rt::BulkPublishRequest {
                pubsub_name: "kbus".into(),
                topic: topic.clone(),
                entries,
                metadata: HashMap::new(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(r.failed_entries.is_empty());
    });
    let records = kafka.read_records(&topic, 18);
    assert_eq!(records.len(), 18);
    // Sarama's FNV-1a partitions for three partitions (computed independently).
    let expected: HashMap<&str, i32> = [
        ("key-0", 0),
        ("key-1", 1),
        ("key-2", 2),
        ("key-3", 0),
        ("key-4", 2),
    ]
    .into_iter()
    .collect();
    let mut seen = 0;
    for r in records.iter().filter(|r| r.key.is_some()) {
        let key = r.key.as_deref().unwrap();
        assert_eq!(r.partition, expected[key], "key {key}");
        // Every metadata entry becomes a header, as daprd's producer sends it.
        assert_eq!(header(r, "partitionKey"), Some(key));
        assert_eq!(header(r, "cloudevent.type"), Some("order.created"));
        let ce: serde_json::Value = serde_json::from_slice(r.payload.as_ref().unwrap()).unwrap();
        assert_eq!(ce["source"], "plan_swap-shop");
        assert_eq!(ce["type"], "order.created");
        assert_eq!(ce["pubsubname"], "kbus");
        assert_eq!(ce["topic"], topic.as_str());
        assert!(ce["data"]["n"].is_number());
        assert!(ce["expiration"].is_string(), "ttlInSeconds adds expiration");
        seen += 1;
    }
    assert_eq!(seen, 15);
    let bulk: Vec<String> = records
        .iter()
        .filter(|r| r.key.is_none())
        .map(|r| {
            let ce: serde_json::Value =
                serde_json::from_slice(r.payload.as_ref().unwrap()).unwrap();
            ce["data"].as_str().unwrap().to_owned()
        })
        .collect();
    let mut bulk_sorted = bulk.clone();
    bulk_sorted.sort();
    assert_eq!(bulk_sorted, vec!["bulk 0", "bulk 1", "bulk 2"]);

    // bindings.kafka: raw data to publishTopic; `null` is a tombstone; HTTP data is
    // marshalled JSON (a string keeps its quotes).
    rt.block_on(async {
        let mut metadata = HashMap::new();
        metadata.insert("partitionKey".to_owned(), "k".to_owned());
        c.invoke_binding(with_token(rt::InvokeBindingRequest {
            name: "kout".into(),
            operation: "create".into(),
            data: b"raw bytes".to_vec(),
            metadata: metadata.clone(),
        }))
        .await
        .unwrap();
        c.invoke_binding(with_token(rt::InvokeBindingRequest {
            name: "kout".into(),
            operation: "create".into(),
            data: b"null".to_vec(),
            metadata,
        }))
        .await
        .unwrap();
        let e = c
            .invoke_binding(with_token(rt::InvokeBindingRequest {
                name: "kout".into(),
                operation: "delete".into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal);
        assert!(
            e.message()
                .contains("binding kout does not support operation delete"),
            "{}",
            e.message()
        );
    });
    let r = request(
        format!("127.0.0.1:{http}").parse().unwrap(),
        "POST",
        "",
        "/v1.0/bindings/kout",
        &[("dapr-api-token", "tok-pub")],
        br#"{"data":"hi","operation":"create","metadata":{"partitionKey":"k"}}"#,
    )
    .unwrap();
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    let out_records = kafka.read_records(&out, 3);
    let payloads: Vec<Option<&[u8]>> = out_records.iter().map(|r| r.payload.as_deref()).collect();
    assert_eq!(
        payloads,
        vec![Some(&b"raw bytes"[..]), None, Some(&br#""hi""#[..])]
    );
    assert!(out_records
        .iter()
        .all(|r| r.partition == 1 && r.key.as_deref() == Some("k")));
    // gRPC binding calls carry the call's headers, as daprd copies them.
    assert!(header(&out_records[0], "user-agent").is_some());
    assert!(header(&out_records[0], "dapr-api-token").is_none());
    drop(fngate);
}

#[test]
fn openfunctions_cron_input_kafka_output_sample_fires_and_its_output_reaches_kafka() {
    // The sample as published: an `@every 2s` cron binding `cron` into a function over
    // AppCallback gRPC (Go in the sample; here the official Dapr JS SDK's gRPC server),
    // which sends a greeting for each tick to its output binding `kafka-server`
    // (bindings.kafka, publishTopic `sample-topic`) through fngate's Dapr API.
    let kafka = Kafka::start();
    let topic = unique("sample-topic");
    kafka.create_topic(&topic, 1);
    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(
        "../shared/samples/openfunction/OpenFunction_samples@318ee24__functions__async__bindings__cron-input-kafka-output__cron-input-kafka-output.yaml",
    );
    let mut manifest =
        std::fs::read_to_string(&sample).unwrap_or_else(|e| panic!("{}: {e}", sample.display()));
    let pod = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    for (from, to) in [
        ("kafka-server-kafka-brokers:9092", kafka.brokers.as_str()),
        ("value: sample-topic\n", &format!("value: {topic}\n")),
        (
            "  serving:\n",
            &format!("  serving:\n    annotations:\n      dapr.io/api-token-secret: cron-token\n      dapr.io/app-port: \"{}\"\n", pod.port()),
        ),
    ] {
        assert!(manifest.contains(from), "the sample has no {from:?}");
        manifest = manifest.replace(from, to);
    }
    let dir = tempfile::tempdir().unwrap();
    write_atomically(
        dir.path(),
        "sample.yaml",
        &[
            manifest,
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: cron-token\n  namespace: default\nstringData:\n  token: tok-cron\n".to_owned(),
            endpoint_slice("default", "cron-input-kafka-output", &[pod], true),
        ]
        .join("---\n"),
    );
    let dapr_http = free_port();
    let fngate = Fngate::start_full(
        dir.path(),
        &format!("  dapr_http: 127.0.0.1:{dapr_http}\n"),
        "",
    );
    let function = NodeFunction::start_with(
        pod,
        dapr_http,
        "tok-cron",
        r#"[{"name":"cron","type":"bindings"}]"#,
        r#"[{"name":"kafka-server","type":"bindings","operation":"create"}]"#,
        &[("FUNC_PROTOCOL", "grpc"), ("FUNC_EMPTY_DATA", "Hello")],
    );
    function.wait_line("EVENT");
    function.wait_line("SENT");
    assert_eq!(kafka.read_all(&topic, 1)[0], r#""Hello""#);
    let diagnostics =
        String::from_utf8(admin_get(fngate.admin, "/diagnostics").unwrap().body).unwrap();
    assert!(!diagnostics.contains("not run by fngate"), "{diagnostics}");
}
