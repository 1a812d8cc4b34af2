// The official Dapr JS SDK's client against fngate, as a function would use it: service
// invocation by app-id, and daprd's error body (errorCode, details) on an illegal state
// key. Run by tests/dapr_invoke.rs with DAPR_HTTP_PORT and DAPR_API_TOKEN; any mismatch
// exits non-zero with the reason.
const { DaprClient, HttpMethod, CommunicationProtocolEnum } = require("@dapr/dapr");

function expect(cond, what) {
  if (!cond) {
    console.error("FAILED: " + what);
    process.exit(1);
  }
}

(async () => {
  const client = new DaprClient({
    daprHost: "127.0.0.1",
    daprPort: process.env.DAPR_HTTP_PORT,
    communicationProtocol: CommunicationProtocolEnum.HTTP,
    daprApiToken: process.env.DAPR_API_TOKEN,
  });
  const echo = await client.invoker.invoke("orders-default", "echo/js", HttpMethod.POST, { from: "js" });
  expect(echo.method === "echo/js", "method " + JSON.stringify(echo));
  expect(JSON.parse(echo.body).from === "js", "body " + JSON.stringify(echo));
  expect(echo.headers["dapr-caller-app-id"] === "front-default", "caller " + JSON.stringify(echo));

  // The SDK wraps a failed call as {error, error_msg: <daprd's body>, status}.
  const saved = await client.state.save("cart", [{ key: "bad||key", value: "v" }]);
  expect(saved.error, "an illegal key was accepted");
  const wrapped = JSON.parse(saved.error.message);
  expect(wrapped.status === 400, "status " + wrapped.status);
  const body = JSON.parse(wrapped.error_msg);
  expect(body.errorCode === "ERR_MALFORMED_REQUEST", "errorCode " + body.errorCode);
  const types = body.details.map((d) => d["@type"]);
  expect(
    JSON.stringify(types) ===
      JSON.stringify([
        "type.googleapis.com/google.rpc.BadRequest",
        "type.googleapis.com/google.rpc.ResourceInfo",
        "type.googleapis.com/google.rpc.ErrorInfo",
      ]),
    "details " + JSON.stringify(types)
  );
  expect(body.details[0].field_violations[0].field === "bad||key", "violation " + JSON.stringify(body.details[0]));
  expect(body.details[1].resource_name === "cart", "resource " + JSON.stringify(body.details[1]));
  expect(body.details[2].reason === "DAPR_STATE_ILLEGAL_KEY", "reason " + JSON.stringify(body.details[2]));
  console.log("ok");
  process.exit(0);
})().catch((e) => {
  console.error("FAILED: " + (e && e.stack ? e.stack : e));
  process.exit(1);
});
