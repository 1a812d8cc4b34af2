//! `dapr.io/v1alpha1` Configuration, as far as fngate applies it to the app whose
//! `dapr.io/config` annotation names it: secret scopes and service-invocation access
//! control.

use super::ObjectMeta;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Configuration {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ConfigurationSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationSpec {
    #[serde(default)]
    pub secrets: Option<SecretsSpec>,
    #[serde(default)]
    pub access_control: Option<AccessControlSpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SecretsSpec {
    #[serde(default)]
    pub scopes: Vec<SecretsScope>,
}

/// Which keys of one secret store the app may read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretsScope {
    pub store_name: String,
    #[serde(default)]
    pub default_access: Option<String>,
    #[serde(default)]
    pub allowed_secrets: Vec<String>,
    #[serde(default)]
    pub denied_secrets: Vec<String>,
}

/// Who may invoke the app: a default action, and per calling app its operations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessControlSpec {
    #[serde(default)]
    pub default_action: Option<String>,
    #[serde(default)]
    pub trust_domain: Option<String>,
    #[serde(default)]
    pub policies: Vec<AppPolicy>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppPolicy {
    pub app_id: String,
    #[serde(default)]
    pub default_action: Option<String>,
    #[serde(default)]
    pub trust_domain: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub operations: Vec<AppOperation>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppOperation {
    pub name: String,
    #[serde(default)]
    pub http_verb: Vec<String>,
    pub action: String,
}
