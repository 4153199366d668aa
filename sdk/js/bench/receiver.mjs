// Receives `messages` pushes with the TypeScript SDK (acking them as it does by default) and
// prints, as one JSON line, how long they took from the first to the last: the twin of the
// Rust SDK's client/examples/receive.rs, run by receive.mjs on the same server and load.
//
//   node --experimental-websocket bench/receiver.mjs <endpoint> <client_id> <token> <messages>

import { Client } from "../dist/index.js";
import { nodeConnector } from "../dist/node.js";

const [endpoint, clientId, token, count] = process.argv.slice(2);
const messages = Number(count);
const client = new Client({ endpoints: [endpoint], clientId, token: () => token, connector: nodeConnector() });
const seen = new Set();
let first;
let connections = 0;
client.on("connected", () => {
  if (connections++ === 0) console.log("ready");
});
client.on("disconnected", ({ reason }) => console.error(`typescript receiver disconnected: ${reason}`));
const done = new Promise((resolve) =>
  client.on("push", (push) => {
    first ??= performance.now();
    seen.add(push.seq);
    if (seen.size === messages) resolve();
  }),
);
client.start();
await done;
const seconds = (performance.now() - first) / 1000;
await client.close();
const cpu = process.cpuUsage();
console.log(JSON.stringify({ received: seen.size, seconds, cpu_seconds: (cpu.user + cpu.system) / 1e6, connections }));
