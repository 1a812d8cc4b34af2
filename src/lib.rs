//! fngate: the data plane of an OpenFunction-style FaaS platform.

pub mod api;
pub mod routing;
pub mod compile;
pub mod plan;
pub mod config;
pub mod catalog;
pub mod publish;
pub mod telemetry;
pub mod proxy;
pub mod server;
