//! Kafka source (librdkafka): one consumer per trigger in the trigger's consumer group,
//! one worker per assigned partition, each reading its partition's own librdkafka queue so
//! a slow partition never holds the others back. Offsets are stored only up to the last
//! offset whose every predecessor was settled, and librdkafka commits what is stored; a
//! crash therefore redelivers, it never skips.

use super::delivery::{DeadLetterSink, Settled, TriggerRuntime};
use super::event::Event;
use crate::plan::{InitialOffset, KafkaSource, TriggerKind};
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

type KafkaConsumer = StreamConsumer<KafkaContext>;
type PartitionQueue = StreamPartitionQueue<KafkaContext>;

/// What a rebalance did to this consumer, in the order librdkafka did it.
enum AssignmentChange {
    Assigned(Partition, Option<Arc<PartitionQueue>>),
    Revoked(Partition),
}

/// Librdkafka context: turns statistics into lag and connection metrics, and gives every
/// newly assigned partition its own queue before fetching starts.
struct KafkaContext {
    rt: Arc<TriggerRuntime>,
    /// Set once the consumer exists; weak, since the consumer owns this context.
    consumer: OnceLock<Weak<KafkaConsumer>>,
    /// Every partition split off so far, kept for the consumer's life: librdkafka keeps one
    /// wake-up callback per partition queue, which dropping any handle of it clears, so a
    /// partition assigned again reuses its queue. Emptied before the consumer is dropped
    /// (each queue holds the consumer).
    queues: std::sync::Mutex<Vec<(Partition, Arc<PartitionQueue>)>>,
    changes: mpsc::UnboundedSender<AssignmentChange>,
}

impl KafkaContext {
    /// The partition's own queue, split off the first time it is assigned.
    fn queue_of(&self, topic: &str, partition: i32) -> Option<Arc<PartitionQueue>> {
        let mut queues = self.queues.lock().expect("not poisoned");
        if let Some((_, q)) = queues
            .iter()
            .find(|((t, p), _)| *p == partition && t == topic)
        {
            return Some(q.clone());
        }
        let consumer = self.consumer.get().and_then(Weak::upgrade)?;
        let queue = Arc::new(consumer.split_partition_queue(topic, partition)?);
        queues.push(((topic.to_owned(), partition), queue.clone()));
        Some(queue)
    }
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

    // A fenced consumer's fatal error is reported where the dispatch loop stops for it.
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(trigger = %self.rt.key, %error, reason, "kafka client error");
    }
}

impl ConsumerContext for KafkaContext {
    /// Runs before librdkafka applies the assignment. A partition split off here has its
    /// queue marked as the application's, so the assignment does not forward it to the
    /// consumer's main queue: every message of it is fetched into its own queue, in order.
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                for e in tpl.elements() {
                    let queue = self.queue_of(e.topic(), e.partition());
                    if queue.is_none() {
                        tracing::warn!(trigger = %self.rt.key, topic = e.topic(), partition = e.partition(), "partition has no queue of its own; its messages come through the consumer's main queue");
                    }
                    let _ = self.changes.send(AssignmentChange::Assigned(
                        (e.topic().to_owned(), e.partition()),
                        queue,
                    ));
                }
            }
            Rebalance::Revoke(tpl) => {
                for e in tpl.elements() {
                    let _ = self.changes.send(AssignmentChange::Revoked((
                        e.topic().to_owned(),
                        e.partition(),
                    )));
                }
            }
            Rebalance::Error(e) => {
                tracing::warn!(trigger = %self.rt.key, error = %e, "kafka rebalance failed");
            }
        }
    }
}

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

/// One assigned partition's worker, as the dispatch loop sees it.
struct PartitionWorker {
    partition: Partition,
    /// Messages of this partition that reached the consumer's main queue.
    strays: mpsc::Sender<(i64, Event)>,
    /// Dropped or fired when the partition is revoked: the worker takes no new message.
    revoked: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// Runs until the trigger is stopped; then settles or releases what is in flight, commits
/// what was settled and leaves the consumer group.
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
    // librdkafka's own debug contexts (e.g. `cgrp,topic`), logged through fngate's log.
    if let Some(contexts) = std::env::var_os("FNGATE_KAFKA_DEBUG") {
        config.set("debug", contexts.to_string_lossy());
    }
    if let Some(id) = &source.group_instance_id {
        // Static membership: a restarted replica rejoins as the same member and gets its
        // partitions back at once, without waiting for the dead session to expire.
        config.set("group.instance.id", id);
    }
    let (changes_tx, mut changes) = mpsc::unbounded_channel();
    let context = KafkaContext {
        rt: rt.clone(),
        consumer: OnceLock::new(),
        queues: std::sync::Mutex::new(Vec::new()),
        changes: changes_tx,
    };
    let consumer: Arc<KafkaConsumer> = match config.create_with_context(context) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::error!(trigger = %rt.key, error = %e, "cannot create the Kafka consumer; trigger idle until its configuration changes");
            rt.stopping().await;
            return;
        }
    };
    let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
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
    // A few partitions per trigger: a list searched without allocating a key.
    let mut workers: Vec<PartitionWorker> = Vec::new();
    let spawn = |partition: Partition,
                 queue: Option<Arc<PartitionQueue>>,
                 predecessor: Option<tokio::task::JoinHandle<()>>| {
        let (strays, strays_rx) = mpsc::channel(rt.spec.policy.concurrency.max(1) * 2);
        let (revoked, revoked_rx) = oneshot::channel();
        let task = tokio::spawn(partition_worker(
            rt.clone(),
            consumer.clone(),
            partition.clone(),
            PartitionSource {
                queue,
                strays: strays_rx,
                revoked: revoked_rx,
                predecessor,
            },
            dead_letter.clone(),
        ));
        PartitionWorker {
            partition,
            strays,
            revoked: Some(revoked),
            task,
        }
    };
    // This loop only follows assignments: each partition's worker reads its own queue. It
    // must keep polling the main queue, which serves rebalances, errors and liveness.
    loop {
        tokio::select! {
            biased;
            _ = rt.stopping() => break,
            Some(change) = changes.recv() => match change {
                AssignmentChange::Assigned(partition, queue) => {
                    // A worker still finishing the partition's previous assignment goes
                    // first: its in-flight events end before the same offsets come again.
                    let predecessor = workers
                        .iter()
                        .position(|w| w.partition == partition)
                        .map(|i| workers.swap_remove(i).task);
                    tracing::debug!(trigger = %rt.key, topic = %partition.0, partition = partition.1, "partition assigned");
                    workers.push(spawn(partition, queue, predecessor));
                }
                AssignmentChange::Revoked(partition) => {
                    tracing::debug!(trigger = %rt.key, topic = %partition.0, partition = partition.1, "partition revoked");
                    // Its lag is no longer this replica's to report.
                    let [ns, f, t] = rt.labels();
                    let _ = rt.metrics.consumer_lag.remove_label_values(&[ns, f, t, &partition.0, &partition.1.to_string()]);
                    if let Some(w) = workers.iter_mut().find(|w| w.partition == partition) {
                        if let Some(revoked) = w.revoked.take() {
                            let _ = revoked.send(());
                        }
                    }
                }
            },
            message = consumer.recv() => match message {
                Ok(m) => {
                    let (partition, offset) = (m.partition(), m.offset());
                    let event = to_event(&m, rt.spec.kind, &rt.spec.component);
                    drop(m);
                    let i = match workers
                        .iter()
                        .position(|w| w.partition.1 == partition && w.partition.0 == event.topic)
                    {
                        Some(i) => i,
                        None => {
                            workers.push(spawn((event.topic.clone(), partition), None, None));
                            workers.len() - 1
                        }
                    };
                    // A full queue (function slow or at zero) stops polling: backpressure.
                    tokio::select! {
                        _ = rt.stopping() => break,
                        _ = workers[i].strays.send((offset, event)) => {}
                    }
                }
                Err(e) => {
                    if let Some((code, reason)) = consumer.client().fatal_error() {
                        // Fenced by a newer member with this group.instance.id: rejoining would
                        // fence that one in turn, back and forth. Stop and say why.
                        tracing::error!(trigger = %rt.key, ?code, reason, instance = ?source.group_instance_id, "kafka consumer stopped for good: another live replica uses this trigger's group.instance.id; give each replica its own events.kafka_instance_id (or POD_NAME)");
                        break;
                    }
                    tracing::warn!(trigger = %rt.key, error = %e, "kafka consume error");
                    if !rt.sleep(Duration::from_millis(500)).await {
                        break;
                    }
                }
            },
        }
    }
    // Workers take nothing new once their revocation sender is gone; they finish (or, when
    // stopping, release) what is in flight and store what settled.
    let tasks: Vec<_> = workers.into_iter().map(|w| w.task).collect();
    for task in tasks {
        let _ = task.await;
    }
    leave_group(&rt, consumer, &mut changes).await;
    if !rt.stopped() {
        // Fenced: idle until the configuration changes or the process stops.
        rt.stopping().await;
    }
}

/// Commits what settled and leaves the group at once. A static member does not leave on
/// close (KIP-345: a restart is expected), so a replica that is stopped unsubscribes first,
/// which sends the LeaveGroup: the others take its partitions now, not after its session
/// times out. A crashed replica keeps the quick static rejoin.
async fn leave_group(
    rt: &TriggerRuntime,
    consumer: Arc<KafkaConsumer>,
    changes: &mut mpsc::UnboundedReceiver<AssignmentChange>,
) {
    let committing = consumer.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if let Err(e) = committing.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
            tracing::debug!(error = %e, "final commit");
        }
    })
    .await;
    consumer.unsubscribe();
    // The revocation is served from the main queue: poll it until it has run.
    let revoked = async {
        while !matches!(
            changes.recv().await,
            Some(AssignmentChange::Revoked(_)) | None
        ) {}
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::select! {
            _ = revoked => {}
            _ = serve_main_queue(&consumer) => {}
        }
    })
    .await;
    // librdkafka sends the LeaveGroup once the unassignment completes, on its own thread; a
    // close that starts first skips it (a terminating static member never leaves). Serve the
    // main queue a moment longer.
    let _ = tokio::time::timeout(Duration::from_millis(500), serve_main_queue(&consumer)).await;
    consumer
        .context()
        .queues
        .lock()
        .expect("not poisoned")
        .clear();
    // Closing waits for the LeaveGroup answer: off the async threads.
    let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
    tracing::info!(trigger = %rt.key, "kafka consumer stopped");
}

/// Polls the consumer's main queue (rebalances, errors) for as long as it is awaited.
async fn serve_main_queue(consumer: &KafkaConsumer) {
    loop {
        let _ = consumer.recv().await;
    }
}

/// Where a partition worker takes its messages from.
struct PartitionSource {
    /// The partition's own queue (none if it could not be split off).
    queue: Option<Arc<PartitionQueue>>,
    strays: mpsc::Receiver<(i64, Event)>,
    revoked: oneshot::Receiver<()>,
    /// The worker of this partition's previous assignment, to finish first.
    predecessor: Option<tokio::task::JoinHandle<()>>,
}

/// The next message of a partition's own queue; never, if it has none.
async fn recv_from(
    queue: Option<&PartitionQueue>,
) -> rdkafka::error::KafkaResult<rdkafka::message::BorrowedMessage<'_>> {
    match queue {
        Some(q) => q.recv().await,
        None => std::future::pending().await,
    }
}

async fn partition_worker(
    rt: Arc<TriggerRuntime>,
    consumer: Arc<KafkaConsumer>,
    (topic, partition): Partition,
    source: PartitionSource,
    dead_letter: Option<Arc<KafkaDeadLetter>>,
) {
    let PartitionSource {
        queue,
        mut strays,
        mut revoked,
        predecessor,
    } = source;
    if let Some(predecessor) = predecessor {
        let _ = predecessor.await;
    }
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
    // One receive kept across iterations: not a new stream registration per message.
    let from_queue = recv_from(queue.as_deref());
    tokio::pin!(from_queue);
    let mut open = true;
    while open || !in_flight.is_empty() {
        let mut next = None;
        tokio::select! {
            biased;
            _ = &mut revoked, if open => open = false,
            m = strays.recv(), if open && in_flight.len() < concurrency => match m {
                Some(m) => next = Some(m),
                None => open = false,
            },
            m = &mut from_queue, if open && in_flight.len() < concurrency => {
                match m {
                    Ok(m) => next = Some((m.offset(), to_event(&m, rt.spec.kind, &rt.spec.component))),
                    Err(e) => tracing::warn!(trigger = %rt.key, topic = %topic, partition, error = %e, "kafka consume error"),
                }
                from_queue.set(recv_from(queue.as_deref()));
            }
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
        if let Some((offset, event)) = next {
            tracker.dispatch(offset);
            let rt = rt.clone();
            let dl = dead_letter.clone();
            in_flight.push(async move {
                let settled = rt
                    .settle(&event, dl.as_deref().map(|d| d as &dyn DeadLetterSink))
                    .await;
                (offset, settled)
            });
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
