//! `fngate env NAMESPACE/NAME`: the environment a function's own process needs to run
//! against fngate on a laptop — where the Dapr API is, its token, and OpenFunction's
//! `FUNC_CONTEXT` as OpenFunction's controller builds it.

use crate::api::{Function, ObjectKey, ObjectKind, ParsedObject};
use crate::compile::Snapshot;
use crate::plan::Plan;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionContext<'a> {
    name: &'a str,
    version: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    inputs: BTreeMap<String, Io>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    outputs: BTreeMap<String, Io>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    states: BTreeMap<String, StateRef>,
    runtime: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Io {
    #[serde(skip_serializing_if = "Option::is_none")]
    uri: Option<String>,
    component_name: String,
    component_type: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    operation: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StateRef {
    component_name: String,
    component_type: String,
}

/// `(name, value)` pairs in print order; `Err` names what is missing.
pub fn function_env(
    snapshot: &Snapshot,
    plan: &Plan,
    dapr_grpc: Option<SocketAddr>,
    dapr_http: Option<SocketAddr>,
    tls: bool,
    namespace: &str,
    name: &str,
) -> Result<Vec<(String, String)>, String> {
    let key = ObjectKey::new(ObjectKind::Function, namespace, name);
    let function: &Function = match snapshot.objects.get(&key).map(|e| &*e.object) {
        Some(ParsedObject::Function(f)) => f,
        _ => return Err(format!("no Function {namespace}/{name} in the catalog")),
    };
    let app_id = format!("{name}-{namespace}");
    let app = plan.dapr.apps.get(&app_id);
    let mut env = Vec::new();
    // Python's SDK reads DAPR_RUNTIME_HOST, functions-framework-go DAPR_HOST.
    let host = dapr_grpc
        .or(dapr_http)
        .map(|a| match a.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
            ip => ip.to_string(),
        })
        .unwrap_or_else(|| "127.0.0.1".into());
    env.push(("DAPR_HOST".into(), host.clone()));
    env.push(("DAPR_RUNTIME_HOST".into(), host));
    if let Some(a) = dapr_grpc {
        env.push(("DAPR_GRPC_PORT".into(), a.port().to_string()));
    }
    if let Some(a) = dapr_http {
        env.push(("DAPR_HTTP_PORT".into(), a.port().to_string()));
    }
    // Over TLS the SDKs need the endpoints (they win over host and port there).
    if tls {
        let host = env[0].1.clone();
        let endpoint = |a: SocketAddr| format!("https://{host}:{}", a.port());
        if let Some(a) = dapr_grpc {
            env.push(("DAPR_GRPC_ENDPOINT".into(), endpoint(a)));
        }
        if let Some(a) = dapr_http {
            env.push(("DAPR_HTTP_ENDPOINT".into(), endpoint(a)));
        }
    }
    match app.and_then(|a| a.token.as_ref()) {
        Some(t) => env.push(("DAPR_API_TOKEN".into(), t.expose().to_owned())),
        None => {
            return Err(format!(
                "Function {namespace}/{name} has no usable API token: annotate spec.serving.annotations[{}] with the name of a Secret whose key `token` holds it (see `fngate check`)",
                crate::compile::API_TOKEN_ANNOTATION
            ))
        }
    }
    let serving = function.spec.serving.as_ref();
    let mut inputs = BTreeMap::new();
    for t in serving
        .and_then(|s| s.triggers.as_ref())
        .and_then(|t| t.dapr.as_ref())
        .into_iter()
        .flatten()
    {
        inputs.insert(
            t.input_name.clone().unwrap_or_else(|| t.name.clone()),
            Io {
                uri: Some(t.topic.clone().unwrap_or_else(|| t.name.clone())),
                component_name: t.name.clone(),
                component_type: t.kind.clone().unwrap_or_default(),
                metadata: BTreeMap::new(),
                operation: None,
            },
        );
    }
    let mut outputs = BTreeMap::new();
    let mut states = BTreeMap::new();
    if let Some(app) = app {
        for o in &app.outputs {
            outputs.insert(
                o.name.clone(),
                Io {
                    uri: Some(o.topic.clone().unwrap_or_else(|| o.name.clone())),
                    component_name: o.name.clone(),
                    component_type: o.component_type.clone(),
                    metadata: o.metadata.clone(),
                    operation: o.operation.clone(),
                },
            );
        }
        for (n, s) in app.states.iter() {
            states.insert(
                n.to_owned(),
                StateRef {
                    component_name: n.to_owned(),
                    component_type: s.kind.clone(),
                },
            );
        }
    }
    let http = function.http_trigger().is_some();
    let context = FunctionContext {
        name,
        version: function.spec.version.as_deref().unwrap_or("v1.0.0"),
        inputs,
        outputs,
        states,
        runtime: if http { "Knative" } else { "Async" },
        port: http.then(|| "8080".to_owned()),
    };
    env.push((
        "FUNC_CONTEXT".into(),
        serde_json::to_string(&context).expect("plain JSON"),
    ));
    Ok(env)
}

/// `export NAME='value'` with the value quoted for any POSIX shell.
pub fn shell_export(name: &str, value: &str) -> String {
    format!("export {name}='{}'", value.replace('\'', r"'\''"))
}
