//! One file per building block, each with its calls on both surfaces: a gRPC handler
//! takes the decoded message and returns the answer or an `ApiError`; an HTTP handler
//! takes the route's parts and returns the reply. `grpc.rs` and `http.rs` only
//! authenticate, admit and dispatch.

pub(crate) mod bindings;
pub(crate) mod invoke;
pub(crate) mod metadata;
pub(crate) mod publish;
pub(crate) mod secrets;
pub(crate) mod state;

use serde_json::Value;

/// A JSON object member looked up as mapstructure does: case-insensitively.
pub(crate) fn member<'a>(o: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    o.get(name).or_else(|| {
        o.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// A JSON object as string metadata; non-string values as their JSON text.
pub(crate) fn string_map(v: Option<&Value>) -> Vec<(String, String)> {
    match v {
        Some(Value::Object(o)) => o
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        _ => Vec::new(),
    }
}
