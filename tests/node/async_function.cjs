// An async function as OpenFunction's Node framework (functions-framework-nodejs) runs
// one: a DaprServer over Dapr's HTTP protocol takes the Function's inputs, and the
// function body is the mqtt-io-node samples' `tryAsync`: log the data, `ctx.send(data)`,
// which sends it to every output (bindings with their operation, pub/subs to their topic)
// through the sidecar's HTTP API with a DaprClient. Here the sidecar is fngate.
//
// Environment: APP_HOST, APP_PORT (where fngate delivers); FUNC_HTTP=1 for an HTTP function;
// FUNC_PROTOCOL=grpc to serve AppCallback gRPC; FUNC_EMPTY_DATA, what to send for an
// event without data; DAPR_HOST, DAPR_HTTP_PORT,
// DAPR_API_TOKEN (fngate's Dapr HTTP API); FUNC_INPUTS and FUNC_OUTPUTS as JSON lists of
// {name, type: "bindings"|"pubsub", topic?, operation?}, the framework's FUNC_CONTEXT
// inputs and outputs. Prints `EVENT <json>` per input and `SENT <json>` or
// `SEND_FAILED <json>` per output call, one line each.

const { DaprServer, CommunicationProtocolEnum } = require("@dapr/dapr");

const inputs = JSON.parse(process.env.FUNC_INPUTS || "[]");
const outputs = JSON.parse(process.env.FUNC_OUTPUTS || "[]");

function line(kind, value) {
  process.stdout.write(`${kind} ${JSON.stringify(value)}\n`);
}

async function main() {
  // FUNC_PROTOCOL=grpc: AppCallback gRPC, as a Go function of the samples serves it.
  const protocol =
    process.env.FUNC_PROTOCOL === "grpc"
      ? CommunicationProtocolEnum.GRPC
      : CommunicationProtocolEnum.HTTP;
  const server = new DaprServer({
    serverHost: process.env.APP_HOST,
    serverPort: process.env.APP_PORT,
    communicationProtocol: protocol,
    clientOptions: {
      daprHost: process.env.DAPR_HOST,
      daprPort: process.env.DAPR_HTTP_PORT,
      communicationProtocol: CommunicationProtocolEnum.HTTP,
    },
  });

  // ctx.send(data): every output gets the data; a failed send fails the event.
  const send = async (data) => {
    for (const out of outputs) {
      try {
        if (out.type === "pubsub") {
          await server.client.pubsub.publish(out.name, out.topic, data);
        } else {
          await server.client.binding.send(out.name, out.operation || "create", data);
        }
        line("SENT", { output: out.name, data });
      } catch (e) {
        line("SEND_FAILED", { output: out.name, error: String(e && e.message ? e.message : e) });
        throw e;
      }
    }
  };

  // A Knative-style function (FUNC_HTTP=1, `tryKnativeAsync`): a plain HTTP server whose
  // every request's body goes to the outputs, answered 200 with the body once sent.
  if (process.env.FUNC_HTTP === "1") {
    const http = require("http");
    const plain = http.createServer((req, res) => {
      const chunks = [];
      req.on("data", (c) => chunks.push(c));
      req.on("end", async () => {
        // As the framework's express app: a JSON body reaches the function parsed.
        let body = Buffer.concat(chunks).toString();
        if ((req.headers["content-type"] || "").includes("json")) {
          body = JSON.parse(body);
        }
        line("EVENT", { input: "http", path: req.url, data: body });
        try {
          await send(body);
          res.writeHead(200, { "content-type": "text/plain" });
          res.end(typeof body === "string" ? body : JSON.stringify(body));
        } catch (e) {
          res.writeHead(500);
          res.end(String(e));
        }
      });
    });
    plain.listen(Number(process.env.APP_PORT), process.env.APP_HOST, () =>
      line("STARTED", { port: Number(process.env.APP_PORT) }),
    );
    return;
  }

  for (const input of inputs) {
    const handler = async (data) => {
      line("EVENT", { input: input.name, data });
      // The cron samples send a greeting of their own for a tick, which has no data.
      const empty = data === undefined || data === null || data === "";
      await send(empty && process.env.FUNC_EMPTY_DATA ? process.env.FUNC_EMPTY_DATA : data);
    };
    if (input.type === "pubsub") {
      await server.pubsub.subscribe(input.name, input.topic, handler);
    } else {
      await server.binding.receive(input.name, handler);
    }
  }
  await server.start();
  line("STARTED", { port: Number(process.env.APP_PORT) });
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
