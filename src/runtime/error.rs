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
    /// The details before the ErrorInfo, in daprd's order (its builders add the ErrorInfo
    /// last).
    details: Vec<Detail>,
    /// A status passed through as it came (an invoked gRPC app's).
    passed_through: Option<tonic::Status>,
}

/// A `google.rpc` error detail other than the ErrorInfo.
#[derive(Clone, Debug)]
enum Detail {
    BadRequest {
        field: String,
        description: String,
    },
    Resource {
        kind: &'static str,
        name: String,
        description: String,
    },
    Help {
        url: &'static str,
        description: &'static str,
    },
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

    /// ResourceInfo naming the component; `description` as daprd fills it (the message for
    /// pub/sub errors, empty for state ones).
    pub fn with_resource(mut self, kind: &'static str, name: &str, description: &str) -> ApiError {
        self.extra().details.push(Detail::Resource {
            kind,
            name: name.to_owned(),
            description: description.to_owned(),
        });
        self
    }

    /// BadRequest with one field violation.
    pub fn with_field_violation(mut self, field: &str, description: &str) -> ApiError {
        self.extra().details.push(Detail::BadRequest {
            field: field.to_owned(),
            description: description.to_owned(),
        });
        self
    }

    /// Help with one link.
    pub fn with_help(mut self, url: &'static str, description: &'static str) -> ApiError {
        self.extra().details.push(Detail::Help { url, description });
        self
    }

    /// An invoked gRPC app's failure, passed to a gRPC caller as the app sent it.
    pub fn from_app_status(status: tonic::Status) -> ApiError {
        let mut e = ApiError::basic(
            status.code(),
            super::invoke_api::http_status_of(status.code()),
            "ERR_DIRECT_INVOKE",
            status.message().to_owned(),
        );
        e.outcome = "app_error";
        e.extra().passed_through = Some(status);
        e
    }

    pub fn malformed(message: String) -> ApiError {
        ApiError::basic(Code::InvalidArgument, 400, "ERR_MALFORMED_REQUEST", message)
    }

    /// A missing or unknown `dapr-api-token`. (HTTP answers it before any handler, as
    /// plain text; see `http.rs`.)
    pub fn unauthenticated(detail: &str) -> ApiError {
        ApiError::from_http_status(401, detail)
    }

    /// daprd's `ErrorFromHTTPResponseCode`: the gRPC code for an HTTP status, the status
    /// text as message and reason, and ErrorInfo metadata `http.code` and (up to 63 bytes
    /// of) `http.error_message`.
    pub fn from_http_status(status: u16, detail: &str) -> ApiError {
        let text = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let mut end = detail.len().min(63);
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        let mut e = ApiError::basic(
            super::invoke_api::grpc_code_of(status),
            status,
            text,
            text.to_owned(),
        );
        e.extra().grpc_info = vec![
            ("http.code".into(), status.to_string()),
            ("http.error_message".into(), detail[..end].to_owned()),
        ];
        e
    }

    pub fn to_status(&self) -> tonic::Status {
        let extra = self.extra.as_deref();
        if let Some(status) = extra.and_then(|x| x.passed_through.clone()) {
            return status;
        }
        let mut details: Vec<Any> = extra
            .map(|x| x.details.iter().map(Detail::to_any).collect())
            .unwrap_or_default();
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
            details: Option<Vec<JsonDetail<'a>>>,
        }
        let extra = self.extra.as_deref();
        let details = self.http_details.then(|| {
            let mut d: Vec<JsonDetail> = extra
                .map(|x| x.details.iter().map(Detail::to_json).collect())
                .unwrap_or_default();
            let info = extra.map(|x| x.http_info.as_slice()).unwrap_or_default();
            d.push(JsonDetail::ErrorInfo {
                r#type: "type.googleapis.com/google.rpc.ErrorInfo",
                domain: DOMAIN,
                metadata: (!info.is_empty())
                    .then(|| info.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()),
                reason: self.reason,
            });
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

impl Detail {
    fn to_any(&self) -> Any {
        match self {
            Detail::BadRequest { field, description } => Any::pack(
                "type.googleapis.com/google.rpc.BadRequest",
                &BadRequest {
                    field_violations: vec![FieldViolation {
                        field: field.clone(),
                        description: description.clone(),
                    }],
                },
            ),
            Detail::Resource {
                kind,
                name,
                description,
            } => Any::pack(
                "type.googleapis.com/google.rpc.ResourceInfo",
                &ResourceInfo {
                    resource_type: (*kind).to_owned(),
                    resource_name: name.clone(),
                    owner: String::new(),
                    description: description.clone(),
                },
            ),
            Detail::Help { url, description } => Any::pack(
                "type.googleapis.com/google.rpc.Help",
                &Help {
                    links: vec![HelpLink {
                        description: (*description).to_owned(),
                        url: (*url).to_owned(),
                    }],
                },
            ),
        }
    }

    /// As daprd's `convertErrorDetails` renders it: the detail is a Go map (keys sorted),
    /// the violations and links inside it Go structs (fields in declaration order).
    fn to_json(&self) -> JsonDetail<'_> {
        match self {
            Detail::BadRequest { field, description } => JsonDetail::BadRequest {
                r#type: "type.googleapis.com/google.rpc.BadRequest",
                field_violations: [JsonViolation { field, description }],
            },
            Detail::Resource {
                kind,
                name,
                description,
            } => JsonDetail::Resource {
                r#type: "type.googleapis.com/google.rpc.ResourceInfo",
                description,
                owner: "",
                resource_name: name,
                resource_type: kind,
            },
            Detail::Help { url, description } => JsonDetail::Help {
                r#type: "type.googleapis.com/google.rpc.Help",
                links: [JsonLink { description, url }],
            },
        }
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum JsonDetail<'a> {
    BadRequest {
        #[serde(rename = "@type")]
        r#type: &'static str,
        field_violations: [JsonViolation<'a>; 1],
    },
    Resource {
        #[serde(rename = "@type")]
        r#type: &'static str,
        description: &'a str,
        owner: &'static str,
        resource_name: &'a str,
        resource_type: &'a str,
    },
    Help {
        #[serde(rename = "@type")]
        r#type: &'static str,
        links: [JsonLink<'a>; 1],
    },
    ErrorInfo {
        #[serde(rename = "@type")]
        r#type: &'static str,
        domain: &'static str,
        metadata: Option<std::collections::BTreeMap<&'a str, &'a str>>,
        reason: &'a str,
    },
}

#[derive(Serialize)]
struct JsonViolation<'a> {
    field: &'a str,
    description: &'a str,
}

#[derive(Serialize)]
struct JsonLink<'a> {
    description: &'a str,
    url: &'a str,
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

#[derive(Clone, PartialEq, Message)]
struct BadRequest {
    #[prost(message, repeated, tag = "1")]
    field_violations: Vec<FieldViolation>,
}

#[derive(Clone, PartialEq, Message)]
struct FieldViolation {
    #[prost(string, tag = "1")]
    field: String,
    #[prost(string, tag = "2")]
    description: String,
}

#[derive(Clone, PartialEq, Message)]
struct Help {
    #[prost(message, repeated, tag = "1")]
    links: Vec<HelpLink>,
}

#[derive(Clone, PartialEq, Message)]
struct HelpLink {
    #[prost(string, tag = "1")]
    description: String,
    #[prost(string, tag = "2")]
    url: String,
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

    #[test]
    fn an_illegal_key_carries_bad_request_and_resource_info_before_the_error_info() {
        let e = ApiError::rich(
            Code::InvalidArgument,
            400,
            "ERR_MALFORMED_REQUEST",
            "DAPR_STATE_ILLEGAL_KEY",
            "input key/keyPrefix 'a||b' can't contain '||'".into(),
        )
        .with_field_violation("a||b", "input key/keyPrefix 'a||b' can't contain '||'")
        .with_resource("state", "statestore", "");
        let decoded = RpcStatus::decode(e.to_status().details()).unwrap();
        let types: Vec<&str> = decoded
            .details
            .iter()
            .map(|d| d.type_url.as_str())
            .collect();
        assert_eq!(
            types,
            [
                "type.googleapis.com/google.rpc.BadRequest",
                "type.googleapis.com/google.rpc.ResourceInfo",
                "type.googleapis.com/google.rpc.ErrorInfo"
            ]
        );
        let bad = BadRequest::decode(&decoded.details[0].value[..]).unwrap();
        assert_eq!(bad.field_violations[0].field, "a||b");
        let resource = ResourceInfo::decode(&decoded.details[1].value[..]).unwrap();
        assert_eq!(
            (
                resource.resource_type.as_str(),
                resource.resource_name.as_str()
            ),
            ("state", "statestore")
        );
        assert_eq!(
            String::from_utf8(e.http_body()).unwrap(),
            concat!(
                r#"{"errorCode":"ERR_MALFORMED_REQUEST","message":"input key/keyPrefix 'a||b' can't contain '||'","details":["#,
                r#"{"@type":"type.googleapis.com/google.rpc.BadRequest","field_violations":[{"field":"a||b","description":"input key/keyPrefix 'a||b' can't contain '||'"}]},"#,
                r#"{"@type":"type.googleapis.com/google.rpc.ResourceInfo","description":"","owner":"","resource_name":"statestore","resource_type":"state"},"#,
                r#"{"@type":"type.googleapis.com/google.rpc.ErrorInfo","domain":"dapr.io","metadata":null,"reason":"DAPR_STATE_ILLEGAL_KEY"}]}"#
            )
        );
    }
}
