//! Service invocation: one function calling another by app-id, through fngate's own view
//! of the target's endpoints. The call reaches the target's app as daprd's app channel
//! sends it (HTTP `<verb> /<method>?<query>`, or gRPC `AppCallback/OnInvoke`); a target
//! with no ready endpoint is held while the platform scales it up, as a held HTTP request.

use super::error::ApiError;
use super::surface::MAX_BODY;
use super::{CallTimer, DaprApi};
use crate::activator::Held;
use crate::plan::{AppProtocol, DaprApp, InvokeTarget};
use crate::routing::HoldPolicy;
use bytes::Bytes;
use dapr::dapr::proto::common::v1 as common;
use http_body_util::{BodyExt, Full, Limited};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

/// daprd's built-in retries for invocation: three more attempts, one second apart, when
/// the target could not be reached (never after it answered).
const RETRIES: u32 = 3;
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// One invocation as both surfaces decode it.
#[derive(Debug, Default)]
pub struct InvokeCall {
    pub method: String,
    /// Upper-case HTTP verb; empty for a gRPC call without an HTTP extension (a POST to
    /// an HTTP app).
    pub verb: String,
    pub query: String,
    pub content_type: String,
    /// The caller's headers (HTTP) or metadata (gRPC), passed on to the target.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// The target app's answer.
#[derive(Debug)]
pub enum InvokeAnswer {
    /// An HTTP app's response, whatever its status.
    Http {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    /// A gRPC app's answer: its message, or the status it failed with.
    Grpc(Result<common::InvokeResponse, tonic::Status>),
}

/// Headers of the caller that never reach the target (hop-by-hop, the caller's own
/// credentials and routing) and identity headers fngate stamps itself.
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "dapr-api-token",
    "dapr-app-id",
    "dapr-caller-app-id",
    "dapr-caller-namespace",
    "dapr-callee-app-id",
];

/// The identity headers fngate stamps on every invocation (the caller's own are dropped:
/// see `NOT_FORWARDED`).
pub(crate) fn identity_headers<'a>(
    caller: &'a DaprApp,
    target: &'a InvokeTarget,
) -> [(&'static str, &'a str); 3] {
    [
        ("dapr-caller-app-id", &caller.app_id),
        ("dapr-caller-namespace", &caller.namespace),
        ("dapr-callee-app-id", &target.app_id),
    ]
}

pub(crate) fn forwarded(name: &str) -> bool {
    !NOT_FORWARDED.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// daprd's `ErrDirectInvoke`.
pub(crate) fn direct_invoke_error(id: &str, err: impl std::fmt::Display) -> ApiError {
    ApiError::basic(
        Code::Internal,
        500,
        "ERR_DIRECT_INVOKE",
        format!("failed to invoke, id: {id}, err: {err}"),
    )
}

/// daprd's method normalisation (`messaging/method`): no `#`, `?`, NUL or control
/// characters; `..` resolved without leaving the app's root.
pub(crate) fn normalize_method(method: &str) -> Result<String, String> {
    if let Some(c) = method
        .chars()
        .find(|c| matches!(c, '#' | '?' | '\0') || (*c as u32) < 0x20 || *c == '\u{7f}')
    {
        return Err(format!(
            "method contains forbidden character {c:?}: {method:?}"
        ));
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in method.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

impl DaprApi {
    /// Invokes `method` on the app `id` (`<app-id>` or `<app-id>.<namespace>`) for `caller`.
    pub async fn invoke(
        &self,
        caller: &DaprApp,
        id: &str,
        mut call: InvokeCall,
    ) -> Result<InvokeAnswer, ApiError> {
        let timer = CallTimer::start(self, caller, "invoke");
        let plan = self.plan.load_full();
        let result = async {
            call.method = normalize_method(&call.method).map_err(|e| {
                direct_invoke_error(
                    id,
                    format!("rpc error: code = InvalidArgument desc = invalid method: {e}"),
                )
            })?;
            let target = self.authorized_target(&plan, caller, id, &call.method, &call.verb)?;
            let target = &target;
            let answer = self.invoke_target(target, caller, id, call).await;
            let outcome = match &answer {
                Ok(InvokeAnswer::Http { status, .. }) if *status < 400 => "success",
                Ok(InvokeAnswer::Grpc(Ok(_))) => "success",
                Ok(_) => "app_error",
                Err(e) if e.outcome == "timeout" => "timeout",
                Err(_) => "unreachable",
            };
            self.count_invocation(caller, target, outcome);
            answer
        }
        .await;
        timer.finish(result)
    }

    /// The target `id` (`<app-id>` or `<app-id>.<namespace>`) names, if `caller` may call
    /// `method` (normalised) with `verb` (empty: none, as gRPC) on it: the target's access
    /// control, else its namespace only.
    pub(crate) fn authorized_target(
        &self,
        plan: &crate::plan::Plan,
        caller: &DaprApp,
        id: &str,
        method: &str,
        verb: &str,
    ) -> Result<Arc<InvokeTarget>, ApiError> {
        let (app_id, namespace) = match id.split('.').collect::<Vec<_>>()[..] {
            [app] if !app.is_empty() => (app, caller.namespace.as_str()),
            [app, ns] if !app.is_empty() && !ns.is_empty() => (app, ns),
            _ => return Err(direct_invoke_error(id, format!("invalid app id {id}"))),
        };
        let Some(target) = plan.dapr.target(namespace, app_id) else {
            return Err(direct_invoke_error(
                id,
                format!("couldn't find app {app_id} in namespace {namespace}: no Function fngate serves has that app-id"),
            ));
        };
        let allowed = match &target.access {
            Some(policy) => policy.allows(
                &caller.app_id,
                &caller.namespace,
                method,
                if verb.is_empty() { "*" } else { verb },
            ),
            None => target.namespace == caller.namespace,
        };
        if !allowed {
            self.count_invocation(caller, target, "refused");
            let mut e = direct_invoke_error(
                id,
                format!(
                    "rpc error: code = PermissionDenied desc = access control policy has denied access to id: {} operation: {method} verb: {}",
                    caller.app_id,
                    if verb.is_empty() { "NONE" } else { verb }
                ),
            );
            e.http = 403;
            return Err(e);
        }
        Ok(target.clone())
    }

    pub(crate) fn count_invocation(&self, caller: &DaprApp, target: &InvokeTarget, outcome: &str) {
        self.metrics
            .dapr_invocations
            .with_label_values(&[
                &caller.namespace,
                &caller.function,
                &target.namespace,
                &target.function,
                outcome,
            ])
            .inc();
    }

    /// Waits for a ready endpoint of the target (held while it scales up), then sends;
    /// retried as daprd does while the target cannot be reached.
    async fn invoke_target(
        &self,
        target: &InvokeTarget,
        caller: &DaprApp,
        id: &str,
        call: InvokeCall,
    ) -> Result<InvokeAnswer, ApiError> {
        let channel = &target.channel;
        let mut attempt = 0;
        loop {
            let (addr, _held) = self.ready_endpoint(target, id, attempt).await?;
            let sent = match channel.protocol {
                AppProtocol::Http => self.invoke_http(addr, caller, target, &call).await,
                AppProtocol::Grpc => self.invoke_grpc(addr, caller, target, &call).await,
            };
            match sent {
                Ok(answer) => return Ok(answer),
                Err(e) if attempt < RETRIES => {
                    tracing::debug!(target = %target.app_id, error = %e, "invocation: target unreachable; retrying");
                    attempt += 1;
                    tokio::time::sleep(RETRY_INTERVAL).await;
                }
                Err(e) => {
                    return Err(direct_invoke_error(
                        id,
                        format!(
                            "failed to invoke target {} after {RETRIES} retries. Error: {e}",
                            target.app_id
                        ),
                    ))
                }
            }
        }
    }

    /// A ready endpoint of the target, waiting (held, the platform signalled) while it has
    /// none; the `Held` keeps the call counted as the function's load.
    pub(crate) async fn ready_endpoint(
        &self,
        target: &InvokeTarget,
        id: &str,
        attempt: u32,
    ) -> Result<(SocketAddr, Held), ApiError> {
        let channel = &target.channel;
        let held = self
            .activator
            .hold(
                &channel.service,
                Some(channel.port),
                [&target.namespace, &target.function],
                None,
                &HoldPolicy::default(),
            )
            .await;
        let addr = match &held {
            Held::Ready(endpoints, _, _) => endpoints
                .pick(attempt as usize, Some(channel.port))
                .map(|a| SocketAddr::new(a.ip(), channel.port)),
            Held::Overflow => {
                return Err(direct_invoke_error(
                    id,
                    "too many requests already wait for the target to scale up",
                ))
            }
            Held::TimedOut => {
                let mut e = direct_invoke_error(
                    id,
                    format!(
                        "no ready endpoint of {}/{} within {:?}",
                        target.namespace,
                        target.function,
                        self.activator.hold_timeout()
                    ),
                );
                e.outcome = "timeout";
                return Err(e);
            }
        };
        match addr {
            Some(addr) => Ok((addr, held)),
            None => Err(direct_invoke_error(
                id,
                format!(
                    "{} has no endpoint on port {}",
                    channel.service.name, channel.port
                ),
            )),
        }
    }

    /// One attempt on an HTTP app; `Err` only when it could not be reached.
    async fn invoke_http(
        &self,
        addr: SocketAddr,
        caller: &DaprApp,
        target: &InvokeTarget,
        call: &InvokeCall,
    ) -> Result<InvokeAnswer, String> {
        let client = self.clients.http_client(None)?;
        let mut uri = format!("http://{addr}/{}", call.method);
        if !call.query.is_empty() {
            uri.push('?');
            uri.push_str(&call.query);
        }
        let verb = match call.verb.as_str() {
            "" => http::Method::POST,
            v => http::Method::from_bytes(v.as_bytes()).map_err(|e| e.to_string())?,
        };
        let mut request = http::Request::builder().method(verb).uri(&uri);
        for (k, v) in &call.headers {
            if forwarded(k) && !k.eq_ignore_ascii_case("content-type") {
                request = request.header(k.as_str(), v.as_str());
            }
        }
        if !call.content_type.is_empty() {
            request = request.header("content-type", call.content_type.as_str());
        }
        for (k, v) in identity_headers(caller, target) {
            request = request.header(k, v);
        }
        let request = request
            .body(Full::new(call.body.clone()))
            .map_err(|e| format!("the call is not a valid HTTP request: {e}"))?;
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let (head, body) = response.into_parts();
        // The app answered: from here a failure is the app's, never retried.
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => Bytes::from(format!("failed reading the app's response: {e}")),
        };
        let headers = head
            .headers
            .iter()
            .filter(|(k, _)| forwarded(k.as_str()))
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        Ok(InvokeAnswer::Http {
            status: head.status.as_u16(),
            headers,
            body,
        })
    }

    /// One attempt on a gRPC app; `Err` only when it could not be reached.
    async fn invoke_grpc(
        &self,
        addr: SocketAddr,
        caller: &DaprApp,
        target: &InvokeTarget,
        call: &InvokeCall,
    ) -> Result<InvokeAnswer, String> {
        let verb = VERBS
            .iter()
            .find(|(_, name)| *name == call.verb)
            .map_or(0, |(n, _)| *n);
        let mut request = tonic::Request::new(common::InvokeRequest {
            method: call.method.clone(),
            data: Some(prost_types::Any {
                type_url: String::new(),
                value: call.body.to_vec(),
            }),
            content_type: call.content_type.clone(),
            http_extension: Some(common::HttpExtension {
                verb,
                querystring: call.query.clone(),
            }),
        });
        let md = request.metadata_mut();
        for (k, v) in &call.headers {
            let k = k.to_ascii_lowercase();
            if !forwarded(&k) || k == "content-type" || k == "user-agent" || k.ends_with("-bin") {
                continue;
            }
            if let (Ok(name), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(k.as_bytes()),
                tonic::metadata::MetadataValue::try_from(v.as_str()),
            ) {
                md.append(name, value);
            }
        }
        for (k, v) in identity_headers(caller, target) {
            if let Ok(value) = tonic::metadata::MetadataValue::try_from(v) {
                md.insert(k, value);
            }
        }
        match self.grpc_apps.invoke(addr, request).await {
            Ok(response) => Ok(InvokeAnswer::Grpc(Ok(response.into_inner()))),
            Err(status) if status.code() == Code::Unavailable => {
                self.grpc_apps.forget(addr);
                Err(status.message().to_owned())
            }
            Err(status) => Ok(InvokeAnswer::Grpc(Err(status))),
        }
    }
}

/// `common.v1.HTTPExtension.Verb` values and their HTTP names (0, NONE, is none).
const VERBS: [(i32, &str); 9] = [
    (1, "GET"),
    (2, "HEAD"),
    (3, "POST"),
    (4, "PUT"),
    (5, "DELETE"),
    (6, "CONNECT"),
    (7, "OPTIONS"),
    (8, "TRACE"),
    (9, "PATCH"),
];

/// The HTTP name of an `HTTPExtension.Verb`; empty for NONE or an unknown value.
pub(crate) fn verb_name(verb: i32) -> &'static str {
    VERBS
        .iter()
        .find(|(n, _)| *n == verb)
        .map_or("", |(_, name)| name)
}

/// daprd's `HTTPStatusFromCode`.
pub(crate) fn http_status_of(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::Cancelled => 408,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::PermissionDenied => 403,
        Code::Unauthenticated => 401,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        _ => 500,
    }
}

/// daprd's `CodeFromHTTPStatus`.
pub(crate) fn grpc_code_of(status: u16) -> Code {
    match status {
        200..=299 => Code::Ok,
        408 => Code::Cancelled,
        400 => Code::Internal,
        504 => Code::DeadlineExceeded,
        404 => Code::NotFound,
        409 => Code::AlreadyExists,
        403 => Code::PermissionDenied,
        401 => Code::Unauthenticated,
        429 => Code::ResourceExhausted,
        501 => Code::Unimplemented,
        503 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_normalised_as_daprd_does() {
        assert_eq!(normalize_method("a/./b/../c").unwrap(), "a/c");
        assert_eq!(normalize_method("../../etc/passwd").unwrap(), "etc/passwd");
        assert_eq!(normalize_method("/x//y/").unwrap(), "x/y");
        assert!(normalize_method("a?b").is_err());
        assert!(normalize_method("a\u{1}").is_err());
    }
}
