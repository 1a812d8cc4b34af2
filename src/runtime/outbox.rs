//! daprd's transactional outbox on the stores and brokers fngate has. A transaction on a
//! store with an outbox publishes, before it commits, one CloudEvent per upsert (the
//! value, or the transaction's projection of that key) to daprd's internal topic
//! `<namespace><app-id><publishTopic>outbox`, and writes a marker `outbox-<uuid>` with the
//! state. A relay per app and store consumes the internal topic: once the marker exists
//! (the transaction committed) it publishes the event to `publishTopic` and deletes the
//! marker; an event whose marker never appears (the transaction failed) is retried, or
//! dropped with `outboxDiscardWhenMissingState`.

use super::cloudevent::{envelope, EnvelopeInput};
use super::error::ApiError;
use super::publish_api::Event;
use super::state::{DeleteRequest, SetRequest, StateStore};
use super::state_api::StateItem;
use super::DaprApi;
use crate::plan::{BrokerBackend, DaprApp, Outbox, PubsubComponent, StateComponent};
use bytes::Bytes;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

/// daprd waits this long before looking for the marker, then retries for up to
/// `MARKER_PATIENCE` (500 ms, growing three-fold, at most 3 s apart).
const STATE_SCAN_DELAY: Duration = Duration::from_secs(1);
const MARKER_PATIENCE: Duration = Duration::from_secs(10);
/// An event whose marker stays missing is tried this many times before it is given up.
const MAX_ROUNDS: u32 = 5;

/// What a transaction on an outbox store writes besides its operations.
#[derive(Default)]
pub(crate) struct OutboxWrite {
    /// Indexes of the projection operations: published, never written.
    pub projections: Vec<usize>,
    pub markers: Vec<SetRequest>,
}

/// Go's `kitstrings.IsTruthy`.
fn truthy(v: &str) -> bool {
    matches!(
        v.to_ascii_lowercase().as_str(),
        "y" | "yes" | "true" | "t" | "on" | "1"
    )
}

/// daprd's `PubSubOutbox` error.
fn outbox_error(app: &DaprApp, error: String) -> ApiError {
    ApiError::rich(
        Code::Internal,
        500,
        "ERR_PUBLISH_OUTBOX",
        "DAPR_PUBSUB_OUTBOX",
        format!("error while publishing outbox message: {error}"),
    )
    .with_info(vec![
        ("appID".into(), app.app_id.clone()),
        ("error".into(), error),
    ])
}

/// The bytes an upsert's event carries: raw bytes as stored (gRPC), JSON for a JSON
/// content type, else the value as text (a JSON string without its quotes).
fn event_data(item: &StateItem, content_type: &str) -> Vec<u8> {
    if !item.json || content_type.eq_ignore_ascii_case("application/json") {
        return item.value.to_vec();
    }
    match serde_json::from_slice::<String>(&item.value) {
        Ok(s) => s.into_bytes(),
        Err(_) => item.value.to_vec(),
    }
}

impl DaprApi {
    /// daprd's `PublishInternal`: publishes one event per upsert of `operations` to the
    /// internal topic; returns which operations are projections (not written) and the
    /// markers to write with the transaction (stored as they are, without the app's
    /// prefix).
    pub(crate) async fn publish_internal(
        &self,
        app: &DaprApp,
        outbox: &Outbox,
        operations: &[(String, StateItem)],
    ) -> Result<OutboxWrite, ApiError> {
        let Some(pubsub) = app.pubsubs.get(&outbox.outbox_pubsub) else {
            return Err(outbox_error(
                app,
                format!("outbox pubsub {} not found", outbox.outbox_pubsub),
            ));
        };
        let mut write = OutboxWrite::default();
        let mut projections: HashMap<&str, &StateItem> = HashMap::new();
        for (i, (op, item)) in operations.iter().enumerate() {
            if op == "upsert"
                && super::metadata_value(&item.metadata, "outbox.projection").is_some_and(truthy)
            {
                projections.insert(&item.key, item);
                write.projections.push(i);
            }
        }
        let topic = outbox.internal_topic(&app.namespace, &app.app_id);
        for (i, (op, item)) in operations.iter().enumerate() {
            if op != "upsert" || write.projections.contains(&i) {
                continue;
            }
            let marker = format!("outbox-{}", super::cloudevent::uuid_v4());
            let payload = projections.get(item.key.as_str()).copied().unwrap_or(item);
            let content_type =
                super::metadata_value(&payload.metadata, "contentType").unwrap_or("");
            let data = event_data(payload, content_type);
            let envelope = envelope(&EnvelopeInput {
                app_id: &app.app_id,
                pubsub: &outbox.outbox_pubsub,
                topic: "",
                data: &data,
                content_type,
                metadata: &[("cloudevent.id".to_owned(), marker.clone())],
                traceparent: None,
                tracestate: None,
                now: time::OffsetDateTime::now_utc(),
            })
            .map_err(|e| outbox_error(app, e.0))?;
            // daprd copies the operation's metadata into the event's fields.
            let bytes =
                with_fields(&envelope.bytes, &item.metadata).map_err(|e| outbox_error(app, e))?;
            // JetStream de-duplicates on the message id: the internal event and the
            // published one (same CloudEvent id) may share a stream, so they differ here.
            self.send_event(
                pubsub,
                &topic,
                Event {
                    bytes: Bytes::from(bytes),
                    metadata: Vec::new(),
                    id: Some(format!("{marker}-internal")),
                },
            )
            .await
            .map_err(|e| outbox_error(app, e))?;
            write.markers.push(SetRequest {
                key: marker,
                value: Bytes::from_static(b"\"0\""),
                json: true,
                etag: None,
                concurrency: Default::default(),
                ttl: None,
            });
        }
        Ok(write)
    }

    /// One event of the internal topic: published on once its marker exists. `Err`: try
    /// it again later.
    async fn relay_event(&self, relay: &Relay, bytes: &[u8]) -> Result<(), String> {
        let Ok(mut event) = serde_json::from_slice::<BTreeMap<String, Box<RawValue>>>(bytes) else {
            tracing::warn!(app = %relay.app_id, "outbox: an internal event is not a CloudEvent; dropped");
            return Ok(());
        };
        let Some(marker) = event
            .get("id")
            .and_then(|id| serde_json::from_str::<String>(id.get()).ok())
        else {
            tracing::warn!(app = %relay.app_id, "outbox: an internal event has no id; dropped");
            return Ok(());
        };
        let store = self
            .clients
            .state_store(&relay.state)
            .map_err(|e| format!("state store {}: {e}", relay.state.id))?;
        tokio::time::sleep(STATE_SCAN_DELAY).await;
        if !marker_present(&*store, &marker).await? {
            return Err(format!(
                "cannot publish outbox message to topic {} with pubsub {}: outbox state not found",
                relay.outbox.publish_topic, relay.outbox.publish_pubsub
            ));
        }
        let raw =
            |s: &str| RawValue::from_string(serde_json::to_string(s).expect("a string serialises"));
        event.insert(
            "topic".into(),
            raw(&relay.outbox.publish_topic).map_err(|e| e.to_string())?,
        );
        event.insert(
            "pubsubname".into(),
            raw(&relay.outbox.publish_pubsub).map_err(|e| e.to_string())?,
        );
        let bytes = serde_json::to_vec(&event).map_err(|e| e.to_string())?;
        self.send_event(
            &relay.publish,
            &relay.outbox.publish_topic,
            Event {
                bytes: Bytes::from(bytes),
                metadata: Vec::new(),
                // A relay that publishes again after a crash is de-duplicated by JetStream.
                id: Some(marker.clone()),
            },
        )
        .await?;
        let mut wait = Duration::from_millis(500);
        for _ in 0..4 {
            match store
                .delete(DeleteRequest {
                    key: marker.clone(),
                    etag: None,
                })
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::debug!(error = %e, "outbox: deleting a marker failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 3).min(Duration::from_secs(3));
                }
            }
        }
        // Published: a marker left behind costs a key, not a duplicate.
        tracing::warn!(app = %relay.app_id, %marker, "outbox: the marker could not be deleted");
        Ok(())
    }

    /// Starts a relay for every outbox of the plan that has none, stops those of outboxes
    /// that left it.
    pub(crate) fn sync_outbox_relays(self: &Arc<Self>) {
        let plan = self.plan.load();
        let mut wanted: HashSet<Relay> = HashSet::new();
        for app in plan.dapr.apps.values() {
            for (_, state) in app.states.iter() {
                let Some(outbox) = &state.outbox else {
                    continue;
                };
                let (Some(internal), Some(publish)) = (
                    app.pubsubs.get(&outbox.outbox_pubsub),
                    app.pubsubs.get(&outbox.publish_pubsub),
                ) else {
                    continue;
                };
                wanted.insert(Relay {
                    app_id: app.app_id.clone(),
                    namespace: app.namespace.clone(),
                    outbox: outbox.clone(),
                    state: state.clone(),
                    internal: internal.clone(),
                    publish: publish.clone(),
                });
            }
        }
        let mut running = self.relays.lock().expect("not poisoned");
        running.retain(|relay, task| {
            let keep = wanted.contains(relay);
            if !keep {
                task.abort();
            }
            keep
        });
        for relay in wanted {
            if running.contains_key(&relay) {
                continue;
            }
            let api = self.clone();
            let key = relay.clone();
            let task = tokio::spawn(async move { api.run_relay(relay).await });
            running.insert(key, task);
        }
    }

    async fn run_relay(self: Arc<Self>, relay: Relay) {
        let topic = relay.internal_topic();
        tracing::info!(app = %relay.app_id, %topic, "outbox relay started");
        loop {
            let result = match &relay.internal.backend {
                BrokerBackend::Kafka(settings) => self.relay_kafka(&relay, settings, &topic).await,
                BrokerBackend::Jetstream { nats_url } => {
                    self.relay_jetstream(&relay, nats_url, &topic).await
                }
                BrokerBackend::Mqtt(_) => return,
            };
            if let Err(e) = result {
                tracing::warn!(app = %relay.app_id, %topic, error = %e, "outbox relay: broker unavailable; retrying");
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    async fn relay_jetstream(
        &self,
        relay: &Relay,
        nats_url: &str,
        topic: &str,
    ) -> Result<(), String> {
        use async_nats::jetstream::{self, consumer::pull, AckKind};
        use futures::StreamExt as _;
        let client = async_nats::connect(nats_url)
            .await
            .map_err(|e| e.to_string())?;
        let js = jetstream::new(client);
        let stream_name = js
            .stream_by_subject(topic.to_owned())
            .await
            .map_err(|e| format!("no stream holds the outbox subject {topic}: {e}"))?;
        let stream = js
            .get_stream(&stream_name)
            .await
            .map_err(|e| e.to_string())?;
        let durable = relay.consumer_name();
        let consumer = stream
            .get_or_create_consumer(
                &durable,
                pull::Config {
                    durable_name: Some(durable.clone()),
                    filter_subject: topic.to_owned(),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    max_deliver: MAX_ROUNDS as i64,
                    ack_wait: Duration::from_secs(60),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        tracing::debug!(app = %relay.app_id, %topic, consumer = %durable, "outbox relay consuming");
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| e.to_string())?;
            match self.relay_event(relay, &message.payload).await {
                Ok(()) => {
                    let _ = message.ack().await;
                }
                Err(e) if relay.outbox.discard_when_missing => {
                    tracing::error!(app = %relay.app_id, error = %e, "outbox: discarding the message");
                    let _ = message.ack().await;
                }
                Err(e) => {
                    tracing::warn!(app = %relay.app_id, error = %e, "outbox: rejecting the message for later processing");
                    let _ = message
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                        .await;
                }
            }
        }
        Err("the outbox consumer ended".into())
    }

    async fn relay_kafka(
        &self,
        relay: &Relay,
        settings: &crate::plan::KafkaProducerSettings,
        topic: &str,
    ) -> Result<(), String> {
        use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
        use rdkafka::Message as _;
        let mut config = rdkafka::ClientConfig::new();
        config
            .set("bootstrap.servers", &settings.brokers)
            .set("group.id", relay.consumer_name())
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest");
        for (k, v) in settings.auth.client_settings() {
            config.set(k, v);
        }
        let consumer: StreamConsumer = config.create().map_err(|e| e.to_string())?;
        consumer.subscribe(&[topic]).map_err(|e| e.to_string())?;
        loop {
            let message = consumer.recv().await.map_err(|e| e.to_string())?;
            let payload = message.payload().unwrap_or_default().to_vec();
            let mut round = 1;
            loop {
                match self.relay_event(relay, &payload).await {
                    Ok(()) => break,
                    Err(e) if relay.outbox.discard_when_missing || round >= MAX_ROUNDS => {
                        tracing::error!(app = %relay.app_id, error = %e, "outbox: giving the message up");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(app = %relay.app_id, error = %e, "outbox: retrying the message");
                        round += 1;
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            }
            consumer
                .commit_message(&message, CommitMode::Async)
                .map_err(|e| e.to_string())?;
        }
    }
}

/// Whether the marker is in the store, looked for as daprd does (500 ms, three-fold, at
/// most 3 s apart, for `MARKER_PATIENCE`).
async fn marker_present(store: &dyn StateStore, marker: &str) -> Result<bool, String> {
    let started = tokio::time::Instant::now();
    let mut wait = Duration::from_millis(500);
    loop {
        match store.get(marker).await {
            Ok(Some(found)) if !found.data.is_empty() => return Ok(true),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "outbox: reading a marker failed"),
        }
        if started.elapsed() + wait > MARKER_PATIENCE {
            return Ok(false);
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 3).min(Duration::from_secs(3));
    }
}

/// The envelope with the operation's metadata added as top-level fields (never `data`
/// or `id`), keys sorted as Go writes a map.
fn with_fields(envelope: &[u8], metadata: &[(String, String)]) -> Result<Vec<u8>, String> {
    if metadata.is_empty() {
        return Ok(envelope.to_vec());
    }
    let mut fields: BTreeMap<String, Box<RawValue>> =
        serde_json::from_slice(envelope).map_err(|e| e.to_string())?;
    for (k, v) in metadata {
        if k == "data" || k == "id" {
            continue;
        }
        let value = RawValue::from_string(serde_json::to_string(v).expect("a string serialises"))
            .map_err(|e| e.to_string())?;
        fields.insert(k.clone(), value);
    }
    serde_json::to_vec(&fields).map_err(|e| e.to_string())
}

/// One app's outbox on one store: what its relay consumes and publishes through.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Relay {
    app_id: String,
    namespace: String,
    outbox: Outbox,
    state: Arc<StateComponent>,
    internal: Arc<PubsubComponent>,
    publish: Arc<PubsubComponent>,
}

impl Relay {
    /// The internal topic as the broker names it (a `{namespace}` pub/sub prefixes it).
    fn internal_topic(&self) -> String {
        let topic = self.outbox.internal_topic(&self.namespace, &self.app_id);
        if self.internal.namespaced_topics {
            format!("{}{topic}", self.internal.id.namespace)
        } else {
            topic
        }
    }

    /// The relay's consumer group / durable consumer: one per app and store.
    fn consumer_name(&self) -> String {
        format!("fngate-outbox-{}-{}", self.app_id, self.state.id.name)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }
}
