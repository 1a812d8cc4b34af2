//! Output binding calls on both surfaces.

use super::super::error::ApiError;
use super::super::http::{error_reply, legacy, no_content, reply_with, Reply};
use super::super::surface::Trace;
use super::super::DaprApi;
use super::string_map;
use crate::plan::DaprApp;
use bytes::Bytes;
use dapr::dapr::proto::runtime::v1 as rt;
use serde_json::Value;
use tonic::Response;

/// gRPC InvokeBinding; `headers` are the call's, which daprd copies into the metadata.
pub(crate) async fn grpc_invoke(
    api: &DaprApi,
    app: &DaprApp,
    headers: Vec<(String, String)>,
    r: rt::InvokeBindingRequest,
) -> Result<Response<rt::InvokeBindingResponse>, ApiError> {
    let mut metadata: Vec<(String, String)> = r.metadata.into_iter().collect();
    // Incoming headers fill keys the request did not set.
    for (k, v) in headers {
        if !metadata.iter().any(|(m, _)| *m == k) {
            metadata.push((k, v));
        }
    }
    let reply = api
        .invoke_binding(app, &r.name, &r.operation, Bytes::from(r.data), metadata)
        .await?;
    let mut response = Response::new(rt::InvokeBindingResponse {
        data: reply.data.map(|d| d.to_vec()).unwrap_or_default(),
        metadata: reply.metadata.iter().cloned().collect(),
    });
    for (k, v) in &reply.metadata {
        let name = format!("metadata.{}", k.to_ascii_lowercase());
        if let (Ok(n), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(name.as_bytes()),
            v.parse(),
        ) {
            response.metadata_mut().insert(n, v);
        }
    }
    Ok(response)
}

/// The call's headers as daprd copies them into binding metadata and invocations: the
/// token removed, `:authority` as `dapr-authority`, `grpc-*` as `dapr-grpc-*`.
pub(crate) fn grpc_call_headers(
    headers: &http::HeaderMap,
    authority: Option<&str>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(a) = authority {
        out.push(("dapr-authority".to_owned(), a.to_owned()));
    }
    for (k, v) in headers {
        let k = k.as_str();
        if k == "dapr-api-token" || k == "te" || k.ends_with("-bin") {
            continue;
        }
        let Ok(v) = v.to_str() else { continue };
        let name = if k.starts_with("grpc-") {
            format!("dapr-{k}")
        } else {
            k.to_owned()
        };
        out.push((name, v.to_owned()));
    }
    out
}

pub(crate) async fn http_invoke(
    api: &DaprApi,
    app: &DaprApp,
    name: String,
    body: Bytes,
    trace: Trace,
) -> Reply {
    let parsed: serde_json::Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return legacy(
                400,
                "ERR_MALFORMED_REQUEST",
                format!("failed deserializing HTTP body: {e}"),
            )
        }
    };
    // The component receives `data` marshalled: a string keeps its quotes, none is `null`.
    let data = serde_json::to_vec(parsed.get("data").unwrap_or(&Value::Null)).expect("JSON");
    let mut metadata = string_map(parsed.get("metadata"));
    trace.fill(&mut metadata);
    let operation = parsed
        .get("operation")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    match api
        .invoke_binding(app, &name, &operation, Bytes::from(data), metadata)
        .await
    {
        Ok(r) => {
            let Some(data) = r.data else {
                return no_content();
            };
            let headers = [("content-type".to_owned(), "application/json")]
                .into_iter()
                .chain(
                    r.metadata
                        .iter()
                        .map(|(k, v)| (format!("metadata.{k}"), v.as_str())),
                );
            reply_with(200, headers, data)
        }
        Err(e) => error_reply(&e),
    }
}
