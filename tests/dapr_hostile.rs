//! The Dapr API as a hostile or buggy function would use it, against the real binary: every
//! string a caller controls holding non-ASCII and control characters on both surfaces,
//! bodies stalled or too large, one app saturating its in-flight bound. After each, the
//! process still serves and the other apps' calls are answered.

mod common;

use common::redis_server::Redis;
use common::*;
use dapr::dapr::proto::common::v1 as cm;
use dapr::dapr::proto::runtime::v1 as rt;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Apps `a` and `b` (tokens `tok-a`, `tok-b`), a Redis store `kv`, an MQTT pub/sub `bus`,
/// and a `bindings.http` output `slow` to `gated` (its `/hold` answers when released).
fn catalog(redis: &Redis, gated: &GatedFunction) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let app = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}-token\n  namespace: shop\nstringData:\n  token: tok-{name}\n---\napiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n  serving:\n    annotations:\n      dapr.io/api-token-secret: {name}-token\n---\n"
        )
    };
    let component = |name: &str, kind: &str, metadata: &str| {
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n  type: {kind}\n  version: v1\n  metadata:\n{metadata}---\n"
        )
    };
    write_atomically(
        dir.path(),
        "catalog.yaml",
        &[
            app("a"),
            app("b"),
            component(
                "kv",
                "state.redis",
                &format!("    - name: redisHost\n      value: \"{}\"\n", redis.addr()),
            ),
            component(
                "bus",
                "pubsub.mqtt",
                "    - name: url\n      value: tcp://127.0.0.1:1883\n",
            ),
            component(
                "slow",
                "bindings.http",
                &format!("    - name: url\n      value: http://{}/hold\n", gated.addr),
            ),
        ]
        .concat(),
    );
    dir
}

fn start(dir: &tempfile::TempDir, limits: &str) -> (Fngate, std::net::SocketAddr, u16) {
    let (grpc, http) = (free_port(), free_port());
    let gate = Fngate::start_full(
        dir.path(),
        &format!("  dapr_grpc: 127.0.0.1:{grpc}\n  dapr_http: 127.0.0.1:{http}\n"),
        &format!("dapr_api:\n{limits}"),
    );
    let http: std::net::SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    gate.wait_until(
        || request(http, "GET", "", "/v1.0/healthz", &[], b"").is_ok_and(|r| r.status == 204),
        "the Dapr HTTP API ready",
    );
    (gate, http, grpc)
}

fn call(
    http: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: &[u8],
) -> Response {
    request(http, method, "", path, &[("dapr-api-token", token)], body).unwrap_or_else(|e| {
        panic!("{method} {path}: no answer ({e}): the process or connection died")
    })
}

/// b's own call still answers.
fn b_is_served(http: std::net::SocketAddr) {
    assert_eq!(
        call(http, "GET", "/v1.0/metadata", "tok-b", b"").status,
        200
    );
}

#[test]
fn hostile_strings_on_both_surfaces_get_answers_and_the_process_keeps_serving() {
    let redis = Redis::start();
    let gated = GatedFunction::start();
    let dir = catalog(&redis, &gated);
    let (_gate, http, grpc) = start(&dir, "  body_read_timeout: 5s\n");
    let weird = [
        "\u{0}",
        "\u{1}x",
        "é",
        "aaaaaaaaaaéx",
        "\u{7f}",
        "a\nb",
        "\u{202e}rtl",
        "😀",
    ];

    // HTTP: keys and topics in the path, metadata names and values in the query, bodies.
    for w in weird {
        let enc: String = w.bytes().map(|b| format!("%{b:02X}")).collect();
        for (method, path, body) in [
            ("GET", format!("/v1.0/state/kv/{enc}"), Vec::new()),
            ("DELETE", format!("/v1.0/state/kv/{enc}?metadata.{enc}={enc}"), Vec::new()),
            (
                "POST",
                "/v1.0/state/kv".to_owned(),
                serde_json::to_vec(&serde_json::json!([{"key": w, "value": w, "etag": w, "metadata": {w: w}}])).unwrap(),
            ),
            (
                "POST",
                "/v1.0/state/kv/transaction".to_owned(),
                serde_json::to_vec(&serde_json::json!({"operations": [{"operation": "upsert", "request": {"key": w, "value": 1}}], "metadata": {w: w}})).unwrap(),
            ),
            ("POST", format!("/v1.0/publish/bus/{enc}?metadata.{enc}={enc}"), b"{}".to_vec()),
            ("POST", format!("/v1.0/publish/bus/t?metadata.cloudevent.{enc}={enc}"), b"{}".to_vec()),
            ("POST", format!("/v1.0-alpha1/publish/bulk/bus/{enc}"), serde_json::to_vec(&serde_json::json!([{"entryId": w, "event": w, "contentType": w, "metadata": {w: w}}])).unwrap()),
            ("POST", format!("/v1.0/bindings/{enc}"), serde_json::to_vec(&serde_json::json!({"operation": w, "data": w, "metadata": {w: w}})).unwrap()),
        ] {
            let r = call(http, method, &path, "tok-a", &body);
            assert!(r.status < 600, "{method} {path}: {}", r.status);
        }
        // Invalid UTF-8 in the path and query.
        let r = call(
            http,
            "GET",
            "/v1.0/state/kv/%FF%FE?metadata.%C3=%FF",
            "tok-a",
            b"",
        );
        assert!(r.status < 600);
    }
    b_is_served(http);
    // A topic the broker would drop the shared connection for is refused before it.
    let r = call(
        http,
        "POST",
        "/v1.0/publish/bus/nul%00topic",
        "tok-a",
        b"{}",
    );
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        body.contains("is not an MQTT topic name"),
        "{} {body}",
        r.status
    );

    // gRPC: the same strings in every field of the served methods.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut client = dapr_client(&runtime, grpc);
    runtime.block_on(async {
        for w in weird {
            let meta: std::collections::HashMap<String, String> =
                [(w.to_owned(), w.to_owned())].into();
            let answers = [
                client
                    .get_state(with_token(
                        rt::GetStateRequest {
                            store_name: "kv".into(),
                            key: w.into(),
                            metadata: meta.clone(),
                            ..Default::default()
                        },
                        "tok-a",
                    ))
                    .await
                    .map(|_| ()),
                client
                    .save_state(with_token(
                        rt::SaveStateRequest {
                            store_name: "kv".into(),
                            states: vec![cm::StateItem {
                                key: w.into(),
                                value: w.as_bytes().to_vec(),
                                etag: Some(cm::Etag { value: w.into() }),
                                metadata: meta.clone(),
                                options: None,
                            }],
                        },
                        "tok-a",
                    ))
                    .await
                    .map(|_| ()),
                client
                    .publish_event(with_token(
                        rt::PublishEventRequest {
                            pubsub_name: "bus".into(),
                            topic: w.into(),
                            data: w.as_bytes().to_vec(),
                            data_content_type: w.into(),
                            metadata: meta.clone(),
                        },
                        "tok-a",
                    ))
                    .await
                    .map(|_| ()),
                client
                    .invoke_binding(with_token(
                        rt::InvokeBindingRequest {
                            name: w.into(),
                            data: w.as_bytes().to_vec(),
                            metadata: meta.clone(),
                            operation: w.into(),
                        },
                        "tok-a",
                    ))
                    .await
                    .map(|_| ()),
            ];
            for a in answers {
                if let Err(s) = a {
                    // An answer, not a broken connection.
                    assert_ne!(s.code(), tonic::Code::Unavailable, "{s:?}");
                    assert_ne!(s.code(), tonic::Code::Unknown, "{s:?}");
                }
            }
        }
    });
    b_is_served(http);
}

#[test]
fn stalled_bodies_are_cut_after_the_read_timeout_while_other_apps_are_answered() {
    let redis = Redis::start();
    let gated = GatedFunction::start();
    let dir = catalog(&redis, &gated);
    let (_gate, http, _) = start(&dir, "  body_read_timeout: 2s\n");
    // 300 connections of app a that send a head promising a body and then nothing.
    let mut stalled: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = TcpStream::connect(http).unwrap();
            s.write_all(b"POST /v1.0/state/kv HTTP/1.1\r\nHost: x\r\ndapr-api-token: tok-a\r\nContent-Length: 100\r\n\r\n{").unwrap();
            s
        })
        .collect();
    for _ in 0..20 {
        b_is_served(http);
    }
    // Each stalled call is answered: 408 once its body is late, or 429 for those past a's
    // in-flight bound (256 by default).
    let mut statuses = std::collections::BTreeMap::new();
    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut line = String::new();
        BufReader::new(&*s)
            .read_line(&mut line)
            .expect("an answer to the stalled call");
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        *statuses.entry(status).or_insert(0) += 1;
    }
    assert_eq!(
        statuses.get(&408).copied().unwrap_or(0) + statuses.get(&429).copied().unwrap_or(0),
        300,
        "{statuses:?}"
    );
    assert!(statuses.contains_key(&408), "{statuses:?}");
    // A body over the limit (daprd's 4 MiB) is refused.
    let big = vec![b' '; 5 * 1024 * 1024];
    assert_eq!(
        call(http, "POST", "/v1.0/state/kv", "tok-a", &big).status,
        413
    );
    b_is_served(http);
}

#[test]
fn one_app_at_its_in_flight_bound_is_refused_while_another_is_served() {
    let redis = Redis::start();
    let gated = GatedFunction::start();
    let dir = catalog(&redis, &gated);
    let (gate, http, grpc) = start(&dir, "  max_in_flight_per_app: 2\n");
    // Two calls of a held by the output binding's target.
    let held: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                call(
                    http,
                    "POST",
                    "/v1.0/bindings/slow",
                    "tok-a",
                    br#"{"operation":"post","data":"x"}"#,
                )
                .status
            })
        })
        .collect();
    gate.wait_until(
        || gated.arrived() == 2,
        "a's two calls held at the binding's target",
    );
    let refused = call(http, "GET", "/v1.0/metadata", "tok-a", b"");
    let body = String::from_utf8_lossy(&refused.body);
    assert_eq!(refused.status, 429, "{body}");
    assert!(body.contains("ERR_TOO_MANY_REQUESTS"), "{body}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut client = dapr_client(&runtime, grpc);
    let status = runtime
        .block_on(client.get_metadata(with_token(rt::GetMetadataRequest::default(), "tok-a")))
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    b_is_served(http);
    assert_eq!(
        gate.metric("fngate_dapr_api_refused_total{function=\"a\",namespace=\"shop\",reason=\"in_flight\",transport=\"http\"}"),
        1.0
    );
    gated.release();
    for h in held {
        assert_eq!(h.join().unwrap(), 200);
    }
    assert_eq!(
        call(http, "GET", "/v1.0/metadata", "tok-a", b"").status,
        200,
        "a's slots came back"
    );
}
