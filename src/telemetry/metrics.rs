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
    pub routes: IntGauge,
    pub functions: IntGauge,
    pub config_revision: IntGauge,
    pub reloads: IntCounterVec,
    pub reload_duration: Histogram,
    pub diagnostics: IntGaugeVec,
    pub build_info: IntGaugeVec,
}

/// `2xx`, `4xx`... for the `code` label.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
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
        let routes = IntGauge::new("fngate_routes", "Route matches in the serving plan").unwrap();
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
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(upstream_connect_errors.clone()),
            Box::new(routes.clone()),
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
            routes,
            functions,
            config_revision,
            reloads,
            reload_duration,
            diagnostics,
            build_info,
        }
    }

    pub fn observe_plan(&self, plan: &Plan, outcome: &str, took: Duration) {
        self.reloads.with_label_values(&[outcome]).inc();
        self.reload_duration.observe(took.as_secs_f64());
        self.routes.set(plan.routes.len() as i64);
        self.functions.set(plan.functions.len() as i64);
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
