//! Issue 27's stop-rule probe: the plain keep-alive GET through a request loop of our own
//! on pingora-core's HTTP/1 sessions (a `ServerApp`, no pingora-proxy), upstream through a
//! per-thread pool of plain streams (no task per release, no lock hand-off, no
//! `getpeername`). Every request goes to one fixed upstream; no routing, no headers added,
//! no h2, no error recovery beyond dropping the connection: it measures the floor such a
//! loop can reach, beside `bare_pingora` (pingora-proxy with no logic) and nginx.
//!
//! Usage: own_loop LISTEN_ADDR UPSTREAM_ADDR THREADS

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora::protocols::http::v1::server::HttpSession as DownstreamSession;
use pingora::protocols::Stream;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::ShutdownWatch;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

thread_local! {
    /// Idle upstream connections of this thread (one runtime per thread, no stealing).
    static POOL: RefCell<Vec<Stream>> = const { RefCell::new(Vec::new()) };
}

struct OwnLoop {
    upstream: SocketAddr,
}

impl OwnLoop {
    async fn upstream_stream(&self) -> Option<Stream> {
        if let Some(s) = POOL.with(|p| p.borrow_mut().pop()) {
            return Some(s);
        }
        let tcp = tokio::net::TcpStream::connect(self.upstream).await.ok()?;
        let _ = tcp.set_nodelay(true);
        Some(Box::new(pingora::protocols::l4::stream::Stream::from(tcp)))
    }

    /// One exchange; `false` when the client connection cannot go on.
    async fn exchange(&self, down: &mut DownstreamSession) -> Option<()> {
        let mut up = UpstreamSession::new(self.upstream_stream().await?);
        up.write_request_header(Box::new(down.req_header().clone()))
            .await
            .ok()?;
        while let Some(chunk) = down.read_body_bytes().await.ok()? {
            up.write_body(&chunk).await.ok()?;
        }
        up.finish_body().await.ok()?;
        up.read_response().await.ok()?;
        let head = up.resp_header()?.clone();
        down.write_response_header(Box::new(head)).await.ok()?;
        while let Some(chunk) = up.read_body_ref().await.ok()? {
            down.write_body(chunk).await.ok()?;
        }
        down.finish_body().await.ok()?;
        up.respect_keepalive();
        if let Some(stream) = up.reuse().await {
            POOL.with(|p| p.borrow_mut().push(stream));
        }
        Some(())
    }
}

#[async_trait]
impl ServerApp for OwnLoop {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut stream = stream;
        loop {
            let mut down = DownstreamSession::new(stream);
            if !matches!(down.read_request().await, Ok(Some(_))) {
                return None;
            }
            down.set_server_keepalive(if *shutdown.borrow() { None } else { Some(60) });
            self.exchange(&mut down).await?;
            let (next, _prefix) = down.reuse().await.ok()??.into_parts();
            stream = next;
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args[3].parse().unwrap();
    let conf = ServerConf {
        threads,
        work_stealing: false,
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = pingora::server::Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let app = OwnLoop {
        upstream: args[2].parse().unwrap(),
    };
    let mut svc = pingora::services::listening::Service::new("own loop".into(), app);
    svc.add_listener(
        pingora::listeners::ListenerConfig::tcp(args[1].clone())
            .l4_buffer(pingora::listeners::L4BufferSettings::default().read(8 * 1024)),
    );
    server.add_service(svc);
    server.run_forever();
}
