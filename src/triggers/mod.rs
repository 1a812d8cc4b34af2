//! Event triggers: Kafka, NATS JetStream and MQTT consumers and cron schedules that deliver
//! every event to a function exactly as a Dapr sidecar would (AppCallback gRPC or Dapr's HTTP protocol),
//! at least once. The supervisor follows the plan's `TriggerSet` by diff.

mod app;
mod bulk;
mod contract;
mod cron;
mod dapr_grpc;
mod dapr_http;
mod delivery;
mod event;
mod jetstream;
mod kafka;
mod mqtt;
mod supervisor;
mod wire;

pub use contract::Answer;
pub use cron::parse_schedule;
pub(crate) use mqtt::options as mqtt_options;

/// A random id made once per process: Dapr replaces `{uuid}` in component metadata
/// (an MQTT `consumerID`) once per daprd.
pub fn process_uuid() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(event::batch_id)
}

/// `{uuid}` for one component in this process: stable while the process runs, and
/// different per `scope` (trigger or output component). One fngate serves many functions,
/// and the samples all say `consumerID: '{uuid}'`: with one id per process their MQTT
/// clients would share a client id and the broker would keep taking the connection from
/// one to give it to the other.
pub fn process_uuid_for(scope: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(process_uuid())
        .chain_update([0])
        .chain_update(scope)
        .finalize();
    event::uuid_shaped(&digest[..16])
}
pub use dapr_grpc::{topic_metadata, wire_form as grpc_wire_form, GrpcApp};
pub use dapr_http::delivery_request as http_delivery_request;
pub use delivery::{Decision, Settled};
pub use event::{CloudEvent, Event};
pub use kafka::OffsetTracker;
pub use supervisor::TriggerSupervisor;
