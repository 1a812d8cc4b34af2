//! Delivery over Dapr's HTTP app protocol: `OPTIONS` probe and `POST /<binding>` for
//! bindings; `GET /dapr/subscribe` and CloudEvent `POST`s for pub/sub.

use super::contract::{
    answers_in_order, Answer, BulkDestination, BulkSubscribe, Subscriptions, TopicRoute,
    BULK_EVENT_TYPE,
};
use super::event::{push_json, push_json_member, Event};
use crate::plan::{TriggerKind, TriggerSpec};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

pub struct HttpApp {
    client: Client<HttpConnector, Full<Bytes>>,
}

#[derive(Deserialize)]
struct SubscribeEntry {
    #[serde(alias = "pubsubName", default)]
    pubsubname: String,
    #[serde(default)]
    topic: String,
    #[serde(default)]
    route: Option<String>,
    #[serde(default)]
    routes: Option<SubscribeRoutes>,
    #[serde(default, rename = "bulkSubscribe")]
    bulk_subscribe: Option<SubscribeBulk>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubscribeBulk {
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    max_messages_count: i64,
    #[serde(default)]
    max_await_duration_ms: i64,
}

/// The app's answer to a bulk request.
#[derive(Deserialize)]
struct BulkStatuses {
    #[serde(default)]
    statuses: Vec<BulkStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BulkStatus {
    #[serde(default)]
    entry_id: String,
    #[serde(default)]
    status: String,
}

#[derive(Deserialize)]
struct SubscribeRoutes {
    #[serde(default)]
    default: Option<String>,
}

impl HttpApp {
    pub fn new() -> HttpApp {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        HttpApp {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .build(connector),
        }
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String> {
        let response = self.client.request(request).await.map_err(|e| {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg = format!("{msg}: {s}");
                source = s.source();
            }
            msg
        })?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok((status, body))
    }

    /// Bindings: Dapr's `OPTIONS /<route>` probe. Pub/sub:
    /// `GET /dapr/subscribe` (404 = no subscriptions).
    pub async fn subscriptions(
        &self,
        addr: SocketAddr,
        spec: &TriggerSpec,
    ) -> Result<Subscriptions, String> {
        let mut subs = Subscriptions::default();
        match spec.kind {
            TriggerKind::Binding => {
                let request = Request::builder()
                    .method(Method::OPTIONS)
                    .uri(format!("http://{addr}/{}", spec.binding_path()))
                    .body(Full::default())
                    .map_err(|e| e.to_string())?;
                let (status, _) = self.send(request).await?;
                // daprd's test: a 2xx or 405 (a POST-only route) means the app listens.
                if status.is_success() || status == StatusCode::METHOD_NOT_ALLOWED {
                    subs.bindings.insert(spec.component.clone());
                }
            }
            TriggerKind::PubSub => {
                let request = Request::get(format!("http://{addr}/dapr/subscribe"))
                    .body(Full::default())
                    .map_err(|e| e.to_string())?;
                let (status, body) = self.send(request).await?;
                if status == StatusCode::NOT_FOUND {
                    return Ok(subs);
                }
                if !status.is_success() {
                    return Err(format!("GET /dapr/subscribe answered {status}"));
                }
                let entries: Vec<SubscribeEntry> = serde_json::from_slice(&body)
                    .map_err(|e| format!("GET /dapr/subscribe: not a subscription list: {e}"))?;
                for e in entries {
                    let path = e
                        .route
                        .or_else(|| e.routes.and_then(|r| r.default))
                        .filter(|p| !p.is_empty())
                        .unwrap_or_else(|| e.topic.clone());
                    let bulk = e
                        .bulk_subscribe
                        .filter(|b| b.enabled)
                        .map(|b| BulkSubscribe::new(b.max_messages_count, b.max_await_duration_ms));
                    subs.topics
                        .insert((e.pubsubname, e.topic), TopicRoute { path, bulk });
                }
            }
        }
        Ok(subs)
    }

    pub async fn deliver(
        &self,
        addr: SocketAddr,
        spec: &TriggerSpec,
        event: &Event,
        path: &str,
    ) -> Answer {
        let request = match delivery_request(addr, spec, event, path) {
            Ok(r) => r,
            Err(e) => return Answer::Retry(format!("building the request: {e}")),
        };
        let path = path.trim_start_matches('/');
        match self.send(request).await {
            Err(e) => Answer::Unreachable(e),
            Ok((StatusCode::NOT_FOUND, _)) => Answer::Drop(format!("POST /{path} answered 404")),
            Ok((status, body)) if status.is_success() => status_answer(&body),
            Ok((status, _)) => Answer::Retry(format!("POST /{path} answered {status}")),
        }
    }
}

impl HttpApp {
    /// One batch of a bulk subscription: Dapr's bulk envelope, per-entry statuses back.
    pub async fn deliver_bulk(
        &self,
        target: &BulkDestination,
        entries: Vec<HttpBulkEntry>,
    ) -> Vec<Answer> {
        let mut envelope =
            Vec::with_capacity(256 + entries.iter().map(|e| e.json.len() + 1).sum::<usize>());
        envelope.push(b'{');
        for (key, value) in [
            ("id", super::event::batch_id().as_str()),
            ("type", BULK_EVENT_TYPE),
            ("topic", &target.topic),
            ("pubsubname", &target.component),
        ] {
            push_json_member(&mut envelope, key, value);
            envelope.push(b',');
        }
        envelope.extend_from_slice(br#""metadata":{},"entries":["#);
        let mut ids = Vec::with_capacity(entries.len());
        for (i, entry) in entries.into_iter().enumerate() {
            if i > 0 {
                envelope.push(b',');
            }
            envelope.extend_from_slice(&entry.json);
            ids.push(entry.id);
        }
        envelope.extend_from_slice(b"]}");
        let path = target.path.trim_start_matches('/');
        let request = Request::post(format!("http://{}/{path}", target.addr))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(envelope)));
        let all = |a: Answer| vec![a; ids.len()];
        let request = match request {
            Ok(r) => r,
            Err(e) => return all(Answer::Retry(format!("building the request: {e}"))),
        };
        match self.send(request).await {
            Err(e) => all(Answer::Unreachable(e)),
            Ok((StatusCode::NOT_FOUND, _)) => {
                all(Answer::Drop(format!("POST /{path} answered 404")))
            }
            Ok((status, body)) if status.is_success() => {
                match serde_json::from_slice::<BulkStatuses>(&body) {
                    Ok(answer) => answers_in_order(
                        ids.iter().map(String::as_str),
                        answer
                            .statuses
                            .into_iter()
                            .map(|s| (s.entry_id, status_word(&s.status))),
                    ),
                    Err(e) => all(Answer::Retry(format!(
                        "POST /{path}: not a bulk answer: {e}"
                    ))),
                }
            }
            Ok((status, _)) => all(Answer::Retry(format!("POST /{path} answered {status}"))),
        }
    }
}

/// An event as an entry of Dapr's HTTP bulk envelope, serialised when it is made.
#[derive(Debug)]
pub struct HttpBulkEntry {
    pub id: String,
    pub json: Vec<u8>,
}

pub fn bulk_entry(event: &Event, spec: &TriggerSpec) -> HttpBulkEntry {
    let (ce, entry_id) = event.bulk_parts(spec);
    let event_json = ce.to_json_bytes();
    let mut json = Vec::with_capacity(event_json.len() + 256);
    json.extend_from_slice(br#"{"entryId":"#);
    push_json(&mut json, &entry_id);
    json.extend_from_slice(br#","event":"#);
    json.extend_from_slice(&event_json);
    json.extend_from_slice(br#","metadata":{"#);
    let metadata = &event.metadata;
    let mut first = true;
    for (i, (key, value)) in metadata.iter().enumerate() {
        // A repeated key (a NATS header sent twice) keeps its last value, as a map would.
        if metadata[i + 1..].iter().any(|(k, _)| k == key) {
            continue;
        }
        if !first {
            json.push(b',');
        }
        first = false;
        push_json_member(&mut json, key, value);
    }
    json.extend_from_slice(b"}");
    json.extend_from_slice(br#","contentType":"application/cloudevents+json"}"#);
    HttpBulkEntry { id: entry_id, json }
}

impl Default for HttpApp {
    fn default() -> Self {
        HttpApp::new()
    }
}

/// A 2xx body may carry Dapr's `{"status": "SUCCESS" | "RETRY" | "DROP"}`.
fn status_answer(body: &[u8]) -> Answer {
    #[derive(Deserialize)]
    struct Status {
        status: Option<String>,
    }
    match serde_json::from_slice::<Status>(body)
        .ok()
        .and_then(|s| s.status)
    {
        None => Answer::Success,
        Some(s) if s.is_empty() => Answer::Success,
        Some(s) => status_word(&s),
    }
}

/// Dapr's status words; anything else (a bulk entry's empty status included) retries.
fn status_word(status: &str) -> Answer {
    match status.to_ascii_uppercase().as_str() {
        "SUCCESS" => Answer::Success,
        "DROP" => Answer::Drop("app answered DROP".into()),
        "RETRY" => Answer::Retry("app answered RETRY".into()),
        other => Answer::Retry(format!("app answered unknown status {other:?}")),
    }
}

/// The POST that delivers `event` to an HTTP app at `addr`: broker metadata as headers (those
/// that cannot be header names or values are left out), the body a CloudEvent (pub/sub) or
/// the payload as is (bindings).
pub fn delivery_request(
    addr: SocketAddr,
    spec: &TriggerSpec,
    event: &Event,
    path: &str,
) -> Result<Request<Full<Bytes>>, http::Error> {
    let path = path.trim_start_matches('/');
    let mut builder = Request::post(format!("http://{addr}/{path}"));
    for (k, v) in &event.metadata {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            builder = builder.header(name, value);
        }
    }
    let body = match spec.kind {
        TriggerKind::Binding => {
            // An empty body (a cron tick) goes as daprd sends it: JSON content type.
            let json = event.data.is_empty()
                || serde_json::from_slice::<serde::de::IgnoredAny>(&event.data).is_ok();
            builder = builder.header(
                http::header::CONTENT_TYPE,
                if json {
                    "application/json"
                } else {
                    "application/octet-stream"
                },
            );
            event.data.clone()
        }
        TriggerKind::PubSub => {
            builder = builder.header(http::header::CONTENT_TYPE, "application/cloudevents+json");
            Bytes::from(event.cloud_event(spec).to_json_bytes())
        }
    };
    builder.body(Full::new(body))
}
