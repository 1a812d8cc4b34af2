//! Scale from zero: a request whose Service has no ready endpoint waits here, before its
//! body is read, until a plan with a ready endpoint is published. Every waiter is woken
//! by the plan's revision broadcast (a `watch` channel), not by polling. Waiting is
//! bounded per function and in total; a waiter that gives up, or whose client leaves,
//! frees its slot at once.
//!
//! The platform hears of it at once: KEDA through the external push scaler (`scaler`),
//! others through a webhook (`webhook`), both on the edge of a function's first waiter.

pub mod scaler;
mod webhook;

pub use webhook::Webhook;

use crate::plan::{choose_port, EndpointAddress, PortSpec, ServiceEndpoints, ServiceKey};
use crate::plan_swap::SharedPlan;
use crate::routing::HoldPolicy;
use crate::telemetry::Metrics;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Bounds on waiting requests.
#[derive(Clone, Debug, PartialEq)]
pub struct HoldLimits {
    pub per_function: usize,
    pub total: usize,
    /// Default wait before 504; a Function's `fngate.io/hold-timeout` overrides it.
    pub timeout: Duration,
}

impl Default for HoldLimits {
    fn default() -> Self {
        HoldLimits {
            per_function: 1000,
            total: 10_000,
            timeout: Duration::from_secs(30),
        }
    }
}

/// What one function has going on: requests waiting for an endpoint and requests being
/// served. KEDA scales on their sum; `active` flips on the edges.
pub struct Activity {
    waiting: AtomicUsize,
    in_flight: AtomicUsize,
    active: watch::Sender<bool>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            waiting: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            active: watch::channel(false).0,
        }
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Waiting plus in flight: the load KEDA scales on.
    pub fn load(&self) -> usize {
        self.waiting() + self.in_flight.load(Ordering::SeqCst)
    }

    /// Counts a request being served until the guard drops.
    pub fn running(this: &Arc<Activity>) -> Running {
        this.in_flight.fetch_add(1, Ordering::SeqCst);
        this.update();
        Running(this.clone())
    }

    /// Changes (false -> true, true -> false) of "anything waiting or running".
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.active.subscribe()
    }

    /// Called after every counter change. The state is recomputed under the channel's
    /// lock, so the last caller leaves it matching the counters.
    fn update(&self) {
        // The common case (busy stays busy) only reads.
        if *self.active.borrow() == (self.load() > 0) {
            return;
        }
        self.active.send_if_modified(|a| {
            let active = self.load() > 0;
            let changed = *a != active;
            *a = active;
            changed
        });
    }
}

/// Counts one waiter (a held request, or an event consumer paused for an endpoint) in its
/// function's `waiting` while it lives.
pub struct Waiter(Arc<Activity>);

impl Drop for Waiter {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
        self.0.update();
    }
}

/// Counts a request in its function's `in_flight` while it lives.
pub struct Running(Arc<Activity>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.update();
    }
}

/// How a hold ended.
pub enum Held {
    /// Endpoints are ready (from a published plan, or found by the probe). With a release
    /// limit, the permit this request holds until it ends. The request counts as running
    /// from before it stops counting as waiting, so its function never looks idle between.
    Ready(Arc<ServiceEndpoints>, Option<ReleasePermit>, Running),
    /// Too many requests already wait (for this function, or in all): 503 at once.
    Overflow,
    /// No endpoint became ready in time: 504.
    TimedOut,
}

/// One of the requests a just-started function may serve at once after a hold.
pub type ReleasePermit = tokio::sync::OwnedSemaphorePermit;

/// Per Service: the permits held requests take when released, `limit` per ready
/// endpoint, so a fresh pod gets at most `limit` of them at a time.
struct ReleaseGate {
    permits: Arc<tokio::sync::Semaphore>,
    capacity: usize,
}

pub struct Activator {
    plan: SharedPlan,
    revisions: watch::Receiver<u64>,
    limits: HoldLimits,
    metrics: Arc<Metrics>,
    waiting: Mutex<Waiting>,
    /// By namespace, then function: looked up with two `&str`, no allocation per request.
    activity: Mutex<HashMap<String, HashMap<String, Arc<Activity>>>>,
    /// Told when a function's first request starts waiting.
    webhook: Option<Webhook>,
    /// One prober per Service and plan revision, shared by all its waiters.
    probes: Mutex<HashMap<ServiceKey, (u64, Arc<ProbeResult>)>>,
    release_gates: Mutex<HashMap<ServiceKey, ReleaseGate>>,
}

/// The first endpoint a prober found answering, once it has.
type ProbeResult = watch::Sender<Option<(SocketAddr, Instant)>>;

/// Whether `addr` takes connections and, with a readiness path, answers `GET path` with
/// a 2xx or 3xx status.
async fn probe_once(addr: SocketAddr, readiness_path: Option<&str>) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(PROBE_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await
    else {
        return false;
    };
    let Some(path) = readiness_path else {
        return true;
    };
    let check = async {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: fngate-activator-probe\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = Vec::with_capacity(64);
        let mut buf = [0u8; 64];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 1024 {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = std::str::from_utf8(&head).ok()?;
        let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some((200..400).contains(&code))
    };
    tokio::time::timeout(PROBE_HTTP_TIMEOUT, check)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// How often a listed-but-not-ready endpoint is tried while requests wait for it: the
/// longest a held request waits after its function starts listening. A refused connect
/// on the same network costs microseconds, so a cold start costs ~330 tries a second.
const PROBE_EVERY: Duration = Duration::from_millis(3);
/// A probe connect may take longer than the interval (another node, a busy one).
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_millis(50);
/// An HTTP readiness check answers within this or counts as not ready.
const PROBE_HTTP_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Waiting {
    total: usize,
    by_service: HashMap<ServiceKey, usize>,
}

/// One admitted waiter; its slot is freed when dropped (release, timeout, or the
/// request future dropped because the client went away).
struct Slot<'a> {
    activator: &'a Activator,
    key: ServiceKey,
    /// This function's `fngate_activator_waiting` child, looked up once.
    gauge: prometheus::IntGauge,
    _waiter: Waiter,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut w = self.activator.waiting.lock().expect("not poisoned");
        w.total -= 1;
        if let Some(n) = w.by_service.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                w.by_service.remove(&self.key);
            }
        }
        drop(w);
        self.gauge.dec();
    }
}

impl Activator {
    pub fn new(
        plan: SharedPlan,
        revisions: watch::Receiver<u64>,
        limits: HoldLimits,
        metrics: Arc<Metrics>,
        webhook: Option<Webhook>,
    ) -> Activator {
        Activator {
            plan,
            revisions,
            limits,
            metrics,
            waiting: Mutex::new(Waiting::default()),
            activity: Mutex::new(HashMap::new()),
            webhook,
            probes: Mutex::new(HashMap::new()),
            release_gates: Mutex::new(HashMap::new()),
        }
    }

    /// The release permits of `service`, grown to `limit` per ready endpoint.
    fn release_gate(
        &self,
        service: &ServiceKey,
        limit: u32,
        ready: usize,
    ) -> Arc<tokio::sync::Semaphore> {
        let mut gates = self.release_gates.lock().expect("not poisoned");
        let gate = gates.entry(service.clone()).or_insert_with(|| ReleaseGate {
            permits: Arc::new(tokio::sync::Semaphore::new(0)),
            capacity: 0,
        });
        let wanted = limit as usize * ready.max(1);
        if wanted > gate.capacity {
            gate.permits.add_permits(wanted - gate.capacity);
            gate.capacity = wanted;
        } else if wanted < gate.capacity && gate.permits.available_permits() == gate.capacity {
            // Fewer endpoints than last time (a new cold start) and nothing released is
            // still running: start again from this many.
            *gate = ReleaseGate {
                permits: Arc::new(tokio::sync::Semaphore::new(wanted)),
                capacity: wanted,
            };
        }
        gate.permits.clone()
    }

    /// Like Knative's activator: endpoints the plan lists as not ready are tried (TCP
    /// connect) every 3 ms, and the first that answers is used at once, before the
    /// platform marks it ready. One prober per Service and plan revision; it stops when
    /// nobody waits any more.
    fn probe(
        &self,
        service: &ServiceKey,
        revision: u64,
        targets: Vec<SocketAddr>,
        readiness_path: Option<String>,
        labels: [&str; 2],
        since: Option<Instant>,
    ) -> watch::Receiver<Option<(SocketAddr, Instant)>> {
        let mut probes = self.probes.lock().expect("not poisoned");
        if let Some((rev, tx)) = probes.get(service) {
            // Reuse it unless what it found is older than a refusal this waiter saw.
            let stale = tx
                .borrow()
                .is_some_and(|(_, found)| since.is_some_and(|t| found <= t));
            if *rev == revision && !stale {
                return tx.subscribe();
            }
        }
        let tx = Arc::new(watch::channel(None).0);
        let rx = tx.subscribe();
        probes.insert(service.clone(), (revision, tx.clone()));
        drop(probes);
        let metrics = self.metrics.clone();
        let labels = labels.map(str::to_owned);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROBE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while tx.receiver_count() > 0 {
                tick.tick().await;
                for addr in &targets {
                    let up = probe_once(*addr, readiness_path.as_deref()).await;
                    metrics
                        .activator_probes
                        .with_label_values(&[
                            labels[0].as_str(),
                            labels[1].as_str(),
                            if up { "up" } else { "down" },
                        ])
                        .inc();
                    if up {
                        tx.send_replace(Some((*addr, Instant::now())));
                        return;
                    }
                }
            }
        });
        rx
    }

    /// The activity record of function `namespace/name` (created on first use).
    pub fn activity(&self, namespace: &str, name: &str) -> Arc<Activity> {
        let mut map = self.activity.lock().expect("not poisoned");
        if let Some(a) = map.get(namespace).and_then(|m| m.get(name)) {
            return a.clone();
        }
        let a = Arc::new(Activity::new());
        map.entry(namespace.to_owned())
            .or_default()
            .insert(name.to_owned(), a.clone());
        a
    }

    /// Counts something waiting for function `namespace/name` to get an endpoint (a held
    /// request, or an event consumer paused with a backlog) until the guard drops. The
    /// first waiter is the edge the platform must hear about at once.
    /// `activator.hold_timeout`: how long anything may wait for a function to be ready.
    pub fn hold_timeout(&self) -> Duration {
        self.limits.timeout
    }

    pub fn waiter(&self, namespace: &str, name: &str) -> Waiter {
        let activity = self.activity(namespace, name);
        let first = activity.waiting.fetch_add(1, Ordering::SeqCst) == 0;
        activity.update();
        if first {
            if let Some(hook) = &self.webhook {
                hook.notify(namespace, name, activity.waiting(), &self.metrics);
            }
        }
        Waiter(activity)
    }

    /// Counts a request being served by function `namespace/name` until the guard drops.
    pub fn running(&self, namespace: &str, name: &str) -> Running {
        Activity::running(&self.activity(namespace, name))
    }

    fn admit(&self, key: &ServiceKey, labels: [&str; 2]) -> Option<Slot<'_>> {
        let mut w = self.waiting.lock().expect("not poisoned");
        let mine = w.by_service.get(key).copied().unwrap_or(0);
        if w.total >= self.limits.total || mine >= self.limits.per_function {
            return None;
        }
        w.total += 1;
        *w.by_service.entry(key.clone()).or_default() += 1;
        drop(w);
        let gauge = self.metrics.activator_waiting.with_label_values(&labels);
        gauge.inc();
        Some(Slot {
            activator: self,
            key: key.clone(),
            gauge,
            _waiter: self.waiter(labels[0], labels[1]),
        })
    }

    /// Waits until `service` has a ready endpoint in a published plan, at most the policy's
    /// timeout (else `activator.hold_timeout`).
    /// `labels` are the function's (namespace, name) for metrics.
    /// `port` is the backendRef's port, to pick among a slice's ports.
    ///
    /// `refused`: endpoints every one of which just refused this request's connection
    /// (the function went away under it, 1 -> 0). They are not taken as ready again; they
    /// are probed like not-ready ones until one answers or a new plan lists others.
    pub async fn hold(
        &self,
        service: &ServiceKey,
        port: Option<u16>,
        labels: [&str; 2],
        refused: Option<&Arc<ServiceEndpoints>>,
        policy: &HoldPolicy,
    ) -> Held {
        let Some(_slot) = self.admit(service, labels) else {
            self.metrics
                .activator_overflows
                .with_label_values(&labels)
                .inc();
            return Held::Overflow;
        };
        let started = Instant::now();
        let mut revisions = self.revisions.clone();
        let deadline = tokio::time::sleep(policy.timeout.unwrap_or(self.limits.timeout));
        tokio::pin!(deadline);
        let refused_addrs: Vec<SocketAddr> = refused
            .map(|r| {
                r.ready
                    .iter()
                    .filter_map(|a| choose_port(&a.ports, port).map(|p| SocketAddr::new(a.ip, p)))
                    .collect()
            })
            .unwrap_or_default();
        // A probe success from before this request's refusal says nothing new.
        let since = refused.map(|_| Instant::now());
        let mut probed: Option<watch::Receiver<Option<(SocketAddr, Instant)>>> = None;
        loop {
            // Mark the current revision seen before reading the plan, so a publish in
            // between is not missed.
            revisions.borrow_and_update();
            let plan = self.plan.load_full();
            let listed = plan.endpoints.get(&service.namespace, &service.name);
            // Listed as ready, but every one of them just refused this request.
            let dead = |eps: &Arc<ServiceEndpoints>| {
                !refused_addrs.is_empty()
                    && eps.ready.iter().all(|a| {
                        choose_port(&a.ports, port)
                            .is_some_and(|p| refused_addrs.contains(&SocketAddr::new(a.ip, p)))
                    })
            };
            let ready = match listed {
                Some(eps) if !eps.ready.is_empty() && !dead(eps) => Some(eps.clone()),
                Some(eps) if !eps.not_ready.is_empty() || dead(eps) => {
                    let candidates = eps
                        .not_ready
                        .iter()
                        .chain(dead(eps).then_some(&eps.ready).into_iter().flatten());
                    let targets: Vec<SocketAddr> = candidates
                        .filter_map(|a| {
                            choose_port(&a.ports, port).map(|p| SocketAddr::new(a.ip, p))
                        })
                        .collect();
                    let rx = probed.insert(self.probe(
                        service,
                        plan.revision,
                        targets,
                        policy.readiness_path.clone(),
                        labels,
                        since,
                    ));
                    let up = *rx.borrow_and_update();
                    up.filter(|(_, found)| since.is_none_or(|t| *found > t))
                        .map(|(addr, _)| {
                            // The probed endpoint's own port list: it says whether the
                            // port speaks h2c.
                            let ports = eps
                                .not_ready
                                .iter()
                                .chain(&eps.ready)
                                .find(|a| {
                                    a.ip == addr.ip()
                                        && choose_port(&a.ports, port) == Some(addr.port())
                                })
                                .map(|a| a.ports.clone())
                                .unwrap_or_else(|| Arc::from([PortSpec::plain(addr.port())]));
                            Arc::new(ServiceEndpoints::new(
                                vec![EndpointAddress {
                                    ip: addr.ip(),
                                    ports,
                                }],
                                Vec::new(),
                            ))
                        })
                }
                _ => {
                    probed = None;
                    None
                }
            };
            if let Some(eps) = ready {
                // A fresh pod takes at most `limit` released requests at a time; the rest
                // keep waiting (in their slot, under the same deadline) for a permit.
                let permit = match policy.release_concurrency {
                    None => None,
                    Some(limit) => {
                        let gate = self.release_gate(service, limit, eps.ready.len());
                        tokio::select! {
                            permit = gate.acquire_owned() => permit.ok(),
                            _ = &mut deadline => break,
                        }
                    }
                };
                self.metrics
                    .activator_releases
                    .with_label_values(&labels)
                    .inc();
                self.metrics
                    .activator_wait_duration
                    .with_label_values(&labels)
                    .observe(started.elapsed().as_secs_f64());
                return Held::Ready(eps, permit, self.running(labels[0], labels[1]));
            }
            let probe_changed = async {
                match probed.as_mut() {
                    Some(rx) => {
                        let _ = rx.changed().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = revisions.changed() => if changed.is_err() {
                    break;
                },
                _ = probe_changed => {}
                _ = &mut deadline => break,
            }
        }
        self.metrics
            .activator_timeouts
            .with_label_values(&labels)
            .inc();
        Held::TimedOut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Endpoints, Plan};

    #[tokio::test]
    async fn a_released_request_counts_as_running_before_it_stops_counting_as_waiting() {
        let key = ServiceKey {
            namespace: "default".into(),
            name: "cold".into(),
        };
        let mut endpoints = Endpoints::default();
        endpoints.insert_shared(
            key.clone(),
            Arc::new(ServiceEndpoints::new(
                vec![EndpointAddress {
                    ip: "127.0.0.1".parse().unwrap(),
                    ports: Arc::from(vec![PortSpec::plain(8080)]),
                }],
                Vec::new(),
            )),
        );
        let plan = Plan {
            endpoints: Arc::new(endpoints),
            ..Default::default()
        };
        let (_publish, revisions) = watch::channel(0);
        let activator = Activator::new(
            Arc::new(arc_swap::ArcSwap::from_pointee(plan)),
            revisions,
            Default::default(),
            Arc::new(Metrics::new()),
            None,
        );
        let held = activator
            .hold(
                &key,
                Some(8080),
                ["default", "cold"],
                None,
                &HoldPolicy::default(),
            )
            .await;
        let activity = activator.activity("default", "cold");
        // Its hold slot is gone; the request is now running, so KEDA still sees it.
        assert_eq!((activity.waiting(), activity.load()), (0, 1));
        assert!(*activity.subscribe().borrow());
        assert!(matches!(held, Held::Ready(..)));
        drop(held);
        assert_eq!(activity.load(), 0);
        assert!(!*activity.subscribe().borrow());
    }
}
