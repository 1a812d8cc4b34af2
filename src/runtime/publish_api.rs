//! The publish and output-binding building blocks, one handler per Dapr call.

use super::cloudevent::{envelope, EnvelopeInput};
use super::error::ApiError;
use super::outputs::{http_binding, KafkaRecord};
use super::{CallTimer, DaprApi};
use crate::plan::{BindingBackend, BindingComponent, BrokerBackend, DaprApp, PubsubComponent};
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
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
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

#[derive(Debug, Default)]
pub struct BindingResponse {
    /// `None`: the component answered nothing (HTTP 204).
    pub data: Option<Bytes>,
    pub metadata: Vec<(String, String)>,
}

/// What goes to the broker for one publish.
struct Event {
    bytes: Bytes,
    metadata: Vec<(String, String)>,
    /// The envelope's id (none for a raw payload).
    id: Option<String>,
}

/// daprd's topic ACL check, after the envelope is built, before the broker.
fn may_publish(app: &DaprApp, component: &PubsubComponent, topic: &str) -> Result<(), ApiError> {
    if component.acl.may_publish(&app.app_id, topic) {
        return Ok(());
    }
    Err(pubsub_error(
        Code::PermissionDenied,
        403,
        "ERR_PUBSUB_FORBIDDEN",
        "DAPR_PUBSUB_FORBIDDEN",
        format!("topic {topic} is not allowed for app id {}", app.app_id),
    ))
}

fn pubsub_error(
    code: Code,
    http: u16,
    error_code: &'static str,
    reason: &'static str,
    message: String,
) -> ApiError {
    ApiError::rich(code, http, error_code, reason, message)
}

impl DaprApi {
    fn pubsub<'a>(
        &self,
        app: &'a DaprApp,
        name: &str,
        topic: &str,
    ) -> Result<&'a PubsubComponent, ApiError> {
        if name.is_empty() {
            return Err(pubsub_error(
                Code::InvalidArgument,
                404,
                "ERR_PUBSUB_EMPTY",
                "DAPR_PUBSUB_NAME_EMPTY",
                "pubsub name is empty".into(),
            ));
        }
        let Some(p) = app.pubsubs.get(name) else {
            return Err(pubsub_error(
                Code::InvalidArgument,
                404,
                "ERR_PUBSUB_NOT_FOUND",
                "DAPR_PUBSUB_NOT_FOUND",
                format!("pubsub {name} is not found"),
            ));
        };
        if topic.is_empty() {
            return Err(pubsub_error(
                Code::InvalidArgument,
                404,
                "ERR_TOPIC_NAME_EMPTY",
                "DAPR_PUBSUB_TOPIC_NAME_EMPTY",
                format!("topic is empty in pubsub {name}"),
            ));
        }
        Ok(p)
    }

    /// PublishEvent: the CloudEvent envelope (unless `rawPayload`), then the broker.
    pub async fn publish(&self, app: &DaprApp, request: PublishRequest) -> Result<(), ApiError> {
        let timer = CallTimer::start(self, app, "publish");
        let result = async {
            let component = self.pubsub(app, &request.pubsub, &request.topic)?;
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
            let component = self.pubsub(app, pubsub, topic)?;
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
            Some(v) => parse_go_bool(v).ok_or_else(|| {
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
                    request.traceparent.clone().unwrap_or_default(),
                ));
                metadata.push((
                    "tracestate".into(),
                    request.tracestate.clone().unwrap_or_default(),
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
            traceparent: request.traceparent.as_deref(),
            tracestate: request.tracestate.as_deref(),
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

    async fn send_event(
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

    /// Records whether a send through `binding` reached its broker.
    fn sent_to(&self, binding: &BindingComponent, sent: Result<(), String>) -> Result<(), String> {
        self.metrics
            .dapr_component_connected
            .with_label_values(&[&binding.id.namespace, &binding.id.name, &binding.kind])
            .set(sent.is_ok() as i64);
        sent
    }

    /// InvokeBinding on an output binding the app may use.
    pub async fn invoke_binding(
        &self,
        app: &DaprApp,
        name: &str,
        operation: &str,
        data: Bytes,
        metadata: Vec<(String, String)>,
    ) -> Result<BindingResponse, ApiError> {
        let timer = CallTimer::start(self, app, "binding");
        let failed = |inner: String| {
            ApiError::basic(
                Code::Internal,
                500,
                "ERR_INVOKE_OUTPUT_BINDING",
                format!("error invoking output binding {name}: {inner}"),
            )
        };
        let result = async {
            if operation.is_empty() {
                return Err(failed("operation field is missing from request".into()));
            }
            let Some(binding) = app.bindings.get(name) else {
                return Err(failed(format!("couldn't find output binding {name}")));
            };
            timer.component(&binding.id.name);
            let operations = binding.backend.operations();
            if !operations.contains(&operation) {
                let list: String = operations.iter().map(|o| format!(" {o}")).collect();
                return Err(failed(format!(
                    "binding {name} does not support operation {operation}. supported operations:{list}"
                )));
            }
            match &binding.backend {
                BindingBackend::Kafka {
                    producer,
                    publish_topic,
                } => {
                    let value = (&data[..] != b"null").then_some(&data[..]);
                    let sent = self
                        .clients
                        .kafka_send(
                            &binding.id,
                            producer,
                            &self.partitions,
                            KafkaRecord {
                                topic: publish_topic,
                                value,
                                metadata: &metadata,
                            },
                        )
                        .await;
                    self.sent_to(binding, sent).map_err(failed)?;
                    Ok(BindingResponse::default())
                }
                BindingBackend::Mqtt { producer, topic } => {
                    // As mqtt3: the request's `topic` and `retain` metadata first.
                    let topic = super::metadata_value(&metadata, "topic")
                        .or(topic.as_deref())
                        .ok_or_else(|| failed("no topic: set the binding's topic metadata or the request's".into()))?;
                    let retain = super::metadata_value(&metadata, "retain")
                        .and_then(parse_go_bool)
                        .unwrap_or(producer.retain);
                    let sent = self.clients.mqtt_publish(producer, topic, data, retain).await;
                    self.sent_to(binding, sent).map_err(failed)?;
                    Ok(BindingResponse::default())
                }
                BindingBackend::Http { url, tls } => {
                    let client = self.clients.http_client(tls.as_ref()).map_err(failed)?;
                    let reply = http_binding(&client, url, operation, data, &metadata)
                        .await
                        .map_err(failed)?;
                    let error_if_not_2xx = super::metadata_value(&metadata, "errorIfNot2XX")
                        .and_then(parse_go_bool)
                        .unwrap_or(true);
                    if error_if_not_2xx && !(200..300).contains(&reply.status) {
                        return Err(failed(format!("received status code {}", reply.status)));
                    }
                    Ok(BindingResponse {
                        data: Some(reply.body),
                        metadata: reply.metadata,
                    })
                }
            }
        }
        .await;
        timer.finish(result)
    }
}

fn publish_failed(pubsub: &str, topic: &str, error: String) -> ApiError {
    ApiError::rich(
        Code::Internal,
        500,
        "ERR_PUBSUB_PUBLISH_MESSAGE",
        "DAPR_PUBSUB_PUBLISH_MESSAGE",
        format!("error when publishing to topic {topic} in pubsub {pubsub}: {error}"),
    )
    .with_resource("pubsub", pubsub)
    .with_info(vec![
        ("topic".into(), topic.to_owned()),
        ("error".into(), error),
    ])
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}
