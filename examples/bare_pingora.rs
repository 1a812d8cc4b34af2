//! A pingora proxy with no logic at all: every request goes to one fixed upstream.
//! The benchmark peer that shows what pingora itself costs, so fngate's own overhead
//! (routing, filters, metrics) can be read off against it.
//!
//! Usage: bare_pingora LISTEN_ADDR UPSTREAM_ADDR THREADS
//! `BARE_FORWARDED=1` adds the three forwarding headers fngate adds (`X-Forwarded-For`,
//! `-Proto`, `-Host`), to tell their cost from the rest of fngate's.

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::upstreams::peer::HttpPeer;
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
struct Bare {
    upstream: std::net::SocketAddr,
    forwarded: bool,
}
#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}
    // The same framework set-up as fngate's proxy (no compression module, one
    // current-thread runtime at one thread, an 8 KiB read buffer), so the difference is
    // fngate's own work.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}
    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        if self.forwarded {
            let ip = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip());
            if let Some(ip) = ip {
                upstream.insert_header("x-forwarded-for", ip.to_string())?;
            }
            upstream.insert_header("x-forwarded-proto", "http")?;
            let host = session.req_header().headers.get("host").cloned();
            if let Some(host) = host {
                upstream.insert_header("x-forwarded-host", host)?;
            }
        }
        Ok(())
    }
}
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args[3].parse().unwrap();
    let conf = ServerConf {
        threads,
        // BARE_WORK_STEALING=1|0 overrides, for A/B runs of the runtime choice.
        work_stealing: std::env::var("BARE_WORK_STEALING")
            .map(|v| v == "1")
            .unwrap_or(threads > 1),
        upstream_keepalive_pool_size: 1024,
        // Exit on SIGTERM as fngate does, instead of pingora's 5-minute grace period
        // (the benchmark waits for each peer to exit).
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = pingora::server::Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let bare = Bare {
        upstream: args[2].parse().unwrap(),
        forwarded: std::env::var("BARE_FORWARDED").is_ok_and(|v| v == "1"),
    };
    let mut svc = pingora::proxy::http_proxy_service(&server.configuration, bare);
    // fngate's listener read buffer (8 KiB instead of pingora's 64 KiB).
    svc.add_listener(
        pingora::listeners::ListenerConfig::tcp(args[1].clone())
            .l4_buffer(pingora::listeners::L4BufferSettings::default().read(8 * 1024)),
    );
    server.add_service(svc);
    server.run_forever();
}
