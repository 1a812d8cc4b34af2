//! Delivery over Dapr's AppCallback gRPC service, with the `dapr` crate's generated client.

use super::app::{Answer, BulkSubscribe, BulkTarget, Subscriptions, TopicRoute};
use super::bulk::{answers_in_order, BULK_EVENT_TYPE};
use super::event::{CloudEvent, Event};
use crate::plan::{TriggerKind, TriggerSpec};
use dapr::dapr::proto::runtime::v1::{
    app_callback_alpha_client::AppCallbackAlphaClient, app_callback_client::AppCallbackClient,
    topic_event_bulk_request_entry, topic_event_response::TopicEventResponseStatus,
    BindingEventRequest, TopicEventBulkRequest, TopicEventBulkRequestEntry, TopicEventBulkResponse,
    TopicEventCeRequest, TopicEventRequest,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;
use tonic::transport::Channel;

/// Which bulk call an endpoint serves: Dapr runtimes up to 1.17 call
/// `AppCallbackAlpha.OnBulkTopicEventAlpha1`, later ones `AppCallback.OnBulkTopicEvent`.
#[derive(Clone, Copy, PartialEq)]
enum BulkCall {
    Alpha,
    Stable,
}

/// One channel per endpoint (HTTP/2 multiplexes every event over it).
#[derive(Default)]
pub struct GrpcApp {
    channels: Mutex<HashMap<SocketAddr, Channel>>,
    bulk_calls: Mutex<HashMap<SocketAddr, BulkCall>>,
}

impl GrpcApp {
    fn channel(&self, addr: SocketAddr) -> Channel {
        let mut channels = self.channels.lock().expect("not poisoned");
        channels
            .entry(addr)
            .or_insert_with(|| {
                tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .expect("a socket address is a valid URI")
                    .connect_timeout(Duration::from_secs(2))
                    .tcp_nodelay(true)
                    .connect_lazy()
            })
            .clone()
    }

    fn client(&self, addr: SocketAddr) -> AppCallbackClient<Channel> {
        AppCallbackClient::new(self.channel(addr))
    }

    /// Forgets an endpoint's channel after a transport failure, so the next attempt dials anew.
    pub fn forget(&self, addr: SocketAddr) {
        self.channels.lock().expect("not poisoned").remove(&addr);
        self.bulk_calls.lock().expect("not poisoned").remove(&addr);
    }

    /// A failed call's answer, as Dapr reads gRPC errors.
    fn failure(&self, addr: SocketAddr, s: tonic::Status) -> Answer {
        match s.code() {
            tonic::Code::Unimplemented => {
                Answer::Drop(format!("app does not implement the call: {}", s.message()))
            }
            tonic::Code::Unavailable => {
                self.forget(addr);
                Answer::Unreachable(format!("gRPC Unavailable: {}", s.message()))
            }
            code => {
                if code == tonic::Code::Unknown {
                    self.forget(addr);
                }
                Answer::Retry(format!("gRPC {code:?}: {}", s.message()))
            }
        }
    }

    /// One batch of a bulk subscription.
    pub async fn deliver_bulk(
        &self,
        target: &BulkTarget,
        entries: Vec<TopicEventBulkRequestEntry>,
    ) -> Vec<Answer> {
        let addr = target.addr;
        let ids: Vec<String> = entries.iter().map(|e| e.entry_id.clone()).collect();
        let request = TopicEventBulkRequest {
            id: super::event::batch_id(),
            entries,
            metadata: HashMap::new(),
            topic: target.topic.clone(),
            pubsub_name: target.component.clone(),
            r#type: BULK_EVENT_TYPE.into(),
            path: target.path.clone(),
        };
        let known = self
            .bulk_calls
            .lock()
            .expect("not poisoned")
            .get(&addr)
            .copied();
        let result = match known {
            Some(call) => self.bulk_call(addr, call, request).await,
            None => {
                let (call, result) =
                    match self.bulk_call(addr, BulkCall::Alpha, request.clone()).await {
                        Err(s) if s.code() == tonic::Code::Unimplemented => (
                            BulkCall::Stable,
                            self.bulk_call(addr, BulkCall::Stable, request).await,
                        ),
                        r => (BulkCall::Alpha, r),
                    };
                if result.is_ok() {
                    self.bulk_calls
                        .lock()
                        .expect("not poisoned")
                        .insert(addr, call);
                }
                result
            }
        };
        match result {
            Ok(response) => answers_in_order(
                &ids,
                response
                    .statuses
                    .into_iter()
                    .map(|s| (s.entry_id, topic_answer(s.status))),
            ),
            Err(s) => vec![self.failure(addr, s); ids.len()],
        }
    }

    async fn bulk_call(
        &self,
        addr: SocketAddr,
        call: BulkCall,
        request: TopicEventBulkRequest,
    ) -> Result<TopicEventBulkResponse, tonic::Status> {
        let channel = self.channel(addr);
        let response = match call {
            #[allow(deprecated)] // what every released Dapr runtime calls
            BulkCall::Alpha => {
                AppCallbackAlphaClient::new(channel)
                    .on_bulk_topic_event_alpha1(request)
                    .await
            }
            BulkCall::Stable => {
                AppCallbackClient::new(channel)
                    .on_bulk_topic_event(request)
                    .await
            }
        };
        response.map(tonic::Response::into_inner)
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
                    let route = TopicRoute {
                        path: t.routes.map(|r| r.default).unwrap_or_default(),
                        bulk: t.bulk_subscribe.filter(|b| b.enabled).map(|b| {
                            BulkSubscribe::new(
                                b.max_messages_count.into(),
                                b.max_await_duration_ms.into(),
                            )
                        }),
                    };
                    subs.topics.insert((t.pubsub_name, t.topic), route);
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
                client
                    .on_topic_event(request)
                    .await
                    .map(|r| topic_answer(r.into_inner().status))
            }
        };
        match result {
            Ok(answer) => answer,
            Err(s) => self.failure(addr, s),
        }
    }
}

/// A topic event's (or bulk entry's) status as an answer.
fn topic_answer(status: i32) -> Answer {
    match TopicEventResponseStatus::try_from(status) {
        Ok(TopicEventResponseStatus::Success) => Answer::Success,
        Ok(TopicEventResponseStatus::Retry) => Answer::Retry("app answered RETRY".into()),
        Ok(TopicEventResponseStatus::Drop) => Answer::Drop("app answered DROP".into()),
        Err(_) => Answer::Retry("app answered an unknown status".into()),
    }
}

/// An event as an entry of a gRPC bulk request: its CloudEvent, broker metadata per entry.
pub fn bulk_entry(event: &Event, spec: &TriggerSpec) -> TopicEventBulkRequestEntry {
    let (ce, entry_id) = event.bulk_parts(spec);
    TopicEventBulkRequestEntry {
        entry_id,
        content_type: "application/cloudevents+json".into(),
        metadata: event.metadata.iter().cloned().collect(),
        event: Some(topic_event_bulk_request_entry::Event::CloudEvent(
            ce_request(ce),
        )),
    }
}

fn ce_request(ce: CloudEvent) -> TopicEventCeRequest {
    TopicEventCeRequest {
        id: ce.id,
        source: ce.source,
        r#type: ce.kind,
        spec_version: ce.spec_version,
        data_content_type: ce.data_content_type,
        data: ce.data,
        extensions: Some(to_struct(ce.extensions)),
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
