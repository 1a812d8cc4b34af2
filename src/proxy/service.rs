use super::context::RequestCtx;
use super::stats::{FunctionStats, RequestSeries};
use super::{headers, mirror};
use crate::activator::{Activator, Held};
use crate::plan::{ServiceEndpoints, ServiceKey};
use crate::plan_swap::SharedPlan;
use crate::routing::{RequestView, Rule};
use crate::telemetry::Metrics;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::ServerSession as HttpSession;
use pingora::protocols::{SocketDigest, ALPN};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct ProxyLimits {
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub connect_timeout: Duration,
    pub upstream_read_timeout: Option<Duration>,
}

/// The gateway for HTTP-triggered functions.
pub struct FunctionProxy {
    pub plan: SharedPlan,
    pub metrics: Arc<Metrics>,
    pub limits: ProxyLimits,
    /// Where requests for a function with no ready endpoint wait.
    pub activator: Arc<Activator>,
    /// The series of requests no route matched.
    pub unrouted: RequestSeries,
    /// Counts requests in flight for the shutdown drain; says when it has begun.
    pub drain: Arc<crate::drain::Drain>,
    /// `fngate_http_requests_by_path_total{path="pingora_proxy"}`.
    pub served: prometheus::IntCounter,
}

/// Borrowed view of a pingora request for the route table.
pub(super) struct PingoraRequest<'a>(pub(super) &'a RequestHeader);

impl RequestView for PingoraRequest<'_> {
    fn method(&self) -> &str {
        self.0.method.as_str()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.0.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn query(&self) -> Option<&str> {
        self.0.uri.query()
    }
}

pub(super) fn request_host(req: &RequestHeader) -> &str {
    req.headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
}

/// The port named in a Host value, if any.
fn host_port(host: &str) -> Option<u16> {
    let after = match host.rfind(']') {
        Some(i) => &host[i + 1..],
        None => host,
    };
    after.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

fn host_without_port(host: &str) -> &str {
    match host_port(host) {
        Some(_) => &host[..host.rfind(':').unwrap_or(host.len())],
        None => host,
    }
}

/// Whether the request announces a body (chunked, or a non-zero Content-Length).
fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v != "0")
}

/// Whether the client speaks gRPC: then fngate's own errors must be gRPC statuses, or the
/// client reports a bare protocol error instead of what happened.
fn is_grpc(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC status for an HTTP status fngate answers with (the mapping of gRPC's
/// "HTTP to gRPC Status Code Mapping", size limits as RESOURCE_EXHAUSTED).
fn grpc_code(http_status: u16) -> u8 {
    match http_status {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        413 | 431 => 8,        // RESOURCE_EXHAUSTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

/// Whether an HTTP/1 request target is one fngate may forward as it is (RFC 9112 §3.2):
/// origin-form (`/path?query`), absolute-form (`http://…`, `https://…`) or `*` for OPTIONS,
/// without whitespace or control bytes. pingora takes any token as a target (and escapes
/// spaces, `<>"` and controls inside one, as nginx accepts them): forwarded as it is, a
/// target in no form is read by a function as something else, or refused.
pub(super) fn valid_target(method: &http::Method, target: &[u8]) -> bool {
    let form_ok = match target.first() {
        Some(b'/') => true,
        Some(b'*') => target.len() == 1 && method == http::Method::OPTIONS,
        Some(_) => [&b"http://"[..], b"https://"].iter().any(|scheme| {
            target
                .get(..scheme.len())
                .is_some_and(|t| t.eq_ignore_ascii_case(scheme))
        }),
        None => false,
    };
    form_ok && target.iter().all(|&b| b > b' ' && b != 0x7f)
}

/// A trailers-only gRPC answer: HTTP 200, the status and message in the head.
async fn respond_grpc(session: &mut Session, http_status: u16, message: &str) -> Result<bool> {
    let mut resp = ResponseHeader::build(200, Some(3))?;
    resp.insert_header("content-type", "application/grpc")?;
    resp.insert_header("grpc-status", grpc_code(http_status).to_string())?;
    // grpc-message is percent-encoded: keep printable ASCII but '%'.
    let mut encoded = String::with_capacity(message.len());
    for b in message.trim_end().bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    resp.insert_header("grpc-message", encoded)?;
    // gRPC's Trailers-Only form is one HEADERS frame with END_STREAM. The proxy session's
    // writer sends the head without it and ends the stream with an empty DATA frame, which
    // grpc-go and C-core clients reject as a missing-trailers protocol error.
    match session.as_downstream_mut() {
        HttpSession::H2(h2) => h2.write_response_header(Box::new(resp), true)?,
        _ => session.write_response_header(Box::new(resp), true).await?,
    }
    Ok(true)
}

async fn respond(
    session: &mut Session,
    status: u16,
    extra: &[(&str, String)],
    body: &'static str,
) -> Result<bool> {
    if is_grpc(session.req_header()) {
        return respond_grpc(session, status, body).await;
    }
    let mut resp = ResponseHeader::build(status, Some(3 + extra.len()))?;
    resp.insert_header("content-type", "text/plain; charset=utf-8")?;
    resp.insert_header("content-length", body.len().to_string())?;
    for (name, value) in extra {
        resp.insert_header(name.to_string(), value.as_str())?;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only || body.is_empty())
        .await?;
    if !head_only && !body.is_empty() {
        session
            .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
            .await?;
    }
    Ok(true)
}

impl FunctionProxy {
    /// While draining, an HTTP/1 response says `Connection: close` and the connection ends
    /// after it (HTTP/2 clients get GOAWAY from pingora).
    fn close_if_draining(&self, session: &mut Session) {
        if self.drain.is_draining() {
            session.set_keepalive(None);
        }
    }

    /// `rule`'s Function's metric series and activity counter.
    fn stats<'r>(&self, rule: &'r Rule) -> &'r FunctionStats {
        FunctionStats::of(rule, &self.metrics, &self.activator)
    }

    /// Limits that are checked before routing: 400 for a request target that is not one
    /// (see `valid_target`), 431, and 413 by Content-Length.
    async fn check_limits(&self, session: &mut Session) -> Result<Option<bool>> {
        let req = session.req_header();
        if !session.is_http2() && !valid_target(&req.method, req.raw_path()) {
            return respond(session, 400, &[], "malformed request target\n")
                .await
                .map(Some);
        }
        if headers::header_bytes(&req.headers) > self.limits.max_header_bytes {
            return respond(session, 431, &[], "request header fields too large\n")
                .await
                .map(Some);
        }
        let declared = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.limits.max_body_bytes) {
            return respond(session, 413, &[], "request body too large\n")
                .await
                .map(Some);
        }
        Ok(None)
    }

    /// Finds the rule; answers 404, redirects and backend errors locally.
    async fn route(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let plan = ctx.plan.clone();
        let req = session.req_header();
        let host = request_host(req);
        let path = req.uri.path();
        let Some(hit) = plan.routes.find(host, path, &PingoraRequest(req)) else {
            return respond(session, 404, &[], "no route for this host and path\n").await;
        };
        let rule: Arc<Rule> = hit.rule.clone();
        // Only redirects and rewrites read it: no copy for a plain rule.
        if rule.filters.is_some() {
            ctx.matched_prefix = hit.matched_prefix.map(Arc::from);
        }
        ctx.rule = Some(rule.clone());

        if let Some(redirect) = rule.redirect() {
            let scheme = if ctx.tls { "https" } else { "http" };
            let location = redirect.location(
                scheme,
                host_without_port(host),
                host_port(host),
                path,
                req.uri.query(),
                ctx.matched_prefix.as_deref(),
            );
            return respond(session, redirect.status, &[("location", location)], "").await;
        }

        let (index, endpoints) = match choose_backend(&plan, &rule) {
            Ok(chosen) => chosen,
            Err(message) => return respond(session, 500, &[], message).await,
        };
        ctx.backend = index;
        let cold = endpoints.ready.is_empty();
        ctx.endpoints = Some(endpoints);
        if cold {
            return self.hold(session, ctx, &rule).await;
        }
        ctx.running = Some(self.stats(&rule).running());
        self.mirror(session, ctx, &rule);
        Ok(false)
    }

    /// Scale from zero: waits, before the body is read, for the chosen backend's Service
    /// to get a ready endpoint. A client without a body that hangs up frees its slot.
    async fn hold(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        rule: &Arc<Rule>,
    ) -> Result<bool> {
        // A draining fngate holds a request while the platform may still start the function,
        // then hands it back before the process exits.
        let wait = async {
            tokio::select! {
                held = wait_for_endpoint(&self.activator, rule, ctx.backend, None) => Some(held),
                _ = self.drain.held_requests_deadline() => None,
            }
        };
        let client_left = || {
            Error::e_explain(
                ErrorType::ConnectionClosed,
                "client left while waiting for a ready endpoint",
            )
            .map_err(|mut e: Box<Error>| {
                e.esource = ErrorSource::Downstream;
                e
            })
        };
        let held = if let Some(closed) = session.downstream_session.watch_h2_stream_close() {
            // An HTTP/2 client gives up on a stream with RST_STREAM, not by closing the
            // connection: watch the stream, without reading its body.
            tokio::select! {
                held = wait => held,
                _ = closed => return client_left(),
            }
        } else if ctx.has_body {
            // The body must stay unread for the function: the socket's TCP state tells a
            // hang-up instead.
            let socket = session.digest().and_then(|d| d.socket_digest.clone());
            tokio::select! {
                held = wait => held,
                _ = hung_up(socket) => return client_left(),
            }
        } else {
            tokio::select! {
                held = wait => held,
                _ = session.downstream_session.read_body_or_idle(true) => return client_left(),
            }
        };
        let Some(held) = held else {
            return respond(
                session,
                503,
                &[("retry-after", "1".into())],
                "fngate is shutting down; retry\n",
            )
            .await;
        };
        match held {
            Held::Ready(endpoints, permit, running) => {
                ctx.endpoints = Some(endpoints);
                ctx.release_permit = permit;
                ctx.running = Some(running);
                self.mirror(session, ctx, rule);
                Ok(false)
            }
            Held::Overflow => {
                respond(
                    session,
                    503,
                    &[("retry-after", "1".into())],
                    "too many requests are waiting for this function to start\n",
                )
                .await
            }
            Held::TimedOut => {
                respond(
                    session,
                    504,
                    &[],
                    "no endpoint of the function became ready in time\n",
                )
                .await
            }
        }
    }

    fn mirror(&self, session: &Session, ctx: &mut RequestCtx, rule: &Rule) {
        if rule.mirrors().is_empty() {
            return;
        }
        let has_body = ctx.has_body;
        let mut copy = session.req_header().clone();
        if let Some(edits) = rule.request_headers() {
            let _ = headers::apply_edits(&mut copy, edits);
        }
        let host = request_host(session.req_header()).to_owned();
        for target in rule.mirrors() {
            if let Some(addr) = ctx
                .plan
                .endpoints
                .for_target(target)
                .and_then(|e| e.pick(0, target.port))
            {
                ctx.mirrors.push(mirror::send(addr, &copy, &host, has_body));
            }
        }
    }
}

/// The backend of `rule` this request goes to (the weighted pick) and its Service's
/// endpoints, on either path; else the 500 fngate answers, as its message.
pub(super) fn choose_backend(
    plan: &crate::plan::Plan,
    rule: &Rule,
) -> std::result::Result<(usize, Arc<ServiceEndpoints>), &'static str> {
    let total = rule.total_weight();
    if total == 0 {
        return Err("route has no backend with a non-zero weight\n");
    }
    let roll = if rule.backends.len() == 1 {
        0
    } else {
        rule.next_pick.next_roll(total)
    };
    let index = rule.pick_backend_index(roll).ok_or("no backend\n")?;
    let endpoints = plan
        .endpoints
        .for_target(&rule.backends[index].target)
        .cloned()
        .ok_or("backend Service has no EndpointSlice\n")?;
    Ok((index, endpoints))
}

/// The status fngate answers a failed request with, on either path (0: the client left,
/// no one to answer).
pub(super) fn error_status(etype: &ErrorType, source: &ErrorSource) -> u16 {
    match etype {
        ErrorType::HTTPStatus(code) => *code,
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
        _ => match source {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match etype {
                // The client went away (an HTTP/2 client resets its stream).
                ErrorType::WriteError
                | ErrorType::ReadError
                | ErrorType::ConnectionClosed
                | ErrorType::H2Error => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

/// What fngate does to a request head on its way to a function, on either path: the
/// hop-by-hop headers out, the forwarding headers in, the route's rewrite and header edits.
pub(super) fn forward_request_head(
    upstream: &mut RequestHeader,
    rule: &Rule,
    client_host: &str,
    client_ip: Option<std::net::IpAddr>,
    tls: bool,
    matched_prefix: Option<&str>,
) -> Result<()> {
    headers::strip_request_hop_by_hop(upstream);
    headers::set_forwarded(upstream, client_ip, tls, client_host)?;
    if let Some(rewrite) = rule.rewrite() {
        if let Some(path_rw) = &rewrite.path {
            let new_path = path_rw.apply(upstream.uri.path(), matched_prefix);
            let uri = match upstream.uri.query() {
                Some(q) => format!("{new_path}?{q}"),
                None => new_path,
            };
            let uri: http::Uri = uri.parse().map_err(|_| {
                Error::explain(
                    ErrorType::InternalError,
                    "rewritten path is not a valid URI",
                )
            })?;
            upstream.set_uri(uri);
        }
        if let Some(h) = &rewrite.hostname {
            upstream.insert_header("host", h.as_str())?;
        }
    }
    if let Some(edits) = rule.request_headers() {
        headers::apply_edits(upstream, edits)?;
    }
    Ok(())
}

/// What fngate does to a function's response head on its way to the client, on either path.
pub(super) fn forward_response_head(
    upstream: &mut ResponseHeader,
    rule: Option<&Rule>,
) -> Result<()> {
    headers::strip_response_hop_by_hop(upstream);
    if let Some(edits) = rule.and_then(|r| r.response_headers()) {
        headers::apply_edits(upstream, edits)?;
    }
    Ok(())
}

/// Time to wait on the function between reads: the route's timeouts, else fngate's.
pub(super) fn upstream_read_timeout(rule: &Rule, limits: &ProxyLimits) -> Option<Duration> {
    let route_limit = match (rule.timeouts.request, rule.timeouts.backend_request) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    route_limit.or(limits.upstream_read_timeout)
}

/// Waits in the activator for backend `backend` of `rule` to have a ready endpoint
/// (`refused`: the endpoints that just refused this request).
pub(super) async fn wait_for_endpoint(
    activator: &Activator,
    rule: &Rule,
    backend: usize,
    refused: Option<&Arc<ServiceEndpoints>>,
) -> Held {
    let target = &rule.backends[backend].target;
    let service = ServiceKey {
        namespace: target.namespace.to_string(),
        name: target.service.to_string(),
    };
    let labels = [&*rule.function.namespace, &*rule.function.name];
    activator
        .hold(&service, target.port, labels, refused, &rule.hold)
        .await
}

/// Concurrent requests on one h2c connection to a function.
const H2C_STREAMS_PER_CONNECTION: usize = 100;

/// How often a waiting request with a body checks whether its client is still there.
const HANG_UP_CHECK: Duration = Duration::from_millis(50);

/// Resolves once the client's TCP connection is no longer established (it sent FIN or
/// RST); never when the socket cannot be inspected.
async fn hung_up(socket: Option<Arc<SocketDigest>>) {
    // Linux `TCP_ESTABLISHED`.
    const ESTABLISHED: u8 = 1;
    let Some(socket) = socket else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(HANG_UP_CHECK).await;
        match socket.tcp_info() {
            Some(info) if info.tcpi_state != ESTABLISHED => return,
            Some(_) => {}
            None => return std::future::pending().await,
        }
    }
}

#[async_trait]
impl ProxyHttp for FunctionProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.plan.load_full(), self.drain.request())
    }

    /// No modules: pingora's default is a response compressor that is disabled yet still
    /// allocated and called on every request.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // HTTP/1.1 pipelining (RFC 9112 §9.3.2): a request sent before the previous answer
        // is served after it, in order, instead of the connection being closed with the
        // request lost — and, where pingora had rewritten the request line (an escaped
        // target), instead of the answer the function gave being replaced by a 400.
        session.downstream_session.set_pipelining_enabled(true);
        self.close_if_draining(session);
        ctx.tls = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .is_some();
        ctx.has_body = if session.is_http2() {
            // HTTP/2 announces a body by not ending the stream with the head.
            !session.downstream_session.is_body_empty()
        } else {
            has_body(session.req_header())
        };
        if let Some(done) = self.check_limits(session).await? {
            return Ok(done);
        }
        self.route(session, ctx).await
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        for m in &mut ctx.mirrors {
            m.tee(body.as_ref().unwrap_or(&Bytes::new()), end_of_stream);
        }
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > self.limits.max_body_bytes {
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    "request body larger than limits.max_body_bytes",
                );
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let rule = ctx
            .rule
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no rule"))?;
        let target = &rule.backends[ctx.backend].target;
        if let Some(refused) = ctx
            .endpoints
            .clone()
            .filter(|eps| ctx.failed_attempts > 0 && ctx.failed_attempts >= eps.ready.len())
        {
            // Every ready endpoint refused before anything was sent: the function went
            // away under this request. Wait for it as for a cold function.
            match wait_for_endpoint(&self.activator, rule, ctx.backend, Some(&refused)).await {
                // Already counted as running since it first started.
                Held::Ready(endpoints, permit, _) => {
                    ctx.endpoints = Some(endpoints);
                    ctx.release_permit = permit.or(ctx.release_permit.take());
                    ctx.failed_attempts = 0;
                }
                Held::Overflow => {
                    return Error::e_explain(
                        ErrorType::HTTPStatus(503),
                        "too many requests are waiting for this function to start",
                    )
                }
                Held::TimedOut => {
                    return Error::e_explain(
                        ErrorType::HTTPStatus(504),
                        "no endpoint of the function became ready in time",
                    )
                }
            }
        }
        let upstream = ctx
            .endpoints
            .as_ref()
            .and_then(|e| e.pick_upstream(ctx.failed_attempts, target.port))
            .ok_or_else(|| {
                Error::explain(ErrorType::HTTPStatus(503), "function has no ready endpoint")
            })?;
        let mut peer = HttpPeer::new(upstream.addr, false, String::new());
        if rule.upstream_h2c.unwrap_or(upstream.h2c) {
            // HTTP/2 with prior knowledge; streams share connections.
            peer.options.alpn = ALPN::H2;
            peer.options.max_h2_streams = H2C_STREAMS_PER_CONNECTION;
        }
        peer.options.connection_timeout = Some(self.limits.connect_timeout);
        peer.options.read_timeout = upstream_read_timeout(rule, &self.limits);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let (ns, function) = ctx.function_labels();
        self.metrics
            .upstream_connect_errors
            .with_label_values(&[ns, function])
            .inc();
        ctx.failed_attempts += 1;
        // Nothing was sent yet: try the next endpoint, and when all refused, go back to
        // waiting (upstream_peer) rather than fail the request.
        e.set_retry(true);
        e
    }

    /// A function that dies with requests in flight closes their connections unanswered
    /// (its kernel may even accept new ones into the dead listener's backlog). A request
    /// that can be replayed safely — idempotent method, body still buffered, nothing
    /// answered yet — is replayed: on the next endpoint, or after waiting for one as for
    /// a cold function. Bounded, so a function that always hangs up still gets a 502.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        const MAX_UNANSWERED_REPLAYS: u8 = 3;
        let mut e = e.more_context(format!("Peer: {peer}"));
        let replayable = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated();
        let unanswered = e.esource() == &ErrorSource::Upstream
            && session.response_written().is_none()
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            );
        if !replayable {
            e.set_retry(false);
        } else if client_reused {
            // A pooled connection the function closed while idle says nothing about it.
            e.retry.decide_reuse(true);
            if unanswered {
                e.set_retry(true);
            }
        } else if unanswered && ctx.unanswered_replays < MAX_UNANSWERED_REPLAYS {
            ctx.unanswered_replays += 1;
            ctx.failed_attempts += 1;
            e.set_retry(true);
        } else {
            e.set_retry(false);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(rule) = ctx.rule.clone() else {
            return Ok(());
        };
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let host = request_host(session.req_header());
        forward_request_head(
            upstream,
            &rule,
            host,
            client_ip,
            ctx.tls,
            ctx.matched_prefix.as_deref(),
        )
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // The drain may have begun since the request arrived.
        self.close_if_draining(session);
        forward_response_head(upstream, ctx.rule.as_deref())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = error_status(e.etype(), e.esource());
        if code > 0 && session.response_written().is_none() {
            if is_grpc(session.req_header()) {
                let _ = respond_grpc(session, code, &e.to_string()).await;
            } else {
                let _ = session.respond_error(code).await;
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// A client that hangs up mid-request (or resets its HTTP/2 stream), or whose request
    /// fngate refused with a 4xx (a body over the limit), is its own business, not an
    /// error of ours.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        let client_left = error.esource() == &ErrorSource::Downstream
            && matches!(
                error.etype(),
                ErrorType::ConnectionClosed
                    | ErrorType::ReadError
                    | ErrorType::WriteError
                    | ErrorType::H2Error
            );
        let refused =
            matches!(error.etype(), ErrorType::HTTPStatus(code) if (400..500).contains(code));
        client_left || refused
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let series = match &ctx.rule {
            Some(rule) => &self.stats(rule).series,
            None => &self.unrouted,
        };
        series.record(status, ctx.started.elapsed().as_secs_f64());
        self.served.inc();
        let (ns, function) = ctx.function_labels();
        if let Some(e) = e {
            tracing::debug!(namespace = ns, function, status, error = %e, "request failed");
        }
    }
}
