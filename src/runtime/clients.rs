//! Store and broker clients, made on first use and keyed by where they connect (host,
//! database, credentials...), not by component: every app and component naming the same
//! Redis or Kafka cluster shares one client, so a thousand functions with the same inline
//! store cost one connection, not a thousand sidecars' worth. A new plan that leaves a
//! backend alone keeps its client; a changed one gets a new client.

use super::outputs::{HttpClient, MqttPublisher};
use super::state::{MysqlStore, PostgresStore, RedisStore, StateStore};
use crate::plan::{
    BindingBackend, BrokerBackend, ComponentId, DaprApps, HttpTls, KafkaProducerSettings,
    MqttProducerSettings, StateBackend, StateComponent,
};
use crate::telemetry::Metrics;
use rdkafka::producer::FutureProducer;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

pub(crate) struct Clients {
    states: Mutex<HashMap<StateBackend, Arc<dyn StateStore>>>,
    kafka: Mutex<HashMap<KafkaProducerSettings, FutureProducer>>,
    nats: Mutex<HashMap<String, async_nats::jetstream::Context>>,
    mqtt: Mutex<HashMap<MqttProducerSettings, Arc<MqttPublisher>>>,
    /// `bindings.http` clients, one per TLS setting (`None`: plain and system roots).
    http: Mutex<HashMap<Option<HttpTls>, HttpClient>>,
    metrics: Arc<Metrics>,
}

impl Clients {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Clients {
        Clients {
            states: Mutex::default(),
            kafka: Mutex::default(),
            nats: Mutex::default(),
            mqtt: Mutex::default(),
            http: Mutex::default(),
            metrics,
        }
    }

    /// The `bindings.http` client for `tls`, shared by the components that name it.
    pub(crate) fn http_client(&self, tls: Option<&HttpTls>) -> Result<HttpClient, String> {
        let mut clients = self.http.lock().expect("not poisoned");
        if let Some(c) = clients.get(&tls.cloned()) {
            return Ok(c.clone());
        }
        let client = super::outputs::http_client(tls)?;
        clients.insert(tls.cloned(), client.clone());
        Ok(client)
    }

    /// Publishes at QoS 1 on the connection of `settings`; `Ok` once the broker has it.
    pub(crate) async fn mqtt_publish(
        &self,
        settings: &MqttProducerSettings,
        topic: &str,
        payload: bytes::Bytes,
        retain: bool,
    ) -> Result<(), String> {
        self.mqtt_publisher(settings)?
            .publish(topic, payload, retain)
            .await
    }

    /// One MQTT connection per settings, shared by the components that name them.
    fn mqtt_publisher(
        &self,
        settings: &MqttProducerSettings,
    ) -> Result<Arc<MqttPublisher>, String> {
        let mut publishers = self.mqtt.lock().expect("not poisoned");
        if let Some(p) = publishers.get(settings) {
            return Ok(p.clone());
        }
        let publisher = Arc::new(MqttPublisher::connect(settings)?);
        publishers.insert(settings.clone(), publisher.clone());
        Ok(publisher)
    }

    pub(crate) fn state_store(
        &self,
        component: &StateComponent,
    ) -> Result<Arc<dyn StateStore>, String> {
        let mut states = self.states.lock().expect("not poisoned");
        if let Some(store) = states.get(&component.backend) {
            return Ok(store.clone());
        }
        let store: Arc<dyn StateStore> = match &component.backend {
            StateBackend::Redis(settings) => Arc::new(RedisStore::new(settings)?),
            StateBackend::Postgres(settings) => PostgresStore::new(settings)?,
            StateBackend::Mysql(settings) => MysqlStore::new(settings)?,
        };
        tracing::info!(component = %component.id, kind = %component.kind, "state store client created");
        states.insert(component.backend.clone(), store.clone());
        Ok(store)
    }

    /// Sets `fngate_dapr_component_connected` from a store's last call.
    pub(crate) fn observe_store(&self, component: &StateComponent, store: &dyn StateStore) {
        self.metrics
            .dapr_component_connected
            .with_label_values(&[&component.id.namespace, &component.id.name, &component.kind])
            .set(store.connected() as i64);
    }

    pub(crate) fn kafka_producer(
        &self,
        id: &ComponentId,
        settings: &KafkaProducerSettings,
    ) -> Result<FutureProducer, String> {
        let mut producers = self.kafka.lock().expect("not poisoned");
        if let Some(p) = producers.get(settings) {
            return Ok(p.clone());
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
        producers.insert(settings.clone(), producer.clone());
        Ok(producer)
    }

    /// Drops the clients of backends no app can reach any more (their connections close).
    pub(crate) fn retain(&self, apps: &DaprApps) {
        let mut stores = HashSet::new();
        let mut producers = HashSet::new();
        let mut urls = HashSet::new();
        let mut mqtt = HashSet::new();
        let mut https: HashSet<Option<HttpTls>> = HashSet::new();
        for app in apps.apps.values() {
            stores.extend(app.states.values().map(|s| &s.backend));
            for b in app.bindings.values() {
                match &b.backend {
                    BindingBackend::Kafka { producer, .. } => {
                        producers.insert(producer);
                    }
                    BindingBackend::Mqtt { producer, .. } => {
                        mqtt.insert(producer);
                    }
                    BindingBackend::Http { tls, .. } => {
                        https.insert(tls.clone());
                    }
                }
            }
            for p in app.pubsubs.values() {
                match &p.backend {
                    BrokerBackend::Jetstream { nats_url } => {
                        urls.insert(nats_url.as_str());
                    }
                    BrokerBackend::Kafka(k) => {
                        producers.insert(k);
                    }
                    BrokerBackend::Mqtt(m) => {
                        mqtt.insert(m);
                    }
                }
            }
        }
        self.states
            .lock()
            .expect("not poisoned")
            .retain(|b, _| stores.contains(b));
        self.kafka
            .lock()
            .expect("not poisoned")
            .retain(|k, _| producers.contains(k));
        self.nats
            .lock()
            .expect("not poisoned")
            .retain(|url, _| urls.contains(url.as_str()));
        self.mqtt
            .lock()
            .expect("not poisoned")
            .retain(|m, _| mqtt.contains(m));
        self.http
            .lock()
            .expect("not poisoned")
            .retain(|tls, _| tls.is_none() || https.contains(tls));
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
