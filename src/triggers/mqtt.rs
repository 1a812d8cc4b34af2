//! MQTT inputs (`bindings.mqtt`/`mqtt3`, `pubsub.mqtt`/`mqtt3`) as Dapr 1.11's mqtt3
//! runs them: MQTT 3.1.1, subscribed at QoS 1, a persistent session unless
//! `cleanSession`, each message acknowledged (PUBACK) only after the function took it, so
//! the broker redelivers what a stopped or killed fngate had not delivered. A binding gets
//! the payload as is with metadata `topic`; a pub/sub gets a CloudEvent, as from the other
//! pub/subs. Messages are delivered one at a time in arrival order, retried with backoff
//! until the function takes them, and acknowledged in that order (MQTT requires it).

use super::delivery::{Settled, TriggerRuntime};
use super::event::Event;
use crate::plan::{MqttBroker, MqttSource, TriggerKind};
use rumqttc::{
    AsyncClient, Event as MqttEvent, MqttOptions, Packet, Publish, QoS, SubscribeFilter,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A client's options for `broker`: credentials, TLS, keep-alive, and no message size
/// limit of rumqttc's own (Dapr reads whatever the broker passes; rumqttc's default is
/// 10 KiB).
pub(crate) fn options(broker: &MqttBroker, client_id: &str) -> Result<MqttOptions, String> {
    let mut options = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(256 * 1024 * 1024, 256 * 1024 * 1024);
    if let Some(user) = &broker.username {
        options.set_credentials(user.clone(), broker.password.clone().unwrap_or_default());
    }
    if let Some(tls) = &broker.tls {
        let config = crate::client_tls::client_config(&tls.pems())
            .map_err(|(key, e)| format!("{key}: {e}"))?;
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(config),
        ));
    }
    Ok(options)
}

/// A message and the connection it came on: an ack for a message of an earlier
/// connection would hit whatever reused its packet id, so it is not sent (the broker
/// redelivers it in the resumed session instead).
struct Received {
    publish: Publish,
    connection: u64,
}

/// Runs until the trigger stops, reconnecting with backoff.
pub async fn run(rt: Arc<TriggerRuntime>, source: MqttSource) {
    let mut options = match options(&source.broker, &source.client_id) {
        Ok(o) => o,
        Err(e) => {
            // Checked when compiled; only a system without its root store gets here.
            tracing::error!(trigger = %rt.key, error = %e, "mqtt TLS");
            return;
        }
    };
    options
        .set_clean_session(source.clean_session)
        .set_manual_acks(true);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let connection = Arc::new(AtomicU64::new(0));
    // The broker bounds what is unacknowledged (mosquitto: 20 per client), so this
    // queue stays short; the event loop must keep polling meanwhile (keep-alive, acks).
    let (queue, received) = mpsc::unbounded_channel::<Received>();
    let deliverer = tokio::spawn(deliver_in_order(
        rt.clone(),
        client.clone(),
        received,
        connection.clone(),
    ));
    let connected = {
        let [ns, f, t] = rt.labels();
        rt.metrics
            .broker_connected
            .with_label_values(&[ns, f, t, "mqtt"])
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        let polled = tokio::select! {
            _ = rt.stopping() => break,
            p = eventloop.poll() => p,
        };
        match polled {
            Ok(MqttEvent::Incoming(Packet::ConnAck(ack))) => {
                connection.fetch_add(1, Ordering::SeqCst);
                backoff = Duration::from_millis(100);
                tracing::info!(trigger = %rt.key, broker = %source.broker, session_present = ack.session_present, "mqtt connected");
                // Always (re)subscribe: a broker may have lost the session's
                // subscriptions (mosquitto keeps no shared ones across a restart).
                let filters = source
                    .topics
                    .iter()
                    .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                if let Err(e) = client.subscribe_many(filters).await {
                    tracing::warn!(trigger = %rt.key, error = %e, "mqtt subscribe");
                }
            }
            // Connected counts from the SUBACK: from then on nothing published is missed.
            Ok(MqttEvent::Incoming(Packet::SubAck(_))) => connected.set(1),
            Ok(MqttEvent::Incoming(Packet::Publish(publish))) => {
                let _ = queue.send(Received {
                    publish,
                    connection: connection.load(Ordering::SeqCst),
                });
            }
            Ok(_) => {}
            Err(e) => {
                connected.set(0);
                tracing::warn!(trigger = %rt.key, error = %e, retry_in = ?backoff, "mqtt connection lost");
                tokio::select! {
                    _ = rt.stopping() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    // What was received and not delivered stays unacknowledged: the broker redelivers it.
    drop(queue);
    let _ = deliverer.await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = client.disconnect().await;
        // Drive the loop so the DISCONNECT (and queued acks) go out.
        while eventloop.poll().await.is_ok() {}
    })
    .await;
    connected.set(0);
    tracing::info!(trigger = %rt.key, "mqtt consumer stopped");
}

async fn deliver_in_order(
    rt: Arc<TriggerRuntime>,
    client: AsyncClient,
    mut received: mpsc::UnboundedReceiver<Received>,
    connection: Arc<AtomicU64>,
) {
    while let Some(Received {
        publish,
        connection: on,
    }) = received.recv().await
    {
        if rt.stopped() {
            break;
        }
        let event = to_event(&rt, &publish);
        match rt.settle(&event, None).await {
            Settled::Released => break,
            _ => {
                if connection.load(Ordering::SeqCst) == on {
                    if let Err(e) = client.ack(&publish).await {
                        tracing::debug!(trigger = %rt.key, error = %e, "mqtt ack");
                    }
                }
            }
        }
    }
}

fn to_event(rt: &TriggerRuntime, publish: &Publish) -> Event {
    // A binding passes the topic the message came on; a pub/sub trigger has one topic
    // filter, the subscription the app made.
    let (metadata, topic) = match rt.spec.kind {
        TriggerKind::Binding => (
            vec![("topic".into(), publish.topic.clone())],
            publish.topic.clone(),
        ),
        TriggerKind::PubSub => (Vec::new(), rt.key.topic.clone()),
    };
    Event {
        data: publish.payload.clone(),
        metadata,
        topic,
        position: format!("mqtt/{}/{}", publish.topic, publish.pkid),
        received: Instant::now(),
    }
}
