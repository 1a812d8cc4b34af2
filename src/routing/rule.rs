//! What a matched rule does: filters, backends, timeouts — compiled, validated values.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The Function a rule came from; its namespace and name are the metrics labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct FunctionRef {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

/// A Service port to send to. `port: None` means "the slice's port".
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct BackendTarget {
    pub namespace: Arc<str>,
    pub service: Arc<str>,
    pub port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WeightedBackend {
    pub target: BackendTarget,
    pub weight: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HeaderEdits {
    /// Names lower-cased.
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum PathRewrite {
    Full(String),
    Prefix(String),
}

impl PathRewrite {
    /// The new path (without query) for `path`, which matched `matched_prefix` when the
    /// route matched by prefix.
    pub fn apply(&self, path: &str, matched_prefix: Option<&str>) -> String {
        match self {
            PathRewrite::Full(p) => p.clone(),
            PathRewrite::Prefix(replacement) => {
                let prefix = matched_prefix.unwrap_or("/");
                let rest = if prefix == "/" {
                    path
                } else {
                    path.get(prefix.len()..).unwrap_or("")
                };
                let head = replacement.trim_end_matches('/');
                let joined = if rest.is_empty() || rest.starts_with('/') {
                    format!("{head}{rest}")
                } else {
                    format!("{head}/{rest}")
                };
                if joined.is_empty() {
                    "/".to_owned()
                } else {
                    joined
                }
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathRewrite>,
    pub status: u16,
}

impl Redirect {
    /// The `Location` for a request; `request_port` is the port of the request's Host
    /// header, if it named one.
    pub fn location(
        &self,
        request_scheme: &str,
        request_host: &str,
        request_port: Option<u16>,
        path: &str,
        query: Option<&str>,
        matched_prefix: Option<&str>,
    ) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(request_scheme);
        let host = self.hostname.as_deref().unwrap_or(request_host);
        // Gateway API: with a scheme change and no port, the port is the scheme's default;
        // otherwise the request's port is kept. Default ports are left out of Location.
        let port = match (self.port, &self.scheme) {
            (Some(p), _) => Some(p),
            (None, Some(_)) => None,
            (None, None) => request_port,
        };
        let default_port = if scheme == "https" { 443 } else { 80 };
        let new_path = match &self.path {
            Some(rw) => rw.apply(path, matched_prefix),
            None => path.to_owned(),
        };
        let mut loc = format!("{scheme}://{host}");
        if let Some(p) = port.filter(|p| *p != default_port) {
            loc.push_str(&format!(":{p}"));
        }
        loc.push_str(&new_path);
        if let Some(q) = query {
            loc.push('?');
            loc.push_str(q);
        }
        loc
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Rewrite {
    pub hostname: Option<String>,
    pub path: Option<PathRewrite>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct RuleTimeouts {
    /// Whole request, client to response headers; `None` = no limit from the route.
    pub request: Option<Duration>,
    /// One attempt against one backend.
    pub backend_request: Option<Duration>,
}

/// How a request for this Function waits while it has no ready endpoint (scale from
/// zero). One per Function, shared by its rules.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HoldPolicy {
    /// The Function's `fngate.io/hold-timeout`; `None` = fngate's `activator.hold_timeout`.
    pub timeout: Option<Duration>,
    /// How many released requests one endpoint takes at a time after a hold
    /// (`fngate.io/release-concurrency`, else Knative's `autoscaling.knative.dev/target` in
    /// `scaleOptions.knative`); `None` = all at once.
    pub release_concurrency: Option<u32>,
    /// Probe listed-but-not-ready endpoints with `GET <path>` (2xx/3xx = ready) instead of
    /// a TCP connect: `fngate.io/readiness-path`, else the function container's
    /// `readinessProbe.httpGet.path`.
    pub readiness_path: Option<String>,
}

/// A rule's filters. Most rules have none, so they live behind one optional box and a
/// plain rule stays small (10,000 Functions hold tens of thousands of rules).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RuleFilters {
    pub request_headers: Option<HeaderEdits>,
    pub response_headers: Option<HeaderEdits>,
    pub redirect: Option<Redirect>,
    pub rewrite: Option<Rewrite>,
    pub mirrors: Vec<BackendTarget>,
}

impl RuleFilters {
    pub fn is_empty(&self) -> bool {
        self == &RuleFilters::default()
    }
}

/// One compiled HTTPRoute rule of one Function.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rule {
    pub function: FunctionRef,
    pub rule_index: usize,
    pub rule_name: Option<Box<str>>,
    pub filters: Option<Box<RuleFilters>>,
    /// Shared by every rule of a Function that uses the Function's own Service.
    pub backends: Arc<[WeightedBackend]>,
    pub timeouts: RuleTimeouts,
    pub hold: Arc<HoldPolicy>,
    /// `fngate.io/upstream-protocol`: `Some(true)` h2c to the pods, `Some(false)` HTTP/1.1,
    /// whatever the EndpointSlices say; `None`: the port's `appProtocol` decides.
    pub upstream_h2c: Option<bool>,
    /// Which weighted pick comes next.
    #[serde(skip)]
    pub next_pick: PickCounter,
    /// Shared by the rules of one compiled Function: what the proxy resolves on its first
    /// request (metric series, activity counter) so later requests need no lookup.
    #[serde(skip)]
    pub serving: Arc<ServingSlot>,
}

/// Opaque to routing (which knows neither metrics nor the activator); not part of a
/// rule's content.
#[derive(Default)]
pub struct ServingSlot(std::sync::OnceLock<Arc<dyn std::any::Any + Send + Sync>>);

impl ServingSlot {
    /// The value of type `T` kept here, made by `init` the first time.
    pub fn get_or_init<T: Send + Sync + 'static>(&self, init: impl FnOnce() -> T) -> &T {
        self.0
            .get_or_init(|| Arc::new(init()))
            .downcast_ref::<T>()
            .expect("one type per slot")
    }
}

impl std::fmt::Debug for ServingSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServingSlot")
    }
}

impl PartialEq for ServingSlot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Counts a rule's weighted picks. Not part of the rule's content: equal whatever its
/// value, and a clone starts from zero.
#[derive(Debug, Default)]
pub struct PickCounter(AtomicU64);

impl Clone for PickCounter {
    fn clone(&self) -> Self {
        PickCounter::default()
    }
}

impl PartialEq for PickCounter {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl PickCounter {
    /// The next roll in `0..total`. Pick n rolls `n × P mod total` for a prime P: every
    /// `total` consecutive picks visit each roll once, interleaved, so each backend gets
    /// exactly its weight's share of every `total` requests (a random roll only
    /// approaches it, and a small weight can be starved for a while).
    pub fn next_roll(&self, total: u32) -> u32 {
        const P: u64 = 2_654_435_761;
        let total = u64::from(total.max(1));
        let n = self.0.fetch_add(1, Ordering::Relaxed) % total;
        (n * (P % total) % total) as u32
    }
}

impl Rule {
    pub fn request_headers(&self) -> Option<&HeaderEdits> {
        self.filters.as_ref()?.request_headers.as_ref()
    }
    pub fn response_headers(&self) -> Option<&HeaderEdits> {
        self.filters.as_ref()?.response_headers.as_ref()
    }
    pub fn redirect(&self) -> Option<&Redirect> {
        self.filters.as_ref()?.redirect.as_ref()
    }
    pub fn rewrite(&self) -> Option<&Rewrite> {
        self.filters.as_ref()?.rewrite.as_ref()
    }
    pub fn mirrors(&self) -> &[BackendTarget] {
        self.filters
            .as_ref()
            .map(|f| f.mirrors.as_slice())
            .unwrap_or(&[])
    }

    /// Index of the weighted pick among backends; `roll` is uniform in `0..total_weight`.
    pub fn pick_backend_index(&self, roll: u32) -> Option<usize> {
        let mut acc = 0u32;
        self.backends.iter().position(|b| {
            acc += b.weight;
            roll < acc
        })
    }
    pub fn pick_backend(&self, roll: u32) -> Option<&BackendTarget> {
        self.pick_backend_index(roll)
            .map(|i| &self.backends[i].target)
    }
    pub fn total_weight(&self) -> u32 {
        self.backends.iter().map(|b| b.weight).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_picks_give_each_backend_exactly_its_share_of_every_total_requests() {
        for total in [1u32, 2, 3, 7, 10, 100, 101, 1_000_000] {
            let counter = PickCounter::default();
            // Any `total` consecutive picks visit every roll once.
            let mut seen = std::collections::HashSet::new();
            for _ in 0..total.min(100_000) {
                let roll = counter.next_roll(total);
                assert!(roll < total);
                if total <= 100_000 {
                    assert!(seen.insert(roll), "roll {roll} twice within {total} picks");
                }
            }
        }
        // 70/30: 700 of 1,000 picks below 70, in runs no longer than a few.
        let counter = PickCounter::default();
        let picks: Vec<bool> = (0..1000).map(|_| counter.next_roll(100) < 70).collect();
        assert_eq!(picks.iter().filter(|v1| **v1).count(), 700);
        assert!(
            picks.windows(10).all(|w| w.iter().any(|v1| !v1)),
            "interleaved"
        );
    }

    #[test]
    fn prefix_rewrite_keeps_the_rest_of_the_path_on_a_segment_boundary() {
        let rw = PathRewrite::Prefix("/one".into());
        assert_eq!(rw.apply("/prefix/one/two", Some("/prefix/one")), "/one/two");
        assert_eq!(rw.apply("/prefix/one", Some("/prefix/one")), "/one");
        let root = PathRewrite::Prefix("/".into());
        assert_eq!(
            root.apply("/strip-prefix/three", Some("/strip-prefix")),
            "/three"
        );
        assert_eq!(root.apply("/strip-prefix", Some("/strip-prefix")), "/");
        assert_eq!(
            PathRewrite::Full("/x".into()).apply("/a/b", Some("/a")),
            "/x"
        );
    }

    #[test]
    fn redirect_location_fills_in_from_the_request() {
        let r = Redirect {
            scheme: Some("https".into()),
            hostname: None,
            port: None,
            path: None,
            status: 302,
        };
        assert_eq!(
            r.location("http", "example.org", Some(8080), "/a", Some("q=1"), None),
            "https://example.org/a?q=1"
        );
        let r = Redirect {
            scheme: None,
            hostname: Some("x.org".into()),
            port: Some(8443),
            path: None,
            status: 301,
        };
        assert_eq!(
            r.location("http", "example.org", None, "/a", None, None),
            "http://x.org:8443/a"
        );
        let r = Redirect {
            scheme: None,
            hostname: None,
            port: None,
            path: None,
            status: 302,
        };
        assert_eq!(
            r.location("http", "example.org", Some(8080), "/", None, None),
            "http://example.org:8080/"
        );
        assert_eq!(
            r.location("http", "example.org", Some(80), "/", None, None),
            "http://example.org/"
        );
    }
}
