//! What the gRPC and HTTP surfaces share: daprd's body bound, the trace context a call
//! carries, JSON re-encoding of values, and Go's parsing of the strings callers send.

use bytes::Bytes;

/// daprd's default `--max-body-size`, for an HTTP body and a gRPC message alike.
pub(crate) const MAX_BODY: usize = 4 * 1024 * 1024;

/// W3C trace context of a call, as both surfaces carry it (headers / gRPC metadata).
#[derive(Clone, Debug, Default)]
pub struct Trace {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl Trace {
    pub(crate) fn of(headers: &http::HeaderMap) -> Trace {
        let get = |k: &str| {
            headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .filter(|v| !v.is_empty())
        };
        Trace {
            traceparent: get("traceparent"),
            tracestate: get("tracestate"),
        }
    }

    /// Adds the context to metadata that does not set it already (daprd copies the
    /// caller's headers into binding metadata this way).
    pub(crate) fn fill(self, metadata: &mut Vec<(String, String)>) {
        for (k, v) in [
            ("traceparent", self.traceparent),
            ("tracestate", self.tracestate),
        ] {
            if let Some(v) = v {
                if !metadata.iter().any(|(m, _)| m == k) {
                    metadata.push((k.to_owned(), v));
                }
            }
        }
    }
}

/// A JSON value decoded and encoded again, as daprd hands a store a decoded value.
pub(crate) fn reencoded_json(bytes: &[u8]) -> Result<Bytes, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_slice(bytes)?;
    Ok(Bytes::from(
        serde_json::to_vec(&value).expect("a JSON value serialises"),
    ))
}

/// Go's `strconv.ParseBool`.
pub(crate) fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}
