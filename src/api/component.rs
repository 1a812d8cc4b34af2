//! `dapr.io/v1alpha1` Component and `v1` Secret: where an event trigger's broker, topic and
//! credentials come from.

use super::ObjectMeta;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A Dapr Component object. Its `spec` has the same shape as a Function's inline
/// components (`spec.serving.bindings` / `spec.serving.pubsub`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Component {
    pub metadata: ObjectMeta,
    pub spec: ComponentSpec,
    /// App-ids allowed to use the component; empty means every app.
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentSpec {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub metadata: Vec<MetadataItem>,
}

/// One `metadata` entry: a literal `value` (any scalar) or a `secretKeyRef`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetadataItem {
    pub name: String,
    #[serde(default)]
    pub value: Option<serde_yaml::Value>,
    #[serde(default)]
    pub secret_key_ref: Option<SecretKeyRef>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SecretKeyRef {
    pub name: String,
    /// Dapr: when empty, the key equals the secret's name.
    #[serde(default)]
    pub key: Option<String>,
}

/// `v1` Secret: `data` is base64 as in Kubernetes, `stringData` plain text.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    #[serde(default)]
    pub string_data: BTreeMap<String, String>,
}

impl std::fmt::Debug for Secret {
    // Values stay out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("metadata", &self.metadata)
            .field(
                "keys",
                &self
                    .data
                    .keys()
                    .chain(self.string_data.keys())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}
