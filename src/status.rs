//! Writes each HTTP Function's `status.route` and `status.addresses` as OpenFunction
//! does, from one replica at a time (the holder of a `coordination.k8s.io` Lease).
//!
//! Status is a pure function of the catalog: no timestamp that changes on every pass (a
//! condition's `lastTransitionTime` moves only when its status or reason does), and it is
//! written only when it differs from what the API server holds. A write comes back as a
//! status-only watch event, which changes no content hash, so it causes no compile and no
//! further write: after convergence an idle cluster sees no status writes at all.

use crate::api::ObjectKind;
use crate::catalog::{resource_version, FunctionStatusView, KubeCatalog, WatchedKind};
use crate::config::LeaseSettings;
use crate::lease::{now_rfc3339, Lease};
use crate::plan::Plan;
use crate::plan_swap::SharedPlan;
use crate::routing::PathCondition;
use crate::telemetry::Metrics;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

pub struct StatusWriter {
    client: kube::Client,
    plan: SharedPlan,
    revisions: watch::Receiver<u64>,
    catalog: Arc<Mutex<KubeCatalog>>,
    metrics: Arc<Metrics>,
    lease: Lease,
    /// What this replica last wrote per Function, and the resourceVersion the write
    /// produced: until the watch delivers that version, the catalog shows the old status
    /// and the write must not be repeated.
    written: HashMap<crate::api::ObjectKey, (Value, u64)>,
}

impl StatusWriter {
    pub fn new(
        client: kube::Client,
        settings: LeaseSettings,
        plan: SharedPlan,
        revisions: watch::Receiver<u64>,
        catalog: Arc<Mutex<KubeCatalog>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let lease = Lease::new(client.clone(), settings.clone(), "status writer");
        StatusWriter {
            client,
            plan,
            revisions,
            catalog,
            metrics,
            lease,
            written: HashMap::new(),
        }
    }

    /// Runs until `stop` fires; then, if this replica holds the Lease, it gives it up so
    /// another replica takes over at its next pass instead of after the lease expires.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let renew_every = self.lease.renew_every();
        loop {
            let (leader, changed) = self.lease.renew().await;
            if changed {
                tracing::info!(identity = %self.lease.identity(), leader, "Function status writer lease");
            }
            self.metrics.status_leader.set(i64::from(leader));
            if leader {
                self.sync().await;
            } else {
                self.written.clear();
            }
            tokio::select! {
                _ = self.revisions.changed() => {}
                _ = tokio::time::sleep(renew_every) => {}
                _ = stop.changed() => {
                    if self.lease.leader() {
                        self.lease.release().await;
                        self.metrics.status_leader.set(0);
                    }
                    return;
                }
            }
        }
    }

    /// Writes every HTTP Function's status that differs from what the server holds.
    async fn sync(&mut self) {
        let plan = self.plan.load_full();
        if plan.revision == 0 {
            return;
        }
        let views = self
            .catalog
            .lock()
            .expect("not poisoned")
            .function_statuses();
        let present: std::collections::HashSet<&crate::api::ObjectKey> =
            views.iter().map(|v| &v.key).collect();
        self.written.retain(|key, _| present.contains(key));
        let api_resource = WatchedKind::of(ObjectKind::Function).api_resource();
        for view in views.into_iter().filter(|v| v.http) {
            let previous = self.written.get(&view.key).map(|(v, _)| v);
            let Some(desired) = desired_status(&plan, &view, previous) else {
                continue;
            };
            if desired == view.observed.written {
                continue;
            }
            if let Some((value, rv)) = self.written.get(&view.key) {
                if *value == desired && view.resource_version.is_some_and(|held| held < *rv) {
                    continue;
                }
            }
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &view.key.namespace, &api_resource);
            let patch = json!({"status": merge_patch_for(&view.observed.written, &desired)});
            match api
                .patch_status(
                    &view.key.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(object) => {
                    let rv = resource_version(&object).unwrap_or(0);
                    self.written.insert(view.key.clone(), (desired, rv));
                    self.metrics
                        .status_writes
                        .with_label_values(&["written"])
                        .inc();
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    self.metrics
                        .status_writes
                        .with_label_values(&["conflict"])
                        .inc();
                }
                // Deleted meanwhile: its watch event is on the way.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => {
                    tracing::warn!(function = %view.key, error = %e, "cannot write Function status; retrying on the next pass");
                    self.metrics
                        .status_writes
                        .with_label_values(&["error"])
                        .inc();
                }
            }
        }
    }
}

/// Merge patch turning `current` into `desired`: keys of `route` that fngate does not
/// produce are removed, so what the server holds afterwards equals `desired` exactly.
fn merge_patch_for(current: &Value, desired: &Value) -> Value {
    let mut patch = desired.clone();
    if let (Some(cur), Some(route)) = (current["route"].as_object(), patch["route"].as_object_mut())
    {
        for key in cur.keys() {
            route.entry(key.clone()).or_insert(Value::Null);
        }
    }
    patch
}

/// The `{"route", "addresses"}` fngate reports for `view`; `None` while the plan has not
/// caught up with the catalog's version of the Function.
fn desired_status(
    plan: &Plan,
    view: &FunctionStatusView,
    previous: Option<&Value>,
) -> Option<Value> {
    let generation = view.observed.generation;
    let object = view.key.to_string();
    let errors: Vec<String> = plan
        .diagnostics
        .iter()
        .filter(|d| d.is_error() && d.object.as_deref() == Some(object.as_str()))
        .map(|d| d.message.clone())
        .collect();
    let observed_conditions = &view.observed.written["route"]["conditions"];
    let previous_conditions = previous.map(|p| &p["route"]["conditions"]);
    let condition = |kind: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let same = |c: &&Value| c["type"] == kind && c["status"] == status && c["reason"] == reason;
        // The transition time moves only when status or reason does.
        let since = [Some(observed_conditions), previous_conditions]
            .into_iter()
            .flatten()
            .filter_map(|cs| cs.as_array()?.iter().find(same))
            .find_map(|c| c["lastTransitionTime"].as_str().map(str::to_owned))
            .unwrap_or_else(|| now_rfc3339(false));
        json!({"type": kind, "status": status, "reason": reason, "message": message,
               "observedGeneration": generation, "lastTransitionTime": since})
    };
    let Some(function) = plan.functions.get(&view.key) else {
        // Not compiled yet, unless the compile reported why it left the Function out.
        let message = errors.first()?.clone();
        return Some(json!({
            "route": {"hosts": [], "paths": [],
                      "conditions": [condition("Accepted", false, "Invalid", message)]},
            "addresses": null,
        }));
    };
    if function.version != view.version {
        return None;
    }
    let mut hosts: Vec<String> = Vec::new();
    let mut paths: Vec<Value> = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    for entry in function.entries.iter() {
        for h in entry.hostnames.iter() {
            if !hosts.contains(h) {
                hosts.push(h.clone());
            }
        }
        let path = match &entry.path {
            PathCondition::Exact(p) => json!({"type": "Exact", "value": p}),
            PathCondition::Prefix(p) => json!({"type": "PathPrefix", "value": p}),
            PathCondition::Regex(p) => json!({"type": "RegularExpression", "value": p}),
        };
        if !paths.contains(&path) {
            paths.push(path);
        }
        for b in entry.rule.backends.iter() {
            let name = format!("{}/{}", b.target.namespace, b.target.service);
            if plan.endpoints.for_target(&b.target).is_none() && !missing.contains(&name) {
                missing.push(name);
            }
        }
    }
    let accepted = if errors.is_empty() {
        condition("Accepted", true, "Accepted", "route accepted".into())
    } else {
        condition(
            "Accepted",
            true,
            "Accepted",
            format!(
                "route accepted without its invalid parts: {}",
                errors.join("; ")
            ),
        )
    };
    let resolved = if missing.is_empty() {
        condition(
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            "every backend Service has endpoints listed".into(),
        )
    } else {
        condition(
            "ResolvedRefs",
            false,
            "BackendNotFound",
            format!("no EndpointSlice for Service {}", missing.join(", ")),
        )
    };
    let first_path = paths
        .iter()
        .find(|p| p["type"] != "RegularExpression")
        .and_then(|p| p["value"].as_str())
        .unwrap_or("/");
    let url = |host: &str| {
        let path = if first_path == "/" {
            "/".to_owned()
        } else {
            format!("{first_path}/")
        };
        format!("http://{host}{path}")
    };
    let mut addresses = Vec::new();
    if let Some(h) = hosts
        .iter()
        .find(|h| !h.contains(".svc.") && !h.starts_with('*'))
    {
        addresses.push(json!({"type": "External", "value": url(h)}));
    }
    if let Some(h) = hosts.iter().find(|h| h.contains(".svc.")) {
        addresses.push(json!({"type": "Internal", "value": url(h)}));
    }
    Some(json!({
        "route": {"hosts": hosts, "paths": paths, "conditions": [accepted, resolved]},
        "addresses": addresses,
    }))
}
