//! Dapr API errors: one value per failure, rendered as daprd renders it on each transport —
//! a gRPC status whose `grpc-status-details-bin` (ErrorInfo, sometimes ResourceInfo)
//! repeats the same code and message (the Python SDK raises `ValueError` otherwise), and
//! an HTTP status with daprd's JSON body (`errorCode`, `message`, and `details` for the
//! rich errors).

use bytes::Bytes;
use prost::Message;
use serde::Serialize;
use tonic::Code;

/// ErrorInfo domain of every Dapr error.
const DOMAIN: &str = "dapr.io";

#[derive(Clone, Debug)]
pub struct ApiError {
    pub grpc: Code,
    pub http: u16,
    /// HTTP `errorCode`.
    pub error_code: &'static str,
    /// ErrorInfo reason.
    pub reason: &'static str,
    pub message: String,
    /// Bounded label for `fngate_dapr_api_calls_total{outcome}`.
    pub outcome: &'static str,
    /// HTTP answers with details (a rich error) rather than daprd's legacy body.
    pub http_details: bool,
    /// Rarely set, so kept out of line: every `Result` carrying an `ApiError` stays small.
    extra: Option<Box<Extra>>,
}

#[derive(Clone, Debug, Default)]
struct Extra {
    /// ErrorInfo metadata on gRPC.
    grpc_info: Vec<(String, String)>,
    /// ErrorInfo metadata on HTTP.
    http_info: Vec<(String, String)>,
    /// ResourceInfo (type, name), placed before the ErrorInfo.
    resource: Option<(&'static str, String)>,
}

impl ApiError {
    /// daprd's `apierrors.Basic`: gRPC carries ErrorInfo with reason = errorCode; HTTP
    /// answers with the legacy body.
    pub fn basic(grpc: Code, http: u16, error_code: &'static str, message: String) -> ApiError {
        ApiError {
            grpc,
            http,
            error_code,
            reason: error_code,
            message,
            outcome: outcome_of(grpc),
            http_details: false,
            extra: None,
        }
    }

    /// A rich error: details on both transports.
    pub fn rich(
        grpc: Code,
        http: u16,
        error_code: &'static str,
        reason: &'static str,
        message: String,
    ) -> ApiError {
        ApiError {
            reason,
            http_details: true,
            ..ApiError::basic(grpc, http, error_code, message)
        }
    }

    fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Default::default)
    }

    pub fn with_http_info(mut self, info: Vec<(String, String)>) -> ApiError {
        self.http_details = true;
        self.extra().http_info = info;
        self
    }

    pub fn with_info(mut self, info: Vec<(String, String)>) -> ApiError {
        self.extra().grpc_info = info.clone();
        self.extra().http_info = info;
        self
    }

    pub fn with_resource(mut self, kind: &'static str, name: &str) -> ApiError {
        self.extra().resource = Some((kind, name.to_owned()));
        self
    }

    pub fn malformed(message: String) -> ApiError {
        ApiError::basic(Code::InvalidArgument, 400, "ERR_MALFORMED_REQUEST", message)
    }

    /// A missing or unknown `dapr-api-token`. (HTTP answers it before any handler, as
    /// plain text; see `http.rs`.)
    pub fn unauthenticated(detail: &str) -> ApiError {
        let mut detail = detail.to_owned();
        detail.truncate(63);
        let mut e = ApiError::basic(
            Code::Unauthenticated,
            401,
            "Unauthorized",
            "Unauthorized".into(),
        );
        e.extra().grpc_info = vec![
            ("http.code".into(), "401".into()),
            ("http.error_message".into(), detail),
        ];
        e
    }

    pub fn to_status(&self) -> tonic::Status {
        let extra = self.extra.as_deref();
        let mut details = Vec::with_capacity(2);
        if let Some((kind, name)) = extra.and_then(|x| x.resource.as_ref()) {
            details.push(Any::pack(
                "type.googleapis.com/google.rpc.ResourceInfo",
                &ResourceInfo {
                    resource_type: (*kind).to_owned(),
                    resource_name: name.clone(),
                    owner: String::new(),
                    description: self.message.clone(),
                },
            ));
        }
        details.push(Any::pack(
            "type.googleapis.com/google.rpc.ErrorInfo",
            &ErrorInfo {
                reason: self.reason.to_owned(),
                domain: DOMAIN.to_owned(),
                metadata: extra
                    .map(|x| x.grpc_info.iter().cloned().collect())
                    .unwrap_or_default(),
            },
        ));
        let status = RpcStatus {
            code: self.grpc as i32,
            message: self.message.clone(),
            details,
        };
        tonic::Status::with_details(
            self.grpc,
            self.message.clone(),
            Bytes::from(status.encode_to_vec()),
        )
    }

    /// daprd's JSON body: `errorCode`, `message`, then `details` for rich errors.
    pub fn http_body(&self) -> Vec<u8> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Body<'a> {
            error_code: &'a str,
            message: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            details: Option<Vec<serde_json::Value>>,
        }
        let extra = self.extra.as_deref();
        let details = self.http_details.then(|| {
            let mut d = Vec::with_capacity(2);
            if let Some((kind, name)) = extra.and_then(|x| x.resource.as_ref()) {
                d.push(serde_json::json!({
                    "@type": "type.googleapis.com/google.rpc.ResourceInfo",
                    "description": self.message,
                    "owner": "",
                    "resource_name": name,
                    "resource_type": kind,
                }));
            }
            let metadata: serde_json::Map<String, serde_json::Value> = extra
                .map(|x| x.http_info.as_slice())
                .unwrap_or_default()
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            d.push(serde_json::json!({
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "domain": DOMAIN,
                "metadata": if metadata.is_empty() { serde_json::Value::Null } else { metadata.into() },
                "reason": self.reason,
            }));
            d
        });
        serde_json::to_vec(&Body {
            error_code: self.error_code,
            message: &self.message,
            details,
        })
        .expect("plain strings serialise")
    }
}

fn outcome_of(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition => "invalid",
        Code::Aborted => "conflict",
        Code::PermissionDenied => "forbidden",
        Code::Unimplemented => "unimplemented",
        Code::Unauthenticated => "unauthenticated",
        _ => "error",
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

// google.rpc messages, as `grpc-status-details-bin` carries them.
#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<Any>,
}

#[derive(Clone, PartialEq, Message)]
struct Any {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

impl Any {
    fn pack(type_url: &str, m: &impl Message) -> Any {
        Any {
            type_url: type_url.to_owned(),
            value: m.encode_to_vec(),
        }
    }
}

#[derive(Clone, PartialEq, Message)]
struct ErrorInfo {
    #[prost(string, tag = "1")]
    reason: String,
    #[prost(string, tag = "2")]
    domain: String,
    #[prost(btree_map = "string, string", tag = "3")]
    metadata: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, PartialEq, Message)]
struct ResourceInfo {
    #[prost(string, tag = "1")]
    resource_type: String,
    #[prost(string, tag = "2")]
    resource_name: String,
    #[prost(string, tag = "3")]
    owner: String,
    #[prost(string, tag = "4")]
    description: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grpc_details_repeat_the_status_code_and_message() {
        let e = ApiError::rich(
            Code::InvalidArgument,
            400,
            "ERR_STATE_STORE_NOT_FOUND",
            "DAPR_STATE_NOT_FOUND",
            "state store s is not found".into(),
        );
        let status = e.to_status();
        let decoded = RpcStatus::decode(status.details()).unwrap();
        assert_eq!(decoded.code, Code::InvalidArgument as i32);
        assert_eq!(decoded.message, status.message());
        let info = ErrorInfo::decode(&decoded.details[0].value[..]).unwrap();
        assert_eq!(info.reason, "DAPR_STATE_NOT_FOUND");
        assert_eq!(info.domain, "dapr.io");
    }

    #[test]
    fn the_http_body_is_daprs_with_details_only_for_rich_errors() {
        let rich = ApiError::rich(
            Code::InvalidArgument,
            400,
            "ERR_STATE_STORE_NOT_FOUND",
            "DAPR_STATE_NOT_FOUND",
            "state store redis is not found".into(),
        )
        .with_http_info(vec![("appID".into(), "fn-ns".into())]);
        assert_eq!(
            String::from_utf8(rich.http_body()).unwrap(),
            r#"{"errorCode":"ERR_STATE_STORE_NOT_FOUND","message":"state store redis is not found","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","domain":"dapr.io","metadata":{"appID":"fn-ns"},"reason":"DAPR_STATE_NOT_FOUND"}]}"#
        );
        let legacy = ApiError::basic(Code::Aborted, 409, "ERR_STATE_SAVE", "m".into());
        assert_eq!(
            String::from_utf8(legacy.http_body()).unwrap(),
            r#"{"errorCode":"ERR_STATE_SAVE","message":"m"}"#
        );
    }
}
