"""Drives fngate's Dapr API with the official Dapr Python SDK, as a function would.

Run by tests/dapr_python_sdk.rs with DAPR_RUNTIME_HOST, DAPR_GRPC_PORT, DAPR_HTTP_PORT and
DAPR_API_TOKEN pointing at fngate, and SUBJECT naming a JetStream subject. Any mismatch
raises, so the process exits non-zero with the reason.
"""
import json
import os

import grpc
from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError
from dapr.clients.grpc._request import TransactionalStateOperation, TransactionOperationType


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def grpc_error(call):
    try:
        call()
    except DaprGrpcError as e:
        return e
    raise AssertionError("expected a DaprGrpcError")


# The constructor waits for GET /v1.0/healthz/outbound on the HTTP port.
with DaprClient() as d:
    d.save_state("cart", "py-k", "first")
    got = d.get_state("cart", "py-k")
    expect(got.data == b"first" and got.etag == "1", f"get after first save: {got.data!r} {got.etag!r}")
    d.save_state("cart", "py-k", "second", etag="1")
    got = d.get_state("cart", "py-k")
    expect(got.etag == "2", f"etag after second save: {got.etag!r}")

    # A stale ETag: DaprGrpcError (not ValueError: the details match the status).
    e = grpc_error(lambda: d.save_state("cart", "py-k", "lost", etag="1"))
    expect(e.code() == grpc.StatusCode.ABORTED, f"code {e.code()}")
    expect(e.error_code() == "ERR_STATE_SAVE", f"error_code {e.error_code()}")

    # An illegal key: daprd's details field by field (BadRequest, ResourceInfo, ErrorInfo).
    e = grpc_error(lambda: d.save_state("cart", "bad||key", "v"))
    expect(e.code() == grpc.StatusCode.INVALID_ARGUMENT, f"code {e.code()}")
    expect(e.error_code() == "DAPR_STATE_ILLEGAL_KEY", f"error_code {e.error_code()}")
    details = e.status_details()
    violation = (details.bad_request or {}).get("field_violations", [{}])[0]
    expect(violation.get("field") == "bad||key", f"bad_request {details.bad_request}")
    expect(violation.get("description") == e.details(), f"bad_request {details.bad_request}")
    resource = details.resource_info or {}
    expect(
        (resource.get("resource_type"), resource.get("resource_name")) == ("state", "cart"),
        f"resource_info {details.resource_info}",
    )
    expect(details.error_info.get("domain") == "dapr.io", f"error_info {details.error_info}")

    e = grpc_error(lambda: d.get_state("nope", "k"))
    expect(e.code() == grpc.StatusCode.INVALID_ARGUMENT, f"code {e.code()}")
    expect(e.error_code() == "DAPR_STATE_NOT_FOUND", f"error_code {e.error_code()}")

    d.execute_state_transaction(
        store_name="cart",
        operations=[
            TransactionalStateOperation(key="py-a", data="A"),
            TransactionalStateOperation(key="py-b", data="B"),
            TransactionalStateOperation(key="py-k", operation_type=TransactionOperationType.delete),
        ],
    )
    bulk = d.get_bulk_state("cart", keys=["py-b", "py-k", "py-a"]).items
    seen = [(i.key, i.data, i.etag) for i in bulk]
    expect(seen == [("py-b", b"B", "1"), ("py-k", b"", ""), ("py-a", b"A", "1")], f"bulk {seen}")
    d.delete_state("cart", "py-a", etag="1")
    expect(d.get_state("cart", "py-a").data == b"", "deleted")

    d.publish_event(
        pubsub_name="bus",
        topic_name=os.environ["SUBJECT"],
        data=json.dumps({"from": "python"}),
        data_content_type="application/json",
    )
    result = d.publish_events(
        pubsub_name="bus", topic_name=os.environ["SUBJECT"], data=["one", "two"]
    )
    expect(not result.failed_entries, f"bulk publish failed: {result.failed_entries}")

    md = d.get_metadata()
    expect(md.application_id == "orders-shop", f"app id {md.application_id}")
    names = sorted(c.name for c in md.registered_components)
    expect("cart" in names and "bus" in names, f"components {names}")

    # invoke_binding raises the plain grpc.RpcError (the SDK does not wrap it).
    try:
        d.invoke_binding("no-such-binding", "create", "x")
        raise AssertionError("expected an RpcError")
    except grpc.RpcError as e:
        expect(e.code() == grpc.StatusCode.INTERNAL, f"code {e.code()}")
        expect("couldn't find output binding" in e.details(), f"details {e.details()}")

print("ok")
