//! Delivery policy shared by every broker: find a ready endpoint that subscribes, deliver,
//! and turn the app's answer into ack / retry with backoff / dead letter. Waiting for an
//! endpoint is not an attempt: a function at zero pauses its consumer, it fails nothing.

use super::app::{App, Route};
use super::contract::Answer;
use super::event::Event;
use crate::activator::Activator;
use crate::plan::{TriggerKey, TriggerSpec};
use crate::plan_swap::SharedPlan;
use crate::telemetry::{event_outcome, Metrics};
use async_trait::async_trait;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How an event ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    Delivered,
    /// Dropped by the app with no dead-letter topic configured.
    Dropped,
    DeadLettered,
    /// The trigger stopped first; the event is left unacknowledged for redelivery.
    Released,
}

/// What to do after one attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Ack(Settled),
    DeadLetter,
    RetryAfter(Duration),
}

/// Publishes an event to the trigger's dead-letter topic on its own broker.
#[async_trait]
pub trait DeadLetterSink: Send + Sync {
    async fn publish(&self, topic: &str, event: &Event) -> Result<(), String>;
}

/// Everything one running trigger needs to deliver its events.
pub struct TriggerRuntime {
    pub key: TriggerKey,
    pub spec: Arc<TriggerSpec>,
    plan: SharedPlan,
    revisions: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
    app: App,
    pub metrics: Arc<Metrics>,
    /// Told while this trigger waits for an endpoint, so its backlog wakes the function.
    activator: Arc<Activator>,
    labels: [String; 3],
    counters: OutcomeCounters,
    last_warning: AtomicU64,
    started: Instant,
    /// Shared by every trigger of the function when it sets `dapr.io/app-max-concurrency`.
    app_slots: Option<Arc<tokio::sync::Semaphore>>,
}

impl TriggerRuntime {
    pub fn new(
        key: TriggerKey,
        spec: Arc<TriggerSpec>,
        plan: SharedPlan,
        revisions: watch::Receiver<u64>,
        stop: watch::Receiver<bool>,
        metrics: Arc<Metrics>,
        activator: Arc<Activator>,
    ) -> TriggerRuntime {
        let labels = [
            key.namespace.clone(),
            key.function.clone(),
            key.component.clone(),
        ];
        let counters = OutcomeCounters::new(&metrics, &labels);
        TriggerRuntime {
            activator,
            counters,
            app: App::new(spec.delivery.protocol),
            key,
            spec,
            plan,
            revisions,
            stop,
            metrics,
            labels,
            last_warning: AtomicU64::new(0),
            started: Instant::now(),
            app_slots: None,
        }
    }

    /// Shares the function's `dapr.io/app-max-concurrency` slots with its other triggers.
    pub fn with_app_slots(mut self, slots: Option<Arc<tokio::sync::Semaphore>>) -> Self {
        self.app_slots = slots;
        self
    }

    /// `activator.hold_timeout`.
    pub fn hold_timeout(&self) -> Duration {
        self.activator.hold_timeout()
    }

    pub fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Resolves when the trigger is told to stop.
    pub async fn stopping(&self) {
        let mut stop = self.stop.clone();
        let _ = stop.wait_for(|s| *s).await;
    }

    pub fn labels(&self) -> [&str; 3] {
        [&self.labels[0], &self.labels[1], &self.labels[2]]
    }

    pub fn count(&self, outcome: &str) {
        match outcome {
            event_outcome::SUCCESS => self.counters.success.inc(),
            event_outcome::RETRY => self.counters.retry.inc(),
            event_outcome::DROP => self.counters.drop.inc(),
            event_outcome::DEAD_LETTER => self.counters.dead_letter.inc(),
            other => {
                let [ns, f, t] = self.labels();
                self.metrics
                    .events
                    .with_label_values(&[ns, f, t, other])
                    .inc()
            }
        }
    }

    fn endpoint(&self, attempt: u32) -> Option<SocketAddr> {
        let plan = self.plan.load();
        let service = &self.spec.delivery.service;
        let port = self.spec.delivery.port;
        let addr = plan
            .endpoints
            .get(&service.namespace, &service.name)?
            .pick(attempt as usize, Some(port))?;
        Some(SocketAddr::new(addr.ip(), port))
    }

    /// Waits for a new plan, at most `limit`; returns false when the trigger stops.
    async fn wait_for_change(&self, limit: Duration) -> bool {
        let mut revisions = self.revisions.clone();
        tokio::select! {
            _ = revisions.changed() => {}
            _ = tokio::time::sleep(limit) => {}
            _ = self.stopping() => {}
        }
        !self.stopped()
    }

    /// At most one warning per 10 s per trigger, so a long pause does not flood the log.
    fn warn_rarely(&self, message: &str, detail: &str) {
        let now = self.started.elapsed().as_secs();
        let last = self.last_warning.load(Ordering::Relaxed);
        if last == 0 || now >= last + 10 {
            self.last_warning.store(now.max(1), Ordering::Relaxed);
            tracing::warn!(trigger = %self.key, detail, "{message}");
        }
    }

    /// One delivery attempt. While the function has no ready endpoint, or its endpoint does
    /// not subscribe to this trigger, it waits (that is not an attempt). `None`: stopped.
    pub async fn attempt(&self, event: &Event, attempt: u32) -> Option<Answer> {
        let mut waiting = None;
        loop {
            if self.stopped() {
                return None;
            }
            let Some(addr) = self.endpoint(attempt) else {
                waiting.get_or_insert_with(|| {
                    self.activator
                        .waiter(&self.key.namespace, &self.key.function)
                });
                let svc = &self.spec.delivery.service;
                self.warn_rarely(
                    "function has no ready endpoint; consumer paused until one is ready",
                    &format!("{}/{}", svc.namespace, svc.name),
                );
                if !self.wait_for_change(Duration::from_secs(1)).await {
                    return None;
                }
                continue;
            };
            waiting = None;
            match self.app.route(addr, &self.spec, &event.topic).await {
                Ok(Route::Path(path, bulk)) => {
                    let _slot = self.app_slot().await?;
                    let answer = self.app.deliver(addr, &self.spec, event, &path, bulk).await;
                    if matches!(answer, Answer::Retry(_) | Answer::Unreachable(_)) {
                        self.app.forget(addr);
                    }
                    return Some(answer);
                }
                Ok(Route::NotSubscribed) => {
                    self.count(event_outcome::NOT_SUBSCRIBED);
                    self.warn_rarely(
                        "the function does not subscribe to this trigger; consumer paused until it does",
                        &addr.to_string(),
                    );
                    self.app.forget(addr);
                    if !self.wait_for_change(Duration::from_secs(2)).await {
                        return None;
                    }
                }
                Err(e) => return Some(Answer::Unreachable(format!("{addr}: {e}"))),
            }
        }
    }

    /// Waits for one of the function's `dapr.io/app-max-concurrency` slots (at once without
    /// a limit); `None` when the trigger stops first.
    async fn app_slot(&self) -> Option<Option<tokio::sync::OwnedSemaphorePermit>> {
        let Some(slots) = &self.app_slots else {
            return Some(None);
        };
        if let Ok(permit) = slots.clone().try_acquire_owned() {
            return Some(Some(permit));
        }
        let waiting = self
            .metrics
            .events_waiting_for_app
            .with_label_values(&[&self.key.namespace, &self.key.function]);
        waiting.inc();
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.ok(),
            _ = self.stopping() => None,
        };
        waiting.dec();
        permit.map(Some)
    }

    /// Backoff before attempt `attempt + 1`: doubling from `retry_initial`, capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let p = &self.spec.policy;
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1).min(20))
            .unwrap_or(u32::MAX);
        p.retry_initial.saturating_mul(factor).min(p.retry_max)
    }

    /// The next step after attempt number `attempt` (1-based, sets the backoff), of which
    /// `failures` were answered with a failure by the app itself (counts toward the
    /// dead-letter limit; an unreachable app never dead-letters an event).
    pub fn decide(&self, answer: &Answer, attempt: u32, failures: u32) -> Decision {
        let p = &self.spec.policy;
        let dead_letter = p.dead_letter_topic.is_some();
        match answer {
            Answer::Success => Decision::Ack(Settled::Delivered),
            Answer::Drop(_) if dead_letter => Decision::DeadLetter,
            Answer::Drop(_) => Decision::Ack(Settled::Dropped),
            Answer::Retry(_) if dead_letter && p.max_attempts.is_some_and(|m| failures >= m) => {
                Decision::DeadLetter
            }
            Answer::Retry(_) if !dead_letter && p.max_retries.is_some_and(|m| failures > m) => {
                Decision::Ack(Settled::Dropped)
            }
            Answer::Retry(_) | Answer::Unreachable(_) => {
                Decision::RetryAfter(self.backoff(attempt))
            }
        }
    }

    /// Records an event's end: outcome counter and delivery latency.
    pub fn record(&self, event: &Event, settled: Settled) {
        let outcome = match settled {
            Settled::Delivered => event_outcome::SUCCESS,
            Settled::Dropped => event_outcome::DROP,
            Settled::DeadLettered => event_outcome::DEAD_LETTER,
            Settled::Released => return,
        };
        self.count(outcome);
        self.counters
            .duration
            .observe(event.received.elapsed().as_secs_f64());
    }

    /// Delivers until the event is settled, retrying in-process with backoff.
    pub async fn settle(&self, event: &Event, dead_letter: Option<&dyn DeadLetterSink>) -> Settled {
        let _in_flight = InFlight::new(self);
        let mut attempt = 1;
        let mut failures = 0;
        let settled = loop {
            let Some(answer) = self.attempt(event, attempt).await else {
                break Settled::Released;
            };
            if matches!(answer, Answer::Retry(_)) {
                failures += 1;
            }
            match self.decide(&answer, attempt, failures) {
                Decision::Ack(s) => {
                    match (s, &answer) {
                        (Settled::Dropped, Answer::Drop(why)) => {
                            tracing::warn!(trigger = %self.key, position = %event.position, reason = %why, "event dropped by the function");
                        }
                        (Settled::Dropped, Answer::Retry(why)) => {
                            tracing::warn!(trigger = %self.key, position = %event.position, retries = failures - 1, reason = %why, "event dropped: the function failed it on every retry");
                        }
                        _ => {}
                    }
                    break s;
                }
                Decision::DeadLetter => match self.dead_letter(event, dead_letter, &answer).await {
                    true => break Settled::DeadLettered,
                    false => break Settled::Released,
                },
                Decision::RetryAfter(delay) => {
                    self.count(event_outcome::RETRY);
                    if let Some(why) = answer.reason() {
                        tracing::debug!(trigger = %self.key, position = %event.position, attempt, reason = %why, "delivery failed; retrying");
                        if attempt == 1 || attempt % 10 == 0 {
                            self.warn_rarely("delivery failed; retrying with backoff", why);
                        }
                    }
                    if !self.sleep(delay).await {
                        break Settled::Released;
                    }
                    attempt += 1;
                }
            }
        };
        self.record(event, settled);
        settled
    }

    /// Publishes to the dead-letter topic, retrying the publish itself until it succeeds
    /// (false: stopped first).
    pub async fn dead_letter(
        &self,
        event: &Event,
        sink: Option<&dyn DeadLetterSink>,
        answer: &Answer,
    ) -> bool {
        let (Some(sink), Some(topic)) = (sink, self.spec.policy.dead_letter_topic.as_deref())
        else {
            return false;
        };
        let mut attempt = 1;
        loop {
            match sink.publish(topic, event).await {
                Ok(()) => {
                    tracing::warn!(trigger = %self.key, position = %event.position, topic, answer = ?answer, "event sent to the dead-letter topic");
                    return true;
                }
                Err(e) => {
                    self.warn_rarely("dead-letter publish failed; retrying", &e);
                    if !self.sleep(self.backoff(attempt)).await {
                        return false;
                    }
                    attempt += 1;
                }
            }
        }
    }

    /// Sleeps unless the trigger stops first (then false).
    pub async fn sleep(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = self.stopping() => false,
        }
    }
}

/// This trigger's metric children, looked up once instead of per event.
struct OutcomeCounters {
    success: prometheus::IntCounter,
    retry: prometheus::IntCounter,
    drop: prometheus::IntCounter,
    dead_letter: prometheus::IntCounter,
    duration: prometheus::Histogram,
    in_flight: prometheus::IntGauge,
}

impl OutcomeCounters {
    fn new(metrics: &Metrics, [ns, f, t]: &[String; 3]) -> Self {
        let counter = |o: &str| metrics.events.with_label_values(&[ns, f, t, o]);
        OutcomeCounters {
            success: counter(event_outcome::SUCCESS),
            retry: counter(event_outcome::RETRY),
            drop: counter(event_outcome::DROP),
            dead_letter: counter(event_outcome::DEAD_LETTER),
            duration: metrics
                .event_delivery_duration
                .with_label_values(&[ns, f, t]),
            in_flight: metrics.events_in_flight.with_label_values(&[ns, f, t]),
        }
    }
}

/// Counts an event in `fngate_events_in_flight` while it lives.
pub struct InFlight<'a>(&'a TriggerRuntime);

impl<'a> InFlight<'a> {
    pub fn new(rt: &'a TriggerRuntime) -> Self {
        rt.counters.in_flight.inc();
        InFlight(rt)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.counters.in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::*;

    fn runtime(dead_letter: Option<&str>) -> TriggerRuntime {
        runtime_with(dead_letter, None)
    }

    fn runtime_with(dead_letter: Option<&str>, max_retries: Option<u32>) -> TriggerRuntime {
        let spec = TriggerSpec {
            app_id: "f-default".into(),
            component: "c".into(),
            kind: TriggerKind::Binding,
            source: SourceSpec::Jetstream(JetstreamSource {
                nats_url: "nats://x".into(),
                stream_name: None,
                subject: "s".into(),
                durable_name: "d".into(),
                deliver_policy: DeliverPolicy::All,
                ack_wait: None,
                max_deliver: None,
            }),
            delivery: DeliverySpec {
                protocol: AppProtocol::Http,
                port: 1,
                service: ServiceKey {
                    namespace: "default".into(),
                    name: "f".into(),
                },
            },
            policy: DeliveryPolicy {
                concurrency: 1,
                retry_initial: Duration::from_millis(100),
                retry_max: Duration::from_millis(350),
                max_attempts: Some(3),
                max_retries,
                app_max_concurrency: None,
                dead_letter_topic: dead_letter.map(str::to_owned),
            },
            route: None,
        };
        let key = TriggerKey {
            namespace: "default".into(),
            function: "f".into(),
            component: "c".into(),
            topic: "s".into(),
        };
        let (_, revisions) = watch::channel(0);
        let (_, stop) = watch::channel(false);
        let plan = Arc::new(arc_swap::ArcSwap::from_pointee(crate::plan::Plan::default()));
        let metrics = Arc::new(Metrics::new());
        let activator = Arc::new(Activator::new(
            plan.clone(),
            revisions.clone(),
            Default::default(),
            metrics.clone(),
            None,
        ));
        TriggerRuntime::new(
            key,
            Arc::new(spec),
            plan,
            revisions,
            stop,
            metrics,
            activator,
        )
    }

    #[test]
    fn app_failures_go_to_the_dead_letter_topic_after_max_attempts_an_unreachable_app_never() {
        let rt = runtime(Some("dlq"));
        let retry = Answer::Retry("RETRY".into());
        assert_eq!(
            rt.decide(&retry, 1, 1),
            Decision::RetryAfter(Duration::from_millis(100))
        );
        assert_eq!(
            rt.decide(&retry, 2, 2),
            Decision::RetryAfter(Duration::from_millis(200))
        );
        assert_eq!(rt.decide(&retry, 3, 3), Decision::DeadLetter);
        let down = Answer::Unreachable("refused".into());
        assert_eq!(
            rt.decide(&down, 9, 0),
            Decision::RetryAfter(Duration::from_millis(350)),
            "capped"
        );
        assert_eq!(
            rt.decide(&Answer::Drop("DROP".into()), 1, 0),
            Decision::DeadLetter
        );
        assert_eq!(
            rt.decide(&Answer::Success, 1, 0),
            Decision::Ack(Settled::Delivered)
        );
    }

    #[test]
    fn with_max_retries_a_failed_event_is_dropped_after_them_an_unreachable_app_never() {
        let rt = runtime_with(None, Some(2));
        let retry = Answer::Retry("RETRY".into());
        assert!(matches!(rt.decide(&retry, 1, 1), Decision::RetryAfter(_)));
        assert!(matches!(rt.decide(&retry, 3, 2), Decision::RetryAfter(_)));
        assert_eq!(rt.decide(&retry, 4, 3), Decision::Ack(Settled::Dropped));
        let down = Answer::Unreachable("refused".into());
        assert!(matches!(rt.decide(&down, 9, 0), Decision::RetryAfter(_)));
        let none = runtime_with(None, Some(0));
        assert_eq!(none.decide(&retry, 1, 1), Decision::Ack(Settled::Dropped));
    }

    #[test]
    fn without_a_dead_letter_topic_failures_retry_forever_and_drops_are_acknowledged() {
        let rt = runtime(None);
        assert!(matches!(
            rt.decide(&Answer::Retry("x".into()), 50, 50),
            Decision::RetryAfter(_)
        ));
        assert_eq!(
            rt.decide(&Answer::Drop("x".into()), 1, 0),
            Decision::Ack(Settled::Dropped)
        );
    }
}
