//! The output-binding building block: an app's call sent through the component.

use super::error::ApiError;
use super::outputs::{http_binding, KafkaRecord};
use super::surface::parse_go_bool;
use super::{CallTimer, DaprApi};
use crate::plan::{BindingBackend, BindingComponent, DaprApp};
use bytes::Bytes;
use tonic::Code;

#[derive(Debug, Default)]
pub struct BindingResponse {
    /// `None`: the component answered nothing (HTTP 204).
    pub data: Option<Bytes>,
    pub metadata: Vec<(String, String)>,
}

impl DaprApi {
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
