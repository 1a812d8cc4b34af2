//! Secrets through fngate's Dapr API against the real binary: the built-in `kubernetes`
//! store (the catalog's Secrets of the app's namespace, in file mode), a
//! `secretstores.local.file` JSON beside the catalog, `secretstores.local.env` with its
//! prefix, and the scopes of the app's Dapr `Configuration` — over HTTP, gRPC and the
//! official Python SDK — plus the compile errors that keep a store from reading what it
//! must not.

mod common;

use common::*;
use dapr::dapr::proto::runtime::v1 as rt;
use fngate::catalog::snapshot_from_texts;
use fngate::compile::{compile, CompileSettings};
use tonic::Code;

const TOKEN: &str = "tok-vault";

const CATALOG: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: vault-token, namespace: shop}
stringData: {token: tok-vault}
---
apiVersion: v1
kind: Secret
metadata: {name: db-creds, namespace: shop}
stringData: {user: orders, password: s3cret-db}
---
apiVersion: v1
kind: Secret
metadata: {name: admin-creds, namespace: shop}
data: {password: cm9vdC1vbmx5}
---
apiVersion: v1
kind: Secret
metadata: {name: other-team, namespace: elsewhere}
stringData: {password: not-yours}
---
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata: {name: vault-config, namespace: shop}
spec:
  secrets:
    scopes:
      - storeName: kubernetes
        defaultAccess: allow
        deniedSecrets: [admin-creds]
      - storeName: local
        defaultAccess: deny
        allowedSecrets: ["db:password", "api-key"]
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: local, namespace: shop}
spec:
  type: secretstores.local.file
  version: v1
  metadata:
    - {name: secretsFile, value: secrets.json}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: env, namespace: shop}
spec:
  type: secretstores.local.env
  version: v1
  metadata:
    - {name: prefix, value: FNGATE_TEST_SECRET_}
---
apiVersion: core.openfunction.io/v1beta2
kind: Function
metadata: {name: vault, namespace: shop}
spec:
  serving:
    annotations:
      dapr.io/api-token-secret: vault-token
      dapr.io/config: vault-config
"#;

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

#[test]
fn a_function_reads_its_secrets_within_its_scopes() {
    // fngate's own environment: the env store reads only the prefixed variables.
    // Set before fngate is spawned, in this test's own process (nextest runs each test in
    // a process of its own).
    std::env::set_var("FNGATE_TEST_SECRET_API_KEY", "k-123");
    let dir = tempfile::tempdir().unwrap();
    write_atomically(
        dir.path(),
        "secrets.json",
        r#"{"db": {"password": "file-pw", "user": "u"}, "api-key": "file-key", "token": "no"}"#,
    );
    write_atomically(dir.path(), "catalog.yaml", CATALOG);
    let gate = DaprGate::start(dir.path());

    // The built-in kubernetes store: the app namespace's Secrets, decoded.
    let r = gate.http("GET", "/v1.0/secrets/kubernetes/db-creds", Some(TOKEN), b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        json(&r.body),
        serde_json::json!({"password": "s3cret-db", "user": "orders"})
    );
    // Denied by the Configuration's scope: daprd's 403.
    let r = gate.http(
        "GET",
        "/v1.0/secrets/kubernetes/admin-creds",
        Some(TOKEN),
        b"",
    );
    assert_eq!(r.status, 403);
    assert_eq!(json(&r.body)["errorCode"], "ERR_PERMISSION_DENIED");
    // Bulk: filtered by the scope, and never another namespace's.
    let r = gate.http("GET", "/v1.0/secrets/kubernetes/bulk", Some(TOKEN), b"");
    assert_eq!(r.status, 200);
    let bulk = json(&r.body);
    assert_eq!(bulk["db-creds"]["password"], "s3cret-db");
    assert!(bulk.get("admin-creds").is_none(), "{bulk}");
    assert!(bulk.get("other-team").is_none(), "{bulk}");
    // Another namespace named in the request metadata is refused.
    let r = gate.http(
        "GET",
        "/v1.0/secrets/kubernetes/other-team?metadata.namespace=elsewhere",
        Some(TOKEN),
        b"",
    );
    assert_eq!(r.status, 500);
    assert_eq!(json(&r.body)["errorCode"], "ERR_SECRET_GET");

    // The local file, flattened with ":"; the scope allows two keys only.
    let r = gate.http("GET", "/v1.0/secrets/local/db:password", Some(TOKEN), b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(json(&r.body), serde_json::json!({"db:password": "file-pw"}));
    let r = gate.http("GET", "/v1.0/secrets/local/token", Some(TOKEN), b"");
    assert_eq!(r.status, 403);
    let r = gate.http("GET", "/v1.0/secrets/local/bulk", Some(TOKEN), b"");
    assert_eq!(
        json(&r.body),
        serde_json::json!({"api-key": {"api-key": "file-key"}, "db:password": {"db:password": "file-pw"}})
    );
    // Read at each call: an edit is served at once.
    write_atomically(dir.path(), "secrets.json", r#"{"api-key": "rotated"}"#);
    let r = gate.http("GET", "/v1.0/secrets/local/api-key", Some(TOKEN), b"");
    assert_eq!(json(&r.body), serde_json::json!({"api-key": "rotated"}));

    // The env store: the prefixed variable, never DAPR_*.
    let r = gate.http("GET", "/v1.0/secrets/env/API_KEY", Some(TOKEN), b"");
    assert_eq!(json(&r.body), serde_json::json!({"API_KEY": "k-123"}));
    let r = gate.http("GET", "/v1.0/secrets/env/bulk", Some(TOKEN), b"");
    assert_eq!(
        json(&r.body),
        serde_json::json!({"API_KEY": {"API_KEY": "k-123"}})
    );

    // An unknown store: daprd's 401 (sic).
    let r = gate.http("GET", "/v1.0/secrets/nope/x", Some(TOKEN), b"");
    assert_eq!(r.status, 401);
    assert_eq!(json(&r.body)["errorCode"], "ERR_SECRET_STORE_NOT_FOUND");

    // gRPC.
    let mut client = gate.client();
    let got = gate
        .rt
        .block_on(client.get_secret(with_token(
            rt::GetSecretRequest {
                store_name: "kubernetes".into(),
                key: "db-creds".into(),
                metadata: Default::default(),
            },
            TOKEN,
        )))
        .unwrap()
        .into_inner();
    assert_eq!(got.data["user"], "orders");
    let denied = gate
        .rt
        .block_on(client.get_secret(with_token(
            rt::GetSecretRequest {
                store_name: "kubernetes".into(),
                key: "admin-creds".into(),
                metadata: Default::default(),
            },
            TOKEN,
        )))
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let bulk = gate
        .rt
        .block_on(client.get_bulk_secret(with_token(
            rt::GetBulkSecretRequest {
                store_name: "local".into(),
                metadata: Default::default(),
            },
            TOKEN,
        )))
        .unwrap()
        .into_inner();
    assert_eq!(bulk.data["api-key"].secrets["api-key"], "rotated");

    // The official Python SDK.
    python_sdk_check(
        &gate,
        TOKEN,
        &[
            "-c",
            "from dapr.clients import DaprClient\n\
             with DaprClient() as d:\n\
             \x20   s = d.get_secret('kubernetes', 'db-creds').secret\n\
             \x20   assert s == {'user': 'orders', 'password': 's3cret-db'}, s\n\
             \x20   b = d.get_bulk_secret('kubernetes').secrets\n\
             \x20   assert 'db-creds' in b and 'admin-creds' not in b, b\n\
             print('ok')\n",
        ],
        &[],
    );

    // The secrets never show in the admin listener's views.
    for path in ["/dapr", "/routes", "/metrics"] {
        let body = String::from_utf8(admin_get(gate.fngate.admin, path).unwrap().body).unwrap();
        for value in ["s3cret-db", "file-pw", "k-123", "rotated"] {
            assert!(!body.contains(value), "{path} shows a secret value");
        }
    }
}

#[test]
fn secret_stores_that_would_read_beyond_their_app_are_compile_errors() {
    let function = "apiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata: {name: f, namespace: shop}\nspec:\n  serving:\n    annotations:\n      dapr.io/config: missing-config\n    states:\n      s:\n        type: state.redis\n        metadata:\n          - {name: redisHost, value: 127.0.0.1:6379}\n";
    let store = |kind: &str, meta: &str| {
        format!("---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: st-{}, namespace: shop}}\nspec:\n  type: {kind}\n  metadata: [{meta}]\n", kind.len() + meta.len())
    };
    let yaml = [
        function.to_owned(),
        store(
            "secretstores.local.file",
            "{name: secretsFile, value: /etc/passwd}",
        ),
        store(
            "secretstores.local.file",
            "{name: secretsFile, value: ../up.json}",
        ),
        store("secretstores.local.env", ""),
    ]
    .concat();
    let plan = compile(
        &snapshot_from_texts([("/catalog/t.yaml", yaml.as_str())]),
        &CompileSettings::default(),
        None,
    );
    let errors: Vec<String> = plan
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.to_string())
        .collect();
    let count = |needle: &str| errors.iter().filter(|e| e.contains(needle)).count();
    assert_eq!(
        count("a local secrets file must be a relative path"),
        2,
        "{errors:#?}"
    );
    assert_eq!(count("a prefix is required"), 1, "{errors:#?}");
    assert_eq!(
        count("Configuration shop/missing-config not found"),
        1,
        "{errors:#?}"
    );
}
