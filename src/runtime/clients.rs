//! Store and broker clients, one per component instance, made on first use and kept while
//! the component's spec is unchanged: a new plan that leaves a component alone reuses its
//! connections; one that changes it gets a new client.

use super::state::{RedisStore, StateStore};
use crate::plan::{
    BrokerBackend, ComponentId, DaprApps, KafkaProducerSettings, StateBackend,
    StateComponent,
};
use crate::telemetry::Metrics;
use rdkafka::producer::FutureProducer;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

type Keyed<S, C> = Mutex<HashMap<ComponentId, (S, C)>>;

pub(crate) struct Clients {
    states: Keyed<StateBackend, Arc<dyn StateStore>>,
    kafka: Keyed<KafkaProducerSettings, FutureProducer>,
    nats: Mutex<HashMap<String, async_nats::jetstream::Context>>,
    metrics: Arc<Metrics>,
}

impl Clients {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Clients {
        Clients {
            states: Mutex::default(),
            kafka: Mutex::default(),
            nats: Mutex::default(),
            metrics,
        }
    }

    pub(crate) fn state_store(
        &self,
        component: &StateComponent,
    ) -> Result<Arc<dyn StateStore>, String> {
        let mut states = self.states.lock().expect("not poisoned");
        if let Some((backend, store)) = states.get(&component.id) {
            if *backend == component.backend {
                return Ok(store.clone());
            }
        }
        let store: Arc<dyn StateStore> = match &component.backend {
            StateBackend::Redis(settings) => Arc::new(RedisStore::new(settings)?),
        };
        tracing::info!(component = %component.id, kind = %component.kind, "state store client created");
        states.insert(
            component.id.clone(),
            (component.backend.clone(), store.clone()),
        );
        Ok(store)
    }

    /// Sets `fngate_dapr_component_connected` from a store's last call.
    pub(crate) fn observe_store(&self, component: &StateComponent, store: &dyn StateStore) {
        self.metrics
            .dapr_component_connected
            .with_label_values(&[
                &component.id.namespace,
                &component.id.name,
                &component.kind,
            ])
            .set(store.connected() as i64);
    }

    pub(crate) fn kafka_producer(
        &self,
        id: &ComponentId,
        settings: &KafkaProducerSettings,
    ) -> Result<FutureProducer, String> {
        let mut producers = self.kafka.lock().expect("not poisoned");
        if let Some((s, p)) = producers.get(id) {
            if s == settings {
                return Ok(p.clone());
            }
        }
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &settings.brokers)
            // As Dapr's producer: every in-sync replica acknowledges; bounded so a broker
            // that is down gives an error, not a hung call.
            .set("acks", "all")
            .set("message.timeout.ms", "10000")
            .set("linger.ms", "1")
            // fngate picks partitions itself (Sarama's hash) so keys land where daprd puts them.
            .set("partitioner", "random");
        if let Some(id) = &settings.client_id {
            c.set("client.id", id);
        }
        for (k, v) in settings.auth.client_settings() {
            c.set(k, v);
        }
        let producer: FutureProducer = c.create().map_err(|e| e.to_string())?;
        tracing::info!(component = %id, brokers = %settings.brokers, "kafka producer created");
        producers.insert(id.clone(), (settings.clone(), producer.clone()));
        Ok(producer)
    }

    /// Drops the clients of components no app can reach any more (their connections close).
    pub(crate) fn retain(&self, apps: &DaprApps) {
        let mut ids = HashSet::new();
        let mut urls = HashSet::new();
        for app in apps.apps.values() {
            ids.extend(app.states.values().map(|s| &s.id));
            ids.extend(app.bindings.values().map(|b| &b.id));
            for p in app.pubsubs.values() {
                ids.insert(&p.id);
                if let BrokerBackend::Jetstream { nats_url } = &p.backend {
                    urls.insert(nats_url.as_str());
                }
            }
        }
        self.states
            .lock()
            .expect("not poisoned")
            .retain(|id, _| ids.contains(id));
        self.kafka
            .lock()
            .expect("not poisoned")
            .retain(|id, _| ids.contains(id));
        self.nats
            .lock()
            .expect("not poisoned")
            .retain(|url, _| urls.contains(url.as_str()));
    }

    /// One NATS connection per URL, shared by the components that name it.
    pub(crate) async fn jetstream(
        &self,
        url: &str,
    ) -> Result<async_nats::jetstream::Context, String> {
        if let Some(js) = self.nats.lock().expect("not poisoned").get(url) {
            return Ok(js.clone());
        }
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(std::time::Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| e.to_string())?;
        let mut js = async_nats::jetstream::new(client);
        js.set_timeout(std::time::Duration::from_secs(5));
        let mut nats = self.nats.lock().expect("not poisoned");
        Ok(nats.entry(url.to_owned()).or_insert(js).clone())
    }
}
