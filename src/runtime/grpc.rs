//! Dapr's gRPC API (`dapr.proto.runtime.v1.Dapr`, h2c) with the dapr crate's generated
//! messages: authenticate, admit, dispatch to the building block's handler. Routed by hand
//! rather than through the generated `Dapr` server trait: that trait has 77 methods
//! without defaults, and fngate serves fourteen; every other method answers
//! `Unimplemented` (after the token check, as daprd's interceptor runs first). A call of
//! any other service is proxied when it names an app (`grpc_proxy.rs`).

use super::handlers::{bindings, invoke, metadata, publish, secrets, state};
use super::surface::{Trace, MAX_BODY};
use super::DaprApi;
use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codegen::{http, Body as HttpBody, BoxFuture, Service, StdError};
use tonic::{Request, Response, Status};

const SERVICE: &str = "dapr.proto.runtime.v1.Dapr";

/// The methods fngate answers; every other one is `Unimplemented`.
#[derive(Clone, Copy)]
enum Method {
    GetState,
    GetBulkState,
    SaveState,
    DeleteState,
    DeleteBulkState,
    ExecuteStateTransaction,
    PublishEvent,
    BulkPublishEvent,
    InvokeBinding,
    GetMetadata,
    InvokeService,
    GetSecret,
    GetBulkSecret,
}

impl Method {
    fn named(name: &str) -> Option<Method> {
        Some(match name {
            "GetState" => Method::GetState,
            "GetBulkState" => Method::GetBulkState,
            "SaveState" => Method::SaveState,
            "DeleteState" => Method::DeleteState,
            "DeleteBulkState" => Method::DeleteBulkState,
            "ExecuteStateTransaction" => Method::ExecuteStateTransaction,
            "PublishEvent" => Method::PublishEvent,
            "BulkPublishEvent" | "BulkPublishEventAlpha1" => Method::BulkPublishEvent,
            "InvokeBinding" => Method::InvokeBinding,
            "GetMetadata" => Method::GetMetadata,
            "InvokeService" => Method::InvokeService,
            "GetSecret" => Method::GetSecret,
            "GetBulkSecret" => Method::GetBulkSecret,
            _ => return None,
        })
    }
}

#[derive(Clone)]
pub struct DaprGrpc {
    api: Arc<DaprApi>,
}

impl DaprGrpc {
    pub fn new(api: Arc<DaprApi>) -> DaprGrpc {
        DaprGrpc { api }
    }
}

impl tonic::server::NamedService for DaprGrpc {
    const NAME: &'static str = SERVICE;
}

impl<B> Service<http::Request<B>> for DaprGrpc
where
    B: HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let api = self.api.clone();
        Box::pin(async move { Ok(route(api, req).await) })
    }
}

/// Answers one gRPC call (an HTTP/2 request of the Dapr service). Public so the fuzzer can
/// call it without a socket.
pub async fn handle<B>(api: Arc<DaprApi>, req: http::Request<B>) -> http::Response<Body>
where
    B: HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    route(api, req).await
}

async fn route<B>(api: Arc<DaprApi>, req: http::Request<B>) -> http::Response<Body>
where
    B: HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    let token = req.headers().get("dapr-api-token").map(|v| v.as_bytes());
    let app = match api.authenticate(token, "grpc") {
        Ok(app) => app,
        Err(e) => return e.to_status().into_http(),
    };
    let admission = api.clone();
    let _call = match admission.admit(&app, "grpc") {
        Ok(call) => call,
        Err(e) => return e.to_status().into_http(),
    };
    let Some(name) = req
        .uri()
        .path()
        .strip_prefix("/dapr.proto.runtime.v1.Dapr/")
    else {
        // Another service: daprd's proxy mode, when the call names an app.
        return match super::grpc_proxy::proxied_app_id(req.headers()) {
            Some(id) => api.proxy_grpc(&app, &id, req).await,
            None => Status::unimplemented(format!(
                "{} is not a Dapr method; name the target app in a dapr-app-id header to proxy the call",
                req.uri().path()
            ))
            .into_http(),
        };
    };
    // Resolved before `req` moves into the handler: no copy of the name per call.
    let Some(method) = Method::named(name) else {
        return Status::unimplemented(format!("method {name} is not served by fngate")).into_http();
    };
    // `handler(&api, &app, [taken from the call's head,] message)`, its answer or its
    // `ApiError` encoded.
    // `handler(&api, &app, [what it takes from the call's head,] message)`; its answer or
    // its `ApiError` encoded.
    macro_rules! call {
        ($handler:path) => {{
            let (api, app) = (api.clone(), app.clone());
            unary(req, move |r: Request<_>| async move {
                answer($handler(&api, &app, r.into_inner()).await)
            })
            .await
        }};
        ($handler:path, $head:expr) => {{
            let (api, app, head) = (api.clone(), app.clone(), $head);
            unary(req, move |r: Request<_>| async move {
                answer($handler(&api, &app, head, r.into_inner()).await)
            })
            .await
        }};
    }
    match method {
        Method::GetState => call!(state::grpc_get),
        Method::GetBulkState => call!(state::grpc_get_bulk),
        Method::SaveState => call!(state::grpc_save),
        Method::DeleteState => call!(state::grpc_delete),
        Method::DeleteBulkState => call!(state::grpc_delete_bulk),
        Method::ExecuteStateTransaction => call!(state::grpc_transaction),
        Method::PublishEvent => call!(publish::grpc_publish, Trace::of(req.headers())),
        Method::BulkPublishEvent => call!(publish::grpc_bulk_publish),
        Method::InvokeBinding => {
            let authority = req.uri().authority().map(|a| a.as_str());
            call!(
                bindings::grpc_invoke,
                bindings::grpc_call_headers(req.headers(), authority)
            )
        }
        Method::GetMetadata => call!(metadata::grpc_get),
        Method::GetSecret => call!(secrets::grpc_get),
        Method::GetBulkSecret => call!(secrets::grpc_get_bulk),
        Method::InvokeService => call!(
            invoke::grpc_invoke,
            bindings::grpc_call_headers(req.headers(), None)
        ),
    }
}

/// A handler's result as tonic's: its message (or response with metadata), or the status
/// its `ApiError` renders as.
fn answer<M, R: IntoResponse<M>>(
    result: Result<R, super::ApiError>,
) -> Result<Response<M>, Status> {
    result
        .map(IntoResponse::into_response)
        .map_err(|e| e.to_status())
}

/// A handler's answer as a tonic response: a message, or a response with metadata.
trait IntoResponse<M> {
    fn into_response(self) -> Response<M>;
}
impl<M: prost::Message> IntoResponse<M> for M {
    fn into_response(self) -> Response<M> {
        Response::new(self)
    }
}
impl<M> IntoResponse<M> for Response<M> {
    fn into_response(self) -> Response<M> {
        self
    }
}

/// Decodes one unary request, runs `handler`, encodes its answer (tonic's server side).
async fn unary<B, Req, Resp, F, Fut>(req: http::Request<B>, handler: F) -> http::Response<Body>
where
    B: HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    F: FnOnce(Request<Req>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response<Resp>, Status>> + Send + 'static,
{
    struct Once<F, Req>(Option<F>, PhantomData<fn(Req)>);
    impl<Req, Resp, F, Fut> tonic::server::UnaryService<Req> for Once<F, Req>
    where
        F: FnOnce(Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>> + Send + 'static,
    {
        type Response = Resp;
        type Future = Pin<Box<dyn Future<Output = Result<Response<Resp>, Status>> + Send>>;
        fn call(&mut self, request: Request<Req>) -> Self::Future {
            match self.0.take() {
                Some(f) => Box::pin(f(request)),
                None => Box::pin(async { Err(Status::internal("handler called twice")) }),
            }
        }
    }
    let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<Resp, Req>::default())
        .apply_max_message_size_config(Some(MAX_BODY), Some(MAX_BODY));
    grpc.unary(Once(Some(handler), PhantomData), req).await
}
