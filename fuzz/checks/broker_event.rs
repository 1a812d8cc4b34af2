//! Any message a producer could write (payload, key, headers, topic, position) through the
//! conversion to what an app receives: the HTTP request and the gRPC BindingEventRequest /
//! TopicEventRequest with its metadata. Never a panic; what is built decodes as Dapr's
//! generated types and carries the payload, topic and component unchanged.
use arbitrary::{Result, Unstructured};
use base64::Engine as _;
use bytes::Bytes;
use dapr::dapr::proto::runtime::v1::{BindingEventRequest, TopicEventRequest};
use fngate::plan::{
    AppProtocol, DeliverPolicy, DeliveryPolicy, DeliverySpec, JetstreamSource, ServiceKey,
    SourceSpec, TriggerKind, TriggerSpec,
};
use fngate::triggers::{grpc_wire_form, http_delivery_request, topic_metadata, Event};
use prost::Message;
use std::time::{Duration, Instant};

fn spec(kind: TriggerKind, component: String) -> TriggerSpec {
    TriggerSpec {
        app_id: "fuzz".into(),
        component,
        kind,
        source: SourceSpec::Jetstream(JetstreamSource {
            nats_url: "nats://127.0.0.1:4222".into(),
            stream_name: None,
            subject: "fuzz".into(),
            durable_name: "fuzz".into(),
            deliver_policy: DeliverPolicy::All,
            ack_wait: None,
            max_deliver: None,
        }),
        delivery: DeliverySpec {
            protocol: AppProtocol::Grpc,
            port: 1,
            service: ServiceKey {
                namespace: "default".into(),
                name: "f".into(),
            },
        },
        policy: DeliveryPolicy {
            concurrency: 1,
            retry_initial: Duration::from_millis(1),
            retry_max: Duration::from_millis(1),
            max_attempts: None,
            max_retries: None,
            app_max_concurrency: None,
            dead_letter_topic: None,
        },
        route: None,
    }
}

fn message(u: &mut Unstructured) -> Result<(TriggerSpec, Event, String)> {
    let kind = if u.arbitrary()? {
        TriggerKind::PubSub
    } else {
        TriggerKind::Binding
    };
    let component: String = u.arbitrary()?;
    let path: String = u.arbitrary()?;
    let topic: String = u.arbitrary()?;
    let position: String = u.arbitrary()?;
    let pairs: Vec<(String, String)> = u.arbitrary()?;
    let data: Vec<u8> = u.arbitrary()?;
    let event = Event {
        data: Bytes::from(data),
        metadata: pairs.into_iter().map(|(k, v)| (k.into(), v)).collect(),
        topic,
        position,
        received: Instant::now(),
    };
    Ok((spec(kind, component), event, path))
}

pub fn check(input: &[u8]) {
    let Ok((spec, event, path)) = message(&mut Unstructured::new(input)) else {
        return;
    };
    let addr = "127.0.0.1:9".parse().unwrap();
    // Told apart here without the code under test: a JSON object with `specversion` is a
    // CloudEvent already and is unpacked; anything else is wrapped as Dapr wraps it.
    let original = match serde_json::from_slice::<serde_json::Value>(&event.data) {
        Ok(serde_json::Value::Object(o)) if o.contains_key("specversion") => Some(o),
        _ => None,
    };

    // HTTP delivery: a request that cannot be built is retried and dead-lettered, never a
    // panic; one that is built carries the event.
    if let Ok(request) = http_delivery_request(addr, &spec, &event, &path) {
        let body = futures_body(request.into_body());
        match spec.kind {
            TriggerKind::Binding => assert_eq!(body, event.data),
            TriggerKind::PubSub => {
                let json: serde_json::Value =
                    serde_json::from_slice(&body).expect("the CloudEvent body is JSON");
                let json = json.as_object().expect("the CloudEvent body is an object");
                match &original {
                    Some(original) => {
                        for (k, v) in original {
                            assert_eq!(json.get(k), Some(v), "the event's own {k:?} is passed on");
                        }
                    }
                    None => {
                        let data = json["data_base64"].as_str().expect("data_base64");
                        let decoded = base64::engine::general_purpose::STANDARD
                            .decode(data)
                            .expect("data_base64 is base64");
                        assert_eq!(decoded, event.data, "the wrapped payload, byte for byte");
                        assert_eq!(json["datacontenttype"], "application/octet-stream");
                        assert_eq!(json["topic"].as_str(), Some(event.topic.as_str()));
                        assert_eq!(json["pubsubname"].as_str(), Some(spec.component.as_str()));
                    }
                }
            }
        }
    }

    // gRPC delivery: the hand-written protobuf decodes with Dapr's own types.
    let wire = grpc_wire_form(&event, &spec, &path);
    match spec.kind {
        TriggerKind::Binding => {
            let request = BindingEventRequest::decode(&wire[..]).expect("decodes");
            assert_eq!(request.name, spec.component);
            assert_eq!(request.data, event.data);
            for (k, v) in &event.metadata {
                let last = event.metadata.iter().rev().find(|(k2, _)| k2 == k).unwrap();
                assert_eq!(request.metadata.get(k.as_ref()), Some(&last.1), "{k}: {v}");
            }
        }
        TriggerKind::PubSub => {
            let request = TopicEventRequest::decode(&wire[..]).expect("decodes");
            assert_eq!(request.topic, event.topic);
            assert_eq!(request.pubsub_name, spec.component);
            assert_eq!(request.path, path);
            match &original {
                None => {
                    assert_eq!(request.data, event.data, "the raw payload as data");
                    assert_eq!(request.data_content_type, "application/octet-stream");
                    assert_eq!(request.source, "Dapr");
                    assert_eq!(request.r#type, "com.dapr.event.sent");
                }
                Some(original) => {
                    if let Some(id) = original.get("id").and_then(|v| v.as_str()) {
                        assert_eq!(request.id, id, "the event's own id");
                    }
                    let json_type = original
                        .get("datacontenttype")
                        .is_some_and(|t| t.to_string().contains("json"));
                    if let (None, false, Some(data)) = (
                        original.get("data_base64"),
                        json_type,
                        original.get("data").and_then(|v| v.as_str()),
                    ) {
                        assert_eq!(request.data, data.as_bytes(), "string data as its text");
                    }
                }
            }
            // Metadata travels as gRPC metadata: a plain name and value as they are,
            // anything else as `-bin` or left out, never a panic.
            let md = topic_metadata(&event);
            for (k, v) in &event.metadata {
                let plain_key = !k.is_empty()
                    && !k.ends_with("-bin")
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                let plain_value = v.bytes().all(|b| b.is_ascii_graphic());
                if plain_key && plain_value {
                    let values: Vec<&str> = md
                        .get_all(k.to_ascii_lowercase().as_str())
                        .iter()
                        .filter_map(|m| m.to_str().ok())
                        .collect();
                    assert!(
                        values.contains(&v.as_str()),
                        "metadata {k:?}={v:?} in {values:?}"
                    );
                }
            }
        }
    }
}

/// The whole body of a built request (in memory: no I/O).
fn futures_body(body: http_body_util::Full<Bytes>) -> Bytes {
    use http_body_util::BodyExt;
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    });
    runtime.block_on(body.collect()).unwrap().to_bytes()
}
