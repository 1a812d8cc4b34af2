//! Telling the platform: a KEDA-side client built from the same proto sees StreamIsActive
//! turn true the moment a request waits, and a webhook receiver gets the same edge.

mod common;

use common::*;
use fngate::activator::scaler::proto::{GetMetricsRequest, ScaledObjectRef};
use fngate::activator::scaler::ExternalScalerClient;
use std::time::Duration;

/// A KEDA-side client of fngate's scaler listener, once it accepts (within 10 s).
async fn connect_scaler(port: u16) -> ExternalScalerClient<tonic::transport::Channel> {
    for _ in 0..200 {
        if let Ok(c) = ExternalScalerClient::connect(format!("http://127.0.0.1:{port}")).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the scaler listener did not come up within 10 s");
}

fn scaled_object() -> ScaledObjectRef {
    ScaledObjectRef {
        name: "cold-scaler".into(),
        namespace: "default".into(),
        scaler_metadata: [("function".to_owned(), "cold".to_owned())].into(),
    }
}

#[test]
fn keda_sees_the_function_active_while_a_request_waits_and_the_webhook_hears_the_edge() {
    let (hook, bodies) = webhook_receiver();
    let dir = tempfile::tempdir().unwrap();
    let addr = cold_function(dir.path(), "cold");
    let scaler_port = free_port();
    let gate = Fngate::start_full(
        dir.path(),
        &format!("  scaler: 127.0.0.1:{scaler_port}\n"),
        &format!("activator:\n  webhook: http://{hook}/scale\n"),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut client = rt.block_on(connect_scaler(scaler_port));
    let mut stream = rt
        .block_on(client.stream_is_active(scaled_object()))
        .unwrap()
        .into_inner();
    let next = |stream: &mut tonic::Streaming<_>| {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), stream.message())
                .await
                .expect("a StreamIsActive message")
                .unwrap()
                .expect("stream open")
        })
    };
    let first: fngate::activator::scaler::proto::IsActiveResponse = next(&mut stream);
    assert!(!first.result, "nothing waits yet");

    let host = gate.http;
    let waiting = std::thread::spawn(move || {
        request(host, "GET", "cold.default.ofn.io", "/", &[], b"")
            .unwrap()
            .status
    });
    assert!(next(&mut stream).result, "a request waits: active");
    let is_active = rt
        .block_on(client.is_active(scaled_object()))
        .unwrap()
        .into_inner();
    assert!(is_active.result);
    let metrics = rt
        .block_on(client.get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(scaled_object()),
            metric_name: String::new(),
        }))
        .unwrap()
        .into_inner();
    assert_eq!(metrics.metric_values[0].metric_value, 1);
    assert_eq!(metrics.metric_values[0].metric_value_float, 1.0);
    assert_eq!(metrics.metric_values[0].metric_name, "fngate-default-cold");
    let spec = rt
        .block_on(client.get_metric_spec(scaled_object()))
        .unwrap()
        .into_inner();
    assert_eq!(spec.metric_specs[0].target_size, 1);
    assert_eq!(spec.metric_specs[0].target_size_float, 1.0);
    let body = bodies
        .recv_timeout(Duration::from_secs(30))
        .expect("the webhook was called");
    assert_eq!(
        body,
        serde_json::json!({"namespace": "default", "function": "cold", "waiting": 1})
    );

    // The platform starts the function: the request is served, then all is idle again.
    let _echo = start_cold_function(dir.path(), "cold", addr);
    assert_eq!(waiting.join().unwrap(), 200);
    let mut last = true;
    while last {
        last = next(&mut stream).result;
    }
    let is_active = rt
        .block_on(client.is_active(scaled_object()))
        .unwrap()
        .into_inner();
    assert!(!is_active.result);
    assert!(
        gate.metric(
            "fngate_scale_signals_total{function=\"cold\",namespace=\"default\",via=\"keda\"}"
        ) >= 1.0
    );
    gate.wait_until(
        || gate.metric_opt("fngate_scale_signals_total{function=\"cold\",namespace=\"default\",via=\"webhook\"}") == Some(1.0),
        "the webhook counted",
    );
}

#[test]
fn an_event_backlog_for_a_function_at_zero_makes_it_active_for_keda() {
    let dir = tempfile::tempdir().unwrap();
    let id = unique("s");
    let subject = format!("{id}.in");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let js = rt.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect("127.0.0.1:4222").await.unwrap());
        js.create_stream(async_nats::jetstream::stream::Config {
            name: format!("FNG_{id}"),
            subjects: vec![format!("{id}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
        js
    });
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    write_atomically(
        dir.path(),
        "fn.yaml",
        &[
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: ps\nspec:\n  type: pubsub.jetstream\n  metadata:\n    - {name: natsURL, value: \"nats://127.0.0.1:4222\"}\n".to_owned(),
            dapr_function_yaml("sub", "ps", Some(&subject), "grpc", port, ""),
            endpoint_slice("default", "sub", &[addr], false),
        ]
        .join("---\n"),
    );
    let scaler_port = free_port();
    let _gate = Fngate::start_full(
        dir.path(),
        &format!("  scaler: 127.0.0.1:{scaler_port}\n"),
        "",
    );
    let object = ScaledObjectRef {
        name: "sub".into(),
        namespace: "default".into(),
        scaler_metadata: Default::default(),
    };
    rt.block_on(async {
        let mut client = connect_scaler(scaler_port).await;
        let mut stream = client
            .stream_is_active(object.clone())
            .await
            .unwrap()
            .into_inner();
        let first = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("StreamIsActive sends the current state at once")
            .unwrap()
            .unwrap();
        assert!(!first.result, "idle before any event");
        js.publish(subject.clone(), "wake up".into())
            .await
            .unwrap()
            .await
            .unwrap();
        let active = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("StreamIsActive spoke")
            .unwrap()
            .unwrap();
        assert!(
            active.result,
            "a paused consumer with a backlog makes the function active"
        );
        let _ = js.delete_stream(format!("FNG_{id}")).await;
    });
}
