// Two `duplex` nodes on one private Redis: the client follows go_away to the other node,
// and leaves a node that hangs (SIGSTOP) within the liveness deadline.

import assert from "node:assert/strict";
import { test } from "node:test";

import { push, Servers, startClient } from "./harness.mjs";

const text = (bytes) => new TextDecoder().decode(bytes);

async function twoNodes(servers, env = {}) {
  const redis = await servers.redis();
  const a = await servers.duplex({ args: ["--redis", redis, "--node-id", "node-a"], env });
  const b = await servers.duplex({ args: ["--redis", redis, "--node-id", "node-b"], env });
  return [a, b];
}

test("go_away moves the client to the other node and nothing is lost", async (t) => {
  const servers = new Servers();
  t.after(() => servers.cleanup());
  const [a, b] = await twoNodes(servers);
  const { client, events } = startClient([a.tcp, b.ws], "gus-phone");
  t.after(() => client.close());
  assert.equal((await events.next("connected")).nodeId, "node-a");
  await push(a, "gus-phone", 1);
  assert.equal((await events.next("push")).seq, 1);
  a.signal("SIGTERM");
  assert.equal((await events.next("disconnected", 15_000)).reason, "go_away");
  // Pushed through node B's API while the client moves over.
  await push(b, "gus-phone", 2);
  const moved = await events.next("connected");
  assert.deepEqual([moved.nodeId, moved.endpoint], ["node-b", b.ws], "the other endpoint is tried after go_away");
  assert.equal((await events.next("push")).seq, 2);
  assert.equal(await a.exited(), 0, "node A drained and exited cleanly once its client left");
});

test("liveness: clients on a node that hangs (SIGSTOP) are on the other node within the deadline", async (t) => {
  const servers = new Servers();
  t.after(() => servers.cleanup());
  const [a, b] = await twoNodes(servers, {
    DUPLEX_ACCESS__HEARTBEAT_MS: "500",
    DUPLEX_ACCESS__PONG_DEADLINE_MS: "1000",
    DUPLEX_REGISTRY__LEASE_MS: "1000",
  });
  const clients = [0, 1, 2].map((i) => startClient([a.tcp, b.tcp], `liv-${i}`, { connectTimeoutMs: 1000 }));
  for (const { client, events } of clients) {
    t.after(() => client.close());
    assert.equal((await events.next("connected")).nodeId, "node-a");
  }
  a.signal("SIGSTOP");
  const stopped = performance.now();
  for (const [i, { events }] of clients.entries()) {
    const reason = (await events.next("disconnected")).reason;
    assert.match(reason, /no pong within 1000 ms/);
    assert.equal((await events.next("connected")).nodeId, "node-b");
    await push(b, `liv-${i}`, "after the hang");
    assert.equal(text((await events.next("push")).payload), '"after the hang"');
  }
  // heartbeat (0.5 s) + pong deadline (1 s) + reconnect backoff, with room for a slow machine.
  const movedAfter = performance.now() - stopped;
  a.signal("SIGCONT");
  assert.ok(movedAfter < 8000, `${movedAfter} ms`);
});
