"""The official Dapr Python SDK against fngate's Dapr API over TLS, as a function would
reach it with DAPR_GRPC_ENDPOINT / DAPR_HTTP_ENDPOINT = https://... and the CA trusted
through GRPC_DEFAULT_SSL_ROOTS_FILE_PATH and SSL_CERT_FILE. Run by tests/dapr_tls.rs; any
mismatch raises, so the process exits non-zero with the reason.
"""
import os
import ssl
import urllib.request

from dapr.clients import DaprClient


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


# The constructor waits for GET /v1.0/healthz/outbound on the HTTPS endpoint.
with DaprClient() as d:
    d.save_state("cart", "tls-k", "over tls")
    got = d.get_state("cart", "tls-k")
    expect(got.data == b"over tls", f"get over gRPC TLS: {got.data!r}")

# A plain HTTPS client, the CA from SSL_CERT_FILE.
req = urllib.request.Request(
    os.environ["DAPR_HTTP_ENDPOINT"] + "/v1.0/state/cart/tls-k",
    headers={"dapr-api-token": os.environ["DAPR_API_TOKEN"]},
)
with urllib.request.urlopen(req, context=ssl.create_default_context(), timeout=30) as r:
    # gRPC stored the raw bytes; HTTP gives them back as they are.
    body = r.read()
    expect(body == b"over tls", f"get over HTTPS: {body!r}")
print("ok")
