"""One unary gRPC call per authority through fngate with grpcio (gRPC's C-core client, the
one Python, C++, Ruby, PHP and C# share), printing the status each call ended with as JSON.

    python grpc_status_check.py HOST:PORT AUTHORITY...
"""
import json
import sys

import grpc

target = sys.argv[1]
results = []
for authority in sys.argv[2:]:
    with grpc.insecure_channel(target, options=[("grpc.default_authority", authority)]) as channel:
        call = channel.unary_unary("/externalscaler.ExternalScaler/IsActive")
        try:
            call(b"", timeout=60)
            results.append({"authority": authority, "code": "OK", "details": ""})
        except grpc.RpcError as e:
            results.append({"authority": authority, "code": e.code().name, "details": e.details()})
print(json.dumps(results))
