//! Secret calls on both surfaces.

use super::super::error::ApiError;
use super::super::http::{error_reply, reply, Query, Reply};
use super::super::DaprApi;
use crate::plan::DaprApp;
use dapr::dapr::proto::runtime::v1 as rt;

pub(crate) async fn grpc_get(
    api: &DaprApi,
    app: &DaprApp,
    r: rt::GetSecretRequest,
) -> Result<rt::GetSecretResponse, ApiError> {
    let metadata: Vec<(String, String)> = r.metadata.into_iter().collect();
    let data = api
        .get_secret(app, &r.store_name, &r.key, &metadata)
        .await?;
    Ok(rt::GetSecretResponse {
        data: data.into_iter().collect(),
    })
}

pub(crate) async fn grpc_get_bulk(
    api: &DaprApi,
    app: &DaprApp,
    r: rt::GetBulkSecretRequest,
) -> Result<rt::GetBulkSecretResponse, ApiError> {
    let metadata: Vec<(String, String)> = r.metadata.into_iter().collect();
    let all = api.get_bulk_secret(app, &r.store_name, &metadata).await?;
    Ok(rt::GetBulkSecretResponse {
        data: all
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    rt::SecretResponse {
                        secrets: v.into_iter().collect(),
                    },
                )
            })
            .collect(),
    })
}

pub(crate) async fn http_get(
    api: &DaprApi,
    app: &DaprApp,
    store: &str,
    key: &str,
    query: &Query,
) -> Reply {
    match api.get_secret(app, store, key, &query.metadata).await {
        Ok(data) => reply(
            200,
            Some("application/json"),
            serde_json::to_vec(&data).expect("strings serialise"),
        ),
        Err(e) => error_reply(&e),
    }
}

pub(crate) async fn http_get_bulk(
    api: &DaprApi,
    app: &DaprApp,
    store: &str,
    query: &Query,
) -> Reply {
    match api.get_bulk_secret(app, store, &query.metadata).await {
        Ok(all) => reply(
            200,
            Some("application/json"),
            serde_json::to_vec(&all).expect("strings serialise"),
        ),
        Err(e) => error_reply(&e),
    }
}
