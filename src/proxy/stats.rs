//! What the proxy keeps per Function: its metric series and its activity counter,
//! resolved on the Function's first request and kept in its compiled rules, so a request
//! neither hashes label values nor takes the activator's lock.

use crate::activator::{Activator, Activity, Running};
use crate::routing::Rule;
use crate::telemetry::{status_class_index, Metrics, STATUS_CLASSES};
use prometheus::{Histogram, IntCounter};
use std::sync::{Arc, OnceLock};

/// One function's request series (empty labels: requests no route matched). Each is made
/// when first used, so a class never seen stays absent from `/metrics`.
pub struct RequestSeries {
    namespace: Arc<str>,
    name: Arc<str>,
    metrics: Arc<Metrics>,
    /// By `status_class_index`.
    requests: [OnceLock<IntCounter>; STATUS_CLASSES.len()],
    duration: OnceLock<Histogram>,
}

impl RequestSeries {
    pub fn new(metrics: &Arc<Metrics>, namespace: Arc<str>, name: Arc<str>) -> Self {
        RequestSeries {
            namespace,
            name,
            metrics: metrics.clone(),
            requests: Default::default(),
            duration: OnceLock::new(),
        }
    }

    pub fn record(&self, status: u16, seconds: f64) {
        let class = status_class_index(status);
        let labels = [&*self.namespace, &*self.name];
        self.requests[class]
            .get_or_init(|| {
                self.metrics.requests.with_label_values(&[
                    labels[0],
                    labels[1],
                    STATUS_CLASSES[class],
                ])
            })
            .inc();
        self.duration
            .get_or_init(|| self.metrics.request_duration.with_label_values(&labels))
            .observe(seconds);
    }
}

pub struct FunctionStats {
    pub series: RequestSeries,
    activity: Arc<Activity>,
}

impl FunctionStats {
    /// The handles of `rule`'s Function.
    pub fn of<'r>(rule: &'r Rule, metrics: &Arc<Metrics>, activator: &Activator) -> &'r Self {
        rule.serving.get_or_init(|| {
            let (ns, name) = (&rule.function.namespace, &rule.function.name);
            FunctionStats {
                series: RequestSeries::new(metrics, ns.clone(), name.clone()),
                activity: activator.activity(ns, name),
            }
        })
    }

    pub fn running(&self) -> Running {
        Activity::running(&self.activity)
    }
}
