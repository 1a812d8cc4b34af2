//! For platforms without KEDA: `POST {"namespace", "function", "waiting"}` (JSON) to a
//! configured URL when a function's first request starts waiting. Fire and forget, with
//! a few quick retries; a slow or failing hook never delays a request.

use crate::telemetry::Metrics;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub struct Webhook {
    url: http::Uri,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Webhook {
    /// `url` must be `http://host[:port]/path`.
    pub fn new(url: &str) -> Result<Webhook, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(format!("{url:?} must be an http:// URL"));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Ok(Webhook {
            url: uri,
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    pub fn notify(&self, namespace: &str, function: &str, waiting: usize, metrics: &Arc<Metrics>) {
        let body = serde_json::json!({
            "namespace": namespace,
            "function": function,
            "waiting": waiting,
        })
        .to_string();
        let (hook, metrics) = (self.clone(), metrics.clone());
        let labels = [namespace.to_owned(), function.to_owned()];
        tokio::spawn(async move {
            for attempt in 0..3u32 {
                let request = http::Request::post(hook.url.clone())
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body.clone())))
                    .expect("a valid request");
                let sent =
                    tokio::time::timeout(Duration::from_secs(5), hook.client.request(request))
                        .await;
                match sent {
                    Ok(Ok(r)) if r.status().is_success() => {
                        metrics
                            .scale_signals
                            .with_label_values(&[&labels[0], &labels[1], "webhook"])
                            .inc();
                        return;
                    }
                    Ok(Ok(r)) => {
                        tracing::warn!(url = %hook.url, status = %r.status(), "scale webhook answered an error")
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(url = %hook.url, error = %e, "scale webhook failed")
                    }
                    Err(_) => tracing::warn!(url = %hook.url, "scale webhook timed out"),
                }
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
        });
    }
}
