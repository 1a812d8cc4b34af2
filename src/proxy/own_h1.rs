//! fngate's own HTTP/1.1 request loop on pingora-core's sessions: the common request —
//! routed to a ready HTTP/1 endpoint, a body of at most [`SMALL_BODY`] — is forwarded
//! here, upstream through a per-thread pool of idle connections, without pingora-proxy's
//! per-request orchestration (`docs/performance.md`). Everything else is handed to the
//! pingora-proxy service (`FunctionProxy`) on the same connection, unread: HTTP/2 (ALPN or
//! h2c), upgrades, `Expect`, streamed or large bodies, a function at zero (the hold),
//! mirrors, h2c functions, every answer fngate gives itself (404, redirects, limits), and
//! heads it cannot parse. A connection handed over stays on pingora-proxy.
//!
//! The hand-over replays the request exactly: this loop reads each head into a buffer of
//! its own and gives the session a copy as its pipelined prefix, so the bytes are still
//! there for pingora-proxy's session when the request is not one for this path.

use super::service::{
    choose_backend, error_status, forward_request_head, forward_response_head, request_host,
    upstream_read_timeout, valid_target, wait_for_endpoint, PingoraRequest, ProxyLimits,
};
use super::stats::FunctionStats;
use crate::activator::{Activator, Held, ReleasePermit};
use crate::drain::Drain;
use crate::plan::{ServiceEndpoints, Upstream};
use crate::plan_swap::SharedPlan;
use crate::routing::Rule;
use crate::telemetry::Metrics;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::http::RequestHeader;
use pingora::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora::protocols::http::v1::server::HttpSession as DownstreamSession;
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use pingora::{Error, ErrorType};
use prometheus::IntCounter;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// Largest request body (by Content-Length) this loop reads whole before forwarding it;
/// larger ones, and chunked ones, stream both ways at once on pingora-proxy.
pub const SMALL_BODY: u64 = 64 * 1024;

/// How long a client connection may sit idle between requests (pingora's own default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Idle connections kept per function endpoint and thread.
const POOL_PER_ENDPOINT: usize = 256;

/// Connection attempts per request before giving up (pingora-proxy's `max_retries`).
const MAX_ATTEMPTS: usize = 16;

/// Replays after a fresh connection closed without an answer (as `error_while_proxy`).
const MAX_UNANSWERED_REPLAYS: u8 = 3;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

thread_local! {
    /// Idle upstream connections of this thread, by endpoint: taken and given back
    /// without a lock, a task or a `getpeername`.
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

#[derive(Default)]
struct Pool {
    idle: HashMap<SocketAddr, Vec<Stream>>,
    releases: u32,
}

/// Releases between two sweeps of the whole pool.
const SWEEP_EVERY: u32 = 1024;

/// Gives an idle connection back to this thread's pool. Every [`SWEEP_EVERY`] releases
/// the pool drops the connections their function closed: an endpoint that went away
/// (a pod scaled down, replaced) is never asked for again, and its sockets would
/// otherwise stay open until the process ends.
fn release(addr: SocketAddr, stream: Stream) {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        pool.releases += 1;
        if pool.releases >= SWEEP_EVERY {
            pool.releases = 0;
            pool.idle.retain(|_, streams| {
                streams.retain_mut(still_open);
                !streams.is_empty()
            });
        }
        let idle = pool.idle.entry(addr).or_default();
        if idle.len() < POOL_PER_ENDPOINT {
            idle.push(stream);
        }
    });
}

/// Why a request went to pingora-proxy: the label of `fngate_http_handoffs_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandOff {
    Http2,
    Unparsed,
    Protocol,
    Body,
    LocalAnswer,
    Hold,
    Mirror,
    H2cUpstream,
}

impl HandOff {
    pub const ALL: [HandOff; 8] = [
        HandOff::Http2,
        HandOff::Unparsed,
        HandOff::Protocol,
        HandOff::Body,
        HandOff::LocalAnswer,
        HandOff::Hold,
        HandOff::Mirror,
        HandOff::H2cUpstream,
    ];

    pub fn label(self) -> &'static str {
        match self {
            HandOff::Http2 => "http2",
            HandOff::Unparsed => "unparsed_head",
            HandOff::Protocol => "upgrade_expect_or_connection",
            HandOff::Body => "streamed_body",
            HandOff::LocalAnswer => "local_answer",
            HandOff::Hold => "hold",
            HandOff::Mirror => "mirror",
            HandOff::H2cUpstream => "h2c_function",
        }
    }
}

/// The HTTP listeners' app: this loop for HTTP/1, pingora-proxy for the rest.
pub struct OwnHttp1 {
    proxy: Arc<HttpProxy<super::FunctionProxy>>,
    plan: SharedPlan,
    metrics: Arc<Metrics>,
    limits: ProxyLimits,
    activator: Arc<Activator>,
    drain: Arc<Drain>,
    h2c: bool,
    /// `fngate_http_requests_by_path_total{path="own_h1"}`.
    served: IntCounter,
    /// `fngate_http_handoffs_total`, by `HandOff::ALL`'s order.
    handoffs: Vec<IntCounter>,
}

/// A request this loop forwards: its route and upstream head, decided from the head alone.
struct Forward {
    rule: Arc<Rule>,
    backend: usize,
    endpoints: Arc<ServiceEndpoints>,
    /// The endpoint picked for the first attempt.
    first: Option<Upstream>,
    /// The head to send, until the first attempt takes it (a replay builds it again).
    head: Option<RequestHeader>,
    matched_prefix: Option<Arc<str>>,
    client_ip: Option<std::net::IpAddr>,
    tls: bool,
    /// Content-Length of the body (0: none).
    body_len: u64,
    read_timeout: Option<Duration>,
}

/// How an exchange left the client connection.
enum Exchanged {
    /// Answered; the connection may carry the next request.
    Done,
    /// The connection cannot go on (a half-written response, the client gone).
    Close,
}

/// Upstream failures before any answer reached the client.
#[derive(Debug)]
enum Failure {
    Connect(Box<Error>),
    /// Nothing came back: written to a connection that closed, or it closed unanswered.
    Unanswered(Box<Error>),
    /// Anything else (a timeout, an unparsable answer): not retried.
    Other(Box<Error>),
}

impl OwnHttp1 {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        proxy: Arc<HttpProxy<super::FunctionProxy>>,
        plan: SharedPlan,
        metrics: Arc<Metrics>,
        limits: ProxyLimits,
        activator: Arc<Activator>,
        drain: Arc<Drain>,
        h2c: bool,
    ) -> Self {
        let served = metrics.http_requests_by_path.with_label_values(&["own_h1"]);
        let handoffs = HandOff::ALL
            .iter()
            .map(|h| metrics.http_handoffs.with_label_values(&[h.label()]))
            .collect();
        OwnHttp1 {
            proxy,
            plan,
            metrics,
            limits,
            activator,
            drain,
            h2c,
            served,
            handoffs,
        }
    }

    fn count_handoff(&self, reason: HandOff) {
        // `ALL` lists the reasons in declaration order.
        self.handoffs[reason as usize].inc();
    }

    /// Serves HTTP/1 requests until the connection ends, or returns it, with the bytes
    /// of the request it did not take, for pingora-proxy.
    async fn serve(
        &self,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<(Stream, BytesMut, HandOff)> {
        let mut buf = BytesMut::new();
        let mut copy: Vec<u8> = Vec::new();
        let mut stopping = shutdown.clone();
        loop {
            match read_head(
                &mut stream,
                &mut buf,
                &mut stopping,
                self.limits.max_header_bytes,
            )
            .await
            {
                HeadRead::Complete => {}
                HeadRead::Closed => return None,
                HeadRead::Unparsable => return Some((stream, buf, HandOff::Unparsed)),
            }
            copy.clear();
            copy.extend_from_slice(&buf);
            let mut down = DownstreamSession::new(stream);
            down.set_pipelined_prefix(std::mem::take(&mut buf));
            down.set_pipelining_enabled(true);
            let forward = match down.read_request().await {
                Ok(Some(_)) => self.decide(&down),
                _ => Err(HandOff::Unparsed),
            };
            let forward = match forward {
                Ok(f) => f,
                Err(reason) => {
                    return Some((down.into_inner(), BytesMut::from(&copy[..]), reason));
                }
            };
            self.served.inc();
            if self.drain.is_draining() || *shutdown.borrow() {
                down.set_server_keepalive(None);
            }
            if let Exchanged::Close = self.exchange(&mut down, forward).await {
                return None;
            }
            let (next, prefix) = down.reuse().await.ok()??.into_parts();
            stream = next;
            buf = prefix.unwrap_or_default();
        }
    }

    /// Whether this loop forwards the request, and how; else why pingora-proxy takes it.
    fn decide(&self, down: &DownstreamSession) -> Result<Forward, HandOff> {
        let req = down.req_header();
        let facts = HeadFacts::of(req);
        if !facts.forwardable(req) {
            return Err(HandOff::Protocol);
        }
        let body_len = match facts.content_length {
            Some(n) if n <= SMALL_BODY && n <= self.limits.max_body_bytes => n,
            // Chunked, or longer than this loop reads whole.
            _ if facts.transfer_encoding || facts.content_length.is_some() => {
                return Err(HandOff::Body)
            }
            // Several or unreadable lengths: pingora-proxy's session refuses what it must.
            _ if facts.content_lengths > 0 => return Err(HandOff::Body),
            _ => 0,
        };
        if !valid_target(&req.method, req.raw_path())
            || super::headers::header_bytes(&req.headers) > self.limits.max_header_bytes
        {
            return Err(HandOff::LocalAnswer);
        }
        let plan = self.plan.load();
        let host = request_host(req);
        let hit = plan
            .routes
            .find(host, req.uri.path(), &PingoraRequest(req))
            .ok_or(HandOff::LocalAnswer)?;
        let rule = hit.rule.clone();
        if rule.redirect().is_some() {
            return Err(HandOff::LocalAnswer);
        }
        if !rule.mirrors().is_empty() {
            return Err(HandOff::Mirror);
        }
        let (backend, endpoints) =
            choose_backend(&plan, &rule).map_err(|_| HandOff::LocalAnswer)?;
        let target = &rule.backends[backend].target;
        if endpoints.ready.is_empty() {
            return Err(HandOff::Hold);
        }
        // The round-robin pick itself: the first attempt goes where it says.
        let first = endpoints
            .pick_upstream(0, target.port)
            .ok_or(HandOff::LocalAnswer)?;
        if rule.upstream_h2c.unwrap_or(first.h2c) {
            return Err(HandOff::H2cUpstream);
        }
        // Only rewrites read it: no copy for a plain rule.
        let matched_prefix: Option<Arc<str>> = if rule.filters.is_some() {
            hit.matched_prefix.map(Arc::from)
        } else {
            None
        };
        let client_ip = down.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let tls = down.digest().ssl_digest.is_some();
        let head = upstream_head(req, &rule, matched_prefix.as_deref(), client_ip, tls)
            .map_err(|_| HandOff::LocalAnswer)?;
        let read_timeout = upstream_read_timeout(&rule, &self.limits);
        Ok(Forward {
            rule,
            backend,
            endpoints,
            first: Some(first),
            head: Some(head),
            matched_prefix,
            client_ip,
            tls,
            body_len,
            read_timeout,
        })
    }

    /// Forwards one request and its answer.
    async fn exchange(&self, down: &mut DownstreamSession, mut fwd: Forward) -> Exchanged {
        let _in_flight = self.drain.request();
        let started = Instant::now();
        let rule = fwd.rule.clone();
        let stats = FunctionStats::of(&rule, &self.metrics, &self.activator);
        let _running = stats.running();
        let mut permit: Option<ReleasePermit> = None;
        let body = match read_small_body(down, fwd.body_len).await {
            Some(body) => body,
            None => {
                // The client left, or sent less than it announced.
                stats.series.record(0, started.elapsed().as_secs_f64());
                return Exchanged::Close;
            }
        };
        let result = self
            .upstream_answer(&mut fwd, down.req_header(), &body, &mut permit)
            .await;
        let (status, outcome) = match result {
            Ok((up, addr)) => self.relay(down, up, addr, fwd.rule.as_ref()).await,
            Err(failure) => {
                let code = failure_status(&failure);
                let labels = &fwd.rule.function;
                tracing::debug!(
                    namespace = &*labels.namespace,
                    function = &*labels.name,
                    status = code,
                    error = ?failure,
                    "request failed"
                );
                let resp = pingora::protocols::http::error_resp::gen_error_response(code);
                down.set_server_keepalive(None);
                let ok = down.write_response_header(Box::new(resp)).await.is_ok()
                    && down.finish_body().await.is_ok();
                (
                    code,
                    if ok {
                        Exchanged::Done
                    } else {
                        Exchanged::Close
                    },
                )
            }
        };
        stats.series.record(status, started.elapsed().as_secs_f64());
        outcome
    }

    /// An upstream session with the function's response head read: the request sent on a
    /// pooled or new connection, retried and replayed as pingora-proxy does, and held in
    /// the activator when every endpoint refused.
    async fn upstream_answer(
        &self,
        fwd: &mut Forward,
        req: &RequestHeader,
        body: &[Bytes],
        permit: &mut Option<ReleasePermit>,
    ) -> Result<(UpstreamSession, SocketAddr), Failure> {
        let port = fwd.rule.backends[fwd.backend].target.port;
        let idempotent = req.method.is_idempotent();
        let mut failed_attempts = 0usize;
        let mut unanswered_replays = 0u8;
        let mut last: Option<Failure> = None;
        for _ in 0..MAX_ATTEMPTS {
            if failed_attempts > 0 && failed_attempts >= fwd.endpoints.ready.len() {
                // Every ready endpoint refused before anything was sent: the function went
                // away under this request. Wait for it as for a cold function.
                match wait_for_endpoint(
                    &self.activator,
                    &fwd.rule,
                    fwd.backend,
                    Some(&fwd.endpoints),
                )
                .await
                {
                    Held::Ready(endpoints, new_permit, _) => {
                        fwd.endpoints = endpoints;
                        if new_permit.is_some() {
                            *permit = new_permit;
                        }
                        failed_attempts = 0;
                    }
                    Held::Overflow => {
                        return Err(Failure::Other(Error::explain(
                            ErrorType::HTTPStatus(503),
                            "too many requests are waiting for this function to start",
                        )))
                    }
                    Held::TimedOut => {
                        return Err(Failure::Other(Error::explain(
                            ErrorType::HTTPStatus(504),
                            "no endpoint of the function became ready in time",
                        )))
                    }
                }
            }
            let picked = match fwd.first.take() {
                Some(first) if failed_attempts == 0 => Some(first),
                _ => fwd.endpoints.pick_upstream(failed_attempts, port),
            };
            let Some(upstream) = picked else {
                return Err(Failure::Other(Error::explain(
                    ErrorType::HTTPStatus(503),
                    "function has no ready endpoint",
                )));
            };
            let (stream, reused) = match self.connection(upstream.addr).await {
                Ok(c) => c,
                Err(e) => {
                    let labels = &fwd.rule.function;
                    self.metrics
                        .upstream_connect_errors
                        .with_label_values(&[&labels.namespace, &labels.name])
                        .inc();
                    failed_attempts += 1;
                    last = Some(Failure::Connect(e));
                    continue;
                }
            };
            let head = match fwd.head.take() {
                Some(head) => head,
                None => upstream_head(
                    req,
                    &fwd.rule,
                    fwd.matched_prefix.as_deref(),
                    fwd.client_ip,
                    fwd.tls,
                )
                .map_err(Failure::Other)?,
            };
            match send(stream, head, fwd.read_timeout, body).await {
                Ok(up) => return Ok((up, upstream.addr)),
                Err(Failure::Unanswered(e)) if idempotent => {
                    if reused {
                        // A pooled connection the function closed while idle says nothing
                        // about the function.
                    } else if unanswered_replays < MAX_UNANSWERED_REPLAYS {
                        unanswered_replays += 1;
                        failed_attempts += 1;
                    } else {
                        return Err(Failure::Unanswered(e));
                    }
                    last = Some(Failure::Unanswered(e));
                }
                Err(f) => return Err(f),
            }
        }
        Err(last.unwrap_or_else(|| {
            Failure::Other(Error::explain(ErrorType::InternalError, "no attempt made"))
        }))
    }

    /// An idle pooled connection to `addr` still open, else a new one.
    async fn connection(&self, addr: SocketAddr) -> Result<(Stream, bool), Box<Error>> {
        while let Some(mut stream) = POOL.with(|p| p.borrow_mut().idle.get_mut(&addr)?.pop()) {
            if still_open(&mut stream) {
                return Ok((stream, true));
            }
        }
        let tcp = match tokio::time::timeout(
            self.limits.connect_timeout,
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                return Err(Error::because(
                    ErrorType::ConnectRefused,
                    format!("connecting to {addr}"),
                    e,
                ))
            }
            Err(_) => {
                return Err(Error::explain(
                    ErrorType::ConnectTimedout,
                    format!("connecting to {addr}"),
                ))
            }
        };
        let _ = tcp.set_nodelay(true);
        Ok((
            Box::new(pingora::protocols::l4::stream::Stream::from(tcp)),
            false,
        ))
    }

    /// Writes the function's answer to the client; gives the connection back to the pool
    /// when both ends allow. The status written and how the client connection is left.
    async fn relay(
        &self,
        down: &mut DownstreamSession,
        mut up: UpstreamSession,
        addr: SocketAddr,
        rule: &Rule,
    ) -> (u16, Exchanged) {
        let Some(mut head) = up.resp_header().cloned() else {
            return (0, Exchanged::Close);
        };
        let status = head.status.as_u16();
        let no_body = down.req_header().method == http::Method::HEAD || matches!(status, 204 | 304);
        if !no_body
            && !head.headers.contains_key(http::header::TRANSFER_ENCODING)
            && !head.headers.contains_key(http::header::CONTENT_LENGTH)
            && !up.is_body_done()
        {
            // A close-delimited answer goes on chunked, so the client's connection stays.
            head.set_version(http::Version::HTTP_11);
            let _ = head.insert_header(http::header::TRANSFER_ENCODING, "chunked");
        }
        let gather = head
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .filter(|n| !no_body && *n <= SMALL_BODY)
            .unwrap_or(0);
        if forward_response_head(&mut head, Some(rule)).is_err() {
            return (0, Exchanged::Close);
        }
        if self.drain.is_draining() {
            down.set_server_keepalive(None);
        }
        if down.write_response_header(Box::new(head)).await.is_err() {
            return (status, Exchanged::Close);
        }
        // A small body that arrives in pieces goes out in one write: a system call per
        // piece costs more than the copy.
        let mut gathered = BytesMut::new();
        loop {
            match up.read_body_ref().await {
                Ok(Some(chunk)) if gather > 0 && (chunk.len() as u64) < gather => {
                    gathered.extend_from_slice(chunk);
                }
                Ok(Some(chunk)) => {
                    if down.write_body(chunk).await.is_err() {
                        return (status, Exchanged::Close);
                    }
                }
                Ok(None) => break,
                // The function broke off mid-answer: so must the client's connection.
                Err(_) => return (status, Exchanged::Close),
            }
        }
        if !gathered.is_empty() && down.write_body(&gathered).await.is_err() {
            return (status, Exchanged::Close);
        }
        if down.finish_body().await.is_err() {
            return (status, Exchanged::Close);
        }
        up.respect_keepalive();
        if let Some(stream) = up.reuse().await {
            release(addr, stream);
        }
        (status, Exchanged::Done)
    }

    /// pingora-proxy's HTTP/1 loop on a connection this loop hands over, with the bytes
    /// of the request it did not take.
    async fn hand_off(
        self: &Arc<Self>,
        stream: Stream,
        prefix: BytesMut,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut first = DownstreamSession::new(stream);
        first.set_pipelined_prefix(prefix);
        let mut session = ServerSession::H1(first);
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        let mut result = self.proxy.process_new_http(session, shutdown).await;
        while let Some((stream, settings)) = result.map(|r| r.consume()) {
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            result = self.proxy.process_new_http(session, shutdown).await;
        }
        None
    }
}

#[async_trait]
impl ServerApp for OwnHttp1 {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let http2 = if stream.get_ssl_digest().is_some() {
            matches!(stream.selected_alpn_proto(), Some(ALPN::H2))
        } else if self.h2c {
            // As pingora does: a short HTTP/1.0 request waits here for 24 bytes.
            let mut preface = [0u8; 24];
            stream.try_peek(&mut preface).await.ok()? && preface == H2_PREFACE
        } else {
            false
        };
        if http2 {
            self.count_handoff(HandOff::Http2);
            return self.proxy.process_new(stream, shutdown).await;
        }
        let (stream, prefix, reason) = self.serve(stream, shutdown).await?;
        self.count_handoff(reason);
        self.hand_off(stream, prefix, shutdown).await
    }

    async fn cleanup(&self) {
        self.proxy.cleanup().await
    }
}

enum HeadRead {
    Complete,
    Closed,
    /// Too large to be one fngate forwards, or not HTTP/1 at all: pingora-proxy answers.
    Unparsable,
}

/// Reads into `buf` until it holds a whole request head: an idle connection waits at most
/// [`IDLE_TIMEOUT`], and not past the shutdown.
async fn read_head(
    stream: &mut Stream,
    buf: &mut BytesMut,
    shutdown: &mut ShutdownWatch,
    max_header_bytes: usize,
) -> HeadRead {
    loop {
        if head_complete(buf) {
            return HeadRead::Complete;
        }
        if buf.len() > max_header_bytes {
            return HeadRead::Unparsable;
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let read = tokio::select! {
            biased;
            read = tokio::time::timeout(IDLE_TIMEOUT, stream.read_buf(buf)) => read,
            _ = shutdown.wait_for(|stopping| *stopping), if buf.is_empty() => return HeadRead::Closed,
        };
        match read {
            Ok(Ok(0)) if buf.is_empty() => return HeadRead::Closed,
            // Cut off mid-head: pingora-proxy's session answers what it would.
            Ok(Ok(0)) => return HeadRead::Unparsable,
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return HeadRead::Closed,
        }
    }
}

/// Whether `buf` holds the end of a request head: an empty line after the first line
/// (`\n\n` or `\n\r\n`, as httparse ends one), leading empty lines skipped as it does.
fn head_complete(buf: &[u8]) -> bool {
    let Some(start) = buf.iter().position(|b| *b != b'\r' && *b != b'\n') else {
        return false;
    };
    let mut at = start;
    while let Some(i) = buf[at..].iter().position(|b| *b == b'\n') {
        let nl = at + i;
        match buf.get(nl + 1) {
            Some(b'\n') => return true,
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return true,
            _ => at = nl + 1,
        }
    }
    false
}

/// What deciding the path needs from a request's headers, from one pass over them
/// (comparing names, not hashing one lookup per question).
struct HeadFacts {
    hosts: usize,
    /// `Upgrade`, `Expect` or `HTTP2-Settings`: pingora-proxy handles those.
    protocol_headers: bool,
    /// Every `Connection` token is keep-alive or close.
    connection_plain: bool,
    transfer_encoding: bool,
    content_lengths: usize,
    /// The value of the one `Content-Length`, when there is exactly one and it is a number.
    content_length: Option<u64>,
}

impl HeadFacts {
    fn of(req: &RequestHeader) -> HeadFacts {
        use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING, UPGRADE};
        let mut facts = HeadFacts {
            hosts: 0,
            protocol_headers: false,
            connection_plain: true,
            transfer_encoding: false,
            content_lengths: 0,
            content_length: None,
        };
        for (name, value) in &req.headers {
            if name == HOST {
                facts.hosts += 1;
            } else if name == CONTENT_LENGTH {
                facts.content_lengths += 1;
                facts.content_length = (facts.content_lengths == 1)
                    .then(|| value.to_str().ok()?.trim().parse().ok())
                    .flatten();
            } else if name == TRANSFER_ENCODING {
                facts.transfer_encoding = true;
            } else if name == CONNECTION {
                facts.connection_plain &= value.to_str().is_ok_and(|v| {
                    v.split(',').all(|t| {
                        let t = t.trim();
                        t.is_empty()
                            || t.eq_ignore_ascii_case("keep-alive")
                            || t.eq_ignore_ascii_case("close")
                    })
                });
            } else if name == UPGRADE || name == EXPECT || name.as_str() == "http2-settings" {
                facts.protocol_headers = true;
            }
        }
        if facts.transfer_encoding {
            facts.content_length = None;
        }
        facts
    }

    /// Whether the request's protocol handling is this loop's: origin-form HTTP/1.x with
    /// one Host, no upgrade, no `Expect`, and a `Connection` that nominates nothing but
    /// keep-alive or close.
    fn forwardable(&self, req: &RequestHeader) -> bool {
        matches!(req.version, http::Version::HTTP_11 | http::Version::HTTP_10)
            && self.connection_plain
            && !self.protocol_headers
            && self.hosts == 1
            && req.method != http::Method::CONNECT
            && req.raw_path().first() == Some(&b'/')
    }
}

/// What pingora-proxy's own strip removes (`sanitize_h1_upstream_request`) before fngate's.
const STANDARD_HOP_BY_HOP: [http::HeaderName; 9] = [
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::CONNECTION,
    http::header::UPGRADE,
    http::HeaderName::from_static("keep-alive"),
    http::HeaderName::from_static("proxy-connection"),
];

/// pingora-proxy's strip, so both paths send a function the same head.
fn strip_standard_hop_by_hop(req: &mut RequestHeader) {
    if !super::headers::has_any(&req.headers, &STANDARD_HOP_BY_HOP) {
        return;
    }
    for name in &STANDARD_HOP_BY_HOP {
        if req.headers.contains_key(name) {
            req.remove_header(name);
        }
    }
}

/// The head a function gets for `req`: HTTP/1.1, pingora-proxy's strip, then fngate's
/// (`forward_request_head`).
fn upstream_head(
    req: &RequestHeader,
    rule: &Rule,
    matched_prefix: Option<&str>,
    client_ip: Option<std::net::IpAddr>,
    tls: bool,
) -> pingora::Result<RequestHeader> {
    let mut head = req.clone();
    head.set_version(http::Version::HTTP_11);
    strip_standard_hop_by_hop(&mut head);
    forward_request_head(
        &mut head,
        rule,
        request_host(req),
        client_ip,
        tls,
        matched_prefix,
    )?;
    Ok(head)
}

/// The whole request body (at most [`SMALL_BODY`] by its Content-Length); `None` when the
/// client left before sending it.
async fn read_small_body(down: &mut DownstreamSession, len: u64) -> Option<Vec<Bytes>> {
    let mut body = Vec::new();
    if len == 0 {
        return Some(body);
    }
    while let Some(chunk) = down.read_body_bytes().await.ok()? {
        body.push(chunk);
    }
    Some(body)
}

/// Whether an idle pooled connection is still open: one poll of a read, which costs no
/// system call unless the socket turned readable (the function closed it, or sent bytes
/// nobody asked for — either way it is not reusable).
fn still_open(stream: &mut Stream) -> bool {
    use std::task::{Context, Poll, Waker};
    use tokio::io::{AsyncRead, ReadBuf};
    let mut byte = [0u8; 1];
    let mut read = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(
        std::pin::Pin::new(stream).poll_read(&mut cx, &mut read),
        Poll::Pending
    )
}

/// Sends the request on `stream` and reads the function's response head.
async fn send(
    stream: Stream,
    head: RequestHeader,
    read_timeout: Option<Duration>,
    body: &[Bytes],
) -> Result<UpstreamSession, Failure> {
    let mut up = UpstreamSession::new(stream);
    up.read_timeout = read_timeout;
    let unanswered = |e: Box<Error>| match e.etype() {
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => {
            Failure::Unanswered(e)
        }
        _ => Failure::Other(e),
    };
    up.write_request_header(Box::new(head))
        .await
        .map_err(unanswered)?;
    for chunk in body {
        up.write_body(chunk).await.map_err(unanswered)?;
    }
    up.finish_body().await.map_err(unanswered)?;
    loop {
        up.read_response().await.map_err(unanswered)?;
        match up.get_status().map(|s| s.as_u16()) {
            // No `Expect` was forwarded and nothing asked to upgrade: informational answers
            // are skipped as pingora-proxy skips them.
            Some(101) => {
                return Err(Failure::Other(Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    "101 to a request that asked for no upgrade",
                )))
            }
            Some(s) if (100..200).contains(&s) => continue,
            _ => return Ok(up),
        }
    }
}

/// The status fngate answers an upstream failure with, as `fail_to_proxy` does.
fn failure_status(failure: &Failure) -> u16 {
    let (Failure::Connect(e) | Failure::Unanswered(e) | Failure::Other(e)) = failure;
    error_status(e.etype(), &pingora::ErrorSource::Upstream)
}

#[cfg(test)]
mod tests {
    use super::head_complete;

    #[test]
    fn a_head_ends_at_its_first_empty_line() {
        assert!(head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(head_complete(b"GET / HTTP/1.1\nHost: a\n\n"));
        assert!(head_complete(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"));
        assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n"));
        assert!(!head_complete(b"\r\n\r\n"));
        assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r"));
    }
}
