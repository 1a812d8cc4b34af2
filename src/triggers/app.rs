//! The function side: which protocol, what the app subscribed to, and its answer to one event.

use super::bulk::{BatchSink, Batcher};
use super::contract::{Answer, BulkDestination, BulkSubscribe, Subscriptions};
use super::dapr_grpc::{GrpcApp, GrpcBulkEntry};
use super::dapr_http::{HttpApp, HttpBulkEntry};
use super::event::Event;
use crate::plan::{AppProtocol, TriggerKind, TriggerSpec};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an endpoint's subscription list is trusted before it is asked again.
const SUBSCRIPTIONS_TTL: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub enum AppClient {
    Grpc(Arc<GrpcApp>),
    Http(Arc<HttpApp>),
}

/// A batcher's endpoint, route and topic.
type BatchKey = (SocketAddr, String, String);

/// Delivers one trigger's events to whichever endpoint the plan names.
pub struct App {
    client: AppClient,
    /// Asked when an endpoint is first used; refreshed after `SUBSCRIPTIONS_TTL`.
    subscriptions: Mutex<HashMap<SocketAddr, (Instant, Arc<Subscriptions>)>>,
    /// Bulk subscriptions: one batcher per endpoint, route and topic.
    batchers: Mutex<HashMap<BatchKey, Arc<Batcher<BulkTarget>>>>,
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
                Route::Path(spec.binding_path().to_owned(), None)
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
    ) -> Arc<Batcher<BulkTarget>> {
        let mut batchers = self.batchers.lock().expect("not poisoned");
        let key = (addr, path.to_owned(), topic.to_owned());
        match batchers.get(&key) {
            Some(b) if b.limits() == limits => b.clone(),
            _ => {
                let target = BulkTarget {
                    client: self.client.clone(),
                    destination: BulkDestination {
                        addr,
                        path: path.to_owned(),
                        topic: topic.to_owned(),
                        component: component.to_owned(),
                    },
                };
                let b = Arc::new(Batcher::new(target, limits));
                batchers.insert(key, b.clone());
                b
            }
        }
    }
}

/// One event as a bulk entry of the app's protocol.
pub enum Entry {
    Grpc(GrpcBulkEntry),
    Http(HttpBulkEntry),
}

/// Where a batch goes, and the client that takes it there.
pub struct BulkTarget {
    client: AppClient,
    destination: BulkDestination,
}

#[async_trait::async_trait]
impl BatchSink for BulkTarget {
    type Entry = Entry;

    /// Sends one batch; the answers come back in the entries' order.
    async fn send(&self, entries: Vec<Entry>) -> Vec<Answer> {
        match &self.client {
            AppClient::Grpc(g) => {
                let entries = entries
                    .into_iter()
                    .filter_map(|e| match e {
                        Entry::Grpc(e) => Some(e),
                        Entry::Http(_) => None,
                    })
                    .collect();
                g.deliver_bulk(&self.destination, entries).await
            }
            AppClient::Http(h) => {
                let entries = entries
                    .into_iter()
                    .filter_map(|e| match e {
                        Entry::Http(e) => Some(e),
                        Entry::Grpc(_) => None,
                    })
                    .collect();
                h.deliver_bulk(&self.destination, entries).await
            }
        }
    }
}
