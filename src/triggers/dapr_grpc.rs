//! Delivery over Dapr's AppCallback gRPC service, with the `dapr` crate's generated client.

use super::contract::{
    answers_in_order, Answer, BulkDestination, BulkSubscribe, Subscriptions, TopicRoute,
    BULK_EVENT_TYPE,
};
use super::event::{batch_id, CloudEvent, Event};
use super::wire;
use crate::plan::{TriggerKind, TriggerSpec};
use dapr::dapr::proto::runtime::v1::{
    app_callback_client::AppCallbackClient, topic_event_response::TopicEventResponseStatus,
    BindingEventResponse, TopicEventBulkResponse, TopicEventResponse,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
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

    /// Service invocation: `OnInvoke` on the app at `addr`.
    pub async fn invoke(
        &self,
        addr: SocketAddr,
        request: tonic::Request<dapr::dapr::proto::common::v1::InvokeRequest>,
    ) -> Result<tonic::Response<dapr::dapr::proto::common::v1::InvokeResponse>, tonic::Status> {
        self.client(addr).on_invoke(request).await
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
        target: &BulkDestination,
        entries: Vec<GrpcBulkEntry>,
    ) -> Vec<Answer> {
        let addr = target.addr;
        let request = Arc::new(WireRequest::bulk(
            &target.topic,
            &target.component,
            &target.path,
            entries,
        ));
        let known = self
            .bulk_calls
            .lock()
            .expect("not poisoned")
            .get(&addr)
            .copied();
        let result = match known {
            Some(call) => self.bulk_call(addr, call, &request).await,
            None => {
                let (call, result) = match self.bulk_call(addr, BulkCall::Alpha, &request).await {
                    Err(s) if s.code() == tonic::Code::Unimplemented => (
                        BulkCall::Stable,
                        self.bulk_call(addr, BulkCall::Stable, &request).await,
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
        let ids = request.entries.iter().map(|e| e.id.as_str());
        match result {
            Ok(response) => answers_in_order(
                ids,
                response
                    .statuses
                    .into_iter()
                    .map(|s| (s.entry_id, topic_answer(s.status))),
            ),
            Err(s) => vec![self.failure(addr, s); request.entries.len()],
        }
    }

    async fn bulk_call(
        &self,
        addr: SocketAddr,
        call: BulkCall,
        request: &Arc<WireRequest>,
    ) -> Result<TopicEventBulkResponse, tonic::Status> {
        let path = match call {
            BulkCall::Alpha => "/dapr.proto.runtime.v1.AppCallbackAlpha/OnBulkTopicEventAlpha1",
            BulkCall::Stable => "/dapr.proto.runtime.v1.AppCallback/OnBulkTopicEvent",
        };
        self.wire_call(addr, path, tonic::Request::new(request.clone()))
            .await
    }

    /// One unary call whose request is already in wire form; the response decoded by prost.
    async fn wire_call<Response: prost::Message + Default + Send + 'static>(
        &self,
        addr: SocketAddr,
        path: &'static str,
        request: tonic::Request<Arc<WireRequest>>,
    ) -> Result<Response, tonic::Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel(addr));
        // The same status the generated clients give a channel that is not ready.
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unknown(format!("Service was not ready: {e}")))?;
        grpc.unary(
            request,
            http::uri::PathAndQuery::from_static(path),
            WireCodec::<Response>(std::marker::PhantomData),
        )
        .await
        .map(tonic::Response::into_inner)
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
        let result = match spec.kind {
            TriggerKind::Binding => {
                let request = WireRequest::binding_event(event, &spec.component);
                self.wire_call::<BindingEventResponse>(
                    addr,
                    ON_BINDING_EVENT,
                    tonic::Request::new(Arc::new(request)),
                )
                .await
                .map(|_| Answer::Success)
            }
            TriggerKind::PubSub => {
                let request = WireRequest::topic_event(event, spec, path);
                let mut request = tonic::Request::new(Arc::new(request));
                *request.metadata_mut() = topic_metadata(event);
                self.wire_call::<TopicEventResponse>(addr, ON_TOPIC_EVENT, request)
                    .await
                    .map(|r| topic_answer(r.status))
            }
        };
        match result {
            Ok(answer) => answer,
            Err(s) => self.failure(addr, s),
        }
    }
}

/// Broker metadata as the gRPC metadata of a topic event: ASCII values as they are, others
/// under a `-bin` key; a name that can be neither is left out.
pub fn topic_metadata(event: &Event) -> tonic::metadata::MetadataMap {
    let mut md = tonic::metadata::MetadataMap::new();
    for (k, v) in &event.metadata {
        let key = k.to_ascii_lowercase();
        if let (Ok(name), Ok(value)) = (
            key.parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>(),
            v.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>(),
        ) {
            md.append(name, value);
        } else if let Ok(name) =
            format!("{key}-bin").parse::<tonic::metadata::MetadataKey<tonic::metadata::Binary>>()
        {
            md.append_bin(
                name,
                tonic::metadata::MetadataValue::from_bytes(v.as_bytes()),
            );
        }
    }
    md
}

/// The protobuf bytes fngate sends for `event` (`BindingEventRequest` or
/// `TopicEventRequest`), written by hand; for tests and the fuzzers, which decode them with
/// Dapr's generated types.
pub fn wire_form(event: &Event, spec: &TriggerSpec, path: &str) -> Vec<u8> {
    let request = match spec.kind {
        TriggerKind::Binding => WireRequest::binding_event(event, &spec.component),
        TriggerKind::PubSub => WireRequest::topic_event(event, spec, path),
    };
    let mut out = Vec::new();
    request.write_to(&mut out);
    out
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

/// An event as an entry of a gRPC bulk request, already in protobuf wire form: written
/// once when the event joins a batch, copied once into the request.
pub struct GrpcBulkEntry {
    pub id: String,
    /// A `TopicEventBulkRequestEntry`.
    encoded: Vec<u8>,
}

const ON_TOPIC_EVENT: &str = "/dapr.proto.runtime.v1.AppCallback/OnTopicEvent";
const ON_BINDING_EVENT: &str = "/dapr.proto.runtime.v1.AppCallback/OnBindingEvent";

/// Where a CloudEvent's fields go in the message that carries it.
struct CloudEventTags {
    id: u32,
    source: u32,
    kind: u32,
    spec_version: u32,
    data_content_type: u32,
    data: u32,
    extensions: u32,
}

/// `TopicEventCERequest`, a bulk entry's event.
const CE_REQUEST: CloudEventTags = CloudEventTags {
    id: 1,
    source: 2,
    kind: 3,
    spec_version: 4,
    data_content_type: 5,
    data: 6,
    extensions: 7,
};

/// `TopicEventRequest`, a single topic event.
const TOPIC_EVENT: CloudEventTags = CloudEventTags {
    id: 1,
    source: 2,
    kind: 3,
    spec_version: 4,
    data_content_type: 5,
    data: 7,
    extensions: 10,
};

impl CloudEvent {
    fn wire_fields(&self, tags: &CloudEventTags) -> [(u32, &[u8]); 6] {
        [
            (tags.id, self.id.as_bytes()),
            (tags.source, self.source.as_bytes()),
            (tags.kind, self.kind.as_bytes()),
            (tags.spec_version, self.spec_version.as_bytes()),
            (tags.data_content_type, self.data_content_type.as_bytes()),
            (tags.data, &self.data),
        ]
    }

    /// The size of `write_wire(tags)`.
    fn wire_len(&self, tags: &CloudEventTags) -> usize {
        self.wire_fields(tags)
            .iter()
            .map(|(tag, v)| wire::string_len(*tag, v))
            .sum::<usize>()
            + wire::field_len(tags.extensions, wire::json_struct_len(&self.extensions))
    }

    /// The CloudEvent's fields, its extensions as a `google.protobuf.Struct`.
    fn write_wire(&self, out: &mut Vec<u8>, tags: &CloudEventTags) {
        for (tag, value) in self.wire_fields(tags) {
            wire::string(out, tag, value);
        }
        wire::field_head(
            out,
            tags.extensions,
            wire::json_struct_len(&self.extensions),
        );
        wire::json_struct(out, &self.extensions);
    }
}

/// The event's CloudEvent, with the broker metadata per entry.
pub fn bulk_entry(event: &Event, spec: &TriggerSpec) -> GrpcBulkEntry {
    const CONTENT_TYPE: &str = "application/cloudevents+json";
    let (ce, id) = event.bulk_parts(spec);
    let ce_len = ce.wire_len(&CE_REQUEST);
    let metadata_len: usize = event
        .metadata
        .iter()
        .map(|(k, v)| {
            wire::field_len(
                5,
                wire::string_len(1, k.as_bytes()) + wire::string_len(2, v),
            )
        })
        .sum();
    let mut encoded = Vec::with_capacity(
        wire::string_len(1, &id)
            + wire::field_len(3, ce_len)
            + wire::string_len(4, CONTENT_TYPE)
            + metadata_len,
    );
    wire::string(&mut encoded, 1, &id);
    wire::field_head(&mut encoded, 3, ce_len);
    ce.write_wire(&mut encoded, &CE_REQUEST);
    wire::string(&mut encoded, 4, CONTENT_TYPE);
    for (k, v) in &event.metadata {
        wire::map_entry(&mut encoded, 5, k, v);
    }
    GrpcBulkEntry { id, encoded }
}

/// A request in wire form: its own fields, then, for a `TopicEventBulkRequest`, its
/// entries as they were written. Shared, so the first bulk call to an endpoint can try the
/// alpha method, then the stable one.
struct WireRequest {
    head: Vec<u8>,
    /// Written after `head` as is: an event's payload, shared with the event.
    payload: bytes::Bytes,
    entries: Vec<GrpcBulkEntry>,
}

impl WireRequest {
    fn bulk(topic: &str, pubsub: &str, path: &str, entries: Vec<GrpcBulkEntry>) -> Self {
        let mut head = Vec::with_capacity(128);
        wire::string(&mut head, 1, batch_id());
        wire::string(&mut head, 4, topic);
        wire::string(&mut head, 5, pubsub);
        wire::string(&mut head, 6, BULK_EVENT_TYPE);
        wire::string(&mut head, 7, path);
        WireRequest {
            head,
            payload: bytes::Bytes::new(),
            entries,
        }
    }

    /// A `BindingEventRequest`: the component's name, the broker metadata, then the
    /// payload last (protobuf fields may come in any order), so it need not be copied here.
    fn binding_event(event: &Event, component: &str) -> Self {
        let mut head = Vec::with_capacity(component.len() + 256);
        wire::string(&mut head, 1, component);
        // Repeated keys: every map decoder keeps the last, as Dapr's own map would.
        for (k, v) in &event.metadata {
            wire::map_entry(&mut head, 3, k, v);
        }
        if !event.data.is_empty() {
            wire::field_head(&mut head, 2, event.data.len());
        }
        WireRequest {
            head,
            payload: event.data.clone(),
            entries: Vec::new(),
        }
    }

    /// A `TopicEventRequest`.
    fn topic_event(event: &Event, spec: &TriggerSpec, path: &str) -> Self {
        let ce = event.cloud_event(spec);
        let mut head = Vec::with_capacity(ce.wire_len(&TOPIC_EVENT) + 128);
        ce.write_wire(&mut head, &TOPIC_EVENT);
        wire::string(&mut head, 6, &event.topic);
        wire::string(&mut head, 8, &spec.component);
        wire::string(&mut head, 9, path);
        WireRequest {
            head,
            payload: bytes::Bytes::new(),
            entries: Vec::new(),
        }
    }

    fn write_to(&self, dst: &mut impl bytes::BufMut) {
        let mut entry_head = Vec::with_capacity(8);
        dst.put_slice(&self.head);
        dst.put_slice(&self.payload);
        for entry in &self.entries {
            entry_head.clear();
            wire::field_head(&mut entry_head, 2, entry.encoded.len());
            dst.put_slice(&entry_head);
            dst.put_slice(&entry.encoded);
        }
    }
}

/// Sends a `WireRequest` as is; decodes the `Response` with prost.
struct WireCodec<Response>(std::marker::PhantomData<Response>);

impl<Response: prost::Message + Default + Send + 'static> tonic::codec::Codec
    for WireCodec<Response>
{
    type Encode = Arc<WireRequest>;
    type Decode = Response;
    type Encoder = WireEncoder;
    type Decoder = tonic_prost::ProstDecoder<Response>;

    fn encoder(&mut self) -> WireEncoder {
        WireEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        Default::default()
    }
}

struct WireEncoder;

impl tonic::codec::Encoder for WireEncoder {
    type Item = Arc<WireRequest>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        request: Self::Item,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        request.write_to(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::triggers::event::tests::{event, spec};
    use dapr::dapr::proto::runtime::v1::{topic_event_bulk_request_entry, TopicEventBulkRequest};
    use prost::Message;

    /// The id of the test event's broker position `orders/0/7`: sha256 of it, first 16
    /// bytes as hex, shaped 8-4-4-4-12 with version nibble 4 and variant nibble a.
    const POSITION_ID: &str = "97b7d330-3b29-4da7-aceb-f40175ed469c";

    /// The prost form of a JSON object, built independently of the wire writer.
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

    #[test]
    fn a_topic_event_written_to_the_wire_decodes_as_the_request_dapr_sends() {
        let raw = event(b"\x00\x01hello");
        let mut wire_form = Vec::new();
        WireRequest::topic_event(&raw, &spec(), "/orders").write_to(&mut wire_form);
        let request =
            dapr::dapr::proto::runtime::v1::TopicEventRequest::decode(&wire_form[..]).unwrap();
        let wrapped = raw.cloud_event(&spec());
        // sha256("orders/0/7") as a v4-shaped UUID, computed outside this code.
        assert_eq!(request.id, POSITION_ID);
        assert_eq!(request.source, "Dapr");
        assert_eq!(request.r#type, "com.dapr.event.sent");
        assert_eq!(request.spec_version, "1.0");
        assert_eq!(request.data_content_type, "application/octet-stream");
        assert_eq!(request.data, b"\x00\x01hello");
        assert_eq!(
            (request.topic.as_str(), request.pubsub_name.as_str()),
            ("orders", "ps")
        );
        assert_eq!(request.path, "/orders");
        assert_eq!(request.extensions, Some(to_struct(wrapped.extensions)));
    }

    /// Broker metadata with a header repeated (the last value is the one maps keep).
    fn broker_metadata() -> Vec<(std::borrow::Cow<'static, str>, String)> {
        vec![
            ("__key".into(), "k1".into()),
            ("__offset".into(), "7".into()),
            ("h".into(), "first".into()),
            ("h".into(), "last".into()),
        ]
    }

    #[test]
    fn a_binding_event_written_to_the_wire_decodes_as_the_request_dapr_sends() {
        let mut raw = event(b"\x00\x01hello");
        raw.metadata = broker_metadata();
        raw.metadata.push(("empty".into(), "".into()));
        let mut wire_form = Vec::new();
        WireRequest::binding_event(&raw, "kin").write_to(&mut wire_form);
        let request =
            dapr::dapr::proto::runtime::v1::BindingEventRequest::decode(&wire_form[..]).unwrap();
        assert_eq!(request.name, "kin");
        assert_eq!(request.data, b"\x00\x01hello");
        let expected: HashMap<String, String> = [
            ("__key", "k1"),
            ("__offset", "7"),
            ("h", "last"),
            ("empty", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(request.metadata, expected);
        let mut empty = raw.clone();
        empty.data = bytes::Bytes::new();
        let mut wire_form = Vec::new();
        WireRequest::binding_event(&empty, "kin").write_to(&mut wire_form);
        let request =
            dapr::dapr::proto::runtime::v1::BindingEventRequest::decode(&wire_form[..]).unwrap();
        assert!(request.data.is_empty() && request.metadata.len() == 4);
    }

    #[test]
    fn a_bulk_request_written_to_the_wire_decodes_as_the_request_dapr_sends() {
        let mut raw = event(b"\x00\x01hello");
        raw.metadata = broker_metadata();
        let mut already = event(
            br#"{"specversion":"1.0","id":"abc","source":"shop","type":"order.created","data":{"n":1},"nested":{"a":[1,null,true]}}"#,
        );
        already.position = "orders/0/8".into();
        let entries = vec![bulk_entry(&raw, &spec()), bulk_entry(&already, &spec())];
        let mut wire_form = Vec::new();
        WireRequest::bulk("orders", "ps", "/orders", entries).write_to(&mut wire_form);

        let request = TopicEventBulkRequest::decode(&wire_form[..]).unwrap();
        assert_eq!(request.id.len(), 36);
        assert_eq!(
            (request.topic.as_str(), request.pubsub_name.as_str()),
            ("orders", "ps")
        );
        assert_eq!(request.r#type, BULK_EVENT_TYPE);
        assert_eq!(request.path, "/orders");
        assert_eq!(request.entries.len(), 2);

        let first = &request.entries[0];
        assert_eq!(first.entry_id, POSITION_ID);
        assert_eq!(first.content_type, "application/cloudevents+json");
        assert_eq!(first.metadata["__key"], "k1");
        assert_eq!(first.metadata["__offset"], "7");
        assert_eq!(
            first.metadata["h"], "last",
            "a repeated header: the last wins"
        );
        let Some(topic_event_bulk_request_entry::Event::CloudEvent(ce)) = &first.event else {
            panic!("a CloudEvent entry")
        };
        let wrapped = raw.cloud_event(&spec());
        assert_eq!(ce.id, POSITION_ID);
        assert_eq!(ce.source, "Dapr");
        assert_eq!(ce.r#type, "com.dapr.event.sent");
        assert_eq!(ce.spec_version, "1.0");
        assert_eq!(ce.data_content_type, "application/octet-stream");
        assert_eq!(ce.data, b"\x00\x01hello");
        assert_eq!(
            ce.extensions,
            Some(to_struct(wrapped.extensions)),
            "topic and pubsubname"
        );

        let second = &request.entries[1];
        assert_eq!(
            second.entry_id, "057f2f71-b3f7-43e7-ad4a-d602f3da668a",
            "an unpacked CloudEvent's entry id is its position's, not its own id"
        );
        assert!(second.metadata.is_empty());
        let Some(topic_event_bulk_request_entry::Event::CloudEvent(ce)) = &second.event else {
            panic!("a CloudEvent entry")
        };
        assert_eq!((ce.id.as_str(), ce.source.as_str()), ("abc", "shop"));
        assert_eq!(ce.data, br#"{"n":1}"#);
        assert_eq!(
            ce.extensions,
            Some(to_struct(already.cloud_event(&spec()).extensions)),
            "the event's own extensions, nested values included"
        );
    }
}
