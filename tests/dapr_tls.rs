//! The Dapr API over TLS against the real binary: the official Python SDK (gRPC, and its
//! HTTP health probe) and a plain HTTPS client trusting the CA, a client with another CA
//! refused, a certificate rotated on disk served without a restart, and mTLS.

mod common;

use common::redis_server::Redis;
use common::*;
use std::path::Path;
use std::process::Command;

fn catalog(redis: &Redis) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_atomically(
        dir.path(),
        "catalog.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: cart-token\n  namespace: shop\nstringData:\n  token: tok-cart\n---\napiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata:\n  name: cart\n  namespace: shop\nspec:\n  serving:\n    annotations:\n      dapr.io/api-token-secret: cart-token\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: cart\n  namespace: shop\nspec:\n  type: state.redis\n  version: v1\n  metadata:\n    - name: redisHost\n      value: \"{}\"\n",
            redis.addr()
        ),
    );
    dir
}

/// fngate with both Dapr listeners on TLS: (fngate, gRPC port, HTTP port).
fn start(dir: &Path, tls: &str) -> (Fngate, u16, u16) {
    let (grpc, http) = (free_port(), free_port());
    let gate = Fngate::start_full(
        dir,
        &format!("  dapr_grpc: 127.0.0.1:{grpc}\n  dapr_http: 127.0.0.1:{http}\n"),
        &format!("dapr_api:\n  tls:\n{tls}"),
    );
    (gate, grpc, http)
}

/// `curl` over HTTPS to the metadata API: its exit code (0: a 200 came back).
fn curl(port: u16, args: &[&str]) -> i32 {
    Command::new("curl")
        .args(["-sS", "-f", "-o", "/dev/null", "--max-time", "10"])
        .args(["-H", "dapr-api-token: tok-cart"])
        .args(args)
        .arg(format!("https://127.0.0.1:{port}/v1.0/metadata"))
        .status()
        .expect("curl (scripts/setup.sh)")
        .code()
        .unwrap_or(-1)
}

#[test]
fn the_python_sdk_and_a_plain_client_work_over_tls_a_wrong_ca_is_refused_and_a_rotated_certificate_is_served(
) {
    let redis = Redis::start();
    let dir = catalog(&redis);
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = ca_and_server_cert(certs.path());
    let (gate, grpc, http) = start(
        dir.path(),
        &format!("    cert: {}\n    key: {}\n", cert.display(), key.display()),
    );
    gate.wait_until(
        || curl(http, &["--cacert", ca.to_str().unwrap()]) == 0,
        "the Dapr HTTP API answering over TLS",
    );

    let out = Command::new(python_venv())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/dapr_tls_check.py"
        ))
        .env("DAPR_GRPC_ENDPOINT", format!("https://127.0.0.1:{grpc}"))
        .env("DAPR_HTTP_ENDPOINT", format!("https://127.0.0.1:{http}"))
        .env("DAPR_API_TOKEN", "tok-cart")
        .env("DAPR_HEALTH_TIMEOUT", "30")
        .env("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", &ca)
        .env("SSL_CERT_FILE", &ca)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the Python SDK over TLS failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(redis.hash("cart-shop||tls-k")["data"], b"over tls");

    // Plaintext and a CA that did not sign the certificate are refused.
    let other = tempfile::tempdir().unwrap();
    let (other_ca, other_cert, other_key) = ca_and_server_cert(other.path());
    // curl's 60: the peer's certificate is not signed by the CA it was given.
    assert_eq!(curl(http, &["--cacert", other_ca.to_str().unwrap()]), 60);
    assert!(
        request(
            format!("127.0.0.1:{http}").parse().unwrap(),
            "GET",
            "",
            "/v1.0/healthz",
            &[],
            b""
        )
        .map_or(true, |r| r.status != 204),
        "plaintext is not served"
    );

    // cert-manager writes a new pair: served without a restart, from the new CA.
    std::fs::copy(&other_key, &key).unwrap();
    std::fs::copy(&other_cert, &cert).unwrap();
    gate.wait_until(
        || curl(http, &["--cacert", other_ca.to_str().unwrap()]) == 0,
        "the rotated certificate served",
    );
    assert_eq!(curl(http, &["--cacert", ca.to_str().unwrap()]), 60);
    // The gRPC listener rotated too (its TLS verifies with the new CA, not the old; the
    // HTTP request itself is no gRPC call, so curl fails after the handshake).
    assert_eq!(
        curl(grpc, &["--cacert", ca.to_str().unwrap(), "--http2"]),
        60
    );
    assert_ne!(
        curl(grpc, &["--cacert", other_ca.to_str().unwrap(), "--http2"]),
        60
    );
}

#[test]
fn with_a_client_ca_only_a_client_certificate_it_signed_is_let_in() {
    let redis = Redis::start();
    let dir = catalog(&redis);
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = ca_and_server_cert(certs.path());
    let (client_cert, client_key) = client_cert_from_ca(certs.path());
    let (gate, _grpc, http) = start(
        dir.path(),
        &format!(
            "    cert: {}\n    key: {}\n    client_ca: {}\n",
            cert.display(),
            key.display(),
            ca.display()
        ),
    );
    let with_cert = [
        "--cacert",
        ca.to_str().unwrap(),
        "--cert",
        client_cert.to_str().unwrap(),
        "--key",
        client_key.to_str().unwrap(),
    ];
    gate.wait_until(
        || curl(http, &with_cert) == 0,
        "a client with a certificate let in",
    );
    assert_ne!(
        curl(http, &["--cacert", ca.to_str().unwrap()]),
        0,
        "no client certificate"
    );
}

/// An HTTPS server (Python's, the system's python3) on `cert`/`key` answering every POST
/// with `secure:` and the body; its port.
fn https_server(cert: &Path, key: &Path) -> (std::process::Child, u16) {
    let script = r#"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        reply = b"secure:" + body
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
s.socket = ctx.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .arg(cert)
        .arg(key)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let port = line.trim().parse().expect("the server's port");
    (child, port)
}

#[test]
fn bindings_http_reaches_an_https_endpoint_trusting_the_components_ca_and_not_another() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = ca_and_server_cert(certs.path());
    let (mut server, port) = https_server(&cert, &key);
    let mut root_ca = "    - name: MTLSRootCA\n      value: |\n".to_owned();
    for line in std::fs::read_to_string(&ca).unwrap().lines() {
        root_ca.push_str(&format!("        {line}\n"));
    }
    let binding = |name: &str, extra: &str| {
        format!(
            "---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n  type: bindings.http\n  version: v1\n  metadata:\n    - name: url\n      value: https://127.0.0.1:{port}/echo\n{extra}"
        )
    };
    let dir = tempfile::tempdir().unwrap();
    write_atomically(
        dir.path(),
        "catalog.yaml",
        &[
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: cart-token\n  namespace: shop\nstringData:\n  token: tok-cart\n---\napiVersion: core.openfunction.io/v1beta2\nkind: Function\nmetadata:\n  name: cart\n  namespace: shop\nspec:\n  serving:\n    annotations:\n      dapr.io/api-token-secret: cart-token\n".to_owned(),
            binding("secure", &root_ca),
            binding("untrusted", ""),
        ]
        .concat(),
    );
    let http = free_port();
    let gate = Fngate::start_full(dir.path(), &format!("  dapr_http: 127.0.0.1:{http}\n"), "");
    let diagnostics =
        String::from_utf8(admin_get(gate.admin, "/diagnostics").unwrap().body).unwrap();
    assert!(!diagnostics.contains("error"), "{diagnostics}");
    let dapr: std::net::SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    let call = |name: &str| {
        request(
            dapr,
            "POST",
            "",
            &format!("/v1.0/bindings/{name}"),
            &[("dapr-api-token", "tok-cart")],
            br#"{"operation":"post","data":"hi"}"#,
        )
        .unwrap()
    };
    let ok = call("secure");
    assert_eq!(
        (ok.status, String::from_utf8_lossy(&ok.body).into_owned()),
        (200, r#"secure:"hi""#.to_owned())
    );
    // The system's roots do not hold the test CA.
    let refused = call("untrusted");
    let body = String::from_utf8_lossy(&refused.body);
    assert_eq!(refused.status, 500, "{body}");
    assert!(
        body.contains("certificate") || body.contains("UnknownIssuer"),
        "{body}"
    );
    let _ = server.kill();
    let _ = server.wait();
}
