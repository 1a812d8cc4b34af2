//! gRPC proxying (daprd's "proxy mode"): a call of any service other than Dapr's own, with
//! a `dapr-app-id` (or `dapr-callee-app-id`) header, is passed through to that app's gRPC
//! server as a stream both ways — the caller's own generated client, unchanged, reaches
//! the other function. Who may call whom is invocation's rule; a target at zero is held.

use super::invoke_api::{direct_invoke_error, identity_headers, normalize_method};
use super::DaprApi;
use crate::plan::DaprApp;
use bytes::Bytes;
use tonic::body::Body;
use tonic::codegen::{http, Body as HttpBody, StdError};

/// An h2c client for the proxied calls, one connection pool for all targets.
pub(crate) type H2Client =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

pub(crate) fn h2_client() -> H2Client {
    // Without TCP_NODELAY a small frame waits out the peer's delayed ACK (~40 ms a call).
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(std::time::Duration::from_secs(2)));
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build(connector)
}

/// The app a proxied call names: `dapr-callee-app-id`, else `dapr-app-id`.
pub(crate) fn proxied_app_id(headers: &http::HeaderMap) -> Option<String> {
    ["dapr-callee-app-id", "dapr-app-id"]
        .iter()
        .find_map(|h| headers.get(*h)?.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

impl DaprApi {
    pub(crate) async fn proxy_grpc<B>(
        &self,
        caller: &DaprApp,
        id: &str,
        req: http::Request<B>,
    ) -> http::Response<Body>
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        match self.proxy(caller, id, req).await {
            Ok(response) => response,
            Err(e) => e.to_status().into_http(),
        }
    }

    async fn proxy<B>(
        &self,
        caller: &DaprApp,
        id: &str,
        req: http::Request<B>,
    ) -> Result<http::Response<Body>, super::ApiError>
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        let plan = self.plan.load_full();
        let method = normalize_method(req.uri().path()).map_err(|e| {
            let mut e = direct_invoke_error(id, format!("invalid method: {e}"));
            e.grpc = tonic::Code::InvalidArgument;
            e
        })?;
        let target = self.authorized_target(&plan, caller, id, &method, "")?;
        let (addr, _held) = self.ready_endpoint(&target, id, 0).await?;
        let (mut head, body) = req.into_parts();
        let path = head
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        head.uri = format!("http://{addr}{path}")
            .parse()
            .map_err(|e| direct_invoke_error(id, format!("{e}")))?;
        // The caller's token and claimed identity never pass; fngate stamps the identity.
        for (k, _) in identity_headers(caller, &target) {
            head.headers.remove(k);
        }
        head.headers.remove("dapr-api-token");
        for (k, v) in identity_headers(caller, &target) {
            if let Ok(v) = http::HeaderValue::from_str(v) {
                head.headers.insert(k, v);
            }
        }
        let request = http::Request::from_parts(head, Body::new(body));
        let response = self.h2.request(request).await.map_err(|e| {
            self.count_invocation(caller, &target, "unreachable");
            let mut e = direct_invoke_error(id, format!("failed to proxy request: {e}"));
            e.grpc = tonic::Code::Unavailable;
            e
        })?;
        self.count_invocation(caller, &target, "success");
        Ok(response.map(Body::new))
    }
}
