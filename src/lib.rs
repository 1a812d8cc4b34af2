//! fngate: the data plane of an OpenFunction-style FaaS platform.

pub mod activator;
pub mod api;
pub mod catalog;
pub mod client_tls;
pub mod compile;
pub mod config;
pub mod drain;
pub mod lease;
pub mod plan;
pub mod plan_swap;
pub mod proxy;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod status;
pub mod telemetry;
pub mod triggers;
