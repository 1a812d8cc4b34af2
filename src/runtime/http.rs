//! Dapr's HTTP API (`/v1.0/...`) on HTTP/1.1: the routes Dapr SDKs and `curl` users call
//! for state, publish, output bindings, invocation, secrets, metadata and health, with
//! daprd's statuses, headers and bodies: authenticate, admit, route to the building
//! block's handler (`handlers/`).

use super::error::ApiError;
use super::handlers::{bindings, invoke, metadata, publish, secrets, state};
use super::invoke_api::InvokeCall;
use super::publish_api::PublishRequest;
use super::surface::{Trace, MAX_BODY};
use super::DaprApi;
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use std::net::SocketAddr;
use std::sync::Arc;

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

pub(crate) fn reply(status: u16, content_type: Option<&str>, body: impl Into<Bytes>) -> Reply {
    reply_with(status, content_type.map(|ct| ("content-type", ct)), body)
}

/// A reply whose headers may come from a caller, a store or a broker (ETags, metadata,
/// error text): one that is not valid HTTP is left out, so no input can fail a reply.
pub(crate) fn reply_with<N: AsRef<str>, V: AsRef<str>>(
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

pub(crate) fn no_content() -> Reply {
    reply(204, None, Bytes::new())
}

pub(crate) fn error_reply(e: &ApiError) -> Reply {
    reply(e.http, Some("application/json"), e.http_body())
}

pub(crate) fn legacy(status: u16, code: &'static str, message: String) -> Reply {
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
        // daprd's fallback route: any other path with a `dapr-app-id` header is an
        // invocation of that path on that app.
        None if req.headers().contains_key("dapr-app-id") => ("", ""),
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
    let by_header = header(&req, "dapr-app-id").filter(|_| version.is_empty());
    let invoked = by_header
        .map(|id| (id, path.trim_start_matches('/').to_owned()))
        .or_else(|| {
            (version == "v1.0")
                .then(|| invoke::target_and_method(rest))
                .flatten()
        });
    if let Some((id, method)) = invoked {
        let call = InvokeCall {
            method,
            verb: req.method().as_str().to_ascii_uppercase(),
            query: req.uri().query().unwrap_or_default().to_owned(),
            content_type: header(&req, "content-type").unwrap_or_default(),
            headers: req
                .headers()
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                .collect(),
            body: Bytes::new(),
        };
        return with_body(api, req, |b| invoke::http_invoke(api, &app, id, call, b)).await;
    }
    let segments: Vec<String> = rest.split('/').map(query_unescape).collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method().clone();
    let writes = method == Method::POST || method == Method::PUT;
    let query = Query::parse(req.uri().query());
    match (version, segs.as_slice()) {
        ("v1.0", ["state", store, "bulk"]) if writes => {
            with_body(api, req, |b| state::http_get_bulk(api, &app, store, b)).await
        }
        ("v1.0", ["state", store, "transaction"]) if writes => {
            with_body(api, req, |b| state::http_transaction(api, &app, store, b)).await
        }
        ("v1.0", ["state", store]) if writes => {
            let meta = query.metadata.clone();
            with_body(api, req, |b| state::http_save(api, &app, store, b, meta)).await
        }
        ("v1.0", ["state", store, key]) if method == Method::GET => {
            state::http_get(api, &app, store, key, &query).await
        }
        ("v1.0", ["state", store, key]) if method == Method::DELETE => {
            let etag = header(&req, "if-match");
            state::http_delete(api, &app, store, key, etag, &query).await
        }
        (_, ["publish", "bulk", pubsub, topic @ ..]) if writes && !topic.is_empty() => {
            let (pubsub, topic, meta) =
                (pubsub.to_string(), topic.join("/"), query.metadata.clone());
            with_body(api, req, |b| {
                publish::http_bulk_publish(api, &app, pubsub, topic, b, meta)
            })
            .await
        }
        ("v1.0", ["publish", pubsub, topic @ ..]) if writes => {
            let request = PublishRequest {
                pubsub: pubsub.to_string(),
                topic: topic.join("/"),
                content_type: header(&req, "content-type").unwrap_or_default(),
                metadata: query.metadata.clone(),
                trace: Trace::of(req.headers()),
                ..PublishRequest::default()
            };
            with_body(api, req, |data| {
                publish::http_publish(api, &app, request, data)
            })
            .await
        }
        ("v1.0", ["bindings", name]) if writes => {
            let (name, trace) = (name.to_string(), Trace::of(req.headers()));
            with_body(api, req, |b| {
                bindings::http_invoke(api, &app, name, b, trace)
            })
            .await
        }
        ("v1.0", ["secrets", store, "bulk"]) if method == Method::GET => {
            secrets::http_get_bulk(api, &app, store, &query).await
        }
        ("v1.0", ["secrets", store, key]) if method == Method::GET => {
            secrets::http_get(api, &app, store, key, &query).await
        }
        ("v1.0", ["metadata"]) if method == Method::GET => metadata::http_get(api, &app),
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
pub(crate) struct Query {
    pub(crate) metadata: Vec<(String, String)>,
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
    pub(crate) fn get(&self, k: &str) -> &str {
        self.plain
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }
}

/// Go's `url.QueryUnescape`: `%XX` decoded, `+` a space.
pub(crate) fn query_unescape(s: &str) -> String {
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
