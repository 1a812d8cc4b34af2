//! The metadata call on both surfaces.

use super::super::error::ApiError;
use super::super::http::{reply, Reply};
use super::super::DaprApi;
use crate::plan::DaprApp;
use dapr::dapr::proto::runtime::v1 as rt;
use serde_json::Value;

pub(crate) async fn grpc_get(
    api: &DaprApi,
    app: &DaprApp,
    _r: rt::GetMetadataRequest,
) -> Result<rt::GetMetadataResponse, ApiError> {
    Ok(rt::GetMetadataResponse {
        id: app.app_id.clone(),
        runtime_version: super::super::RUNTIME_VERSION.into(),
        registered_components: api
            .components(app)
            .into_iter()
            .map(
                |(name, r#type, version, capabilities)| rt::RegisteredComponents {
                    name,
                    r#type,
                    version,
                    capabilities,
                },
            )
            .collect(),
        ..Default::default()
    })
}

pub(crate) fn http_get(api: &DaprApi, app: &DaprApp) -> Reply {
    let components: Vec<Value> = api
        .components(app)
        .into_iter()
        .map(|(name, kind, version, caps)| {
            serde_json::json!({"name": name, "type": kind, "version": version, "capabilities": caps})
        })
        .collect();
    let body = serde_json::json!({
        "id": app.app_id,
        "runtimeVersion": super::super::RUNTIME_VERSION,
        "enabledFeatures": [],
        "components": components,
        "extended": {},
        "subscriptions": [],
        "httpEndpoints": [],
    });
    reply(200, Some("application/json"), body.to_string())
}
