//! What the proxy keeps per Function: its metric series and its activity counter,
//! resolved on the Function's first request and kept in its compiled rules, so a request
//! neither hashes label values nor takes the activator's lock.

use crate::activator::{Activator, Activity, Running};
use crate::routing::Rule;
use crate::telemetry::{status_class, Metrics};
use prometheus::{Histogram, IntCounter};
use std::sync::{Arc, OnceLock};

/// The status classes of `status_class`, in this order.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

pub struct FunctionStats {
    namespace: Arc<str>,
    name: Arc<str>,
    metrics: Arc<Metrics>,
    /// One series per status class, made when the class is first seen (an unseen class
    /// stays absent from `/metrics`, as before).
    requests: [OnceLock<IntCounter>; 6],
    duration: Histogram,
    activity: Arc<Activity>,
}

impl FunctionStats {
    /// The handles of `rule`'s Function.
    pub fn of<'r>(rule: &'r Rule, metrics: &Arc<Metrics>, activator: &Activator) -> &'r Self {
        rule.serving.get_or_init(|| {
            let (ns, name) = (&rule.function.namespace, &rule.function.name);
            FunctionStats {
                namespace: ns.clone(),
                name: name.clone(),
                metrics: metrics.clone(),
                requests: Default::default(),
                duration: metrics.request_duration.with_label_values(&[ns, name]),
                activity: activator.activity(ns, name),
            }
        })
    }

    pub fn running(&self) -> Running {
        Activity::running(&self.activity)
    }

    pub fn record(&self, status: u16, seconds: f64) {
        let class = status_class(status);
        let index = CLASSES.iter().position(|c| *c == class).unwrap_or(5);
        self.requests[index]
            .get_or_init(|| {
                self.metrics
                    .requests
                    .with_label_values(&[&self.namespace, &self.name, class])
            })
            .inc();
        self.duration.observe(seconds);
    }
}
