//! fngate: the data plane of an OpenFunction-style FaaS platform.

pub mod api;
pub mod routing;
pub mod compile;
pub mod plan;
