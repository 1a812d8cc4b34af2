//! OpenFunction `Function`: v1beta2 is the model; v1beta1 is read and converted the way
//! OpenFunction v1.1.0's conversion webhook does (runtime knative -> HTTP trigger,
//! runtime async + inputs -> Dapr triggers).

use super::{ComponentSpec, ObjectMeta, RouteSpec, SortedMap, StringMap};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

type Yaml = serde_yaml::Value;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Function {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: FunctionSpec,
    /// Only `status.serving.service` is read. Not serialised without it, so a status
    /// appearing or changing elsewhere leaves the content hash alone.
    #[serde(default, skip_serializing_if = "FunctionStatus::names_no_service")]
    pub status: Option<FunctionStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionSpec {
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub serving: Option<ServingSpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServingSpec {
    #[serde(default)]
    pub triggers: Option<Triggers>,
    #[serde(default)]
    pub annotations: StringMap,
    #[serde(default)]
    pub labels: StringMap,
    #[serde(default)]
    pub scale_options: Option<Yaml>,
    /// Of the pod template, only the function container's HTTP readiness path is kept.
    #[serde(
        default,
        rename = "template",
        deserialize_with = "template_readiness_path",
        skip_serializing_if = "Option::is_none"
    )]
    pub readiness_path: Option<String>,
    #[serde(default)]
    pub bindings: Option<SortedMap<ComponentSpec>>,
    #[serde(default)]
    pub pubsub: Option<SortedMap<ComponentSpec>>,
    #[serde(default)]
    pub states: Option<SortedMap<StateEntry>>,
    #[serde(default)]
    pub outputs: Option<Vec<FunctionOutput>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Triggers {
    #[serde(default)]
    pub http: Option<HttpTrigger>,
    #[serde(default)]
    pub dapr: Option<Vec<DaprTrigger>>,
    #[serde(default)]
    pub inputs: Option<Vec<TriggerInput>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpTrigger {
    #[serde(default)]
    pub port: Option<i32>,
    #[serde(default)]
    pub route: Option<RouteSpec>,
    /// v1.2.0 (`knative` | `keda`); read so v1.2.0 objects load, not acted on.
    #[serde(default)]
    pub engine: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DaprTrigger {
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub input_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TriggerInput {
    /// OpenFunction v1.1.0 spells this key `dap`; v1.2.0 fixed it to `dapr`.
    #[serde(default, alias = "dap")]
    pub dapr: Option<DaprIo>,
}

/// One `spec.serving.states` entry, read leniently: a malformed entry keeps its error
/// (reported at compile, naming the entry) instead of rejecting the whole Function.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum StateEntry {
    Store(StateStore),
    Invalid(String),
}

impl<'de> Deserialize<'de> for StateEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Yaml::deserialize(d)?;
        Ok(match serde_yaml::from_value::<StateStore>(raw) {
            Ok(store) => StateEntry::Store(store),
            Err(e) => StateEntry::Invalid(e.to_string()),
        })
    }
}

/// A well-formed `spec.serving.states` entry: v1beta2 wraps the component spec in `spec`;
/// the state-management proposal shows it bare. Both are read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StateStore {
    Wrapped { spec: ComponentSpec },
    Bare(ComponentSpec),
}

impl StateStore {
    pub fn spec(&self) -> &ComponentSpec {
        match self {
            StateStore::Wrapped { spec } | StateStore::Bare(spec) => spec,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionOutput {
    #[serde(default)]
    pub dapr: Option<DaprIo>,
}

/// A Dapr component reference used as an input or output.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DaprIo {
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub operation: Option<String>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    #[serde(default)]
    pub serving: Option<ServingStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServingStatus {
    #[serde(default)]
    pub service: Option<String>,
}

/// `readinessProbe.httpGet.path` of the pod template's function container (the one
/// named `function`, else the first).
fn template_readiness_path<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    let template = Option::<Yaml>::deserialize(d)?;
    let containers = template
        .as_ref()
        .and_then(|t| t.get("containers"))
        .and_then(Yaml::as_sequence);
    let Some(containers) = containers else {
        return Ok(None);
    };
    let container = containers
        .iter()
        .find(|c| c.get("name").and_then(Yaml::as_str) == Some("function"))
        .or_else(|| containers.first());
    Ok(container
        .and_then(|c| c.get("readinessProbe"))
        .and_then(|p| p.get("httpGet"))
        .and_then(|h| h.get("path"))
        .and_then(Yaml::as_str)
        .filter(|p| p.starts_with('/'))
        .map(str::to_owned))
}

impl FunctionStatus {
    fn names_no_service(status: &Option<FunctionStatus>) -> bool {
        status
            .as_ref()
            .and_then(|s| s.serving.as_ref())
            .is_none_or(|s| s.service.is_none())
    }
}

impl Function {
    pub fn http_trigger(&self) -> Option<&HttpTrigger> {
        self.spec.serving.as_ref()?.triggers.as_ref()?.http.as_ref()
    }

    /// The Service whose endpoints serve this function: `status.serving.service` once
    /// OpenFunction has set it, else a Service named like the Function.
    pub fn service_name(&self) -> &str {
        self.status
            .as_ref()
            .and_then(|s| s.serving.as_ref())
            .and_then(|s| s.service.as_deref())
            .filter(|s| !s.is_empty())
            .unwrap_or(&self.metadata.name)
    }
}

// ---- v1beta1 ----

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FunctionV1beta1 {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: SpecV1beta1,
    #[serde(default)]
    pub status: Option<FunctionStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SpecV1beta1 {
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub port: Option<i32>,
    #[serde(default)]
    pub route: Option<RouteSpec>,
    #[serde(default)]
    pub serving: Option<ServingV1beta1>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ServingV1beta1 {
    #[serde(default)]
    pub runtime: Option<String>,
    #[serde(default)]
    pub annotations: StringMap,
    #[serde(default)]
    pub labels: StringMap,
    #[serde(default)]
    pub scale_options: Option<Yaml>,
    #[serde(
        default,
        rename = "template",
        deserialize_with = "template_readiness_path"
    )]
    pub readiness_path: Option<String>,
    #[serde(default)]
    pub inputs: Option<Vec<IoV1beta1>>,
    #[serde(default)]
    pub outputs: Option<Vec<IoV1beta1>>,
    #[serde(default)]
    pub bindings: Option<SortedMap<ComponentSpec>>,
    #[serde(default)]
    pub pubsub: Option<SortedMap<ComponentSpec>>,
    #[serde(default)]
    pub states: Option<SortedMap<StateEntry>>,
    /// KEDA triggers in v1beta1 (a list): read so the object loads; not fngate's concern.
    #[serde(default)]
    #[allow(dead_code)]
    pub triggers: Option<Vec<Yaml>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IoV1beta1 {
    #[serde(default)]
    pub name: Option<String>,
    pub component: String,
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub operation: Option<String>,
    #[serde(default)]
    pub params: Option<BTreeMap<String, String>>,
}

impl FunctionV1beta1 {
    pub(crate) fn into_v1beta2(self) -> Function {
        let serving = self.spec.serving.unwrap_or_default();
        let component_type = |name: &str| {
            serving
                .bindings
                .as_ref()
                .and_then(|b| b.get(name))
                .or_else(|| serving.pubsub.as_ref().and_then(|p| p.get(name)))
                .map(|c| c.kind.clone())
        };
        let is_async = serving.runtime.as_deref() == Some("async");
        let http = (!is_async).then(|| HttpTrigger {
            port: self.spec.port,
            route: self.spec.route.clone(),
            engine: None,
        });
        let dapr = serving.inputs.as_ref().map(|inputs| {
            inputs
                .iter()
                .map(|i| DaprTrigger {
                    name: i.component.clone(),
                    kind: component_type(&i.component),
                    topic: i.topic.clone(),
                    input_name: i.name.clone(),
                })
                .collect()
        });
        let outputs = serving.outputs.as_ref().map(|outputs| {
            outputs
                .iter()
                .map(|o| FunctionOutput {
                    dapr: Some(DaprIo {
                        name: o.component.clone(),
                        kind: component_type(&o.component),
                        topic: o.topic.clone(),
                        operation: o.operation.clone(),
                        metadata: o.params.clone(),
                    }),
                })
                .collect()
        });
        Function {
            metadata: self.metadata,
            spec: FunctionSpec {
                version: self.spec.version,
                image: self.spec.image,
                serving: Some(ServingSpec {
                    triggers: Some(Triggers {
                        http,
                        dapr,
                        inputs: None,
                    }),
                    annotations: serving.annotations.clone(),
                    labels: serving.labels.clone(),
                    scale_options: serving.scale_options.clone(),
                    readiness_path: serving.readiness_path.clone(),
                    bindings: serving.bindings.clone(),
                    pubsub: serving.pubsub.clone(),
                    states: serving.states.clone(),
                    outputs,
                }),
            },
            status: self.status,
        }
    }
}
