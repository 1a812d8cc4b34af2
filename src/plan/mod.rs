//! The immutable result of a compile, swapped atomically into the data plane.

mod runtime;
mod triggers;

pub use runtime::{
    AccessPolicy, ApiToken, BindingBackend, BindingComponent, BrokerBackend, CallerPolicy,
    ComponentId, DaprApp, DaprApps, HttpTls, InvokeTarget, KafkaProducerSettings, KeyPrefix,
    MqttProducerSettings, MysqlSettings, MysqlTls, NamedMap, OperationRule, Outbox, OutputRef,
    PostgresLayout, PostgresSettings, PostgresTls, PubsubComponent, RedisSettings, SecretBackend,
    SecretScope, SecretStoreComponent, StateBackend, StateComponent, TopicAcl,
};
pub use triggers::{
    AppProtocol, CronSource, DeliverPolicy, DeliveryPolicy, DeliverySpec, InitialOffset,
    JetstreamSource, KafkaAuth, KafkaSource, MqttBroker, MqttSource, MqttTls, SourceSpec,
    TriggerDiff, TriggerKey, TriggerKind, TriggerSet, TriggerSpec,
};

use crate::api::{Diagnostic, ObjectKey};
use crate::routing::{BackendTarget, RouteTable};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct Plan {
    /// Increases by one with every publish; 0 only before the first compile.
    pub revision: u64,
    /// Hash of every object version that went into this plan (hex).
    pub content_hash: String,
    pub routes: RouteTable,
    pub endpoints: Arc<Endpoints>,
    /// The route entries each Function contributed, kept so a later compile can keep
    /// serving the last good version of a Function that became invalid.
    pub functions: BTreeMap<ObjectKey, Arc<CompiledFunction>>,
    /// Event triggers of Dapr-triggered Functions.
    pub triggers: TriggerSet,
    /// The Dapr runtime API: apps by token, and the components each may use.
    pub dapr: DaprApps,
    pub diagnostics: Vec<Diagnostic>,
    /// Gateways and settings the routes were compiled against (see `compile`).
    pub gateway_fingerprint: u64,
}

#[derive(Debug, Clone)]
pub struct CompiledFunction {
    pub version: u64,
    pub entries: crate::routing::EntrySet,
    /// What compiling this version reported, kept for when the version is reused.
    pub diagnostics: Vec<Diagnostic>,
}

impl Plan {
    /// Every route entry, flattened for `/routes` and `fngate routes`.
    pub fn route_summaries(&self) -> Vec<crate::routing::RouteSummary> {
        self.functions
            .values()
            .flat_map(|f| f.entries.iter().map(|e| e.summary()))
            .collect()
    }

    pub fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointAddress {
    pub ip: IpAddr,
    /// The slice's ports.
    pub ports: Arc<[PortSpec]>,
}

/// One port of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortSpec {
    pub name: Option<String>,
    pub number: u16,
    /// `appProtocol: kubernetes.io/h2c`: the function speaks HTTP/2 without TLS here.
    pub h2c: bool,
}

impl PortSpec {
    pub fn plain(number: u16) -> Self {
        PortSpec {
            name: None,
            number,
            h2c: false,
        }
    }
}

/// Where one request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// Its port is declared h2c.
    pub h2c: bool,
}

/// The ready endpoints of one Service, merged from all its EndpointSlices.
#[derive(Debug, Default, Serialize)]
pub struct ServiceEndpoints {
    pub ready: Vec<EndpointAddress>,
    /// Listed but not ready: what the activator probes while requests wait.
    pub not_ready: Vec<EndpointAddress>,
    #[serde(skip)]
    next: AtomicUsize,
}

impl ServiceEndpoints {
    pub fn new(ready: Vec<EndpointAddress>, not_ready: Vec<EndpointAddress>) -> Self {
        ServiceEndpoints {
            ready,
            not_ready,
            next: AtomicUsize::new(0),
        }
    }

    /// Round-robin start index; `attempt` moves to the next endpoint after a failure.
    pub fn pick(&self, attempt: usize, port_hint: Option<u16>) -> Option<SocketAddr> {
        self.pick_upstream(attempt, port_hint).map(|u| u.addr)
    }

    /// As `pick`, with the chosen port's protocol.
    pub fn pick_upstream(&self, attempt: usize, port_hint: Option<u16>) -> Option<Upstream> {
        if self.ready.is_empty() {
            return None;
        }
        let start = if attempt == 0 {
            self.next.fetch_add(1, Ordering::Relaxed)
        } else {
            self.next.load(Ordering::Relaxed).wrapping_sub(1)
        };
        let ep = &self.ready[start.wrapping_add(attempt) % self.ready.len()];
        let (port, h2c) = choose_port_spec(&ep.ports, port_hint)?;
        Some(Upstream {
            addr: SocketAddr::new(ep.ip, port),
            h2c,
        })
    }
}

/// One port: use it. Several: the one whose number matches the hint, else the first.
pub fn choose_port(ports: &[PortSpec], hint: Option<u16>) -> Option<u16> {
    choose_port_spec(ports, hint).map(|(port, _)| port)
}

/// `choose_port` with whether that port is h2c.
fn choose_port_spec(ports: &[PortSpec], hint: Option<u16>) -> Option<(u16, bool)> {
    match ports {
        [] => hint.map(|h| (h, false)),
        [p] => Some((p.number, p.h2c)),
        many => hint
            .and_then(|h| many.iter().find(|p| p.number == h))
            .or_else(|| many.first())
            .map(|p| (p.number, p.h2c)),
    }
}

/// Service endpoints by namespace, then name: two `&str` lookups, no allocation.
#[derive(Debug, Default)]
pub struct Endpoints {
    pub services: HashMap<String, HashMap<String, Arc<ServiceEndpoints>>>,
    /// Per Service: hash of its slices' identities and versions, and what reading them
    /// reported; a Service whose hash is unchanged keeps its endpoints on recompile.
    pub fingerprints: HashMap<ServiceKey, (u64, Vec<Diagnostic>)>,
    /// Hash of every slice's identity and version: equal means nothing to rebuild.
    pub slices_fingerprint: u64,
    /// What reading the slices reported.
    pub diagnostics: Vec<Diagnostic>,
}

impl Endpoints {
    pub fn get(&self, namespace: &str, name: &str) -> Option<&Arc<ServiceEndpoints>> {
        self.services.get(namespace)?.get(name)
    }
    pub fn for_target(&self, target: &BackendTarget) -> Option<&Arc<ServiceEndpoints>> {
        self.get(&target.namespace, &target.service)
    }
    pub fn insert_shared(&mut self, key: ServiceKey, endpoints: Arc<ServiceEndpoints>) {
        self.services
            .entry(key.namespace)
            .or_default()
            .insert(key.name, endpoints);
    }
    pub fn service_count(&self) -> usize {
        self.services.values().map(HashMap::len).sum()
    }
}
