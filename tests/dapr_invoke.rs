//! Service invocation through fngate's Dapr API against the real binary: a caller function
//! invokes others by app-id, on HTTP and gRPC apps (the `dapr_app` example serving
//! `OnInvoke` and HTTP methods), over both surfaces and with the official Python SDK; a
//! target at zero is held until its endpoint turns ready; calls across namespaces and to
//! unknown apps are refused as daprd refuses them.

mod common;

use common::*;
use dapr::dapr::proto::common::v1 as common_v1;
use dapr::dapr::proto::runtime::v1 as rt;
use std::net::SocketAddr;
use std::path::Path;
use tonic::Code;

const TOKEN: &str = "tok-front";

fn target(namespace: &str, name: &str, protocol: &str, port: u16) -> String {
    format!(
        "apiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  serving:\n    annotations:\n      dapr.io/app-protocol: {protocol}\n      dapr.io/app-port: \"{port}\"\n"
    )
}

/// The caller `front` (with a token), HTTP target `orders`, gRPC target `stock`, a target
/// `cold` listed but not ready at `cold`, and `audit` in another namespace.
fn write_catalog(dir: &Path, orders: SocketAddr, stock: SocketAddr, cold: SocketAddr) {
    // front also has a state store, for the JS SDK's error-details check.
    let front = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: front-token\n  namespace: default\nstringData:\n  token: {TOKEN}\n---\napiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata:\n  name: front\n  namespace: default\nspec:\n  serving:\n    annotations:\n      dapr.io/api-token-secret: front-token\n    states:\n      cart:\n        type: state.redis\n        metadata:\n          - {{name: redisHost, value: \"127.0.0.1:6379\"}}\n"
    );
    let objects = [
        front,
        target("default", "orders", "http", orders.port()),
        endpoint_slice("default", "orders", &[orders], true),
        target("default", "stock", "grpc", stock.port()),
        endpoint_slice("default", "stock", &[stock], true),
        target("default", "cold", "http", cold.port()),
        endpoint_slice("default", "cold", &[cold], false),
        target("elsewhere", "audit", "http", orders.port()),
        endpoint_slice("elsewhere", "audit", &[orders], true),
    ];
    write_atomically(dir, "catalog.yaml", &objects.join("\n---\n"));
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

#[test]
fn a_function_invokes_others_by_app_id_on_both_surfaces() {
    let orders = DaprApp::start("http", "", "");
    let stock = DaprApp::start("grpc", "", "");
    let cold_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_catalog(dir.path(), orders.addr, stock.addr, cold_addr);
    let gate = DaprGate::start(dir.path());

    // HTTP API -> HTTP app: verb, method, query and body arrive; the app's status,
    // headers and body come back; the caller's token never reaches the target.
    let r = request(
        gate.http,
        "PUT",
        "",
        "/v1.0/invoke/orders-default/method/echo/a?x=1&y=2",
        &[
            ("dapr-api-token", TOKEN),
            ("content-type", "text/plain"),
            ("x-trace-me", "yes"),
        ],
        b"hello",
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-order"), Some("42"));
    let echo = json(&r.body);
    assert_eq!(echo["method"], "echo/a");
    assert_eq!(echo["verb"], "PUT");
    assert_eq!(echo["query"], "x=1&y=2");
    assert_eq!(echo["body"], "hello");
    assert_eq!(echo["headers"]["content-type"], "text/plain");
    assert_eq!(echo["headers"]["x-trace-me"], "yes");
    assert_eq!(echo["headers"]["dapr-caller-app-id"], "front-default");
    assert_eq!(echo["headers"]["dapr-callee-app-id"], "orders-default");
    assert!(
        echo["headers"].get("dapr-api-token").is_none(),
        "the caller's token reached the target: {echo}"
    );

    // `<app-id>.<namespace>` and the `dapr-app-id` header name the same target.
    let r = gate.http(
        "POST",
        "/v1.0/invoke/orders-default.default/method/echo",
        Some(TOKEN),
        b"{}",
    );
    assert_eq!(r.status, 201);
    let r = request(
        gate.http,
        "GET",
        "",
        "/echo/by-header",
        &[("dapr-api-token", TOKEN), ("dapr-app-id", "orders-default")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(json(&r.body)["method"], "echo/by-header");

    // The app's own failure comes back as it answered.
    let r = gate.http(
        "GET",
        "/v1.0/invoke/orders-default/method/fail",
        Some(TOKEN),
        b"",
    );
    assert_eq!(r.status, 404);
    assert_eq!(json(&r.body)["error"], "no such order");

    // HTTP API -> gRPC app: OnInvoke with the HTTP extension.
    let r = gate.http(
        "POST",
        "/v1.0/invoke/stock-default/method/reserve?n=3",
        Some(TOKEN),
        b"{\"sku\":7}",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let echo = json(&r.body);
    assert_eq!(echo["method"], "reserve");
    assert_eq!(echo["verb"], 3, "POST");
    assert_eq!(echo["query"], "n=3");
    assert_eq!(echo["body"], "{\"sku\":7}");
    assert_eq!(echo["metadata"]["dapr-caller-app-id"], "front-default");
    // A gRPC app's failure: its status as JSON, the HTTP status from its code.
    let r = gate.http(
        "POST",
        "/v1.0/invoke/stock-default/method/fail",
        Some(TOKEN),
        b"",
    );
    assert_eq!(r.status, 404);
    assert_eq!(json(&r.body)["message"], "no such order");

    // gRPC API: InvokeService to both kinds of app.
    let mut client = gate.client();
    let invoke = |id: &str, method: &str, verb: Option<i32>| {
        with_token(
            rt::InvokeServiceRequest {
                id: id.into(),
                message: Some(common_v1::InvokeRequest {
                    method: method.into(),
                    data: Some(prost_types::Any {
                        type_url: String::new(),
                        value: b"payload".to_vec(),
                    }),
                    content_type: "text/plain".into(),
                    http_extension: verb.map(|v| common_v1::HttpExtension {
                        verb: v,
                        querystring: "q=1".into(),
                    }),
                }),
            },
            TOKEN,
        )
    };
    let answer = gate
        .rt
        .block_on(client.invoke_service(invoke("stock-default", "reserve", None)))
        .unwrap()
        .into_inner();
    let echo = json(&answer.data.unwrap().value);
    assert_eq!(
        (echo["method"].as_str(), echo["body"].as_str()),
        (Some("reserve"), Some("payload"))
    );
    let status = gate
        .rt
        .block_on(client.invoke_service(invoke("stock-default", "fail", None)))
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::NotFound, "no such order")
    );
    let answer = gate
        .rt
        .block_on(client.invoke_service(invoke("orders-default", "echo/g", Some(1))))
        .unwrap();
    assert_eq!(
        answer
            .metadata()
            .get("dapr-http-status")
            .map(|v| v.to_str().unwrap()),
        Some("201")
    );
    let echo = json(&answer.into_inner().data.unwrap().value);
    assert_eq!(
        (echo["verb"].as_str(), echo["query"].as_str()),
        (Some("GET"), Some("q=1"))
    );
    // An HTTP app's 404 to a gRPC caller: NotFound, the status text as message.
    let status = gate
        .rt
        .block_on(client.invoke_service(invoke("orders-default", "fail", Some(1))))
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::NotFound, "Not Found")
    );

    // The official Python SDK's invoke_method (HTTP) to both apps.
    python_sdk_check(
        &gate,
        TOKEN,
        &[concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/dapr_invoke_check.py"
        )],
        &[],
    );

    // The official JS SDK: invocation, and daprd's error body on an illegal key.
    let node = node_function_dir();
    let out = std::process::Command::new("node")
        .arg(node.join("sdk_check.cjs"))
        .current_dir(&node)
        .env("DAPR_HTTP_PORT", gate.http.port().to_string())
        .env("DAPR_API_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the JS SDK check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Refused as daprd refuses: another namespace (403) and an unknown app (500).
    let r = gate.http(
        "POST",
        "/v1.0/invoke/audit-elsewhere.elsewhere/method/echo",
        Some(TOKEN),
        b"",
    );
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    let body = json(&r.body);
    assert_eq!(body["errorCode"], "ERR_DIRECT_INVOKE");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("access control policy has denied access"),
        "{body}"
    );
    let r = gate.http(
        "POST",
        "/v1.0/invoke/nobody-default/method/echo",
        Some(TOKEN),
        b"",
    );
    assert_eq!(r.status, 500);
    assert_eq!(json(&r.body)["errorCode"], "ERR_DIRECT_INVOKE");
    let status = gate
        .rt
        .block_on(client.invoke_service(invoke("audit-elsewhere.elsewhere", "echo", None)))
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert!(
        status.message().contains("PermissionDenied"),
        "{}",
        status.message()
    );
    // Without a token nothing is invoked.
    let r = gate.http("POST", "/v1.0/invoke/orders-default/method/echo", None, b"");
    assert_eq!(r.status, 401);

    // A target at zero: the call is held, the platform told, and released once the
    // target's endpoint is ready.
    let http = gate.http;
    let held = std::thread::spawn(move || {
        request(
            http,
            "POST",
            "",
            "/v1.0/invoke/cold-default/method/echo/warm",
            &[("dapr-api-token", TOKEN)],
            b"wake",
        )
        .unwrap()
    });
    gate.fngate.wait_until(
        || {
            gate.fngate
                .metric_or_zero("fngate_activator_waiting{function=\"cold\"")
                >= 1.0
        },
        "the invocation of cold held",
    );
    let warm = DaprApp::start_on("http", &cold_addr.to_string(), "", "");
    let slices = [
        endpoint_slice("default", "orders", &[orders.addr], true),
        endpoint_slice("default", "stock", &[stock.addr], true),
        endpoint_slice("default", "cold", &[warm.addr], true),
        endpoint_slice("elsewhere", "audit", &[orders.addr], true),
    ];
    write_atomically(dir.path(), "slices.yaml", &slices.join("\n---\n"));
    let r = held.join().unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(json(&r.body)["body"], "wake");

    // Counted per caller and target.
    let metrics = gate.fngate.metrics();
    for (target, outcome) in [
        ("orders", "success"),
        ("stock", "app_error"),
        ("audit", "refused"),
        ("cold", "success"),
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("fngate_dapr_invocations_total")
                    && l.contains("function=\"front\"")
                    && l.contains(&format!("target_function=\"{target}\""))
                    && l.contains(&format!("outcome=\"{outcome}\""))),
            "no {target}/{outcome} invocation counted:\n{metrics}"
        );
    }
}

#[test]
fn a_configuration_access_policy_decides_who_may_invoke_what() {
    let orders = DaprApp::start("http", "", "");
    let dir = tempfile::tempdir().unwrap();
    let front = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: front-token\n  namespace: default\nstringData:\n  token: {TOKEN}\n---\napiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata:\n  name: front\n  namespace: default\nspec:\n  serving:\n    annotations:\n      dapr.io/api-token-secret: front-token\n"
    );
    // `audit` (another namespace) lets front GET /echo/<one segment> only; `ledger` (the
    // caller's namespace) denies everyone.
    let acl = "---\napiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: audit-acl, namespace: elsewhere}\nspec:\n  accessControl:\n    defaultAction: deny\n    trustDomain: public\n    policies:\n      - appId: front-default\n        namespace: default\n        defaultAction: deny\n        trustDomain: public\n        operations:\n          - {name: /echo/*, httpVerb: [GET], action: allow}\n---\napiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: closed, namespace: default}\nspec:\n  accessControl:\n    defaultAction: deny\n";
    let with_config =
        |yaml: String, config: &str| format!("{yaml}      dapr.io/config: {config}\n");
    let objects = [
        front,
        with_config(
            target("elsewhere", "audit", "http", orders.addr.port()),
            "audit-acl",
        ),
        endpoint_slice("elsewhere", "audit", &[orders.addr], true),
        with_config(
            target("default", "ledger", "http", orders.addr.port()),
            "closed",
        ),
        endpoint_slice("default", "ledger", &[orders.addr], true),
    ];
    write_atomically(
        dir.path(),
        "catalog.yaml",
        &format!("{}{acl}", objects.join("\n---\n")),
    );
    let gate = DaprGate::start(dir.path());
    let status = |method: &str, path: &str| gate.http(method, path, Some(TOKEN), b"").status;
    assert_eq!(
        status(
            "GET",
            "/v1.0/invoke/audit-elsewhere.elsewhere/method/echo/x"
        ),
        201
    );
    assert_eq!(
        status(
            "POST",
            "/v1.0/invoke/audit-elsewhere.elsewhere/method/echo/x"
        ),
        403
    );
    assert_eq!(
        status(
            "GET",
            "/v1.0/invoke/audit-elsewhere.elsewhere/method/echo/x/y"
        ),
        403
    );
    assert_eq!(
        status("GET", "/v1.0/invoke/audit-elsewhere.elsewhere/method/fail"),
        403
    );
    assert_eq!(
        status("GET", "/v1.0/invoke/ledger-default/method/echo/x"),
        403
    );
}

#[test]
fn a_grpc_call_with_dapr_app_id_is_proxied_to_the_target_as_a_stream() {
    use dapr::dapr::proto::runtime::v1::app_callback_client::AppCallbackClient;
    let stock = DaprApp::start("grpc", "", "");
    let orders = DaprApp::start("http", "", "");
    let cold: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_catalog(dir.path(), orders.addr, stock.addr, cold);
    let gate = DaprGate::start(dir.path());
    let channel = gate.rt.block_on(async {
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", gate.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap()
    });
    // The caller's own client of the target's service, pointed at fngate.
    let mut client = AppCallbackClient::new(channel);
    let call = |app: &str| {
        let mut request = with_token(
            common_v1::InvokeRequest {
                method: "through-proxy".into(),
                data: Some(prost_types::Any {
                    type_url: String::new(),
                    value: b"proxied".to_vec(),
                }),
                content_type: "text/plain".into(),
                http_extension: None,
            },
            TOKEN,
        );
        request
            .metadata_mut()
            .insert("dapr-app-id", app.parse().unwrap());
        request
    };
    let answer = gate
        .rt
        .block_on(client.on_invoke(call("stock-default")))
        .unwrap()
        .into_inner();
    let echo = json(&answer.data.unwrap().value);
    assert_eq!(echo["method"], "through-proxy");
    assert_eq!(echo["body"], "proxied");
    assert_eq!(echo["metadata"]["dapr-caller-app-id"], "front-default");
    assert_eq!(echo["metadata"]["dapr-callee-app-id"], "stock-default");
    assert!(
        echo["metadata"].get("dapr-api-token").is_none(),
        "the caller's token reached the target: {echo}"
    );
    // The app's own status comes back as it sent it.
    let mut failing = call("stock-default");
    failing.get_mut().method = "fail".into();
    let status = gate.rt.block_on(client.on_invoke(failing)).unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::NotFound, "no such order")
    );
    // Another namespace: refused before anything is sent.
    let status = gate
        .rt
        .block_on(client.on_invoke(call("audit-elsewhere.elsewhere")))
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert!(
        status.message().contains("access control policy"),
        "{}",
        status.message()
    );
    // Without a dapr-app-id the call is not Dapr's: Unimplemented.
    let mut bare = call("x");
    bare.metadata_mut().remove("dapr-app-id");
    let status = gate.rt.block_on(client.on_invoke(bare)).unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
}
