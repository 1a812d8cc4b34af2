//! The HTTP data plane: a pingora `ProxyHttp` whose phases each delegate to a small named
//! function — match, answer locally (404, redirects, 5xx), pick an endpoint, rewrite,
//! stream both ways, account.

mod context;
mod headers;
mod mirror;
mod own_h1;
mod service;
mod stats;

pub use context::RequestCtx;
pub use own_h1::{OwnHttp1, SMALL_BODY};
pub use service::{FunctionProxy, ProxyLimits};
pub use stats::RequestSeries;
