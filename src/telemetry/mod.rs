//! Metrics and the admin listener (`/metrics`, `/healthz`, `/readyz`, `/routes`,
//! `/diagnostics`).

mod admin;
mod metrics;

pub use admin::AdminApp;
pub use metrics::{event_outcome, status_class_index, Metrics, STATUS_CLASSES};
