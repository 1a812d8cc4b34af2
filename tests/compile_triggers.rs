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

const DAPR_APP: &str = r#"
apiVersion: core.openfunction.io/v1beta2
kind: Function
metadata: {name: cart, namespace: shop}
spec:
  serving:
    annotations:
      dapr.io/api-token-secret: cart-token
    states:
      carts:
        spec:
          type: state.redis
          metadata:
            - {name: redisHost, value: "10.0.0.1:6379"}
            - name: redisPassword
              secretKeyRef: {name: redis-auth, key: password}
            - {name: keyPrefix, value: Namespace}
      broken:
        spec:
          type: state.redis
          metadata:
            - {name: redisDB, value: "zero"}
      elsewhere:
        spec: {type: state.cassandra}
      sqlbroken:
        spec: {type: state.mysql}
      orders:
        spec:
          type: state.postgresql
          version: v2
          metadata:
            - {name: connectionString, value: "postgres://app:pw@db:5432/shop"}
            - {name: tablePrefix, value: "shop."}
            - {name: cleanupInterval, value: "0"}
      weird: [1, 2]
    outputs:
      - dapr: {name: events, topic: created}
      - dapr: {name: nowhere, topic: x}
      - dapr: {name: billing-only, operation: create}
---
apiVersion: v1
kind: Secret
metadata: {name: cart-token, namespace: shop}
stringData: {token: s3cret}
---
apiVersion: v1
kind: Secret
metadata: {name: redis-auth, namespace: shop}
stringData: {password: pw}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: events, namespace: shop}
spec:
  type: pubsub.kafka
  metadata:
    - {name: brokers, value: "k:9092"}
    - {name: topics, value: "{namespace}"}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: billing-only, namespace: shop}
spec:
  type: bindings.http
  metadata:
    - {name: url, value: "http://billing/api"}
scopes: [billing-shop]
"#;

#[test]
fn dapr_api_components_compile_per_app_with_scopes_secrets_and_diagnostics_naming_the_field() {
    let p = plan(DAPR_APP);
    let app = p.dapr.apps.get("cart-shop").expect("the app");
    // The good store serves; its secret is resolved; keyPrefix is read case-insensitively.
    let carts = app.states.get("carts").expect("carts");
    assert_eq!(carts.key_prefix, fngate::plan::KeyPrefix::Namespace);
    let fngate::plan::StateBackend::Redis(r) = &carts.backend else {
        panic!("carts is on Redis: {:?}", carts.backend)
    };
    assert_eq!(r.password.as_deref(), Some("pw"));
    // state.postgresql v2: the table from the prefix, the URL read, cleanup disabled by 0.
    let orders = app.states.get("orders").expect("orders");
    let fngate::plan::StateBackend::Postgres(pg) = &orders.backend else {
        panic!("orders is on PostgreSQL: {:?}", orders.backend)
    };
    assert_eq!(pg.layout, fngate::plan::PostgresLayout::V2);
    assert_eq!(
        (pg.table.as_str(), pg.cleanup_interval),
        ("shop.state", None)
    );
    assert!(pg
        .connection
        .contains(&("dbname".to_owned(), "shop".to_owned())));
    // The broken one is left out and named with its field.
    assert!(!app.states.contains_key("broken"));
    let errs = errors(&p);
    assert!(
        errs.iter().any(|e| e.contains("Function shop/cart")
            && e.contains("spec.serving.states.broken.spec.metadata")
            && e.contains("redisHost")),
        "{errs:#?}"
    );
    // A malformed entry is an error on that entry; the Function still loads.
    assert!(
        errs.iter()
            .any(|e| e.contains("field spec.serving.states.weird: not a component spec")),
        "{errs:#?}"
    );
    assert!(
        errs.iter().any(
            |e| e.contains("spec.serving.states.sqlbroken.spec.metadata")
                && e.contains("connectionString")
        ),
        "{errs:#?}"
    );
    // A store type fngate does not serve is a warning, not an error.
    assert!(p
        .diagnostics
        .iter()
        .any(|d| !d.is_error() && d.to_string().contains("state.cassandra")));
    // Outputs: the pub/sub in scope is kept; the unknown and the out-of-scope are reported
    // (warnings, as for triggers: the Component may not have arrived yet).
    assert_eq!(app.outputs.len(), 1);
    assert_eq!(app.outputs[0].name, "events");
    assert!(app.pubsubs.get("events").unwrap().namespaced_topics);
    let all: Vec<String> = p.diagnostics.iter().map(|d| d.to_string()).collect();
    assert!(
        all.iter()
            .any(|e| e.contains("outputs[1]") && e.contains("nowhere")),
        "{all:#?}"
    );
    assert!(
        all.iter()
            .any(|e| e.contains("outputs[2]") && e.contains("billing-only")),
        "{all:#?}"
    );
    assert!(!app.bindings.contains_key("billing-only"));
    // The token selects the app; it never appears in a diagnostic.
    assert_eq!(
        p.dapr.by_token(b"s3cret").map(|a| a.app_id.as_str()),
        Some("cart-shop")
    );
    assert!(p.dapr.by_token(b"s3cre").is_none());
    assert!(!format!("{:?}", p.diagnostics).contains("s3cret"));
    assert!(!format!("{:?}", app).contains("s3cret"));
}

#[test]
fn a_missing_token_secret_or_a_shared_token_is_reported_and_the_token_stops_working() {
    let good = plan(DAPR_APP);
    let without_secret = DAPR_APP.replace("name: cart-token", "name: other-token");
    let snapshot = snapshot_from_texts([("t.yaml", without_secret.as_str())]);
    let p = compile(&snapshot, &CompileSettings::default(), Some(&good));
    let errs = errors(&p);
    assert!(
        errs.iter().any(|e| e.contains("dapr.io/api-token-secret")
            && e.contains("Secret shop/cart-token not found")
            && e.contains("no longer works")),
        "{errs:#?}"
    );
    assert!(p.dapr.by_token(b"s3cret").is_none(), "fail closed");
    // Without a previous plan the app cannot call at all.
    let fresh = plan(&without_secret);
    assert!(fresh.dapr.by_token(b"s3cret").is_none());
    // Two apps with one token: neither may call.
    let twin = format!(
        "{DAPR_APP}---\napiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata: {{name: twin, namespace: shop}}\nspec:\n  serving:\n    annotations:\n      dapr.io/api-token-secret: cart-token\n"
    );
    let p = plan(&twin);
    assert!(p.dapr.by_token(b"s3cret").is_none());
    assert!(errors(&p)
        .iter()
        .any(|e| e.contains("also the token of app")));
}

#[test]
fn a_replica_identity_gives_each_kafka_trigger_a_stable_static_membership_id() {
    let yaml = format!(
        "{FUNCTION}---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: bus, namespace: shop}}\nspec:\n  type: pubsub.kafka\n  metadata:\n    - {{name: brokers, value: \"k:9092\"}}\n"
    );
    let snapshot = snapshot_from_texts([("t.yaml", yaml.as_str())]);
    let mut settings = CompileSettings::default();
    let dynamic = compile(&snapshot, &settings, None);
    let SourceSpec::Kafka(k) = &dynamic.triggers.triggers.values().next().unwrap().source else {
        panic!("kafka")
    };
    assert_eq!(k.group_instance_id, None, "no identity: dynamic membership");
    settings.events.kafka_instance_id = Some("fngate-0".into());
    let p = compile(&snapshot, &settings, None);
    let SourceSpec::Kafka(k) = &p.triggers.triggers.values().next().unwrap().source else {
        panic!("kafka")
    };
    assert_eq!(
        k.group_instance_id.as_deref(),
        Some("fngate-0.shop.orders.bus.created")
    );
}

#[test]
fn mqtt_metadata_compiles_as_daprs_mqtt3_reads_it_and_bad_tls_is_reported_at_its_key() {
    let component = |name: &str, metadata: &str| {
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  type: pubsub.mqtt3\n  version: v1\n  metadata:\n{metadata}---\n"
        )
    };
    let yaml = [
        component(
            "bus",
            "    - {name: url, value: \"mqtts://user:secret@broker.example\"}\n    - {name: consumerID, value: orders}\n    - {name: backOffMaxRetries, value: \"3\"}\n",
        ),
        FUNCTION.to_owned(),
    ]
    .concat();
    let p = plan(&yaml);
    assert_eq!(errors(&p), Vec::<String>::new());
    let (_, spec) = p.triggers.triggers.iter().next().expect("one trigger");
    let SourceSpec::Mqtt(m) = &spec.source else {
        panic!("{:?}", spec.source)
    };
    // TLS on Dapr's alias scheme, 8883 by default, the system's roots without caCert.
    assert_eq!(m.broker.to_string(), "ssl://broker.example:8883");
    assert_eq!(m.broker.username.as_deref(), Some("user"));
    assert_eq!(m.client_id, "orders-consumer");
    assert_eq!(spec.policy.max_retries, Some(3));
    assert!(
        !format!("{:?} {}", m, serde_json::to_string(m).unwrap()).contains("secret"),
        "the password stays out of /routes and logs"
    );

    let bad = [
        component(
            "bus",
            "    - {name: url, value: \"ssl://broker.example:8883\"}\n    - {name: caCert, value: \"not a certificate\"}\n    - {name: consumerID, value: orders}\n",
        ),
        FUNCTION.to_owned(),
    ]
    .concat();
    let e = errors(&plan(&bad));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("Component shop/bus")
            && e[0].contains("(caCert)")
            && e[0].contains("no PEM certificate"),
        "{e:?}"
    );

    let plain = [
        component(
            "bus",
            "    - {name: url, value: \"tcp://broker.example:1883\"}\n    - {name: clientKey, value: \"k\"}\n    - {name: backOffMaxRetries, value: \"-1\"}\n",
        ),
        FUNCTION.to_owned(),
    ]
    .concat();
    let p = plan(&plain);
    assert_eq!(errors(&p), Vec::<String>::new());
    let warnings: Vec<String> = p.diagnostics.iter().map(|d| d.to_string()).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("(clientKey)") && w.contains("only with an ssl:// url")),
        "{warnings:?}"
    );
    let (_, spec) = p.triggers.triggers.iter().next().expect("one trigger");
    assert_eq!(
        spec.policy.max_retries, None,
        "negative: retried until taken"
    );
}

#[test]
fn uuid_consumer_ids_differ_per_trigger_and_a_shared_fixed_one_is_reported() {
    let yaml = |consumer: &str| {
        let binding = |name: &str| {
            format!(
                "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  type: bindings.mqtt\n  version: v1\n  metadata:\n    - {{name: url, value: \"tcp://broker:1883\"}}\n    - {{name: topic, value: {name}}}\n    - {{name: consumerID, value: \"{consumer}\"}}\n---\n"
            )
        };
        [
            binding("a"),
            binding("b"),
            FUNCTION.replace(
                "        - {name: bus, topic: created}\n",
                "        - {name: a}\n        - {name: b}\n",
            ),
        ]
        .concat()
    };
    let p = plan(&yaml("{uuid}"));
    let ids: Vec<String> = p
        .triggers
        .triggers
        .values()
        .map(|s| match &s.source {
            SourceSpec::Mqtt(m) => m.client_id.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(
        ids[0], ids[1],
        "the broker would take one's connection for the other"
    );
    assert!(
        ids.iter().all(|i| i.len() == 36 + "-consumer".len()),
        "{ids:?}"
    );
    assert_eq!(
        plan(&yaml("{uuid}")).triggers,
        p.triggers,
        "stable in the process"
    );

    let shared = plan(&yaml("orders"));
    let warnings: Vec<String> = shared.diagnostics.iter().map(|d| d.to_string()).collect();
    assert!(
        warnings.iter().any(|w| w.contains("one client id")
            && w.contains("shop/orders a")
            && w.contains("shop/orders b")),
        "{warnings:?}"
    );
}

#[test]
fn a_subscription_its_pubsubs_topic_acls_deny_is_not_run_and_is_reported() {
    let bus = |metadata: &str| {
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: bus, namespace: shop}}\nspec:\n  type: pubsub.kafka\n  version: v1\n  metadata:\n    - {{name: brokers, value: \"k:9092\"}}\n{metadata}---\n{FUNCTION}"
        )
    };
    for (metadata, runs) in [
        ("", true),
        (
            "    - {name: SubscriptionScopes, value: \"orders-shop=created\"}\n",
            true,
        ),
        (
            "    - {name: subscriptionScopes, value: \"orders-shop=other\"}\n",
            false,
        ),
        ("    - {name: allowedTopics, value: \"other\"}\n", false),
        ("    - {name: protectedTopics, value: \"created\"}\n", false),
    ] {
        let p = plan(&bus(metadata));
        assert_eq!(p.triggers.triggers.len(), usize::from(runs), "{metadata}");
        let warnings: Vec<String> = p.diagnostics.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            warnings
                .iter()
                .any(|w| w.contains("is not allowed for app id orders-shop")),
            !runs,
            "{metadata}: {warnings:?}"
        );
        assert!(
            !warnings.iter().any(|w| w.contains("not used by fngate")),
            "{warnings:?}"
        );
    }
}

#[test]
fn a_key_prefix_that_reaches_another_apps_keys_is_reported_naming_both() {
    let function = |name: &str, prefix: &str| {
        format!(
            "apiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  serving:\n    states:\n      kv:\n        spec:\n          type: state.redis\n          metadata:\n            - {{name: redisHost, value: \"10.0.0.1:6379\"}}\n{prefix}---\n"
        )
    };
    let yaml = [
        function("cart", ""),
        function("spy", "            - {name: keyPrefix, value: cart-shop}\n"),
        function("raw", "            - {name: keyPrefix, value: none}\n"),
        function("own", "            - {name: keyPrefix, value: name}\n"),
    ]
    .concat();
    let warnings: Vec<String> = plan(&yaml)
        .diagnostics
        .iter()
        .map(|d| d.to_string())
        .collect();
    let about = |app: &str| {
        warnings
            .iter()
            .filter(|w| w.contains(&format!("Function shop/{app}")) && w.contains("keyPrefix"))
            .cloned()
            .collect::<Vec<_>>()
    };
    let spy = about("spy");
    assert!(
        spy.len() == 1
            && spy[0].contains("`cart-shop||<key>`")
            && spy[0].contains("spy-shop and cart-shop"),
        "{warnings:#?}"
    );
    let raw = about("raw");
    assert!(
        raw.len() == 1 && raw[0].contains("keyPrefix none"),
        "{warnings:#?}"
    );
    // `name` gives `kv||`: no app is called kv, so nothing to say; the default says nothing.
    assert!(
        about("own").is_empty() && about("cart").is_empty(),
        "{warnings:#?}"
    );
}

#[test]
fn an_outbox_whose_pubsub_the_app_lacks_is_refused_at_its_key_not_accepted_silently() {
    let yaml = "apiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata: {name: cart, namespace: shop}\nspec:\n  serving:\n    states:\n      kv:\n        spec:\n          type: state.redis\n          metadata:\n            - {name: redisHost, value: \"10.0.0.1:6379\"}\n            - {name: outboxPublishPubsub, value: bus}\n            - {name: outboxPublishTopic, value: changes}\n";
    let p = plan(yaml);
    let errs = errors(&p);
    assert!(
        errs.iter().any(|e| e.contains("(outboxPublishPubsub)")
            && e.contains("\"bus\" is not a pub/sub this app may use")),
        "{errs:#?}"
    );
    let app = p.dapr.apps.get("cart-shop").expect("the app");
    assert!(
        app.states.get("kv").is_none(),
        "the store is not served half-way"
    );
}
