//! Dapr triggers compile from Functions, Components and Secrets: type resolution, scopes,
//! secrets, defaults, and diagnostics that name the object and the key.

use fngate::catalog::snapshot_from_texts;
use fngate::compile::{compile, CompileSettings};
use fngate::plan::{
    AppProtocol, DeliverPolicy, InitialOffset, KafkaAuth, Plan, SourceSpec, TriggerKind,
};

fn plan(yaml: &str) -> Plan {
    compile(
        &snapshot_from_texts([("t.yaml", yaml)]),
        &CompileSettings::default(),
        None,
    )
}

fn errors(p: &Plan) -> Vec<String> {
    p.diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.to_string())
        .collect()
}

const FUNCTION: &str = r#"
apiVersion: core.openfunction.io/v1beta2
kind: Function
metadata: {name: orders, namespace: shop}
spec:
  serving:
    annotations:
      dapr.io/app-protocol: http
      dapr.io/app-port: "3000"
    triggers:
      dapr:
        - {name: bus, topic: created}
"#;

#[test]
fn a_component_object_with_a_secret_compiles_to_a_kafka_subscription_with_dapr_defaults() {
    let p = plan(&format!(
        "{FUNCTION}---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: bus, namespace: shop}}\nspec:\n  type: pubsub.kafka\n  version: v1\n  metadata:\n    - {{name: brokers, value: \"k1:9092,k2:9092\"}}\n    - {{name: authType, value: password}}\n    - {{name: saslMechanism, value: SHA-512}}\n    - {{name: saslUsername, value: app}}\n    - name: saslPassword\n      secretKeyRef: {{name: kafka-auth, key: password}}\n    - {{name: deadLetterTopic, value: created-dlq}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: kafka-auth, namespace: shop}}\ndata:\n  password: czNjcjN0\n"
    ));
    assert!(errors(&p).is_empty(), "{:#?}", p.diagnostics);
    let (key, spec) = p.triggers.triggers.iter().next().expect("one trigger");
    assert_eq!(key.to_string(), "shop/orders bus created");
    assert_eq!(spec.app_id, "orders-shop");
    assert_eq!(spec.kind, TriggerKind::PubSub);
    assert_eq!(spec.delivery.protocol, AppProtocol::Http);
    assert_eq!(spec.delivery.port, 3000);
    assert_eq!(spec.delivery.service.name, "orders");
    assert_eq!(spec.policy.concurrency, 1, "ordered by default");
    assert_eq!(
        spec.policy.dead_letter_topic.as_deref(),
        Some("created-dlq")
    );
    let SourceSpec::Kafka(k) = &spec.source else {
        panic!("kafka")
    };
    assert_eq!(k.topics, ["created"]);
    assert_eq!(
        k.consumer_group, "orders-shop",
        "pubsub.kafka's group defaults to the app-id"
    );
    assert_eq!(k.initial_offset, InitialOffset::Newest);
    match &k.auth {
        KafkaAuth::Sasl {
            mechanism,
            username,
            password,
        } => {
            assert_eq!(
                (mechanism.as_str(), username.as_str(), password.as_str()),
                ("SCRAM-SHA-512", "app", "s3cr3t")
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn scopes_a_missing_secret_and_bad_metadata_are_reported_naming_object_and_key() {
    let component = |scopes: &str, extra: &str| {
        format!("---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: bus, namespace: shop}}\nspec:\n  type: pubsub.jetstream\n  metadata:\n    - {{name: natsURL, value: \"nats://n:4222\"}}\n{extra}{scopes}")
    };
    let scoped = plan(&format!(
        "{FUNCTION}{}",
        component("scopes: [billing-shop]\n", "")
    ));
    assert!(scoped.triggers.is_empty());
    let e = errors(&scoped).join("\n");
    assert!(
        e.contains("Function shop/orders")
            && e.contains("orders-shop")
            && e.contains("billing-shop"),
        "{e}"
    );

    let secret = plan(&format!(
        "{FUNCTION}{}",
        component(
            "",
            "    - name: natsURL\n      secretKeyRef: {name: nats, key: url}\n"
        )
    ));
    let e = errors(&secret).join("\n");
    assert!(
        e.contains("Component shop/bus")
            && e.contains("spec.metadata[1].secretKeyRef")
            && e.contains("Secret shop/nats not found"),
        "{e}"
    );

    let bad = plan(&format!(
        "{FUNCTION}{}",
        component(
            "",
            "    - {name: deliverPolicy, value: sometimes}\n    - {name: ackWait, value: soon}\n"
        )
    ));
    let e = errors(&bad).join("\n");
    assert!(
        e.contains("spec.metadata[1] (deliverPolicy)") && e.contains("\"sometimes\""),
        "{e}"
    );
    assert!(e.contains("spec.metadata[2] (ackWait)"), "{e}");
    assert!(bad.triggers.is_empty());

    let ok = plan(&format!("{FUNCTION}{}", component("", "    - {name: deliverPolicy, value: sequence}\n    - {name: startSequence, value: 42}\n    - {name: concurrency, value: parallel}\n")));
    assert!(errors(&ok).is_empty(), "{:#?}", ok.diagnostics);
    let spec = ok.triggers.triggers.values().next().unwrap();
    let SourceSpec::Jetstream(j) = &spec.source else {
        panic!("jetstream")
    };
    assert_eq!(j.deliver_policy, DeliverPolicy::Sequence(42));
    assert_eq!(j.subject, "created");
    assert_eq!(j.durable_name, "orders-shop-created");
    assert!(
        spec.policy.concurrency > 1,
        "concurrency: parallel relaxes ordering"
    );
}

#[test]
fn a_v1beta1_kafka_input_becomes_a_binding_trigger_delivered_over_grpc_to_port_8080() {
    let p = plan(
        r#"
apiVersion: core.openfunction.io/v1beta1
kind: Function
metadata: {name: kafka-input}
spec:
  serving:
    runtime: async
    inputs:
      - {name: greeting, component: target-topic}
    bindings:
      target-topic:
        type: bindings.kafka
        version: v1
        metadata:
          - {name: brokers, value: "kafka:9092"}
          - {name: topics, value: "sample-topic,other"}
          - {name: consumerGroup, value: group1}
          - {name: publishTopic, value: sample-topic}
          - {name: authRequired, value: "false"}
"#,
    );
    assert!(errors(&p).is_empty(), "{:#?}", p.diagnostics);
    let spec = p.triggers.triggers.values().next().expect("one trigger");
    assert_eq!(spec.kind, TriggerKind::Binding);
    assert_eq!(spec.component, "target-topic");
    assert_eq!(spec.delivery.protocol, AppProtocol::Grpc);
    assert_eq!(spec.delivery.port, 8080);
    let SourceSpec::Kafka(k) = &spec.source else {
        panic!("kafka")
    };
    assert_eq!(k.topics, ["sample-topic", "other"]);
    assert_eq!(k.consumer_group, "group1");
}

#[test]
fn a_trigger_that_turns_invalid_keeps_its_last_good_version_running() {
    let good = format!("{FUNCTION}---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: bus, namespace: shop}}\nspec:\n  type: pubsub.jetstream\n  metadata:\n    - {{name: natsURL, value: \"nats://n:4222\"}}\n");
    let first = plan(&good);
    assert_eq!(first.triggers.len(), 1);
    let broken = good.replace(
        "nats://n:4222\"}",
        "nats://n:4222\"}\n    - {name: maxDeliver, value: many}",
    );
    let second = compile(
        &snapshot_from_texts([("t.yaml", broken.as_str())]),
        &CompileSettings::default(),
        Some(&first),
    );
    assert!(!errors(&second).is_empty());
    assert_eq!(second.triggers, first.triggers, "last good trigger kept");
}
