// Pushes per second that one SDK process receives and acks, the TypeScript SDK (Node) and the
// Rust SDK side by side on the same server and the same load, in one run:
//
//   cargo build --release --bin duplex -p duplex --example receive -p duplex-client
//   cd sdk/js && npm run bench -- --messages 100000 --transport ws
//
// One `duplex` (release, memory store) runs as a child; each receiver is a child process
// (bench/receiver.mjs, client/examples/receive.rs) that connects, says `ready`, counts distinct
// pushes and prints its time and CPU. This process pushes with POST /v1/push/batch (100 per
// call), resending items refused for a full queue. Two modes:
// - replay: every push is stored before the receiver connects; the node then writes them as
//   fast as the receiver reads (a socket's backpressure): the SDK alone sets the pace.
// - live: pushes while the receiver is connected, 4 calls in flight and at most 10,000 unacked.
//   Bursts beyond the node's outbound queue (256 frames) are written from the store. The
//   pusher may set this pace; the CPU per push is the SDK's either way. The server's per-client
// queue is raised so that the SDK, not the cap, sets the pace (stated in the output).

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { cpus } from "node:os";
import { dirname, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const here = dirname(fileURLToPath(import.meta.url));
const target = resolve(here, "../../../target/release");
process.env.TEST_DUPLEX_BIN ??= `${target}/duplex`;
const RUST_RECEIVER = process.env.RUST_RECEIVER ?? `${target}/examples/receive`;
const { Servers, mint, clientInfo, eventually } = await import("../test/harness.mjs");

const { values } = parseArgs({
  options: {
    messages: { type: "string", default: "100000" },
    transport: { type: "string", default: "ws" },
    runs: { type: "string", default: "2" },
    mode: { type: "string", default: "replay,live" },
    sdk: { type: "string", default: "typescript,rust" },
  },
});
const modes = values.mode.split(",");
const sdks = values.sdk.split(",");
const messages = Number(values.messages);
const runs = Number(values.runs);
for (const bin of [process.env.TEST_DUPLEX_BIN, RUST_RECEIVER]) {
  if (!existsSync(bin)) {
    console.error(`${bin} is missing: cargo build --release --bin duplex -p duplex --example receive -p duplex-client`);
    process.exit(2);
  }
}

const QUEUE_CAP = 1_000_000;
const servers = new Servers();
const node = await servers.duplex({
  env: {
    DUPLEX_DOWNSTREAM__QUEUE_MAX_MESSAGES: String(QUEUE_CAP),
    DUPLEX_DOWNSTREAM__QUEUE_MAX_BYTES: String(256 * 1024 * 1024),
  },
});
const endpoint = node[values.transport];
if (!endpoint) throw new Error(`--transport ws or tcp, not ${values.transport}`);

/**
 * Pushes `count` small JSON payloads to `clientId`, 8 calls in flight; live (with a `window`),
 * 4 calls and at most `window` pushes unacked (read from the server), so the client's own
 * queue cap is never what refuses them.
 */
const WINDOW = 10_000;
async function pushAll(clientId, count, window = Infinity) {
  let next = 0;
  let acked = 0;
  const refused = [];
  const call = async (items) => {
    const response = await fetch(`${node.pushBase}/v1/push/batch`, {
      method: "POST",
      headers: { authorization: "Bearer duplex-dev-api-key", "content-type": "application/json" },
      body: JSON.stringify({ pushes: items.map((i) => ({ client_ids: [clientId], payload: { i } })) }),
    });
    const body = await response.json();
    if (response.status !== 202) throw new Error(`batch answered ${response.status}: ${JSON.stringify(body)}`);
    body.results.forEach((r, k) => r.status === 429 && refused.push(items[k]));
  };
  const worker = async () => {
    for (;;) {
      while (next - acked >= window) {
        acked = (await clientInfo(node, clientId))[1].last_acked_seq;
        if (next - acked >= window) await new Promise((r) => setTimeout(r, 2));
      }
      const items = refused.splice(0, 100);
      while (items.length < 100 && next < count) items.push(next++);
      if (items.length === 0) return;
      await call(items);
    }
  };
  await Promise.all(Array.from({ length: window === Infinity ? 8 : 4 }, worker));
  while (refused.length > 0) await worker();
}

async function receive(sdk, run, mode) {
  const clientId = `bench-${mode}-${sdk}-${run}`;
  const token = mint("bench");
  if (mode === "replay") await pushAll(clientId, messages);
  const [cmd, args] =
    sdk === "typescript"
      ? [process.execPath, ["--experimental-websocket", `${here}/receiver.mjs`, endpoint, clientId, token, String(messages)]]
      : [RUST_RECEIVER, [endpoint, clientId, token, String(messages)]];
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "inherit"] });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  if ((await lines.next()).value !== "ready") throw new Error(`${sdk} receiver did not connect`);
  const pushed = mode === "live" ? pushAll(clientId, messages, WINDOW) : Promise.resolve();
  const result = JSON.parse((await lines.next()).value);
  await pushed;
  await eventually("every push acked", async () => (await clientInfo(node, clientId))[1].last_acked_seq === messages, 30_000);
  return result;
}

console.log(`# ${messages} pushes to one client over ${values.transport}, ${runs} run(s) per SDK; ${cpus().length} cores (${cpus()[0]?.model})`);
console.log(`# server: release duplex, memory store, queue_max_messages ${QUEUE_CAP}; receivers ack with the default 100 ms delay`);
try {
  for (const mode of modes) {
    const results = { typescript: [], rust: [] };
    for (let run = 0; run < runs; run++) {
      // Alternate who goes first, so warm-up and drift do not favour one SDK.
      for (const sdk of run % 2 === 0 ? sdks : [...sdks].reverse()) {
        const r = await receive(sdk, run, mode);
        results[sdk].push(r);
        console.log(
          `${mode.padEnd(6)} ${sdk.padEnd(10)} run ${run}: ${Math.round(r.received / r.seconds)} pushes/s received and acked; ` +
            `${((r.cpu_seconds / r.received) * 1e6).toFixed(1)} us CPU per push; ${r.connections} connection(s)`,
        );
      }
    }
    if (sdks.length < 2) continue;
    const best = (sdk) => Math.max(...results[sdk].map((r) => r.received / r.seconds));
    const cpu = (sdk) => Math.min(...results[sdk].map((r) => r.cpu_seconds / r.received));
    console.log(
      `${mode.padEnd(6)} typescript/rust: best rate ${(best("typescript") / best("rust")).toFixed(2)}x, ` +
        `CPU per push ${(cpu("typescript") / cpu("rust")).toFixed(2)}x`,
    );
  }
} finally {
  await servers.cleanup();
}
