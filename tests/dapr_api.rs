//! fngate as the functions' Dapr runtime: the official Dapr gRPC client (the dapr crate's
//! generated `DaprClient`) and plain HTTP against the real binary, with state in a real
//! Redis (a private `redis-server` per test, so it can be restarted), publishes into real
//! NATS JetStream, and an output binding to a real HTTP server.

mod common;

use common::redis_server::Redis;
use common::*;
use dapr::dapr::proto::common::v1 as common_v1;
use dapr::dapr::proto::runtime::v1 as rt;
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use prost::Message;
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;

const NATS: &str = "nats://127.0.0.1:4222";

fn catalog(redis: &Redis, extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let host = redis.addr();
    let yaml = format!(
        r#"apiVersion: v1
kind: Secret
metadata:
  name: orders-token
  namespace: shop
stringData:
  token: tok-orders
---
apiVersion: v1
kind: Secret
metadata:
  name: billing-token
  namespace: shop
data:
  token: dG9rLWJpbGxpbmc=
---
apiVersion: core.openfunction.io/v1beta2
kind: Function
metadata:
  name: orders
  namespace: shop
spec:
  version: v1.0.0
  serving:
    annotations:
      dapr.io/api-token-secret: orders-token
    states:
      cart:
        spec:
          type: state.redis
          version: v1
          metadata:
            - name: redisHost
              value: {host}
---
apiVersion: core.openfunction.io/v1beta2
kind: Function
metadata:
  name: billing
  namespace: shop
spec:
  serving:
    annotations:
      dapr.io/api-token-secret: billing-token
    states:
      cart:
        type: state.redis
        metadata:
          - name: redisHost
            value: {host}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: ledger
  namespace: shop
spec:
  type: state.redis
  version: v1
  metadata:
    - name: redisHost
      value: {host}
    - name: keyPrefix
      value: name
scopes:
  - billing-shop
{extra}"#
    );
    std::fs::write(dir.path().join("catalog.yaml"), yaml).unwrap();
    dir
}

fn item(key: &str, value: &[u8]) -> common_v1::StateItem {
    common_v1::StateItem {
        key: key.into(),
        value: value.to_vec(),
        ..Default::default()
    }
}

fn save(key: &str, value: &[u8]) -> rt::SaveStateRequest {
    rt::SaveStateRequest {
        store_name: "cart".into(),
        states: vec![item(key, value)],
    }
}

fn delete_with_etag(key: &str, etag: &str) -> rt::DeleteStateRequest {
    rt::DeleteStateRequest {
        store_name: "cart".into(),
        key: key.into(),
        etag: Some(common_v1::Etag { value: etag.into() }),
        ..Default::default()
    }
}

fn get(key: &str) -> rt::GetStateRequest {
    rt::GetStateRequest {
        store_name: "cart".into(),
        key: key.into(),
        ..Default::default()
    }
}

/// The orders app reads a key of its store `cart`.
async fn read(c: &mut DaprClient<Channel>, key: &str) -> rt::GetStateResponse {
    c.get_state(with_token(get(key), "tok-orders"))
        .await
        .unwrap()
        .into_inner()
}

/// The orders app writes a key of its store `cart` (raw bytes, no ETag).
async fn write(c: &mut DaprClient<Channel>, key: &str, value: &[u8]) {
    c.save_state(with_token(save(key, value), "tok-orders"))
        .await
        .unwrap();
}

/// ErrorInfo.reason from `grpc-status-details-bin`, checking (as the Python SDK does)
/// that the details repeat the status's code and message.
fn reason(status: &tonic::Status) -> String {
    #[derive(Message)]
    struct RpcStatus {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
        #[prost(message, repeated, tag = "3")]
        details: Vec<prost_types::Any>,
    }
    #[derive(Message)]
    struct ErrorInfo {
        #[prost(string, tag = "1")]
        reason: String,
        #[prost(string, tag = "2")]
        domain: String,
    }
    let s = RpcStatus::decode(status.details()).expect("rich error details");
    assert_eq!(s.code, status.code() as i32, "details code = status code");
    assert_eq!(
        s.message,
        status.message(),
        "details message = status message"
    );
    let info = s
        .details
        .iter()
        .find(|a| a.type_url.ends_with("google.rpc.ErrorInfo"))
        .expect("an ErrorInfo");
    let info = ErrorInfo::decode(&info.value[..]).unwrap();
    assert_eq!(info.domain, "dapr.io");
    info.reason
}

#[test]
fn state_over_grpc_keeps_daprs_redis_layout_etags_and_first_write() {
    let redis = Redis::start();
    let dir = catalog(&redis, "");
    let gate = DaprGate::start(dir.path());
    let mut c = gate.client();
    gate.rt.block_on(async {
        write(&mut c, "k", b"hello").await;
        let got = read(&mut c, "k").await;
        assert_eq!(
            (got.data.as_slice(), got.etag.as_str()),
            (&b"hello"[..], "1")
        );

        write(&mut c, "k", b"hello again").await;
        // Dapr's layout: a hash under <app-id>||<key>, raw bytes, the version as ETag.
        let h = redis.hash("orders-shop||k");
        assert_eq!(h["data"], b"hello again");
        assert_eq!(h["version"], b"2");

        // A stale ETag: Aborted, reason ERR_STATE_SAVE, and nothing written.
        let mut stale = save("k", b"lost");
        stale.states[0].etag = Some(common_v1::Etag { value: "1".into() });
        let e = c
            .save_state(with_token(stale, "tok-orders"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Aborted);
        assert_eq!(reason(&e), "ERR_STATE_SAVE");
        assert!(
            e.message().contains("possible etag mismatch"),
            "{}",
            e.message()
        );
        assert_eq!(redis.hash("orders-shop||k")["data"], b"hello again");

        // A non-numeric ETag is invalid, not a mismatch.
        let mut invalid = save("k", b"x");
        invalid.states[0].etag = Some(common_v1::Etag {
            value: "abc".into(),
        });
        let e = c
            .save_state(with_token(invalid, "tok-orders"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);

        // First-write marks the key: later writes need the ETag, even last-write ones.
        let mut first = save("fw", b"v1");
        first.states[0].options = Some(common_v1::StateOptions {
            concurrency: 1,
            consistency: 0,
        });
        c.save_state(with_token(first, "tok-orders")).await.unwrap();
        assert_eq!(redis.hash("orders-shop||fw")["first-write"], b"0");
        let e = c
            .save_state(with_token(save("fw", b"v2"), "tok-orders"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Internal);
        let mut with_etag = save("fw", b"v2");
        with_etag.states[0].etag = Some(common_v1::Etag { value: "1".into() });
        c.save_state(with_token(with_etag, "tok-orders"))
            .await
            .unwrap();

        // Delete: a wrong ETag is refused, the right one deletes, a missing key is empty.
        let e = c
            .delete_state(with_token(delete_with_etag("k", "9"), "tok-orders"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Aborted);
        assert_eq!(reason(&e), "ERR_STATE_DELETE");
        c.delete_state(with_token(delete_with_etag("k", "2"), "tok-orders"))
            .await
            .unwrap();
        let got = read(&mut c, "k").await;
        assert!(got.data.is_empty() && got.etag.is_empty());
        assert!(redis.hash("orders-shop||k").is_empty());

        // contentType application/json: the JSON is re-encoded, as daprd decodes it.
        let mut json = save("j", br#"{ "a" : 1 }"#);
        json.states[0]
            .metadata
            .insert("contentType".into(), "application/json".into());
        c.save_state(with_token(json, "tok-orders")).await.unwrap();
        assert_eq!(redis.hash("orders-shop||j")["data"], br#"{"a":1}"#);

        // An empty key and a key with || are refused before anything is stored.
        let e = c
            .save_state(with_token(save("", b"x"), "tok-orders"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        let e = c
            .save_state(with_token(save("a||b", b"x"), "tok-orders"))
            .await
            .unwrap_err();
        assert_eq!(reason(&e), "DAPR_STATE_ILLEGAL_KEY");
    });
}

#[test]
fn data_written_by_daprd_is_read_with_its_etag_and_fngates_writes_continue_its_versions() {
    let redis = Redis::start();
    let dir = catalog(&redis, "");
    let gate = DaprGate::start(dir.path());
    let mut c = gate.client();
    // As daprd's state.redis leaves a key after seven writes over HTTP.
    let mut con = redis.connection().unwrap();
    let _: () = redis::cmd("HSET")
        .arg("orders-shop||legacy")
        .arg("data")
        .arg(r#"{"qty":3}"#)
        .arg("version")
        .arg(7)
        .query(&mut con)
        .unwrap();
    // A plain string (not Dapr's layout) is read without an ETag.
    let _: () = redis::cmd("SET")
        .arg("orders-shop||plain")
        .arg("raw")
        .query(&mut con)
        .unwrap();
    gate.rt.block_on(async {
        let got = read(&mut c, "legacy").await;
        assert_eq!(got.data, br#"{"qty":3}"#);
        assert_eq!(got.etag, "7");
        let mut next = save("legacy", br#"{"qty":4}"#);
        next.states[0].etag = Some(common_v1::Etag { value: "7".into() });
        c.save_state(with_token(next, "tok-orders")).await.unwrap();
        assert_eq!(redis.hash("orders-shop||legacy")["version"], b"8");

        let plain = read(&mut c, "plain").await;
        assert_eq!(
            (plain.data.as_slice(), plain.etag.as_str()),
            (&b"raw"[..], "")
        );
        // Writing over it replaces it with Dapr's hash.
        write(&mut c, "plain", b"now a hash").await;
        assert_eq!(redis.hash("orders-shop||plain")["version"], b"1");
    });
}

#[test]
fn bulk_ttl_and_transactions_over_grpc() {
    let redis = Redis::start();
    let dir = catalog(&redis, "");
    let gate = DaprGate::start(dir.path());
    let mut c = gate.client();
    gate.rt.block_on(async {
        c.save_state(with_token(
            rt::SaveStateRequest {
                store_name: "cart".into(),
                states: vec![item("a", b"1"), item("b", b"2"), item("c", b"3")],
            },
            "tok-orders",
        ))
        .await
        .unwrap();
        let bulk = c
            .get_bulk_state(with_token(
                rt::GetBulkStateRequest {
                    store_name: "cart".into(),
                    keys: vec!["c".into(), "missing".into(), "a".into()],
                    parallelism: 1,
                    ..Default::default()
                },
                "tok-orders",
            ))
            .await
            .unwrap()
            .into_inner();
        let got: Vec<(&str, &[u8], &str)> = bulk
            .items
            .iter()
            .map(|i| (i.key.as_str(), i.data.as_slice(), i.etag.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("c", &b"3"[..], "1"),
                ("missing", &b""[..], ""),
                ("a", &b"1"[..], "1")
            ]
        );

        // A transaction: upsert and delete together.
        let op = |kind: &str, key: &str, value: &[u8], etag: Option<&str>| {
            rt::TransactionalStateOperation {
                operation_type: kind.into(),
                request: Some(common_v1::StateItem {
                    etag: etag.map(|e| common_v1::Etag { value: e.into() }),
                    ..item(key, value)
                }),
            }
        };
        c.execute_state_transaction(with_token(
            rt::ExecuteStateTransactionRequest {
                store_name: "cart".into(),
                operations: vec![op("upsert", "a", b"10", None), op("delete", "b", b"", None)],
                ..Default::default()
            },
            "tok-orders",
        ))
        .await
        .unwrap();
        assert_eq!(redis.hash("orders-shop||a")["data"], b"10");
        assert!(redis.hash("orders-shop||b").is_empty());
        // A stale ETag fails the transaction as Internal / ERR_STATE_TRANSACTION.
        let e = c
            .execute_state_transaction(with_token(
                rt::ExecuteStateTransactionRequest {
                    store_name: "cart".into(),
                    operations: vec![op("upsert", "c", b"30", Some("5"))],
                    ..Default::default()
                },
                "tok-orders",
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Internal);
        assert_eq!(reason(&e), "ERR_STATE_TRANSACTION");
        assert_eq!(redis.hash("orders-shop||c")["data"], b"3");
        let e = c
            .execute_state_transaction(with_token(
                rt::ExecuteStateTransactionRequest {
                    store_name: "cart".into(),
                    operations: vec![op("merge", "c", b"", None)],
                    ..Default::default()
                },
                "tok-orders",
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented);

        // DeleteBulkState.
        c.delete_bulk_state(with_token(
            rt::DeleteBulkStateRequest {
                store_name: "cart".into(),
                states: vec![item("a", b""), item("c", b"")],
            },
            "tok-orders",
        ))
        .await
        .unwrap();
        assert!(redis.hash("orders-shop||a").is_empty() && redis.hash("orders-shop||c").is_empty());

        // TTL: set on the Redis key as given (a long one, so reading it back does not race
        // the clock) ...
        let mut long = save("ttl-long", b"kept an hour");
        long.states[0]
            .metadata
            .insert("ttlInSeconds".into(), "3600".into());
        c.save_state(with_token(long, "tok-orders")).await.unwrap();
        let ttl: i64 = redis::cmd("TTL")
            .arg("orders-shop||ttl-long")
            .query(&mut redis.connection().unwrap())
            .unwrap();
        assert!(
            (1800..=3600).contains(&ttl),
            "TTL {ttl} for ttlInSeconds 3600"
        );
        // ... and a short one expires: the key reads as missing afterwards.
        let mut short = save("ttl", b"soon gone");
        short.states[0]
            .metadata
            .insert("ttlInSeconds".into(), "1".into());
        c.save_state(with_token(short, "tok-orders")).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = read(&mut c, "ttl").await;
            if got.data.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "the key never expired");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

#[test]
fn tokens_select_the_app_and_scopes_hide_other_apps_components() {
    let redis = Redis::start();
    let dir = catalog(&redis, "");
    let gate = DaprGate::start(dir.path());
    let mut c = gate.client();
    gate.rt.block_on(async {
        // No token and a wrong token: Unauthenticated, as daprd.
        let e = c
            .get_state(tonic::Request::new(get("k")))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert_eq!(e.message(), "Unauthorized");
        assert_eq!(reason(&e), "Unauthorized");
        let e = c
            .get_state(with_token(get("k"), "tok-nobody"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);

        // Each app's keys are its own: billing cannot read orders' key.
        c.save_state(with_token(
            save("shared-name", b"orders' data"),
            "tok-orders",
        ))
        .await
        .unwrap();
        let billing = c
            .get_state(with_token(get("shared-name"), "tok-billing"))
            .await
            .unwrap()
            .into_inner();
        assert!(billing.data.is_empty());

        // `ledger` is scoped to billing: orders sees no such store, billing does.
        let ledger = |token: &str| {
            with_token(
                rt::SaveStateRequest {
                    store_name: "ledger".into(),
                    states: vec![item("entry", b"1")],
                },
                token,
            )
        };
        let e = c.save_state(ledger("tok-orders")).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(reason(&e), "DAPR_STATE_NOT_FOUND");
        assert_eq!(e.message(), "state store ledger is not found");
        c.save_state(ledger("tok-billing")).await.unwrap();
        // keyPrefix name: keyed by the component's name.
        assert_eq!(redis.hash("ledger||entry")["data"], b"1");

        // Metadata lists what the app may use.
        let md = c
            .get_metadata(with_token(rt::GetMetadataRequest::default(), "tok-orders"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(md.id, "orders-shop");
        let names: Vec<&str> = md
            .registered_components
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        // With the built-in `kubernetes` secret store, as daprd lists it.
        assert_eq!(names, vec!["cart", "kubernetes"]);
        // Methods fngate does not serve answer Unimplemented.
        let e = c
            .get_configuration(with_token(
                rt::GetConfigurationRequest::default(),
                "tok-orders",
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented);
    });
    // HTTP: healthz needs no token; everything else does.
    assert_eq!(
        gate.http("GET", "/v1.0/healthz/outbound", None, b"").status,
        204
    );
    assert_eq!(gate.http("GET", "/v1.0/healthz", None, b"").status, 204);
    let r = gate.http("GET", "/v1.0/state/cart/k", None, b"");
    assert_eq!(r.status, 401);
    assert_eq!(r.body, b"invalid api token\n");
    let r = gate.http("GET", "/v1.0/state/cart/k", Some("wrong"), b"");
    assert_eq!(r.status, 401);
    assert!(
        gate.fngate
            .metric("fngate_dapr_api_auth_failures_total{transport=\"grpc\"}")
            >= 2.0
    );
    assert!(
        gate.fngate
            .metric("fngate_dapr_api_auth_failures_total{transport=\"http\"}")
            >= 2.0
    );
    // The token never shows in metrics or on the admin listener.
    assert!(!gate.fngate.metrics().contains("tok-orders"));
    let dapr = admin_get(gate.fngate.admin, "/dapr").unwrap();
    let listing = String::from_utf8_lossy(&dapr.body).into_owned();
    assert!(
        !listing.contains("tok-orders") && !listing.contains("tok-billing"),
        "{listing}"
    );
    let apps: serde_json::Value = serde_json::from_str(&listing).unwrap();
    assert_eq!(apps["apps"][0]["app_id"], "billing-shop");
    assert_eq!(apps["apps"][0]["token"], true);
    assert_eq!(apps["apps"][0]["states"][1]["name"], "ledger");
}

#[test]
fn state_over_http_stores_json_as_daprd_does() {
    let redis = Redis::start();
    let dir = catalog(&redis, "");
    let gate = DaprGate::start(dir.path());
    let t = Some("tok-orders");
    let r = gate.http(
        "POST",
        "/v1.0/state/cart",
        t,
        br#"[{"key":"s","value":"hello"},{"key":"o","value":{"b":[1,2],"a":true},"metadata":{"ttlInSeconds":"600"}}]"#,
    );
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    // A JSON string keeps its quotes: that is what daprd stores.
    assert_eq!(redis.hash("orders-shop||s")["data"], br#""hello""#);
    let stored: serde_json::Value =
        serde_json::from_slice(&redis.hash("orders-shop||o")["data"]).unwrap();
    assert_eq!(stored, serde_json::json!({"a": true, "b": [1, 2]}));

    let r = gate.http("GET", "/v1.0/state/cart/s", t, b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, br#""hello""#);
    assert_eq!(r.header("etag"), Some("1"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        gate.http("GET", "/v1.0/state/cart/nothing", t, b"").status,
        204
    );

    let r = gate.http(
        "POST",
        "/v1.0/state/cart/bulk",
        t,
        br#"{"keys":["o","nothing","s"],"parallelism":2}"#,
    );
    assert_eq!(r.status, 200);
    let bulk = r.json();
    assert_eq!(bulk[0]["key"], "o");
    assert_eq!(bulk[0]["data"]["b"], serde_json::json!([1, 2]));
    assert_eq!(bulk[1], serde_json::json!({"key": "nothing"}));
    assert_eq!(bulk[2]["data"], "hello");
    assert_eq!(bulk[2]["etag"], "1");

    // Delete with If-Match: a stale ETag is 409 ERR_STATE_DELETE.
    let r = request(
        gate.http,
        "DELETE",
        "",
        "/v1.0/state/cart/s",
        &[("dapr-api-token", "tok-orders"), ("If-Match", "5")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["errorCode"], "ERR_STATE_DELETE");

    // Transaction (mapstructure: member names match case-insensitively).
    let r = gate.http(
        "POST",
        "/v1.0/state/cart/transaction",
        t,
        br#"{"operations":[{"operation":"upsert","request":{"Key":"n","value":42}},{"operation":"delete","request":{"key":"s"}}]}"#,
    );
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(redis.hash("orders-shop||n")["data"], b"42");
    assert!(redis.hash("orders-shop||s").is_empty());

    // Errors carry daprd's codes and bodies.
    let r = gate.http("GET", "/v1.0/state/nope/k", t, b"");
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        serde_json::json!({"errorCode":"ERR_STATE_STORE_NOT_FOUND","message":"state store nope is not found","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","domain":"dapr.io","metadata":{"appID":"orders-shop"},"reason":"DAPR_STATE_NOT_FOUND"}]})
    );
    let r = gate.http("POST", "/v1.0/state/cart", t, b"{not json");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["errorCode"], "ERR_MALFORMED_REQUEST");
    let r = gate.http("POST", "/v1.0/state/cart", t, br#"[{"value":1}]"#);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["message"], "\"key\" is a required field");

    let md = gate.http("GET", "/v1.0/metadata", t, b"").json();
    assert_eq!(md["id"], "orders-shop");
    assert_eq!(md["components"][0]["type"], "state.redis");
    assert!(gate.fngate.metric(
        "fngate_dapr_api_calls_total{building_block=\"state\",component=\"cart\",namespace=\"shop\",outcome=\"success\"}"
    ) >= 4.0);
}

#[test]
fn a_store_restarted_mid_run_gives_errors_while_down_and_serves_again_after() {
    let mut redis = Redis::start();
    let dir = catalog(&redis, "");
    let gate = DaprGate::start(dir.path());
    let mut c = gate.client();
    gate.rt.block_on(async {
        write(&mut c, "before", b"kept").await;
    });
    redis.stop();
    gate.rt.block_on(async {
        let e = c
            .save_state(with_token(save("during", b"x"), "tok-orders"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Internal);
        assert_eq!(reason(&e), "ERR_STATE_SAVE");
        let e = c
            .get_state(with_token(get("before"), "tok-orders"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Internal);
    });
    redis.spawn();
    gate.rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match c
                .save_state(with_token(save("after", b"new"), "tok-orders"))
                .await
            {
                Ok(_) => break,
                Err(e) => assert!(Instant::now() < deadline, "never reconnected: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let before = read(&mut c, "before").await;
        assert_eq!(
            (before.data.as_slice(), before.etag.as_str()),
            (&b"kept"[..], "1")
        );
    });
    assert!(redis.hash("orders-shop||during").is_empty());
    assert_eq!(redis.hash("orders-shop||after")["data"], b"new");
}

#[test]
fn publish_to_jetstream_wraps_the_event_as_daprd_and_http_bindings_call_out() {
    let redis = Redis::start();
    let subject = unique("fngate-dapr-pub.");
    let stream_name = unique("FNGATE_DAPR_PUB_").replace('.', "_");
    let echo = Echo::start("hook", "shop");
    let extra = format!(
        r#"---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: bus
  namespace: shop
spec:
  type: pubsub.jetstream
  version: v1
  metadata:
    - name: natsURL
      value: {NATS}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: hook
  namespace: shop
spec:
  type: bindings.http
  version: v1
  metadata:
    - name: url
      value: http://{}/base
scopes:
  - orders-shop
"#,
        echo.addr
    );
    let dir = catalog(&redis, &extra);
    let gate = DaprGate::start(dir.path());
    let mut c = gate.client();
    let nats_rt = tokio::runtime::Runtime::new().unwrap();
    let stream = nats_rt.block_on(common::jetstream_stream(&stream_name, &subject));
    gate.rt.block_on(async {
        c.publish_event(with_token(
            rt::PublishEventRequest {
                pubsub_name: "bus".into(),
                topic: subject.clone(),
                data: br#"{"b":2,"a":"<x>"}"#.to_vec(),
                data_content_type: "application/json".into(),
                ..Default::default()
            },
            "tok-orders",
        ))
        .await
        .unwrap();
        let e = c
            .publish_event(with_token(
                rt::PublishEventRequest {
                    pubsub_name: "nobus".into(),
                    topic: subject.clone(),
                    ..Default::default()
                },
                "tok-orders",
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(reason(&e), "DAPR_PUBSUB_NOT_FOUND");
    });
    let message = nats_rt.block_on(async {
        stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .unwrap()
    });
    let text = String::from_utf8(message.payload.to_vec()).unwrap();
    let ce: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(ce["source"], "orders-shop");
    assert_eq!(ce["pubsubname"], "bus");
    assert_eq!(ce["topic"], subject.as_str());
    assert_eq!(ce["type"], "com.dapr.event.sent");
    assert_eq!(ce["specversion"], "1.0");
    assert_eq!(ce["datacontenttype"], "application/json");
    assert_eq!(ce["data"], serde_json::json!({"a": "<x>", "b": 2}));
    for f in ["traceid", "traceparent", "tracestate", "time", "id"] {
        assert!(ce.get(f).is_some(), "{f} missing in {text}");
    }
    // Go's encoding: keys sorted, HTML escaped.
    assert!(
        text.starts_with(r#"{"data":{"a":"\u003cx\u003e","b":2},"datacontenttype""#),
        "{text}"
    );
    assert_eq!(
        message.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        ce["id"].as_str()
    );

    // HTTP publish: the same route daprd has; 204.
    let r = request(
        gate.http,
        "POST",
        "",
        &format!("/v1.0/publish/bus/{subject}"),
        &[
            ("dapr-api-token", "tok-orders"),
            ("Content-Type", "text/plain"),
        ],
        b"plain words",
    )
    .unwrap();
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    let message = nats_rt.block_on(async {
        stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .unwrap()
    });
    let ce: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(ce["data"], "plain words");
    assert_eq!(ce["datacontenttype"], "text/plain");

    // bindings.http: create is a POST to url + path, uppercase metadata are headers.
    gate.rt.block_on(async {
        let mut md = std::collections::HashMap::new();
        md.insert("path".to_owned(), "orders/7".to_owned());
        md.insert("X-Order".to_owned(), "7".to_owned());
        let reply = c
            .invoke_binding(with_token(
                rt::InvokeBindingRequest {
                    name: "hook".into(),
                    operation: "create".into(),
                    data: b"payload".to_vec(),
                    metadata: md,
                },
                "tok-orders",
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            reply.metadata.get("statusCode").map(String::as_str),
            Some("200")
        );
        let e = c
            .invoke_binding(with_token(
                rt::InvokeBindingRequest {
                    name: "hook".into(),
                    operation: "create".into(),
                    ..Default::default()
                },
                "tok-billing",
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Internal);
        assert_eq!(reason(&e), "ERR_INVOKE_OUTPUT_BINDING");
        assert!(
            e.message().contains("couldn't find output binding hook"),
            "{}",
            e.message()
        );
    });
    let seen = echo.requests_seen();
    assert!(
        seen.iter()
            .any(|r| r.starts_with("REQ POST /base/orders/7 bytes=7")),
        "{seen:?}"
    );
    nats_rt.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(NATS).await.unwrap());
        let _ = js.delete_stream(&stream_name).await;
    });
}

#[test]
fn fngate_env_prints_what_the_functions_process_needs() {
    let redis = Redis::start();
    let dir = catalog(&redis, "");
    let settings = tempfile::tempdir().unwrap();
    let file = settings.path().join("fngate.yaml");
    // `fngate env` for `function` with these settings added.
    let env = |function: &str, extra: &str| {
        std::fs::write(
            &file,
            format!(
                "listen:\n  dapr_grpc: 127.0.0.1:50123\n  dapr_http: 127.0.0.1:3555\ncatalog:\n  dir: {}\n{extra}",
                dir.path().display()
            ),
        )
        .unwrap();
        Command::new(env!("CARGO_BIN_EXE_fngate"))
            .args(["env", function, "--config"])
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = env("shop/orders", "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("export DAPR_GRPC_PORT='50123'"), "{text}");
    assert!(text.contains("export DAPR_HTTP_PORT='3555'"), "{text}");
    assert!(
        text.contains("export DAPR_API_TOKEN='tok-orders'"),
        "{text}"
    );
    let ctx_line = text
        .lines()
        .find(|l| l.starts_with("export FUNC_CONTEXT='"))
        .unwrap();
    let ctx: serde_json::Value = serde_json::from_str(
        ctx_line
            .trim_start_matches("export FUNC_CONTEXT='")
            .trim_end_matches('\''),
    )
    .unwrap();
    assert_eq!(ctx["name"], "orders");
    assert_eq!(
        ctx["states"]["cart"],
        serde_json::json!({"componentName": "cart", "componentType": "state.redis"})
    );
    assert!(!env("shop/nobody", "").status.success());

    // With TLS on the Dapr API: the https endpoints the SDKs take, and what to trust.
    let out = env(
        "shop/orders",
        "dapr_api:\n  tls:\n    cert: /certs/tls.crt\n    key: /certs/tls.key\n",
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("export DAPR_GRPC_ENDPOINT='https://127.0.0.1:50123'"),
        "{text}"
    );
    assert!(
        text.contains("export DAPR_HTTP_ENDPOINT='https://127.0.0.1:3555'"),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("/certs/tls.crt"));
}

#[test]
fn a_changed_token_secret_takes_effect_on_reload_without_a_restart() {
    let redis = Redis::start();
    let dir = catalog(&redis, "");
    let gate = DaprGate::start(dir.path());
    assert_eq!(
        gate.http("GET", "/v1.0/state/cart/k", Some("tok-orders"), b"")
            .status,
        204
    );
    let before = gate.fngate.revision();
    let text = std::fs::read_to_string(dir.path().join("catalog.yaml"))
        .unwrap()
        .replace("token: tok-orders", "token: tok-orders-rotated");
    write_atomically(dir.path(), "catalog.yaml", &text);
    gate.fngate.wait_for_revision_after(before);
    assert_eq!(
        gate.http("GET", "/v1.0/state/cart/k", Some("tok-orders"), b"")
            .status,
        401
    );
    assert_eq!(
        gate.http("GET", "/v1.0/state/cart/k", Some("tok-orders-rotated"), b"")
            .status,
        204
    );

    // Emptied, then deleted: the token stops at the next plan (fail closed).
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: orders-token\n  namespace: shop\nstringData:\n  token: tok-orders-rotated\n---\n";
    let good = std::fs::read_to_string(dir.path().join("catalog.yaml")).unwrap();
    assert!(good.contains(secret));
    for (what, text) in [
        (
            "emptied",
            good.replace("token: tok-orders-rotated", "token: \"\""),
        ),
        ("deleted", good.replace(secret, "")),
    ] {
        let before = gate.fngate.revision();
        write_atomically(dir.path(), "catalog.yaml", &text);
        gate.fngate.wait_for_revision_after(before);
        assert_eq!(
            gate.http("GET", "/v1.0/state/cart/k", Some("tok-orders-rotated"), b"")
                .status,
            401,
            "Secret {what}"
        );
        let before = gate.fngate.revision();
        write_atomically(dir.path(), "catalog.yaml", &good);
        gate.fngate.wait_for_revision_after(before);
    }
}

#[test]
fn the_official_python_sdk_works_against_fngate() {
    let redis = Redis::start();
    let subject = unique("fngate-py-sdk.");
    let stream_name = unique("FNGATE_PY_SDK_").replace('.', "_");
    let extra = format!(
        "---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: bus\n  namespace: shop\nspec:\n  type: pubsub.jetstream\n  metadata:\n    - name: natsURL\n      value: {NATS}\n"
    );
    let dir = catalog(&redis, &extra);
    let gate = DaprGate::start(dir.path());
    let nats_rt = tokio::runtime::Runtime::new().unwrap();
    let mut stream = nats_rt.block_on(common::jetstream_stream(&stream_name, &subject));
    python_sdk_check(
        &gate,
        "tok-orders",
        &[concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/dapr_sdk_check.py"
        )],
        &[("SUBJECT", &subject)],
    );
    // What the SDK wrote is in Dapr's layout; what it published is in the stream.
    assert_eq!(redis.hash("orders-shop||py-b")["data"], b"B");
    let published = nats_rt.block_on(async {
        let n = stream.info().await.unwrap().state.messages;
        let js = async_nats::jetstream::new(async_nats::connect(NATS).await.unwrap());
        let _ = js.delete_stream(&stream_name).await;
        n
    });
    assert_eq!(published, 3);
}

#[test]
fn a_redis_behind_tls_with_a_password_from_a_secret_is_reached() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(made.success());
    let port = free_port();
    let mut server = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--tls-cert-file")
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key)
        .arg("--tls-ca-cert-file")
        .arg(&cert)
        .args([
            "--tls-auth-clients",
            "no",
            "--requirepass",
            "redis-pw",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "TLS redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let catalog_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        catalog_dir.path().join("c.yaml"),
        format!(
            r#"apiVersion: v1
kind: Secret
metadata: {{name: t, namespace: shop}}
stringData: {{token: tok-tls, redis: redis-pw}}
---
apiVersion: core.openfunction.io/v1beta2
kind: Function
metadata: {{name: secure, namespace: shop}}
spec:
  serving:
    annotations:
      dapr.io/api-token-secret: t
    states:
      vault:
        spec:
          type: state.redis
          metadata:
            - {{name: redisHost, value: "127.0.0.1:{port}"}}
            - {{name: enableTLS, value: "true"}}
            - {{name: insecureSkipTLSVerify, value: "true"}}
            - name: redisPassword
              secretKeyRef: {{name: t, key: redis}}
"#
        ),
    )
    .unwrap();
    let gate = DaprGate::start(catalog_dir.path());
    let r = gate.http(
        "POST",
        "/v1.0/state/vault",
        Some("tok-tls"),
        br#"[{"key":"k","value":{"secret":true}}]"#,
    );
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    let r = gate.http("GET", "/v1.0/state/vault/k", Some("tok-tls"), b"");
    assert_eq!(
        (r.status, r.json()),
        (200, serde_json::json!({"secret": true}))
    );
    let _ = server.kill();
    let _ = server.wait();
}
