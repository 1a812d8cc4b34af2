//! A Dapr app, as a function built with a Dapr SDK would be: it serves Dapr's AppCallback
//! gRPC service (the `dapr` crate's generated server trait) or Dapr's HTTP app protocol,
//! and prints every event it receives as one `EVENT <json>` line on stdout. The test
//! function of the event-trigger tests and the benchmark's target.
//!
//! Usage: dapr_app --protocol grpc|http [--listen ADDR] [--bindings a,b]
//!                 [--topics pubsub:topic[:route],...] [--quiet]
//!                 [--bulk MAX_MESSAGES:MAX_AWAIT_MS [--hold-first-bulk FILE]]
//!                 [--hold-marked FILE]
//! `--bulk` subscribes to every topic with Dapr's bulk subscribe (each entry is printed as
//! its own event, with `bulk` = the batch's size); `--hold-first-bulk` keeps the first
//! batch unanswered until FILE exists; `--hold-marked` keeps every gRPC binding or topic
//! event whose data contains `held` unanswered until FILE exists.
//! Prints `listening on ADDR` first. The payload steers the answer: `retry-once` is
//! answered RETRY the first time its id is seen, `always-retry` always, `drop-me` DROP
//! (gRPC bindings: UNIMPLEMENTED; HTTP bindings: 404); anything else SUCCESS.

use bytes::Bytes;
use dapr::dapr::proto::common::v1::{InvokeRequest, InvokeResponse};
use dapr::dapr::proto::runtime::v1::{
    app_callback_server::{AppCallback, AppCallbackServer},
    topic_event_bulk_request_entry,
    topic_event_response::TopicEventResponseStatus,
    BindingEventRequest, BindingEventResponse, BulkSubscribeConfig, ListInputBindingsResponse,
    ListTopicSubscriptionsResponse, TopicEventBulkRequest, TopicEventBulkResponse,
    TopicEventBulkResponseEntry, TopicEventRequest, TopicEventResponse, TopicRoutes,
    TopicSubscription,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::io::Write;
use std::sync::{Arc, Mutex};
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

#[derive(Clone, Copy, PartialEq)]
enum Verdict {
    Success,
    Retry,
    Drop,
}

struct App {
    bindings: HashSet<String>,
    /// (pubsub, topic, route)
    topics: Vec<(String, String, String)>,
    seen: Mutex<HashSet<String>>,
    quiet: bool,
    /// `bulkSubscribe` (max messages, max await ms) for every topic.
    bulk: Option<(i32, i32)>,
    /// The first batch waits until this file exists.
    hold_first_bulk: Mutex<Option<std::path::PathBuf>>,
    /// gRPC binding and topic events whose data contains "held" are answered once this file
    /// exists.
    hold_marked: Option<std::path::PathBuf>,
}

impl App {
    fn verdict(&self, id: &str, data: &[u8]) -> Verdict {
        let text = String::from_utf8_lossy(data);
        if text.contains("drop-me") {
            Verdict::Drop
        } else if text.contains("always-retry")
            || (text.contains("retry-once") && self.seen.lock().unwrap().insert(id.to_owned()))
        {
            Verdict::Retry
        } else {
            Verdict::Success
        }
    }

    /// Holds the first batch (only) until its file exists.
    async fn hold_if_first_batch(&self) {
        let hold = self.hold_first_bulk.lock().unwrap().take();
        if let Some(file) = hold {
            while !file.exists() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    }

    /// Holds an event marked "held" until the `--hold-marked` file exists.
    async fn hold_if_marked(&self, data: &[u8]) {
        let Some(file) = &self.hold_marked else {
            return;
        };
        if String::from_utf8_lossy(data).contains("held") {
            while !file.exists() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    }

    fn print(&self, mut record: Value, verdict: Verdict) {
        if self.quiet {
            return;
        }
        record["answer"] = json!(match verdict {
            Verdict::Success => "SUCCESS",
            Verdict::Retry => "RETRY",
            Verdict::Drop => "DROP",
        });
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "EVENT {record}");
        let _ = out.flush();
    }
}

struct Grpc(Arc<App>);

#[tonic::async_trait]
impl AppCallback for Grpc {
    /// Service invocation: method `fail` fails with NotFound; any other is echoed back.
    async fn on_invoke(
        &self,
        request: GrpcRequest<InvokeRequest>,
    ) -> Result<GrpcResponse<InvokeResponse>, Status> {
        let metadata: serde_json::Map<String, Value> = request
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.to_string(), json!(v.to_str().unwrap_or_default())))
                }
                _ => None,
            })
            .collect();
        let r = request.into_inner();
        let ext = r.http_extension.unwrap_or_default();
        let echo = json!({"protocol": "grpc", "method": r.method, "verb": ext.verb,
                          "query": ext.querystring, "content_type": r.content_type,
                          "body": String::from_utf8_lossy(&r.data.map(|d| d.value).unwrap_or_default()),
                          "metadata": metadata});
        self.0
            .print(json!({"kind": "invoke", "echo": echo}), Verdict::Success);
        if r.method == "fail" {
            return Err(Status::not_found("no such order"));
        }
        Ok(GrpcResponse::new(InvokeResponse {
            data: Some(prost_types::Any {
                type_url: String::new(),
                value: echo.to_string().into_bytes(),
            }),
            content_type: "application/json".into(),
        }))
    }

    async fn list_topic_subscriptions(
        &self,
        _: GrpcRequest<()>,
    ) -> Result<GrpcResponse<ListTopicSubscriptionsResponse>, Status> {
        let subscriptions = self
            .0
            .topics
            .iter()
            .map(|(pubsub, topic, route)| TopicSubscription {
                pubsub_name: pubsub.clone(),
                topic: topic.clone(),
                routes: Some(TopicRoutes {
                    rules: vec![],
                    default: route.clone(),
                }),
                bulk_subscribe: self.0.bulk.map(|(max, wait)| BulkSubscribeConfig {
                    enabled: true,
                    max_messages_count: max,
                    max_await_duration_ms: wait,
                }),
                ..Default::default()
            })
            .collect();
        Ok(GrpcResponse::new(ListTopicSubscriptionsResponse {
            subscriptions,
        }))
    }

    async fn on_topic_event(
        &self,
        request: GrpcRequest<TopicEventRequest>,
    ) -> Result<GrpcResponse<TopicEventResponse>, Status> {
        let metadata: HashMap<String, String> = request
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.to_string(), v.to_str().unwrap_or_default().to_owned()))
                }
                _ => None,
            })
            .collect();
        let e = request.into_inner();
        self.0.hold_if_marked(&e.data).await;
        let verdict = self.0.verdict(&e.id, &e.data);
        let extensions = e
            .extensions
            .as_ref()
            .map(struct_to_json)
            .unwrap_or_default();
        self.0.print(
            json!({
                "protocol": "grpc", "kind": "topic", "id": e.id, "source": e.source, "type": e.r#type,
                "specversion": e.spec_version, "datacontenttype": e.data_content_type,
                "data": String::from_utf8_lossy(&e.data), "topic": e.topic, "pubsub": e.pubsub_name,
                "path": e.path, "extensions": extensions, "metadata": metadata,
            }),
            verdict,
        );
        Ok(GrpcResponse::new(TopicEventResponse {
            status: topic_status(verdict) as i32,
        }))
    }

    async fn list_input_bindings(
        &self,
        _: GrpcRequest<()>,
    ) -> Result<GrpcResponse<ListInputBindingsResponse>, Status> {
        Ok(GrpcResponse::new(ListInputBindingsResponse {
            bindings: self.0.bindings.iter().cloned().collect(),
        }))
    }

    async fn on_binding_event(
        &self,
        request: GrpcRequest<BindingEventRequest>,
    ) -> Result<GrpcResponse<BindingEventResponse>, Status> {
        let e = request.into_inner();
        let id = e
            .metadata
            .get("__offset")
            .map(|o| {
                format!(
                    "{}/{o}",
                    e.metadata.get("__partition").cloned().unwrap_or_default()
                )
            })
            .unwrap_or_default();
        self.0.hold_if_marked(&e.data).await;
        let verdict = self.0.verdict(&id, &e.data);
        self.0.print(
            json!({"protocol": "grpc", "kind": "binding", "name": e.name,
                   "data": String::from_utf8_lossy(&e.data), "metadata": e.metadata}),
            verdict,
        );
        match verdict {
            Verdict::Success => Ok(GrpcResponse::new(BindingEventResponse::default())),
            Verdict::Retry => Err(Status::internal("try again")),
            Verdict::Drop => Err(Status::unimplemented("not handled")),
        }
    }

    async fn on_bulk_topic_event(
        &self,
        request: GrpcRequest<TopicEventBulkRequest>,
    ) -> Result<GrpcResponse<TopicEventBulkResponse>, Status> {
        self.0.hold_if_first_batch().await;
        let batch = request.into_inner();
        let size = batch.entries.len();
        let mut statuses = Vec::with_capacity(size);
        for entry in batch.entries {
            let Some(topic_event_bulk_request_entry::Event::CloudEvent(e)) = entry.event else {
                return Err(Status::invalid_argument("entry without a CloudEvent"));
            };
            let verdict = self.0.verdict(&e.id, &e.data);
            self.0.print(
                json!({
                    "protocol": "grpc", "kind": "topic", "bulk": size, "batch": batch.id,
                    "batchtype": batch.r#type, "entryid": entry.entry_id, "id": e.id,
                    "source": e.source, "type": e.r#type, "specversion": e.spec_version,
                    "datacontenttype": e.data_content_type,
                    "data": String::from_utf8_lossy(&e.data), "topic": batch.topic,
                    "pubsub": batch.pubsub_name, "path": batch.path,
                    "extensions": e.extensions.as_ref().map(struct_to_json).unwrap_or_default(),
                    "metadata": entry.metadata,
                }),
                verdict,
            );
            statuses.push(TopicEventBulkResponseEntry {
                entry_id: entry.entry_id,
                status: topic_status(verdict) as i32,
            });
        }
        Ok(GrpcResponse::new(TopicEventBulkResponse { statuses }))
    }

    async fn on_job_event(
        &self,
        _: GrpcRequest<dapr::dapr::proto::runtime::v1::JobEventRequest>,
    ) -> Result<GrpcResponse<dapr::dapr::proto::runtime::v1::JobEventResponse>, Status> {
        Err(Status::unimplemented("no jobs"))
    }
}

fn topic_status(verdict: Verdict) -> TopicEventResponseStatus {
    match verdict {
        Verdict::Success => TopicEventResponseStatus::Success,
        Verdict::Retry => TopicEventResponseStatus::Retry,
        Verdict::Drop => TopicEventResponseStatus::Drop,
    }
}

fn verdict_word(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Success => "SUCCESS",
        Verdict::Retry => "RETRY",
        Verdict::Drop => "DROP",
    }
}

fn struct_to_json(s: &prost_types::Struct) -> serde_json::Map<String, Value> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), prost_to_json(v)))
        .collect()
}

fn prost_to_json(v: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &v.kind {
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::StructValue(s)) => Value::Object(struct_to_json(s)),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(prost_to_json).collect()),
        _ => Value::Null,
    }
}

async fn http(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().trim_start_matches('/').to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let headers: HashMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let reply = |status: StatusCode, body: Value| {
        Ok(Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap())
    };
    if method == Method::GET && path == "dapr/subscribe" {
        let list: Vec<Value> = app
            .topics
            .iter()
            .map(|(p, t, r)| {
                let mut entry = json!({"pubsubname": p, "topic": t, "route": if r.is_empty() { t } else { r }});
                if let Some((max, wait)) = app.bulk {
                    entry["bulkSubscribe"] = json!({"enabled": true, "maxMessagesCount": max, "maxAwaitDurationMs": wait});
                }
                entry
            })
            .collect();
        return reply(StatusCode::OK, Value::Array(list));
    }
    if app.bindings.contains(&path) {
        if method == Method::OPTIONS {
            return reply(StatusCode::OK, json!({}));
        }
        let id = format!(
            "{}/{}",
            headers.get("__partition").cloned().unwrap_or_default(),
            headers.get("__offset").cloned().unwrap_or_default()
        );
        let verdict = app.verdict(&id, &body);
        app.print(
            json!({"protocol": "http", "kind": "binding", "name": path,
                   "data": String::from_utf8_lossy(&body), "metadata": headers}),
            verdict,
        );
        return match verdict {
            Verdict::Success => reply(StatusCode::OK, json!({})),
            Verdict::Retry => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": "try again"}),
            ),
            Verdict::Drop => reply(StatusCode::NOT_FOUND, json!({})),
        };
    }
    let route = app
        .topics
        .iter()
        .find(|(_, t, r)| (if r.is_empty() { t } else { r }).trim_start_matches('/') == path);
    if let (true, Some((pubsub, topic, _))) = (method == Method::POST, route) {
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        // Every record of one CloudEvent, whether it came alone or in a bulk envelope.
        let record = |ce: &Value, metadata: Value, bulk: Value| {
            let id = ce["id"].as_str().unwrap_or_default().to_owned();
            let data = match (&ce["data_base64"], &ce["data"]) {
                (Value::String(b), _) => {
                    use base64::Engine as _;
                    String::from_utf8_lossy(
                        &base64::engine::general_purpose::STANDARD
                            .decode(b)
                            .unwrap_or_default(),
                    )
                    .into_owned()
                }
                (_, Value::String(s)) => s.clone(),
                (_, v) => v.to_string(),
            };
            let verdict = app.verdict(&id, data.as_bytes());
            app.print(
                json!({"protocol": "http", "kind": "topic", "id": id, "source": ce["source"], "type": ce["type"],
                       "specversion": ce["specversion"], "datacontenttype": ce["datacontenttype"], "data": data,
                       "topic": ce["topic"], "pubsub": ce["pubsubname"], "subscribed": [pubsub, topic],
                       "path": path, "metadata": metadata, "cloudevent": ce, "bulk": bulk}),
                verdict,
            );
            verdict
        };
        if app.bulk.is_some() {
            app.hold_if_first_batch().await;
            let entries = body["entries"].as_array().cloned().unwrap_or_default();
            let size = entries.len();
            let statuses: Vec<Value> = entries
                .iter()
                .map(|entry| {
                    let bulk = json!({"size": size, "batch": body["id"], "type": body["type"],
                                      "topic": body["topic"], "pubsubname": body["pubsubname"],
                                      "contenttype": entry["contentType"], "entryid": entry["entryId"]});
                    let verdict = record(&entry["event"], entry["metadata"].clone(), bulk);
                    json!({"entryId": entry["entryId"], "status": verdict_word(verdict)})
                })
                .collect();
            return reply(StatusCode::OK, json!({ "statuses": statuses }));
        }
        let verdict = record(&body, json!(headers), Value::Null);
        return reply(StatusCode::OK, json!({ "status": verdict_word(verdict) }));
    }
    // Service invocation: `fail` answers 404; `echo...` is echoed back.
    if path == "fail" {
        return reply(StatusCode::NOT_FOUND, json!({"error": "no such order"}));
    }
    if path.starts_with("echo") {
        let echo = json!({"protocol": "http", "method": path, "verb": method.as_str(),
                          "query": query, "body": String::from_utf8_lossy(&body), "headers": headers});
        app.print(json!({"kind": "invoke", "echo": echo}), Verdict::Success);
        return Ok(Response::builder()
            .status(StatusCode::CREATED)
            .header("content-type", "application/json")
            .header("x-order", "42")
            .body(Full::new(Bytes::from(echo.to_string())))
            .unwrap());
    }
    reply(StatusCode::NOT_FOUND, json!({"error": "not found"}))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let protocol = arg("--protocol").unwrap_or_else(|| "grpc".into());
    let listen = arg("--listen").unwrap_or_else(|| "127.0.0.1:0".into());
    let list = |s: Option<String>| -> Vec<String> {
        s.map(|s| {
            s.split(',')
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
    };
    let app = Arc::new(App {
        bindings: list(arg("--bindings")).into_iter().collect(),
        topics: list(arg("--topics"))
            .into_iter()
            .map(|t| {
                let mut p = t.splitn(3, ':');
                (
                    p.next().unwrap_or_default().to_owned(),
                    p.next().unwrap_or_default().to_owned(),
                    p.next().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
        seen: Mutex::new(HashSet::new()),
        quiet: args.iter().any(|a| a == "--quiet"),
        bulk: arg("--bulk").map(|b| {
            let (max, wait) = b.split_once(':').expect("--bulk MAX_MESSAGES:MAX_AWAIT_MS");
            (
                max.parse().expect("MAX_MESSAGES"),
                wait.parse().expect("MAX_AWAIT_MS"),
            )
        }),
        hold_first_bulk: Mutex::new(arg("--hold-first-bulk").map(Into::into)),
        hold_marked: arg("--hold-marked").map(Into::into),
    });
    let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
    let addr = listener.local_addr().unwrap();
    println!("listening on {addr}");
    let _ = std::io::stdout().flush();
    if protocol == "grpc" {
        let incoming = tokio_stream_from(listener);
        tonic::transport::Server::builder()
            .add_service(AppCallbackServer::new(Grpc(app)))
            .serve_with_incoming(incoming)
            .await
            .expect("serve");
    } else {
        loop {
            let (stream, _) = listener.accept().await.expect("accept");
            let _ = stream.set_nodelay(true);
            let app = app.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| http(app.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}

/// Accepted connections as the stream tonic's server takes.
fn tokio_stream_from(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            s
        });
        Some((r, l))
    })
}
