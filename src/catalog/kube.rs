//! The Kubernetes API as the object source: one kube-runtime watcher per kind (per
//! namespace when a list is set). The catalog, not the watcher, decides what is current:
//!
//! - an event whose resourceVersion is not newer than the one held is dropped (a watch
//!   cache lagging behind, a duplicate after a reconnect), deletes leave a tombstone so a
//!   late older update cannot resurrect the object;
//! - an event that changes nothing fngate reads (status it does not read,
//!   resourceVersion, managedFields) leaves the object's content hash unchanged and does
//!   not signal a compile;
//! - a relist (first start, or after 410 Gone) is buffered and replaces its kind's
//!   objects in one step when complete: objects deleted meanwhile disappear, and the
//!   plan built from the previous list keeps serving until then;
//! - a malformed object is reported (kind, namespace/name, field) and its last good
//!   version keeps serving.

use crate::api::{parse_object, Diagnostic, ObjectKey, ObjectKind};
use crate::compile::{CatalogEntry, Snapshot};
use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// A kind fngate watches, as the API serves it.
#[derive(Clone, Copy, Debug)]
pub struct WatchedKind {
    pub kind: ObjectKind,
    pub group: &'static str,
    pub version: &'static str,
    pub kind_name: &'static str,
    pub plural: &'static str,
}

impl WatchedKind {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The watched kind of `kind`.
    pub fn of(kind: ObjectKind) -> &'static WatchedKind {
        WATCHED_KINDS
            .iter()
            .find(|k| k.kind == kind)
            .expect("every object kind is watched")
    }

    pub fn api_resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind_name),
            self.plural,
        )
    }
}

pub const WATCHED_KINDS: [WatchedKind; 6] = [
    WatchedKind {
        kind: ObjectKind::Function,
        group: "core.openfunction.io",
        version: "v1beta2",
        kind_name: "Function",
        plural: "functions",
    },
    WatchedKind {
        kind: ObjectKind::Gateway,
        group: "networking.openfunction.io",
        version: "v1alpha1",
        kind_name: "Gateway",
        plural: "gateways",
    },
    WatchedKind {
        kind: ObjectKind::EndpointSlice,
        group: "discovery.k8s.io",
        version: "v1",
        kind_name: "EndpointSlice",
        plural: "endpointslices",
    },
    WatchedKind {
        kind: ObjectKind::Component,
        group: "dapr.io",
        version: "v1alpha1",
        kind_name: "Component",
        plural: "components",
    },
    WatchedKind {
        kind: ObjectKind::Configuration,
        group: "dapr.io",
        version: "v1alpha1",
        kind_name: "Configuration",
        plural: "configurations",
    },
    WatchedKind {
        kind: ObjectKind::Secret,
        group: "",
        version: "v1",
        kind_name: "Secret",
        plural: "secrets",
    },
];

/// One watcher's share of the catalog: a kind, in one namespace or all.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Scope {
    pub kind: ObjectKind,
    pub namespace: Option<String>,
}

impl Scope {
    fn contains(&self, key: &ObjectKey) -> bool {
        key.kind == self.kind
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| *ns == key.namespace)
    }
}

/// What the catalog holds of one object.
#[derive(Clone, Debug)]
struct Held {
    /// resourceVersion of the last event applied; `None` when not a number.
    rv: Option<u64>,
    /// `None`: deleted (a tombstone that outranks older events).
    entry: Option<CatalogEntry>,
    diagnostics: Vec<Diagnostic>,
    /// Functions: `metadata.generation` and the status fields fngate writes, as the API
    /// server holds them now (status changes are not content changes, but the status
    /// writer must see them).
    observed: Option<Arc<ObservedStatus>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ObservedStatus {
    pub generation: Option<i64>,
    /// `{"route": ..., "addresses": ...}`, null where absent.
    pub written: serde_json::Value,
}

/// A Function as the status writer sees it.
#[derive(Clone, Debug)]
pub struct FunctionStatusView {
    pub key: ObjectKey,
    pub resource_version: Option<u64>,
    /// Content hash of the spec held, as the plan records it once compiled.
    pub version: u64,
    pub observed: Arc<ObservedStatus>,
    /// Has `spec.serving.triggers.http`: a route fngate serves.
    pub http: bool,
}

impl Held {
    /// Whether an event at `rv` is older than or the same as what is held.
    fn outranks(&self, rv: Option<u64>) -> bool {
        matches!((self.rv, rv), (Some(held), Some(new)) if new <= held)
    }
}

#[derive(Default)]
struct ScopeState {
    synced: bool,
    /// Objects of a relist in progress.
    relist: Option<BTreeMap<ObjectKey, Held>>,
    /// Why this scope cannot be listed (a CRD not installed), reported in diagnostics.
    problem: Option<Diagnostic>,
}

/// Counts of what happened to incoming events, for `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventOutcome {
    Applied,
    /// Changed nothing fngate reads.
    Unchanged,
    /// Older than (or the same version as) what is held.
    Stale,
}

impl EventOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            EventOutcome::Applied => "applied",
            EventOutcome::Unchanged => "unchanged",
            EventOutcome::Stale => "stale",
        }
    }
}

#[derive(Default)]
pub struct KubeCatalog {
    objects: BTreeMap<ObjectKey, Held>,
    scopes: HashMap<Scope, ScopeState>,
    /// What `objects` holds, kept up to date per event and shared with the compile loop:
    /// taking it is an `Arc` clone, and an event copies it only while a compile still
    /// reads the previous one.
    snapshot: Arc<Snapshot>,
}

impl KubeCatalog {
    pub fn new(scopes: impl IntoIterator<Item = Scope>) -> Self {
        KubeCatalog {
            objects: BTreeMap::new(),
            scopes: scopes
                .into_iter()
                .map(|s| (s, ScopeState::default()))
                .collect(),
            snapshot: Arc::default(),
        }
    }

    /// Every watched kind has completed its first list.
    pub fn synced(&self) -> bool {
        self.scopes.values().all(|s| s.synced)
    }

    /// Applies one watcher event; `Applied` means the snapshot changed.
    pub fn apply(&mut self, scope: &Scope, event: Event<DynamicObject>) -> EventOutcome {
        let kind = WatchedKind::of(scope.kind);
        match event {
            Event::Init => {
                self.scope(scope).relist = Some(BTreeMap::new());
                EventOutcome::Unchanged
            }
            Event::InitApply(object) => {
                if let Some((key, held)) = self.read(kind, object) {
                    let current = self.objects.get(&key);
                    let held = match current {
                        // A list served from a cache older than an event already seen
                        // (a delete included: its tombstone stays).
                        Some(c) if c.outranks(held.rv) => c.clone(),
                        _ => with_last_good(&key, held, current),
                    };
                    if let Some(buffer) = self.scope(scope).relist.as_mut() {
                        buffer.insert(key, held);
                    }
                }
                EventOutcome::Unchanged
            }
            Event::InitDone => {
                let state = self.scope(scope);
                let buffer = state.relist.take().unwrap_or_default();
                state.synced = true;
                state.problem = None;
                self.objects.retain(|k, _| !scope.contains(k));
                self.objects.extend(buffer);
                self.rebuild_snapshot();
                // The compile loop finds out cheaply when a relist changed nothing.
                EventOutcome::Applied
            }
            Event::Apply(object) => {
                let Some((key, held)) = self.read(kind, object) else {
                    return EventOutcome::Unchanged;
                };
                self.put(key, held)
            }
            Event::Delete(object) => {
                let rv = resource_version(&object);
                let Some(key) = object_key(kind, &object) else {
                    return EventOutcome::Unchanged;
                };
                let tombstone = Held {
                    rv,
                    entry: None,
                    diagnostics: Vec::new(),
                    observed: None,
                };
                self.put(key, tombstone)
            }
        }
    }

    /// Marks a scope as listed-empty because its resource is not served (a CRD not
    /// installed), so readiness does not wait for it forever.
    pub fn not_served(&mut self, scope: &Scope, why: String) -> EventOutcome {
        let state = self.scope(scope);
        let first = !state.synced || state.problem.is_none();
        state.synced = true;
        state.problem = Some(Diagnostic::warning(why).on_object(format!("{} objects", scope.kind)));
        self.refresh_diagnostics();
        if first {
            EventOutcome::Applied
        } else {
            EventOutcome::Unchanged
        }
    }

    fn scope(&mut self, scope: &Scope) -> &mut ScopeState {
        self.scopes.entry(scope.clone()).or_default()
    }

    fn put(&mut self, key: ObjectKey, new: Held) -> EventOutcome {
        let Some(current) = self.objects.get_mut(&key) else {
            let applied = new.entry.is_some() || !new.diagnostics.is_empty();
            let has_diagnostics = !new.diagnostics.is_empty();
            self.objects.insert(key.clone(), new);
            self.reflect(&key, has_diagnostics);
            return if applied {
                EventOutcome::Applied
            } else {
                EventOutcome::Unchanged
            };
        };
        if current.outranks(new.rv) {
            return EventOutcome::Stale;
        }
        let new = with_last_good(&key, new, Some(&*current));
        let same_content =
            current.entry.as_ref().map(|e| e.version) == new.entry.as_ref().map(|e| e.version);
        let same_diagnostics = current.diagnostics == new.diagnostics;
        *current = new;
        if !same_content || !same_diagnostics {
            self.reflect(&key, !same_diagnostics);
        }
        if same_content && same_diagnostics {
            EventOutcome::Unchanged
        } else {
            EventOutcome::Applied
        }
    }

    /// The object as the catalog keeps it; `None` for a kind or shape fngate cannot key.
    fn read(&self, kind: &WatchedKind, object: DynamicObject) -> Option<(ObjectKey, Held)> {
        let rv = resource_version(&object);
        let key = object_key(kind, &object)?;
        let mut value = serde_yaml::to_value(&object).ok()?;
        if let Some(map) = value.as_mapping_mut() {
            // Items of a list carry no kind or apiVersion.
            map.insert("apiVersion".into(), kind.api_version().into());
            map.insert("kind".into(), kind.kind_name.into());
        }
        let observed = (kind.kind == ObjectKind::Function).then(|| {
            let status = object.data.get("status");
            let field = |name: &str| {
                status
                    .and_then(|s| s.get(name))
                    .cloned()
                    .unwrap_or(serde_json::Value::Null)
            };
            Arc::new(ObservedStatus {
                generation: object.metadata.generation,
                written: serde_json::json!({"route": field("route"), "addresses": field("addresses")}),
            })
        });
        let doc = parse_object(value, None)?;
        let held = match doc.result {
            Ok(object) => Held {
                rv,
                entry: Some(CatalogEntry {
                    version: object.content_hash(),
                    object: Arc::new(object),
                    file: None,
                }),
                diagnostics: Vec::new(),
                observed,
            },
            Err(d) => Held {
                rv,
                entry: None,
                diagnostics: vec![d],
                observed,
            },
        };
        Some((key, held))
    }

    /// Everything held now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.clone()
    }

    /// Puts `key`'s current entry into the shared snapshot.
    fn reflect(&mut self, key: &ObjectKey, diagnostics_changed: bool) {
        let entry = self.objects.get(key).and_then(|h| h.entry.clone());
        let snapshot = Arc::make_mut(&mut self.snapshot);
        match entry {
            Some(e) => snapshot.objects.insert(key.clone(), e),
            None => snapshot.objects.remove(key),
        };
        if diagnostics_changed {
            self.refresh_diagnostics();
        }
    }

    fn refresh_diagnostics(&mut self) {
        let diagnostics = self.diagnostics();
        Arc::make_mut(&mut self.snapshot).diagnostics = diagnostics;
    }

    fn rebuild_snapshot(&mut self) {
        let mut snapshot = Snapshot::default();
        for (key, held) in &self.objects {
            if let Some(entry) = &held.entry {
                snapshot.objects.insert(key.clone(), entry.clone());
            }
        }
        snapshot.diagnostics = self.diagnostics();
        self.snapshot = Arc::new(snapshot);
    }

    /// Problems of every object held, then of kinds that cannot be listed.
    fn diagnostics(&self) -> Vec<Diagnostic> {
        let mut out: Vec<Diagnostic> = self
            .objects
            .values()
            .flat_map(|h| h.diagnostics.iter().cloned())
            .collect();
        let mut problems: Vec<&Diagnostic> = self
            .scopes
            .values()
            .filter_map(|s| s.problem.as_ref())
            .collect();
        problems.sort_by_key(|d| d.to_string());
        out.extend(problems.into_iter().cloned());
        out
    }

    /// Every Function held, with the status the API server has for it.
    pub fn function_statuses(&self) -> Vec<FunctionStatusView> {
        self.objects
            .iter()
            .filter(|(k, _)| k.kind == ObjectKind::Function)
            .filter_map(|(key, held)| {
                let entry = held.entry.as_ref()?;
                let crate::api::ParsedObject::Function(f) = &*entry.object else {
                    return None;
                };
                let http = f
                    .spec
                    .serving
                    .as_ref()
                    .and_then(|s| s.triggers.as_ref())
                    .is_some_and(|t| t.http.is_some());
                Some(FunctionStatusView {
                    key: key.clone(),
                    resource_version: held.rv,
                    version: entry.version,
                    observed: held.observed.clone()?,
                    http,
                })
            })
            .collect()
    }

    /// Objects held (tombstones excluded).
    pub fn len(&self) -> usize {
        self.objects.values().filter(|h| h.entry.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A malformed version of an object that had a good one keeps serving the good one.
fn with_last_good(key: &ObjectKey, mut new: Held, current: Option<&Held>) -> Held {
    if new.entry.is_none() && !new.diagnostics.is_empty() {
        if let Some(last_good) = current.and_then(|c| c.entry.clone()) {
            new.diagnostics.push(
                Diagnostic::warning("still serving the last good version of this object")
                    .on_object(key.to_string()),
            );
            new.entry = Some(last_good);
        }
    }
    new
}

/// An object's resourceVersion as a number; `None` when the server's is not one.
pub fn resource_version(object: &DynamicObject) -> Option<u64> {
    object.metadata.resource_version.as_deref()?.parse().ok()
}

fn object_key(kind: &WatchedKind, object: &DynamicObject) -> Option<ObjectKey> {
    let name = object.metadata.name.as_deref().filter(|n| !n.is_empty())?;
    let namespace = object
        .metadata
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    Some(ObjectKey::new(kind.kind, namespace, name))
}

/// Where to watch and how to reach the API server.
#[derive(Clone, Debug, Default)]
pub struct KubeSource {
    /// Empty: all namespaces.
    pub namespaces: Vec<String>,
    /// Applied to Functions only: which Functions this gateway serves.
    pub label_selector: Option<String>,
    /// Applied to Secrets: only those fngate may read (API tokens, Components'
    /// `secretKeyRef`s) are listed, watched and held in memory.
    pub secret_label_selector: Option<String>,
}

impl KubeSource {
    pub fn scopes(&self) -> Vec<Scope> {
        let namespaces: Vec<Option<String>> = if self.namespaces.is_empty() {
            vec![None]
        } else {
            self.namespaces.iter().cloned().map(Some).collect()
        };
        WATCHED_KINDS
            .iter()
            .flat_map(|k| {
                namespaces.iter().map(|ns| Scope {
                    kind: k.kind,
                    namespace: ns.clone(),
                })
            })
            .collect()
    }
}

/// Counts events by kind and outcome.
pub type EventCounter = Arc<dyn Fn(ObjectKind, EventOutcome) + Send + Sync>;

/// Runs one watcher until the process ends, feeding `catalog` and signalling `changed`
/// whenever the snapshot changed.
pub async fn watch_scope(
    client: kube::Client,
    source: KubeSource,
    scope: Scope,
    catalog: Arc<Mutex<KubeCatalog>>,
    changed: Arc<Notify>,
    count: EventCounter,
) {
    let kind = WatchedKind::of(scope.kind);
    let resource = kind.api_resource();
    let api: Api<DynamicObject> = match &scope.namespace {
        Some(ns) => Api::namespaced_with(client, ns, &resource),
        None => Api::all_with(client, &resource),
    };
    let mut config = watcher::Config::default();
    let selector = match kind.kind {
        ObjectKind::Function => source.label_selector.as_ref(),
        ObjectKind::Secret => source.secret_label_selector.as_ref(),
        _ => None,
    };
    if let Some(selector) = selector {
        config = config.labels(selector);
    }
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    while let Some(item) = events.next().await {
        let outcome = match item {
            Ok(event) => {
                let counted = matches!(event, Event::Apply(_) | Event::Delete(_));
                let outcome = catalog.lock().expect("not poisoned").apply(&scope, event);
                if counted {
                    count(kind.kind, outcome);
                }
                outcome
            }
            Err(watcher::Error::InitialListFailed(kube::Error::Api(status)))
                if status.code == 404 || status.code == 403 =>
            {
                let why = if status.code == 404 {
                    format!(
                        "the API server does not serve {}/{} (CRD not installed?); none are read until it does",
                        kind.api_version(),
                        kind.plural
                    )
                } else {
                    format!(
                        "not allowed to list {}/{} (RBAC: get, list, watch needed); none are read until it is",
                        kind.api_version(),
                        kind.plural
                    )
                };
                tracing::warn!(kind = %kind.kind, "{why}");
                catalog
                    .lock()
                    .expect("not poisoned")
                    .not_served(&scope, why)
            }
            Err(e) => {
                tracing::warn!(kind = %kind.kind, namespace = ?scope.namespace, error = %e, "watch failed; retrying with backoff, the current plan keeps serving");
                EventOutcome::Unchanged
            }
        };
        if outcome == EventOutcome::Applied {
            changed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function(name: &str, rv: u64, host: &str, status_url: &str) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "core.openfunction.io/v1beta2", "kind": "Function",
            "metadata": {"name": name, "namespace": "default", "resourceVersion": rv.to_string(),
                         "managedFields": [{"manager": "kubectl", "time": format!("2026-11-01T00:00:{rv:02}Z")}]},
            "spec": {"serving": {"triggers": {"http": {"route": {"hostnames": [host]}}}}},
            "status": {"addresses": [{"type": "External", "value": status_url}]}
        }))
        .unwrap()
    }

    fn scope() -> Scope {
        Scope {
            kind: ObjectKind::Function,
            namespace: None,
        }
    }

    fn listed(catalog: &mut KubeCatalog, objects: Vec<DynamicObject>) {
        catalog.apply(&scope(), Event::Init);
        for o in objects {
            catalog.apply(&scope(), Event::InitApply(o));
        }
        catalog.apply(&scope(), Event::InitDone);
    }

    fn hostnames(catalog: &KubeCatalog) -> Vec<String> {
        catalog
            .snapshot()
            .objects
            .values()
            .filter_map(|e| match &*e.object {
                crate::api::ParsedObject::Function(f) => Some(format!("{:?}", f.spec.serving)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn older_and_duplicate_events_are_dropped_and_a_delete_is_not_undone_by_a_late_update() {
        let mut c = KubeCatalog::new([scope()]);
        listed(&mut c, vec![function("f", 5, "a.example", "")]);
        assert_eq!(
            c.apply(&scope(), Event::Apply(function("f", 7, "b.example", ""))),
            EventOutcome::Applied
        );
        assert_eq!(
            c.apply(&scope(), Event::Apply(function("f", 6, "c.example", ""))),
            EventOutcome::Stale
        );
        assert_eq!(
            c.apply(&scope(), Event::Apply(function("f", 7, "b.example", ""))),
            EventOutcome::Stale
        );
        assert!(hostnames(&c)[0].contains("b.example"));
        assert_eq!(
            c.apply(&scope(), Event::Delete(function("f", 9, "b.example", ""))),
            EventOutcome::Applied
        );
        assert_eq!(
            c.apply(&scope(), Event::Apply(function("f", 8, "b.example", ""))),
            EventOutcome::Stale
        );
        assert!(c.is_empty());
    }

    #[test]
    fn status_and_managed_fields_changes_are_not_changes() {
        let mut c = KubeCatalog::new([scope()]);
        listed(&mut c, vec![function("f", 5, "a.example", "http://old")]);
        assert_eq!(
            c.apply(
                &scope(),
                Event::Apply(function("f", 6, "a.example", "http://new"))
            ),
            EventOutcome::Unchanged
        );
    }

    #[test]
    fn a_relist_replaces_the_kind_and_drops_what_was_deleted_meanwhile() {
        let mut c = KubeCatalog::new([scope()]);
        assert!(!c.synced());
        listed(
            &mut c,
            vec![
                function("f", 5, "a.example", ""),
                function("g", 6, "g.example", ""),
            ],
        );
        assert!(c.synced());
        c.apply(&scope(), Event::Init);
        c.apply(
            &scope(),
            Event::InitApply(function("g", 6, "g.example", "")),
        );
        // Until the relist completes, the old set stays.
        assert_eq!(c.len(), 2);
        c.apply(&scope(), Event::InitDone);
        assert_eq!(c.len(), 1);
        assert!(hostnames(&c)[0].contains("g.example"));
    }

    #[test]
    fn a_relist_older_than_a_delete_does_not_bring_the_object_back() {
        let mut c = KubeCatalog::new([scope()]);
        listed(&mut c, vec![function("f", 5, "a.example", "")]);
        c.apply(&scope(), Event::Delete(function("f", 8, "a.example", "")));
        listed(&mut c, vec![function("f", 5, "a.example", "")]);
        assert!(c.is_empty());
    }

    #[test]
    fn a_malformed_update_keeps_the_last_good_version_and_is_reported() {
        let mut c = KubeCatalog::new([scope()]);
        listed(&mut c, vec![function("f", 5, "a.example", "")]);
        let bad = |rv: u64| -> DynamicObject {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "core.openfunction.io/v1beta2", "kind": "Function",
                "metadata": {"name": "f", "namespace": "default", "resourceVersion": rv.to_string()},
                "spec": {"serving": {"triggers": {"http": {"route": {"hostnames": "not-a-list"}}}}}
            }))
            .unwrap()
        };
        assert_eq!(
            c.apply(&scope(), Event::Apply(bad(6))),
            EventOutcome::Applied
        );
        // A relist that still finds it malformed keeps the last good version too.
        listed(&mut c, vec![bad(7)]);
        let snapshot = c.snapshot();
        assert_eq!(snapshot.objects.len(), 1);
        let report: Vec<String> = snapshot.diagnostics.iter().map(|d| d.to_string()).collect();
        assert!(
            report
                .iter()
                .any(|d| d.contains("Function default/f") && d.contains("hostnames")),
            "{report:?}"
        );
    }
}
