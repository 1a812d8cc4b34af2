//! Any message a producer could write (payload, key, headers, topic, position) through the
//! conversion to what an app receives: the HTTP request and the gRPC BindingEventRequest /
//! TopicEventRequest with its metadata. Never a panic; what is built decodes as Dapr's
//! generated types and carries the payload, topic and component unchanged.
#![no_main]

use bytes::Bytes;
use dapr::dapr::proto::runtime::v1::{BindingEventRequest, TopicEventRequest};
use fngate::plan::{
    AppProtocol, DeliverPolicy, DeliveryPolicy, DeliverySpec, JetstreamSource, ServiceKey,
    SourceSpec, TriggerKind, TriggerSpec,
};
use fngate::triggers::{grpc_wire_form, http_delivery_request, topic_metadata, Event};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
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
            dead_letter_topic: None,
        },
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

fuzz_target!(|input: &[u8]| {
    let Ok((spec, event, path)) = message(&mut Unstructured::new(input)) else {
        return;
    };
    let addr = "127.0.0.1:9".parse().unwrap();

    // HTTP delivery: a request that cannot be built is retried and dead-lettered, never a
    // panic; one that is built carries the event.
    if let Ok(request) = http_delivery_request(addr, &spec, &event, &path) {
        let body = futures_body(request.into_body());
        match spec.kind {
            TriggerKind::Binding => assert_eq!(body, event.data),
            TriggerKind::PubSub => {
                let json: serde_json::Value =
                    serde_json::from_slice(&body).expect("the CloudEvent body is JSON");
                assert!(json.is_object(), "the CloudEvent body is an object");
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
            let _ = topic_metadata(&event);
        }
    }
});

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
