//! Kafka source (librdkafka): one consumer per trigger in the trigger's consumer group,
//! one worker per partition. Offsets are stored only up to the last offset whose every
//! predecessor was settled, and librdkafka commits what is stored; a crash therefore
//! redelivers, it never skips.

use super::delivery::{DeadLetterSink, Settled, TriggerRuntime};
use super::event::Event;
use crate::plan::{InitialOffset, KafkaSource, TriggerKind};
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Librdkafka context: turns statistics into lag and connection metrics.
struct KafkaContext {
    rt: Arc<TriggerRuntime>,
}

impl ClientContext for KafkaContext {
    fn stats(&self, stats: Statistics) {
        let [ns, f, t] = self.rt.labels();
        let up = stats.brokers.values().any(|b| b.state == "UP");
        self.rt
            .metrics
            .broker_connected
            .with_label_values(&[ns, f, t, "kafka"])
            .set(up as i64);
        for (topic, tstats) in &stats.topics {
            for (partition, p) in &tstats.partitions {
                if *partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                self.rt
                    .metrics
                    .consumer_lag
                    .with_label_values(&[ns, f, t, topic, &partition.to_string()])
                    .set(p.consumer_lag);
            }
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if reason.contains("FENCED_INSTANCE_ID") || reason.contains("fenced") {
            tracing::error!(trigger = %self.rt.key, %error, reason, "another live consumer holds this trigger's group.instance.id: give every replica its own events.kafka_instance_id (or POD_NAME)");
            return;
        }
        tracing::warn!(trigger = %self.rt.key, %error, reason, "kafka client error");
    }
}

impl ConsumerContext for KafkaContext {}

fn client_config(source: &KafkaSource) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &source.brokers);
    if let Some(id) = &source.client_id {
        c.set("client.id", id);
    }
    for (k, v) in source.auth.client_settings() {
        c.set(k, v);
    }
    c
}

/// The message's Dapr metadata, as Dapr's Kafka component fills it.
fn to_event(m: &impl Message, kind: TriggerKind, component: &str) -> Event {
    let mut metadata = Vec::with_capacity(6);
    if let Some(key) = m.key() {
        metadata.push(("__key".into(), String::from_utf8_lossy(key).into_owned()));
    }
    metadata.push(("__offset".into(), m.offset().to_string()));
    metadata.push(("__partition".into(), m.partition().to_string()));
    metadata.push(("__topic".into(), m.topic().to_owned()));
    if let Some(ms) = m.timestamp().to_millis() {
        metadata.push(("__timestamp".into(), ms.to_string()));
    }
    if let Some(headers) = m.headers() {
        for h in headers.iter() {
            let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
            metadata.push((h.key.to_owned().into(), value.into_owned()));
        }
    }
    if kind == TriggerKind::PubSub {
        metadata.push(("pubsubName".into(), component.to_owned()));
    }
    Event {
        data: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        metadata,
        topic: m.topic().to_owned(),
        position: format!("{}/{}/{}", m.topic(), m.partition(), m.offset()),
        received: Instant::now(),
    }
}

/// Which offset may be committed: the lowest offset still unsettled, or one past the
/// highest dispatched when none is.
#[derive(Default, Debug)]
pub struct OffsetTracker {
    pending: BTreeSet<i64>,
    highest: Option<i64>,
}

impl OffsetTracker {
    pub fn dispatch(&mut self, offset: i64) {
        self.pending.insert(offset);
        self.highest = Some(self.highest.map_or(offset, |h| h.max(offset)));
    }

    /// Marks `offset` settled; returns the next offset to commit when it moved.
    pub fn settle(&mut self, offset: i64) -> Option<i64> {
        let lowest_before = self.pending.first().copied();
        self.pending.remove(&offset);
        match self.pending.first() {
            Some(&lowest) if Some(lowest) != lowest_before => Some(lowest),
            Some(_) => None,
            None => self.highest.map(|h| h + 1),
        }
    }
}

struct KafkaDeadLetter {
    producer: FutureProducer,
}

#[async_trait]
impl DeadLetterSink for KafkaDeadLetter {
    async fn publish(&self, topic: &str, event: &Event) -> Result<(), String> {
        let mut headers = OwnedHeaders::new();
        let mut key = None;
        for (k, v) in &event.metadata {
            if k == "__key" {
                key = Some(v.as_bytes());
            } else {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(&event.data[..])
            .headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .map(|_| ())
            .map_err(|(e, _)| format!("producing to {topic}: {e}"))
    }
}

type Partition = (String, i32);

/// A partition, the channel to its worker, and the worker.
type PartitionWorker = (
    Partition,
    mpsc::Sender<(i64, Event)>,
    tokio::task::JoinHandle<()>,
);

/// Runs until the trigger is stopped; then settles or releases what is in flight and
/// commits what was settled.
pub async fn run(rt: Arc<TriggerRuntime>, source: KafkaSource) {
    let mut config = client_config(&source);
    config
        .set("group.id", &source.consumer_group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("statistics.interval.ms", "5000")
        .set(
            "fetch.wait.max.ms",
            source.fetch_wait.as_millis().clamp(1, 300_000).to_string(),
        )
        // A replica that died hands its partitions over after 10 s, not librdkafka's 45 s.
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "2000")
        .set(
            "auto.offset.reset",
            match source.initial_offset {
                InitialOffset::Newest => "latest",
                InitialOffset::Oldest => "earliest",
            },
        );
    if let Some(max) = source.max_message_bytes {
        config.set("fetch.message.max.bytes", max.max(1000).to_string());
    }
    if let Some(id) = &source.group_instance_id {
        // Static membership: a restarted replica rejoins as the same member and gets its
        // partitions back at once, without waiting for the dead session to expire.
        config.set("group.instance.id", id);
    }
    let consumer: Arc<StreamConsumer<KafkaContext>> = match config
        .create_with_context(KafkaContext { rt: rt.clone() })
    {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::error!(trigger = %rt.key, error = %e, "cannot create the Kafka consumer; trigger idle until its configuration changes");
            rt.stopping().await;
            return;
        }
    };
    let topics: Vec<&str> = source.topics.iter().map(String::as_str).collect();
    if let Err(e) = consumer.subscribe(&topics) {
        tracing::error!(trigger = %rt.key, error = %e, "cannot subscribe; trigger idle until its configuration changes");
        rt.stopping().await;
        return;
    }
    let dead_letter = match &rt.spec.policy.dead_letter_topic {
        Some(_) => match client_config(&source)
            .set("message.timeout.ms", "10000")
            .create::<FutureProducer>()
        {
            Ok(producer) => Some(Arc::new(KafkaDeadLetter { producer })),
            Err(e) => {
                tracing::error!(trigger = %rt.key, error = %e, "cannot create the dead-letter producer");
                None
            }
        },
        None => None,
    };
    tracing::info!(trigger = %rt.key, brokers = %source.brokers, group = %source.consumer_group, topics = ?source.topics, "kafka consumer started");
    // Messages travel to their partition's worker as events already: one copy of the
    // payload, taken from librdkafka's buffer.
    // A few partitions per trigger: a list searched without allocating a key.
    let mut workers: Vec<PartitionWorker> = Vec::new();
    loop {
        let message = tokio::select! {
            _ = rt.stopping() => break,
            m = consumer.recv() => m,
        };
        let (partition, offset, event) = match message {
            Ok(m) => (
                m.partition(),
                m.offset(),
                to_event(&m, rt.spec.kind, &rt.spec.component),
            ),
            Err(e) => {
                tracing::warn!(trigger = %rt.key, error = %e, "kafka consume error");
                if !rt.sleep(Duration::from_millis(500)).await {
                    break;
                }
                continue;
            }
        };
        let worker = workers
            .iter()
            .position(|((t, p), _, _)| *p == partition && *t == event.topic);
        let worker = match worker {
            Some(i) => i,
            None => {
                let (tx, rx) = mpsc::channel(rt.spec.policy.concurrency.max(1) * 2);
                let key = (event.topic.clone(), partition);
                let handle = tokio::spawn(partition_worker(
                    rt.clone(),
                    consumer.clone(),
                    key.clone(),
                    rx,
                    dead_letter.clone(),
                ));
                workers.push((key, tx, handle));
                workers.len() - 1
            }
        };
        // A full queue (function slow or at zero) stops polling: backpressure.
        tokio::select! {
            _ = rt.stopping() => break,
            _ = workers[worker].1.send((offset, event)) => {}
        }
    }
    let handles: Vec<_> = workers.into_iter().map(|(_, _, h)| h).collect();
    for h in handles {
        let _ = h.await;
    }
    let closing = consumer.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if let Err(e) = closing.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
            tracing::debug!(error = %e, "final commit");
        }
    })
    .await;
    tracing::info!(trigger = %rt.key, "kafka consumer stopped");
}

async fn partition_worker(
    rt: Arc<TriggerRuntime>,
    consumer: Arc<StreamConsumer<KafkaContext>>,
    (topic, partition): Partition,
    mut rx: mpsc::Receiver<(i64, Event)>,
    dead_letter: Option<Arc<KafkaDeadLetter>>,
) {
    let concurrency = rt.spec.policy.concurrency.max(1);
    let mut tracker = OffsetTracker::default();
    let mut in_flight = FuturesUnordered::new();
    let store = |next: i64| {
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(&topic, partition, Offset::Offset(next))
            .is_ok()
        {
            // Fails only when the partition was revoked meanwhile: its new owner redelivers.
            if let Err(e) = consumer.store_offsets(&tpl) {
                tracing::debug!(trigger = %rt.key, topic = %topic, partition, error = %e, "offset not stored");
            }
        }
    };
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            m = rx.recv(), if open && in_flight.len() < concurrency => match m {
                Some((offset, event)) => {
                    tracker.dispatch(offset);
                    let rt = rt.clone();
                    let dl = dead_letter.clone();
                    in_flight.push(async move {
                        let settled = rt.settle(&event, dl.as_deref().map(|d| d as &dyn DeadLetterSink)).await;
                        (offset, settled)
                    });
                }
                None => open = false,
            },
            Some(first) = in_flight.next(), if !in_flight.is_empty() => {
                // A batch settles many events at once: store the offset once for all of
                // them that are done.
                let mut next_offset = None;
                let mut done = Some(first);
                while let Some((offset, settled)) = done {
                    // A released event keeps its offset pending, so nothing past it commits.
                    if settled != Settled::Released {
                        if let Some(next) = tracker.settle(offset) {
                            next_offset = Some(next);
                        }
                    }
                    done = in_flight.next().now_or_never().flatten();
                }
                if let Some(next) = next_offset {
                    store(next);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::OffsetTracker;

    #[test]
    fn commits_advance_only_past_offsets_whose_predecessors_all_settled() {
        let mut t = OffsetTracker::default();
        for o in [10, 11, 12] {
            t.dispatch(o);
        }
        assert_eq!(t.settle(11), None, "10 is still in flight");
        assert_eq!(t.settle(10), Some(12));
        t.dispatch(13);
        assert_eq!(t.settle(13), None, "12 is still in flight");
        assert_eq!(t.settle(12), Some(14));
    }
}
