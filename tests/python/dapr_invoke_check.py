"""Service invocation through fngate with the official Dapr Python SDK, as a function would.

Run by tests/dapr_invoke.rs with DAPR_RUNTIME_HOST, DAPR_GRPC_PORT, DAPR_HTTP_PORT and
DAPR_API_TOKEN pointing at fngate; the HTTP app `orders-default` and the gRPC app
`stock-default` echo what they receive. Any mismatch raises, so the process exits non-zero.
"""
import json

from dapr.clients import DaprClient


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


with DaprClient() as d:
    r = d.invoke_method(
        "orders-default",
        "echo/py",
        data='{"n": 1}',
        content_type="application/json",
        http_verb="POST",
        http_querystring=(("x", "1"),),
    )
    echo = json.loads(r.data)
    expect(echo["method"] == "echo/py", f"method {echo}")
    expect(echo["verb"] == "POST" and echo["query"] == "x=1", f"verb/query {echo}")
    expect(echo["body"] == '{"n": 1}', f"body {echo}")
    expect(echo["headers"]["dapr-caller-app-id"] == "front-default", f"caller {echo}")
    expect(r.status_code == 201, f"status {r.status_code}")

    r = d.invoke_method("stock-default", "reserve", data="two", http_verb="PUT")
    echo = json.loads(r.data)
    expect(echo["method"] == "reserve" and echo["body"] == "two", f"grpc app {echo}")

print("ok")
