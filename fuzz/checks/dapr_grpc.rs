//! Dapr's gRPC API (`dapr.proto.runtime.v1.Dapr/*`) with any served method, token and
//! message: a request of the method's own type whose strings and bytes are arbitrary (keys,
//! metadata names and values, topics, ETags, content types, operations), or arbitrary bytes
//! as the message. Never a panic, every answer a gRPC status with a known code, and a call
//! without the app's token `Unauthenticated`. The catalog is `dapr_http`'s (Redis database
//! 15 on the machine, a JetStream pub/sub, a `bindings.http` where nothing listens).
use arbitrary::{Result, Unstructured};
use bytes::Bytes;
use dapr::dapr::proto::common::v1 as cm;
use dapr::dapr::proto::runtime::v1 as rt;
use fngate::runtime::handle_grpc;
use prost::Message;
use std::collections::HashMap;

/// The `dapr_http` check, whose harness (catalog, API) this one shares.
#[path = "dapr_http.rs"]
#[allow(dead_code)]
pub mod http_check;

const METHODS: &[&str] = &[
    "GetState",
    "GetBulkState",
    "SaveState",
    "DeleteState",
    "DeleteBulkState",
    "ExecuteStateTransaction",
    "PublishEvent",
    "BulkPublishEvent",
    "BulkPublishEventAlpha1",
    "InvokeBinding",
    "GetMetadata",
    "NotAMethod",
];

/// A name that is one of the catalog's most of the time, so calls get past "not found".
fn name(u: &mut Unstructured, known: &'static str) -> Result<String> {
    Ok(if u.ratio(3, 4)? {
        known.to_owned()
    } else {
        u.arbitrary()?
    })
}

fn metadata(u: &mut Unstructured) -> Result<HashMap<String, String>> {
    u.arbitrary()
}

fn item(u: &mut Unstructured) -> Result<cm::StateItem> {
    Ok(cm::StateItem {
        key: u.arbitrary()?,
        value: u.arbitrary()?,
        etag: if u.arbitrary()? {
            Some(cm::Etag {
                value: u.arbitrary()?,
            })
        } else {
            None
        },
        metadata: metadata(u)?,
        options: None,
    })
}

/// The message for `method`, encoded.
fn message(u: &mut Unstructured, method: &str) -> Result<Vec<u8>> {
    if u.ratio(1, 8)? {
        return u.arbitrary();
    }
    Ok(match method {
        "GetState" => rt::GetStateRequest {
            store_name: name(u, "cart")?,
            key: u.arbitrary()?,
            consistency: u.arbitrary()?,
            metadata: metadata(u)?,
        }
        .encode_to_vec(),
        "GetBulkState" => rt::GetBulkStateRequest {
            store_name: name(u, "cart")?,
            keys: u.arbitrary()?,
            parallelism: u.arbitrary()?,
            metadata: metadata(u)?,
        }
        .encode_to_vec(),
        "SaveState" => rt::SaveStateRequest {
            store_name: name(u, "cart")?,
            states: (0..u.int_in_range(0..=3)?)
                .map(|_| item(u))
                .collect::<Result<_>>()?,
        }
        .encode_to_vec(),
        "DeleteState" => rt::DeleteStateRequest {
            store_name: name(u, "cart")?,
            key: u.arbitrary()?,
            etag: if u.arbitrary()? {
                Some(cm::Etag {
                    value: u.arbitrary()?,
                })
            } else {
                None
            },
            options: None,
            metadata: metadata(u)?,
        }
        .encode_to_vec(),
        "DeleteBulkState" => rt::DeleteBulkStateRequest {
            store_name: name(u, "cart")?,
            states: (0..u.int_in_range(0..=3)?)
                .map(|_| item(u))
                .collect::<Result<_>>()?,
        }
        .encode_to_vec(),
        "ExecuteStateTransaction" => rt::ExecuteStateTransactionRequest {
            store_name: name(u, "cart")?,
            operations: (0..u.int_in_range(0..=3)?)
                .map(|_| {
                    Ok(rt::TransactionalStateOperation {
                        operation_type: if u.arbitrary()? {
                            "upsert".into()
                        } else {
                            u.arbitrary()?
                        },
                        request: if u.arbitrary()? { Some(item(u)?) } else { None },
                    })
                })
                .collect::<Result<_>>()?,
            metadata: metadata(u)?,
        }
        .encode_to_vec(),
        "PublishEvent" => rt::PublishEventRequest {
            pubsub_name: name(u, "bus")?,
            topic: u.arbitrary()?,
            data: u.arbitrary()?,
            data_content_type: u.arbitrary()?,
            metadata: metadata(u)?,
        }
        .encode_to_vec(),
        "BulkPublishEvent" | "BulkPublishEventAlpha1" => rt::BulkPublishRequest {
            pubsub_name: name(u, "bus")?,
            topic: u.arbitrary()?,
            entries: (0..u.int_in_range(0..=3)?)
                .map(|_| {
                    Ok(rt::BulkPublishRequestEntry {
                        entry_id: u.arbitrary()?,
                        event: u.arbitrary()?,
                        content_type: u.arbitrary()?,
                        metadata: metadata(u)?,
                    })
                })
                .collect::<Result<_>>()?,
            metadata: metadata(u)?,
        }
        .encode_to_vec(),
        "InvokeBinding" => rt::InvokeBindingRequest {
            name: name(u, "hook")?,
            data: u.arbitrary()?,
            metadata: metadata(u)?,
            operation: u.arbitrary()?,
        }
        .encode_to_vec(),
        _ => rt::GetMetadataRequest::default().encode_to_vec(),
    })
}

pub fn check(input: &[u8]) {
    let u = &mut Unstructured::new(input);
    let Ok(method) = u.choose(METHODS).copied() else {
        return;
    };
    let Ok(token) = u.arbitrary::<u8>() else {
        return;
    };
    let Ok(message) = message(u, method) else {
        return;
    };
    // gRPC framing: uncompressed flag, length, message.
    let mut body = Vec::with_capacity(5 + message.len());
    body.push(0);
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    let authorized = !token.is_multiple_of(4);
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("/dapr.proto.runtime.v1.Dapr/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if authorized {
        req = req.header("dapr-api-token", "tok-fuzz");
    }
    let req = req
        .body(http_body_util::Full::new(Bytes::from(body)))
        .expect("a valid request");
    let h = http_check::harness();
    let (status, code) = h.runtime.block_on(async {
        use http_body_util::BodyExt;
        let reply = handle_grpc(h.api.clone(), req).await;
        let status = reply.status();
        let in_head = reply.headers().get("grpc-status").cloned();
        let collected = reply.into_body().collect().await.expect("the body is read");
        let code = in_head
            .or_else(|| {
                collected
                    .trailers()
                    .and_then(|t| t.get("grpc-status").cloned())
            })
            .expect("a grpc-status in the head or the trailers");
        (status, code.to_str().unwrap().parse::<i32>().unwrap())
    });
    assert_eq!(status, 200, "{method}");
    assert!((0..=16).contains(&code), "{method}: grpc-status {code}");
    if !authorized {
        assert_eq!(
            code,
            tonic_code_unauthenticated(),
            "{method} without the app's token"
        );
    }
}

/// gRPC's `UNAUTHENTICATED`.
fn tonic_code_unauthenticated() -> i32 {
    16
}
