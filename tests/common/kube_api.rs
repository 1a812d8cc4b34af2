//! A test double of the Kubernetes API server, in process, for the resources fngate reads
//! and writes. It keeps what a client depends on:
//!
//! - one resourceVersion counter for all objects (etcd's revision), bumped on every write;
//!   `metadata.generation` bumped only when something other than `status` changes;
//! - list (`items` without kind/apiVersion, the list's `metadata.resourceVersion`), label
//!   selectors `k=v,...`;
//! - watch from a resourceVersion: history replayed, then live ADDED/MODIFIED/DELETED,
//!   BOOKMARKs when asked for, an object leaving the selector sent as DELETED; a
//!   resourceVersion older than the compaction point gets the `ERROR` event with a 410
//!   `Expired` Status, as the real server sends it;
//! - get/create/replace/delete of single objects with 409 on a stale resourceVersion,
//!   and the `status` subresource (PUT, JSON merge PATCH) that changes only `status`.
//!
//! Test hooks: `apply`/`delete` as a controller would, `compact` (expire every watch),
//! `inject` (send a raw event to the open watches only: the out-of-order or duplicate
//! event a lagging cache can deliver), counters of status writes.
#![allow(dead_code)]

use bytes::Bytes;
use fngate::routing::percent_decode;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// `group/version` + plural + namespace + name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Key {
    api_version: String,
    plural: String,
    namespace: String,
    name: String,
}

struct Event {
    rv: u64,
    kind: &'static str,
    api_version: String,
    plural: String,
    namespace: String,
    /// The object before this event (None when created).
    old: Option<Value>,
    object: Value,
}

struct Watch {
    api_version: String,
    plural: String,
    namespace: Option<String>,
    selector: Vec<(String, String)>,
    tx: mpsc::UnboundedSender<Value>,
}

#[derive(Default)]
struct State {
    rv: u64,
    compacted: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Event>,
    watches: Vec<Watch>,
    status_writes: usize,
    writes_by_path: BTreeMap<String, usize>,
    lists: usize,
    watch_requests: usize,
    /// false: every request gets 503 (an API server outage).
    unavailable: bool,
    /// Resources answered with 404, as for a CRD that is not installed.
    unserved: Vec<String>,
}

pub struct FakeApiServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _runtime: tokio::runtime::Runtime,
}

pub fn plural_of(kind: &str) -> String {
    match kind {
        "EndpointSlice" => "endpointslices".into(),
        other => format!("{}s", other.to_lowercase()),
    }
}

fn api_version_of(group: Option<&str>, version: &str) -> String {
    match group {
        Some(g) => format!("{g}/{version}"),
        None => version.to_owned(),
    }
}

fn labels_match(object: &Value, selector: &[(String, String)]) -> bool {
    selector
        .iter()
        .all(|(k, v)| object["metadata"]["labels"][k].as_str() == Some(v.as_str()))
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn without_status(object: &Value) -> Value {
    let mut o = object.clone();
    if let Some(map) = o.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for volatile in ["resourceVersion", "generation", "managedFields", "uid"] {
                meta.remove(volatile);
            }
        }
    }
    o
}

fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

impl State {
    /// Stores `object` (created or replaced) and records the event. `status_only` keeps
    /// the stored spec and takes only `status` from `object`.
    fn write(&mut self, key: Key, mut object: Value, status_only: bool) -> Value {
        self.rv += 1;
        let old = self.objects.get(&key).cloned();
        if let Some(prev) = &old {
            if status_only {
                let mut merged = prev.clone();
                merged["status"] = object.get("status").cloned().unwrap_or(Value::Null);
                object = merged;
            } else if object.get("status").is_none() {
                if let Some(s) = prev.get("status") {
                    object["status"] = s.clone();
                }
            }
            let generation = prev["metadata"]["generation"].as_i64().unwrap_or(1);
            let changed = without_status(prev) != without_status(&object);
            object["metadata"]["generation"] = json!(generation + i64::from(changed));
            object["metadata"]["uid"] = prev["metadata"]["uid"].clone();
            object["metadata"]["creationTimestamp"] = prev["metadata"]["creationTimestamp"].clone();
        } else {
            object["metadata"]["generation"] = json!(1);
            object["metadata"]["uid"] = json!(format!("uid-{}", self.rv));
            if object["metadata"].get("creationTimestamp").is_none() {
                object["metadata"]["creationTimestamp"] = json!("2026-11-01T00:00:00Z");
            }
        }
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        object["metadata"]["namespace"] = json!(key.namespace);
        object["metadata"]["name"] = json!(key.name);
        self.objects.insert(key.clone(), object.clone());
        self.record(Event {
            rv: self.rv,
            kind: if old.is_some() { "MODIFIED" } else { "ADDED" },
            api_version: key.api_version,
            plural: key.plural,
            namespace: key.namespace,
            old,
            object: object.clone(),
        });
        object
    }

    fn remove(&mut self, key: &Key) -> Option<Value> {
        let mut object = self.objects.remove(key)?;
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(Event {
            rv: self.rv,
            kind: "DELETED",
            api_version: key.api_version.clone(),
            plural: key.plural.clone(),
            namespace: key.namespace.clone(),
            old: None,
            object: object.clone(),
        });
        Some(object)
    }

    fn record(&mut self, event: Event) {
        self.watches.retain(|w| match watch_frame(w, &event) {
            Some(frame) => w.tx.send(frame).is_ok(),
            None => !w.tx.is_closed(),
        });
        self.history.push(event);
    }
}

/// What watch `w` sees of `event`, if anything.
fn watch_frame(w: &Watch, event: &Event) -> Option<Value> {
    if w.api_version != event.api_version || w.plural != event.plural {
        return None;
    }
    if w.namespace
        .as_ref()
        .is_some_and(|ns| *ns != event.namespace)
    {
        return None;
    }
    let matches_now = labels_match(&event.object, &w.selector);
    let matched_before = event
        .old
        .as_ref()
        .is_some_and(|o| labels_match(o, &w.selector));
    let kind = match (matched_before, matches_now, event.kind) {
        (_, true, "MODIFIED") if !matched_before => "ADDED",
        (_, true, kind) => kind,
        (true, false, _) => "DELETED",
        (false, false, _) => return None,
    };
    Some(json!({"type": kind, "object": event.object}))
}

fn full(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("response")
}

struct Path {
    api_version: String,
    namespace: Option<String>,
    plural: String,
    name: Option<String>,
    status: bool,
}

/// `/api/v1[/namespaces/NS]/PLURAL[/NAME[/status]]`, `/apis/G/V[/namespaces/NS]/...`.
fn parse_path(path: &str) -> Option<Path> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => (api_version_of(None, v), rest),
        ["apis", g, v, rest @ ..] => (api_version_of(Some(g), v), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    let (plural, name, status) = match rest {
        [plural] => (plural, None, false),
        [plural, name] => (plural, Some(name.to_string()), false),
        [plural, name, "status"] => (plural, Some(name.to_string()), true),
        _ => return None,
    };
    Some(Path {
        api_version,
        namespace,
        plural: plural.to_string(),
        name,
        status,
    })
}

fn query_params(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), percent_decode(v))
        })
        .collect()
}

fn parse_selector(s: Option<&String>) -> Vec<(String, String)> {
    s.map(|s| {
        s.split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim_end_matches('=').to_owned(), v.to_owned()))
            .collect()
    })
    .unwrap_or_default()
}

impl FakeApiServer {
    pub fn start() -> FakeApiServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        // Bookmarks, as the real server sends them about once a minute (here: often).
        let shared = state.clone();
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let mut s = shared.lock().unwrap();
                let rv = s.rv;
                s.watches.retain(|w| {
                    let bookmark = json!({"type": "BOOKMARK", "object": {
                        "apiVersion": w.api_version, "kind": "Bookmark",
                        "metadata": {"resourceVersion": rv.to_string(),
                                     "annotations": {"k8s.io/initial-events-end": "true"}}}});
                    w.tx.send(bookmark).is_ok()
                });
            }
        });
        FakeApiServer {
            addr,
            state,
            _runtime: runtime,
        }
    }

    /// A kubeconfig file pointing at this server, written into `dir`.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user:\n    token: test\n",
                self.addr
            ),
        )
        .unwrap();
        path
    }

    fn key_of(object: &Value) -> Key {
        let kind = object["kind"].as_str().expect("kind");
        Key {
            api_version: object["apiVersion"]
                .as_str()
                .expect("apiVersion")
                .to_owned(),
            plural: plural_of(kind),
            namespace: object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_owned(),
            name: object["metadata"]["name"]
                .as_str()
                .expect("metadata.name")
                .to_owned(),
        }
    }

    /// Creates or replaces an object (a YAML or JSON text of one object), as `kubectl
    /// apply` would. Returns its new resourceVersion.
    pub fn apply(&self, text: &str) -> u64 {
        let object: Value = serde_yaml::from_str(text).expect("object YAML");
        let key = Self::key_of(&object);
        let mut s = self.state.lock().unwrap();
        s.write(key, object, false);
        s.rv
    }

    /// Sets an object's `status` as its controller would.
    pub fn set_status(&self, api_version: &str, kind: &str, ns: &str, name: &str, status: Value) {
        let key = Key {
            api_version: api_version.into(),
            plural: plural_of(kind),
            namespace: ns.into(),
            name: name.into(),
        };
        let mut s = self.state.lock().unwrap();
        s.write(key, json!({"status": status}), true);
    }

    pub fn delete(&self, api_version: &str, kind: &str, ns: &str, name: &str) {
        let key = Key {
            api_version: api_version.into(),
            plural: plural_of(kind),
            namespace: ns.into(),
            name: name.into(),
        };
        self.state
            .lock()
            .unwrap()
            .remove(&key)
            .expect("object exists");
    }

    pub fn get(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let key = Key {
            api_version: api_version.into(),
            plural: plural_of(kind),
            namespace: ns.into(),
            name: name.into(),
        };
        self.state.lock().unwrap().objects.get(&key).cloned()
    }

    /// Forgets history up to now: every open watch ends with 410 Gone and a client must
    /// relist (as after etcd compaction or a long disconnect).
    pub fn compact(&self) {
        let mut s = self.state.lock().unwrap();
        s.compacted = s.rv;
        s.history.clear();
        let gone =
            json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")});
        for w in s.watches.drain(..) {
            let _ = w.tx.send(gone.clone());
        }
    }

    /// Sends a raw watch event (`type`, object text) to the open watches of that object's
    /// resource, without changing what the server holds.
    pub fn inject(&self, event_type: &str, text: &str) {
        let object: Value = serde_yaml::from_str(text).expect("object YAML");
        let key = Self::key_of(&object);
        let s = self.state.lock().unwrap();
        for w in &s.watches {
            if w.api_version == key.api_version && w.plural == key.plural {
                let _ = w.tx.send(json!({"type": event_type, "object": object}));
            }
        }
    }

    /// An outage: open watches end without an event and every request gets 503 until
    /// `set_available(true)`.
    pub fn set_available(&self, up: bool) {
        let mut s = self.state.lock().unwrap();
        s.unavailable = !up;
        if !up {
            s.watches.clear();
        }
    }

    /// Answers 404 for `plural`, as for a CRD that is not installed.
    pub fn unserve(&self, plural: &str) {
        self.state.lock().unwrap().unserved.push(plural.to_owned());
    }

    /// Open watch streams.
    pub fn watch_count(&self) -> usize {
        let mut s = self.state.lock().unwrap();
        s.watches.retain(|w| !w.tx.is_closed());
        s.watches.len()
    }

    pub fn status_writes(&self) -> usize {
        self.state.lock().unwrap().status_writes
    }

    /// Writes (POST/PUT/PATCH/DELETE) by clients to paths containing `fragment`.
    pub fn writes_to(&self, fragment: &str) -> usize {
        let s = self.state.lock().unwrap();
        s.writes_by_path
            .iter()
            .filter(|(p, _)| p.contains(fragment))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn lists(&self) -> usize {
        self.state.lock().unwrap().lists
    }

    pub fn resource_version(&self) -> u64 {
        self.state.lock().unwrap().rv
    }
}

async fn handle(state: Arc<Mutex<State>>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let Some(path) = parse_path(uri.path()) else {
        return full(404, &status(404, "NotFound", "no such path"));
    };
    {
        let s = state.lock().unwrap();
        if s.unavailable {
            return full(
                503,
                &status(503, "ServiceUnavailable", "the API server is down"),
            );
        }
        if s.unserved.contains(&path.plural) {
            return full(
                404,
                &status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            );
        }
    }
    let params = query_params(uri.query());
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if method != hyper::Method::GET {
        *state
            .lock()
            .unwrap()
            .writes_by_path
            .entry(uri.path().to_owned())
            .or_default() += 1;
    }
    match (method.as_str(), &path.name) {
        ("GET", None) if matches!(params.get("watch").map(String::as_str), Some("true" | "1")) => {
            watch(state, path, params)
        }
        ("GET", None) => list(&state, &path, &params),
        ("GET", Some(name)) => {
            let s = state.lock().unwrap();
            match s.objects.get(&key(&path, name)) {
                Some(o) => full(200, o),
                None => full(404, &status(404, "NotFound", "not found")),
            }
        }
        ("POST", None) => {
            let Ok(object) = serde_json::from_slice::<Value>(&body) else {
                return full(400, &status(400, "BadRequest", "invalid JSON"));
            };
            let name = object["metadata"]["name"].as_str().unwrap_or("").to_owned();
            let k = key(&path, &name);
            let mut s = state.lock().unwrap();
            if s.objects.contains_key(&k) {
                return full(409, &status(409, "AlreadyExists", "already exists"));
            }
            let stored = s.write(k, object, false);
            full(201, &stored)
        }
        ("PUT", Some(name)) => {
            let Ok(object) = serde_json::from_slice::<Value>(&body) else {
                return full(400, &status(400, "BadRequest", "invalid JSON"));
            };
            let k = key(&path, name);
            let mut s = state.lock().unwrap();
            let Some(current) = s.objects.get(&k) else {
                return full(404, &status(404, "NotFound", "not found"));
            };
            if object["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                return full(
                    409,
                    &status(409, "Conflict", "the object has been modified"),
                );
            }
            if path.status {
                s.status_writes += 1;
            }
            let stored = s.write(k, object, path.status);
            full(200, &stored)
        }
        ("PATCH", Some(name)) => {
            if !content_type.starts_with("application/merge-patch+json") {
                return full(
                    415,
                    &status(
                        415,
                        "UnsupportedMediaType",
                        "this double takes merge patches",
                    ),
                );
            }
            let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                return full(400, &status(400, "BadRequest", "invalid JSON"));
            };
            let k = key(&path, name);
            let mut s = state.lock().unwrap();
            let Some(current) = s.objects.get(&k).cloned() else {
                return full(404, &status(404, "NotFound", "not found"));
            };
            if let Some(rv) = patch["metadata"].get("resourceVersion") {
                if *rv != current["metadata"]["resourceVersion"] {
                    return full(
                        409,
                        &status(409, "Conflict", "the object has been modified"),
                    );
                }
            }
            let mut patched = current;
            merge_patch(&mut patched, &patch);
            if path.status {
                s.status_writes += 1;
            }
            let stored = s.write(k, patched, path.status);
            full(200, &stored)
        }
        ("DELETE", Some(name)) => {
            let mut s = state.lock().unwrap();
            match s.remove(&key(&path, name)) {
                Some(o) => full(200, &o),
                None => full(404, &status(404, "NotFound", "not found")),
            }
        }
        _ => full(405, &status(405, "MethodNotAllowed", "not supported")),
    }
}

fn key(path: &Path, name: &str) -> Key {
    Key {
        api_version: path.api_version.clone(),
        plural: path.plural.clone(),
        namespace: path.namespace.clone().unwrap_or_default(),
        name: name.to_owned(),
    }
}

fn in_scope(k: &Key, path: &Path) -> bool {
    k.api_version == path.api_version
        && k.plural == path.plural
        && path.namespace.as_ref().is_none_or(|ns| *ns == k.namespace)
}

fn list(state: &Mutex<State>, path: &Path, params: &BTreeMap<String, String>) -> Response<Body> {
    let selector = parse_selector(params.get("labelSelector"));
    let mut s = state.lock().unwrap();
    s.lists += 1;
    let items: Vec<Value> = s
        .objects
        .iter()
        .filter(|(k, o)| in_scope(k, path) && labels_match(o, &selector))
        .map(|(_, o)| {
            // Typed lists carry kind and apiVersion once, not per item.
            let mut o = o.clone();
            if let Some(m) = o.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            o
        })
        .collect();
    full(
        200,
        &json!({"apiVersion": path.api_version, "kind": "List",
                "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
    )
}

fn watch(state: Arc<Mutex<State>>, path: Path, params: BTreeMap<String, String>) -> Response<Body> {
    let (tx, rx) = mpsc::unbounded_channel::<Value>();
    let selector = parse_selector(params.get("labelSelector"));
    let from: Option<u64> = params
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
        .map(|v| v.parse().unwrap_or(0));
    {
        let mut s = state.lock().unwrap();
        s.watch_requests += 1;
        let w = Watch {
            api_version: path.api_version.clone(),
            plural: path.plural.clone(),
            namespace: path.namespace.clone(),
            selector: selector.clone(),
            tx: tx.clone(),
        };
        match from {
            Some(rv) if rv < s.compacted => {
                let _ = tx.send(json!({"type": "ERROR",
                    "object": status(410, "Expired", &format!("too old resource version: {rv} ({})", s.compacted))}));
                drop(tx);
                return stream_response(rx);
            }
            Some(rv) => {
                for e in s.history.iter().filter(|e| e.rv > rv) {
                    if let Some(frame) = watch_frame(&w, e) {
                        let _ = tx.send(frame);
                    }
                }
            }
            None => {
                for (k, o) in &s.objects {
                    if in_scope(k, &path) && labels_match(o, &selector) {
                        let _ = tx.send(json!({"type": "ADDED", "object": o}));
                    }
                }
            }
        }
        s.watches.push(w);
    }
    stream_response(rx)
}

fn stream_response(rx: mpsc::UnboundedReceiver<Value>) -> Response<Body> {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        let mut line = event.to_string();
        line.push('\n');
        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(line))), rx))
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("response")
}
