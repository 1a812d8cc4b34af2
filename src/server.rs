//! Assembles the process: the proxy listeners, the admin listener, the catalog follower
//! and the event-trigger supervisor as pingora services.

use crate::activator::scaler::{ExternalScalerServer, Scaler};
use crate::activator::{Activator, Webhook};
use crate::catalog::DirCatalog;
use crate::config::Settings;
use crate::proxy::{FunctionProxy, ProxyLimits};
use crate::publish::PlanPublisher;
use crate::telemetry::{AdminApp, Metrics};
use crate::triggers::TriggerSupervisor;
use async_trait::async_trait;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("TLS listener {addr}: {message}")]
    Tls { addr: String, message: String },
    #[error("setting {field}: {message}")]
    Settings {
        field: &'static str,
        message: String,
    },
}

/// Serves the KEDA external push scaler until shutdown.
struct ScalerService {
    addr: std::net::SocketAddr,
    scaler: Mutex<Option<Scaler>>,
}

#[async_trait]
impl BackgroundService for ScalerService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(scaler) = self.scaler.lock().expect("not poisoned").take() else {
            return;
        };
        let served = tonic::transport::Server::builder()
            .add_service(ExternalScalerServer::new(scaler))
            .serve_with_shutdown(self.addr, async move {
                let _ = shutdown.changed().await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(addr = %self.addr, error = %e, "KEDA external scaler listener failed");
        }
    }
}

struct CatalogFollower {
    job: Mutex<Option<(PlanPublisher, DirCatalog, Duration)>>,
}

#[async_trait]
impl BackgroundService for CatalogFollower {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some((publisher, catalog, debounce)) = self.job.lock().expect("not poisoned").take()
        else {
            return;
        };
        tokio::select! {
            _ = publisher.follow_dir(catalog, debounce) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Runs the event triggers' supervisor; on shutdown it stops every consumer, which
/// settles or releases its in-flight events and commits.
struct TriggerFollower {
    supervisor: Mutex<Option<TriggerSupervisor>>,
}

#[async_trait]
impl BackgroundService for TriggerFollower {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(supervisor) = self.supervisor.lock().expect("not poisoned").take() else {
            return;
        };
        supervisor
            .run(async move {
                let _ = shutdown.changed().await;
            })
            .await;
    }
}

/// Runs fngate until it is signalled to stop (SIGTERM: graceful; SIGINT: fast).
pub fn run(settings: Settings) -> Result<(), ServerError> {
    let metrics = Arc::new(Metrics::new());
    let publisher = PlanPublisher::new(settings.compile_settings(), metrics.clone());
    let plan = publisher.plan();
    let revisions = publisher.revisions();

    let conf = ServerConf {
        threads: settings.threads.max(1),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(10),
        upstream_keepalive_pool_size: 1024,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();

    let webhook = match &settings.scale_webhook {
        Some(url) => Some(Webhook::new(url).map_err(|message| ServerError::Settings {
            field: "activator.webhook",
            message,
        })?),
        None => None,
    };
    let activator = Arc::new(Activator::new(
        plan.clone(),
        publisher.revisions(),
        settings.hold.clone(),
        metrics.clone(),
        webhook,
    ));
    let shared_activator = activator.clone();
    let proxy = FunctionProxy {
        activator,
        plan: plan.clone(),
        metrics: metrics.clone(),
        limits: ProxyLimits {
            max_header_bytes: settings.max_header_bytes,
            max_body_bytes: settings.max_body_bytes,
            connect_timeout: settings.connect_timeout,
            upstream_read_timeout: settings.upstream_read_timeout,
        },
    };
    let mut proxy_service =
        pingora::proxy::http_proxy_service_with_name(&server.configuration, proxy, "fngate http");
    if let Some(addr) = settings.listen_http {
        proxy_service.add_tcp(&addr.to_string());
        tracing::info!(%addr, "HTTP listener");
    }
    if let (Some(addr), Some(cert), Some(key)) =
        (settings.listen_https, &settings.tls_cert, &settings.tls_key)
    {
        for f in [cert, key] {
            if !f.is_file() {
                return Err(ServerError::Tls {
                    addr: addr.to_string(),
                    message: format!("{} is not a readable file", f.display()),
                });
            }
        }
        proxy_service
            .add_tls(
                &addr.to_string(),
                &cert.display().to_string(),
                &key.display().to_string(),
            )
            .map_err(|e| ServerError::Tls {
                addr: addr.to_string(),
                message: e.to_string(),
            })?;
        tracing::info!(%addr, "HTTPS listener");
    }

    let (plan_for_triggers, metrics_for_triggers) = (plan.clone(), metrics.clone());
    let mut admin = Service::new("fngate admin".to_owned(), AdminApp { plan, metrics });
    admin.add_tcp(&settings.listen_admin.to_string());
    admin.threads = Some(1);
    tracing::info!(addr = %settings.listen_admin, "admin listener");

    let catalog = DirCatalog::new(settings.catalog_dir.clone());
    tracing::info!(dir = %settings.catalog_dir.display(), "catalog directory");
    let follower = background_service(
        "catalog",
        CatalogFollower {
            job: Mutex::new(Some((publisher, catalog, settings.reload_debounce))),
        },
    );

    let triggers = background_service(
        "triggers",
        TriggerFollower {
            supervisor: Mutex::new(Some(TriggerSupervisor::new(
                plan_for_triggers,
                revisions,
                metrics_for_triggers.clone(),
                shared_activator.clone(),
            ))),
        },
    );

    if let Some(addr) = settings.listen_scaler {
        tracing::info!(%addr, "KEDA external scaler listener");
        server.add_service(background_service(
            "keda scaler",
            ScalerService {
                addr,
                scaler: Mutex::new(Some(Scaler {
                    activator: shared_activator,
                    metrics: metrics_for_triggers.clone(),
                })),
            },
        ));
    }
    server.add_service(proxy_service);
    server.add_service(triggers);
    server.add_service(admin);
    server.add_service(follower);
    server.run_forever()
}
