//! NATS JetStream source: a durable pull consumer per trigger, shared by every fngate
//! replica (the server hands each message to one of them). `max_ack_pending` equals the
//! trigger's concurrency, so with 1 the server itself keeps the subject in order. Ack on
//! success, nak with backoff to retry, term after dead-lettering.

use super::delivery::{DeadLetterSink, Decision, InFlight, Settled, TriggerRuntime};
use super::event::Event;
use crate::plan::{DeliverPolicy, JetstreamSource};
use crate::telemetry::event_outcome;
use async_nats::jetstream::{self, consumer::pull, AckKind};
use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// NATS' default when a consumer sets none.
const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);

struct JetstreamDeadLetter {
    js: jetstream::Context,
}

#[async_trait]
impl DeadLetterSink for JetstreamDeadLetter {
    async fn publish(&self, subject: &str, event: &Event) -> Result<(), String> {
        let mut headers = async_nats::HeaderMap::new();
        for (k, v) in &event.metadata {
            headers.append(k.as_ref(), v.as_str());
        }
        self.js
            .publish_with_headers(subject.to_owned(), headers, event.data.clone())
            .await
            .map_err(|e| format!("publishing to {subject}: {e}"))?
            .await
            .map(|_| ())
            .map_err(|e| format!("publishing to {subject}: {e}"))
    }
}

fn consumer_config(source: &JetstreamSource, concurrency: usize) -> Result<pull::Config, String> {
    use async_nats::jetstream::consumer::DeliverPolicy as Nats;
    let deliver_policy = match &source.deliver_policy {
        DeliverPolicy::All => Nats::All,
        DeliverPolicy::Last => Nats::Last,
        DeliverPolicy::New => Nats::New,
        DeliverPolicy::Sequence(n) => Nats::ByStartSequence { start_sequence: *n },
        DeliverPolicy::Time(t) => Nats::ByStartTime {
            start_time: time::OffsetDateTime::parse(
                t,
                &time::format_description::well_known::Rfc3339,
            )
            .map_err(|e| format!("startTime {t:?}: {e}"))?,
        },
    };
    Ok(pull::Config {
        durable_name: Some(source.durable_name.clone()),
        filter_subject: source.subject.clone(),
        deliver_policy,
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: source.ack_wait.unwrap_or(DEFAULT_ACK_WAIT),
        max_deliver: source.max_deliver.unwrap_or(-1),
        max_ack_pending: concurrency as i64,
        ..Default::default()
    })
}

/// Runs until the trigger is stopped, reconnecting and re-binding as needed.
pub async fn run(rt: Arc<TriggerRuntime>, source: JetstreamSource) {
    let concurrency = rt.spec.policy.concurrency.max(1);
    let config = match consumer_config(&source, concurrency) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(trigger = %rt.key, error = %e, "invalid consumer settings; trigger idle until its configuration changes");
            rt.stopping().await;
            return;
        }
    };
    let connected = {
        let [ns, f, t] = rt.labels();
        rt.metrics
            .broker_connected
            .with_label_values(&[ns, f, t, "jetstream"])
    };
    let gauge = connected.clone();
    let options = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .event_callback(move |e| {
            let gauge = gauge.clone();
            async move {
                match e {
                    async_nats::Event::Connected => gauge.set(1),
                    async_nats::Event::Disconnected => gauge.set(0),
                    _ => {}
                }
            }
        });
    let client = match options.connect(source.nats_url.as_str()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(trigger = %rt.key, error = %e, url = %source.nats_url, "cannot connect to NATS; trigger idle until its configuration changes");
            rt.stopping().await;
            return;
        }
    };
    let js = jetstream::new(client.clone());
    let dead_letter = JetstreamDeadLetter { js: js.clone() };
    let dead_letter: Arc<dyn DeadLetterSink> = Arc::new(dead_letter);
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut setup_attempt = 1;
    'bind: while !rt.stopped() {
        let consumer = match bind(&js, &source, &config).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(trigger = %rt.key, error = %e, "cannot bind the JetStream consumer; retrying");
                if !rt
                    .sleep(rt.backoff(setup_attempt).max(Duration::from_millis(500)))
                    .await
                {
                    break;
                }
                setup_attempt += 1;
                continue;
            }
        };
        let mut messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(trigger = %rt.key, error = %e, "cannot pull messages; retrying");
                if !rt.sleep(Duration::from_millis(500)).await {
                    break;
                }
                continue;
            }
        };
        setup_attempt = 1;
        tracing::info!(trigger = %rt.key, subject = %source.subject, consumer = %source.durable_name, "jetstream consumer started");
        loop {
            // Take a permit before pulling, so no more than `concurrency` are ever held.
            let permit = tokio::select! {
                _ = rt.stopping() => break 'bind,
                p = permits.clone().acquire_owned() => p.expect("never closed"),
            };
            let next = tokio::select! {
                _ = rt.stopping() => {
                    release_pulled(&mut messages).await;
                    break 'bind;
                }
                m = messages.next() => m,
            };
            match next {
                Some(Ok(message)) => {
                    let rt = rt.clone();
                    let dl = dead_letter.clone();
                    let ack_wait = config.ack_wait;
                    // Boxed: the task then holds a pointer, not the whole delivery state
                    // machine, which tokio would copy on every spawn.
                    let handle = tokio::spawn(Box::pin(async move {
                        handle_message(&rt, message, dl.as_ref(), ack_wait).await;
                        drop(permit);
                    }));
                    if concurrency == 1 {
                        let _ = handle.await;
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(trigger = %rt.key, error = %e, "jetstream pull");
                }
                None => continue 'bind,
            }
        }
    }
    // Wait for what is in flight (it settles or releases itself on stop).
    let _ = permits.acquire_many(concurrency as u32).await;
    // Acks and naks are buffered by the client: out on the wire before the process may
    // exit, or the server would redeliver what was settled.
    if tokio::time::timeout(Duration::from_secs(2), client.flush())
        .await
        .is_err()
    {
        tracing::warn!(trigger = %rt.key, "the last acks could not be flushed; the server may redeliver them");
    }
    connected.set(0);
    tracing::info!(trigger = %rt.key, "jetstream consumer stopped");
}

/// Naks what was pulled and not yet started, so another replica gets it now rather than
/// after `ackWait` (with one in flight, that would hold the subject's order as long).
async fn release_pulled(messages: &mut pull::Stream) {
    while let Some(Some(Ok(message))) = messages.next().now_or_never() {
        let _ = message.ack_with(AckKind::Nak(None)).await;
    }
}

async fn bind(
    js: &jetstream::Context,
    source: &JetstreamSource,
    config: &pull::Config,
) -> Result<jetstream::consumer::Consumer<pull::Config>, String> {
    let stream_name = match &source.stream_name {
        Some(s) => s.clone(),
        None => js
            .stream_by_subject(source.subject.clone())
            .await
            .map_err(|e| format!("no stream holds subject {}: {e}", source.subject))?,
    };
    let stream = js
        .get_stream(&stream_name)
        .await
        .map_err(|e| format!("stream {stream_name}: {e}"))?;
    match stream.create_consumer(config.clone()).await {
        Ok(c) => Ok(c),
        // An existing durable whose fixed settings differ (e.g. deliver policy): use it as is.
        Err(e) => stream
            .get_consumer(&source.durable_name)
            .await
            .map_err(|e2| format!("consumer {}: {e}; {e2}", source.durable_name)),
    }
}

fn position_sequence(position: &str) -> u64 {
    position
        .rsplit('/')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn to_event(message: &jetstream::Message, position: String) -> Event {
    let mut metadata = vec![("Topic".into(), message.subject.to_string())];
    if let Some(headers) = &message.headers {
        for (name, values) in headers.iter() {
            for v in values {
                metadata.push((name.to_string().into(), v.to_string()));
            }
        }
    }
    Event {
        data: message.payload.clone(),
        metadata,
        topic: message.subject.to_string(),
        position,
        received: Instant::now(),
    }
}

async fn handle_message(
    rt: &TriggerRuntime,
    message: jetstream::Message,
    dead_letter: &dyn DeadLetterSink,
    ack_wait: Duration,
) {
    let _in_flight = InFlight::new(rt);
    let (delivered, position, pending) = match message.info() {
        Ok(i) => (
            i.delivered.max(1) as u32,
            format!("{}/{}", i.stream, i.stream_sequence),
            i.pending,
        ),
        Err(_) => (1, message.subject.to_string(), 0),
    };
    // Lag is sampled (every 64th stream sequence): a label lookup per event costs more than it tells.
    if position_sequence(&position).is_multiple_of(64) {
        let [ns, f, t] = rt.labels();
        rt.metrics
            .consumer_lag
            .with_label_values(&[ns, f, t, message.subject.as_str(), ""])
            .set(pending as i64);
    }
    let event = to_event(&message, position);
    let last_delivery = rt
        .spec
        .source_max_deliver()
        .is_some_and(|m| delivered as i64 >= m);
    let mut attempt = delivered;
    loop {
        // Tell the server we are still working, so it does not redeliver meanwhile.
        let answer = with_progress(&message, ack_wait, rt.attempt(&event, attempt)).await;
        let Some(answer) = answer else {
            let _ = message.ack_with(AckKind::Nak(None)).await;
            return;
        };
        // The server's delivery count stands in for the app's failures here.
        let settled = match rt.decide(&answer, attempt, attempt) {
            Decision::Ack(s) => {
                if let Err(e) = message.ack().await {
                    tracing::warn!(trigger = %rt.key, error = %e, "ack failed; the event may be redelivered");
                }
                s
            }
            Decision::DeadLetter => {
                let sent = with_progress(
                    &message,
                    ack_wait,
                    rt.dead_letter(&event, Some(dead_letter), &answer),
                )
                .await;
                if !sent {
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                    return;
                }
                let _ = message.ack_with(AckKind::Term).await;
                Settled::DeadLettered
            }
            Decision::RetryAfter(delay) => {
                rt.count(event_outcome::RETRY);
                if let Some(why) = answer.reason() {
                    tracing::debug!(trigger = %rt.key, position = %event.position, attempt, reason = %why, "delivery failed; nak with backoff");
                }
                if !last_delivery {
                    let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
                    return;
                }
                // The server would not redeliver again (maxDeliver): keep retrying here.
                if !with_progress(&message, ack_wait, rt.sleep(delay)).await {
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                    return;
                }
                attempt += 1;
                continue;
            }
        };
        rt.record(&event, settled);
        return;
    }
}

/// Runs `work`, sending "in progress" acks every third of the ack wait meanwhile.
async fn with_progress<T>(
    message: &jetstream::Message,
    ack_wait: Duration,
    work: impl std::future::Future<Output = T>,
) -> T {
    let every = (ack_wait / 3).max(Duration::from_millis(100));
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tokio::time::sleep(every) => {
                let _ = message.ack_with(AckKind::Progress).await;
            }
        }
    }
}
