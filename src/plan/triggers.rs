//! The compiled event triggers: what to consume, from where, and how to deliver it. Pure
//! data, compared with `PartialEq` so the supervisor restarts only what changed.

use super::ServiceKey;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Identity of one running consumer: a Function's trigger on one topic.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct TriggerKey {
    pub namespace: String,
    pub function: String,
    /// The trigger's component name, as the function sees it.
    pub component: String,
    /// Topic or subject; for a binding with several topics, all of them comma-joined.
    pub topic: String,
}

impl fmt::Display for TriggerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} {} {}",
            self.namespace, self.function, self.component, self.topic
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TriggerSpec {
    /// Dapr app-id of the function: `<function>-<namespace>`.
    pub app_id: String,
    /// The component name the app is told (binding name, or pubsub name).
    pub component: String,
    pub kind: TriggerKind,
    pub source: SourceSpec,
    pub delivery: DeliverySpec,
    pub policy: DeliveryPolicy,
    /// An input binding's `route` metadata: the HTTP path its events are POSTed to (and
    /// probed with OPTIONS); daprd's default is the binding's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TriggerKind {
    /// Input binding: OnBindingEvent / `POST /<name>`.
    Binding,
    /// Pub/sub subscription: OnTopicEvent / CloudEvent POST.
    PubSub,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "broker", rename_all = "lowercase")]
pub enum SourceSpec {
    Kafka(KafkaSource),
    Jetstream(JetstreamSource),
    Cron(CronSource),
    Mqtt(MqttSource),
}

/// An MQTT broker as a component's `url`, `caCert`, `clientCert` and `clientKey` name it.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MqttBroker {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    #[serde(skip)]
    pub password: Option<String>,
    /// `ssl://` (or `tls://`, `mqtts://`, `tcps://`): TLS, with these PEMs.
    pub tls: Option<MqttTls>,
}

/// TLS to an MQTT broker, as Dapr's mqtt3 sets it up: the server checked against `caCert`
/// (the system's roots without it) and its name; a client certificate when both
/// `clientCert` and `clientKey` are given.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MqttTls {
    pub ca_cert: Option<String>,
    pub client_cert: Option<String>,
    #[serde(skip)]
    pub client_key: Option<String>,
}

impl MqttTls {
    /// Dapr's metadata keys of the three PEMs (CA, client certificate, client key).
    pub const KEYS: [&'static str; 3] = ["caCert", "clientCert", "clientKey"];

    pub fn pems(&self) -> crate::client_tls::ClientPems<'_> {
        crate::client_tls::ClientPems {
            ca: self.ca_cert.as_deref(),
            cert: self.client_cert.as_deref(),
            key: self.client_key.as_deref(),
            keys: Self::KEYS,
        }
    }
}

impl fmt::Debug for MqttBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttBroker")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for MqttBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls.is_some() { "ssl" } else { "tcp" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// `bindings.mqtt`/`mqtt3` and `pubsub.mqtt`/`mqtt3`: an MQTT 3.1.1 subscription at QoS 1,
/// each message acknowledged only after the function took it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MqttSource {
    pub broker: MqttBroker,
    /// The MQTT client id: Dapr's `consumerID` (or the app-id) plus `-consumer`.
    pub client_id: String,
    /// Topic filters (`+`, `#` and `$share/<group>/` allowed).
    pub topics: Vec<String>,
    /// `false` (Dapr 1.11's default): the broker keeps the session, so what arrives while
    /// no replica is connected is delivered after a restart.
    pub clean_session: bool,
}

/// `bindings.cron`: a tick on every occurrence of `schedule` (robfig/cron syntax, checked
/// when compiled).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CronSource {
    pub schedule: String,
    /// How long a tick waits for a function with no ready endpoint before it counts as
    /// missed: the Function's `fngate.io/hold-timeout`, else `activator.hold_timeout`.
    #[serde(with = "opt_secs")]
    pub hold_timeout: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSource {
    pub brokers: String,
    pub topics: Vec<String>,
    pub consumer_group: String,
    pub initial_offset: InitialOffset,
    pub auth: KafkaAuth,
    pub max_message_bytes: Option<u32>,
    pub client_id: Option<String>,
    /// fngate's `events.kafka_fetch_wait` setting (librdkafka `fetch.wait.max.ms`).
    #[serde(with = "secs")]
    pub fetch_wait: Duration,
    /// Static group membership (KIP-345, `group.instance.id`): this replica's stable
    /// identity plus the trigger, so a restarted replica takes its partitions back at once.
    pub group_instance_id: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialOffset {
    Newest,
    Oldest,
}

#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum KafkaAuth {
    None,
    Sasl {
        /// librdkafka's name: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512.
        mechanism: String,
        username: String,
        #[serde(skip)]
        password: String,
    },
}

impl KafkaAuth {
    /// The librdkafka settings for this authentication (consumers and producers alike).
    pub fn client_settings(&self) -> Vec<(&'static str, &str)> {
        match self {
            KafkaAuth::None => Vec::new(),
            KafkaAuth::Sasl {
                mechanism,
                username,
                password,
            } => vec![
                ("security.protocol", "SASL_PLAINTEXT"),
                ("sasl.mechanism", mechanism),
                ("sasl.username", username),
                ("sasl.password", password),
            ],
        }
    }
}

impl fmt::Debug for KafkaAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KafkaAuth::None => f.write_str("None"),
            KafkaAuth::Sasl {
                mechanism,
                username,
                ..
            } => write!(f, "Sasl({mechanism}, {username})"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JetstreamSource {
    pub nats_url: String,
    /// The stream holding the subject; found by subject when not named.
    pub stream_name: Option<String>,
    pub subject: String,
    /// Durable consumer shared by every fngate replica, so a restart resumes.
    pub durable_name: String,
    pub deliver_policy: DeliverPolicy,
    #[serde(with = "opt_secs")]
    pub ack_wait: Option<Duration>,
    pub max_deliver: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "policy", content = "start", rename_all = "lowercase")]
pub enum DeliverPolicy {
    All,
    Last,
    New,
    Sequence(u64),
    /// RFC 3339 start time.
    Time(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    Grpc,
    Http,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySpec {
    pub protocol: AppProtocol,
    pub port: u16,
    /// The Service whose ready endpoints receive the events.
    pub service: ServiceKey,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryPolicy {
    /// Events in flight per partition (Kafka) or per consumer (JetStream); 1 keeps order.
    pub concurrency: usize,
    #[serde(with = "secs")]
    pub retry_initial: Duration,
    #[serde(with = "secs")]
    pub retry_max: Duration,
    /// Attempts before the dead-letter topic; `None`: retry until it succeeds.
    pub max_attempts: Option<u32>,
    /// Retries of an event the function failed before it is dropped when there is no
    /// dead-letter topic (MQTT's `backOffMaxRetries`); `None`: retry until it succeeds.
    pub max_retries: Option<u32>,
    /// `dapr.io/app-max-concurrency`: deliveries in flight to the function across all its
    /// triggers; more wait. `None`: no limit.
    pub app_max_concurrency: Option<u32>,
    pub dead_letter_topic: Option<String>,
}

/// Every trigger of a plan.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TriggerSet {
    pub triggers: BTreeMap<TriggerKey, Arc<TriggerSpec>>,
}

/// What changed between two trigger sets.
#[derive(Debug, Default, PartialEq)]
pub struct TriggerDiff {
    pub add: Vec<TriggerKey>,
    pub change: Vec<TriggerKey>,
    pub remove: Vec<TriggerKey>,
}

impl TriggerSet {
    pub fn diff(&self, next: &TriggerSet) -> TriggerDiff {
        let mut d = TriggerDiff::default();
        for (key, spec) in &next.triggers {
            match self.triggers.get(key) {
                None => d.add.push(key.clone()),
                Some(old) if old != spec => d.change.push(key.clone()),
                Some(_) => {}
            }
        }
        for key in self.triggers.keys() {
            if !next.triggers.contains_key(key) {
                d.remove.push(key.clone());
            }
        }
        d
    }

    pub fn len(&self) -> usize {
        self.triggers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.triggers.is_empty()
    }
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

mod opt_secs {
    pub fn serialize<S: serde::Serializer>(
        d: &Option<std::time::Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}

impl TriggerSpec {
    /// Where an HTTP app gets this binding's events, without the leading `/`.
    pub fn binding_path(&self) -> &str {
        match &self.route {
            Some(r) => r.trim_start_matches('/'),
            None => &self.component,
        }
    }

    /// JetStream's `maxDeliver`, when it limits redeliveries.
    pub fn source_max_deliver(&self) -> Option<i64> {
        match &self.source {
            SourceSpec::Jetstream(j) => j.max_deliver.filter(|m| *m > 0),
            SourceSpec::Kafka(_) | SourceSpec::Cron(_) | SourceSpec::Mqtt(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(topic: &str) -> TriggerKey {
        TriggerKey {
            namespace: "ns".into(),
            function: "f".into(),
            component: "c".into(),
            topic: topic.into(),
        }
    }

    fn spec(concurrency: usize) -> Arc<TriggerSpec> {
        Arc::new(TriggerSpec {
            app_id: "f-ns".into(),
            component: "c".into(),
            kind: TriggerKind::PubSub,
            source: SourceSpec::Jetstream(JetstreamSource {
                nats_url: "nats://n".into(),
                stream_name: None,
                subject: "s".into(),
                durable_name: "d".into(),
                deliver_policy: DeliverPolicy::All,
                ack_wait: None,
                max_deliver: None,
            }),
            delivery: DeliverySpec {
                protocol: AppProtocol::Grpc,
                port: 8080,
                service: ServiceKey {
                    namespace: "ns".into(),
                    name: "f".into(),
                },
            },
            policy: DeliveryPolicy {
                concurrency,
                retry_initial: Duration::from_millis(100),
                retry_max: Duration::from_secs(1),
                max_attempts: None,
                max_retries: None,
                app_max_concurrency: None,
                dead_letter_topic: None,
            },
            route: None,
        })
    }

    #[test]
    fn diff_names_only_what_was_added_changed_or_removed() {
        let old = TriggerSet {
            triggers: [
                (key("a"), spec(1)),
                (key("b"), spec(1)),
                (key("c"), spec(1)),
            ]
            .into(),
        };
        let new = TriggerSet {
            triggers: [
                (key("a"), spec(1)),
                (key("b"), spec(4)),
                (key("d"), spec(1)),
            ]
            .into(),
        };
        let d = old.diff(&new);
        assert_eq!(d.add, [key("d")]);
        assert_eq!(d.change, [key("b")]);
        assert_eq!(d.remove, [key("c")]);
        assert_eq!(new.diff(&new), TriggerDiff::default());
    }
}
