//! An HTTP function that reports what it received — the example function of the README,
//! the backend of the integration tests and the conformance runner, and the benchmark's
//! target.
//!
//! `GET` (and anything without `x-echo-body`) answers JSON: path, host, method, headers,
//! namespace, pod, service. `?delay=<duration>` waits first. A request header
//! `x-echo-set-response-headers: Name:Value,Name2:Value2` makes it set those response
//! headers. `x-echo-body: stream` echoes the request body back chunk by chunk as it arrives.
//! `Connection: upgrade` is accepted with 101 and the upgraded bytes are echoed back.
//! Every response carries `x-echo-in-flight`: requests being answered when it arrived.
//! `--log` prints `REQ <method> <path> [bytes=<body length>]` per request.
//!
//! Usage: echo [--listen ADDR] [--service NAME] [--namespace NS] [--fixed]
//! [--ready-after DURATION] (503 to everything until then: listening before started)
//! Prints `listening on ADDR` on stdout once ready. `--fixed` answers a fixed 13-byte
//! body (for load tests, where the JSON work would dominate).

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Identity {
    service: String,
    namespace: String,
    pod: String,
    fixed: bool,
    /// Print `REQ <method> <path>` per request, so a test can see mirrored requests.
    log: bool,
    /// Until then every request gets 503: an app that listens before it has started.
    ready_at: Option<std::time::Instant>,
}

type Body = BoxBody<Bytes, hyper::Error>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn parse_delay(query: &str) -> Option<Duration> {
    let v = query.split('&').find_map(|kv| kv.strip_prefix("delay="))?;
    let (num, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        _ => return None,
    })
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Requests being answered right now.
static IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `handle`, reporting in `x-echo-in-flight` how many requests (this one included) were
/// being answered when this one arrived.
async fn handle_counted(
    id: Arc<Identity>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    use std::sync::atomic::Ordering;
    if id.fixed {
        return handle(id, req).await;
    }
    if id.ready_at.is_some_and(|t| std::time::Instant::now() < t) {
        let mut resp = Response::new(full("starting\n"));
        *resp.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
        return Ok(resp);
    }
    let in_flight = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
    let result = handle(id, req).await;
    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    result.map(|mut resp| {
        resp.headers_mut()
            .insert("x-echo-in-flight", in_flight.into());
        resp
    })
}

async fn handle(
    id: Arc<Identity>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if id.fixed {
        return Ok(Response::new(full("hello, world\n")));
    }
    let log = |method: &str, uri: &str, bytes: Option<usize>| {
        if id.log {
            match bytes {
                Some(n) => println!("REQ {method} {uri} bytes={n}"),
                None => println!("REQ {method} {uri}"),
            }
            std::io::stdout().flush().ok();
        }
    };
    if let Some(delay) = req.uri().query().and_then(parse_delay) {
        tokio::time::sleep(delay).await;
    }
    let wants_upgrade = req.headers().get("upgrade").is_some();
    if wants_upgrade {
        log(req.method().as_str(), &req.uri().to_string(), None);
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 4096];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut resp = Response::new(full(Bytes::new()));
        *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        resp.headers_mut()
            .insert("upgrade", req.headers()["upgrade"].clone());
        return Ok(resp);
    }
    let set_headers: Vec<(String, String)> = req
        .headers()
        .get("x-echo-set-response-headers")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .filter_map(|kv| kv.split_once(':'))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let mut resp = if req
        .headers()
        .get("x-echo-body")
        .is_some_and(|v| v == "stream")
    {
        // Echo each body frame as it arrives, so a test can see streaming end to end.
        log(req.method().as_str(), &req.uri().to_string(), None);
        let (mut tx, out) = http_body_util::channel::Channel::<Bytes, hyper::Error>::new(4);
        let mut body = req.into_body();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    if tx.send_data(data).await.is_err() {
                        break;
                    }
                }
            }
        });
        Response::new(out.boxed())
    } else {
        let mut headers = String::new();
        let mut names: Vec<&str> = req.headers().keys().map(|k| k.as_str()).collect();
        names.sort();
        names.dedup();
        for (i, name) in names.iter().enumerate() {
            let values: Vec<String> = req
                .headers()
                .get_all(*name)
                .iter()
                .map(|v| {
                    format!(
                        "\"{}\"",
                        json_escape(&String::from_utf8_lossy(v.as_bytes()))
                    )
                })
                .collect();
            if i > 0 {
                headers.push(',');
            }
            headers.push_str(&format!("\"{}\":[{}]", json_escape(name), values.join(",")));
        }
        let host = req
            .headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_owned();
        let method = req.method().as_str().to_owned();
        let body_len = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(0);
        log(&method, &path, Some(body_len));
        let json = format!(
            "{{\"path\":\"{}\",\"host\":\"{}\",\"method\":\"{}\",\"body_bytes\":{},\"namespace\":\"{}\",\"pod\":\"{}\",\"service\":\"{}\",\"headers\":{{{}}}}}\n",
            json_escape(&path),
            json_escape(&host),
            method,
            body_len,
            json_escape(&id.namespace),
            json_escape(&id.pod),
            json_escape(&id.service),
            headers
        );
        let mut r = Response::new(full(json));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r
    };
    for (k, v) in set_headers {
        if let (Ok(k), Ok(v)) = (k.parse::<hyper::header::HeaderName>(), v.parse()) {
            resp.headers_mut().insert(k, v);
        }
    }
    Ok(resp)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let listen = arg("--listen").unwrap_or_else(|| "127.0.0.1:18081".into());
    let service = arg("--service").unwrap_or_else(|| "hello".into());
    let id = Arc::new(Identity {
        pod: arg("--pod").unwrap_or_else(|| format!("{service}-{}", std::process::id())),
        namespace: arg("--namespace").unwrap_or_else(|| "default".into()),
        service,
        fixed: args.iter().any(|a| a == "--fixed"),
        log: args.iter().any(|a| a == "--log"),
        ready_at: arg("--ready-after")
            .and_then(|d| parse_delay(&format!("delay={d}")))
            .map(|d| std::time::Instant::now() + d),
    });
    let threads: usize = arg("--threads").and_then(|t| t.parse().ok()).unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
        println!("listening on {}", listener.local_addr().unwrap());
        std::io::stdout().flush().ok();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let id = id.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle_counted(id.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
}
