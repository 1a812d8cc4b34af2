//! The Dapr runtime API that functions call — state, publish, output bindings, service
//! invocation, secrets, metadata — served by fngate for every function behind it, so a function pod needs no daprd
//! sidecar. The caller's `dapr-api-token` names its app; the compiled plan says which
//! components that app may reach; clients for those components live here, beside the
//! plan, and are kept across plans that do not change them.

mod bindings_api;
mod clients;
mod cloudevent;
mod env;
mod error;
mod grpc;
mod grpc_proxy;
mod handlers;
mod http;
mod invoke_api;
mod outbox;
mod outputs;
mod publish_api;
mod secrets_api;
pub mod state;
mod state_api;
mod surface;
mod tls;

pub use env::{function_env, shell_export};
pub use error::ApiError;
pub use tls::{acceptors as tls_acceptors, incoming as tls_incoming, DaprTlsFiles, ReloadingCert};
// `ApiLimits` and `AppCall` are defined below.
pub use bindings_api::BindingResponse;
pub use grpc::{handle as handle_grpc, DaprGrpc};
pub use http::{handle as handle_http, serve_http, RequestBody};
pub use invoke_api::{InvokeAnswer, InvokeCall};
pub use publish_api::{BulkEntry, PublishRequest};
pub use state_api::{BulkItem, StateItem};
pub use surface::Trace;

use crate::plan::DaprApp;
use crate::plan_swap::SharedPlan;
use crate::telemetry::Metrics;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Version daprd reports in the metadata API; fngate answers for this API level.
pub const RUNTIME_VERSION: &str = "1.18.0-fngate";

/// The Dapr API behind both listeners.
pub struct DaprApi {
    plan: SharedPlan,
    clients: clients::Clients,
    partitions: outputs::PartitionCounts,
    metrics: Arc<Metrics>,
    pub limits: ApiLimits,
    /// Holds an invocation whose target has no ready endpoint.
    activator: Arc<crate::activator::Activator>,
    /// `OnInvoke` channels to gRPC apps, per endpoint.
    grpc_apps: crate::triggers::GrpcApp,
    /// Proxied gRPC calls to the apps (h2c).
    h2: grpc_proxy::H2Client,
    /// The API server the Kubernetes secret store reads (none from files).
    kube_config: OnceLock<kube::Config>,
    kube_client: tokio::sync::OnceCell<Option<kube::Client>>,
    /// The running outbox relays, one per app and outbox store.
    relays: std::sync::Mutex<std::collections::HashMap<outbox::Relay, tokio::task::JoinHandle<()>>>,
    /// Calls in flight per app-id; an entry leaves with its last call.
    in_flight: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// What one function may take of the shared Dapr API, so it cannot starve the others.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiLimits {
    /// HTTP API connections open at once; more are closed as they are accepted.
    pub max_connections: usize,
    /// An HTTP request body not read within this is answered 408.
    pub body_read_timeout: std::time::Duration,
    /// Calls of one app in flight at once, both surfaces; more are refused (429 /
    /// `ResourceExhausted`).
    pub max_in_flight_per_app: usize,
    /// gRPC streams one connection may have open at once.
    pub grpc_max_concurrent_streams: u32,
    /// gRPC HTTP/2 keep-alive pings (a dead peer is dropped after one goes unanswered).
    pub grpc_keepalive: std::time::Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_connections: 4096,
            body_read_timeout: std::time::Duration::from_secs(30),
            max_in_flight_per_app: 256,
            grpc_max_concurrent_streams: 256,
            grpc_keepalive: std::time::Duration::from_secs(60),
        }
    }
}

/// One admitted call of an app; counted until dropped.
pub struct AppCall<'a> {
    api: &'a DaprApi,
    app: Arc<DaprApp>,
}

impl Drop for AppCall<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.api.in_flight.lock().expect("not poisoned");
        if let Some(n) = in_flight.get_mut(self.app.app_id.as_str()) {
            *n -= 1;
            if *n == 0 {
                in_flight.remove(self.app.app_id.as_str());
            }
        }
    }
}

impl DaprApi {
    pub fn new(
        plan: SharedPlan,
        metrics: Arc<Metrics>,
        limits: ApiLimits,
        activator: Arc<crate::activator::Activator>,
    ) -> Arc<DaprApi> {
        Arc::new(DaprApi {
            activator,
            grpc_apps: Default::default(),
            h2: grpc_proxy::h2_client(),
            kube_config: OnceLock::new(),
            relays: Default::default(),
            kube_client: tokio::sync::OnceCell::new(),
            plan,
            clients: clients::Clients::new(metrics.clone()),
            partitions: outputs::PartitionCounts::default(),
            metrics,
            limits,
            in_flight: Default::default(),
        })
    }

    /// The Kubernetes secret store reads Secrets from this API server (else from the
    /// catalog's files).
    pub fn use_kubernetes(&self, config: kube::Config) {
        let _ = self.kube_config.set(config);
    }

    /// The API server's client, built on first use inside the runtime; `Ok(None)` from
    /// files (the store reads the catalog's Secrets then).
    pub(crate) async fn kube_client(&self) -> Result<Option<kube::Client>, String> {
        let Some(config) = self.kube_config.get() else {
            return Ok(None);
        };
        self.kube_client
            .get_or_init(|| async {
                kube::Client::try_from(config.clone())
                    .map_err(|e| tracing::error!(error = %e, "cannot build a Kubernetes client for the secret store"))
                    .ok()
            })
            .await
            .clone()
            .map(Some)
            .ok_or_else(|| "no Kubernetes client (see fngate's log)".to_owned())
    }

    /// Admits one call of `app` under its in-flight bound, or refuses it as overloaded.
    pub fn admit(
        &self,
        app: &Arc<DaprApp>,
        transport: &'static str,
    ) -> Result<AppCall<'_>, ApiError> {
        let mut in_flight = self.in_flight.lock().expect("not poisoned");
        // The key is allocated only when an app has no call in flight yet.
        if !in_flight.contains_key(app.app_id.as_str()) {
            in_flight.insert(app.app_id.clone(), 0);
        }
        let n = in_flight
            .get_mut(app.app_id.as_str())
            .expect("inserted above");
        if *n >= self.limits.max_in_flight_per_app {
            drop(in_flight);
            self.metrics
                .dapr_api_refused
                .with_label_values(&[&app.namespace, &app.function, transport, "in_flight"])
                .inc();
            return Err(ApiError::basic(
                tonic::Code::ResourceExhausted,
                429,
                "ERR_TOO_MANY_REQUESTS",
                format!(
                    "app {} has {} calls in flight, its limit (dapr_api.max_in_flight_per_app)",
                    app.app_id, self.limits.max_in_flight_per_app
                ),
            ));
        }
        *n += 1;
        Ok(AppCall {
            api: self,
            app: app.clone(),
        })
    }

    /// The app whose token was presented. A request keeps the app (and its components)
    /// it started with, whatever plan is published meanwhile.
    pub fn authenticate(
        &self,
        token: Option<&[u8]>,
        transport: &'static str,
    ) -> Result<Arc<DaprApp>, ApiError> {
        let found = match token {
            None => Err("missing api token in request metadata"),
            Some(t) => self
                .plan
                .load()
                .dapr
                .by_token(t)
                .cloned()
                .ok_or("authentication error: api token mismatch"),
        };
        found.map_err(|detail| {
            self.metrics
                .dapr_auth_failures
                .with_label_values(&[transport])
                .inc();
            ApiError::unauthenticated(detail)
        })
    }

    /// Follows the plan: clients of components that left it are dropped, outbox relays
    /// started and stopped.
    pub async fn follow_plan(self: Arc<Self>, mut revisions: tokio::sync::watch::Receiver<u64>) {
        self.sync_outbox_relays();
        while revisions.changed().await.is_ok() {
            self.clients.retain(&self.plan.load().dapr);
            self.sync_outbox_relays();
        }
    }

    /// Components of the app, as the metadata API lists them: (name, type, version,
    /// capabilities).
    pub fn components(&self, app: &DaprApp) -> Vec<(String, String, String, Vec<String>)> {
        let timer = CallTimer::start(self, app, "metadata");
        let mut out = Vec::new();
        for (name, s) in app.states.iter() {
            out.push((
                name.to_owned(),
                s.kind.clone(),
                s.version.clone(),
                state::features(&s.backend)
                    .iter()
                    .map(|f| (*f).to_owned())
                    .collect(),
            ));
        }
        for (name, p) in app.pubsubs.iter() {
            let caps = match p.backend {
                crate::plan::BrokerBackend::Kafka(_) => vec!["BULK_PUBSUB".to_owned()],
                crate::plan::BrokerBackend::Jetstream { .. }
                | crate::plan::BrokerBackend::Mqtt(_) => Vec::new(),
            };
            out.push((name.to_owned(), p.kind.clone(), "v1".into(), caps));
        }
        for (name, b) in app.bindings.iter() {
            out.push((name.to_owned(), b.kind.clone(), "v1".into(), Vec::new()));
        }
        for (name, s) in app.secret_stores.iter() {
            out.push((name.to_owned(), s.kind.clone(), "v1".into(), Vec::new()));
        }
        out.sort();
        let _ = timer.finish::<()>(Ok(()));
        out
    }
}

/// A request metadata value; of repeated keys the last wins (as in the Go map daprd
/// builds from them).
pub(crate) fn metadata_value<'a>(metadata: &'a [(String, String)], name: &str) -> Option<&'a str> {
    metadata
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Counts and times one call: `fngate_dapr_api_calls_total` and its duration.
pub(crate) struct CallTimer<'a> {
    api: &'a DaprApi,
    namespace: &'a str,
    block: &'static str,
    /// Borrowed from the app's plan: naming the component costs no allocation.
    component: OnceLock<&'a str>,
    start: Instant,
}

impl<'a> CallTimer<'a> {
    pub(crate) fn start(api: &'a DaprApi, app: &'a DaprApp, block: &'static str) -> Self {
        CallTimer {
            api,
            namespace: &app.namespace,
            block,
            component: OnceLock::new(),
            start: Instant::now(),
        }
    }

    /// Only components the app may use become labels (a caller's made-up name never does).
    pub(crate) fn component(&self, name: &'a str) {
        let _ = self.component.set(name);
    }

    pub(crate) fn finish<T>(self, result: Result<T, ApiError>) -> Result<T, ApiError> {
        let outcome = match &result {
            Ok(_) => "success",
            Err(e) => e.outcome,
        };
        let component = self.component.get().copied().unwrap_or("");
        let m = &self.api.metrics;
        m.dapr_calls
            .with_label_values(&[self.namespace, self.block, component, outcome])
            .inc();
        m.dapr_call_duration
            .with_label_values(&[self.namespace, self.block, component])
            .observe(self.start.elapsed().as_secs_f64());
        result
    }
}
