//! A pingora proxy with no logic at all: every request goes to one fixed upstream.
//! The benchmark peer that shows what pingora itself costs, so fngate's own overhead
//! (routing, filters, metrics) can be read off against it.
//!
//! Usage: bare_pingora LISTEN_ADDR UPSTREAM_ADDR THREADS

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::upstreams::peer::HttpPeer;
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
struct Bare(std::net::SocketAddr);
#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}
    // The same framework set-up as fngate's proxy (no compression module, one
    // current-thread runtime at one thread), so the difference is fngate's own work.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}
    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.0, false, String::new())))
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
    let mut svc =
        pingora::proxy::http_proxy_service(&server.configuration, Bare(args[2].parse().unwrap()));
    svc.add_tcp(&args[1]);
    server.add_service(svc);
    server.run_forever();
}
