//! The publish building block: the envelope, the topic ACL, the broker.

use super::cloudevent::{envelope, EnvelopeInput};
use super::error::ApiError;
use super::outputs::KafkaRecord;
use super::{CallTimer, DaprApi};
use crate::plan::{BrokerBackend, DaprApp, PubsubComponent};
use bytes::Bytes;
use tonic::Code;

/// A publish as both transports decode it.
#[derive(Debug, Default)]
pub struct PublishRequest {
    pub pubsub: String,
    pub topic: String,
    pub data: Bytes,
    pub content_type: String,
    pub metadata: Vec<(String, String)>,
    pub trace: super::surface::Trace,
    /// daprd adds `traceid`/`tracestate` to a raw payload's metadata on gRPC only.
    pub grpc: bool,
}

#[derive(Debug, Default)]
pub struct BulkEntry {
    pub entry_id: String,
    pub event: Bytes,
    pub content_type: String,
    /// `None` when the entry carried no metadata (then the request's applies alone).
    pub metadata: Option<Vec<(String, String)>>,
}

/// What goes to the broker for one publish.
pub(crate) struct Event {
    pub bytes: Bytes,
    pub metadata: Vec<(String, String)>,
    /// The envelope's id (none for a raw payload).
    pub id: Option<String>,
}

/// daprd's topic ACL check, after the envelope is built, before the broker.
fn may_publish(app: &DaprApp, component: &PubsubComponent, topic: &str) -> Result<(), ApiError> {
    if component.acl.may_publish(&app.app_id, topic) {
        return Ok(());
    }
    let message = format!("topic {topic} is not allowed for app id {}", app.app_id);
    Err(pubsub_error(
        Code::PermissionDenied,
        403,
        "ERR_PUBSUB_FORBIDDEN",
        "DAPR_PUBSUB_FORBIDDEN",
        message.clone(),
        Some(&component.id.name),
    )
    .with_info(vec![
        ("topic".into(), topic.to_owned()),
        ("error".into(), message),
    ]))
}

/// daprd's pub/sub errors: ResourceInfo (described by the message) unless the pub/sub is
/// unknown.
fn pubsub_error(
    code: Code,
    http: u16,
    error_code: &'static str,
    reason: &'static str,
    message: String,
    pubsub: Option<&str>,
) -> ApiError {
    let e = ApiError::rich(code, http, error_code, reason, message);
    match pubsub {
        Some(name) => {
            let description = e.message.clone();
            e.with_resource("pubsub", name, &description)
        }
        None => e,
    }
}

impl DaprApi {
    /// The pub/sub and topic of a publish; `metadata` is the request's, which daprd puts
    /// in the ErrorInfo of an empty name or topic.
    fn pubsub<'a>(
        &self,
        app: &'a DaprApp,
        name: &str,
        topic: &str,
        metadata: &[(String, String)],
    ) -> Result<&'a PubsubComponent, ApiError> {
        if name.is_empty() {
            return Err(pubsub_error(
                Code::InvalidArgument,
                404,
                "ERR_PUBSUB_EMPTY",
                "DAPR_PUBSUB_NAME_EMPTY",
                "pubsub name is empty".into(),
                Some(""),
            )
            .with_info(metadata.to_vec()));
        }
        let Some(p) = app.pubsubs.get(name) else {
            return Err(pubsub_error(
                Code::InvalidArgument,
                404,
                "ERR_PUBSUB_NOT_FOUND",
                "DAPR_PUBSUB_NOT_FOUND",
                format!("pubsub {name} is not found"),
                None,
            ));
        };
        if topic.is_empty() {
            return Err(pubsub_error(
                Code::InvalidArgument,
                404,
                "ERR_TOPIC_NAME_EMPTY",
                "DAPR_PUBSUB_TOPIC_NAME_EMPTY",
                format!("topic is empty in pubsub {name}"),
                Some(name),
            )
            .with_info(metadata.to_vec()));
        }
        Ok(p)
    }

    /// PublishEvent: the CloudEvent envelope (unless `rawPayload`), then the broker.
    pub async fn publish(&self, app: &DaprApp, request: PublishRequest) -> Result<(), ApiError> {
        let timer = CallTimer::start(self, app, "publish");
        let result = async {
            let component = self.pubsub(app, &request.pubsub, &request.topic, &request.metadata)?;
            timer.component(&component.id.name);
            let event = self.event_bytes(app, &request)?;
            may_publish(app, component, &request.topic)?;
            self.send_event(component, &request.topic, event)
                .await
                .map_err(|e| publish_failed(&request.pubsub, &request.topic, e))
        }
        .await;
        timer.finish(result)
    }

    /// BulkPublishEvent: each entry wrapped on its own; the failed ones are returned.
    pub async fn bulk_publish(
        &self,
        app: &DaprApp,
        pubsub: &str,
        topic: &str,
        entries: Vec<BulkEntry>,
        metadata: Vec<(String, String)>,
        grpc: bool,
    ) -> Result<Vec<(String, String)>, ApiError> {
        let timer = CallTimer::start(self, app, "publish");
        let result = async {
            let component = self.pubsub(app, pubsub, topic, &metadata)?;
            timer.component(&component.id.name);
            let mut seen = std::collections::HashSet::new();
            for e in &entries {
                if e.entry_id.is_empty() || !seen.insert(e.entry_id.as_str()) {
                    return Err(ApiError::rich(
                        Code::InvalidArgument,
                        400,
                        "ERR_PUBSUB_EVENTS_SER",
                        "DAPR_PUBSUB_MARSHAL_EVENTS",
                        format!(
                            "error when marshalling events to bytes for topic {topic} pubsub {pubsub}: entryId is duplicated or not present for entry"
                        ),
                    ));
                }
            }
            let mut prepared = Vec::with_capacity(entries.len());
            for e in entries {
                let mut meta = metadata.clone();
                if let Some(m) = e.metadata {
                    meta.extend(m);
                }
                let request = PublishRequest {
                    pubsub: pubsub.to_owned(),
                    topic: topic.to_owned(),
                    data: e.event,
                    content_type: e.content_type,
                    metadata: meta,
                    grpc,
                    ..PublishRequest::default()
                };
                prepared.push((e.entry_id, self.event_bytes(app, &request)?));
            }
            may_publish(app, component, topic)?;
            // At most 100 in flight, as daprd's fallback bulk publisher.
            let mut results: Vec<(String, Result<(), String>)> = Vec::with_capacity(prepared.len());
            let mut prepared = prepared.into_iter().peekable();
            while prepared.peek().is_some() {
                let batch: Vec<_> = prepared.by_ref().take(100).collect();
                let sends = batch.into_iter().map(|(id, event)| async move {
                    let sent = self.send_event(component, topic, event).await;
                    (id, sent)
                });
                results.extend(futures::future::join_all(sends).await);
            }
            let failed: Vec<(String, String)> = results
                .into_iter()
                .filter_map(|(id, r)| r.err().map(|e| (id, e)))
                .collect();
            if grpc {
                // daprd answers gRPC with the error status, the list only reaches HTTP.
                if let Some((_, e)) = failed.first() {
                    return Err(publish_failed(pubsub, topic, e.clone()));
                }
            }
            Ok(failed)
        }
        .await;
        timer.finish(result)
    }

    fn event_bytes(&self, app: &DaprApp, request: &PublishRequest) -> Result<Event, ApiError> {
        let raw = match super::metadata_value(&request.metadata, "rawPayload") {
            None => false,
            Some(v) => super::surface::parse_go_bool(v).ok_or_else(|| {
                ApiError::rich(
                    Code::InvalidArgument,
                    400,
                    "ERR_PUBSUB_REQUEST_METADATA",
                    "DAPR_PUBSUB_METADATA_DESERIALIZATION",
                    format!(
                        "failed deserializing metadata. Error: rawPayload value must be a valid boolean: actual is '{v}'"
                    ),
                )
            })?,
        };
        let mut metadata = request.metadata.clone();
        if raw {
            if request.grpc {
                metadata.push((
                    "traceid".into(),
                    request.trace.traceparent.clone().unwrap_or_default(),
                ));
                metadata.push((
                    "tracestate".into(),
                    request.trace.tracestate.clone().unwrap_or_default(),
                ));
            }
            return Ok(Event {
                bytes: request.data.clone(),
                metadata,
                id: None,
            });
        }
        let envelope = envelope(&EnvelopeInput {
            app_id: &app.app_id,
            pubsub: &request.pubsub,
            topic: &request.topic,
            data: &request.data,
            content_type: &request.content_type,
            metadata: &request.metadata,
            traceparent: request.trace.traceparent.as_deref(),
            tracestate: request.trace.tracestate.as_deref(),
            now: time::OffsetDateTime::now_utc(),
        })
        .map_err(|e| {
            tracing::debug!(app = %app.app_id, error = %e.0, "publish: the payload is not a CloudEvent");
            ApiError::rich(
                Code::InvalidArgument,
                500,
                "ERR_PUBSUB_CLOUD_EVENTS_SER",
                "DAPR_PUBSUB_CLOUD_EVENT_CREATION",
                "cannot create cloudevent".into(),
            )
        })?;
        Ok(Event {
            bytes: Bytes::from(envelope.bytes),
            metadata,
            id: envelope.id,
        })
    }

    pub(crate) async fn send_event(
        &self,
        component: &PubsubComponent,
        topic: &str,
        event: Event,
    ) -> Result<(), String> {
        let Event {
            bytes,
            metadata,
            id,
        } = event;
        let metadata = &metadata[..];
        let topic = if component.namespaced_topics {
            format!("{}{topic}", component.id.namespace)
        } else {
            topic.to_owned()
        };
        let result = match &component.backend {
            BrokerBackend::Kafka(settings) => {
                let value = (&bytes[..] != b"null").then_some(&bytes[..]);
                self.clients
                    .kafka_send(
                        &component.id,
                        settings,
                        &self.partitions,
                        KafkaRecord {
                            topic: &topic,
                            value,
                            metadata,
                        },
                    )
                    .await
            }
            BrokerBackend::Jetstream { nats_url } => {
                self.clients
                    .jetstream_publish(nats_url, &topic, bytes, id.as_deref())
                    .await
            }
            BrokerBackend::Mqtt(settings) => {
                self.clients
                    .mqtt_publish(settings, &topic, bytes, settings.retain)
                    .await
            }
        };
        self.metrics
            .dapr_component_connected
            .with_label_values(&[&component.id.namespace, &component.id.name, &component.kind])
            .set(result.is_ok() as i64);
        result
    }
}

fn publish_failed(pubsub: &str, topic: &str, error: String) -> ApiError {
    let message = format!("error when publishing to topic {topic} in pubsub {pubsub}: {error}");
    ApiError::rich(
        Code::Internal,
        500,
        "ERR_PUBSUB_PUBLISH_MESSAGE",
        "DAPR_PUBSUB_PUBLISH_MESSAGE",
        message.clone(),
    )
    .with_resource("pubsub", pubsub, &message)
    .with_info(vec![
        ("topic".into(), topic.to_owned()),
        ("error".into(), error),
    ])
}
