//! Dapr-triggered Functions -> `TriggerSet`: the component each trigger names (inline, or a
//! Component object in the Function's namespace), its scopes, its metadata with secrets
//! resolved, and the delivery target. Every problem names the object and the key.

use super::{CompileSettings, Snapshot};
use crate::api::{
    Component, ComponentSpec, DaprTrigger, Diagnostic, Function, MetadataItem, ObjectKey,
    ObjectKind, ParsedObject, Secret,
};
use crate::plan::TopicAcl;
use crate::plan::{
    AppProtocol, CronSource, DeliverPolicy, DeliveryPolicy, DeliverySpec, InitialOffset,
    JetstreamSource, KafkaAuth, KafkaSource, MqttBroker, MqttSource, MqttTls, ServiceKey,
    SourceSpec, TriggerKey, TriggerKind, TriggerSet, TriggerSpec,
};
use base64::Engine as _;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Function annotation: events in flight per partition/consumer (1 keeps order).
pub const CONCURRENCY_ANNOTATION: &str = "fngate.io/concurrency";
/// Function annotation: delivery attempts before an event goes to the dead-letter topic.
pub const MAX_ATTEMPTS_ANNOTATION: &str = "fngate.io/max-attempts";
const APP_PROTOCOL_ANNOTATION: &str = "dapr.io/app-protocol";
const APP_PORT_ANNOTATION: &str = "dapr.io/app-port";
/// Deliveries in flight to the function across all its triggers (Dapr: `-1`, no limit).
const APP_MAX_CONCURRENCY_ANNOTATION: &str = "dapr.io/app-max-concurrency";
/// Events in flight per consumer when JetStream's `concurrency: parallel` asks for more.
const PARALLEL_CONCURRENCY: usize = 64;

/// Defaults for event delivery, from fngate's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct EventDefaults {
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub max_attempts: u32,
    /// Kafka fetch.wait.max.ms: how long a broker may hold a fetch when no data is there.
    pub kafka_fetch_wait: Duration,
    /// This replica's stable identity for Kafka static membership (`events.kafka_instance_id`,
    /// else `POD_NAME`); `None`: dynamic membership.
    pub kafka_instance_id: Option<String>,
}

impl Default for EventDefaults {
    fn default() -> Self {
        EventDefaults {
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            max_attempts: 5,
            kafka_fetch_wait: Duration::from_millis(100),
            kafka_instance_id: None,
        }
    }
}

/// Where the problems of one trigger (or Dapr API component) are reported.
pub(super) struct Report<'a> {
    pub(super) diagnostics: &'a mut Vec<Diagnostic>,
    pub(super) function_label: String,
    pub(super) function_file: Option<&'a Arc<str>>,
    pub(super) failed: bool,
}

impl Report<'_> {
    pub(super) fn on_function(&mut self, d: Diagnostic) {
        self.failed |= d.is_error();
        self.diagnostics.push(
            d.on_object(self.function_label.clone())
                .in_file(self.function_file.map(|f| &**f)),
        );
    }
    pub(super) fn on(&mut self, origin: &Origin, d: Diagnostic) {
        self.failed |= d.is_error();
        self.diagnostics.push(
            d.on_object(origin.label.clone())
                .in_file(origin.file.as_deref()),
        );
    }
}

/// The object a component came from, for diagnostics.
pub(super) struct Origin {
    pub(super) label: String,
    pub(super) file: Option<Arc<str>>,
    /// Field path of the component spec's `metadata` list inside that object.
    pub(super) metadata_field: String,
}

pub(super) fn build(
    snapshot: &Snapshot,
    settings: &CompileSettings,
    previous: Option<&TriggerSet>,
    diagnostics: &mut Vec<Diagnostic>,
) -> TriggerSet {
    let mut set = TriggerSet::default();
    for (key, entry, function) in snapshot.functions() {
        let Some(triggers) = function
            .spec
            .serving
            .as_ref()
            .and_then(|s| s.triggers.as_ref())
            .and_then(|t| t.dapr.as_ref())
        else {
            continue;
        };
        let mut report = Report {
            diagnostics: &mut *diagnostics,
            function_label: key.to_string(),
            function_file: entry.file.as_ref(),
            failed: false,
        };
        let delivery = delivery_spec(function, &mut report);
        let policy = delivery_policy(function, &settings.events, &mut report);
        for (i, trigger) in triggers.iter().enumerate() {
            report.failed = false;
            let compiled = match (&delivery, &policy) {
                (Some(d), Some(p)) => compile_trigger(
                    snapshot,
                    function,
                    i,
                    trigger,
                    d,
                    p,
                    &settings.events,
                    &mut report,
                ),
                _ => Vec::new(),
            };
            if report.failed || delivery.is_none() || policy.is_none() {
                keep_last_good(previous, key, &trigger.name, &mut set, &mut report);
            } else {
                for (k, spec) in compiled {
                    if let Some(other) = same_mqtt_client(&set, &spec) {
                        report.on_function(Diagnostic::warning(format!(
                            "trigger {k} and trigger {other} connect to the same MQTT broker with one client id; the broker keeps one connection per client id, so they would keep taking it from each other: give them different consumerIDs (or '{{uuid}}')"
                        )));
                    }
                    set.triggers.insert(k, Arc::new(spec));
                }
            }
        }
    }
    set
}

/// Another trigger already in `set` whose MQTT client would be `spec`'s.
fn same_mqtt_client<'a>(set: &'a TriggerSet, spec: &TriggerSpec) -> Option<&'a TriggerKey> {
    let SourceSpec::Mqtt(mine) = &spec.source else {
        return None;
    };
    set.triggers.iter().find_map(|(k, s)| match &s.source {
        SourceSpec::Mqtt(m)
            if m.client_id == mine.client_id
                && m.broker.host == mine.broker.host
                && m.broker.port == mine.broker.port =>
        {
            Some(k)
        }
        _ => None,
    })
}

fn keep_last_good(
    previous: Option<&TriggerSet>,
    function: &ObjectKey,
    component: &str,
    set: &mut TriggerSet,
    report: &mut Report<'_>,
) {
    let Some(previous) = previous else { return };
    let mut kept = false;
    for (k, spec) in &previous.triggers {
        if k.namespace == function.namespace
            && k.function == function.name
            && k.component == component
        {
            set.triggers.insert(k.clone(), spec.clone());
            kept = true;
        }
    }
    if kept {
        report.on_function(Diagnostic::warning(format!(
            "trigger {component:?} rejected; still running its last good version"
        )));
    }
}

fn delivery_spec(function: &Function, report: &mut Report<'_>) -> Option<DeliverySpec> {
    app_channel(function)
        .map_err(|d| report.on_function(d))
        .ok()
}

/// How fngate reaches a function's app, as Dapr's app channel: protocol and port from the
/// `dapr.io/app-*` annotations; without one, gRPC for a function with Dapr triggers
/// (OpenFunction's async functions) and HTTP for the others, on the HTTP trigger's port.
pub(super) fn app_channel(function: &Function) -> Result<DeliverySpec, Diagnostic> {
    let serving = function.spec.serving.as_ref();
    let annotations = serving.map(|s| &s.annotations);
    let get = |k: &str| annotations.and_then(|a| a.get(k)).map(String::as_str);
    let has_dapr_triggers = serving.and_then(|s| s.triggers.as_ref()).is_some_and(|t| {
        t.dapr.as_ref().is_some_and(|d| !d.is_empty())
            || t.inputs.as_ref().is_some_and(|i| !i.is_empty())
    });
    let default_protocol = if has_dapr_triggers || function.http_trigger().is_none() {
        "grpc"
    } else {
        "http"
    };
    let protocol = match get(APP_PROTOCOL_ANNOTATION).unwrap_or(default_protocol) {
        "grpc" => AppProtocol::Grpc,
        "http" => AppProtocol::Http,
        other => {
            return Err(Diagnostic::error(format!(
                "app protocol {other:?} is not supported; expected grpc or http"
            ))
            .at_field(format!(
                "spec.serving.annotations[{APP_PROTOCOL_ANNOTATION}]"
            )));
        }
    };
    let port = match get(APP_PORT_ANNOTATION) {
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err(Diagnostic::error(format!(
                    "app port {p:?} is not a number from 1 to 65535"
                ))
                .at_field(format!("spec.serving.annotations[{APP_PORT_ANNOTATION}]")));
            }
        },
        None => function
            .http_trigger()
            .and_then(|h| h.port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
            .unwrap_or(8080),
    };
    Ok(DeliverySpec {
        protocol,
        port,
        service: ServiceKey {
            namespace: function.metadata.namespace_or_default().to_owned(),
            name: function.service_name().to_owned(),
        },
    })
}

fn delivery_policy(
    function: &Function,
    defaults: &EventDefaults,
    report: &mut Report<'_>,
) -> Option<DeliveryPolicy> {
    let annotations = &function.metadata.annotations;
    let number = |key: &str, report: &mut Report<'_>| -> Result<Option<u32>, ()> {
        match annotations.get(key) {
            None => Ok(None),
            Some(v) => match v.parse::<u32>() {
                Ok(n) if n > 0 => Ok(Some(n)),
                _ => {
                    report.on_function(
                        Diagnostic::error(format!("{v:?} is not a positive whole number"))
                            .at_field(format!("metadata.annotations[{key}]")),
                    );
                    Err(())
                }
            },
        }
    };
    let concurrency = number(CONCURRENCY_ANNOTATION, report).ok()?;
    let max_attempts = number(MAX_ATTEMPTS_ANNOTATION, report).ok()?;
    let app_max_concurrency = match function
        .spec
        .serving
        .as_ref()
        .and_then(|s| s.annotations.get(APP_MAX_CONCURRENCY_ANNOTATION))
    {
        None => None,
        Some(v) => match v.trim().parse::<i64>() {
            Ok(n) if n > 0 => Some(u32::try_from(n).unwrap_or(u32::MAX)),
            // Dapr's default is -1; it reads 0 as no limit too.
            Ok(-1 | 0) => None,
            _ => {
                report.on_function(
                    Diagnostic::error(format!(
                        "{v:?} is not a positive whole number (or -1: no limit)"
                    ))
                    .at_field(format!(
                        "spec.serving.annotations[{APP_MAX_CONCURRENCY_ANNOTATION}]"
                    )),
                );
                return None;
            }
        },
    };
    Some(DeliveryPolicy {
        concurrency: concurrency.unwrap_or(1) as usize,
        retry_initial: defaults.retry_initial,
        retry_max: defaults.retry_max,
        max_attempts: Some(max_attempts.unwrap_or(defaults.max_attempts)),
        max_retries: None,
        app_max_concurrency,
        dead_letter_topic: None,
    })
}

/// The component a trigger names: inline in the Function first, then a Component object.
fn find_component<'a>(
    snapshot: &'a Snapshot,
    function: &'a Function,
    name: &str,
) -> Option<(&'a ComponentSpec, Origin, Option<&'a Component>)> {
    let serving = function.spec.serving.as_ref()?;
    let label = || {
        format!(
            "Function {}/{}",
            function.metadata.namespace_or_default(),
            function.metadata.name
        )
    };
    for (field, map) in [("bindings", &serving.bindings), ("pubsub", &serving.pubsub)] {
        if let Some(spec) = map.as_ref().and_then(|m| m.get(name)) {
            let origin = Origin {
                label: label(),
                file: None,
                metadata_field: format!("spec.serving.{field}.{name}.metadata"),
            };
            return Some((spec, origin, None));
        }
    }
    let key = ObjectKey::new(
        ObjectKind::Component,
        function.metadata.namespace_or_default(),
        name,
    );
    let entry = snapshot.objects.get(&key)?;
    let ParsedObject::Component(component) = &*entry.object else {
        return None;
    };
    let origin = Origin {
        label: key.to_string(),
        file: entry.file.clone(),
        metadata_field: "spec.metadata".into(),
    };
    Some((&component.spec, origin, Some(component)))
}

#[allow(clippy::too_many_arguments)]
fn compile_trigger(
    snapshot: &Snapshot,
    function: &Function,
    index: usize,
    trigger: &DaprTrigger,
    delivery: &DeliverySpec,
    policy: &DeliveryPolicy,
    defaults: &EventDefaults,
    report: &mut Report<'_>,
) -> Vec<(TriggerKey, TriggerSpec)> {
    let field = format!("spec.serving.triggers.dapr[{index}]");
    let namespace = function.metadata.namespace_or_default();
    let app_id = format!("{}-{}", function.metadata.name, namespace);
    let Some((spec, mut origin, object)) = find_component(snapshot, function, &trigger.name) else {
        // Not an error in the Function: the Component may simply not have arrived yet.
        report.on_function(
            Diagnostic::warning(format!(
                "no component named {:?} (neither in spec.serving.bindings/pubsub nor a Component in namespace {namespace}); trigger not started",
                trigger.name
            ))
            .at_field(format!("{field}.name")),
        );
        return Vec::new();
    };
    if origin.file.is_none() {
        origin.file = report.function_file.cloned();
    }
    if let Some(component) = object {
        if !component.scopes.is_empty() && !component.scopes.contains(&app_id) {
            report.on_function(
                Diagnostic::error(format!(
                    "component {:?} is scoped to {:?}; app-id {app_id:?} may not use it",
                    trigger.name, component.scopes
                ))
                .at_field(format!("{field}.name")),
            );
            return Vec::new();
        }
    }
    let kind_name = match trigger.kind.as_deref().filter(|k| !k.is_empty()) {
        Some(t) if t != spec.kind => {
            // Dapr runs the component's type; OpenFunction uses the trigger's only for KEDA.
            report.on_function(
                Diagnostic::warning(format!(
                    "trigger type {t:?} differs from the component's type {:?}; using the component's",
                    spec.kind
                ))
                .at_field(format!("{field}.type")),
            );
            spec.kind.as_str()
        }
        _ => spec.kind.as_str(),
    };
    let metadata = resolve_metadata(snapshot, namespace, &spec.metadata, &origin, report);
    if report.failed {
        return Vec::new();
    }
    let mut meta = Metadata {
        values: metadata,
        used: Default::default(),
        origin: &origin,
    };
    let mut policy = policy.clone();
    let topic = trigger.topic.clone().filter(|t| !t.is_empty());
    let result = match kind_name {
        "bindings.kafka" => {
            kafka(&mut meta, &app_id, TriggerKind::Binding, report, defaults).map(|k| {
                let topic = k.topics.join(",");
                (TriggerKind::Binding, SourceSpec::Kafka(k), topic)
            })
        }
        "bindings.mqtt" | "bindings.mqtt3" => mqtt(
            &mut meta,
            &app_id,
            &format!("{app_id}/{}", trigger.name),
            None,
            &mut policy,
            report,
        )
        .map(|m| {
            let topic = m.topics.join(",");
            (TriggerKind::Binding, SourceSpec::Mqtt(m), topic)
        }),
        "pubsub.kafka" | "pubsub.jetstream" | "pubsub.mqtt" | "pubsub.mqtt3" => {
            let Some(topic) = topic else {
                report.on_function(
                    Diagnostic::error("a pub/sub trigger needs a topic")
                        .at_field(format!("{field}.topic")),
                );
                return Vec::new();
            };
            let source = match kind_name {
                "pubsub.kafka" => kafka(&mut meta, &app_id, TriggerKind::PubSub, report, defaults)
                    .map(|mut k| {
                        k.topics = vec![topic.clone()];
                        SourceSpec::Kafka(k)
                    }),
                "pubsub.jetstream" => jetstream(&mut meta, &app_id, &topic, &mut policy, report)
                    .map(SourceSpec::Jetstream),
                _ => mqtt(
                    &mut meta,
                    &app_id,
                    &format!("{app_id}/{}/{topic}", trigger.name),
                    Some(&topic),
                    &mut policy,
                    report,
                )
                .map(SourceSpec::Mqtt),
            };
            source.map(|s| (TriggerKind::PubSub, s, topic))
        }
        "bindings.cron" => cron(&mut meta, function, report)
            .map(|c| (TriggerKind::Binding, SourceSpec::Cron(c.0), c.1)),
        other => {
            // A valid Dapr component fngate does not consume (cron, MQTT...): reported,
            // not an error, so the rest of the Function still serves.
            report.on(
                &origin,
                Diagnostic::warning(format!(
                    "component type {other:?} is not run by fngate; it reads bindings.kafka, bindings.cron, bindings.mqtt, pubsub.kafka, pubsub.jetstream and pubsub.mqtt"
                ))
                .at_field(if object.is_some() { "spec.type".to_owned() } else { origin.metadata_field.replace(".metadata", ".type") }),
            );
            None
        }
    };
    policy.dead_letter_topic = meta.take("deadLetterTopic");
    // daprd reads `route` on every input binding.
    let route = if kind_name.starts_with("bindings.") {
        meta.take("route")
    } else {
        None
    };
    let acl = if kind_name.starts_with("pubsub.") {
        topic_acl(&mut meta)
    } else {
        TopicAcl::default()
    };
    meta.warn_unused(report);
    let Some((kind, mut source, topic)) = result else {
        return Vec::new();
    };
    if kind == TriggerKind::PubSub && !acl.may_subscribe(&app_id, &topic) {
        // daprd skips such a subscription with a warning.
        report.on_function(
            Diagnostic::warning(format!(
                "topic {topic:?} of pub/sub {} is not allowed for app id {app_id} (its allowedTopics, protectedTopics or subscriptionScopes); not subscribed",
                trigger.name
            ))
            .at_field(format!("{field}.topic")),
        );
        return Vec::new();
    }
    if report.failed {
        return Vec::new();
    }
    let key = TriggerKey {
        namespace: namespace.to_owned(),
        function: function.metadata.name.clone(),
        component: trigger.name.clone(),
        topic,
    };
    if let (SourceSpec::Kafka(k), Some(instance)) = (&mut source, &defaults.kafka_instance_id) {
        k.group_instance_id = Some(group_instance_id(instance, &key));
    }
    vec![(
        key,
        TriggerSpec {
            app_id,
            component: trigger.name.clone(),
            kind,
            source,
            delivery: delivery.clone(),
            policy,
            route,
        },
    )]
}

/// An MQTT component's broker: `url` (`tcp://` or, with TLS, `ssl://`, Dapr's aliases
/// `mqtt://`, `tls://`, `mqtts://`, `tcps://`; `user:password@` allowed) and for TLS
/// `caCert`, `clientCert`, `clientKey` (PEM), checked here by building the TLS client.
pub(super) fn mqtt_broker(meta: &mut Metadata<'_>, report: &mut Report<'_>) -> Option<MqttBroker> {
    let url = meta.take("url");
    let ca_cert = meta.take("caCert");
    let client_cert = meta.take("clientCert");
    let client_key = meta.take("clientKey");
    let Some(url) = url else {
        meta.error("url", "url is required (tcp://host:1883)".into(), report);
        return None;
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        meta.error(
            "url",
            format!("{url:?} is not an MQTT URL (tcp://[user:password@]host:port)"),
            report,
        );
        return None;
    };
    let tls = match scheme {
        "tcp" | "mqtt" => false,
        "ssl" | "tls" | "mqtts" | "tcps" => true,
        _ => {
            meta.error(
                "url",
                format!("{url:?}: scheme {scheme:?} is not tcp:// or ssl://"),
                report,
            );
            return None;
        }
    };
    let rest = rest.trim_end_matches('/');
    let (credentials, address) = match rest.rsplit_once('@') {
        Some((c, a)) => (Some(c), a),
        None => (None, rest),
    };
    let (username, password) = match credentials {
        Some(c) => match c.split_once(':') {
            Some((u, p)) => (Some(u.to_owned()), Some(p.to_owned())),
            None => (Some(c.to_owned()), None),
        },
        None => (None, None),
    };
    let (host, port) = match address.rsplit_once(':') {
        Some((h, p)) => match p.parse::<u16>() {
            Ok(p) => (h.to_owned(), p),
            Err(_) => {
                meta.error("url", format!("{url:?}: {p:?} is not a port"), report);
                return None;
            }
        },
        None => (address.to_owned(), if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() {
        meta.error("url", format!("{url:?} names no host"), report);
        return None;
    }
    let [ca_cert, client_cert, client_key] = client_tls_pems(
        meta,
        MqttTls::KEYS,
        [ca_cert, client_cert, client_key],
        (tls, "ssl://"),
        &url,
        report,
    )
    .ok()?;
    let tls = tls.then_some(MqttTls {
        ca_cert,
        client_cert,
        client_key,
    });
    Some(MqttBroker {
        host,
        port,
        username,
        password,
        tls,
    })
}

/// The client TLS PEMs a component gives under `keys` (CA, client certificate, client
/// key). When `url` uses TLS they are checked by building the client, an error naming the
/// key at fault; otherwise each one given is reported as unused (TLS needs a
/// `tls_scheme` url). `Err`: reported.
pub(super) fn client_tls_pems(
    meta: &Metadata<'_>,
    keys: [&'static str; 3],
    values: [Option<String>; 3],
    (tls, tls_scheme): (bool, &str),
    url: &str,
    report: &mut Report<'_>,
) -> Result<[Option<String>; 3], ()> {
    if !tls {
        for (key, value) in keys.iter().zip(&values) {
            if value.is_some() {
                report.on(
                    meta.origin,
                    Diagnostic::warning(format!(
                        "{key} is used only with an {tls_scheme} url; {url:?} connects without TLS"
                    ))
                    .at_field(meta.field(key)),
                );
            }
        }
        return Ok(values);
    }
    let [ca, cert, key] = &values;
    let pems = crate::client_tls::ClientPems {
        ca: ca.as_deref(),
        cert: cert.as_deref(),
        key: key.as_deref(),
        keys,
    };
    if let Err((key, e)) = crate::client_tls::client_config(&pems) {
        meta.error(key, e, report);
        return Err(());
    }
    Ok(values)
}

/// An MQTT component's `consumerID`, `{uuid}` replaced by an id fixed for the process and
/// `scope` (daprd: once per process, and a daprd serves one app).
pub(super) fn mqtt_consumer_id(meta: &mut Metadata<'_>, scope: &str) -> Option<String> {
    meta.take("consumerID").map(|c| {
        if c.contains("{uuid}") {
            c.replace("{uuid}", &crate::triggers::process_uuid_for(scope))
        } else {
            c
        }
    })
}

/// An MQTT input as Dapr 1.11's mqtt3 reads it: `url` (`tcp://[user:password@]host:port`),
/// `topic` (bindings; a pub/sub takes the trigger's), `consumerID`, `cleanSession`; `qos`
/// is read and ignored (mqtt3 always uses 1), `retain` is for
/// outputs.
fn mqtt(
    meta: &mut Metadata<'_>,
    app_id: &str,
    scope: &str,
    pubsub_topic: Option<&str>,
    policy: &mut DeliveryPolicy,
    report: &mut Report<'_>,
) -> Option<MqttSource> {
    // Every key is read before giving up, so none is reported as unused.
    let broker = mqtt_broker(meta, report);
    let topics = match pubsub_topic {
        Some(t) => vec![t.to_owned()],
        None => match meta.take("topic") {
            Some(t) => t
                .split(',')
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect(),
            None => {
                meta.error(
                    "topic",
                    "an MQTT input binding needs a topic".into(),
                    report,
                );
                Vec::new()
            }
        },
    };
    let _ = meta.take("qos");
    let _ = meta.take("retain");
    let clean_session = meta
        .parse::<bool>("cleanSession", "true or false", report)
        .unwrap_or(false);
    let consumer = mqtt_consumer_id(meta, scope).unwrap_or_else(|| app_id.to_owned());
    // Dapr's mqtt3 gives up on a message after this many retries (negative: never). Left
    // out, fngate retries until the function takes it, where daprd would try once and
    // leave the message unacknowledged until the next connection.
    if let Some(n) = meta.parse::<i64>("backOffMaxRetries", "a whole number", report) {
        policy.max_retries = u32::try_from(n).ok();
    }
    if topics.is_empty() {
        return None;
    }
    Some(MqttSource {
        broker: broker?,
        client_id: format!("{consumer}-consumer"),
        topics,
        clean_session,
    })
}

/// `bindings.cron`: its schedule, checked as daprd's parser would; the trigger's key
/// topic is the schedule.
fn cron(
    meta: &mut Metadata<'_>,
    function: &Function,
    report: &mut Report<'_>,
) -> Option<(CronSource, String)> {
    let Some(schedule) = meta.take("schedule") else {
        meta.error("schedule", "bindings.cron needs a schedule".into(), report);
        return None;
    };
    if let Err(e) = crate::triggers::parse_schedule(&schedule) {
        meta.error(
            "schedule",
            format!("invalid schedule {schedule:?}: {e}"),
            report,
        );
        return None;
    }
    // A bad annotation is reported by the route compile; here it just falls back.
    let hold_timeout = function
        .metadata
        .annotations
        .get(super::HOLD_TIMEOUT_ANNOTATION)
        .and_then(|v| crate::api::parse_duration(v).ok().flatten());
    Some((
        CronSource {
            schedule: schedule.clone(),
            hold_timeout,
        },
        schedule,
    ))
}

/// Unique per replica and per trigger (two triggers of one process may share a consumer
/// group), stable across restarts; Kafka allows 249 characters of `[A-Za-z0-9._-]`.
fn group_instance_id(instance: &str, key: &TriggerKey) -> String {
    let raw = format!(
        "{instance}.{}.{}.{}.{}",
        key.namespace, key.function, key.component, key.topic
    );
    let mut id = kafka_legal(&raw);
    if id.len() > 249 {
        // Keep it unique: a digest of the whole in place of the tail.
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(raw.as_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        id.truncate(249 - 17);
        id.push('-');
        id.push_str(&hex);
    }
    id
}

/// `s` with every character Kafka does not allow in an id (`[A-Za-z0-9._-]`) as `_`.
pub fn kafka_legal(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '_',
        })
        .collect()
}

/// A pub/sub's topic ACLs, its keys matched case-insensitively as daprd matches them.
pub(super) fn topic_acl(meta: &mut Metadata<'_>) -> TopicAcl {
    let mut get = |name: &str| {
        let key = meta
            .values
            .keys()
            .find(|k| k.eq_ignore_ascii_case(name))
            .cloned();
        key.and_then(|k| meta.take(&k))
    };
    TopicAcl {
        allowed: get("allowedTopics")
            .map(|v| TopicAcl::topics(&v))
            .unwrap_or_default(),
        protected: get("protectedTopics")
            .map(|v| TopicAcl::topics(&v))
            .unwrap_or_default(),
        publishing: get("publishingScopes")
            .map(|v| TopicAcl::scopes(&v))
            .unwrap_or_default(),
        subscription: get("subscriptionScopes")
            .map(|v| TopicAcl::scopes(&v))
            .unwrap_or_default(),
    }
}

/// Resolved metadata of one component, tracking which keys were read.
pub(super) struct Metadata<'a> {
    pub(super) values: BTreeMap<String, (usize, String)>,
    pub(super) used: std::collections::BTreeSet<String>,
    pub(super) origin: &'a Origin,
}

impl Metadata<'_> {
    pub(super) fn take(&mut self, key: &str) -> Option<String> {
        self.used.insert(key.to_owned());
        self.values
            .get(key)
            .map(|(_, v)| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }
    pub(super) fn field(&self, key: &str) -> String {
        match self.values.get(key) {
            Some((i, _)) => format!("{}[{i}] ({key})", self.origin.metadata_field),
            None => format!("{} ({key})", self.origin.metadata_field),
        }
    }
    pub(super) fn error(&self, key: &str, message: String, report: &mut Report<'_>) {
        report.on(
            self.origin,
            Diagnostic::error(message).at_field(self.field(key)),
        );
    }
    pub(super) fn parse<T: std::str::FromStr>(
        &mut self,
        key: &str,
        what: &str,
        report: &mut Report<'_>,
    ) -> Option<T> {
        let v = self.take(key)?;
        match v.parse::<T>() {
            Ok(n) => Some(n),
            Err(_) => {
                self.error(key, format!("{v:?} is not {what}"), report);
                None
            }
        }
    }
    pub(super) fn duration(&mut self, key: &str, report: &mut Report<'_>) -> Option<Duration> {
        let v = self.take(key)?;
        match crate::api::parse_duration(&v) {
            Ok(d) => d,
            Err(_) => {
                self.error(
                    key,
                    format!("{v:?} is not a duration such as 30s or 500ms"),
                    report,
                );
                None
            }
        }
    }
    fn warn_unused(&self, report: &mut Report<'_>) {
        for key in self.values.keys() {
            if !self.used.contains(key) {
                report.on(
                    self.origin,
                    Diagnostic::warning("metadata key not used by fngate")
                        .at_field(self.field(key)),
                );
            }
        }
    }
}

pub(super) fn resolve_metadata(
    snapshot: &Snapshot,
    namespace: &str,
    items: &[MetadataItem],
    origin: &Origin,
    report: &mut Report<'_>,
) -> BTreeMap<String, (usize, String)> {
    let mut out = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let field = format!("{}[{i}]", origin.metadata_field);
        let value = match (&item.value, &item.secret_key_ref) {
            (_, Some(r)) => {
                let key = r
                    .key
                    .as_deref()
                    .filter(|k| !k.is_empty())
                    .unwrap_or(&r.name);
                match secret_value(snapshot, namespace, &r.name, key) {
                    Ok(v) => v,
                    Err(message) => {
                        report.on(
                            origin,
                            Diagnostic::error(message).at_field(format!("{field}.secretKeyRef")),
                        );
                        continue;
                    }
                }
            }
            (Some(v), None) => match v {
                serde_yaml::Value::String(s) => s.clone(),
                serde_yaml::Value::Bool(b) => b.to_string(),
                serde_yaml::Value::Number(n) => n.to_string(),
                serde_yaml::Value::Null => String::new(),
                _ => {
                    report.on(
                        origin,
                        Diagnostic::error(format!(
                            "value of {:?} must be a string, number or boolean",
                            item.name
                        ))
                        .at_field(format!("{field}.value")),
                    );
                    continue;
                }
            },
            (None, None) => String::new(),
        };
        out.insert(item.name.clone(), (i, value));
    }
    out
}

pub(super) fn secret_value(
    snapshot: &Snapshot,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<String, String> {
    let entry = snapshot
        .objects
        .get(&ObjectKey::new(ObjectKind::Secret, namespace, name))
        .ok_or_else(|| format!("Secret {namespace}/{name} not found"))?;
    let ParsedObject::Secret(secret) = &*entry.object else {
        return Err(format!("Secret {namespace}/{name} not found"));
    };
    secret_key(secret, key)
        .ok_or_else(|| format!("Secret {namespace}/{name} has no key {key:?}"))?
}

fn secret_key(secret: &Secret, key: &str) -> Option<Result<String, String>> {
    if let Some(v) = secret.string_data.get(key) {
        return Some(Ok(v.clone()));
    }
    let encoded = secret.data.get(key)?;
    Some(
        base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                format!(
                    "key {key:?} of Secret {} is not base64-encoded UTF-8",
                    secret.metadata.name
                )
            }),
    )
}

/// `brokers` of a Kafka component (required), shared by consumers and producers.
pub(super) fn kafka_brokers(meta: &mut Metadata<'_>, report: &mut Report<'_>) -> Option<String> {
    let brokers = meta.take("brokers");
    if brokers.is_none() {
        meta.error(
            "brokers",
            "brokers is required (host:port, comma-separated)".into(),
            report,
        );
    }
    brokers
}

/// SASL settings of a Kafka component, shared by consumers and producers.
pub(super) fn kafka_auth(meta: &mut Metadata<'_>, report: &mut Report<'_>) -> KafkaAuth {
    let auth_required = meta.parse::<bool>("authRequired", "true or false", report);
    let auth_type = meta.take("authType");
    match (auth_type.as_deref(), auth_required) {
        (Some("none"), _) | (None, None | Some(false)) => KafkaAuth::None,
        (Some("password"), _) | (None, Some(true)) => {
            let mechanism = match meta.take("saslMechanism").as_deref() {
                None | Some("PLAINTEXT") | Some("PLAIN") => "PLAIN",
                Some("SHA-256") | Some("SCRAM-SHA-256") => "SCRAM-SHA-256",
                Some("SHA-512") | Some("SCRAM-SHA-512") => "SCRAM-SHA-512",
                Some(other) => {
                    meta.error(
                        "saslMechanism",
                        format!("{other:?} is not PLAINTEXT, SHA-256 or SHA-512"),
                        report,
                    );
                    "PLAIN"
                }
            };
            let username = meta.take("saslUsername");
            let password = meta.take("saslPassword");
            if username.is_none() {
                meta.error(
                    "saslUsername",
                    "SASL authentication needs saslUsername".into(),
                    report,
                );
            }
            if password.is_none() {
                meta.error(
                    "saslPassword",
                    "SASL authentication needs saslPassword".into(),
                    report,
                );
            }
            KafkaAuth::Sasl {
                mechanism: mechanism.into(),
                username: username.unwrap_or_default(),
                password: password.unwrap_or_default(),
            }
        }
        (Some(other), _) => {
            meta.error(
                "authType",
                format!(
                    "authType {other:?} is not supported by fngate; use none or password (SASL)"
                ),
                report,
            );
            KafkaAuth::None
        }
    }
}

fn kafka(
    meta: &mut Metadata<'_>,
    app_id: &str,
    kind: TriggerKind,
    report: &mut Report<'_>,
    defaults: &EventDefaults,
) -> Option<KafkaSource> {
    let brokers = kafka_brokers(meta, report);
    let topics: Vec<String> = match kind {
        TriggerKind::Binding => {
            let t: Vec<String> = meta
                .take("topics")
                .map(|t| {
                    t.split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            if t.is_empty() {
                meta.error(
                    "topics",
                    "topics is required for an input binding (comma-separated)".into(),
                    report,
                );
            }
            t
        }
        TriggerKind::PubSub => Vec::new(),
    };
    let consumer_group = match (meta.take("consumerGroup"), meta.take("consumerID"), kind) {
        (Some(g), _, _) | (None, Some(g), _) => g,
        (None, None, TriggerKind::PubSub) => app_id.to_owned(),
        (None, None, TriggerKind::Binding) => {
            meta.error(
                "consumerGroup",
                "consumerGroup is required for an input binding".into(),
                report,
            );
            String::new()
        }
    };
    let initial_offset = match meta.take("initialOffset").as_deref() {
        None | Some("newest") => InitialOffset::Newest,
        Some("oldest") => InitialOffset::Oldest,
        Some(other) => {
            meta.error(
                "initialOffset",
                format!("{other:?} is not newest or oldest"),
                report,
            );
            InitialOffset::Newest
        }
    };
    let auth = kafka_auth(meta, report);
    let max_message_bytes = meta.parse::<u32>("maxMessageBytes", "a byte count", report);
    let client_id = meta.take("clientID").or_else(|| meta.take("clientId"));
    // Keys Dapr reads for output bindings or tuning that do not change consumption.
    for k in [
        "publishTopic",
        "direction",
        "version",
        "consumeRetryInterval",
        "consumeRetryEnabled",
    ] {
        meta.take(k);
    }
    Some(KafkaSource {
        brokers: brokers?,
        topics,
        consumer_group,
        initial_offset,
        auth,
        max_message_bytes,
        client_id,
        fetch_wait: defaults.kafka_fetch_wait,
        group_instance_id: None,
    })
}

fn jetstream(
    meta: &mut Metadata<'_>,
    app_id: &str,
    subject: &str,
    policy: &mut DeliveryPolicy,
    report: &mut Report<'_>,
) -> Option<JetstreamSource> {
    let nats_url = meta.take("natsURL");
    if nats_url.is_none() {
        meta.error(
            "natsURL",
            "natsURL is required (nats://host:port)".into(),
            report,
        );
    }
    let deliver_policy = match meta.take("deliverPolicy").as_deref() {
        None | Some("all") => DeliverPolicy::All,
        Some("last") => DeliverPolicy::Last,
        Some("new") => DeliverPolicy::New,
        Some("sequence") => match meta.parse::<u64>("startSequence", "a sequence number", report) {
            Some(n) => DeliverPolicy::Sequence(n),
            None => {
                meta.error(
                    "startSequence",
                    "deliverPolicy sequence needs startSequence".into(),
                    report,
                );
                DeliverPolicy::All
            }
        },
        Some("time") => match meta.take("startTime") {
            Some(t) => DeliverPolicy::Time(t),
            None => {
                meta.error(
                    "startTime",
                    "deliverPolicy time needs startTime (RFC 3339)".into(),
                    report,
                );
                DeliverPolicy::All
            }
        },
        Some(other) => {
            meta.error(
                "deliverPolicy",
                format!("{other:?} is not all, last, new, sequence or time"),
                report,
            );
            DeliverPolicy::All
        }
    };
    meta.take("startSequence");
    meta.take("startTime");
    match meta.take("concurrency").as_deref() {
        None | Some("single") => {}
        Some("parallel") => policy.concurrency = policy.concurrency.max(PARALLEL_CONCURRENCY),
        Some(other) => meta.error(
            "concurrency",
            format!("{other:?} is not single or parallel"),
            report,
        ),
    }
    let ack_wait = meta.duration("ackWait", report);
    let max_deliver = meta.parse::<i64>("maxDeliver", "a whole number", report);
    let queue_group = meta.take("queueGroupName");
    // A durable consumer per subject: replicas share it, restarts resume it. A named
    // durable or queue group is used as given (that is how Dapr users share consumers).
    let durable_name = meta
        .take("durableName")
        .or(queue_group)
        .unwrap_or_else(|| sanitize_consumer_name(&format!("{app_id}-{subject}")));
    // Dapr's NATS connection name: harmless, not used.
    meta.take("name");
    Some(JetstreamSource {
        nats_url: nats_url?,
        stream_name: meta.take("streamName"),
        subject: subject.to_owned(),
        durable_name,
        deliver_policy,
        ack_wait,
        max_deliver,
    })
}

/// JetStream consumer names may not contain `.`, `*`, `>` or whitespace.
fn sanitize_consumer_name(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '.' | '*' | '>' | ' ' | '\t' | '/' | '\\' => '_',
            c => c,
        })
        .collect()
}
