//! Functions -> `DaprApps`: each function's API token (from the Secret its
//! `dapr.io/api-token-secret` annotation names), and the state stores, pub/subs and output
//! bindings it may reach, as daprd would load them for that app-id: its own inline
//! components, then the Components of its namespace whose `scopes` are empty or list it.

use super::triggers::{
    client_tls_pems, kafka_auth, kafka_brokers, mqtt_broker, mqtt_consumer_id, resolve_metadata,
    secret_value, topic_acl, Metadata, Origin, Report,
};
use super::Snapshot;
use crate::api::{
    ComponentSpec, Diagnostic, Function, ObjectKey, ObjectKind, ParsedObject, StateEntry,
    StateStore,
};
use crate::plan::{
    AccessPolicy, ApiToken, BindingBackend, BindingComponent, BrokerBackend, CallerPolicy,
    ComponentId, DaprApp, DaprApps, HttpTls, InvokeTarget, KafkaProducerSettings, KeyPrefix,
    MqttProducerSettings, OperationRule, Outbox, OutputRef, PostgresLayout, PubsubComponent,
    RedisSettings, SecretBackend, SecretScope, SecretStoreComponent, StateBackend, StateComponent,
    TopicAcl,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Dapr's annotation naming the Secret (key `token`) with the app's API token.
pub const API_TOKEN_ANNOTATION: &str = "dapr.io/api-token-secret";

/// Dapr's annotation naming the app's Configuration (secret scopes, access control).
pub const CONFIG_ANNOTATION: &str = "dapr.io/config";

/// The secret store every app has without a Component (as daprd on Kubernetes).
const BUILT_IN_SECRET_STORE: &str = "kubernetes";

/// A component compiled for the Dapr API.
#[derive(Clone)]
enum Compiled {
    State(Arc<StateComponent>),
    Pubsub(Arc<PubsubComponent>),
    Binding(Arc<BindingComponent>),
    Secrets(Arc<SecretStoreComponent>),
    /// An input-only binding (no `publishTopic`) or a type the API does not serve.
    NotServed,
}

/// A component visible to one app, before compiling.
struct Visible<'a> {
    id: ComponentId,
    /// In the Function itself (compiled per Function) rather than a namespace Component.
    inline: bool,
    spec: &'a ComponentSpec,
    origin: Origin,
}

pub(super) fn build(
    snapshot: &Snapshot,
    previous: Option<&DaprApps>,
    diagnostics: &mut Vec<Diagnostic>,
) -> DaprApps {
    let mut apps = DaprApps::default();
    // Namespace Components are compiled once however many apps see them.
    let mut shared: HashMap<ComponentId, Option<Compiled>> = HashMap::new();
    let mut token_owner: HashMap<ApiToken, String> = HashMap::new();
    let mut shared_tokens: Vec<ApiToken> = Vec::new();
    // Each app with its function and file, for diagnostics across apps.
    let mut built: Vec<(DaprApp, String, Option<Arc<str>>)> = Vec::new();
    let mut interned = Interned::default();
    let mut built_in_stores: HashMap<String, Arc<SecretStoreComponent>> = HashMap::new();
    for (key, entry, function) in snapshot.functions() {
        let Some(serving) = function.spec.serving.as_ref() else {
            continue;
        };
        let namespace = function.metadata.namespace_or_default();
        let app_id = format!("{}-{}", function.metadata.name, namespace);
        let mut report = Report {
            diagnostics: &mut *diagnostics,
            function_label: key.to_string(),
            function_file: entry.file.as_ref(),
            failed: false,
        };
        let (secret_scopes, access) = app_configuration(snapshot, function, &mut report);
        // Any function may be invoked; a bad annotation is reported by its triggers.
        if let Ok(channel) = super::triggers::app_channel(function) {
            apps.targets.insert(
                (namespace.to_owned(), app_id.clone()),
                Arc::new(InvokeTarget {
                    app_id: app_id.clone(),
                    namespace: namespace.to_owned(),
                    function: function.metadata.name.clone(),
                    channel,
                    access: access.clone(),
                }),
            );
        }
        let token_secret = serving.annotations.get(API_TOKEN_ANNOTATION);
        let has_components = serving.states.as_ref().is_some_and(|s| !s.is_empty())
            || serving.outputs.as_ref().is_some_and(|o| !o.is_empty());
        if token_secret.is_none() && !has_components {
            continue;
        }
        let before = previous.and_then(|p| p.apps.get(&app_id));
        let token = app_token(snapshot, namespace, token_secret, before, &mut report);
        if let Some(t) = &token {
            match token_owner.get(t) {
                Some(other) => {
                    report.on_function(
                        Diagnostic::error(format!(
                            "its API token is also the token of app {other:?}; a token must name one app, so neither may call fngate's Dapr API"
                        ))
                        .at_field(TOKEN_FIELD),
                    );
                    shared_tokens.push(t.clone());
                }
                None => {
                    token_owner.insert(t.clone(), app_id.clone());
                }
            }
        }
        let (mut states, mut pubsubs, mut bindings, mut secret_stores) = (
            BTreeMap::new(),
            BTreeMap::new(),
            BTreeMap::new(),
            BTreeMap::new(),
        );
        for visible in visible_components(snapshot, function, &app_id, &mut report) {
            let name = visible.id.name.clone();
            let compiled = if !visible.inline {
                shared
                    .entry(visible.id.clone())
                    .or_insert_with(|| compile_component(snapshot, &visible, &app_id, &mut report))
                    .clone()
            } else {
                compile_component(snapshot, &visible, &app_id, &mut report)
            };
            let compiled = match compiled {
                Some(c) => c,
                None => match last_good(before, &name) {
                    Some(kept) => {
                        report.on(
                            &visible.origin,
                            Diagnostic::warning(format!(
                                "component rejected; app {app_id} keeps its last good version"
                            )),
                        );
                        kept
                    }
                    None => continue,
                },
            };
            match compiled {
                Compiled::State(s) => {
                    states.insert(name, interned.state(s));
                }
                Compiled::Pubsub(p) => {
                    pubsubs.insert(name, interned.pubsub(p));
                }
                Compiled::Binding(b) => {
                    bindings.insert(name, interned.binding(b));
                }
                Compiled::Secrets(s) => {
                    secret_stores.insert(name, s);
                }
                Compiled::NotServed => {}
            }
        }
        check_outboxes(&mut states, &pubsubs, &mut report);
        // daprd on Kubernetes always has a `kubernetes` store: the app's namespace. One per
        // namespace, shared by its apps.
        secret_stores
            .entry(BUILT_IN_SECRET_STORE.to_owned())
            .or_insert_with(|| {
                built_in_stores
                    .entry(namespace.to_owned())
                    .or_insert_with(|| {
                        Arc::new(SecretStoreComponent {
                            id: ComponentId {
                                namespace: namespace.to_owned(),
                                name: BUILT_IN_SECRET_STORE.to_owned(),
                            },
                            kind: "secretstores.kubernetes".into(),
                            backend: SecretBackend::Kubernetes {
                                namespace: namespace.to_owned(),
                                catalog: namespace_secrets(snapshot, namespace),
                            },
                        })
                    })
                    .clone()
            });
        for store in secret_scopes.keys() {
            if !secret_stores.contains_key(store) {
                report.on_function(
                    Diagnostic::warning(format!(
                        "its Configuration scopes secret store {store:?}, which is not one of its secret stores (the scope applies to nothing)"
                    ))
                    .at_field(format!("spec.serving.annotations[{CONFIG_ANNOTATION}]")),
                );
            }
        }
        let mut app = DaprApp {
            app_id: app_id.clone(),
            namespace: namespace.to_owned(),
            function: function.metadata.name.clone(),
            token,
            states: states.into(),
            pubsubs: pubsubs.into(),
            bindings: bindings.into(),
            secret_stores: secret_stores.into(),
            secret_scopes,
            outputs: Vec::new(),
        };
        app.outputs = outputs(function, &app, &mut report);
        built.push((app, key.to_string(), entry.file.clone()));
    }
    key_prefix_overlaps(&built, diagnostics);
    for (mut app, _, _) in built {
        if app
            .token
            .as_ref()
            .is_some_and(|t| shared_tokens.contains(t))
        {
            app.token = None;
        }
        apps.insert(app);
    }
    apps
}

/// A state store whose keyPrefix lets its app reach another app's keys: `name` or a custom
/// prefix equal to another app-id, or `none` on a store another app uses too.
fn key_prefix_overlaps(
    built: &[(DaprApp, String, Option<Arc<str>>)],
    diagnostics: &mut Vec<Diagnostic>,
) {
    let app_ids: HashSet<&str> = built.iter().map(|(a, _, _)| a.app_id.as_str()).collect();
    for (app, label, file) in built {
        for (name, store) in app.states.iter() {
            let same_prefix = |prefix: &str| {
                (prefix != app.app_id && app_ids.contains(prefix)).then(|| format!(
                    "state store {name}: its keyPrefix makes its keys `{prefix}||<key>`, app {prefix}'s own prefix: {} and {prefix} read and write each other's keys where they share a store",
                    app.app_id
                ))
            };
            let message = match &store.key_prefix {
                KeyPrefix::Name => same_prefix(&store.id.name),
                KeyPrefix::Custom(prefix) => same_prefix(prefix),
                KeyPrefix::None => built
                    .iter()
                    .map(|(other, _, _)| other)
                    .find(|other| {
                        other.app_id != app.app_id
                            && other.states.values().any(|s| s.backend == store.backend)
                    })
                    .map(|other| format!(
                        "state store {name}: keyPrefix none leaves its keys unprefixed on a store app {} uses too: {} can read and write {}'s keys (`{}||<key>`)",
                        other.app_id, app.app_id, other.app_id, other.app_id
                    )),
                KeyPrefix::AppId | KeyPrefix::Namespace => None,
            };
            if let Some(m) = message {
                diagnostics.push(
                    Diagnostic::warning(m)
                        .on_object(label.clone())
                        .in_file(file.as_deref()),
                );
            }
        }
    }
}

const TOKEN_FIELD: &str = "spec.serving.annotations[dapr.io/api-token-secret]";

/// The app's API token from the Secret its annotation names; a missing, empty or
/// unreadable one is reported, and the app has no token (fail closed).
fn app_token(
    snapshot: &Snapshot,
    namespace: &str,
    secret: Option<&String>,
    before: Option<&Arc<DaprApp>>,
    report: &mut Report<'_>,
) -> Option<ApiToken> {
    let Some(secret) = secret else {
        report.on_function(
            Diagnostic::warning(format!(
                "the function has Dapr states or outputs but no {API_TOKEN_ANNOTATION} annotation; it cannot call fngate's Dapr API"
            ))
            .at_field(TOKEN_FIELD),
        );
        return None;
    };
    let problem = match secret_value(snapshot, namespace, secret, "token") {
        Ok(t) if !t.is_empty() => return Some(ApiToken::new(&t)),
        Ok(_) => format!("Secret {namespace}/{secret} has an empty token"),
        Err(m) => m,
    };
    // Fail closed: a Secret deleted, emptied or unreadable revokes the token. (A transient
    // API-server error is not this: the watch keeps its last list, and a file that does
    // not parse keeps its last good objects.)
    let consequence = if before.is_some_and(|b| b.token.is_some()) {
        "its token no longer works: the function cannot call fngate's Dapr API until the Secret holds one"
    } else {
        "the function cannot call fngate's Dapr API"
    };
    report
        .on_function(Diagnostic::error(format!("{problem}; {consequence}")).at_field(TOKEN_FIELD));
    None
}

/// One `Arc` per distinct compiled component: a thousand Functions with the same inline
/// store share it.
#[derive(Default)]
struct Interned {
    states: HashSet<Arc<StateComponent>>,
    pubsubs: HashSet<Arc<PubsubComponent>>,
    bindings: HashSet<Arc<BindingComponent>>,
}

impl Interned {
    fn state(&mut self, c: Arc<StateComponent>) -> Arc<StateComponent> {
        intern(&mut self.states, c)
    }
    fn pubsub(&mut self, c: Arc<PubsubComponent>) -> Arc<PubsubComponent> {
        intern(&mut self.pubsubs, c)
    }
    fn binding(&mut self, c: Arc<BindingComponent>) -> Arc<BindingComponent> {
        intern(&mut self.bindings, c)
    }
}

fn intern<T: Eq + std::hash::Hash>(set: &mut HashSet<Arc<T>>, c: Arc<T>) -> Arc<T> {
    match set.get(&c) {
        Some(existing) => existing.clone(),
        None => {
            set.insert(c.clone());
            c
        }
    }
}

fn last_good(before: Option<&Arc<DaprApp>>, name: &str) -> Option<Compiled> {
    let b = before?;
    if let Some(s) = b.states.get(name) {
        return Some(Compiled::State(s.clone()));
    }
    if let Some(p) = b.pubsubs.get(name) {
        return Some(Compiled::Pubsub(p.clone()));
    }
    b.bindings.get(name).map(|c| Compiled::Binding(c.clone()))
}

/// What daprd would load for this app: inline components first (they shadow a Component
/// of the same name), then the namespace's Components in scope.
fn visible_components<'a>(
    snapshot: &'a Snapshot,
    function: &'a Function,
    app_id: &str,
    report: &mut Report<'_>,
) -> Vec<Visible<'a>> {
    let namespace = function.metadata.namespace_or_default();
    let mut out: Vec<Visible<'a>> = Vec::new();
    let Some(serving) = function.spec.serving.as_ref() else {
        return out;
    };
    let (label, file) = (report.function_label.clone(), report.function_file.cloned());
    let inline = |field: &str, name: &str| Origin {
        label: label.clone(),
        file: file.clone(),
        metadata_field: format!("spec.serving.{field}.{name}.metadata"),
    };
    let id = |name: &str| ComponentId {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    };
    for (field, map) in [("bindings", &serving.bindings), ("pubsub", &serving.pubsub)] {
        for (name, spec) in map.iter().flatten() {
            out.push(Visible {
                id: id(name),
                inline: true,
                spec,
                origin: inline(field, name),
            });
        }
    }
    for (name, entry) in serving.states.iter().flatten() {
        let store = match entry {
            StateEntry::Store(s) => s,
            StateEntry::Invalid(e) => {
                report.on_function(
                    Diagnostic::error(format!(
                        "not a component spec (type, version, metadata), bare or under spec: {e}"
                    ))
                    .at_field(format!("spec.serving.states.{name}")),
                );
                continue;
            }
        };
        let metadata_field = match store {
            StateStore::Wrapped { .. } => format!("spec.serving.states.{name}.spec.metadata"),
            StateStore::Bare(_) => format!("spec.serving.states.{name}.metadata"),
        };
        out.push(Visible {
            id: id(name),
            inline: true,
            spec: store.spec(),
            origin: Origin {
                metadata_field,
                ..inline("states", name)
            },
        });
    }
    let start = ObjectKey::new(ObjectKind::Component, namespace, "");
    for (key, entry) in snapshot.objects.range(start..) {
        if key.kind != ObjectKind::Component || key.namespace != namespace {
            break;
        }
        let ParsedObject::Component(component) = &*entry.object else {
            continue;
        };
        if !component.scopes.is_empty() && !component.scopes.iter().any(|s| s == app_id) {
            continue;
        }
        if out.iter().any(|v| v.id.name == key.name) {
            continue;
        }
        out.push(Visible {
            id: ComponentId {
                namespace: namespace.to_owned(),
                name: key.name.clone(),
            },
            inline: false,
            spec: &component.spec,
            origin: Origin {
                label: key.to_string(),
                file: entry.file.clone(),
                metadata_field: "spec.metadata".into(),
            },
        });
    }
    out
}

/// `None`: the component has errors (reported).
fn compile_component(
    snapshot: &Snapshot,
    visible: &Visible<'_>,
    app_id: &str,
    report: &mut Report<'_>,
) -> Option<Compiled> {
    // An inline component is its app's own; a Component object is shared by its apps.
    let scope = if visible.inline {
        format!("{app_id}/{}", visible.id.name)
    } else {
        visible.id.to_string()
    };
    let kind = visible.spec.kind.as_str();
    let family = kind.split('.').next().unwrap_or_default();
    if !matches!(
        kind,
        "state.redis"
            | "state.postgresql"
            | "state.postgres"
            | "state.mysql"
            | "pubsub.kafka"
            | "pubsub.jetstream"
            | "bindings.kafka"
            | "bindings.http"
            | "pubsub.mqtt"
            | "pubsub.mqtt3"
            | "bindings.mqtt"
            | "bindings.mqtt3"
            | "secretstores.local.file"
            | "secretstores.local.env"
            | "secretstores.kubernetes"
    ) {
        if family == "state" && visible.inline {
            report.on(
                &visible.origin,
                Diagnostic::warning(format!(
                    "state store type {kind:?} is not served by fngate's Dapr API; it serves state.redis, state.postgresql and state.mysql"
                ))
                .at_field(visible.origin.metadata_field.replace(".metadata", ".type")),
            );
        }
        return Some(Compiled::NotServed);
    }
    let failed_before = report.failed;
    report.failed = false;
    let values = resolve_metadata(
        snapshot,
        &visible.id.namespace,
        &visible.spec.metadata,
        &visible.origin,
        report,
    );
    let namespaced_topics = values.values().any(|(_, v)| v.contains("{namespace}"));
    let mut meta = Metadata {
        values,
        used: Default::default(),
        origin: &visible.origin,
    };
    let acl = if family == "pubsub" {
        topic_acl(&mut meta)
    } else {
        TopicAcl::default()
    };
    let outbox = if family == "state" {
        outbox(&mut meta, report)
    } else {
        None
    };
    let id = visible.id.clone();
    let version = visible.spec.version.clone().unwrap_or_else(|| "v1".into());
    let state = |backend, key_prefix, default_ttl| {
        Compiled::State(Arc::new(StateComponent {
            id: visible.id.clone(),
            kind: kind.to_owned(),
            version: version.clone(),
            key_prefix,
            default_ttl,
            backend,
            outbox: outbox.clone(),
        }))
    };
    let compiled = match kind {
        "state.redis" => redis_state(&mut meta, report)
            .map(|(backend, key_prefix, ttl)| state(StateBackend::Redis(backend), key_prefix, ttl)),
        "state.postgresql" | "state.postgres" => {
            // daprd: v1 unless the component asks for v2.
            let layout = match version.as_str() {
                "" | "v1" => Some(PostgresLayout::V1),
                "v2" => Some(PostgresLayout::V2),
                other => {
                    report.on(
                        &visible.origin,
                        Diagnostic::error(format!(
                            "state.postgresql version {other:?}: v1 (jsonb, the default) or v2 (bytea)"
                        ))
                        .at_field(visible.origin.metadata_field.replace(".metadata", ".version")),
                    );
                    None
                }
            };
            let key_prefix = key_prefix(&mut meta, report);
            layout
                .and_then(|l| super::sql_state::postgres_state(&mut meta, l, report))
                .map(|s| state(StateBackend::Postgres(s), key_prefix, None))
        }
        "state.mysql" => {
            let key_prefix = key_prefix(&mut meta, report);
            super::sql_state::mysql_state(&mut meta, report)
                .map(|s| state(StateBackend::Mysql(s), key_prefix, None))
        }
        "pubsub.kafka" => kafka_producer(&mut meta, report).map(|k| {
            Compiled::Pubsub(Arc::new(PubsubComponent {
                id,
                kind: kind.to_owned(),
                namespaced_topics,
                acl: acl.clone(),
                backend: BrokerBackend::Kafka(k),
            }))
        }),
        "pubsub.jetstream" => match meta.take("natsURL") {
            Some(nats_url) => Some(Compiled::Pubsub(Arc::new(PubsubComponent {
                id,
                kind: kind.to_owned(),
                namespaced_topics,
                acl: acl.clone(),
                backend: BrokerBackend::Jetstream { nats_url },
            }))),
            None => {
                meta.error(
                    "natsURL",
                    "natsURL is required (nats://host:port)".into(),
                    report,
                );
                None
            }
        },
        "bindings.kafka" => match meta.take("publishTopic") {
            // Input only: nothing to invoke.
            None => Some(Compiled::NotServed),
            Some(publish_topic) => kafka_producer(&mut meta, report).map(|producer| {
                Compiled::Binding(Arc::new(BindingComponent {
                    id,
                    kind: kind.to_owned(),
                    backend: BindingBackend::Kafka {
                        producer,
                        publish_topic,
                    },
                }))
            }),
        },
        "bindings.http" => match meta.take("url") {
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                let tls = http_tls(&mut meta, &url, report).ok()?;
                Some(Compiled::Binding(Arc::new(BindingComponent {
                    id,
                    kind: kind.to_owned(),
                    backend: BindingBackend::Http { url, tls },
                })))
            }
            Some(url) => {
                meta.error(
                    "url",
                    format!("{url:?} is not an http:// or https:// URL"),
                    report,
                );
                None
            }
            None => {
                meta.error("url", "url is required".into(), report);
                None
            }
        },
        "pubsub.mqtt" | "pubsub.mqtt3" => mqtt_producer(&mut meta, &visible.id, &scope, report)
            .map(|m| {
                Compiled::Pubsub(Arc::new(PubsubComponent {
                    id,
                    kind: kind.to_owned(),
                    namespaced_topics,
                    acl: acl.clone(),
                    backend: BrokerBackend::Mqtt(m),
                }))
            }),
        "bindings.mqtt" | "bindings.mqtt3" => {
            let topic = meta.take("topic");
            mqtt_producer(&mut meta, &visible.id, &scope, report).map(|producer| {
                Compiled::Binding(Arc::new(BindingComponent {
                    id,
                    kind: kind.to_owned(),
                    backend: BindingBackend::Mqtt { producer, topic },
                }))
            })
        }
        "secretstores.local.file" | "secretstores.local.env" | "secretstores.kubernetes" => {
            secret_store(snapshot, visible, &mut meta, report).map(|backend| {
                Compiled::Secrets(Arc::new(SecretStoreComponent {
                    id,
                    kind: kind.to_owned(),
                    backend,
                }))
            })
        }
        _ => unreachable!("matched above"),
    };
    let failed = report.failed;
    report.failed = failed_before || failed;
    if failed {
        None
    } else {
        compiled
    }
}

/// `bindings.http`'s TLS metadata, as PEM (fngate reads no file a component names),
/// checked by building the client. `Err`: reported.
fn http_tls(
    meta: &mut Metadata<'_>,
    url: &str,
    report: &mut Report<'_>,
) -> Result<Option<HttpTls>, ()> {
    let values = HttpTls::KEYS.map(|k| meta.take(k));
    let https = url.starts_with("https://");
    if https {
        for (key, v) in HttpTls::KEYS.iter().zip(&values) {
            if v.as_deref().is_some_and(|v| !v.starts_with("-----BEGIN")) {
                meta.error(
                    key,
                    format!("{key} must hold the PEM itself (from a secretKeyRef, say): fngate reads no file a component names"),
                    report,
                );
                return Err(());
            }
        }
    }
    let [root_ca, client_cert, client_key] = client_tls_pems(
        meta,
        HttpTls::KEYS,
        values,
        (https, "https://"),
        url,
        report,
    )?;
    Ok(https.then_some(HttpTls {
        root_ca,
        client_cert,
        client_key,
    }))
}

fn kafka_producer(
    meta: &mut Metadata<'_>,
    report: &mut Report<'_>,
) -> Option<KafkaProducerSettings> {
    let brokers = kafka_brokers(meta, report);
    let auth = kafka_auth(meta, report);
    let client_id = meta.take("clientID").or_else(|| meta.take("clientId"));
    Some(KafkaProducerSettings {
        brokers: brokers?,
        auth,
        client_id,
    })
}

fn redis_state(
    meta: &mut Metadata<'_>,
    report: &mut Report<'_>,
) -> Option<(RedisSettings, KeyPrefix, Option<i64>)> {
    let host = meta.take("redisHost");
    if host.is_none() {
        meta.error(
            "redisHost",
            "redisHost is required (host:port)".into(),
            report,
        );
    }
    if let Some(t) = meta
        .take("redisType")
        .filter(|t| !t.eq_ignore_ascii_case("node"))
    {
        meta.error(
            "redisType",
            format!("redisType {t:?} is not supported by fngate; it connects to one node"),
            report,
        );
    }
    if meta.parse::<bool>("failover", "true or false", report) == Some(true) {
        meta.error(
            "failover",
            "Sentinel failover is not supported by fngate; name the master in redisHost".into(),
            report,
        );
    }
    let key_prefix = key_prefix(meta, report);
    let ttl = meta.parse::<i64>("ttlInSeconds", "a whole number of seconds", report);
    let timeout = |meta: &mut Metadata<'_>, key: &str, report: &mut Report<'_>| {
        meta.duration(key, report).filter(|d| !d.is_zero())
    };
    let dial_timeout = timeout(meta, "dialTimeout", report).unwrap_or(Duration::from_secs(5));
    let read = timeout(meta, "readTimeout", report);
    let write = timeout(meta, "writeTimeout", report);
    // go-redis: read 3s, write = read.
    let command_timeout = read.or(write).unwrap_or(Duration::from_secs(3));
    let settings = RedisSettings {
        host: host?,
        username: meta.take("redisUsername"),
        password: meta.take("redisPassword"),
        db: meta
            .parse::<i64>("redisDB", "a database number", report)
            .unwrap_or(0),
        tls: meta
            .parse::<bool>("enableTLS", "true or false", report)
            .unwrap_or(false),
        insecure_skip_verify: meta
            .parse::<bool>("insecureSkipTLSVerify", "true or false", report)
            .unwrap_or(false),
        dial_timeout,
        command_timeout,
    };
    Some((settings, key_prefix, ttl))
}

/// Component `keyPrefix` (daprd's state_config: the name matched case-insensitively,
/// the value lower-cased).
fn key_prefix(meta: &mut Metadata<'_>, report: &mut Report<'_>) -> KeyPrefix {
    match meta
        .values
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("keyPrefix"))
        .map(|(k, (_, v))| (k.clone(), v.trim().to_lowercase()))
    {
        None => KeyPrefix::AppId,
        Some((k, v)) => {
            meta.take(&k);
            match v.as_str() {
                "" | "appid" => KeyPrefix::AppId,
                "name" => KeyPrefix::Name,
                "namespace" => KeyPrefix::Namespace,
                "none" => KeyPrefix::None,
                other if other.contains("||") => {
                    meta.error(
                        &k,
                        format!("keyPrefix {other:?} can't contain '||'"),
                        report,
                    );
                    KeyPrefix::AppId
                }
                other => KeyPrefix::Custom(other.to_owned()),
            }
        }
    }
}

/// `spec.serving.outputs`: each names a pub/sub (with a topic) or an output binding
/// (with an operation it supports) that the app can reach.
fn outputs(function: &Function, app: &DaprApp, report: &mut Report<'_>) -> Vec<OutputRef> {
    let mut out = Vec::new();
    let list = function
        .spec
        .serving
        .as_ref()
        .and_then(|s| s.outputs.as_ref());
    for (i, output) in list.into_iter().flatten().enumerate() {
        let field = format!("spec.serving.outputs[{i}].dapr");
        let Some(dapr) = &output.dapr else {
            // Other shapes (OpenFunction's proposals) are not Dapr outputs.
            report.on_function(
                Diagnostic::warning("an output without `dapr` is not a Dapr output; ignored")
                    .at_field(field),
            );
            continue;
        };
        let component_type = if let Some(p) = app.pubsubs.get(&dapr.name) {
            if dapr.topic.as_deref().unwrap_or_default().is_empty() {
                report.on_function(
                    Diagnostic::error("a pub/sub output needs a topic")
                        .at_field(format!("{field}.topic")),
                );
                continue;
            }
            p.kind.clone()
        } else if let Some(b) = app.bindings.get(&dapr.name) {
            // Unset (the Node samples leave it out), the function names the operation in
            // each call, and every binding takes `create`; set, the binding must support it.
            let op = dapr.operation.as_deref().unwrap_or("create");
            if !b.backend.operations().contains(&op) {
                report.on_function(
                    Diagnostic::error(format!(
                        "operation {op:?} is not one of {:?}, which {} supports",
                        b.backend.operations(),
                        b.kind
                    ))
                    .at_field(format!("{field}.operation")),
                );
                continue;
            }
            b.kind.clone()
        } else {
            // A warning, as for triggers: the Component may simply not have arrived yet.
            report.on_function(
                Diagnostic::warning(format!(
                    "no pub/sub or output binding named {:?} that app {} may use (inline in the Function, or a Component in namespace {} whose scopes include it; an input-only bindings.kafka has no publishTopic)",
                    dapr.name, app.app_id, app.namespace
                ))
                .at_field(format!("{field}.name")),
            );
            continue;
        };
        out.push(OutputRef {
            name: dapr.name.clone(),
            component_type,
            topic: dapr.topic.clone().filter(|t| !t.is_empty()),
            operation: dapr.operation.clone().filter(|o| !o.is_empty()),
            metadata: dapr
                .metadata
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        });
    }
    out
}

/// The publishing side of an MQTT component, as Dapr 1.11's mqtt3: client id
/// `<consumerID>-producer` and a per-process suffix (`{uuid}` replaced once per process;
/// default the component name), `retain` as the default for every message.
fn mqtt_producer(
    meta: &mut Metadata<'_>,
    id: &ComponentId,
    scope: &str,
    report: &mut Report<'_>,
) -> Option<MqttProducerSettings> {
    let broker = mqtt_broker(meta, report);
    let retain = meta
        .parse::<bool>("retain", "true or false", report)
        .unwrap_or(false);
    let consumer =
        mqtt_consumer_id(meta, scope).unwrap_or_else(|| format!("{}-{}", id.name, id.namespace));
    Some(MqttProducerSettings {
        broker: broker?,
        // Per process too: replicas sharing a consumerID would otherwise take the
        // connection from each other (a broker keeps one session per client id).
        client_id: format!(
            "{consumer}-producer-{}",
            &crate::triggers::process_uuid()[..8]
        ),
        retain,
    })
}

/// The Secrets of `namespace` in the catalog (from files: every one; from the API server:
/// the labelled ones, unused then, as the store reads the API server).
fn namespace_secrets(snapshot: &Snapshot, namespace: &str) -> Arc<[Arc<crate::api::Secret>]> {
    let start = ObjectKey::new(ObjectKind::Secret, namespace, "");
    snapshot
        .objects
        .range(start..)
        .take_while(|(k, _)| k.kind == ObjectKind::Secret && k.namespace == namespace)
        .filter_map(|(_, e)| match &*e.object {
            ParsedObject::Secret(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

fn secret_store(
    snapshot: &Snapshot,
    visible: &Visible<'_>,
    meta: &mut Metadata<'_>,
    report: &mut Report<'_>,
) -> Option<SecretBackend> {
    match visible.spec.kind.as_str() {
        "secretstores.local.file" => {
            let Some(file) = meta.take("secretsFile") else {
                meta.error("secretsFile", "secretsFile is required".into(), report);
                return None;
            };
            // fngate reads no file a component names outside the catalog: the secrets
            // file sits beside (or below) the file of the object that names it.
            let relative = std::path::Path::new(&file);
            let escapes = relative.is_absolute()
                || relative
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)));
            let Some(dir) = visible
                .origin
                .file
                .as_deref()
                .and_then(|f| std::path::Path::new(f).parent())
                .filter(|_| !escapes)
            else {
                meta.error(
                    "secretsFile",
                    format!("{file:?}: a local secrets file must be a relative path below the catalog file that names it (fngate serves every function, and reads no other file a component names)"),
                    report,
                );
                return None;
            };
            let multi_valued = meta
                .parse::<bool>("multiValued", "true or false", report)
                .unwrap_or(false);
            Some(SecretBackend::LocalFile {
                path: dir.join(relative),
                nested_separator: meta.take("nestedSeparator").unwrap_or_else(|| ":".into()),
                multi_valued,
            })
        }
        "secretstores.local.env" => match meta.take("prefix") {
            Some(prefix) => Some(SecretBackend::LocalEnv { prefix }),
            None => {
                meta.error(
                    "prefix",
                    "a prefix is required: the variables are fngate's own, shared by every function, so name the ones meant for functions (daprd reads its sidecar's, which only its app shares)".into(),
                    report,
                );
                None
            }
        },
        _ => Some(SecretBackend::Kubernetes {
            namespace: visible.id.namespace.clone(),
            catalog: namespace_secrets(snapshot, &visible.id.namespace),
        }),
    }
}

/// The app's Configuration (named by `dapr.io/config`): secret scopes and access control.
fn app_configuration(
    snapshot: &Snapshot,
    function: &Function,
    report: &mut Report<'_>,
) -> (BTreeMap<String, SecretScope>, Option<Arc<AccessPolicy>>) {
    let field = format!("spec.serving.annotations[{CONFIG_ANNOTATION}]");
    let Some(name) = function
        .spec
        .serving
        .as_ref()
        .and_then(|s| s.annotations.get(CONFIG_ANNOTATION))
    else {
        return (BTreeMap::new(), None);
    };
    let namespace = function.metadata.namespace_or_default();
    let config = snapshot
        .objects
        .get(&ObjectKey::new(ObjectKind::Configuration, namespace, name))
        .and_then(|e| match &*e.object {
            ParsedObject::Configuration(c) => Some(c.clone()),
            _ => None,
        });
    let Some(config) = config else {
        // daprd does not start without it; fngate serves the app without its rules, and
        // says so.
        report.on_function(
            Diagnostic::error(format!(
                "Configuration {namespace}/{name} not found: its secret scopes and access control are not applied"
            ))
            .at_field(field),
        );
        return (BTreeMap::new(), None);
    };
    let allow = |action: Option<&str>, default: bool| match action {
        Some(a) if a.eq_ignore_ascii_case("deny") => false,
        Some(a) if a.eq_ignore_ascii_case("allow") => true,
        _ => default,
    };
    let mut scopes = BTreeMap::new();
    for scope in config.spec.secrets.iter().flat_map(|s| &s.scopes) {
        let sorted = |v: &Vec<String>| {
            let mut v = v.clone();
            v.sort();
            v
        };
        scopes.insert(
            scope.store_name.clone(),
            SecretScope {
                default_allow: allow(scope.default_access.as_deref(), true),
                allowed: sorted(&scope.allowed_secrets),
                denied: sorted(&scope.denied_secrets),
            },
        );
    }
    let access = config.spec.access_control.as_ref().map(|ac| {
        Arc::new(AccessPolicy {
            default_allow: allow(ac.default_action.as_deref(), true),
            callers: ac
                .policies
                .iter()
                .map(|p| CallerPolicy {
                    app_id: p.app_id.clone(),
                    namespace: p.namespace.clone().unwrap_or_else(|| namespace.to_owned()),
                    default_allow: p.default_action.as_deref().map(|a| allow(Some(a), true)),
                    operations: p
                        .operations
                        .iter()
                        .map(|op| OperationRule {
                            name: format!("/{}", op.name.trim_start_matches('/')),
                            verbs: op
                                .http_verb
                                .iter()
                                .map(|v| v.to_ascii_uppercase())
                                .collect(),
                            allow: allow(Some(&op.action), false),
                        })
                        .collect(),
                })
                .collect(),
        })
    });
    (scopes, access)
}

/// daprd's outbox metadata: both `outboxPublishPubsub` and `outboxPublishTopic`, or none.
fn outbox(meta: &mut Metadata<'_>, report: &mut Report<'_>) -> Option<Outbox> {
    let publish_pubsub = meta.take("outboxPublishPubsub");
    let publish_topic = meta.take("outboxPublishTopic");
    let outbox_pubsub = meta.take("outboxPubsub");
    let discard_when_missing = meta
        .parse::<bool>("outboxDiscardWhenMissingState", "true or false", report)
        .unwrap_or(false);
    match (publish_pubsub, publish_topic) {
        (Some(publish_pubsub), Some(publish_topic)) => Some(Outbox {
            outbox_pubsub: outbox_pubsub.unwrap_or_else(|| publish_pubsub.clone()),
            publish_pubsub,
            publish_topic,
            discard_when_missing,
        }),
        (None, None) => {
            if outbox_pubsub.is_some() {
                meta.error(
                    "outboxPubsub",
                    "an outbox needs outboxPublishPubsub and outboxPublishTopic".into(),
                    report,
                );
            }
            None
        }
        (Some(_), None) => {
            meta.error(
                "outboxPublishTopic",
                "outboxPublishTopic is required with outboxPublishPubsub (daprd would silently run no outbox)".into(),
                report,
            );
            None
        }
        (None, Some(_)) => {
            meta.error(
                "outboxPublishPubsub",
                "outboxPublishPubsub is required with outboxPublishTopic (daprd would silently run no outbox)".into(),
                report,
            );
            None
        }
    }
}

/// An outbox needs both its pub/subs among the app's, on a broker fngate relays through
/// (Kafka, JetStream); a store whose outbox cannot run is left out with an error, never
/// served without it.
fn check_outboxes(
    states: &mut BTreeMap<String, Arc<StateComponent>>,
    pubsubs: &BTreeMap<String, Arc<PubsubComponent>>,
    report: &mut Report<'_>,
) {
    let mut broken = Vec::new();
    for (name, state) in states.iter() {
        let Some(outbox) = &state.outbox else {
            continue;
        };
        for (key, pubsub) in [
            ("outboxPublishPubsub", &outbox.publish_pubsub),
            ("outboxPubsub", &outbox.outbox_pubsub),
        ] {
            let problem = match pubsubs.get(pubsub) {
                None => Some(format!("{pubsub:?} is not a pub/sub this app may use")),
                Some(p) if matches!(p.backend, BrokerBackend::Mqtt(_)) => Some(format!(
                    "{pubsub:?} is {}: fngate's outbox relays through Kafka and JetStream only",
                    p.kind
                )),
                Some(_) => None,
            };
            if let Some(problem) = problem {
                report.on_function(
                    Diagnostic::error(format!(
                        "state store {name} ({}): {key} {problem}; the store is not served",
                        state.id
                    ))
                    .at_field(format!("metadata ({key})")),
                );
                broken.push(name.clone());
                break;
            }
        }
    }
    for name in broken {
        states.remove(&name);
    }
}
