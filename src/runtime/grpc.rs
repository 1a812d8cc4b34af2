//! Dapr's gRPC API (`dapr.proto.runtime.v1.Dapr`, h2c) with the dapr crate's generated
//! messages. Routed by hand rather than through the generated `Dapr` server trait: that
//! trait has 77 methods without defaults, and fngate serves eleven; every other method
//! answers `Unimplemented` (after the token check, as daprd's interceptor runs first).

use super::error::ApiError;
use super::publish_api::{BulkEntry, PublishRequest};
use super::state_api::StateItem;
use super::DaprApi;
use bytes::Bytes;
use dapr::dapr::proto::common::v1 as common;
use dapr::dapr::proto::runtime::v1 as rt;
use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codegen::{http, Body as HttpBody, BoxFuture, Service, StdError};
use tonic::{Code, Request, Response, Status};

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
    B: HttpBody + Send + 'static,
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
    B: HttpBody + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    route(api, req).await
}

async fn route<B>(api: Arc<DaprApi>, req: http::Request<B>) -> http::Response<Body>
where
    B: HttpBody + Send + 'static,
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
    let name = req
        .uri()
        .path()
        .strip_prefix("/dapr.proto.runtime.v1.Dapr/")
        .unwrap_or_default();
    // Resolved before `req` moves into the handler: no copy of the name per call.
    let Some(method) = Method::named(name) else {
        return Status::unimplemented(format!("method {name} is not served by fngate")).into_http();
    };
    macro_rules! unary {
        (|$r:ident: $req:ty| $body:expr) => {{
            let (api, app) = (api.clone(), app.clone());
            unary(req, move |$r: Request<$req>| async move {
                let _ = (&api, &app);
                $body
            })
            .await
        }};
    }
    match method {
        Method::GetState => unary!(|r: rt::GetStateRequest| {
            let r = r.into_inner();
            let consistency = consistency_name(r.consistency);
            let item = api
                .get_state(&app, &r.store_name, &r.key, consistency)
                .await
                .map_err(|e| e.to_status())?;
            let item = item.unwrap_or_default();
            Ok(Response::new(rt::GetStateResponse {
                data: item.data.to_vec(),
                etag: item.etag.unwrap_or_default(),
                metadata: item.metadata.into_iter().collect(),
            }))
        }),
        Method::GetBulkState => unary!(|r: rt::GetBulkStateRequest| {
            let r = r.into_inner();
            let items = api
                .get_bulk_state(&app, &r.store_name, r.keys, r.parallelism.max(0) as usize)
                .await
                .map_err(|e| e.to_status())?;
            Ok(Response::new(rt::GetBulkStateResponse {
                items: items
                    .into_iter()
                    .map(|i| match i.result {
                        Ok(found) => {
                            let found = found.unwrap_or_default();
                            rt::BulkStateItem {
                                key: i.key,
                                data: found.data.to_vec(),
                                etag: found.etag.unwrap_or_default(),
                                metadata: found.metadata.into_iter().collect(),
                                error: String::new(),
                            }
                        }
                        Err(error) => rt::BulkStateItem {
                            key: i.key,
                            error,
                            ..Default::default()
                        },
                    })
                    .collect(),
            }))
        }),
        Method::SaveState => unary!(|r: rt::SaveStateRequest| {
            let r = r.into_inner();
            let mut items = Vec::with_capacity(r.states.len());
            for s in r.states {
                if s.key.is_empty() {
                    return Err(ApiError::basic(
                        Code::InvalidArgument,
                        400,
                        "ERR_STATE_SAVE",
                        "state key cannot be empty".into(),
                    )
                    .to_status());
                }
                items.push(save_item(s)?);
            }
            api.save_state(&app, &r.store_name, items)
                .await
                .map_err(|e| e.to_status())?;
            Ok(Response::new(()))
        }),
        Method::DeleteState => unary!(|r: rt::DeleteStateRequest| {
            let r = r.into_inner();
            let (concurrency, consistency) = options(r.options.as_ref());
            let item = StateItem {
                key: r.key,
                etag: r.etag.map(|e| e.value),
                concurrency,
                consistency,
                metadata: r.metadata.into_iter().collect(),
                ..StateItem::default()
            };
            api.delete_state(&app, &r.store_name, item)
                .await
                .map_err(|e| e.to_status())?;
            Ok(Response::new(()))
        }),
        Method::DeleteBulkState => unary!(|r: rt::DeleteBulkStateRequest| {
            let r = r.into_inner();
            let items = r.states.into_iter().map(raw_item).collect();
            api.delete_bulk_state(&app, &r.store_name, items)
                .await
                .map_err(|e| e.to_status())?;
            Ok(Response::new(()))
        }),
        Method::ExecuteStateTransaction => unary!(|r: rt::ExecuteStateTransactionRequest| {
            let r = r.into_inner();
            // Values are raw bytes here, whatever contentType says (as daprd).
            let ops = r
                .operations
                .into_iter()
                .map(|op| {
                    (
                        op.operation_type,
                        op.request.map(raw_item).unwrap_or_default(),
                    )
                })
                .collect();
            api.execute_state_transaction(&app, &r.store_name, ops)
                .await
                .map_err(|e| e.to_status())?;
            Ok(Response::new(()))
        }),
        Method::PublishEvent => unary!(|r: rt::PublishEventRequest| {
            let (traceparent, tracestate) = trace_context(r.metadata());
            let r = r.into_inner();
            api.publish(
                &app,
                PublishRequest {
                    pubsub: r.pubsub_name,
                    topic: r.topic,
                    data: Bytes::from(r.data),
                    content_type: r.data_content_type,
                    metadata: r.metadata.into_iter().collect(),
                    traceparent,
                    tracestate,
                    grpc: true,
                },
            )
            .await
            .map_err(|e| e.to_status())?;
            Ok(Response::new(()))
        }),
        Method::BulkPublishEvent => unary!(|r: rt::BulkPublishRequest| {
            let r = r.into_inner();
            let entries = r
                .entries
                .into_iter()
                .map(|e| BulkEntry {
                    entry_id: e.entry_id,
                    event: Bytes::from(e.event),
                    content_type: e.content_type,
                    metadata: (!e.metadata.is_empty()).then(|| e.metadata.into_iter().collect()),
                })
                .collect();
            let failed = api
                .bulk_publish(
                    &app,
                    &r.pubsub_name,
                    &r.topic,
                    entries,
                    r.metadata.into_iter().collect(),
                    true,
                )
                .await
                .map_err(|e| e.to_status())?;
            Ok(Response::new(rt::BulkPublishResponse {
                failed_entries: failed
                    .into_iter()
                    .map(|(entry_id, error)| rt::BulkPublishResponseFailedEntry { entry_id, error })
                    .collect(),
            }))
        }),
        Method::InvokeBinding => {
            let authority = req.uri().authority().map(|a| a.to_string());
            unary!(|r: rt::InvokeBindingRequest| {
                let mut metadata: Vec<(String, String)> = Vec::new();
                let headers = binding_headers(r.metadata(), authority.as_deref());
                let r = r.into_inner();
                metadata.extend(r.metadata);
                // Incoming headers fill keys the request did not set (daprd copies them).
                for (k, v) in headers {
                    if !metadata.iter().any(|(m, _)| *m == k) {
                        metadata.push((k, v));
                    }
                }
                let reply = api
                    .invoke_binding(&app, &r.name, &r.operation, Bytes::from(r.data), metadata)
                    .await
                    .map_err(|e| e.to_status())?;
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
            })
        }
        Method::GetMetadata => unary!(|_r: rt::GetMetadataRequest| {
            Ok(Response::new(rt::GetMetadataResponse {
                id: app.app_id.clone(),
                runtime_version: super::RUNTIME_VERSION.into(),
                registered_components: api
                    .components(&app)
                    .into_iter()
                    .map(
                        |(name, r#type, version, capabilities)| rt::RegisteredComponents {
                            name,
                            r#type,
                            version,
                            capabilities,
                        },
                    )
                    .collect(),
                ..Default::default()
            }))
        }),
    }
}

/// A gRPC item whose value is stored as sent (transactions, bulk delete).
fn raw_item(s: common::StateItem) -> StateItem {
    let (concurrency, consistency) = options(s.options.as_ref());
    StateItem {
        key: s.key,
        value: Bytes::from(s.value),
        json: false,
        etag: s.etag.map(|e| e.value),
        concurrency,
        consistency,
        metadata: s.metadata.into_iter().collect(),
    }
}

/// SaveState: raw bytes, unless the item says `contentType: application/json`; then the
/// JSON is decoded and re-encoded, as daprd hands the store a decoded value.
fn save_item(s: common::StateItem) -> Result<StateItem, Status> {
    let json = s.metadata.get("contentType").map(String::as_str) == Some("application/json");
    let mut item = raw_item(s);
    if json {
        let value: serde_json::Value = serde_json::from_slice(&item.value).map_err(|e| {
            ApiError::basic(Code::Internal, 500, "ERR_STATE_SAVE", e.to_string()).to_status()
        })?;
        item.value = Bytes::from(serde_json::to_vec(&value).expect("a JSON value serialises"));
        item.json = true;
    }
    Ok(item)
}

fn options(o: Option<&common::StateOptions>) -> (String, String) {
    let Some(o) = o else {
        return (String::new(), String::new());
    };
    let concurrency = match o.concurrency {
        1 => "first-write",
        2 => "last-write",
        _ => "",
    };
    (concurrency.into(), consistency_name(o.consistency).into())
}

fn consistency_name(c: i32) -> &'static str {
    match c {
        1 => "eventual",
        2 => "strong",
        _ => "",
    }
}

fn trace_context(md: &tonic::metadata::MetadataMap) -> (Option<String>, Option<String>) {
    let get = |k: &str| {
        md.get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .filter(|v| !v.is_empty())
    };
    (get("traceparent"), get("tracestate"))
}

/// The call's headers as daprd copies them into binding metadata: the token removed,
/// `:authority` as `dapr-authority`, `grpc-*` as `dapr-grpc-*`.
fn binding_headers(
    md: &tonic::metadata::MetadataMap,
    authority: Option<&str>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(a) = authority {
        out.push(("dapr-authority".to_owned(), a.to_owned()));
    }
    for kv in md.iter() {
        if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv {
            let k = k.as_str();
            if k == "dapr-api-token" || k == "te" {
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
    }
    out
}

/// Decodes one unary request, runs `handler`, encodes its answer (tonic's server side).
async fn unary<B, Req, Resp, F, Fut>(req: http::Request<B>, handler: F) -> http::Response<Body>
where
    B: HttpBody + Send + 'static,
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
        .apply_max_message_size_config(Some(MAX_MESSAGE), Some(MAX_MESSAGE));
    grpc.unary(Once(Some(handler), PhantomData), req).await
}

/// daprd's default `--max-body-size`.
const MAX_MESSAGE: usize = 4 * 1024 * 1024;
