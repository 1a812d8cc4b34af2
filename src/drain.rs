//! Graceful drain on SIGTERM (Kubernetes' pod shutdown).
//!
//! The order matters, and is what a client and a function see:
//! 1. the first SIGTERM marks fngate as draining: `/readyz` answers 503 so the Service stops
//!    sending traffic, and every HTTP/1 response from then on says `Connection: close`;
//! 2. pingora stops accepting (the listening sockets close: new connections are refused),
//!    closes idle keep-alive connections and sends HTTP/2 clients GOAWAY; the event
//!    consumers stop fetching, finish what they deliver, commit and leave their groups;
//! 3. when no proxied request is in flight and the consumers are gone, the listeners the
//!    functions themselves call — the Dapr API and the KEDA scaler — stop (a function
//!    answering an in-flight request may still need its state store until then);
//! 4. the process exits 0 as soon as all that is done, or at `shutdown.drain` after the
//!    signal at the latest (pingora's grace period), whatever is still running then cut.
//!
//! Requests held for a function scaled to zero stay held while the platform may still start
//! it; [`HELD_ANSWER_MARGIN`] before the deadline they get 503 with `Retry-After`.

use crate::telemetry::Metrics;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long before the drain deadline held requests are answered, so their 503 is written
/// before the process exits.
const HELD_ANSWER_MARGIN: Duration = Duration::from_secs(1);

/// The drain's shared state: one per process.
pub struct Drain {
    /// The drain's length (`shutdown.drain`).
    limit: Duration,
    draining: AtomicBool,
    /// When the first SIGTERM arrived.
    started: watch::Sender<Option<Instant>>,
    /// Proxied requests between their head being read and their end (held ones included):
    /// the `fngate_requests_in_flight` gauge itself is the count.
    in_flight: prometheus::IntGauge,
    /// `fngate_draining`.
    draining_gauge: prometheus::IntGauge,
    /// Bumped whenever `in_flight` reaches zero.
    idle: watch::Sender<()>,
    /// True once proxied requests and event consumers are done: the function-facing
    /// listeners (Dapr API, KEDA scaler) may stop.
    requests_done: watch::Sender<bool>,
    /// Event consumers stopped (or there is no trigger supervisor).
    consumers_done: watch::Sender<bool>,
    /// Work that must end before the process exits (listeners finishing their calls, the
    /// status writer giving its Lease up).
    exit_blockers: watch::Sender<usize>,
}

impl Drain {
    pub fn new(limit: Duration, metrics: &Metrics) -> Arc<Drain> {
        Arc::new(Drain {
            limit,
            draining: AtomicBool::new(false),
            started: watch::channel(None).0,
            in_flight: metrics.requests_in_flight.clone(),
            draining_gauge: metrics.draining.clone(),
            idle: watch::channel(()).0,
            requests_done: watch::channel(false).0,
            consumers_done: watch::channel(false).0,
            exit_blockers: watch::channel(0).0,
        })
    }

    /// Marks the process as draining (idempotent).
    pub fn begin(&self) {
        if !self.draining.swap(true, Ordering::AcqRel) {
            self.started.send_replace(Some(Instant::now()));
            self.draining_gauge.set(1);
            tracing::info!(limit = ?self.limit, "draining: no new connections, finishing what is in flight");
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Counts a proxied request until the returned guard drops.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.inc();
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.get()
    }

    /// Resolves `HELD_ANSWER_MARGIN` before the drain deadline; never while not draining.
    pub async fn held_requests_deadline(&self) {
        let mut started = self.started.subscribe();
        let Ok(start) = started
            .wait_for(Option::is_some)
            .await
            .map(|s| s.expect("some"))
        else {
            return std::future::pending().await;
        };
        let answer_at = start + self.limit.saturating_sub(HELD_ANSWER_MARGIN);
        tokio::time::sleep_until(answer_at.into()).await;
    }

    /// A watch that turns true when the function-facing listeners may stop, in the shape
    /// pingora hands its services.
    pub fn requests_done_watch(&self) -> ShutdownWatch {
        self.requests_done.subscribe()
    }

    /// The event consumers have stopped.
    pub fn consumers_stopped(&self) {
        self.consumers_done.send_replace(true);
    }

    /// Waits, once draining, until no proxied request is in flight and the consumers have
    /// stopped; then lets the function-facing listeners go.
    async fn wait_for_requests(&self) {
        let mut idle = self.idle.subscribe();
        while self.in_flight() > 0 {
            let _ = idle.changed().await;
        }
        let _ = self.consumers_done.subscribe().wait_for(|done| *done).await;
        self.requests_done.send_replace(true);
    }

    /// Holds the process's exit back until the returned guard drops.
    pub fn exit_blocker(self: &Arc<Self>) -> ExitBlocker {
        self.exit_blockers.send_modify(|n| *n += 1);
        ExitBlocker(self.clone())
    }

    /// Waits until proxied requests, consumers and every exit blocker are done.
    async fn finished(&self) {
        self.wait_for_requests().await;
        let _ = self.exit_blockers.subscribe().wait_for(|n| *n == 0).await;
    }

    /// The drain itself, from the moment pingora broadcasts its shutdown: waits for what is
    /// in flight, at most until the deadline, then ends the process with status 0.
    pub async fn run_to_exit(self: Arc<Self>, mut shutdown: ShutdownWatch) {
        if shutdown.wait_for(|stopping| *stopping).await.is_err() {
            return;
        }
        // SIGINT (fast shutdown) never begins a drain: pingora ends the process itself.
        if !self.is_draining() {
            return;
        }
        let left = self.limit.saturating_sub(self.elapsed());
        match tokio::time::timeout(left, self.finished()).await {
            Ok(()) => {
                // HTTP/2 frames of the last responses are written by their connections'
                // tasks, a moment after the requests end.
                tokio::time::sleep(FLUSH_ALLOWANCE).await;
                tracing::info!(took = ?self.elapsed(), "drained; exiting");
            }
            Err(_) => tracing::warn!(
                in_flight = self.in_flight(),
                limit = ?self.limit,
                "drain deadline reached; exiting with requests still in flight"
            ),
        }
        std::process::exit(0);
    }

    fn elapsed(&self) -> Duration {
        self.started
            .borrow()
            .map(|s| s.elapsed())
            .unwrap_or_default()
    }
}

/// Time given to connection tasks to write the last responses out once every request
/// ended.
const FLUSH_ALLOWANCE: Duration = Duration::from_millis(100);

/// Work the process's exit waits for.
pub struct ExitBlocker(Arc<Drain>);

impl Drop for ExitBlocker {
    fn drop(&mut self) {
        self.0.exit_blockers.send_modify(|n| *n -= 1);
    }
}

/// A proxied request counted in the drain.
pub struct InFlight(Arc<Drain>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.dec();
        // A wake-up only: the waiter reads the count again, so two drops both seeing zero,
        // or a request arriving in between, is harmless.
        if self.0.in_flight.get() == 0 {
            self.0.idle.send_replace(());
        }
    }
}

/// pingora's signal handling, plus the drain's first step: SIGTERM marks fngate as
/// draining before pingora tells its services to stop. SIGINT stays a fast shutdown.
pub struct DrainSignals(pub Arc<Drain>);

#[async_trait::async_trait]
impl ShutdownSignalWatch for DrainSignals {
    async fn recv(&self) -> ShutdownSignal {
        let signal = pingora::server::UnixShutdownSignalWatch.recv().await;
        if matches!(signal, ShutdownSignal::GracefulTerminate) {
            self.0.begin();
        }
        signal
    }
}
