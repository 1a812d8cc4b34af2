use crate::plan::{Plan, ServiceEndpoints};
use crate::routing::Rule;
use std::sync::Arc;
use std::time::Instant;

/// Per-request state. The plan is loaded once in `new_ctx` so a request finishes on the
/// plan it started with, whatever reloads happen meanwhile.
pub struct RequestCtx {
    pub plan: Arc<Plan>,
    pub started: Instant,
    pub rule: Option<Arc<Rule>>,
    pub matched_prefix: Option<Arc<str>>,
    /// Index into `rule.backends` of the chosen backend.
    pub backend: usize,
    /// Its Service's endpoints, looked up once when the backend is chosen.
    pub endpoints: Option<Arc<ServiceEndpoints>>,
    /// Connection attempts that failed so far.
    pub failed_attempts: usize,
    /// Replays after a fresh connection to the function closed without an answer.
    pub unanswered_replays: u8,
    pub body_bytes: u64,
    /// The request announced a body (HTTP/1 framing headers; HTTP/2 an open stream).
    pub has_body: bool,
    pub tls: bool,
    /// Mirror copies still receiving the request body.
    pub mirrors: Vec<super::mirror::MirrorBody>,
    /// Counts this request in its function's load (for KEDA) until the request ends.
    pub running: Option<crate::activator::Running>,
    /// A request released after a hold with a release limit: its share of the fresh
    /// pod's capacity, returned when the request ends.
    pub release_permit: Option<crate::activator::ReleasePermit>,
    /// Counts the request in the shutdown drain until it ends.
    _in_flight: crate::drain::InFlight,
}

impl RequestCtx {
    pub fn new(plan: Arc<Plan>, in_flight: crate::drain::InFlight) -> Self {
        RequestCtx {
            plan,
            started: Instant::now(),
            rule: None,
            matched_prefix: None,
            backend: 0,
            endpoints: None,
            failed_attempts: 0,
            unanswered_replays: 0,
            body_bytes: 0,
            has_body: false,
            tls: false,
            mirrors: Vec::new(),
            running: None,
            release_permit: None,
            _in_flight: in_flight,
        }
    }

    /// `(namespace, function)` for metrics; empty when no route matched.
    pub fn function_labels(&self) -> (&str, &str) {
        match &self.rule {
            Some(r) => (&r.function.namespace, &r.function.name),
            None => ("", ""),
        }
    }
}
