//! Every metric fngate exports, in one place. Labels are bounded: namespace, function,
//! status class, outcome — never a path or a host.

use crate::api::Severity;
use crate::plan::Plan;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use std::time::Duration;

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_connect_errors: IntCounterVec,
    /// HTTP requests by the path that served them: `own_h1` (fngate's own HTTP/1 loop) or
    /// `pingora_proxy`.
    pub http_requests_by_path: IntCounterVec,
    /// Connections the own HTTP/1 loop handed to pingora-proxy, by reason.
    pub http_handoffs: IntCounterVec,
    pub routes: IntGauge,
    /// Proxied requests between their head and their end (held ones included).
    pub requests_in_flight: IntGauge,
    /// 1 from the first SIGTERM on.
    pub draining: IntGauge,
    pub functions: IntGauge,
    pub config_revision: IntGauge,
    pub reloads: IntCounterVec,
    /// Kubernetes watch events by kind and outcome (applied, unchanged, stale).
    pub catalog_events: IntCounterVec,
    /// Function status writes to the API server by outcome (written, conflict, error).
    pub status_writes: IntCounterVec,
    /// 1 while this replica holds the status-writer Lease.
    pub status_leader: IntGauge,
    pub reload_duration: Histogram,
    pub diagnostics: IntGaugeVec,
    pub build_info: IntGaugeVec,
    pub triggers: IntGauge,
    /// Labels: namespace, function, trigger (component), outcome.
    pub events: IntCounterVec,
    pub event_delivery_duration: HistogramVec,
    pub events_in_flight: IntGaugeVec,
    /// Labels: namespace, function. Deliveries held by `dapr.io/app-max-concurrency`.
    pub events_waiting_for_app: IntGaugeVec,
    /// Labels: namespace, function, trigger, topic, partition (bounded by the topic's partitions).
    pub consumer_lag: IntGaugeVec,
    /// 1 while the trigger's broker connection is up; label `broker` is kafka or jetstream.
    pub broker_connected: IntGaugeVec,
    /// Scale from zero, labels namespace and function.
    pub activator_waiting: IntGaugeVec,
    pub activator_wait_duration: HistogramVec,
    pub activator_releases: IntCounterVec,
    pub activator_overflows: IntCounterVec,
    pub activator_timeouts: IntCounterVec,
    /// Labels namespace, function, result (`up`, `down`).
    pub activator_probes: IntCounterVec,
    /// Labels namespace, function, via (`keda`, `webhook`).
    pub scale_signals: IntCounterVec,
    /// Dapr API calls; labels namespace, building_block, component (empty when the
    /// caller named one it may not use), outcome.
    pub dapr_calls: IntCounterVec,
    pub dapr_call_duration: HistogramVec,
    /// Calls refused for a missing or unknown `dapr-api-token`; label transport.
    pub dapr_auth_failures: IntCounterVec,
    /// Labels: namespace, function, transport, reason. Calls refused by a limit.
    pub dapr_api_refused: IntCounterVec,
    /// Service invocations by caller and target function; outcome success, app_error,
    /// refused, unreachable, timeout.
    pub dapr_invocations: IntCounterVec,
    /// 1 while a component's store or broker answers; labels namespace, component, type.
    pub dapr_component_connected: IntGaugeVec,
}

/// Outcomes of one event, for `fngate_events_total{outcome}`.
pub mod event_outcome {
    /// The function accepted it.
    pub const SUCCESS: &str = "success";
    /// One failed attempt that will be retried.
    pub const RETRY: &str = "retry";
    /// The function dropped it (DROP, gRPC UNIMPLEMENTED, HTTP 404) and no dead-letter topic is set.
    pub const DROP: &str = "drop";
    /// Published to the dead-letter topic.
    pub const DEAD_LETTER: &str = "dead_letter";
    /// The function did not subscribe to this binding/topic.
    pub const NOT_SUBSCRIBED: &str = "not_subscribed";
    /// A cron tick that found no ready endpoint within the hold timeout, or whose time
    /// passed while the process could not run.
    pub const MISSED: &str = "missed";
    /// A cron tick the function answered with a failure: dropped, as daprd drops it.
    pub const FAILED: &str = "failed";
}

/// The values of the `code` label (`2xx`, `4xx`...), in `status_class_index` order.
pub const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// Where `status`'s class is in `STATUS_CLASSES`.
pub fn status_class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => STATUS_CLASSES.len() - 1,
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "fngate_requests_total",
                "HTTP requests served, by function and status class",
            ),
            &["namespace", "function", "code"],
        )
        .unwrap();
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "fngate_request_duration_seconds",
                "Time from request received to response finished",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["namespace", "function"],
        )
        .unwrap();
        let upstream_connect_errors = IntCounterVec::new(
            Opts::new(
                "fngate_upstream_connect_errors_total",
                "Failed connection attempts to function endpoints",
            ),
            &["namespace", "function"],
        )
        .unwrap();
        let http_requests_by_path = IntCounterVec::new(
            Opts::new(
                "fngate_http_requests_by_path_total",
                "HTTP requests by the path that served them: own_h1 (fngate's HTTP/1 loop) or pingora_proxy",
            ),
            &["path"],
        )
        .unwrap();
        let http_handoffs = IntCounterVec::new(
            Opts::new(
                "fngate_http_handoffs_total",
                "Client connections the own HTTP/1 loop handed to pingora-proxy, by the reason of the request that did",
            ),
            &["reason"],
        )
        .unwrap();
        let routes = IntGauge::new("fngate_routes", "Route matches in the serving plan").unwrap();
        let requests_in_flight = IntGauge::new(
            "fngate_requests_in_flight",
            "Proxied requests in flight, held ones included",
        )
        .unwrap();
        let draining = IntGauge::new(
            "fngate_draining",
            "1 while fngate drains after SIGTERM (not ready, finishing what is in flight)",
        )
        .unwrap();
        let functions =
            IntGauge::new("fngate_functions", "HTTP functions in the serving plan").unwrap();
        let config_revision =
            IntGauge::new("fngate_config_revision", "Revision of the serving plan").unwrap();
        let reloads = IntCounterVec::new(
            Opts::new(
                "fngate_reloads_total",
                "Catalog reloads by outcome (success, partial, unchanged)",
            ),
            &["outcome"],
        )
        .unwrap();
        let reload_duration = Histogram::with_opts(
            HistogramOpts::new(
                "fngate_reload_duration_seconds",
                "Time to compile and publish a plan",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
        )
        .unwrap();
        let diagnostics = IntGaugeVec::new(
            Opts::new(
                "fngate_diagnostics",
                "Problems found in the catalog by the last compile",
            ),
            &["severity"],
        )
        .unwrap();
        let build_info = IntGaugeVec::new(
            Opts::new("fngate_build_info", "Build information"),
            &["version"],
        )
        .unwrap();
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let triggers =
            IntGauge::new("fngate_triggers", "Event triggers in the serving plan").unwrap();
        let trigger_labels = &["namespace", "function", "trigger"];
        let events = IntCounterVec::new(
            Opts::new(
                "fngate_events_total",
                "Event delivery results by trigger and outcome (success, retry, drop, dead_letter, not_subscribed)",
            ),
            &["namespace", "function", "trigger", "outcome"],
        )
        .unwrap();
        let event_delivery_duration = HistogramVec::new(
            HistogramOpts::new(
                "fngate_event_delivery_duration_seconds",
                "Time from an event being received from the broker to the function's final answer",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
            ]),
            trigger_labels,
        )
        .unwrap();
        let events_in_flight = IntGaugeVec::new(
            Opts::new(
                "fngate_events_in_flight",
                "Events received and not yet settled",
            ),
            trigger_labels,
        )
        .unwrap();
        let events_waiting_for_app = IntGaugeVec::new(
            Opts::new(
                "fngate_events_waiting_for_app",
                "Deliveries waiting because the function has dapr.io/app-max-concurrency in flight",
            ),
            &["namespace", "function"],
        )
        .unwrap();
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "fngate_consumer_lag",
                "Messages behind the end of the partition (Kafka) or pending for the consumer (JetStream)",
            ),
            &["namespace", "function", "trigger", "topic", "partition"],
        )
        .unwrap();
        let broker_connected = IntGaugeVec::new(
            Opts::new(
                "fngate_broker_connected",
                "1 while the trigger's broker connection is up",
            ),
            &["namespace", "function", "trigger", "broker"],
        )
        .unwrap();
        let fn_labels = &["namespace", "function"];
        let activator_waiting = IntGaugeVec::new(
            Opts::new(
                "fngate_activator_waiting",
                "Requests waiting for a function with no ready endpoint",
            ),
            fn_labels,
        )
        .unwrap();
        let activator_wait_duration = HistogramVec::new(
            HistogramOpts::new(
                "fngate_activator_wait_duration_seconds",
                "Time a request waited for a ready endpoint before it was released",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            fn_labels,
        )
        .unwrap();
        let counter =
            |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), fn_labels).unwrap();
        let activator_releases = counter(
            "fngate_activator_releases_total",
            "Waiting requests released to a ready endpoint",
        );
        let activator_overflows = counter(
            "fngate_activator_overflows_total",
            "Requests refused with 503 because too many already wait",
        );
        let activator_timeouts = counter(
            "fngate_activator_timeouts_total",
            "Waiting requests that gave up with 504",
        );
        let activator_probes = IntCounterVec::new(
            Opts::new(
                "fngate_activator_probes_total",
                "Probes of listed-but-not-ready endpoints while requests wait, by result",
            ),
            &["namespace", "function", "result"],
        )
        .unwrap();
        let catalog_events = IntCounterVec::new(
            Opts::new(
                "fngate_catalog_events_total",
                "Kubernetes watch events by kind and outcome (applied; unchanged: nothing fngate reads changed; stale: not newer than the version held)",
            ),
            &["kind", "outcome"],
        )
        .unwrap();
        let status_writes = IntCounterVec::new(
            Opts::new(
                "fngate_status_writes_total",
                "Function status writes to the Kubernetes API by outcome (written, conflict, error)",
            ),
            &["outcome"],
        )
        .unwrap();
        let status_leader = IntGauge::new(
            "fngate_status_leader",
            "1 while this replica holds the Lease that makes it the Function status writer",
        )
        .unwrap();
        let scale_signals = IntCounterVec::new(
            Opts::new(
                "fngate_scale_signals_total",
                "Signals that a function at zero has work (via keda: StreamIsActive true; via webhook)",
            ),
            &["namespace", "function", "via"],
        )
        .unwrap();
        let dapr_calls = IntCounterVec::new(
            Opts::new(
                "fngate_dapr_api_calls_total",
                "Dapr API calls from functions, by building block (state, publish, binding, metadata), component and outcome",
            ),
            &["namespace", "building_block", "component", "outcome"],
        )
        .unwrap();
        let dapr_call_duration = HistogramVec::new(
            HistogramOpts::new(
                "fngate_dapr_api_call_duration_seconds",
                "Time to answer a Dapr API call, store or broker included",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                5.0,
            ]),
            &["namespace", "building_block", "component"],
        )
        .unwrap();
        let dapr_api_refused = IntCounterVec::new(
            Opts::new(
                "fngate_dapr_api_refused_total",
                "Dapr API calls refused by a limit (reason in_flight: the app's calls in flight)",
            ),
            &["namespace", "function", "transport", "reason"],
        )
        .unwrap();
        let dapr_invocations = IntCounterVec::new(
            Opts::new(
                "fngate_dapr_invocations_total",
                "Service invocations through the Dapr API, by caller and target function",
            ),
            &[
                "namespace",
                "function",
                "target_namespace",
                "target_function",
                "outcome",
            ],
        )
        .unwrap();
        let dapr_auth_failures = IntCounterVec::new(
            Opts::new(
                "fngate_dapr_api_auth_failures_total",
                "Dapr API calls refused for a missing or unknown dapr-api-token, by transport (grpc, http)",
            ),
            &["transport"],
        )
        .unwrap();
        let dapr_component_connected = IntGaugeVec::new(
            Opts::new(
                "fngate_dapr_component_connected",
                "1 while the store or broker behind a Dapr component answered its last call",
            ),
            &["namespace", "component", "type"],
        )
        .unwrap();
        for c in [
            Box::new(scale_signals.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(dapr_calls.clone()),
            Box::new(dapr_call_duration.clone()),
            Box::new(dapr_auth_failures.clone()),
            Box::new(dapr_api_refused.clone()),
            Box::new(dapr_invocations.clone()),
            Box::new(dapr_component_connected.clone()),
            Box::new(catalog_events.clone()),
            Box::new(status_writes.clone()),
            Box::new(status_leader.clone()),
            Box::new(activator_probes.clone()),
            Box::new(triggers.clone()),
            Box::new(activator_waiting.clone()),
            Box::new(activator_wait_duration.clone()),
            Box::new(activator_releases.clone()),
            Box::new(activator_overflows.clone()),
            Box::new(activator_timeouts.clone()),
            Box::new(events.clone()),
            Box::new(event_delivery_duration.clone()),
            Box::new(events_in_flight.clone()),
            Box::new(events_waiting_for_app.clone()),
            Box::new(consumer_lag.clone()),
            Box::new(broker_connected.clone()),
            Box::new(requests.clone()),
            Box::new(request_duration.clone()),
            Box::new(upstream_connect_errors.clone()),
            Box::new(http_requests_by_path.clone()),
            Box::new(http_handoffs.clone()),
            Box::new(routes.clone()),
            Box::new(requests_in_flight.clone()),
            Box::new(draining.clone()),
            Box::new(functions.clone()),
            Box::new(config_revision.clone()),
            Box::new(reloads.clone()),
            Box::new(reload_duration.clone()),
            Box::new(diagnostics.clone()),
            Box::new(build_info.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            requests,
            request_duration,
            upstream_connect_errors,
            http_requests_by_path,
            http_handoffs,
            routes,
            requests_in_flight,
            draining,
            functions,
            config_revision,
            reloads,
            catalog_events,
            status_writes,
            status_leader,
            reload_duration,
            diagnostics,
            build_info,
            triggers,
            events,
            event_delivery_duration,
            events_in_flight,
            events_waiting_for_app,
            consumer_lag,
            broker_connected,
            activator_waiting,
            activator_wait_duration,
            activator_releases,
            activator_overflows,
            activator_timeouts,
            activator_probes,
            scale_signals,
            dapr_calls,
            dapr_call_duration,
            dapr_auth_failures,
            dapr_api_refused,
            dapr_invocations,
            dapr_component_connected,
        }
    }

    pub fn observe_plan(&self, plan: &Plan, outcome: &str, took: Duration) {
        self.reloads.with_label_values(&[outcome]).inc();
        self.reload_duration.observe(took.as_secs_f64());
        self.routes.set(plan.routes.len() as i64);
        self.functions.set(plan.functions.len() as i64);
        self.triggers.set(plan.triggers.len() as i64);
        self.config_revision.set(plan.revision as i64);
        let errors = plan
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count();
        self.diagnostics
            .with_label_values(&["error"])
            .set(errors as i64);
        self.diagnostics
            .with_label_values(&["warning"])
            .set((plan.diagnostics.len() - errors) as i64);
    }

    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        use prometheus::Encoder;
        let _ = encoder.encode(&self.registry.gather(), &mut buf);
        buf
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
