//! The CloudEvent envelope daprd wraps a published payload in, byte for byte: Go's
//! `json.Marshal` of a map (keys sorted at every level, `<`, `>`, `&` escaped as `\u003c`…,
//! numbers kept as written), `source` = the app-id, trace fields always present.

use base64::Engine as _;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// What the envelope is built from.
pub(crate) struct EnvelopeInput<'a> {
    pub app_id: &'a str,
    pub pubsub: &'a str,
    pub topic: &'a str,
    pub data: &'a [u8],
    pub content_type: &'a str,
    pub metadata: &'a [(String, String)],
    /// The caller's W3C trace context, continued as daprd's span would continue it.
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
    pub now: time::OffsetDateTime,
}

#[derive(Debug)]
pub(crate) struct NotACloudEvent(pub String);

/// An envelope, and its `id` when it has one (JetStream de-duplicates on it).
pub(crate) struct Envelope {
    pub bytes: Vec<u8>,
    pub id: Option<String>,
}

/// The bytes daprd publishes for a request without `rawPayload`.
pub(crate) fn envelope(input: &EnvelopeInput<'_>) -> Result<Envelope, NotACloudEvent> {
    let mut fields: BTreeMap<String, String> = BTreeMap::new(); // name -> JSON text
    let meta = |name: &str| super::metadata_value(input.metadata, name);
    let media = media_type(input.content_type);
    let now = rfc3339(input.now);
    if media == "application/cloudevents+json" {
        // The caller's event, completed: no id added, topic and pubsubname overwritten.
        let parsed: BTreeMap<String, Box<RawValue>> =
            serde_json::from_slice(input.data).map_err(|e| NotACloudEvent(e.to_string()))?;
        for (k, v) in parsed {
            fields.insert(k, canonical(v.get()).map_err(NotACloudEvent)?);
        }
        fields.entry("time".into()).or_insert_with(|| quote(&now));
        if !fields.contains_key("traceid") {
            let trace = quote(input.traceparent.unwrap_or(""));
            fields.insert("traceid".into(), trace.clone());
            fields.insert("traceparent".into(), trace);
        }
        fields
            .entry("tracestate".into())
            .or_insert_with(|| quote(input.tracestate.unwrap_or("")));
        fields
            .entry("source".into())
            .or_insert_with(|| quote("Dapr"));
        fields
            .entry("type".into())
            .or_insert_with(|| quote("com.dapr.event.sent"));
        fields
            .entry("specversion".into())
            .or_insert_with(|| quote("1.0"));
    } else {
        // `cloudevent.*` overrides, matched case-insensitively as mapstructure does.
        let ce = |name: &str| {
            input
                .metadata
                .iter()
                .rev()
                .find(|(k, _)| {
                    // Bytes: a caller's key may hold a multi-byte character across byte 11.
                    let k = k.as_bytes();
                    k.len() == 11 + name.len()
                        && k[..11].eq_ignore_ascii_case(b"cloudevent.")
                        && k[11..].eq_ignore_ascii_case(name.as_bytes())
                })
                .map(|(_, v)| v.as_str())
        };
        let id = ce("id").map_or_else(uuid_v4, str::to_owned);
        fields.insert("id".into(), quote(&id));
        let source = ce("source").unwrap_or(if input.app_id.is_empty() {
            "Dapr"
        } else {
            input.app_id
        });
        fields.insert("source".into(), quote(source));
        fields.insert(
            "type".into(),
            quote(ce("type").unwrap_or("com.dapr.event.sent")),
        );
        fields.insert("specversion".into(), quote("1.0"));
        let content_type = if input.content_type.is_empty() {
            "text/plain"
        } else {
            input.content_type
        };
        fields.insert("datacontenttype".into(), quote(content_type));
        match media.as_str() {
            "application/json" => {
                let data = match std::str::from_utf8(input.data)
                    .ok()
                    .and_then(|s| canonical(s).ok())
                {
                    Some(json) => json,
                    None => quote(&String::from_utf8_lossy(input.data)),
                };
                fields.insert("data".into(), data);
            }
            "application/octet-stream"
            | "application/cloudevents+protobuf"
            | "application/x-protobuf" => {
                // The base64 alphabet needs no JSON escape: written between quotes as is.
                let mut b64 = String::with_capacity(input.data.len() * 4 / 3 + 6);
                b64.push('"');
                base64::engine::general_purpose::STANDARD.encode_string(input.data, &mut b64);
                b64.push('"');
                fields.insert("data_base64".into(), b64);
            }
            _ => {
                fields.insert("data".into(), quote(&String::from_utf8_lossy(input.data)));
            }
        }
        let trace = ce("traceparent")
            .or(ce("traceid"))
            .or(input.traceparent)
            .unwrap_or("");
        fields.insert("traceid".into(), quote(trace));
        fields.insert("traceparent".into(), quote(trace));
        let state = ce("tracestate").or(input.tracestate).unwrap_or("");
        fields.insert("tracestate".into(), quote(state));
        fields.insert("time".into(), quote(&now));
        if let Some(subject) = ce("subject") {
            fields.insert("subject".into(), quote(subject));
        }
    }
    fields.insert("topic".into(), quote(input.topic));
    fields.insert("pubsubname".into(), quote(input.pubsub));
    // Kafka and JetStream have no broker TTL: daprd writes the expiry into the event.
    if let Some(ttl) = meta("ttlInSeconds")
        .or(meta("ttl"))
        .and_then(parse_ttl_seconds)
        .filter(|s| *s > 0)
    {
        let expires = input.now + time::Duration::seconds(ttl);
        fields.insert(
            "expiration".into(),
            quote(&rfc3339(expires.to_offset(time::UtcOffset::UTC))),
        );
    }
    // The id as a string, whichever case set it (a caller's CloudEvent may carry any JSON).
    let id = fields
        .get("id")
        .and_then(|raw| serde_json::from_str::<String>(raw).ok());
    let mut out = Vec::with_capacity(256 + input.data.len());
    out.push(b'{');
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(quote(k).as_bytes());
        out.push(b':');
        out.extend_from_slice(v.as_bytes());
    }
    out.push(b'}');
    Ok(Envelope { bytes: out, id })
}

/// A content type's media type: parameters dropped, lower case (`Application/JSON;
/// charset=utf-8` -> `application/json`).
pub(crate) fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// `ttlInSeconds` as daprd reads it: integer seconds, or a Go duration (`30s`, `1m`).
fn parse_ttl_seconds(v: &str) -> Option<i64> {
    v.parse::<i64>().ok().or_else(|| {
        crate::api::parse_duration(v)
            .ok()
            .flatten()
            .map(|d| d.as_secs() as i64)
    })
}

pub(crate) fn rfc3339(t: time::OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    let (y, mo, d) = (t.year(), t.month() as u8, t.day());
    let (h, mi, s) = (t.hour(), t.minute(), t.second());
    let off = t.offset();
    let zone = if off.is_utc() {
        "Z".to_owned()
    } else {
        let secs = off.whole_seconds();
        let sign = if secs < 0 { '-' } else { '+' };
        format!(
            "{sign}{:02}:{:02}",
            secs.abs() / 3600,
            (secs.abs() % 3600) / 60
        )
    };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{zone}")
}

pub(crate) fn uuid_v4() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(HEX[(byte >> 4) as usize] as char);
        out.push(HEX[(byte & 0xf) as usize] as char);
    }
    out
}

/// A JSON text as Go re-marshals it: object keys sorted, strings escaped the Go way,
/// numbers and literals as written, no whitespace.
pub(crate) fn canonical(json: &str) -> Result<String, String> {
    let mut out = String::with_capacity(json.len());
    write_canonical(json.trim(), &mut out)?;
    Ok(out)
}

fn write_canonical(json: &str, out: &mut String) -> Result<(), String> {
    match json.as_bytes().first() {
        Some(b'{') => {
            let map: BTreeMap<String, &RawValue> =
                serde_json::from_str(json).map_err(|e| e.to_string())?;
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&quote(k));
                out.push(':');
                write_canonical(v.get(), out)?;
            }
            out.push('}');
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(json).map_err(|e| e.to_string())?;
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v.get(), out)?;
            }
            out.push(']');
        }
        Some(b'"') => {
            let s: String = serde_json::from_str(json).map_err(|e| e.to_string())?;
            out.push_str(&quote(&s));
        }
        Some(_) => {
            // A number or literal: validated, then kept as written (Go's UseNumber).
            serde_json::from_str::<serde_json::Value>(json).map_err(|e| e.to_string())?;
            out.push_str(json);
        }
        None => return Err("unexpected end of JSON input".into()),
    }
    Ok(())
}

/// A JSON string as Go's encoder writes it (HTML-safe); also the state stores' encoding.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    // Most strings (ids, base64, names) need no escape: copied whole.
    let plain = s
        .bytes()
        .all(|b| b >= 0x20 && !matches!(b, b'"' | b'\\' | b'<' | b'>' | b'&' | 0xe2));
    if plain {
        out.push_str(s);
        out.push('"');
        return out;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Go 1.22+ writes these two short.
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(
        data: &'a [u8],
        content_type: &'a str,
        metadata: &'a [(String, String)],
    ) -> EnvelopeInput<'a> {
        EnvelopeInput {
            app_id: "fn-ns",
            pubsub: "kafka-pubsub",
            topic: "orders",
            data,
            content_type,
            metadata,
            traceparent: None,
            tracestate: None,
            now: time::OffsetDateTime::from_unix_timestamp(1777629600).unwrap(),
        }
    }

    fn envelope_bytes(input: &EnvelopeInput<'_>) -> Result<Vec<u8>, NotACloudEvent> {
        envelope(input).map(|e| e.bytes)
    }

    #[test]
    fn a_json_payload_is_wrapped_as_daprd_writes_it() {
        let meta = vec![("cloudevent.id".to_owned(), "e1".to_owned())];
        let out = envelope_bytes(&input(
            br#"{"b":2, "a":1.50,"c":"<&>"}"#,
            "application/json",
            &meta,
        ))
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"data":{"a":1.50,"b":2,"c":"\u003c\u0026\u003e"},"datacontenttype":"application/json","id":"e1","pubsubname":"kafka-pubsub","source":"fn-ns","specversion":"1.0","time":"2026-05-01T10:00:00Z","topic":"orders","traceid":"","traceparent":"","tracestate":"","type":"com.dapr.event.sent"}"#
        );
    }

    #[test]
    fn ids_are_version_4_uuids() {
        let id = uuid_v4();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            vec![8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
        assert!(id.bytes().all(|c| c == b'-' || c.is_ascii_hexdigit()));
        assert_ne!(uuid_v4(), id);
        assert_eq!(quote("plain id"), "\"plain id\"");
        assert_eq!(quote("a\u{2028}<"), "\"a\\u2028\\u003c\"");
    }

    #[test]
    fn content_types_choose_data_or_data_base64_and_ttl_adds_expiration() {
        let meta = vec![("ttlInSeconds".to_owned(), "60".to_owned())];
        let text: serde_json::Value =
            serde_json::from_slice(&envelope_bytes(&input(b"{\"a\":1}", "", &meta)).unwrap())
                .unwrap();
        assert_eq!(text["data"], "{\"a\":1}");
        assert_eq!(text["datacontenttype"], "text/plain");
        assert_eq!(text["expiration"], "2026-05-01T10:01:00Z");
        let bin: serde_json::Value = serde_json::from_slice(
            &envelope_bytes(&input(&[0, 255], "application/octet-stream", &[])).unwrap(),
        )
        .unwrap();
        assert_eq!(bin["data_base64"], "AP8=");
        assert!(bin.get("data").is_none());
        let bad_json: serde_json::Value = serde_json::from_slice(
            &envelope_bytes(&input(b"{nope", "application/json", &[])).unwrap(),
        )
        .unwrap();
        assert_eq!(bad_json["data"], "{nope");
    }

    #[test]
    fn a_cloudevent_input_keeps_its_fields_gets_no_id_and_is_retargeted() {
        let ce = br#"{"specversion":"1.0","type":"t","source":"s","topic":"x","data":{"k":1}}"#;
        let v: serde_json::Value = serde_json::from_slice(
            &envelope_bytes(&input(ce, "application/cloudevents+json", &[])).unwrap(),
        )
        .unwrap();
        assert!(v.get("id").is_none());
        assert_eq!(v["topic"], "orders");
        assert_eq!(v["pubsubname"], "kafka-pubsub");
        assert_eq!(v["source"], "s");
        assert_eq!(v["traceid"], "");
        assert!(envelope(&input(b"[1]", "application/cloudevents+json", &[])).is_err());
        let e = envelope(&input(
            b"x",
            "",
            &[("cloudevent.id".to_owned(), "e-7".to_owned())],
        ))
        .unwrap();
        assert_eq!(e.id.as_deref(), Some("e-7"));
    }

    #[test]
    fn a_metadata_key_with_a_multibyte_character_across_the_prefix_is_no_override() {
        // 13 bytes, `é` on bytes 10 and 11: slicing the str at 11 would panic.
        let meta = [
            ("aaaaaaaaaaéx".to_owned(), "v".to_owned()),
            ("cloudevent.Type".to_owned(), "t".to_owned()),
        ];
        let e = envelope(&input(b"x", "", &meta)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&e.bytes).unwrap();
        assert_eq!(
            v["type"], "t",
            "the override still matched case-insensitively"
        );
    }
}
