//! Service invocation on both surfaces: HTTP `/v1.0/invoke/<id>/method/<method>` (and any
//! path with a `dapr-app-id` header), gRPC `InvokeService`.

use super::super::error::ApiError;
use super::super::http::{error_reply, reply_with, Reply};
use super::super::invoke_api::{grpc_code_of, http_status_of, verb_name, InvokeAnswer, InvokeCall};
use super::super::DaprApi;
use crate::plan::DaprApp;
use bytes::Bytes;
use dapr::dapr::proto::common::v1 as common;
use dapr::dapr::proto::runtime::v1 as rt;
use tonic::Response;

/// daprd's `dapr-http-status` response header on gRPC calls answered by an HTTP app.
const HTTP_STATUS_HEADER: &str = "dapr-http-status";

/// The target id and method of an invoke path (after `/v1.0/`), as daprd's
/// `findTargetIDAndMethod`: the id query-unescaped, the method as sent.
pub(crate) fn target_and_method(rest: &str) -> Option<(String, String)> {
    let rest = rest.strip_prefix("invoke/")?;
    let at = rest.find("/method/")?;
    let id = super::super::http::query_unescape(&rest[..at]);
    (!id.is_empty()).then(|| (id, rest[at + "/method/".len()..].to_owned()))
}

pub(crate) async fn http_invoke(
    api: &DaprApi,
    app: &DaprApp,
    id: String,
    mut call: InvokeCall,
    body: Bytes,
) -> Reply {
    call.body = body;
    match api.invoke(app, &id, call).await {
        Ok(InvokeAnswer::Http {
            status,
            headers,
            body,
        }) => reply_with(status, headers, body),
        Ok(InvokeAnswer::Grpc(Ok(response))) => {
            let content_type = response.content_type;
            let body = response.data.map(|d| d.value).unwrap_or_default();
            let headers = (!content_type.is_empty()).then_some(("content-type", content_type));
            reply_with(200, headers, body)
        }
        // daprd answers a gRPC app's failure with the status as JSON.
        Ok(InvokeAnswer::Grpc(Err(status))) => {
            let body = serde_json::json!({
                "code": status.code() as i32,
                "message": status.message(),
                "details": [],
            });
            reply_with(
                http_status_of(status.code()),
                [("content-type", "application/json")],
                body.to_string(),
            )
        }
        Err(e) => error_reply(&e),
    }
}

/// gRPC InvokeService; `headers` are the call's metadata, passed on to the target.
pub(crate) async fn grpc_invoke(
    api: &DaprApi,
    app: &DaprApp,
    headers: Vec<(String, String)>,
    r: rt::InvokeServiceRequest,
) -> Result<Response<common::InvokeResponse>, ApiError> {
    let message = r.message.unwrap_or_default();
    let (verb, query) = match message.http_extension {
        Some(ext) => (verb_name(ext.verb), ext.querystring),
        None => ("", String::new()),
    };
    let call = InvokeCall {
        method: message.method,
        verb: verb.to_owned(),
        query,
        content_type: message.content_type,
        headers,
        body: Bytes::from(message.data.map(|d| d.value).unwrap_or_default()),
    };
    match api.invoke(app, &r.id, call).await? {
        InvokeAnswer::Grpc(Ok(response)) => Ok(Response::new(response)),
        InvokeAnswer::Grpc(Err(status)) => Err(ApiError::from_app_status(status)),
        InvokeAnswer::Http {
            status,
            headers,
            body,
        } => {
            if grpc_code_of(status) != tonic::Code::Ok {
                let mut e = ApiError::from_http_status(status, &String::from_utf8_lossy(&body));
                e.outcome = "app_error";
                return Err(e);
            }
            let content_type = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let mut response = Response::new(common::InvokeResponse {
                data: Some(prost_types::Any {
                    type_url: String::new(),
                    value: body.to_vec(),
                }),
                content_type,
            });
            response
                .metadata_mut()
                .insert(HTTP_STATUS_HEADER, status.into());
            Ok(response)
        }
    }
}
