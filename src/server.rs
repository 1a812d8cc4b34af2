//! Assembles the process: the proxy listeners, the admin listener, the catalog follower
//! and the event-trigger supervisor as pingora services.

use crate::activator::scaler::{ExternalScalerServer, Scaler};
use crate::activator::{Activator, Webhook};
use crate::catalog::{watch_scope, DirCatalog, EventCounter, KubeCatalog};
use crate::config::KubernetesSettings;
use crate::config::Settings;
use crate::drain::{Drain, DrainSignals};
use crate::lease::Lease;
use crate::plan_swap::PlanSwap;
use crate::proxy::{FunctionProxy, OwnHttp1, ProxyLimits};
use crate::status::StatusWriter;
use crate::telemetry::{AdminApp, Metrics};
use crate::triggers::TriggerSupervisor;
use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::protocols::http::v2::server::H2Options;
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

/// Serves the KEDA external push scaler until the drain lets function-facing listeners go
/// (held requests still need KEDA to start their function).
struct ScalerService {
    addr: std::net::SocketAddr,
    scaler: Mutex<Option<Scaler>>,
    drain: Arc<Drain>,
}

#[async_trait]
impl BackgroundService for ScalerService {
    async fn start(&self, _: ShutdownWatch) {
        let Some(scaler) = self.scaler.lock().expect("not poisoned").take() else {
            return;
        };
        let _serving = self.drain.exit_blocker();
        let mut stop = self.drain.requests_done_watch();
        let served = tonic::transport::Server::builder()
            .add_service(ExternalScalerServer::new(scaler))
            .serve_with_shutdown(self.addr, async move {
                let _ = stop.wait_for(|done| *done).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(addr = %self.addr, error = %e, "KEDA external scaler listener failed");
        }
    }
}

/// Serves Dapr's runtime API to functions: gRPC (h2c) and HTTP, each when configured,
/// until the drain lets function-facing listeners go: a function answering an in-flight
/// request or event may still call it.
struct DaprApiService {
    api: Arc<crate::runtime::DaprApi>,
    revisions: tokio::sync::watch::Receiver<u64>,
    grpc: Option<std::net::SocketAddr>,
    http: Option<std::net::SocketAddr>,
    /// TLS for both listeners: the gRPC one offers `h2`, the HTTP one `http/1.1`.
    /// Also the certificate, followed for changes while the listeners serve.
    tls: Option<(
        tokio_rustls::TlsAcceptor,
        tokio_rustls::TlsAcceptor,
        Arc<crate::runtime::ReloadingCert>,
    )>,
    drain: Arc<Drain>,
}

#[async_trait]
impl BackgroundService for DaprApiService {
    async fn start(&self, _: ShutdownWatch) {
        let _serving = self.drain.exit_blocker();
        let shutdown = self.drain.requests_done_watch();
        let grpc = self.grpc.map(|addr| {
            let mut stop = shutdown.clone();
            let service = crate::runtime::DaprGrpc::new(self.api.clone());
            let limits = self.api.limits.clone();
            let tls = self.tls.as_ref().map(|(grpc, _, _)| grpc.clone());
            tokio::spawn(async move {
                // One function's streams and dead connections cannot take the others' share.
                let router = tonic::transport::Server::builder()
                    .tcp_nodelay(true)
                    .max_concurrent_streams(limits.grpc_max_concurrent_streams)
                    .http2_keepalive_interval(Some(limits.grpc_keepalive))
                    .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
                    .tcp_keepalive(Some(limits.grpc_keepalive))
                    // Any other service reaches the same handler: daprd's proxy mode.
                    .add_routes(tonic::service::Routes::from(
                        tonic::service::Routes::new(service.clone())
                            .into_axum_router()
                            .fallback_service(service),
                    ));
                let stopped = async move {
                    let _ = stop.wait_for(|done| *done).await;
                };
                let served = match tls {
                    None => router.serve_with_shutdown(addr, stopped).await,
                    Some(acceptor) => match tokio::net::TcpListener::bind(addr).await {
                        Ok(listener) => {
                            let incoming = crate::runtime::tls_incoming(listener, acceptor);
                            router.serve_with_incoming_shutdown(incoming, stopped).await
                        }
                        Err(e) => {
                            tracing::error!(%addr, error = %e, "Dapr gRPC API listener failed");
                            return;
                        }
                    },
                };
                if let Err(e) = served {
                    tracing::error!(%addr, error = %e, "Dapr gRPC API listener failed");
                }
            })
        });
        let http = self.http.map(|addr| {
            let mut stop = shutdown.clone();
            let api = self.api.clone();
            let tls = self.tls.as_ref().map(|(_, http, _)| http.clone());
            tokio::spawn(async move {
                let stopped = async move {
                    let _ = stop.wait_for(|done| *done).await;
                };
                if let Err(e) = crate::runtime::serve_http(api, addr, tls, stopped).await {
                    tracing::error!(%addr, error = %e, "Dapr HTTP API listener failed");
                }
            })
        });
        let api = self.api.clone();
        let follow = tokio::spawn({
            let revisions = self.revisions.clone();
            async move { api.follow_plan(revisions).await }
        });
        let rotation = self
            .tls
            .as_ref()
            .map(|(_, _, cert)| tokio::spawn(cert.clone().follow()));
        for task in [grpc, http].into_iter().flatten() {
            let _ = task.await;
        }
        follow.abort();
        if let Some(r) = rotation {
            r.abort();
        }
    }
}

struct CatalogFollower {
    job: Mutex<Option<(PlanSwap, DirCatalog, Duration)>>,
}

/// Follows the catalog directory until the process exits: through the drain too, as held
/// requests wait for their function's endpoints to turn ready.
#[async_trait]
impl BackgroundService for CatalogFollower {
    async fn start(&self, _: ShutdownWatch) {
        let Some((plan_swap, catalog, debounce)) = self.job.lock().expect("not poisoned").take()
        else {
            return;
        };
        plan_swap.follow_dir(catalog, debounce).await;
    }
}

/// Follows the Kubernetes API: one watcher per kind (and namespace), the compile loop,
/// and the Function status writer when enabled.
struct KubeFollower {
    job: Mutex<Option<KubeJob>>,
}

struct KubeJob {
    plan_swap: PlanSwap,
    client_config: kube::Config,
    settings: KubernetesSettings,
    metrics: Arc<Metrics>,
    drain: Arc<Drain>,
    /// Set while this replica holds the cron Lease: only then do its cron triggers fire.
    cron_leader: tokio::sync::watch::Sender<bool>,
}

#[async_trait]
impl BackgroundService for KubeFollower {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(job) = self.job.lock().expect("not poisoned").take() else {
            return;
        };
        // Until the Lease is given up.
        let writing = job.drain.exit_blocker();
        let client = match kube::Client::try_from(job.client_config) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build a Kubernetes client; no catalog will be read");
                return;
            }
        };
        let source = job.settings.source.clone();
        let catalog = Arc::new(Mutex::new(KubeCatalog::new(source.scopes())));
        let changed = Arc::new(tokio::sync::Notify::new());
        let metrics = job.metrics.clone();
        let count: EventCounter = Arc::new(move |kind, outcome| {
            metrics
                .catalog_events
                .with_label_values(&[&kind.to_string(), outcome.as_str()])
                .inc()
        });
        let mut tasks = tokio::task::JoinSet::new();
        for scope in source.scopes() {
            tasks.spawn(watch_scope(
                client.clone(),
                source.clone(),
                scope,
                catalog.clone(),
                changed.clone(),
                count.clone(),
            ));
        }
        let (stop_writer, writer_stopped) = tokio::sync::watch::channel(false);
        let writer = job.settings.status.clone().map(|status| {
            let writer = StatusWriter::new(
                client.clone(),
                status,
                job.plan_swap.plan(),
                job.plan_swap.revisions(),
                catalog.clone(),
                job.metrics.clone(),
            );
            tokio::spawn(writer.run(writer_stopped.clone()))
        });
        let cron = tokio::spawn(lead_cron(
            Lease::new(client.clone(), job.settings.cron_lease.clone(), "cron"),
            job.cron_leader.clone(),
            writer_stopped.clone(),
        ));
        let follow = job
            .plan_swap
            .follow_kube(catalog, changed, job.settings.debounce);
        tokio::pin!(follow);
        let ended = tokio::select! {
            _ = &mut follow => true,
            _ = shutdown.changed() => false,
        };
        // Give the Leases up, so another replica writes status and fires cron ticks
        // without waiting them out.
        let _ = stop_writer.send(true);
        if let Some(writer) = writer {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), cron).await;
        drop(writing);
        // Keep following through the drain: held requests wait for their function's
        // endpoints to turn ready.
        if !ended {
            follow.await;
        }
        tasks.abort_all();
    }
}

/// Holds the cron Lease while it can: `leader` is true only while this replica holds it,
/// so each tick of a cron trigger fires on one replica. A replica that cannot renew stops
/// firing (a tick missed rather than fired twice). On `stop`, it stops firing, then
/// gives the Lease up.
async fn lead_cron(
    mut lease: Lease,
    leader: tokio::sync::watch::Sender<bool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (holds, changed) = lease.renew().await;
        if changed {
            tracing::info!(identity = %lease.identity(), leader = holds, "cron lease: this replica {} cron triggers", if holds { "fires" } else { "does not fire" });
        }
        leader.send_replace(holds);
        tokio::select! {
            _ = tokio::time::sleep(lease.renew_every()) => {}
            _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                leader.send_replace(false);
                if lease.leader() {
                    lease.release().await;
                }
                return;
            }
        }
    }
}

/// Reads the Kubernetes client configuration now, so a missing or broken kubeconfig
/// stops fngate at start with a clear error instead of leaving it never ready.
fn kube_client_config(settings: &KubernetesSettings) -> Result<kube::Config, ServerError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ServerError::Settings {
            field: "catalog.kubernetes",
            message: e.to_string(),
        })?;
    runtime.block_on(async {
        match &settings.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                    ServerError::Settings {
                        field: "catalog.kubernetes.kubeconfig",
                        message: format!("{}: {e}", path.display()),
                    }
                })?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .map_err(|e| ServerError::Settings {
                        field: "catalog.kubernetes.kubeconfig",
                        message: format!("{}: {e}", path.display()),
                    })
            }
            None => kube::Config::infer().await.map_err(|e| ServerError::Settings {
                field: "catalog.kubernetes",
                message: format!(
                    "no Kubernetes client configuration (KUBECONFIG, ~/.kube/config or in-cluster service account): {e}"
                ),
            }),
        }
    })
}

/// Runs the event triggers' supervisor; on shutdown it stops every consumer, which
/// settles or releases its in-flight events and commits.
struct TriggerFollower {
    supervisor: Mutex<Option<TriggerSupervisor>>,
    drain: Arc<Drain>,
}

#[async_trait]
impl BackgroundService for TriggerFollower {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let supervisor = self.supervisor.lock().expect("not poisoned").take();
        if let Some(supervisor) = supervisor {
            supervisor
                .run(async move {
                    let _ = shutdown.changed().await;
                })
                .await;
        }
        self.drain.consumers_stopped();
    }
}

/// Ends the process once the drain is done (see [`crate::drain`]).
struct DrainService(Arc<Drain>);

#[async_trait]
impl BackgroundService for DrainService {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.clone().run_to_exit(shutdown).await;
    }
}

/// A pingora service that keeps serving through the drain, until the process exits: the
/// admin listener, so `/readyz` says "draining" instead of refusing connections and
/// metrics stay scrapeable.
struct UntilExit<S> {
    service: S,
    /// Never sent: the service's shutdown watch must stay open, or it would stop.
    never: tokio::sync::watch::Sender<bool>,
}

impl<S> UntilExit<S> {
    fn new(service: S) -> Self {
        UntilExit {
            service,
            never: tokio::sync::watch::channel(false).0,
        }
    }
}

#[async_trait]
impl<S: pingora::services::Service> pingora::services::Service for UntilExit<S> {
    async fn start_service(
        &mut self,
        fds: Option<pingora::server::ListenFds>,
        _shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        let never = self.never.subscribe();
        self.service
            .start_service(fds, never, listeners_per_fd)
            .await
    }

    fn name(&self) -> &str {
        self.service.name()
    }

    fn threads(&self) -> Option<usize> {
        self.service.threads()
    }
}

/// The HTTP listeners' service: fngate's own HTTP/1 loop in front of pingora-proxy, or
/// pingora-proxy alone (`http1.own_loop: false`).
enum HttpService {
    Own(Box<Service<OwnHttp1>>),
    Proxy(Box<Service<pingora::proxy::HttpProxy<FunctionProxy>>>),
}

impl HttpService {
    fn add_listener(&mut self, config: pingora::listeners::ListenerConfig) {
        match self {
            HttpService::Own(s) => s.add_listener(config),
            HttpService::Proxy(s) => s.add_listener(config),
        }
    }

    fn add_tls_with_settings(&mut self, addr: &str, tls: pingora::listeners::tls::TlsSettings) {
        match self {
            HttpService::Own(s) => s.add_tls_with_settings(addr, None, tls),
            HttpService::Proxy(s) => s.add_tls_with_settings(addr, None, tls),
        }
    }
}

/// Claims Kafka instance id `id` on this host: two live processes with one id would take
/// each other's group membership (on Kafka, fencing each other in turn). A lock on a file
/// named after the id, released by the kernel when the process exits, even on SIGKILL, so a
/// restarted replica claims it again at once.
fn claim_instance_id(id: &str) -> Result<std::fs::File, String> {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!(
        "fngate-kafka-instance-{}.lock",
        crate::compile::kafka_legal(id)
    ));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            use std::io::Write as _;
            let _ = file.set_len(0);
            let _ = write!(file, "{}", std::process::id());
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            Err(format!(
                "{id:?} is in use by another fngate on this host (pid {}, lock {}); give each replica its own",
                holder.trim(),
                path.display()
            ))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(format!("{}: {e}", path.display())),
    }
}

/// HTTP/2 limits for client connections. The h2 crate bounds what hostile clients do
/// (rapid reset: pending-accept resets; CONTINUATION floods: the decoded header list);
/// these set the numbers.
fn h2_options(settings: &Settings) -> H2Options {
    let mut options = pingora::protocols::http::v2::server::default_h2_options();
    options
        .max_concurrent_streams(settings.h2_max_concurrent_streams)
        // The same bound as an HTTP/1 head (431 beyond it).
        .max_header_list_size(settings.max_header_bytes.try_into().unwrap_or(u32::MAX))
        // Streams a client may reset before fngate even accepted them (CVE-2023-44487).
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        // Streams fngate had to reset for a client's protocol errors before it sends GOAWAY.
        .max_local_error_reset_streams(Some(H2_MAX_LOCAL_ERROR_RESETS));
    options
}

const H2_MAX_PENDING_RESETS: usize = 20;
const H2_MAX_LOCAL_ERROR_RESETS: usize = 256;

/// Read buffer of each client connection of the HTTP listener.
const CONNECTION_READ_BUFFER: usize = 8 * 1024;

/// Runs fngate until it is signalled to stop (SIGTERM: graceful; SIGINT: fast).
pub fn run(settings: Settings) -> Result<(), ServerError> {
    // Held for the process's life: the claim ends when the process does, however it ends.
    let _instance_claim = match &settings.events.kafka_instance_id {
        Some(id) => Some(
            claim_instance_id(id).map_err(|message| ServerError::Settings {
                field: "events.kafka_instance_id",
                message,
            })?,
        ),
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    let drain = Drain::new(settings.shutdown_drain, &metrics);
    let plan_swap = PlanSwap::new(settings.compile_settings(), metrics.clone());
    let plan = plan_swap.plan();
    let revisions = plan_swap.revisions();

    let conf = ServerConf {
        threads: settings.threads.max(1),
        // One thread: a current-thread runtime, without the work-stealing scheduler's
        // bookkeeping. More: keep stealing, as pingora's no-steal runtimes poll a
        // connection on a random runtime while its socket stays with the accepting one.
        work_stealing: settings.threads > 1,
        // On SIGTERM the drain ends the process itself once done, at `shutdown.drain`
        // at the latest; pingora's grace period is only the backstop.
        grace_period_seconds: Some(settings.shutdown_drain.as_secs() + 2),
        graceful_shutdown_timeout_seconds: Some(1),
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
        plan_swap.revisions(),
        settings.hold.clone(),
        metrics.clone(),
        webhook,
    ));
    let shared_activator = activator.clone();
    let limits = ProxyLimits {
        max_header_bytes: settings.max_header_bytes,
        max_body_bytes: settings.max_body_bytes,
        connect_timeout: settings.connect_timeout,
        upstream_read_timeout: settings.upstream_read_timeout,
    };
    let proxy = FunctionProxy {
        activator: activator.clone(),
        plan: plan.clone(),
        unrouted: crate::proxy::RequestSeries::new(&metrics, "".into(), "".into()),
        metrics: metrics.clone(),
        drain: drain.clone(),
        limits: limits.clone(),
        served: metrics
            .http_requests_by_path
            .with_label_values(&["pingora_proxy"]),
    };
    let mut app = pingora::proxy::http_proxy(&server.configuration, proxy);
    let mut server_options = HttpServerOptions::default();
    server_options.h2c = settings.h2c;
    // HTTP/1.1 clients get pingora's 60 s keep-alive; h2 connections would otherwise stay
    // open for ever.
    server_options.h2_idle_timeout = settings.h2_idle_timeout;
    app.server_options = Some(server_options);
    app.h2_options = Some(h2_options(&settings));
    let app = Arc::new(app);
    let mut proxy_service = if settings.http1_own_loop {
        HttpService::Own(Box::new(Service::new(
            "fngate http".into(),
            OwnHttp1::new(
                app,
                plan.clone(),
                metrics.clone(),
                limits,
                activator,
                drain.clone(),
                settings.h2c,
            ),
        )))
    } else {
        HttpService::Proxy(Box::new(Service::new(
            "fngate http".into(),
            Arc::into_inner(app).expect("not shared yet"),
        )))
    };
    if let Some(addr) = settings.listen_http {
        // pingora's default 64 KiB read buffer per connection is most of what an idle or
        // waiting (scale from zero) connection costs; request heads and bodies are read
        // into pingora's own buffers anyway.
        proxy_service.add_listener(
            pingora::listeners::ListenerConfig::tcp(addr.to_string()).l4_buffer(
                pingora::listeners::L4BufferSettings::default().read(CONNECTION_READ_BUFFER),
            ),
        );
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
        let mut tls = pingora::listeners::tls::TlsSettings::intermediate(
            &cert.display().to_string(),
            &key.display().to_string(),
        )
        .map_err(|e| ServerError::Tls {
            addr: addr.to_string(),
            message: e.to_string(),
        })?;
        // ALPN: h2 when the client offers it, else HTTP/1.1.
        tls.enable_h2();
        proxy_service.add_tls_with_settings(&addr.to_string(), tls);
        tracing::info!(%addr, "HTTPS listener");
    }

    let dapr_api = crate::runtime::DaprApi::new(
        plan.clone(),
        metrics.clone(),
        settings.dapr_api.clone(),
        shared_activator.clone(),
    );
    if let Some(kube_settings) = &settings.kubernetes {
        dapr_api.use_kubernetes(kube_client_config(kube_settings)?);
    }
    let dapr_tls = match &settings.dapr_tls {
        None => None,
        Some(files) => {
            let tls_error = |message: String| ServerError::Tls {
                addr: "Dapr API".into(),
                message,
            };
            let cert = crate::runtime::ReloadingCert::load(files).map_err(tls_error)?;
            let (grpc, http) = crate::runtime::tls_acceptors(cert.clone()).map_err(tls_error)?;
            Some((grpc, http, cert))
        }
    };
    let dapr_revisions = plan_swap.revisions();
    let (plan_for_triggers, metrics_for_triggers) = (plan.clone(), metrics.clone());
    let mut admin = Service::new(
        "fngate admin".to_owned(),
        AdminApp {
            plan,
            metrics,
            drain: drain.clone(),
        },
    );
    admin.add_tcp(&settings.listen_admin.to_string());
    admin.threads = Some(1);
    tracing::info!(addr = %settings.listen_admin, "admin listener");

    // From files, one process fires every cron trigger; from the Kubernetes API, the
    // holder of the cron Lease does.
    let (cron_leader_tx, cron_leader) = tokio::sync::watch::channel(settings.kubernetes.is_none());
    let follower: Box<dyn pingora::services::ServiceWithDependents> = match &settings.kubernetes {
        Some(kube_settings) => {
            let client_config = kube_client_config(kube_settings)?;
            tracing::info!(
                server = %client_config.cluster_url,
                namespaces = ?kube_settings.source.namespaces,
                label_selector = ?kube_settings.source.label_selector,
                status_writer = kube_settings.status.is_some(),
                "catalog from the Kubernetes API"
            );
            Box::new(background_service(
                "catalog",
                KubeFollower {
                    job: Mutex::new(Some(KubeJob {
                        plan_swap,
                        client_config,
                        settings: kube_settings.clone(),
                        metrics: metrics_for_triggers.clone(),
                        drain: drain.clone(),
                        cron_leader: cron_leader_tx.clone(),
                    })),
                },
            ))
        }
        None => {
            let catalog = DirCatalog::new(settings.catalog_dir.clone());
            tracing::info!(dir = %settings.catalog_dir.display(), "catalog directory");
            Box::new(background_service(
                "catalog",
                CatalogFollower {
                    job: Mutex::new(Some((plan_swap, catalog, settings.reload_debounce))),
                },
            ))
        }
    };

    let mut triggers = background_service(
        "triggers",
        TriggerFollower {
            supervisor: Mutex::new(Some(TriggerSupervisor::new(
                plan_for_triggers,
                revisions,
                metrics_for_triggers.clone(),
                shared_activator.clone(),
                cron_leader,
            ))),
            drain: drain.clone(),
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
                drain: drain.clone(),
            },
        ));
    }
    if settings.listen_dapr_grpc.is_some() || settings.listen_dapr_http.is_some() {
        if let Some(addr) = settings.listen_dapr_grpc {
            tracing::info!(%addr, "Dapr gRPC API listener");
        }
        if let Some(addr) = settings.listen_dapr_http {
            tracing::info!(%addr, "Dapr HTTP API listener");
        }
        let mut dapr = background_service(
            "dapr api",
            DaprApiService {
                api: dapr_api,
                revisions: dapr_revisions,
                grpc: settings.listen_dapr_grpc,
                http: settings.listen_dapr_http,
                tls: dapr_tls,
                drain: drain.clone(),
            },
        );
        dapr.threads = Some(settings.threads.max(1));
        server.add_service(dapr);
    }
    triggers.threads = Some(settings.event_threads);
    match proxy_service {
        HttpService::Own(service) => server.add_service(*service),
        HttpService::Proxy(service) => server.add_service(*service),
    };
    server.add_service(triggers);
    server.add_service(UntilExit::new(admin));
    server.add_boxed_service(follower);
    server.add_service(background_service("drain", DrainService(drain.clone())));
    server.run(pingora::server::RunArgs {
        shutdown_signal: Box::new(DrainSignals(drain)),
    });
    std::process::exit(0)
}
