//! Publish calls on both surfaces.

use super::super::error::ApiError;
use super::super::http::{error_reply, no_content, reply_with, Reply};
use super::super::publish_api::{BulkEntry, PublishRequest};
use super::super::surface::Trace;
use super::super::DaprApi;
use crate::plan::DaprApp;
use base64::Engine as _;
use bytes::Bytes;
use dapr::dapr::proto::runtime::v1 as rt;
use serde_json::Value;
use std::collections::BTreeMap;

pub(crate) async fn grpc_publish(
    api: &DaprApi,
    app: &DaprApp,
    trace: Trace,
    r: rt::PublishEventRequest,
) -> Result<(), ApiError> {
    api.publish(
        app,
        PublishRequest {
            pubsub: r.pubsub_name,
            topic: r.topic,
            data: Bytes::from(r.data),
            content_type: r.data_content_type,
            metadata: r.metadata.into_iter().collect(),
            trace,
            grpc: true,
        },
    )
    .await
}

pub(crate) async fn grpc_bulk_publish(
    api: &DaprApi,
    app: &DaprApp,
    r: rt::BulkPublishRequest,
) -> Result<rt::BulkPublishResponse, ApiError> {
    let entries = r
        .entries
        .into_iter()
        .map(|e| BulkEntry {
            entry_id: e.entry_id,
            event: Bytes::from(e.event),
            content_type: e.content_type,
            metadata: (!e.metadata.is_empty()).then(|| e.metadata.into_iter().collect()),
        })
        .collect();
    let failed = api
        .bulk_publish(
            app,
            &r.pubsub_name,
            &r.topic,
            entries,
            r.metadata.into_iter().collect(),
            true,
        )
        .await?;
    Ok(rt::BulkPublishResponse {
        failed_entries: failed
            .into_iter()
            .map(|(entry_id, error)| rt::BulkPublishResponseFailedEntry { entry_id, error })
            .collect(),
    })
}

pub(crate) async fn http_publish(
    api: &DaprApi,
    app: &DaprApp,
    mut request: PublishRequest,
    data: Bytes,
) -> Reply {
    request.data = data;
    match api.publish(app, request).await {
        Ok(()) => no_content(),
        Err(e) => error_reply(&e),
    }
}

pub(crate) async fn http_bulk_publish(
    api: &DaprApi,
    app: &DaprApp,
    pubsub: String,
    topic: String,
    body: Bytes,
    metadata: Vec<(String, String)>,
) -> Reply {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Entry {
        #[serde(default)]
        entry_id: String,
        #[serde(default)]
        event: Value,
        #[serde(default)]
        content_type: String,
        #[serde(default)]
        metadata: Option<BTreeMap<String, String>>,
    }
    let malformed = |m: String| {
        error_reply(&ApiError::rich(
            tonic::Code::InvalidArgument,
            400,
            "ERR_PUBSUB_EVENTS_SER",
            "DAPR_PUBSUB_MARSHAL_EVENTS",
            m,
        ))
    };
    let entries: Vec<Entry> = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => return malformed(format!("failed deserializing HTTP body: {e}")),
    };
    let mut converted = Vec::with_capacity(entries.len());
    for e in entries {
        let media = super::super::cloudevent::media_type(&e.content_type);
        let event = match (media.as_str(), &e.event) {
            ("application/octet-stream", Value::String(s)) => {
                match base64::engine::general_purpose::STANDARD.decode(s) {
                    Ok(b) => Bytes::from(b),
                    Err(err) => return malformed(format!("entry {}: {err}", e.entry_id)),
                }
            }
            (m, Value::String(s)) if m.starts_with("text/") || m == "application/xml" => {
                Bytes::from(s.clone())
            }
            (m, _) if m.starts_with("text/") || m == "application/xml" => {
                return malformed(format!(
                    "entry {}: the event must be a JSON string",
                    e.entry_id
                ))
            }
            ("application/json" | "application/cloudevents+json", v) => {
                match super::super::cloudevent::canonical(&v.to_string()) {
                    Ok(s) => Bytes::from(s),
                    Err(err) => return malformed(err),
                }
            }
            (other, _) => {
                return malformed(format!(
                    "entry {}: content type {other:?} is not supported for bulk publish",
                    e.entry_id
                ))
            }
        };
        converted.push(BulkEntry {
            entry_id: e.entry_id,
            event,
            content_type: e.content_type,
            metadata: e.metadata.map(|m| m.into_iter().collect()),
        });
    }
    match api
        .bulk_publish(app, &pubsub, &topic, converted, metadata, false)
        .await
    {
        Ok(failed) if failed.is_empty() => no_content(),
        Ok(failed) => {
            let body = serde_json::json!({
                "failedEntries": failed.iter().map(|(id, e)| serde_json::json!({"entryId": id, "error": e})).collect::<Vec<_>>(),
                "errorCode": "ERR_PUBSUB_PUBLISH_MESSAGE",
            });
            // The error text may carry a caller's topic: control characters become spaces.
            let first: String = failed
                .first()
                .map(|(_, e)| e.as_str())
                .unwrap_or_default()
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            reply_with(
                500,
                [
                    ("content-type", "application/json"),
                    ("metadata.error", first.as_str()),
                ],
                body.to_string(),
            )
        }
        Err(e) => error_reply(&e),
    }
}
