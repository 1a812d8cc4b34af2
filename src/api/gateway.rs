use super::ObjectMeta;
use serde::{Deserialize, Serialize};

/// `networking.openfunction.io/v1alpha1` Gateway: where function hostnames and paths come
/// from, and which listener hostnames routes may attach to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Gateway {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: GatewaySpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub cluster_domain: Option<String>,
    #[serde(default)]
    pub host_template: Option<String>,
    #[serde(default)]
    pub path_template: Option<String>,
    #[serde(default)]
    pub gateway_spec: Option<GatewayListeners>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayListeners {
    #[serde(default)]
    pub listeners: Vec<GatewayListener>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayListener {
    pub name: String,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub protocol: Option<String>,
}

impl Gateway {
    pub fn listeners(&self) -> &[GatewayListener] {
        self.spec
            .gateway_spec
            .as_ref()
            .map(|s| s.listeners.as_slice())
            .unwrap_or(&[])
    }
}
