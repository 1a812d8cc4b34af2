//! Dapr's HTTP API (`/v1.0/state`, `/publish`, `/bindings`, `/metadata`, ...) with any
//! method, path, query, token, content type and body: never a panic, every answer a real
//! HTTP status, every 5xx a Dapr error body, and a request without the app's token refused.
//! The state store is the machine's Redis (database 15, keys under `fuzz||`), which must be
//! up (`scripts/services.sh` starts it); publish goes to a JetStream pub/sub (NATS on
//! 127.0.0.1:4222, a subject no stream takes), output bindings to `bindings.http` at a
//! port where nothing listens.
use arbitrary::{Result, Unstructured};
use bytes::Bytes;
use fngate::catalog::snapshot_from_texts;
use fngate::plan_swap::PlanSwap;
use fngate::runtime::{handle_http, DaprApi};
use fngate::telemetry::Metrics;
use std::sync::{Arc, OnceLock};

const CATALOG: &str = r#"apiVersion: v1
kind: Secret
metadata:
  name: fuzz-token
  namespace: fuzz
stringData:
  token: tok-fuzz
---
apiVersion: core.openfunction.io/v1beta2
kind: Function
metadata:
  name: app
  namespace: fuzz
spec:
  serving:
    annotations:
      dapr.io/api-token-secret: fuzz-token
    states:
      cart:
        type: state.redis
        metadata:
          - name: redisHost
            value: 127.0.0.1:6379
          - name: redisDB
            value: "15"
          - name: keyPrefix
            value: fuzz
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: bus
  namespace: fuzz
spec:
  type: pubsub.jetstream
  version: v1
  metadata:
    - name: natsURL
      value: nats://127.0.0.1:4222
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: hook
  namespace: fuzz
spec:
  type: bindings.http
  version: v1
  metadata:
    - name: url
      value: http://127.0.0.1:9/base
"#;

pub struct Harness {
    pub runtime: tokio::runtime::Runtime,
    pub api: Arc<DaprApi>,
}

pub fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        // Without Redis every state call is a 500 and the state paths are not exercised:
        // that is a broken set-up, not a pass.
        std::net::TcpStream::connect("127.0.0.1:6379")
            .expect("the dapr_http check needs Redis on 127.0.0.1:6379 (scripts/services.sh)");
        let metrics = Arc::new(Metrics::new());
        let mut plans = PlanSwap::new(Default::default(), metrics.clone());
        plans.swap_in(&snapshot_from_texts([("fuzz.yaml", CATALOG)]));
        let diagnostics = plans.plan().load().diagnostics.clone();
        assert!(
            diagnostics.is_empty(),
            "the fuzz catalog compiles cleanly: {diagnostics:?}"
        );
        // A target with no endpoint is held: briefly, so an input cannot stall the check.
        let activator = Arc::new(fngate::activator::Activator::new(
            plans.plan(),
            plans.revisions(),
            fngate::activator::HoldLimits {
                timeout: std::time::Duration::from_millis(1),
                ..Default::default()
            },
            metrics.clone(),
            None,
        ));
        let api = DaprApi::new(plans.plan(), metrics, Default::default(), activator);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Harness { runtime, api }
    })
}

const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"];
const PREFIXES: &[&str] = &[
    "/v1.0/state/cart",
    "/v1.0/state/cart/",
    "/v1.0/state/cart/bulk",
    "/v1.0/state/cart/transaction",
    "/v1.0/publish/",
    "/v1.0-alpha1/publish/bulk/",
    "/v1.0/bindings/",
    "/v1.0/metadata",
    "/v1.0/",
    "/",
    "/v1.0/publish/bus/",
    "/v1.0-alpha1/publish/bulk/bus/",
    "/v1.0/bindings/hook",
];

fn request(
    u: &mut Unstructured,
) -> Result<Option<(http::Request<http_body_util::Full<Bytes>>, bool)>> {
    let method = *u.choose(METHODS)?;
    let prefix = *u.choose(PREFIXES)?;
    let rest: String = u.arbitrary()?;
    let token: u8 = u.arbitrary()?;
    let content_type: Option<String> = u.arbitrary()?;
    let body: Vec<u8> = u.arbitrary()?;
    let Ok(uri) = http::Uri::try_from(format!("{prefix}{rest}")) else {
        // hyper answers 400 before the API sees it.
        return Ok(None);
    };
    let mut builder = http::Request::builder().method(method).uri(uri);
    let authorized = !token.is_multiple_of(4);
    if authorized {
        builder = builder.header("dapr-api-token", "tok-fuzz");
    } else if token % 8 == 4 {
        builder = builder.header("dapr-api-token", "wrong");
    }
    if let Some(ct) = content_type {
        if let Ok(value) = http::HeaderValue::from_str(&ct) {
            builder = builder.header("content-type", value);
        }
    }
    Ok(builder
        .body(http_body_util::Full::new(Bytes::from(body)))
        .ok()
        .map(|r| (r, authorized)))
}

pub fn check(input: &[u8]) {
    let Ok(Some((req, authorized))) = request(&mut Unstructured::new(input)) else {
        return;
    };
    let path = req.uri().path().to_owned();
    let h = harness();
    let reply = h.runtime.block_on(handle_http(&h.api, req));
    let status = reply.status().as_u16();
    assert!((200..600).contains(&status), "{status}");
    let health = ["/v1.0/healthz", "/v1.0-alpha1/healthz"]
        .iter()
        .any(|h| path.starts_with(h));
    let api_path = path.starts_with("/v1.0/") || path.starts_with("/v1.0-alpha1/");
    if api_path && !health && !authorized {
        assert_eq!(status, 401, "{path} without the app's token");
    }
    if status >= 500 {
        let body = h.runtime.block_on(async {
            use http_body_util::BodyExt;
            reply.into_body().collect().await.unwrap().to_bytes()
        });
        let json: serde_json::Value =
            serde_json::from_slice(&body).expect("a 5xx carries a Dapr error body");
        assert!(json["errorCode"].is_string(), "{json}");
    }
}
