//! Dapr's HTTP API (`/v1.0/...`) on HTTP/1.1: the routes Dapr SDKs and `curl` users call
//! for state, publish, output bindings, metadata and health, with daprd's statuses,
//! headers and bodies. Values saved here are JSON, re-encoded (a string keeps its quotes).

use super::error::ApiError;
use super::publish_api::{BulkEntry, PublishRequest};
use super::state_api::StateItem;
use super::DaprApi;
use crate::plan::DaprApp;
use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// daprd's default `--max-body-size`.
const MAX_BODY: usize = 4 * 1024 * 1024;

pub type Reply = Response<Full<Bytes>>;

/// What a request body must be: a socket's (`hyper::body::Incoming`) or one in memory.
pub trait RequestBody:
    hyper::body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send
{
}

impl<B> RequestBody for B where
    B: hyper::body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
{
}

/// Serves the HTTP API until `shutdown` resolves; over TLS when `tls` is given.
pub async fn serve_http(
    api: Arc<DaprApi>,
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let connections = Arc::new(tokio::sync::Semaphore::new(api.limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    tracing::warn!(error = %e, "Dapr HTTP API: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        // Over the cap a connection is closed at once: the others keep their share.
        let Ok(slot) = connections.clone().try_acquire_owned() else {
            tracing::debug!("Dapr HTTP API: connection cap reached; closing a new connection");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (api, tls) = (api.clone(), tls.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => serve_connection(api, stream).await,
                Some(acceptor) => {
                    if let Some(tls) =
                        super::tls::handshake(&acceptor, stream, "Dapr HTTP API").await
                    {
                        serve_connection(api, tls).await
                    }
                }
            }
        });
    }
}

/// HTTP/1.1 on one connection, plain or TLS.
async fn serve_connection<I>(api: Arc<DaprApi>, io: I)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let api = api.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(&api, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        // A client that never finishes its request head is dropped.
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(30))
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .await;
}

fn reply(status: u16, content_type: Option<&str>, body: impl Into<Bytes>) -> Reply {
    reply_with(status, content_type.map(|ct| ("content-type", ct)), body)
}

/// A reply whose headers may come from a caller, a store or a broker (ETags, metadata,
/// error text): one that is not valid HTTP is left out, so no input can fail a reply.
fn reply_with<N: AsRef<str>, V: AsRef<str>>(
    status: u16,
    headers: impl IntoIterator<Item = (N, V)>,
    body: impl Into<Bytes>,
) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in headers {
        let (name, value) = (name.as_ref(), value.as_ref());
        match (
            http::HeaderName::try_from(name),
            http::HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => {
                r.headers_mut().append(n, v);
            }
            _ => tracing::debug!(
                header = name,
                "left out of a Dapr API reply: not a valid HTTP header"
            ),
        }
    }
    r
}

fn no_content() -> Reply {
    reply(204, None, Bytes::new())
}

fn error_reply(e: &ApiError) -> Reply {
    reply(e.http, Some("application/json"), e.http_body())
}

fn legacy(status: u16, code: &'static str, message: String) -> Reply {
    error_reply(&ApiError::basic(
        tonic::Code::InvalidArgument,
        status,
        code,
        message,
    ))
}

/// Answers one request. Generic over the body so the fuzzer can call it without a socket.
pub async fn handle<B: RequestBody>(api: &DaprApi, req: hyper::Request<B>) -> Reply {
    let path = req.uri().path().to_owned();
    let (version, rest) = match path
        .strip_prefix("/v1.0-alpha1/")
        .map(|r| ("v1.0-alpha1", r))
        .or_else(|| path.strip_prefix("/v1.0/").map(|r| ("v1.0", r)))
    {
        Some(v) => v,
        None => return reply(404, Some("text/plain"), "404 page not found\n"),
    };
    if req.method() == Method::GET && (rest == "healthz" || rest == "healthz/outbound") {
        return if api.plan.load().revision > 0 {
            no_content()
        } else {
            let (code, what) = if rest == "healthz" {
                ("ERR_HEALTH_NOT_READY", "dapr is not ready: [catalog]")
            } else {
                (
                    "ERR_OUTBOUND_HEALTH_NOT_READY",
                    "dapr outbound is not ready",
                )
            };
            legacy(500, code, what.into())
        };
    }
    let token = req.headers().get("dapr-api-token").map(|v| v.as_bytes());
    let app = match api.authenticate(token, "http") {
        Ok(app) => app,
        Err(_) => {
            return reply(
                401,
                Some("text/plain; charset=utf-8"),
                "invalid api token\n",
            );
        }
    };
    let _call = match api.admit(&app, "http") {
        Ok(call) => call,
        Err(e) => return error_reply(&e),
    };
    let segments: Vec<String> = rest.split('/').map(query_unescape).collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method().clone();
    let writes = method == Method::POST || method == Method::PUT;
    let query = Query::parse(req.uri().query());
    match (version, segs.as_slice()) {
        ("v1.0", ["state", store, "bulk"]) if writes => {
            with_body(api, req, |b| bulk_get(api, &app, store, b)).await
        }
        ("v1.0", ["state", store, "transaction"]) if writes => {
            with_body(api, req, |b| transaction(api, &app, store, b)).await
        }
        ("v1.0", ["state", store]) if writes => {
            let meta = query.metadata.clone();
            with_body(api, req, |b| save(api, &app, store, b, meta)).await
        }
        ("v1.0", ["state", store, key]) if method == Method::GET => {
            get(api, &app, store, key, &query).await
        }
        ("v1.0", ["state", store, key]) if method == Method::DELETE => {
            let etag = req
                .headers()
                .get("if-match")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            delete(api, &app, store, key, etag, &query).await
        }
        (_, ["publish", "bulk", pubsub, topic @ ..]) if writes && !topic.is_empty() => {
            let (pubsub, topic, meta) =
                (pubsub.to_string(), topic.join("/"), query.metadata.clone());
            with_body(api, req, |b| {
                bulk_publish(api, &app, pubsub, topic, b, meta)
            })
            .await
        }
        ("v1.0", ["publish", pubsub, topic @ ..]) if writes => {
            let request = PublishRequest {
                pubsub: pubsub.to_string(),
                topic: topic.join("/"),
                content_type: header(&req, "content-type").unwrap_or_default(),
                metadata: query.metadata.clone(),
                traceparent: header(&req, "traceparent"),
                tracestate: header(&req, "tracestate"),
                ..PublishRequest::default()
            };
            with_body(api, req, |data| publish(api, &app, request, data)).await
        }
        ("v1.0", ["bindings", name]) if writes => {
            let name = name.to_string();
            let trace = (header(&req, "traceparent"), header(&req, "tracestate"));
            with_body(api, req, |b| binding(api, &app, name, b, trace)).await
        }
        ("v1.0", ["metadata"]) if method == Method::GET => metadata(api, &app),
        _ => reply(404, Some("text/plain"), "404 page not found\n"),
    }
}

fn header<B>(req: &hyper::Request<B>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .filter(|v| !v.is_empty())
}

/// Reads the body (bounded) and hands it on; an oversized or broken body is a 4xx.
async fn with_body<B: RequestBody, F, Fut>(api: &DaprApi, req: hyper::Request<B>, then: F) -> Reply
where
    F: FnOnce(Bytes) -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let read = Limited::new(req.into_body(), MAX_BODY).collect();
    // A caller that stalls its body would hold a connection and a task for ever.
    let Ok(read) = tokio::time::timeout(api.limits.body_read_timeout, read).await else {
        return legacy(
            408,
            "ERR_MALFORMED_REQUEST",
            format!(
                "failed reading the request body: not complete within {:?}",
                api.limits.body_read_timeout
            ),
        );
    };
    match read {
        Ok(b) => then(b.to_bytes()).await,
        Err(e) => {
            let too_large = e.is::<http_body_util::LengthLimitError>();
            legacy(
                if too_large { 413 } else { 400 },
                "ERR_MALFORMED_REQUEST",
                format!("failed reading the request body: {e}"),
            )
        }
    }
}

/// `metadata.<key>` query parameters (first value wins), and the few plain ones.
#[derive(Default)]
struct Query {
    metadata: Vec<(String, String)>,
    plain: Vec<(String, String)>,
}

impl Query {
    fn parse(q: Option<&str>) -> Query {
        let mut out = Query::default();
        for pair in q.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (query_unescape(k), query_unescape(v));
            match k.strip_prefix("metadata.") {
                Some(m) => {
                    if !out.metadata.iter().any(|(e, _)| e == m) {
                        out.metadata.push((m.to_owned(), v));
                    }
                }
                None => out.plain.push((k, v)),
            }
        }
        out
    }
    fn get(&self, k: &str) -> &str {
        self.plain
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }
}

/// Go's `url.QueryUnescape`: `%XX` decoded, `+` a space.
fn query_unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(x) => {
                        out.push(x);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A JSON object member looked up as mapstructure does: case-insensitively.
fn member<'a>(o: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    o.get(name).or_else(|| {
        o.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

fn string_map(v: Option<&Value>) -> Vec<(String, String)> {
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

/// One state item of a save or transaction body; `value` is re-encoded JSON.
fn state_item(o: &serde_json::Map<String, Value>) -> Result<StateItem, String> {
    let etag = match member(o, "etag") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("etag must be a string".into()),
    };
    let options = member(o, "options").and_then(Value::as_object);
    let option = |k: &str| {
        options
            .and_then(|opts| member(opts, k))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Ok(StateItem {
        key: member(o, "key")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        value: Bytes::from(
            serde_json::to_vec(member(o, "value").unwrap_or(&Value::Null)).expect("JSON"),
        ),
        json: true,
        etag,
        concurrency: option("concurrency"),
        consistency: option("consistency"),
        metadata: string_map(member(o, "metadata")),
    })
}

async fn save(
    api: &DaprApi,
    app: &DaprApp,
    store: &str,
    body: Bytes,
    query_meta: Vec<(String, String)>,
) -> Reply {
    let items: Vec<serde_json::Map<String, Value>> = match serde_json::from_slice(&body) {
        Ok(i) => i,
        Err(e) => return legacy(400, "ERR_MALFORMED_REQUEST", e.to_string()),
    };
    let mut parsed = Vec::with_capacity(items.len());
    for o in &items {
        let mut item = match state_item(o) {
            Ok(i) => i,
            Err(e) => return legacy(400, "ERR_MALFORMED_REQUEST", e),
        };
        if item.key.is_empty() {
            return legacy(
                400,
                "ERR_MALFORMED_REQUEST",
                "\"key\" is a required field".into(),
            );
        }
        // Query metadata wins over the item's.
        item.metadata.extend(query_meta.iter().cloned());
        parsed.push(item);
    }
    match api.save_state(app, store, parsed).await {
        Ok(()) => no_content(),
        Err(e) => error_reply(&e),
    }
}

async fn get(api: &DaprApi, app: &DaprApp, store: &str, key: &str, query: &Query) -> Reply {
    match api
        .get_state(app, store, key, query.get("consistency"))
        .await
    {
        Ok(None) => no_content(),
        Ok(Some(item)) => {
            let headers = [("content-type".to_owned(), "application/json")]
                .into_iter()
                .chain(item.etag.as_deref().map(|e| ("etag".to_owned(), e)))
                .chain(
                    item.metadata
                        .iter()
                        .map(|(k, v)| (format!("metadata.{k}"), v.as_str())),
                );
            reply_with(200, headers, item.data)
        }
        Err(e) => error_reply(&e),
    }
}

async fn delete(
    api: &DaprApi,
    app: &DaprApp,
    store: &str,
    key: &str,
    etag: Option<String>,
    query: &Query,
) -> Reply {
    let item = StateItem {
        key: key.to_owned(),
        etag,
        concurrency: query.get("concurrency").to_owned(),
        consistency: query.get("consistency").to_owned(),
        metadata: query.metadata.clone(),
        ..StateItem::default()
    };
    match api.delete_state(app, store, item).await {
        Ok(()) => no_content(),
        Err(e) => error_reply(&e),
    }
}

async fn bulk_get(api: &DaprApi, app: &DaprApp, store: &str, body: Bytes) -> Reply {
    #[derive(serde::Deserialize)]
    struct BulkGet {
        #[serde(default)]
        keys: Vec<String>,
        #[serde(default)]
        parallelism: i64,
    }
    let request: BulkGet = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return legacy(
                400,
                "ERR_MALFORMED_REQUEST",
                format!("failed deserializing HTTP body: {e}"),
            )
        }
    };
    let items = match api
        .get_bulk_state(
            app,
            store,
            request.keys,
            request.parallelism.max(0) as usize,
        )
        .await
    {
        Ok(i) => i,
        Err(e) => return error_reply(&e),
    };
    #[derive(serde::Serialize)]
    struct Item<'a> {
        key: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<&'a RawValue>,
        #[serde(skip_serializing_if = "Option::is_none")]
        etag: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        metadata: Option<BTreeMap<&'a str, &'a str>>,
        #[serde(skip_serializing_if = "str::is_empty")]
        error: &'a str,
    }
    let mut out = Vec::with_capacity(items.len());
    let raws: Vec<Option<Result<&RawValue, ()>>> = items
        .iter()
        .map(|i| match &i.result {
            Ok(Some(found)) => Some(
                std::str::from_utf8(&found.data)
                    .ok()
                    .and_then(|s| serde_json::from_str::<&RawValue>(s).ok())
                    .ok_or(()),
            ),
            _ => None,
        })
        .collect();
    for (i, raw) in items.iter().zip(&raws) {
        if let Some(Err(())) = raw {
            // daprd's encoder fails on a value that is not JSON and answers with no body.
            tracing::warn!(app = %app.app_id, key = %i.key, "bulk get over HTTP: a stored value is not JSON; answering with an empty body as daprd does");
            return reply(200, Some("application/json"), Bytes::new());
        }
        let (etag, metadata, error) = match &i.result {
            Ok(Some(found)) => (
                found.etag.as_deref(),
                (!found.metadata.is_empty()).then(|| {
                    found
                        .metadata
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect()
                }),
                "",
            ),
            Ok(None) => (None, None, ""),
            Err(e) => (None, None, e.as_str()),
        };
        out.push(Item {
            key: &i.key,
            data: raw.as_ref().and_then(|r| r.ok()),
            etag,
            metadata,
            error,
        });
    }
    reply(
        200,
        Some("application/json"),
        serde_json::to_vec(&out).expect("JSON"),
    )
}

async fn transaction(api: &DaprApi, app: &DaprApp, store: &str, body: Bytes) -> Reply {
    let malformed = |e: String| {
        legacy(
            400,
            "ERR_MALFORMED_REQUEST",
            format!("failed deserializing HTTP body: {e}"),
        )
    };
    let parsed: serde_json::Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return malformed(e.to_string()),
    };
    let mut ops = Vec::new();
    for op in member(&parsed, "operations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(op) = op.as_object() else {
            return malformed("an operation must be an object".into());
        };
        let kind = member(op, "operation")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let request = member(op, "request")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        match state_item(&request) {
            Ok(item) => ops.push((kind, item)),
            Err(e) => return malformed(e),
        }
    }
    match api.execute_state_transaction(app, store, ops).await {
        Ok(()) => no_content(),
        Err(e) => error_reply(&e),
    }
}

async fn publish(api: &DaprApi, app: &DaprApp, mut request: PublishRequest, data: Bytes) -> Reply {
    request.data = data;
    match api.publish(app, request).await {
        Ok(()) => no_content(),
        Err(e) => error_reply(&e),
    }
}

async fn bulk_publish(
    api: &DaprApi,
    app: &DaprApp,
    pubsub: String,
    topic: String,
    body: Bytes,
    metadata: Vec<(String, String)>,
) -> Reply {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Entry {
        #[serde(default)]
        entry_id: String,
        #[serde(default)]
        event: Value,
        #[serde(default)]
        content_type: String,
        #[serde(default)]
        metadata: Option<BTreeMap<String, String>>,
    }
    let malformed = |m: String| {
        error_reply(&ApiError::rich(
            tonic::Code::InvalidArgument,
            400,
            "ERR_PUBSUB_EVENTS_SER",
            "DAPR_PUBSUB_MARSHAL_EVENTS",
            m,
        ))
    };
    let entries: Vec<Entry> = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => return malformed(format!("failed deserializing HTTP body: {e}")),
    };
    let mut converted = Vec::with_capacity(entries.len());
    for e in entries {
        let media = super::cloudevent::media_type(&e.content_type);
        let event = match (media.as_str(), &e.event) {
            ("application/octet-stream", Value::String(s)) => {
                match base64::engine::general_purpose::STANDARD.decode(s) {
                    Ok(b) => Bytes::from(b),
                    Err(err) => return malformed(format!("entry {}: {err}", e.entry_id)),
                }
            }
            (m, Value::String(s)) if m.starts_with("text/") || m == "application/xml" => {
                Bytes::from(s.clone())
            }
            (m, _) if m.starts_with("text/") || m == "application/xml" => {
                return malformed(format!(
                    "entry {}: the event must be a JSON string",
                    e.entry_id
                ))
            }
            ("application/json" | "application/cloudevents+json", v) => {
                match super::cloudevent::canonical(&v.to_string()) {
                    Ok(s) => Bytes::from(s),
                    Err(err) => return malformed(err),
                }
            }
            (other, _) => {
                return malformed(format!(
                    "entry {}: content type {other:?} is not supported for bulk publish",
                    e.entry_id
                ))
            }
        };
        converted.push(BulkEntry {
            entry_id: e.entry_id,
            event,
            content_type: e.content_type,
            metadata: e.metadata.map(|m| m.into_iter().collect()),
        });
    }
    match api
        .bulk_publish(app, &pubsub, &topic, converted, metadata, false)
        .await
    {
        Ok(failed) if failed.is_empty() => no_content(),
        Ok(failed) => {
            let body = serde_json::json!({
                "failedEntries": failed.iter().map(|(id, e)| serde_json::json!({"entryId": id, "error": e})).collect::<Vec<_>>(),
                "errorCode": "ERR_PUBSUB_PUBLISH_MESSAGE",
            });
            // The error text may carry a caller's topic: control characters become spaces.
            let first: String = failed
                .first()
                .map(|(_, e)| e.as_str())
                .unwrap_or_default()
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            reply_with(
                500,
                [
                    ("content-type", "application/json"),
                    ("metadata.error", first.as_str()),
                ],
                body.to_string(),
            )
        }
        Err(e) => error_reply(&e),
    }
}

async fn binding(
    api: &DaprApi,
    app: &DaprApp,
    name: String,
    body: Bytes,
    trace: (Option<String>, Option<String>),
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
    for (k, v) in [("traceparent", trace.0), ("tracestate", trace.1)] {
        if let Some(v) = v {
            if !metadata.iter().any(|(m, _)| m == k) {
                metadata.push((k.to_owned(), v));
            }
        }
    }
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

fn metadata(api: &DaprApi, app: &DaprApp) -> Reply {
    let components: Vec<Value> = api
        .components(app)
        .into_iter()
        .map(|(name, kind, version, caps)| {
            serde_json::json!({"name": name, "type": kind, "version": version, "capabilities": caps})
        })
        .collect();
    let body = serde_json::json!({
        "id": app.app_id,
        "runtimeVersion": super::RUNTIME_VERSION,
        "enabledFeatures": [],
        "components": components,
        "extended": {},
        "subscriptions": [],
        "httpEndpoints": [],
    });
    reply(200, Some("application/json"), body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_leaves_out_headers_a_store_or_broker_shaped_badly_and_never_fails() {
        let r = reply_with(
            200,
            [
                ("etag", "bad\u{1}etag"),
                ("metadata.ok", "fine"),
                ("metadata.bad name", "v"),
                ("metadata.error", "line\r\nbreak"),
            ],
            "x",
        );
        assert_eq!(r.status(), 200);
        let names: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["metadata.ok"]);
        assert_eq!(reply(1000, None, "").status(), 500, "an impossible status");
    }

    #[test]
    fn route_parameters_are_query_unescaped_as_go_does() {
        assert_eq!(query_unescape("a+b%2Fc"), "a b/c");
        assert_eq!(query_unescape("100%"), "100%");
        assert_eq!(query_unescape("%zz"), "%zz");
        let q = Query::parse(Some(
            "metadata.ttlInSeconds=60&metadata.ttlInSeconds=9&consistency=strong",
        ));
        assert_eq!(
            q.metadata,
            vec![("ttlInSeconds".to_owned(), "60".to_owned())]
        );
        assert_eq!(q.get("consistency"), "strong");
    }
}
