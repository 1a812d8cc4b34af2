//! The function side: which protocol, what the app subscribed to, and its answer to one event.

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
    /// (pubsub name, topic) -> route path (`""` when the app gave none).
    pub topics: HashMap<(String, String), String>,
}

/// How long an endpoint's subscription list is trusted before it is asked again.
const SUBSCRIPTIONS_TTL: Duration = Duration::from_secs(30);

pub enum AppClient {
    Grpc(GrpcApp),
    Http(Box<HttpApp>),
}

/// Delivers one trigger's events to whichever endpoint the plan names.
pub struct App {
    client: AppClient,
    /// Asked when an endpoint is first used; refreshed after `SUBSCRIPTIONS_TTL`.
    subscriptions: Mutex<HashMap<SocketAddr, (Instant, Arc<Subscriptions>)>>,
}

/// Where an event goes on one endpoint, or why it cannot go there.
pub enum Route {
    /// HTTP path or gRPC `path` field.
    Path(String),
    NotSubscribed,
}

impl App {
    pub fn new(protocol: AppProtocol) -> App {
        App {
            client: match protocol {
                AppProtocol::Grpc => AppClient::Grpc(GrpcApp::default()),
                AppProtocol::Http => AppClient::Http(Box::default()),
            },
            subscriptions: Mutex::new(HashMap::new()),
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
                let fetched = Arc::new(match &self.client {
                    AppClient::Grpc(g) => g.subscriptions(addr).await?,
                    AppClient::Http(h) => h.subscriptions(addr, spec).await?,
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
                Route::Path(spec.component.clone())
            }
            TriggerKind::PubSub => {
                match subs.topics.get(&(spec.component.clone(), topic.to_owned())) {
                    Some(path) => Route::Path(path.clone()),
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

    pub async fn deliver(
        &self,
        addr: SocketAddr,
        spec: &TriggerSpec,
        event: &Event,
        path: &str,
    ) -> Answer {
        match &self.client {
            AppClient::Grpc(g) => g.deliver(addr, spec, event, path).await,
            AppClient::Http(h) => h.deliver(addr, spec, event, path).await,
        }
    }
}
