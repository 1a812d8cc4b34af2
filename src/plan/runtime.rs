//! The compiled half of the Dapr runtime API: which app an API token belongs to, and the
//! state stores, pub/subs and output bindings each app may reach. Clients for them live
//! in `runtime`, keyed by `ComponentId`, beside the plan.

use super::KafkaAuth;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Every app fngate serves the Dapr API to, by app-id and by token.
#[derive(Debug, Default)]
pub struct DaprApps {
    pub apps: BTreeMap<String, Arc<DaprApp>>,
    /// Keyed hash of the token (random keys per plan) -> apps. Finding the bucket reveals
    /// nothing usable about a token through timing; the tokens in it are then compared in
    /// constant time.
    by_token: HashMap<u64, Vec<Arc<DaprApp>>>,
    token_hasher: ahash::RandomState,
    /// Every function another may invoke, by (namespace, app-id).
    pub targets: BTreeMap<(String, String), Arc<InvokeTarget>>,
}

/// A function as the target of service invocation: where its app listens and how it
/// speaks (Dapr's app channel).
#[derive(Debug, Clone, PartialEq)]
pub struct InvokeTarget {
    pub app_id: String,
    pub namespace: String,
    pub function: String,
    pub channel: super::DeliverySpec,
    /// Who may invoke it (its Configuration's `accessControl`); `None`: callers of its
    /// own namespace.
    pub access: Option<Arc<AccessPolicy>>,
}

impl DaprApps {
    /// The target `app_id` in `namespace`.
    pub fn target(&self, namespace: &str, app_id: &str) -> Option<&Arc<InvokeTarget>> {
        self.targets.get(&(namespace.to_owned(), app_id.to_owned()))
    }

    pub fn insert(&mut self, app: DaprApp) {
        let app = Arc::new(app);
        if let Some(token) = &app.token {
            let bucket = self.token_hasher.hash_one(&*token.value);
            self.by_token.entry(bucket).or_default().push(app.clone());
        }
        self.apps.insert(app.app_id.clone(), app);
    }

    /// The app whose token this is.
    pub fn by_token(&self, presented: &[u8]) -> Option<&Arc<DaprApp>> {
        let bucket = self.by_token.get(&self.token_hasher.hash_one(presented))?;
        bucket
            .iter()
            .find(|app| app.token.as_ref().is_some_and(|t| t.matches(presented)))
    }
}

/// A function's Dapr API token. Never printed, serialised or labelled.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ApiToken {
    value: Box<[u8]>,
}

impl ApiToken {
    pub fn new(value: &str) -> ApiToken {
        ApiToken {
            value: value.as_bytes().into(),
        }
    }
    /// Constant time in the token's content.
    fn matches(&self, presented: &[u8]) -> bool {
        if presented.len() != self.value.len() {
            return false;
        }
        presented
            .iter()
            .zip(self.value.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
    /// For `fngate env`, which prints it for the function's own process.
    pub fn expose(&self) -> &str {
        std::str::from_utf8(&self.value).unwrap_or_default()
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

/// One function as a Dapr app: `<function>-<namespace>`.
#[derive(Debug)]
pub struct DaprApp {
    pub app_id: String,
    pub namespace: String,
    pub function: String,
    pub token: Option<ApiToken>,
    pub states: NamedMap<StateComponent>,
    pub pubsubs: NamedMap<PubsubComponent>,
    pub bindings: NamedMap<BindingComponent>,
    /// Secret stores, with the built-in `kubernetes` one (the app's namespace).
    pub secret_stores: NamedMap<SecretStoreComponent>,
    /// Per store, which keys the app may read (its Configuration's `secrets.scopes`).
    pub secret_scopes: BTreeMap<String, SecretScope>,
    /// `spec.serving.outputs`, for the function's `FUNC_CONTEXT`.
    pub outputs: Vec<OutputRef>,
}

/// Components by the name an app calls them, in a sorted slice: a handful per app, and a
/// `BTreeMap` would allocate a node with room for eleven (thousands of apps add up).
#[derive(Debug)]
pub struct NamedMap<T>(Box<[(Box<str>, Arc<T>)]>);

impl<T> Default for NamedMap<T> {
    fn default() -> Self {
        NamedMap(Box::new([]))
    }
}

impl<T> NamedMap<T> {
    pub fn get(&self, name: &str) -> Option<&Arc<T>> {
        self.0
            .binary_search_by(|(n, _)| (**n).cmp(name))
            .ok()
            .map(|i| &self.0[i].1)
    }
    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<T>)> {
        self.0.iter().map(|(n, c)| (&**n, c))
    }
    pub fn values(&self) -> impl Iterator<Item = &Arc<T>> {
        self.0.iter().map(|(_, c)| c)
    }
}

impl<T> From<BTreeMap<String, Arc<T>>> for NamedMap<T> {
    fn from(m: BTreeMap<String, Arc<T>>) -> Self {
        NamedMap(
            m.into_iter()
                .map(|(n, c)| (n.into_boxed_str(), c))
                .collect(),
        )
    }
}

/// A component as an app names it: its namespace and name (a Function's inline component
/// shadows a Component object of the same name, as in daprd).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ComponentId {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ComponentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How daprd prefixes state keys (component metadata `keyPrefix`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeyPrefix {
    AppId,
    /// The component's name.
    Name,
    /// `<namespace>.<app-id>`.
    Namespace,
    None,
    Custom(String),
}

/// Equal components (the same inline spec in many Functions) are compiled into one `Arc`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StateComponent {
    pub id: ComponentId,
    /// `state.redis`.
    pub kind: String,
    pub version: String,
    pub key_prefix: KeyPrefix,
    /// Component `ttlInSeconds`: applies when a request names none.
    pub default_ttl: Option<i64>,
    pub backend: StateBackend,
    /// daprd's transactional outbox, when the component asks for one.
    pub outbox: Option<Outbox>,
}

/// `outboxPublishPubsub`, `outboxPublishTopic`, `outboxPubsub`,
/// `outboxDiscardWhenMissingState`: a transaction's upserts are published (their
/// projection if the transaction has one) to `publish_topic` once the transaction
/// committed, through daprd's internal topic on `outbox_pubsub`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Outbox {
    pub publish_pubsub: String,
    pub publish_topic: String,
    pub outbox_pubsub: String,
    pub discard_when_missing: bool,
}

impl Outbox {
    /// daprd's internal topic: `<namespace><app-id><publishTopic>outbox`.
    pub fn internal_topic(&self, namespace: &str, app_id: &str) -> String {
        format!("{namespace}{app_id}{}outbox", self.publish_topic)
    }
}

/// Where a store lives; equal backends share one client, whichever apps name them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StateBackend {
    Redis(RedisSettings),
    Postgres(PostgresSettings),
    Mysql(MysqlSettings),
}

/// `state.postgresql`: which of Dapr's two table layouts the component uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PostgresLayout {
    /// `value jsonb`, `isbinary`, the ETag is `xmin` (component `version: v1`, the default).
    V1,
    /// `value bytea`, a uuid `etag` column (`version: v2`).
    V2,
}

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PostgresSettings {
    pub layout: PostgresLayout,
    pub tls: PostgresTls,
    /// The connection parameters (`connectionString` in either form, or the separate
    /// `host`/`port`/... keys), normalised to libpq keywords.
    pub connection: Vec<(String, String)>,
    /// The state table, possibly `schema.table` (v1 `tableName`; v2 `<tablePrefix>state`).
    pub table: String,
    /// v2: the prefix, which also names its migration and cleanup rows.
    pub table_prefix: String,
    pub metadata_table: String,
    /// Bounds connecting and every statement.
    pub timeout: Duration,
    /// `None`: expired rows are not deleted in the background.
    pub cleanup_interval: Option<Duration>,
    pub max_conns: usize,
}

impl std::fmt::Debug for PostgresSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let connection: Vec<_> = self
            .connection
            .iter()
            .map(|(k, v)| (k, if k == "password" { "<redacted>" } else { v }))
            .collect();
        f.debug_struct("PostgresSettings")
            .field("layout", &self.layout)
            .field("connection", &connection)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// TLS to PostgreSQL, from libpq's `sslmode` (and `sslrootcert`, read at compile).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PostgresTls {
    Disable,
    /// TLS when the server offers it, the certificate not checked (libpq's default).
    Prefer,
    /// TLS or no connection, the certificate not checked.
    Require,
    /// The chain must lead to this PEM; the host name is not checked.
    VerifyCa(Vec<u8>),
    /// The chain and the host name.
    VerifyFull(Vec<u8>),
}

/// How `state.mysql` connects over TLS (the DSN's `tls` parameter).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MysqlTls {
    Off,
    /// `tls=skip-verify`: encrypted, the certificate not checked.
    SkipVerify,
    /// `tls=custom` with `pemPath`/`pemContents`: the server's certificate must chain to
    /// this PEM.
    CustomRoot(Vec<u8>),
}

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MysqlSettings {
    pub user: String,
    pub password: Option<String>,
    pub host: String,
    pub port: u16,
    /// `schemaName`: the database fngate creates and uses.
    pub schema: String,
    pub table: String,
    pub metadata_table: String,
    pub timeout: Duration,
    pub cleanup_interval: Option<Duration>,
    pub tls: MysqlTls,
    /// DSN parameters the Go driver sends as `SET name=value` on each connection.
    pub session_variables: Vec<(String, String)>,
}

impl std::fmt::Debug for MysqlSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlSettings")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("schema", &self.schema)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RedisSettings {
    /// `host:port`.
    pub host: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: i64,
    pub tls: bool,
    pub insecure_skip_verify: bool,
    pub dial_timeout: Duration,
    /// Bounds every command, so a hung server gives an error, not a hung call.
    pub command_timeout: Duration,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("host", &self.host)
            .field("db", &self.db)
            .field("tls", &self.tls)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PubsubComponent {
    pub id: ComponentId,
    pub kind: String,
    /// A metadata value contained `{namespace}`: topics become `<namespace><topic>`.
    pub namespaced_topics: bool,
    pub backend: BrokerBackend,
    pub acl: TopicAcl,
}

/// TLS of a `bindings.http` component, as Dapr's metadata names it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct HttpTls {
    pub root_ca: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

impl HttpTls {
    /// Dapr's metadata keys of the three PEMs (CA, client certificate, client key).
    pub const KEYS: [&'static str; 3] = ["MTLSRootCA", "MTLSClientCert", "MTLSClientKey"];

    /// The PEMs; none (the system's roots, no client certificate) without TLS settings.
    pub fn pems(tls: Option<&HttpTls>) -> crate::client_tls::ClientPems<'_> {
        crate::client_tls::ClientPems {
            ca: tls.and_then(|t| t.root_ca.as_deref()),
            cert: tls.and_then(|t| t.client_cert.as_deref()),
            key: tls.and_then(|t| t.client_key.as_deref()),
            keys: Self::KEYS,
        }
    }
}

impl std::fmt::Debug for HttpTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTls")
            .field("root_ca", &self.root_ca.is_some())
            .field("client_cert", &self.client_cert.is_some())
            .finish_non_exhaustive()
    }
}

/// A pub/sub's topic ACLs as daprd reads them from its metadata: `allowedTopics`,
/// `protectedTopics`, `publishingScopes` and `subscriptionScopes`
/// (`"app1=t1,t2;app2=t3"`; `app2=` allows app2 no topic).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TopicAcl {
    pub allowed: Vec<String>,
    pub protected: Vec<String>,
    /// app-id → the topics it may publish to; an app not named has no scope.
    pub publishing: BTreeMap<String, Vec<String>>,
    pub subscription: BTreeMap<String, Vec<String>>,
}

impl TopicAcl {
    /// A comma list, spaces removed, duplicates dropped (daprd's parsing).
    pub fn topics(value: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for t in value.replace(' ', "").split(',') {
            if !out.iter().any(|o| o == t) {
                out.push(t.to_owned());
            }
        }
        out
    }

    /// `app1=t1,t2;app2=t3`: an entry without `=` is skipped, entries for one app add up.
    pub fn scopes(value: &str) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for entry in value.replace(' ', "").split(';') {
            let mut parts = entry.split('=');
            let (Some(app), Some(topics)) = (parts.next(), parts.next()) else {
                continue;
            };
            let list = out.entry(app.to_owned()).or_default();
            for t in topics.split(',') {
                if !list.iter().any(|o| o == t) {
                    list.push(t.to_owned());
                }
            }
        }
        out
    }

    pub fn may_publish(&self, app_id: &str, topic: &str) -> bool {
        self.allows(self.publishing.get(app_id), topic)
    }

    pub fn may_subscribe(&self, app_id: &str, topic: &str) -> bool {
        self.allows(self.subscription.get(app_id), topic)
    }

    /// daprd's `IsOperationAllowed`: outside `allowedTopics` never; a protected topic, or
    /// any topic for an app with a scope, only when the app's scope names it.
    fn allows(&self, scoped: Option<&Vec<String>>, topic: &str) -> bool {
        if !self.allowed.is_empty() && !self.allowed.iter().any(|t| t == topic) {
            return false;
        }
        let protected = self.protected.iter().any(|t| t == topic);
        match scoped {
            Some(s) if !s.is_empty() => s.iter().any(|t| t == topic),
            _ => !protected,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BrokerBackend {
    Kafka(KafkaProducerSettings),
    Jetstream { nats_url: String },
    Mqtt(MqttProducerSettings),
}

/// One MQTT connection for publishing (QoS 1), shared by equal settings.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MqttProducerSettings {
    pub broker: super::MqttBroker,
    /// `<consumerID>-producer`, as Dapr's mqtt3 names its publishing client.
    pub client_id: String,
    /// The component's `retain`: whether the broker keeps the last message per topic.
    pub retain: bool,
}

/// Equal settings share one producer, whichever apps name them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KafkaProducerSettings {
    pub brokers: String,
    pub auth: KafkaAuth,
    pub client_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BindingComponent {
    pub id: ComponentId,
    pub kind: String,
    pub backend: BindingBackend,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BindingBackend {
    Kafka {
        producer: KafkaProducerSettings,
        publish_topic: String,
    },
    Http {
        url: String,
        /// `MTLSRootCA`, `MTLSClientCert`, `MTLSClientKey` (PEM) for an `https://` URL.
        tls: Option<HttpTls>,
    },
    Mqtt {
        producer: MqttProducerSettings,
        /// The component's `topic`; a request's `topic` metadata overrides it.
        topic: Option<String>,
    },
}

impl BindingBackend {
    pub fn operations(&self) -> &'static [&'static str] {
        match self {
            BindingBackend::Kafka { .. } | BindingBackend::Mqtt { .. } => &["create"],
            BindingBackend::Http { .. } => &[
                "create", "get", "head", "post", "put", "patch", "delete", "options", "trace",
            ],
        }
    }
}

/// One `spec.serving.outputs` entry, as OpenFunction puts it in `FUNC_CONTEXT`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OutputRef {
    pub name: String,
    pub component_type: String,
    pub topic: Option<String>,
    pub operation: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::TopicAcl;

    #[test]
    fn topic_acls_follow_daprds_is_operation_allowed() {
        let acl = |allowed: &str, protected: &str, publishing: &str| TopicAcl {
            allowed: if allowed.is_empty() {
                vec![]
            } else {
                TopicAcl::topics(allowed)
            },
            protected: if protected.is_empty() {
                vec![]
            } else {
                TopicAcl::topics(protected)
            },
            publishing: TopicAcl::scopes(publishing),
            subscription: Default::default(),
        };
        // (allowedTopics, protectedTopics, publishingScopes, app, topic, allowed)
        for (allowed, protected, scopes, app, topic, want) in [
            ("", "", "", "a", "t", true),               // nothing set
            ("t, u", "", "", "a", "u", true),           // spaces removed
            ("t,u", "", "", "a", "v", false),           // outside allowedTopics
            ("", "", "a=t1,t2;b=t3", "a", "t2", true),  // in a's scope
            ("", "", "a=t1,t2;b=t3", "a", "t3", false), // a has a scope without t3
            ("", "", "a=t1,t2;b=t3", "c", "t3", true),  // c has no scope
            ("", "", "a=", "a", "t", false),            // `a=`: no topic for a
            ("", "", "a;b=t", "a", "t", true),          // an entry without `=` skipped
            ("", "", "a=t1;a=t2", "a", "t2", true),     // entries add up
            ("", "p", "", "a", "p", false),             // protected needs a scope
            ("", "p", "a=p", "a", "p", true),
            ("", "p", "a=q", "a", "q", true),
            ("t", "", "a=u", "a", "u", false), // allowedTopics first
        ] {
            assert_eq!(
                acl(allowed, protected, scopes).may_publish(app, topic),
                want,
                "allowed {allowed:?} protected {protected:?} scopes {scopes:?}: {app} -> {topic}"
            );
        }
    }
}

/// A secret store an app may read.
#[derive(Debug, PartialEq)]
pub struct SecretStoreComponent {
    pub id: ComponentId,
    pub kind: String,
    pub backend: SecretBackend,
}

#[derive(Debug, PartialEq)]
pub enum SecretBackend {
    /// `secretstores.local.file`: a JSON file beside the catalog file that names it,
    /// flattened with `nested_separator` (or one secret per top-level key, multi-valued).
    LocalFile {
        path: std::path::PathBuf,
        nested_separator: String,
        multi_valued: bool,
    },
    /// `secretstores.local.env`: fngate's environment variables named `<prefix><key>`.
    LocalEnv { prefix: String },
    /// `secretstores.kubernetes`: the Secrets of `namespace` (the app's), read from the
    /// API server at each call; from files, the catalog's (`catalog`).
    Kubernetes {
        namespace: String,
        catalog: Arc<[Arc<crate::api::Secret>]>,
    },
}

/// daprd's `SecretsScope.IsSecretAllowed`.
#[derive(Clone, Debug, PartialEq)]
pub struct SecretScope {
    pub default_allow: bool,
    /// Sorted; when not empty, only these keys.
    pub allowed: Vec<String>,
    /// Sorted.
    pub denied: Vec<String>,
}

impl SecretScope {
    pub fn allows(&self, key: &str) -> bool {
        if !self.allowed.is_empty() {
            return self
                .allowed
                .binary_search_by(|k| k.as_str().cmp(key))
                .is_ok();
        }
        if self
            .denied
            .binary_search_by(|k| k.as_str().cmp(key))
            .is_ok()
        {
            return false;
        }
        self.default_allow
    }
}

/// A Dapr `accessControl` policy of the invoked app, as daprd's `acl` applies it: the
/// caller's policy (by app-id and namespace) if it has one, else the default action; a
/// caller's operations matched by method prefix (`/x/*`, `/x/**`) and HTTP verb.
#[derive(Clone, Debug, PartialEq)]
pub struct AccessPolicy {
    pub default_allow: bool,
    pub callers: Vec<CallerPolicy>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CallerPolicy {
    pub app_id: String,
    pub namespace: String,
    /// `None`: the policy's global default action.
    pub default_allow: Option<bool>,
    pub operations: Vec<OperationRule>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OperationRule {
    /// Without a trailing `/*` or `/**`: exact; with `/*` one more segment; `/**` any.
    pub name: String,
    /// Upper-case verbs; `*` any.
    pub verbs: Vec<String>,
    pub allow: bool,
}

impl AccessPolicy {
    /// Whether `caller` (app-id, namespace) may call `method` with `verb` (gRPC calls: `*`).
    pub fn allows(&self, caller_app: &str, caller_ns: &str, method: &str, verb: &str) -> bool {
        let Some(policy) = self
            .callers
            .iter()
            .find(|p| p.app_id == caller_app && p.namespace == caller_ns)
        else {
            return self.default_allow;
        };
        let fallback = policy.default_allow.unwrap_or(self.default_allow);
        // HTTP operations match case-insensitively (daprd lower-cases both sides).
        let http = verb != "*";
        let mut method = format!("/{}", method.trim_start_matches('/'));
        if http {
            method = method.to_ascii_lowercase();
        }
        // The longest matching operation decides.
        let found = policy
            .operations
            .iter()
            .filter(|op| {
                let name = if http {
                    op.name.to_ascii_lowercase()
                } else {
                    op.name.clone()
                };
                operation_matches(&name, &method)
            })
            .max_by_key(|op| op.name.len());
        match found {
            Some(op) if !http || op.verbs.iter().any(|v| v == "*" || v == verb) => op.allow,
            _ => fallback,
        }
    }
}

fn operation_matches(pattern: &str, method: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix("/**") {
        return method == prefix || method.starts_with(&format!("{prefix}/"));
    }
    if let Some(prefix) = pattern.strip_suffix("/*") {
        return method
            .strip_prefix(&format!("{prefix}/"))
            .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'));
    }
    pattern == method
}
