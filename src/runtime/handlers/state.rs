//! State calls on both surfaces: decode, hand to the state building block, encode.

use super::super::error::ApiError;
use super::super::http::{error_reply, legacy, no_content, reply, reply_with, Query, Reply};
use super::super::state_api::StateItem;
use super::super::surface::reencoded_json;
use super::super::DaprApi;
use super::{member, string_map};
use crate::plan::DaprApp;
use bytes::Bytes;
use dapr::dapr::proto::common::v1 as common;
use dapr::dapr::proto::runtime::v1 as rt;
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::BTreeMap;
use tonic::Code;

pub(crate) async fn grpc_get(
    api: &DaprApi,
    app: &DaprApp,
    r: rt::GetStateRequest,
) -> Result<rt::GetStateResponse, ApiError> {
    let item = api
        .get_state(app, &r.store_name, &r.key, consistency_name(r.consistency))
        .await?
        .unwrap_or_default();
    Ok(rt::GetStateResponse {
        data: item.data.to_vec(),
        etag: item.etag.unwrap_or_default(),
        metadata: item.metadata.into_iter().collect(),
    })
}

pub(crate) async fn grpc_get_bulk(
    api: &DaprApi,
    app: &DaprApp,
    r: rt::GetBulkStateRequest,
) -> Result<rt::GetBulkStateResponse, ApiError> {
    let items = api
        .get_bulk_state(app, &r.store_name, r.keys, r.parallelism.max(0) as usize)
        .await?;
    Ok(rt::GetBulkStateResponse {
        items: items
            .into_iter()
            .map(|i| match i.result {
                Ok(found) => {
                    let found = found.unwrap_or_default();
                    rt::BulkStateItem {
                        key: i.key,
                        data: found.data.to_vec(),
                        etag: found.etag.unwrap_or_default(),
                        metadata: found.metadata.into_iter().collect(),
                        error: String::new(),
                    }
                }
                Err(error) => rt::BulkStateItem {
                    key: i.key,
                    error,
                    ..Default::default()
                },
            })
            .collect(),
    })
}

pub(crate) async fn grpc_save(
    api: &DaprApi,
    app: &DaprApp,
    r: rt::SaveStateRequest,
) -> Result<(), ApiError> {
    let mut items = Vec::with_capacity(r.states.len());
    for s in r.states {
        if s.key.is_empty() {
            return Err(ApiError::basic(
                Code::InvalidArgument,
                400,
                "ERR_STATE_SAVE",
                "state key cannot be empty".into(),
            ));
        }
        items.push(save_item(s)?);
    }
    api.save_state(app, &r.store_name, items).await
}

pub(crate) async fn grpc_delete(
    api: &DaprApi,
    app: &DaprApp,
    r: rt::DeleteStateRequest,
) -> Result<(), ApiError> {
    let (concurrency, consistency) = options(r.options.as_ref());
    let item = StateItem {
        key: r.key,
        etag: r.etag.map(|e| e.value),
        concurrency,
        consistency,
        metadata: r.metadata.into_iter().collect(),
        ..StateItem::default()
    };
    api.delete_state(app, &r.store_name, item).await
}

pub(crate) async fn grpc_delete_bulk(
    api: &DaprApi,
    app: &DaprApp,
    r: rt::DeleteBulkStateRequest,
) -> Result<(), ApiError> {
    let items = r.states.into_iter().map(raw_item).collect();
    api.delete_bulk_state(app, &r.store_name, items).await
}

pub(crate) async fn grpc_transaction(
    api: &DaprApi,
    app: &DaprApp,
    r: rt::ExecuteStateTransactionRequest,
) -> Result<(), ApiError> {
    // Values are raw bytes here, whatever contentType says (as daprd).
    let ops = r
        .operations
        .into_iter()
        .map(|op| {
            (
                op.operation_type,
                op.request.map(raw_item).unwrap_or_default(),
            )
        })
        .collect();
    api.execute_state_transaction(app, &r.store_name, ops).await
}

/// A gRPC item whose value is stored as sent (transactions, bulk delete).
fn raw_item(s: common::StateItem) -> StateItem {
    let (concurrency, consistency) = options(s.options.as_ref());
    StateItem {
        key: s.key,
        value: Bytes::from(s.value),
        json: false,
        etag: s.etag.map(|e| e.value),
        concurrency,
        consistency,
        metadata: s.metadata.into_iter().collect(),
    }
}

/// SaveState: raw bytes, unless the item says `contentType: application/json`; then the
/// JSON is decoded and re-encoded, as daprd hands the store a decoded value.
fn save_item(s: common::StateItem) -> Result<StateItem, ApiError> {
    let json = s.metadata.get("contentType").map(String::as_str) == Some("application/json");
    let mut item = raw_item(s);
    if json {
        item.value = reencoded_json(&item.value)
            .map_err(|e| ApiError::basic(Code::Internal, 500, "ERR_STATE_SAVE", e.to_string()))?;
        item.json = true;
    }
    Ok(item)
}

fn options(o: Option<&common::StateOptions>) -> (String, String) {
    let Some(o) = o else {
        return (String::new(), String::new());
    };
    let concurrency = match o.concurrency {
        1 => "first-write",
        2 => "last-write",
        _ => "",
    };
    (concurrency.into(), consistency_name(o.consistency).into())
}

fn consistency_name(c: i32) -> &'static str {
    match c {
        1 => "eventual",
        2 => "strong",
        _ => "",
    }
}

/// One state item of an HTTP save or transaction body; `value` is re-encoded JSON.
fn json_item(o: &serde_json::Map<String, Value>) -> Result<StateItem, String> {
    let etag = match member(o, "etag") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("etag must be a string".into()),
    };
    let options = member(o, "options").and_then(Value::as_object);
    let option = |k: &str| {
        options
            .and_then(|opts| member(opts, k))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Ok(StateItem {
        key: member(o, "key")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        value: Bytes::from(
            serde_json::to_vec(member(o, "value").unwrap_or(&Value::Null)).expect("JSON"),
        ),
        json: true,
        etag,
        concurrency: option("concurrency"),
        consistency: option("consistency"),
        metadata: string_map(member(o, "metadata")),
    })
}

pub(crate) async fn http_save(
    api: &DaprApi,
    app: &DaprApp,
    store: &str,
    body: Bytes,
    query_meta: Vec<(String, String)>,
) -> Reply {
    let items: Vec<serde_json::Map<String, Value>> = match serde_json::from_slice(&body) {
        Ok(i) => i,
        Err(e) => return legacy(400, "ERR_MALFORMED_REQUEST", e.to_string()),
    };
    let mut parsed = Vec::with_capacity(items.len());
    for o in &items {
        let mut item = match json_item(o) {
            Ok(i) => i,
            Err(e) => return legacy(400, "ERR_MALFORMED_REQUEST", e),
        };
        if item.key.is_empty() {
            return legacy(
                400,
                "ERR_MALFORMED_REQUEST",
                "\"key\" is a required field".into(),
            );
        }
        // Query metadata wins over the item's.
        item.metadata.extend(query_meta.iter().cloned());
        parsed.push(item);
    }
    match api.save_state(app, store, parsed).await {
        Ok(()) => no_content(),
        Err(e) => error_reply(&e),
    }
}

pub(crate) async fn http_get(
    api: &DaprApi,
    app: &DaprApp,
    store: &str,
    key: &str,
    query: &Query,
) -> Reply {
    match api
        .get_state(app, store, key, query.get("consistency"))
        .await
    {
        Ok(None) => no_content(),
        Ok(Some(item)) => {
            let headers = [("content-type".to_owned(), "application/json")]
                .into_iter()
                .chain(item.etag.as_deref().map(|e| ("etag".to_owned(), e)))
                .chain(
                    item.metadata
                        .iter()
                        .map(|(k, v)| (format!("metadata.{k}"), v.as_str())),
                );
            reply_with(200, headers, item.data)
        }
        Err(e) => error_reply(&e),
    }
}

pub(crate) async fn http_delete(
    api: &DaprApi,
    app: &DaprApp,
    store: &str,
    key: &str,
    etag: Option<String>,
    query: &Query,
) -> Reply {
    let item = StateItem {
        key: key.to_owned(),
        etag,
        concurrency: query.get("concurrency").to_owned(),
        consistency: query.get("consistency").to_owned(),
        metadata: query.metadata.clone(),
        ..StateItem::default()
    };
    match api.delete_state(app, store, item).await {
        Ok(()) => no_content(),
        Err(e) => error_reply(&e),
    }
}

pub(crate) async fn http_get_bulk(api: &DaprApi, app: &DaprApp, store: &str, body: Bytes) -> Reply {
    #[derive(serde::Deserialize)]
    struct BulkGet {
        #[serde(default)]
        keys: Vec<String>,
        #[serde(default)]
        parallelism: i64,
    }
    let request: BulkGet = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return legacy(
                400,
                "ERR_MALFORMED_REQUEST",
                format!("failed deserializing HTTP body: {e}"),
            )
        }
    };
    let items = match api
        .get_bulk_state(
            app,
            store,
            request.keys,
            request.parallelism.max(0) as usize,
        )
        .await
    {
        Ok(i) => i,
        Err(e) => return error_reply(&e),
    };
    #[derive(serde::Serialize)]
    struct Item<'a> {
        key: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<&'a RawValue>,
        #[serde(skip_serializing_if = "Option::is_none")]
        etag: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        metadata: Option<BTreeMap<&'a str, &'a str>>,
        #[serde(skip_serializing_if = "str::is_empty")]
        error: &'a str,
    }
    let mut out = Vec::with_capacity(items.len());
    let raws: Vec<Option<Result<&RawValue, ()>>> = items
        .iter()
        .map(|i| match &i.result {
            Ok(Some(found)) => Some(
                std::str::from_utf8(&found.data)
                    .ok()
                    .and_then(|s| serde_json::from_str::<&RawValue>(s).ok())
                    .ok_or(()),
            ),
            _ => None,
        })
        .collect();
    for (i, raw) in items.iter().zip(&raws) {
        if let Some(Err(())) = raw {
            // daprd's encoder fails on a value that is not JSON and answers with no body.
            tracing::warn!(app = %app.app_id, key = %i.key, "bulk get over HTTP: a stored value is not JSON; answering with an empty body as daprd does");
            return reply(200, Some("application/json"), Bytes::new());
        }
        let (etag, metadata, error) = match &i.result {
            Ok(Some(found)) => (
                found.etag.as_deref(),
                (!found.metadata.is_empty()).then(|| {
                    found
                        .metadata
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect()
                }),
                "",
            ),
            Ok(None) => (None, None, ""),
            Err(e) => (None, None, e.as_str()),
        };
        out.push(Item {
            key: &i.key,
            data: raw.as_ref().and_then(|r| r.ok()),
            etag,
            metadata,
            error,
        });
    }
    reply(
        200,
        Some("application/json"),
        serde_json::to_vec(&out).expect("JSON"),
    )
}

pub(crate) async fn http_transaction(
    api: &DaprApi,
    app: &DaprApp,
    store: &str,
    body: Bytes,
) -> Reply {
    let malformed = |e: String| {
        legacy(
            400,
            "ERR_MALFORMED_REQUEST",
            format!("failed deserializing HTTP body: {e}"),
        )
    };
    let parsed: serde_json::Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return malformed(e.to_string()),
    };
    let mut ops = Vec::new();
    for op in member(&parsed, "operations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(op) = op.as_object() else {
            return malformed("an operation must be an object".into());
        };
        let kind = member(op, "operation")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let request = member(op, "request")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        match json_item(&request) {
            Ok(item) => ops.push((kind, item)),
            Err(e) => return malformed(e),
        }
    }
    match api.execute_state_transaction(app, store, ops).await {
        Ok(()) => no_content(),
        Err(e) => error_reply(&e),
    }
}
