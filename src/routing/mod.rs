//! The route table: Gateway API HTTPRoute matching over every Function's rules.
//!
//! Pure data and matching — no tokio, no pingora — so it is unit-tested and benchmarked
//! alone. Hostname buckets (exact, then `*.` suffixes longest first, then routes without
//! hostnames) each hold a path index (a sorted list for a few paths, a matchit tree for
//! many) whose nodes list candidates already sorted by Gateway API precedence, so a
//! lookup walks at most one list per path prefix.

mod conditions;
mod rule;
mod table;

pub use conditions::{
    percent_decode, HeaderCondition, MatchConditions, PathCondition, StringMatch,
};
pub use rule::{
    BackendTarget, FunctionRef, HeaderEdits, HoldPolicy, PathRewrite, Redirect, Rewrite, Rule,
    RuleFilters, RuleTimeouts, ServingSlot, WeightedBackend,
};
pub use table::{
    normalize_host, EntrySet, RouteEntry, RouteMatch, RouteOrder, RouteSummary, RouteTable,
};

/// The request facts matching looks at, borrowed from the request.
pub trait RequestView {
    fn method(&self) -> &str;
    /// Lower-cased header name -> first value.
    fn header(&self, name: &str) -> Option<&str>;
    fn query(&self) -> Option<&str>;
}

/// A request written out as plain values, for tests, benches and the CLI.
#[derive(Clone, Debug, Default)]
pub struct PlainRequest {
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub query: Option<String>,
}

impl RequestView for PlainRequest {
    fn method(&self) -> &str {
        &self.method
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }
}
