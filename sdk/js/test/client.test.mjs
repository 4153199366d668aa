// The reconnecting client against a real `duplex` (memory store), over TCP and WebSocket.

import assert from "node:assert/strict";
import { test } from "node:test";

import { decode } from "@msgpack/msgpack";

import { Client, DuplexError } from "../dist/index.js";
import { nodeConnector } from "../dist/node.js";
import { clientInfo, collect, eventually, mint, push, Servers, startClient } from "./harness.mjs";

const text = (bytes) => new TextDecoder().decode(bytes);

/** A connector that records the frames the client sends, decoded. */
function recording(inner = nodeConnector()) {
  const sent = [];
  return {
    sent,
    connector: {
      schemes: inner.schemes,
      async open(endpoint, sink, signal) {
        const transport = await inner.open(endpoint, sink, signal);
        return {
          send(body) {
            sent.push(decode(body));
            transport.send(body);
          },
          close: () => transport.close(),
        };
      },
    },
  };
}

for (const transport of ["tcp", "ws"]) {
  test(`over ${transport}: connects, receives pushes once, resumes after a server-side drop without duplicates`, async (t) => {
    const servers = new Servers();
    t.after(() => servers.cleanup());
    const node = await servers.duplex();
    const clientId = `sam-${transport}`;
    const { client, events } = startClient(node[transport], clientId);
    t.after(() => client.close());
    assert.equal((await events.next("connected")).endpoint, node[transport]);
    await push(node, clientId, { n: 1 });
    await push(node, clientId, { n: 2 });
    assert.equal(text((await events.next("push")).payload), '{"n":1}');
    assert.equal((await events.next("push")).seq, 2);
    await eventually("acks stored", async () => (await clientInfo(node, clientId))[1].last_acked_seq === 2);

    const [status] = await clientInfo(node, clientId, "DELETE");
    assert.equal(status, 200);
    assert.equal((await events.next("kicked")).reason, "admin");
    assert.match((await events.next("disconnected")).reason, /admin/);
    // Pushed while the client is away: it arrives once it is back, exactly once.
    await push(node, clientId, { n: 3 });
    await events.next("connected");
    assert.equal((await events.next("push")).seq, 3);
    await push(node, clientId, { n: 4 });
    assert.equal((await events.next("push")).seq, 4, "no duplicates of 1..3 after the reconnect");
    assert.equal(events.all("push").length, 0);
  });
}

test("held acks: a burst of pushes is acked by a few cumulative acks; ack_now is acked at once", async (t) => {
  const servers = new Servers();
  t.after(() => servers.cleanup());
  const node = await servers.duplex();
  const { sent, connector } = recording();
  const { client, events } = startClient(node.tcp, "hal-phone", { connector });
  t.after(() => client.close());
  await events.next("connected");
  const burst = 50;
  await Promise.all(Array.from({ length: burst }, (_, i) => push(node, "hal-phone", i)));
  for (let i = 1; i <= burst; i++) assert.equal((await events.next("push")).seq, i);
  await eventually("all acked", async () => (await clientInfo(node, "hal-phone"))[1].last_acked_seq === burst);
  const acks = sent.filter((f) => f.type === "ack");
  assert.ok(acks.length >= 1 && acks.length <= 10, `${acks.length} ack frames for ${burst} pushes`);
  assert.deepEqual(acks.map((a) => a.seq), [...acks.map((a) => a.seq)].sort((a, b) => a - b), "cumulative, rising");

  // A backend waiting for the ack: with a one-minute delay it can only arrive in time through ack_now.
  const slow = startClient(node.tcp, "hal-tablet", { ackDelayMs: 60_000 });
  t.after(() => slow.client.close());
  await slow.events.next("connected");
  const answer = await push(node, "hal-tablet", "now", { wait_ack_ms: 5000 });
  assert.equal(answer.messages[0].acked, true);
  assert.equal((await slow.events.next("push")).ackNow, true);
});

test("close() sends the held ack, so the next instance gets nothing again", async (t) => {
  const servers = new Servers();
  t.after(() => servers.cleanup());
  const node = await servers.duplex();
  const first = startClient(node.ws, "cal-phone", { ackDelayMs: 60_000 });
  await first.events.next("connected");
  await push(node, "cal-phone", "once");
  await first.events.next("push");
  await first.client.close();
  assert.equal(first.client.state, "closed");
  await eventually("ack stored", async () => (await clientInfo(node, "cal-phone"))[1].last_acked_seq === 1);
  const next = startClient(node.tcp, "cal-phone");
  t.after(() => next.client.close());
  await next.events.next("connected");
  await push(node, "cal-phone", "twice?");
  assert.equal((await next.events.next("push")).seq, 2, "push 1 did not come again");
});

/** A node whose service `svc` calls a fake backend. */
async function nodeWithBackend(t) {
  const servers = new Servers();
  t.after(() => servers.cleanup());
  const backend = await servers.backend();
  const node = await servers.duplex({
    config: `[upstream.services.svc]\nendpoints = [{ url = "${backend.url}", weight = 1 }]\ntry_timeout_ms = 8000\n`,
  });
  return { backend, node };
}

test("uploads and requests survive a reconnect and reach the backend once", async (t) => {
  const { backend, node } = await nodeWithBackend(t);
  const { client, events } = startClient(node.tcp, "ann-phone");
  t.after(() => client.close());
  await events.next("connected");
  const ack = await client.upload({ service: "svc", path: "/events", body: "first" });
  assert.deepEqual([ack.status, ack.spooled], [200, false]);

  // The backend is slow; the connection is kicked while both calls wait at it.
  backend.slowMs = 600;
  const upload = client.upload({ service: "svc", path: "/events", body: "second" });
  const request = client.request({ service: "svc", method: "GET", path: "/orders/1" });
  await eventually("both calls at the backend", () => backend.count === 3);
  assert.equal((await clientInfo(node, "ann-phone", "DELETE"))[0], 200);
  await events.next("disconnected");
  await events.next("connected");
  assert.equal((await upload).status, 200);
  const reply = await request;
  assert.equal(reply.status, 200);
  assert.deepEqual(JSON.parse(text(reply.body)), { path: "/orders/1", slow: true });
  assert.ok(reply.seq > 0, "the reply was stored for the client, and acked like a push");
  assert.equal(backend.count, 3, `resent calls were deduplicated by the server: ${backend.paths}`);

  // A refusal is typed: code and whether to retry.
  const refused = await client.request({ service: "nope", path: "/x" }).catch((e) => e);
  assert.ok(refused instanceof DuplexError, String(refused));
  assert.deepEqual([refused.code, refused.retry], ["rejected", false]);
});

test("a request whose reply arrives while the client is away resolves after the reconnect", async (t) => {
  const { backend, node } = await nodeWithBackend(t);
  // The token provider holds the reconnect back until the reply is stored (it may be async).
  let gate;
  let release;
  const { client, events } = startClient(node.ws, "rob-phone", {
    token: () => (gate ?? Promise.resolve()).then(() => mint("rob")),
  });
  t.after(() => client.close());
  await events.next("connected");
  backend.slowMs = 300;
  const request = client.request({ service: "svc", method: "GET", path: "/late" });
  await eventually("the request at the backend", () => backend.count === 1);
  gate = new Promise((r) => (release = r));
  await clientInfo(node, "rob-phone", "DELETE");
  await events.next("disconnected");
  await eventually("the reply stored while offline", async () => (await clientInfo(node, "rob-phone"))[1].pending === 1);
  assert.equal((await clientInfo(node, "rob-phone"))[1].online, false);
  release();
  const reply = await request;
  assert.equal(reply.status, 200);
  assert.equal(backend.count, 1);
});

test("with explicit acks, unacked pushes come again after a reconnect", async (t) => {
  const servers = new Servers();
  t.after(() => servers.cleanup());
  const node = await servers.duplex();
  const { client, events } = startClient(node.tcp, "eve-phone", { autoAck: false });
  t.after(() => client.close());
  await events.next("connected");
  await push(node, "eve-phone", 1);
  await push(node, "eve-phone", 2);
  assert.equal((await events.next("push")).seq, 1);
  assert.equal((await events.next("push")).seq, 2);
  client.ack(1);
  await eventually("ack 1 stored", async () => (await clientInfo(node, "eve-phone"))[1].last_acked_seq === 1);
  await clientInfo(node, "eve-phone", "DELETE");
  await events.next("connected");
  assert.equal((await events.next("push")).seq, 2, "push 2 was not acked: it comes again");
  client.ack(2);
  await eventually("ack 2 stored", async () => (await clientInfo(node, "eve-phone"))[1].last_acked_seq === 2);
});

test("a second instance replaces the first for good, and its calls fail as stopped", async (t) => {
  const servers = new Servers();
  t.after(() => servers.cleanup());
  const node = await servers.duplex();
  const first = startClient(node.tcp, "dup-phone");
  await first.events.next("connected");
  const second = startClient(node.ws, "dup-phone");
  t.after(() => second.client.close());
  await second.events.next("connected");
  await first.events.next("replaced");
  assert.equal(first.client.state, "closed");
  const call = await first.client.upload({ service: "svc", path: "/x" }).catch((e) => e);
  assert.deepEqual([call.code, call.retry], ["client_stopped", false]);
});

test("an expiring token is refreshed in-band from the provider, without a reconnect", async (t) => {
  const servers = new Servers();
  t.after(() => servers.cleanup());
  const node = await servers.duplex();
  let asked = 0;
  const client = new Client({
    endpoints: [node.ws],
    clientId: "tia-phone",
    token: () => mint("tia", asked++ === 0 ? 2 : 3600),
  });
  const events = collect(client);
  client.start();
  t.after(() => client.close());
  await events.next("connected");
  await eventually("the SDK refreshed the token", () => asked >= 2, 15_000);
  await push(node, "tia-phone", "still here");
  assert.equal((await events.next("push")).seq, 1);
  assert.equal(events.all("disconnected").length, 0, "the same connection delivered");
  assert.equal(asked, 2);
});

test("the dispatcher's list gives each connector the transport it opens", async (t) => {
  const servers = new Servers();
  t.after(() => servers.cleanup());
  const node = await servers.duplex();
  const dispatchers = ["http://127.0.0.1:1/v1/nodes", `${node.pushBase}/v1/nodes`];
  const web = new Client({ dispatchers, clientId: "dia-web", token: () => mint("dia") });
  const webEvents = collect(web);
  web.start();
  t.after(() => web.close());
  assert.equal((await webEvents.next("connected")).endpoint, node.ws, "WebSocket only: the node's ws URL");
  const { client, events } = startClient([], "dia-node", { dispatchers });
  t.after(() => client.close());
  assert.equal((await events.next("connected")).endpoint, node.tcp, "Node: the private TCP protocol first");
});

test("registerPush stores the install's push token; a malformed one is refused with its code", async (t) => {
  const servers = new Servers();
  t.after(() => servers.cleanup());
  const node = await servers.duplex();
  const { client, events } = startClient(node.tcp, "pam-phone");
  t.after(() => client.close());
  await events.next("connected");
  await client.registerPush({ provider: "fcm", token: "dGVzdA:APA91bH-token_123", app: "com.example.app" });
  const response = await fetch(`${node.pushBase}/v1/clients/pam-phone/push-tokens`, {
    headers: { authorization: "Bearer duplex-dev-api-key" },
  });
  const listed = await response.json();
  assert.deepEqual(
    listed.tokens.map((t) => [t.provider, t.token, t.app]),
    [["fcm", "dGVzdA:APA91bH-token_123", "com.example.app"]],
  );
  await assert.rejects(client.registerPush({ provider: "apns", token: "not hex" }), (e) => {
    assert.ok(e instanceof DuplexError);
    assert.equal(e.code, "bad_push_token");
    assert.equal(e.retry, false);
    return true;
  });
  // The connection stays: a push still arrives.
  await push(node, "pam-phone", { n: 1 });
  assert.equal((await events.next("push")).seq, 1);
});

test("notified: a message the app got as an OS notification is acked, not handed over, when the socket brings it", async (t) => {
  const servers = new Servers();
  t.after(() => servers.cleanup());
  const node = await servers.duplex();
  // A connector that refuses while closed: holds the client off the node as long as the test needs.
  const inner = nodeConnector();
  let open = true;
  const connector = {
    schemes: inner.schemes,
    async open(endpoint, sink, signal) {
      if (!open) throw new Error("gate closed");
      return inner.open(endpoint, sink, signal);
    },
  };
  const { client, events } = startClient(node.tcp, "noa-phone", { connector });
  t.after(() => client.close());
  await events.next("connected");
  const first = (await push(node, "noa-phone", { n: 1 })).messages[0].message_id;
  assert.equal((await events.next("push")).msgId, first);
  assert.equal(client.notified(first), false, "the socket brought it first");

  open = false;
  await clientInfo(node, "noa-phone", "DELETE");
  await events.next("disconnected");
  const second = (await push(node, "noa-phone", { n: 2 })).messages[0].message_id;
  assert.equal(client.notified(second), true, "new to the app");
  assert.equal(client.notified(second), false, "a second notification is not");
  open = true;
  await events.next("connected");
  await push(node, "noa-phone", { n: 3 });
  assert.equal((await events.next("push")).seq, 3, "the notified message (seq 2) was not handed over");
  await eventually("the notified message acked", async () => (await clientInfo(node, "noa-phone"))[1].last_acked_seq === 3);
});
