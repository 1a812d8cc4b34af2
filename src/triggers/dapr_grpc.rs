//! Delivery over Dapr's AppCallback gRPC service, with the `dapr` crate's generated client.

use super::app::{Answer, Subscriptions};
use super::event::Event;
use crate::plan::{TriggerKind, TriggerSpec};
use dapr::dapr::proto::runtime::v1::{
    app_callback_client::AppCallbackClient, topic_event_response::TopicEventResponseStatus,
    BindingEventRequest, TopicEventRequest,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;
use tonic::transport::Channel;

/// One channel per endpoint (HTTP/2 multiplexes every event over it).
#[derive(Default)]
pub struct GrpcApp {
    channels: Mutex<HashMap<SocketAddr, AppCallbackClient<Channel>>>,
}

impl GrpcApp {
    fn client(&self, addr: SocketAddr) -> AppCallbackClient<Channel> {
        let mut channels = self.channels.lock().expect("not poisoned");
        channels
            .entry(addr)
            .or_insert_with(|| {
                let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .expect("a socket address is a valid URI")
                    .connect_timeout(Duration::from_secs(2))
                    .tcp_nodelay(true);
                AppCallbackClient::new(endpoint.connect_lazy())
            })
            .clone()
    }

    /// Forgets an endpoint's channel after a transport failure, so the next attempt dials anew.
    pub fn forget(&self, addr: SocketAddr) {
        self.channels.lock().expect("not poisoned").remove(&addr);
    }

    /// What the app subscribed to: ListInputBindings and ListTopicSubscriptions.
    pub async fn subscriptions(&self, addr: SocketAddr) -> Result<Subscriptions, String> {
        let mut client = self.client(addr);
        let mut subs = Subscriptions::default();
        match client.list_input_bindings(()).await {
            Ok(r) => subs.bindings = r.into_inner().bindings.into_iter().collect(),
            Err(s) if s.code() == tonic::Code::Unimplemented => {}
            Err(s) => {
                self.forget(addr);
                return Err(format!("ListInputBindings: {s}"));
            }
        }
        match client.list_topic_subscriptions(()).await {
            Ok(r) => {
                for t in r.into_inner().subscriptions {
                    let path = t.routes.map(|r| r.default).unwrap_or_default();
                    subs.topics.insert((t.pubsub_name, t.topic), path);
                }
            }
            Err(s) if s.code() == tonic::Code::Unimplemented => {}
            Err(s) => {
                self.forget(addr);
                return Err(format!("ListTopicSubscriptions: {s}"));
            }
        }
        Ok(subs)
    }

    pub async fn deliver(
        &self,
        addr: SocketAddr,
        spec: &TriggerSpec,
        event: &Event,
        path: &str,
    ) -> Answer {
        let mut client = self.client(addr);
        let result = match spec.kind {
            TriggerKind::Binding => {
                let request = BindingEventRequest {
                    name: spec.component.clone(),
                    data: event.data.to_vec(),
                    metadata: event.metadata.iter().cloned().collect(),
                };
                client
                    .on_binding_event(request)
                    .await
                    .map(|_| Answer::Success)
            }
            TriggerKind::PubSub => {
                let ce = event.cloud_event(spec);
                let mut request = tonic::Request::new(TopicEventRequest {
                    id: ce.id,
                    source: ce.source,
                    r#type: ce.kind,
                    spec_version: ce.spec_version,
                    data_content_type: ce.data_content_type,
                    data: ce.data,
                    topic: event.topic.clone(),
                    pubsub_name: spec.component.clone(),
                    path: path.to_owned(),
                    extensions: Some(to_struct(ce.extensions)),
                });
                // Broker metadata travels as gRPC metadata for topic events.
                let md = request.metadata_mut();
                for (k, v) in &event.metadata {
                    let key = k.to_ascii_lowercase();
                    if let (Ok(name), Ok(value)) = (
                        key.parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>(),
                        v.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>(),
                    ) {
                        md.append(name, value);
                    } else if let Ok(name) = format!("{key}-bin")
                        .parse::<tonic::metadata::MetadataKey<tonic::metadata::Binary>>()
                    {
                        md.append_bin(
                            name,
                            tonic::metadata::MetadataValue::from_bytes(v.as_bytes()),
                        );
                    }
                }
                client.on_topic_event(request).await.map(|r| {
                    match TopicEventResponseStatus::try_from(r.into_inner().status) {
                        Ok(TopicEventResponseStatus::Success) => Answer::Success,
                        Ok(TopicEventResponseStatus::Retry) => {
                            Answer::Retry("app answered RETRY".into())
                        }
                        Ok(TopicEventResponseStatus::Drop) => {
                            Answer::Drop("app answered DROP".into())
                        }
                        Err(_) => Answer::Retry("app answered an unknown status".into()),
                    }
                })
            }
        };
        match result {
            Ok(answer) => answer,
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                Answer::Drop(format!("app does not implement the call: {}", s.message()))
            }
            Err(s) if s.code() == tonic::Code::Unavailable => {
                self.forget(addr);
                Answer::Unreachable(format!("gRPC Unavailable: {}", s.message()))
            }
            Err(s) => {
                if s.code() == tonic::Code::Unknown {
                    self.forget(addr);
                }
                Answer::Retry(format!("gRPC {:?}: {}", s.code(), s.message()))
            }
        }
    }
}

fn to_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}
