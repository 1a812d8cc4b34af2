//! One message from a broker, as the delivery side sees it, and its CloudEvent form.

use crate::plan::TriggerSpec;
use base64::Engine as _;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::time::Instant;

/// A message taken from Kafka or JetStream, not yet settled.
#[derive(Clone, Debug)]
pub struct Event {
    pub data: Bytes,
    /// What Dapr passes on: Kafka's `__key`, `__offset`, `__partition`, `__topic`,
    /// `__timestamp` and record headers; JetStream's `Topic` and message headers. Dapr's
    /// own names are static: no allocation per event for them.
    pub metadata: Vec<(Cow<'static, str>, String)>,
    pub topic: String,
    /// Where the message sits in its broker (`topic/partition/offset`, `stream/sequence`):
    /// the seed of the CloudEvent id of a wrapped message, so a redelivery keeps its id.
    pub position: String,
    pub received: Instant,
}

/// The CloudEvent fields of OnTopicEvent / the HTTP `application/cloudevents+json` body.
#[derive(Clone, Debug, PartialEq)]
pub struct CloudEvent {
    pub id: String,
    pub source: String,
    pub kind: String,
    pub spec_version: String,
    pub data_content_type: String,
    /// The wrapped message shares the broker's buffer.
    pub data: Bytes,
    /// Every other top-level attribute of the event (for gRPC: `extensions`).
    pub extensions: serde_json::Map<String, serde_json::Value>,
    /// The message as it arrived, when it was a CloudEvent already.
    original: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Attributes that are fields of TopicEventRequest rather than extensions.
const CORE_FIELDS: &[&str] = &[
    "id",
    "source",
    "type",
    "specversion",
    "datacontenttype",
    "data",
    "data_base64",
];

impl Event {
    /// The CloudEvent and the id of the event's entry in a bulk request (stable across
    /// redeliveries, unique per broker position). A wrapped message's CloudEvent id is
    /// that same id: derived once.
    pub fn bulk_parts(&self, spec: &TriggerSpec) -> (CloudEvent, String) {
        let ce = self.cloud_event(spec);
        let entry_id = match ce.original {
            None => ce.id.clone(),
            Some(_) => stable_id(&self.position),
        };
        (ce, entry_id)
    }

    /// A message that already is a CloudEvent (JSON with `specversion`) is unpacked;
    /// anything else is wrapped the way Dapr wraps a raw payload: `data_base64`,
    /// `application/octet-stream`, source `Dapr`, type `com.dapr.event.sent`.
    pub fn cloud_event(&self, spec: &TriggerSpec) -> CloudEvent {
        // Only a JSON object can be a CloudEvent: skip the parse for anything else.
        if self.data.trim_ascii_start().first() == Some(&b'{') {
            if let Ok(serde_json::Value::Object(mut obj)) = serde_json::from_slice(&self.data) {
                if obj.contains_key("specversion") {
                    obj.entry("topic")
                        .or_insert_with(|| self.topic.clone().into());
                    obj.entry("pubsubname")
                        .or_insert_with(|| spec.component.clone().into());
                    return unpack(obj);
                }
            }
        }
        let mut extensions = serde_json::Map::new();
        extensions.insert("topic".into(), self.topic.clone().into());
        extensions.insert("pubsubname".into(), spec.component.clone().into());
        CloudEvent {
            id: stable_id(&self.position),
            source: "Dapr".into(),
            kind: "com.dapr.event.sent".into(),
            spec_version: "1.0".into(),
            data_content_type: "application/octet-stream".into(),
            data: self.data.clone(),
            extensions,
            original: None,
        }
    }
}

impl CloudEvent {
    /// The JSON form Dapr posts to HTTP apps: the original event, or the raw-payload
    /// wrapper with `data_base64`. Written directly rather than through a `Value` map: at
    /// tens of thousands of events per second the map's inserts and drops, and a JSON-escape
    /// scan over the base64 payload (its alphabet needs none), were a sixth of the work.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        if let Some(original) = &self.original {
            return serde_json::to_vec(original).unwrap_or_default();
        }
        let mut out = Vec::with_capacity(self.data.len() * 4 / 3 + 256);
        out.push(b'{');
        for (key, value) in &self.extensions {
            push_json(&mut out, key);
            out.push(b':');
            let _ = serde_json::to_writer(&mut out, value);
            out.push(b',');
        }
        for (key, value) in [
            ("id", &self.id),
            ("specversion", &self.spec_version),
            ("datacontenttype", &self.data_content_type),
            ("source", &self.source),
            ("type", &self.kind),
        ] {
            push_json_member(&mut out, key, value);
            out.push(b',');
        }
        out.extend_from_slice(br#""data_base64":""#);
        let start = out.len();
        out.resize(
            start + base64::encoded_len(self.data.len(), true).unwrap_or(0),
            0,
        );
        let written = base64::engine::general_purpose::STANDARD
            .encode_slice(&self.data, &mut out[start..])
            .unwrap_or(0);
        out.truncate(start + written);
        out.extend_from_slice(b"\"}");
        out
    }
}

/// `value` as a JSON string.
pub(super) fn push_json(out: &mut Vec<u8>, value: &str) {
    let _ = serde_json::to_writer(out, value);
}

/// `"key":"value"`, both escaped.
pub(super) fn push_json_member(out: &mut Vec<u8>, key: &str, value: &str) {
    push_json(out, key);
    out.push(b':');
    push_json(out, value);
}

fn unpack(obj: serde_json::Map<String, serde_json::Value>) -> CloudEvent {
    let text = |k: &str| match obj.get(k) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) if !v.is_null() => v.to_string(),
        _ => String::new(),
    };
    let mut data_content_type = text("datacontenttype");
    let data: Vec<u8> = if let Some(serde_json::Value::String(b64)) = obj.get("data_base64") {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_else(|_| b64.as_bytes().to_vec())
    } else {
        match obj.get("data") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            // A string is the payload itself unless the content type says JSON.
            Some(serde_json::Value::String(s)) if !data_content_type.contains("json") => {
                s.as_bytes().to_vec()
            }
            Some(v) => {
                if data_content_type.is_empty() {
                    data_content_type = "application/json".into();
                }
                serde_json::to_vec(v).unwrap_or_default()
            }
        }
    };
    let extensions = obj
        .iter()
        .filter(|(k, _)| !CORE_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    CloudEvent {
        id: text("id"),
        source: text("source"),
        kind: text("type"),
        spec_version: text("specversion"),
        data_content_type,
        data: data.into(),
        extensions,
        original: Some(obj),
    }
}

/// A UUID-shaped id derived from the message's broker position.
fn stable_id(position: &str) -> String {
    uuid_shaped(&Sha256::digest(position.as_bytes())[..16])
}

/// A random UUID-shaped id, as Dapr gives each bulk request.
pub fn batch_id() -> String {
    uuid_shaped(&rand::random::<[u8; 16]>())
}

pub(super) fn uuid_shaped(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut h = [0u8; 32];
    for (i, b) in bytes.iter().take(16).enumerate() {
        h[2 * i] = HEX[(b >> 4) as usize];
        h[2 * i + 1] = HEX[(b & 15) as usize];
    }
    // 8-4-4-4-12, version nibble 4 and variant nibble a, as a v4 UUID reads.
    let mut id = Vec::with_capacity(36);
    id.extend_from_slice(&h[0..8]);
    id.push(b'-');
    id.extend_from_slice(&h[8..12]);
    id.extend_from_slice(b"-4");
    id.extend_from_slice(&h[13..16]);
    id.extend_from_slice(b"-a");
    id.extend_from_slice(&h[17..20]);
    id.push(b'-');
    id.extend_from_slice(&h[20..32]);
    String::from_utf8(id).expect("hex digits and dashes")
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::plan::*;
    use std::time::Duration;

    /// A pub/sub trigger of component `ps`.
    pub(in crate::triggers) fn spec() -> TriggerSpec {
        TriggerSpec {
            app_id: "f-default".into(),
            component: "ps".into(),
            kind: TriggerKind::PubSub,
            source: SourceSpec::Jetstream(JetstreamSource {
                nats_url: "nats://x".into(),
                stream_name: None,
                subject: "t".into(),
                durable_name: "d".into(),
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

    /// A message at `orders/0/7`, without metadata.
    pub(in crate::triggers) fn event(data: &[u8]) -> Event {
        Event {
            data: Bytes::copy_from_slice(data),
            metadata: vec![],
            topic: "orders".into(),
            position: "orders/0/7".into(),
            received: Instant::now(),
        }
    }

    #[test]
    fn a_raw_message_is_wrapped_as_dapr_wraps_a_raw_payload_with_an_id_stable_across_redelivery() {
        let ce = event(b"\x00\x01hello").cloud_event(&spec());
        assert_eq!(&ce.data[..], b"\x00\x01hello");
        assert_eq!(ce.data_content_type, "application/octet-stream");
        assert_eq!(ce.kind, "com.dapr.event.sent");
        assert_eq!(ce.source, "Dapr");
        assert_eq!(ce.spec_version, "1.0");
        let json: serde_json::Value = serde_json::from_slice(&ce.to_json_bytes()).unwrap();
        assert_eq!(json["data_base64"], "AAFoZWxsbw==");
        assert_eq!(ce.extensions["topic"], "orders");
        assert_eq!(ce.extensions["pubsubname"], "ps");
        assert_eq!(ce.id, event(b"other").cloud_event(&spec()).id);
        assert_eq!(ce.id.len(), 36);
    }

    #[test]
    fn a_cloud_event_is_unpacked_with_its_own_fields_and_extensions() {
        let ce = event(
            br#"{"specversion":"1.0","id":"abc","source":"shop","type":"order.created","datacontenttype":"application/json","data":{"n":1},"traceparent":"00-x","myext":"v"}"#,
        )
        .cloud_event(&spec());
        assert_eq!(ce.id, "abc");
        assert_eq!(ce.source, "shop");
        assert_eq!(ce.kind, "order.created");
        assert_eq!(&ce.data[..], br#"{"n":1}"#);
        assert_eq!(ce.extensions["myext"], "v");
        assert_eq!(ce.extensions["traceparent"], "00-x");
        assert_eq!(ce.extensions["topic"], "orders");
        assert!(!ce.extensions.contains_key("data"));
    }

    #[test]
    fn an_http_bulk_entry_is_dapr_json_with_metadata_as_an_object() {
        let mut e = event(b"\x00\x01hello");
        e.metadata = vec![
            ("Topic".into(), "orders".into()),
            ("quote".into(), "a \"b\"\n".into()),
            ("Topic".into(), "later".into()),
        ];
        let entry = crate::triggers::dapr_http::bulk_entry(&e, &spec());
        let json: serde_json::Value = serde_json::from_slice(&entry.json).unwrap();
        assert_eq!(json["entryId"], entry.id.as_str());
        assert_eq!(json["contentType"], "application/cloudevents+json");
        assert_eq!(json["event"]["data_base64"], "AAFoZWxsbw==");
        assert_eq!(json["event"]["id"], entry.id.as_str());
        assert_eq!(json["event"]["type"], "com.dapr.event.sent");
        assert_eq!(json["event"]["pubsubname"], "ps");
        assert_eq!(
            json["metadata"],
            serde_json::json!({"Topic": "later", "quote": "a \"b\"\n"})
        );
    }

    #[test]
    fn a_wrapped_events_id_is_the_same_uuid_shape_of_its_position_in_every_release() {
        // An id that changed between releases would look like a new event to an app that
        // deduplicates redeliveries.
        assert_eq!(
            event(b"x").cloud_event(&spec()).id,
            "97b7d330-3b29-4da7-aceb-f40175ed469c"
        );
        let random = batch_id();
        assert_eq!(random.len(), 36);
        assert_eq!(&random[14..15], "4");
    }

    #[test]
    fn plain_json_that_is_not_a_cloud_event_is_wrapped() {
        let ce = event(br#"{"n":1}"#).cloud_event(&spec());
        assert_eq!(&ce.data[..], br#"{"n":1}"#);
        assert_eq!(ce.kind, "com.dapr.event.sent");
    }
}
