//! Where published events and binding calls go: Kafka (partitioned as Dapr's Sarama
//! producer does, so a key lands on the same partition whichever runtime published it),
//! JetStream (`Nats-Msg-Id` from the event's id), and plain HTTP for `bindings.http`.

use super::clients::Clients;
use crate::plan::{ComponentId, KafkaProducerSettings};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a topic's partition count is trusted before it is read again.
const PARTITIONS_TTL: Duration = Duration::from_secs(30);
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
/// Topics whose partition count is remembered: callers choose topics, so the cache must
/// not grow with them. Past this the stale entries go, then (all fresh) everything.
const PARTITION_CACHE_MAX: usize = 4096;
/// The largest `bindings.http` response body taken (daprd's default body limit).
const HTTP_BINDING_MAX_BODY: usize = 4 * 1024 * 1024;

/// Sarama's default hash partitioner: FNV-1a 32 of the key, as a signed 32-bit number,
/// modulo the partition count, negated when negative.
pub(crate) fn sarama_partition(key: &[u8], partitions: i32) -> i32 {
    let mut hash: u32 = 0x811c9dc5;
    for b in key {
        hash ^= *b as u32;
        hash = hash.wrapping_mul(0x01000193);
    }
    let p = (hash as i32) % partitions;
    if p < 0 {
        -p
    } else {
        p
    }
}

#[derive(Default)]
pub(crate) struct PartitionCounts {
    counts: Mutex<HashMap<String, (i32, Instant)>>,
}

/// One Kafka record as Dapr's producer writes it.
pub(crate) struct KafkaRecord<'a> {
    pub topic: &'a str,
    /// `None`: a tombstone (the payload was exactly `null`).
    pub value: Option<&'a [u8]>,
    pub metadata: &'a [(String, String)],
}

impl Clients {
    pub(crate) async fn kafka_send(
        &self,
        id: &ComponentId,
        settings: &KafkaProducerSettings,
        counts: &PartitionCounts,
        record: KafkaRecord<'_>,
    ) -> Result<(), String> {
        let producer = self.kafka_producer(id, settings)?;
        let find = |name: &str| super::metadata_value(record.metadata, name);
        let key = find("partitionKey").or(find("__key"));
        let partition = match find("partitionNumber") {
            Some(n) => Some(
                n.parse::<i32>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| format!("partitionNumber {n:?} is not a partition number"))?,
            ),
            None => match key {
                Some(k) => {
                    let n =
                        partition_count(&producer, counts, &settings.brokers, record.topic).await?;
                    Some(sarama_partition(k.as_bytes(), n))
                }
                None => None,
            },
        };
        let mut headers = OwnedHeaders::new_with_capacity(record.metadata.len());
        for (k, v) in record.metadata {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let mut r: FutureRecord<'_, str, [u8]> = FutureRecord::to(record.topic).headers(headers);
        if let Some(v) = record.value {
            r = r.payload(v);
        }
        if let Some(k) = key {
            r = r.key(k);
        }
        if let Some(p) = partition {
            r = r.partition(p);
        }
        producer
            .send(r, BROKER_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|(e, _)| e.to_string())
    }

    /// `msg_id`: the event's id when fngate built the envelope; otherwise it is looked
    /// for in the payload, as Dapr's component does.
    pub(crate) async fn jetstream_publish(
        &self,
        nats_url: &str,
        subject: &str,
        data: Bytes,
        msg_id: Option<&str>,
    ) -> Result<(), String> {
        // Checked before the shared connection sees them: a subject or header the server
        // rejects could cost every app on it its connection.
        if let Some(problem) = nats_subject_problem(subject) {
            return Err(problem);
        }
        let js = self.jetstream(nats_url).await?;
        let mut headers = async_nats::HeaderMap::new();
        // JetStream de-duplicates on the event's id, as Dapr's component asks it to. Only
        // `id` is kept; the rest of the document is skipped without building values.
        #[derive(serde::Deserialize)]
        struct EventId<'a> {
            #[serde(borrow)]
            id: Option<std::borrow::Cow<'a, str>>,
        }
        let id = match msg_id {
            Some(id) => Some(std::borrow::Cow::Borrowed(id)),
            None => match serde_json::from_slice::<EventId<'_>>(&data) {
                Ok(EventId { id: Some(id) }) => Some(id),
                _ => None,
            },
        };
        if let Some(id) = id {
            if id.chars().any(char::is_control) {
                return Err(format!(
                    "event id {id:?} has control characters: not a NATS header value"
                ));
            }
            headers.insert("Nats-Msg-Id", &*id);
        }
        let ack = js
            .publish_with_headers(subject.to_owned(), headers, data)
            .await
            .map_err(|e| e.to_string())?;
        ack.await.map(|_| ()).map_err(|e| e.to_string())
    }
}

async fn partition_count(
    producer: &FutureProducer,
    counts: &PartitionCounts,
    brokers: &str,
    topic: &str,
) -> Result<i32, String> {
    let cache_key = format!("{brokers}\0{topic}");
    if let Some((n, at)) = counts.counts.lock().expect("not poisoned").get(&cache_key) {
        if at.elapsed() < PARTITIONS_TTL {
            return Ok(*n);
        }
    }
    let producer = producer.clone();
    let t = topic.to_owned();
    let n = tokio::task::spawn_blocking(move || {
        let metadata = producer
            .client()
            .fetch_metadata(Some(&t), BROKER_TIMEOUT)
            .map_err(|e| e.to_string())?;
        let topic = metadata
            .topics()
            .iter()
            .find(|m| m.name() == t)
            .ok_or_else(|| format!("topic {t} not in the broker's metadata"))?;
        if let Some(e) = topic.error() {
            return Err(format!("topic {t}: {e:?}"));
        }
        Ok(topic.partitions().len() as i32)
    })
    .await
    .map_err(|e| e.to_string())??;
    if n == 0 {
        return Err(format!("topic {topic} has no partitions"));
    }
    let mut cache = counts.counts.lock().expect("not poisoned");
    if cache.len() >= PARTITION_CACHE_MAX {
        cache.retain(|_, (_, at)| at.elapsed() < PARTITIONS_TTL);
        if cache.len() >= PARTITION_CACHE_MAX {
            cache.clear();
        }
    }
    cache.insert(cache_key, (n, Instant::now()));
    Ok(n)
}

/// Why `subject` cannot be published to on NATS, if it cannot: empty, an empty token,
/// whitespace or control characters, or a wildcard.
fn nats_subject_problem(subject: &str) -> Option<String> {
    let bad = subject.is_empty()
        || subject.chars().any(|c| c.is_whitespace() || c.is_control())
        || subject
            .split('.')
            .any(|token| token.is_empty() || token == "*" || token == ">");
    bad.then(|| format!("{subject:?} is not a NATS subject one can publish to"))
}

/// Why `topic` cannot be published to on MQTT, if it cannot: empty, longer than 65,535
/// bytes, a wildcard, or a character a broker refuses (U+0000, control characters; Mosquitto
/// drops the connection for them).
pub(crate) fn mqtt_topic_problem(topic: &str) -> Option<String> {
    let bad = topic.is_empty()
        || topic.len() > 65_535
        || topic.contains(['+', '#'])
        || topic
            .chars()
            .any(|c| c.is_control() || c == '\u{fffe}' || c == '\u{ffff}');
    bad.then(|| format!("{topic:?} is not an MQTT topic name one can publish to"))
}

/// The answer of a `bindings.http` call.
pub(crate) struct HttpBindingReply {
    pub status: u16,
    pub body: Bytes,
    pub metadata: Vec<(String, String)>,
}

pub(crate) type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// A client for `http://` and `https://` URLs, with `tls`'s CA and client certificate
/// (the system's roots without a CA).
pub(crate) fn http_client(tls: Option<&crate::plan::HttpTls>) -> Result<HttpClient, String> {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    // Request-response traffic: a small write must not wait for the peer's delayed ACK.
    connector.set_nodelay(true);
    connector.enforce_http(false);
    let config = crate::client_tls::client_config(&crate::plan::HttpTls::pems(tls))
        .map_err(|(key, e)| format!("{key}: {e}"))?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(std::sync::Arc::unwrap_or_clone(config))
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https),
    )
}

/// `bindings.http`: the operation is the method (`create` = POST), metadata `path` is
/// joined to the URL, metadata keys that start with an uppercase letter are headers.
pub(crate) async fn http_binding(
    client: &HttpClient,
    url: &str,
    operation: &str,
    data: Bytes,
    metadata: &[(String, String)],
) -> Result<HttpBindingReply, String> {
    let method = match operation {
        "create" | "post" => http::Method::POST,
        "get" => http::Method::GET,
        "head" => http::Method::HEAD,
        "put" => http::Method::PUT,
        "patch" => http::Method::PATCH,
        "delete" => http::Method::DELETE,
        "options" => http::Method::OPTIONS,
        "trace" => http::Method::TRACE,
        _ => return Err("invalid operation".into()),
    };
    let find = |name: &str| super::metadata_value(metadata, name);
    let target = match find("path").filter(|p| !p.is_empty()) {
        Some(p) => format!(
            "{}/{}",
            url.trim_end_matches('/'),
            p.trim_start_matches('/')
        ),
        None => url.to_owned(),
    };
    let with_body = matches!(
        method,
        http::Method::POST | http::Method::PUT | http::Method::PATCH
    );
    let mut request = http::Request::builder().method(method).uri(&target);
    let has = |name: &str| metadata.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    if with_body && !has("Content-Type") {
        request = request.header("Content-Type", "application/json; charset=utf-8");
    }
    if !has("Accept") {
        request = request.header("Accept", "application/json; charset=utf-8");
    }
    for (k, v) in metadata {
        if k.starts_with(|c: char| c.is_ascii_uppercase())
            || k == "traceparent"
            || k == "tracestate"
        {
            request = request.header(k.as_str(), v.as_str());
        }
    }
    let request = request
        .body(Full::new(if with_body { data } else { Bytes::new() }))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(BROKER_TIMEOUT, client.request(request))
        .await
        .map_err(|_| format!("no response from {target} within {BROKER_TIMEOUT:?}"))?
        .map_err(|e| error_chain(&e))?;
    let status = response.status();
    let mut out = vec![
        ("statusCode".to_owned(), status.as_u16().to_string()),
        (
            "status".to_owned(),
            format!(
                "{} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            ),
        ),
    ];
    let mut joined: Vec<(String, String)> = Vec::new();
    for (name, value) in response.headers() {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        let name = canonical_header(name.as_str());
        match joined.iter_mut().find(|(k, _)| *k == name) {
            Some((_, existing)) => {
                existing.push_str(", ");
                existing.push_str(&v);
            }
            None => joined.push((name, v)),
        }
    }
    out.extend(joined);
    let limited = http_body_util::Limited::new(response.into_body(), HTTP_BINDING_MAX_BODY);
    let body = tokio::time::timeout(BROKER_TIMEOUT, limited.collect())
        .await
        .map_err(|_| format!("body from {target} not read within {BROKER_TIMEOUT:?}"))?
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                format!("the response from {target} is larger than {HTTP_BINDING_MAX_BODY} bytes")
            } else {
                e.to_string()
            }
        })?
        .to_bytes();
    Ok(HttpBindingReply {
        status: status.as_u16(),
        body,
        metadata: out,
    })
}

/// An error with its causes (a refused certificate hides under hyper's "client error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Go's canonical header form (`content-type` -> `Content-Type`), as daprd reports them.
fn canonical_header(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper { c.to_ascii_uppercase() } else { c });
        upper = c == '-';
    }
    out
}

/// Publishes to one MQTT broker at QoS 1 and waits for each PUBACK, as Dapr's mqtt3
/// does: one publish at a time on the connection, so the next PUBACK is this one's. The
/// connection is kept by its own task (reconnecting with backoff) until the publisher is
/// dropped.
pub(crate) struct MqttPublisher {
    client: rumqttc::AsyncClient,
    /// Counts PUBACKs; a publish waits for it to move past what it saw before sending.
    acked: tokio::sync::watch::Receiver<u64>,
    connected: tokio::sync::watch::Receiver<Link>,
    one_at_a_time: tokio::sync::Mutex<()>,
    task: tokio::task::JoinHandle<()>,
}

/// A publisher's connection, with the last error when it is down.
#[derive(Clone, Debug)]
enum Link {
    Connecting,
    Up,
    Down(String),
}

impl MqttPublisher {
    pub(crate) fn connect(
        settings: &crate::plan::MqttProducerSettings,
    ) -> Result<MqttPublisher, String> {
        use rumqttc::{Event, Packet};
        let mut options = crate::triggers::mqtt_options(&settings.broker, &settings.client_id)?;
        options.set_clean_session(true);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 16);
        let (ack_tx, acked) = tokio::sync::watch::channel(0u64);
        let (up, connected) = tokio::sync::watch::channel(Link::Connecting);
        let broker = settings.broker.to_string();
        let task = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        up.send_replace(Link::Up);
                        backoff = Duration::from_millis(100);
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        ack_tx.send_modify(|n| *n += 1);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        up.send_replace(Link::Down(e.to_string()));
                        tracing::debug!(%broker, error = %e, "mqtt publisher connection");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
        Ok(MqttPublisher {
            client,
            acked,
            connected,
            one_at_a_time: tokio::sync::Mutex::new(()),
            task,
        })
    }

    /// Publishes at QoS 1; `Ok` once the broker acknowledged it (within 10 s).
    pub(crate) async fn publish(
        &self,
        topic: &str,
        payload: Bytes,
        retain: bool,
    ) -> Result<(), String> {
        if let Some(problem) = mqtt_topic_problem(topic) {
            return Err(problem);
        }
        let _turn = self.one_at_a_time.lock().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        // A first publish may come before the connection is up.
        let mut connected = self.connected.clone();
        let up = tokio::time::timeout_at(deadline, async {
            connected.wait_for(|c| matches!(c, Link::Up)).await.is_ok()
        })
        .await;
        if up != Ok(true) {
            return Err(match &*connected.borrow() {
                Link::Down(e) => format!("not connected to the MQTT broker: {e}"),
                _ => "not connected to the MQTT broker".into(),
            });
        }
        let mut acked = self.acked.clone();
        let before = *acked.borrow_and_update();
        self.client
            .publish_bytes(topic, rumqttc::QoS::AtLeastOnce, retain, payload)
            .await
            .map_err(|e| e.to_string())?;
        let waited = tokio::time::timeout_at(deadline, async {
            acked.wait_for(|n| *n > before).await.is_ok()
        })
        .await;
        match waited {
            Ok(true) => Ok(()),
            _ => Err("the MQTT broker did not acknowledge the message within 10s".into()),
        }
    }
}

impl Drop for MqttPublisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_a_broker_would_refuse_are_refused_before_the_shared_connection_sees_them() {
        for ok in ["orders", "a/b/c", "é😀", "with space"] {
            assert_eq!(mqtt_topic_problem(ok), None, "{ok:?}");
        }
        for bad in ["", "a/+/b", "a/#", "nul\u{0}", "line\nbreak", "del\u{7f}"] {
            assert!(mqtt_topic_problem(bad).is_some(), "{bad:?}");
        }
        for ok in ["orders", "shop.orders.created", "é"] {
            assert_eq!(nats_subject_problem(ok), None, "{ok:?}");
        }
        for bad in ["", "a b", "a..b", "a.", "a.*", "a.>", "tab\tx", "cr\rlf"] {
            assert!(nats_subject_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn keys_land_on_the_partitions_saramas_hash_partitioner_picks() {
        // Expected values computed apart from this code (FNV-1a 32 in Python, then Go's
        // int32 cast, truncating % and sign flip): key, partitions, partition.
        for (key, partitions, want) in [
            (&b"a"[..], 10, 6), // 0xe40c292c = -468965076 as int32
            (&b"a"[..], 7, 6),
            (&b"foo"[..], 10, 3), // 0xa9f37ed7 = -1443660073
            (&b"foo"[..], 7, 2),
            (&b""[..], 10, 5),      // the offset basis 0x811c9dc5 = -2128831035
            (&b"key-0"[..], 10, 7), // 0x58e035d9, positive
            (&b"key-1"[..], 7, 1),
            (&b"order-42"[..], 3, 2),
            (&b"b"[..], 10, 9),
        ] {
            assert_eq!(
                sarama_partition(key, partitions),
                want,
                "{key:?} of {partitions}"
            );
        }
    }
}
