//! The function side: which protocol, what the app subscribed to, and its answer to one event.

use super::bulk::{Batcher, Entry};
use super::dapr_grpc::GrpcApp;
use super::dapr_http::HttpApp;
use super::event::Event;
use crate::plan::{AppProtocol, TriggerKind, TriggerSpec};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The app's answer to one delivery attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Success,
    Retry(String),
    /// Acknowledge and dead-letter (DROP, gRPC UNIMPLEMENTED, HTTP 404).
    Drop(String),
    /// The app could not be reached (refused, reset, gRPC UNAVAILABLE): retried, never
    /// dead-lettered, since the event was not judged.
    Unreachable(String),
}

impl Answer {
    /// Why a delivery did not succeed.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Answer::Success => None,
            Answer::Retry(r) | Answer::Drop(r) | Answer::Unreachable(r) => Some(r),
        }
    }
}

/// What an endpoint told us it consumes.
#[derive(Clone, Debug, Default)]
pub struct Subscriptions {
    pub bindings: HashSet<String>,
    /// (pubsub name, topic) -> where its events go.
    pub topics: HashMap<(String, String), TopicRoute>,
}

/// One topic subscription: the route path (`""` when the app gave none) and, when the app
/// opted in to Dapr's bulk subscribe, its batch limits.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopicRoute {
    pub path: String,
    pub bulk: Option<BulkSubscribe>,
}

/// An app's `bulkSubscribe` settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BulkSubscribe {
    pub max_messages: usize,
    pub max_await: Duration,
}

impl BulkSubscribe {
    /// Dapr's defaults (100 messages, 1 s) for what the app leaves at 0.
    pub fn new(max_messages: i64, max_await_ms: i64) -> BulkSubscribe {
        BulkSubscribe {
            max_messages: if max_messages > 0 {
                max_messages as usize
            } else {
                100
            },
            max_await: Duration::from_millis(if max_await_ms > 0 {
                max_await_ms as u64
            } else {
                1000
            }),
        }
    }
}

/// How long an endpoint's subscription list is trusted before it is asked again.
const SUBSCRIPTIONS_TTL: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub enum AppClient {
    Grpc(Arc<GrpcApp>),
    Http(Arc<HttpApp>),
}

/// Delivers one trigger's events to whichever endpoint the plan names.
pub struct App {
    client: AppClient,
    /// Asked when an endpoint is first used; refreshed after `SUBSCRIPTIONS_TTL`.
    subscriptions: Mutex<HashMap<SocketAddr, (Instant, Arc<Subscriptions>)>>,
    /// Bulk subscriptions: one batcher per endpoint, route and topic.
    batchers: Mutex<HashMap<(SocketAddr, String, String), Arc<Batcher>>>,
}

/// Where an event goes on one endpoint, or why it cannot go there.
pub enum Route {
    /// HTTP path or gRPC `path` field, and the bulk settings when the app takes batches.
    Path(String, Option<BulkSubscribe>),
    NotSubscribed,
}

impl App {
    pub fn new(protocol: AppProtocol) -> App {
        App {
            client: match protocol {
                AppProtocol::Grpc => AppClient::Grpc(Arc::default()),
                AppProtocol::Http => AppClient::Http(Arc::default()),
            },
            subscriptions: Mutex::new(HashMap::new()),
            batchers: Mutex::new(HashMap::new()),
        }
    }

    /// Whether (and where) the app at `addr` takes this trigger's events.
    pub async fn route(
        &self,
        addr: SocketAddr,
        spec: &TriggerSpec,
        topic: &str,
    ) -> Result<Route, String> {
        let cached = self
            .subscriptions
            .lock()
            .expect("not poisoned")
            .get(&addr)
            .filter(|(at, _)| at.elapsed() < SUBSCRIPTIONS_TTL)
            .map(|(_, s)| Arc::clone(s));
        let subs = match cached {
            Some(s) => s,
            None => {
                // Boxed, as below: the client futures are large and would otherwise be
                // part of (and copied with) every event's delivery future.
                let fetched = Arc::new(match &self.client {
                    AppClient::Grpc(g) => Box::pin(g.subscriptions(addr)).await?,
                    AppClient::Http(h) => Box::pin(h.subscriptions(addr, spec)).await?,
                });
                self.subscriptions
                    .lock()
                    .expect("not poisoned")
                    .insert(addr, (Instant::now(), fetched.clone()));
                fetched
            }
        };
        Ok(match spec.kind {
            TriggerKind::Binding if subs.bindings.contains(&spec.component) => {
                Route::Path(spec.component.clone(), None)
            }
            TriggerKind::PubSub => {
                match subs.topics.get(&(spec.component.clone(), topic.to_owned())) {
                    Some(t) => Route::Path(t.path.clone(), t.bulk),
                    None => Route::NotSubscribed,
                }
            }
            _ => Route::NotSubscribed,
        })
    }

    /// Forgets what an endpoint subscribed to, so it is asked again.
    pub fn forget(&self, addr: SocketAddr) {
        self.subscriptions
            .lock()
            .expect("not poisoned")
            .remove(&addr);
    }

    /// Delivers one event; with a bulk subscription it travels in a batch with others.
    pub async fn deliver(
        &self,
        addr: SocketAddr,
        spec: &TriggerSpec,
        event: &Event,
        path: &str,
        bulk: Option<BulkSubscribe>,
    ) -> Answer {
        if let (Some(limits), TriggerKind::PubSub) = (bulk, spec.kind) {
            let entry = match &self.client {
                AppClient::Grpc(_) => Entry::Grpc(super::dapr_grpc::bulk_entry(event, spec)),
                AppClient::Http(_) => Entry::Http(super::dapr_http::bulk_entry(event, spec)),
            };
            let batcher = self.batcher(addr, path, &event.topic, &spec.component, limits);
            return batcher.deliver(entry).await;
        }
        match &self.client {
            AppClient::Grpc(g) => Box::pin(g.deliver(addr, spec, event, path)).await,
            AppClient::Http(h) => Box::pin(h.deliver(addr, spec, event, path)).await,
        }
    }

    fn batcher(
        &self,
        addr: SocketAddr,
        path: &str,
        topic: &str,
        component: &str,
        limits: BulkSubscribe,
    ) -> Arc<Batcher> {
        let mut batchers = self.batchers.lock().expect("not poisoned");
        let key = (addr, path.to_owned(), topic.to_owned());
        match batchers.get(&key) {
            Some(b) if b.limits() == limits => b.clone(),
            _ => {
                let target = BulkTarget {
                    client: self.client.clone(),
                    addr,
                    path: path.to_owned(),
                    topic: topic.to_owned(),
                    component: component.to_owned(),
                };
                let b = Arc::new(Batcher::new(target, limits));
                batchers.insert(key, b.clone());
                b
            }
        }
    }
}

/// Where a batch goes.
pub struct BulkTarget {
    pub client: AppClient,
    pub addr: SocketAddr,
    pub path: String,
    pub topic: String,
    /// The pub/sub component's name.
    pub component: String,
}

impl BulkTarget {
    /// Sends one batch; the answers come back in the entries' order.
    pub async fn send(&self, entries: Vec<Entry>) -> Vec<Answer> {
        match &self.client {
            AppClient::Grpc(g) => {
                let entries = entries.into_iter().filter_map(Entry::into_grpc).collect();
                g.deliver_bulk(self, entries).await
            }
            AppClient::Http(h) => {
                let entries = entries.into_iter().filter_map(Entry::into_http).collect();
                h.deliver_bulk(self, entries).await
            }
        }
    }
}
