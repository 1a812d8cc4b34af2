//! What the SQL stores share with each other and with Dapr's Go components: the value
//! encoding (`json.Marshal` of the decoded value, or of the base64 of raw bytes), random
//! UUID ETags, `ttlExpireTime`, and the background cleanup of expired rows.

use super::{SetRequest, StoreError, StoredItem};
use crate::runtime::cloudevent::quote;
use base64::Engine;
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The JSON text Dapr's SQL components write for a value, and whether it is `isbinary`:
/// raw bytes become a JSON string of their base64; a decoded value is re-encoded as Go's
/// `encoding/json` encodes it (sorted keys, HTML escaped, numbers as float64).
pub(super) fn json_column(request: &SetRequest) -> Result<(String, bool), StoreError> {
    if request.json {
        Ok((go_marshal(&request.value)?, false))
    } else {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&request.value);
        Ok((format!("\"{b64}\""), true))
    }
}

/// The bytes a v2 (`bytea`) row holds: raw bytes as they are, a decoded value as Go
/// encodes it.
pub(super) fn bytes_column(request: &SetRequest) -> Result<Bytes, StoreError> {
    if request.json {
        Ok(Bytes::from(go_marshal(&request.value)?))
    } else {
        Ok(request.value.clone())
    }
}

/// A `value`/`isbinary` pair read back: binary rows are a JSON string of base64.
pub(super) fn read_json_column(value: Vec<u8>, isbinary: bool) -> Result<Bytes, StoreError> {
    if !isbinary {
        return Ok(Bytes::from(value));
    }
    let text: String = serde_json::from_slice(&value)
        .map_err(|e| StoreError::Failed(format!("failed to unmarshal JSON binary data: {e}")))?;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map(Bytes::from)
        .map_err(|e| StoreError::Failed(format!("failed to decode binary data: {e}")))
}

pub(super) fn item(data: Bytes, etag: String, expires_unix: Option<i64>) -> StoredItem {
    StoredItem {
        data,
        etag: Some(etag),
        metadata: expires_unix
            .and_then(rfc3339)
            .map(|t| vec![("ttlExpireTime".to_owned(), t)])
            .unwrap_or_default(),
    }
}

/// `time.RFC3339` in UTC, whole seconds, as Dapr reports `ttlExpireTime`.
fn rfc3339(unix: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(unix).ok()?;
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// The TTL a SQL store applies: seconds > 0 expire, anything else (none, 0, -1) is no
/// expiry (`state/utils.ParseTTL`; unlike Redis, a write without a TTL clears it).
pub(super) fn ttl_seconds(request: &SetRequest) -> Result<i64, StoreError> {
    match request.ttl {
        Some(t) if t < -1 => Err(StoreError::Failed(format!(
            "error parsing TTL: ttlInSeconds must be greater than or equal to -1, got {t}"
        ))),
        Some(t) if t > 0 => Ok(t),
        _ => Ok(0),
    }
}

pub(super) use crate::runtime::cloudevent::uuid_v4;

fn uuid_text(b: &[u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Go's `uuid.Parse`: hyphenated (optionally `urn:uuid:` or `{}`-wrapped) or 32 hex
/// digits; the canonical text, or `None`.
pub(super) fn parse_uuid(s: &str) -> Option<String> {
    let s = s.strip_prefix("urn:uuid:").unwrap_or(s);
    let s = s
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .unwrap_or(s);
    let hex: String = match s.len() {
        36 => {
            let b = s.as_bytes();
            if [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
                return None;
            }
            s.chars().filter(|c| *c != '-').collect()
        }
        32 => s.to_owned(),
        _ => return None,
    };
    if hex.len() != 32 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(uuid_text(&b))
}

/// Re-encodes JSON text as Go's `json.Marshal` of the decoded value.
pub(crate) fn go_marshal(json: &[u8]) -> Result<String, StoreError> {
    let value: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| StoreError::Failed(format!("failed to marshal to JSON: {e}")))?;
    let mut out = String::with_capacity(json.len() + 8);
    write_go(&value, &mut out);
    Ok(out)
}

fn write_go(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_go_float(n.as_f64().unwrap_or(0.0), out),
        Value::String(s) => out.push_str(&quote(s)),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_go(x, out);
            }
            out.push(']');
        }
        // serde_json's map is ordered by key bytes, as Go sorts map keys.
        Value::Object(m) => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&quote(k));
                out.push(':');
                write_go(x, out);
            }
            out.push('}');
        }
    }
}

/// Go decodes every JSON number to float64 and prints it shortest, in `e` notation below
/// 1e-6 and from 1e21 (`1e+21`, `1e-7`).
fn write_go_float(f: f64, out: &mut String) {
    use std::fmt::Write;
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let s = format!("{f:e}");
        let (mantissa, exp) = s.split_once('e').expect("e notation");
        out.push_str(mantissa);
        out.push('e');
        if !exp.starts_with('-') {
            out.push('+');
        }
        out.push_str(exp);
    } else {
        let _ = write!(out, "{f}");
    }
}

/// Runs a store call under the store's timeout, noting in `connected` whether the
/// database answered (a timeout or a lost connection is `Unavailable`).
pub(super) async fn timed<T>(
    timeout: Duration,
    connected: &AtomicBool,
    f: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let r = tokio::time::timeout(timeout, f)
        .await
        .unwrap_or_else(|_| Err(StoreError::Unavailable("timed out".into())));
    connected.store(
        !matches!(r, Err(StoreError::Unavailable(_))),
        Ordering::Relaxed,
    );
    r
}

/// A one-query bulk get's answer: the rows found (in the database's order), then each
/// requested key that was not, as Dapr's SQL components answer.
pub(super) fn append_missing(found: &mut Vec<(String, Option<StoredItem>)>, keys: &[String]) {
    let have: std::collections::HashSet<String> = found.iter().map(|(k, _)| k.clone()).collect();
    found.extend(
        keys.iter()
            .filter(|k| !have.contains(*k))
            .map(|k| (k.clone(), None)),
    );
}

/// Runs `cleanup` every `interval` (none: never) for as long as the store lives (Dapr's GC
/// ticker: the first run one interval after start). Failures are logged and retried next
/// tick.
pub(super) fn spawn_cleanup<S, F, Fut>(store: &Arc<S>, interval: Option<Duration>, cleanup: F)
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, Duration) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<u64, StoreError>> + Send,
{
    let Some(interval) = interval else { return };
    let store = Arc::downgrade(store);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(store) = store.upgrade() else { return };
            match cleanup(store, interval).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "state store: removed expired rows"),
                Err(e) => tracing::warn!(error = %e, "state store: removing expired rows failed"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_encoded_as_go_encodes_them() {
        let enc = |s: &str| go_marshal(s.as_bytes()).unwrap();
        assert_eq!(
            enc(r#"{"b":1,"a":[true,null,"x"]}"#),
            r#"{"a":[true,null,"x"],"b":1}"#
        );
        assert_eq!(enc(r#""<a&b>""#), r#""\u003ca\u0026b\u003e""#);
        assert_eq!(enc("1.5"), "1.5");
        assert_eq!(enc("100"), "100");
        assert_eq!(enc("1e21"), "1e+21");
        assert_eq!(enc("0.0000001"), "1e-7");
        assert_eq!(enc("123456789012345678901"), "123456789012345680000");
        assert_eq!(enc("12345678901234567890"), "12345678901234567000");
        assert_eq!(enc("\"tab\\tnl\\n\\u0001\""), "\"tab\\tnl\\n\\u0001\"");
    }

    #[test]
    fn etags_parse_as_go_uuid_does() {
        let u = uuid_v4();
        assert_eq!(parse_uuid(&u).as_deref(), Some(u.as_str()));
        assert_eq!(u.as_bytes()[14], b'4');
        assert_eq!(
            parse_uuid("{6BA7B810-9DAD-11D1-80B4-00C04FD430C8}").as_deref(),
            Some("6ba7b810-9dad-11d1-80b4-00c04fd430c8")
        );
        assert_eq!(
            parse_uuid("6ba7b8109dad11d180b400c04fd430c8").as_deref(),
            Some("6ba7b810-9dad-11d1-80b4-00c04fd430c8")
        );
        assert_eq!(parse_uuid("42"), None);
        assert_eq!(parse_uuid("6ba7b810-9dad-11d1-80b4-00c04fd430cz"), None);
    }

    #[test]
    fn expiry_times_are_rfc3339_utc() {
        assert_eq!(
            rfc3339(1_790_000_000).as_deref(),
            Some("2026-09-21T14:13:20Z")
        );
    }
}
