//! Snapshot -> Plan. Pure: no I/O. All defaulting and validation of objects happens here,
//! and every problem becomes a `Diagnostic`; a bad object is left out (or its last good
//! version kept) while every good object still serves.

mod endpoints;
mod field;
mod filters;
mod gateway;
mod route;
mod runtime;
mod sql_state;
mod triggers;

pub use gateway::{GatewayDefaults, DEFAULT_GATEWAY};
pub use route::HOLD_TIMEOUT_ANNOTATION;
pub use runtime::API_TOKEN_ANNOTATION;
pub use triggers::kafka_legal;
pub use triggers::{EventDefaults, CONCURRENCY_ANNOTATION, MAX_ATTEMPTS_ANNOTATION};

use crate::api::{Diagnostic, Function, ObjectKey, ObjectKind, ParsedObject};
use crate::plan::{CompiledFunction, Plan};
use crate::routing::{EntrySet, RouteTable};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One object as the catalog holds it. Shared, so a snapshot costs pointers, not a copy
/// of every object (10,000 Functions are tens of MB as typed objects).
#[derive(Clone, Debug)]
pub struct CatalogEntry {
    pub object: Arc<ParsedObject>,
    pub file: Option<Arc<str>>,
    /// Content hash or resourceVersion-derived number; equal means unchanged.
    pub version: u64,
}

/// Everything the catalog knows at one moment, plus the problems it met reading it.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub objects: BTreeMap<ObjectKey, CatalogEntry>,
    pub diagnostics: Vec<Diagnostic>,
}

#[derive(Clone, Debug)]
pub struct CompileSettings {
    /// `namespace/name` of the Gateway used when a Function names none.
    pub gateway: String,
    pub events: EventDefaults,
}

impl Default for CompileSettings {
    fn default() -> Self {
        CompileSettings {
            gateway: "openfunction/openfunction".into(),
            events: EventDefaults::default(),
        }
    }
}

/// Compiles a snapshot. `previous` supplies last good versions of Functions that are now
/// invalid. The returned plan has revision 0; the plan_swap numbers it.
///
/// Incremental where it is safe: a Function whose version and Gateways are those of the
/// previous plan keeps its compiled entries (and their diagnostics), endpoints are reused
/// while no EndpointSlice changed (and per Service otherwise), and the route table is
/// the previous one with only the changed Functions' hosts rebuilt — one change among
/// 10,000 Functions costs little.
pub fn compile(snapshot: &Snapshot, settings: &CompileSettings, previous: Option<&Plan>) -> Plan {
    compile_hashed(snapshot, snapshot.content_hash(), settings, previous)
}

/// `compile` for a caller that already has `snapshot.content_hash()`.
pub fn compile_hashed(
    snapshot: &Snapshot,
    content_hash: String,
    settings: &CompileSettings,
    previous: Option<&Plan>,
) -> Plan {
    let mut diagnostics = snapshot.diagnostics.clone();
    let gateways = gateway::GatewayIndex::new(snapshot, settings);
    let gateway_fingerprint = gateway_fingerprint(snapshot, settings);
    let reusable = previous.filter(|p| p.gateway_fingerprint == gateway_fingerprint);
    let endpoints = endpoints::build(snapshot, previous.map(|p| &p.endpoints));
    diagnostics.extend(endpoints.diagnostics.iter().cloned());
    let triggers = triggers::build(
        snapshot,
        settings,
        previous.map(|p| &p.triggers),
        &mut diagnostics,
    );
    let dapr = runtime::build(snapshot, previous.map(|p| &p.dapr), &mut diagnostics);
    let mut functions: BTreeMap<ObjectKey, Arc<CompiledFunction>> = BTreeMap::new();
    let (mut removed, mut added): (Vec<EntrySet>, Vec<EntrySet>) = (Vec::new(), Vec::new());

    for (key, entry, function) in snapshot.functions() {
        let Some(_) = function.http_trigger() else {
            continue;
        };
        let before = previous.and_then(|p| p.functions.get(key));
        let chosen = match reusable
            .and(before)
            .filter(|cf| cf.version == entry.version)
        {
            Some(unchanged) => {
                diagnostics.extend(unchanged.diagnostics.iter().cloned());
                Some(unchanged.clone())
            }
            None => {
                let gw = gateways.for_function(function);
                let compiled = route::compile_function(function, &gw);
                let label = key.to_string();
                let file = entry.file.as_deref();
                let mut problems: Vec<Diagnostic> = compiled
                    .diagnostics
                    .into_iter()
                    .map(|d| d.on_object(label.clone()).in_file(file))
                    .collect();
                let has_errors = problems.iter().any(Diagnostic::is_error);
                let chosen = if has_errors {
                    before.map(|last_good| {
                        problems.push(
                            Diagnostic::warning(
                                "object rejected; still serving its last good version",
                            )
                            .on_object(label.clone())
                            .in_file(file),
                        );
                        last_good.clone()
                    })
                } else {
                    Some(Arc::new(CompiledFunction {
                        version: entry.version,
                        entries: compiled.entries.into(),
                        diagnostics: problems.clone(),
                    }))
                };
                diagnostics.extend(problems);
                chosen
            }
        };
        let Some(cf) = chosen else {
            continue;
        };
        match before {
            Some(b) if Arc::ptr_eq(b, &cf) => {}
            Some(b) => {
                removed.push(b.entries.clone());
                added.push(cf.entries.clone());
            }
            None => added.push(cf.entries.clone()),
        }
        functions.insert(key.clone(), cf);
    }
    let routes = match reusable {
        Some(p) => {
            // Functions gone since (deleted, or no longer HTTP).
            removed.extend(
                p.functions
                    .iter()
                    .filter(|(k, _)| !functions.contains_key(*k))
                    .map(|(_, cf)| cf.entries.clone()),
            );
            p.routes.updated(&removed, &added)
        }
        None => RouteTable::from_sets(functions.values().map(|cf| cf.entries.clone())),
    };
    diagnostics.sort();
    diagnostics.dedup();
    Plan {
        revision: 0,
        content_hash,
        routes,
        endpoints,
        functions,
        triggers,
        dapr,
        diagnostics,
        gateway_fingerprint,
    }
}

/// Identity of everything besides the Function itself that its compiled routes depend on.
fn gateway_fingerprint(snapshot: &Snapshot, settings: &CompileSettings) -> u64 {
    let mut h = Sha256::new();
    h.update(settings.gateway.as_bytes());
    let start = ObjectKey::new(ObjectKind::Gateway, "", "");
    for (key, entry) in snapshot.objects.range(start..) {
        if key.kind != ObjectKind::Gateway {
            break;
        }
        h.update(key.namespace.as_bytes());
        h.update([0]);
        h.update(key.name.as_bytes());
        h.update(entry.version.to_be_bytes());
    }
    u64::from_be_bytes(h.finalize()[..8].try_into().expect("32 bytes"))
}

impl Snapshot {
    /// Every Function, in key order (the `Function` range of the sorted object map).
    pub fn functions(&self) -> impl Iterator<Item = (&ObjectKey, &CatalogEntry, &Function)> {
        self.objects
            .range(ObjectKey::new(ObjectKind::Function, "", "")..)
            .take_while(|(key, _)| key.kind == ObjectKind::Function)
            .filter_map(|(key, entry)| match &*entry.object {
                ParsedObject::Function(f) => Some((key, entry, &**f)),
                _ => None,
            })
    }

    /// Hash of every object's identity and version (hex); equal means same content.
    pub fn content_hash(&self) -> String {
        let mut h = Sha256::new();
        for (key, entry) in &self.objects {
            h.update([key.kind as u8]);
            h.update(key.namespace.as_bytes());
            h.update([0]);
            h.update(key.name.as_bytes());
            h.update([0]);
            h.update(entry.version.to_be_bytes());
        }
        let d = h.finalize();
        d[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}
