// The SDK's pure parts: the wire format against docs/PROTOCOL.md, acks, backoff, endpoints.

import assert from "node:assert/strict";
import { test } from "node:test";

import { decode as decodeMsgpack, encode } from "@msgpack/msgpack";

import { backoffDelay, decodeFrame, encodeFrame, LengthPrefixDecoder, parseEndpoint, ProtocolError } from "../dist/index.js";
import { Acks } from "../dist/acks.js";
import { Chooser } from "../dist/endpoints.js";
import { REMEMBERED, Seen } from "../dist/notified.js";

test("a ping encodes as PROTOCOL.md's example bytes", () => {
  const body = encodeFrame({ type: "ping", id: 7 });
  const expected = [0x82, 0xa4, ...Buffer.from("type"), 0xa4, ...Buffer.from("ping"), 0xa2, ...Buffer.from("id"), 0x07];
  assert.deepEqual([...body], expected);
});

test("frames use the wire's snake_case names and bin for bytes", () => {
  const body = encodeFrame({ type: "request", id: 2 ** 40, service: "orders", path: "/o/1", body: "hi", timeoutMs: 5 });
  const decoded = decodeRaw(body);
  assert.equal(decoded.type, "request");
  assert.equal(decoded.id, 2 ** 40);
  assert.equal(decoded.timeout_ms, 5);
  assert.ok(decoded.body instanceof Uint8Array, "bytes travel as MessagePack bin");
  assert.equal(new TextDecoder().decode(decoded.body), "hi");
  assert.equal("method" in decoded, false, "absent optional fields are left out");
  const connect = decodeRaw(encodeFrame({ type: "connect", id: 1, token: "t", clientId: "c", lastSeq: 9 }));
  assert.deepEqual(connect, { type: "connect", id: 1, version: 1, token: "t", client_id: "c", last_seq: 9 });
});

test("server frames decode with defaults, and wrong field types are protocol errors", () => {
  const push = decodeFrame(encode({ type: "push", seq: 3, msg_id: "m" }));
  assert.deepEqual(push, { type: "push", seq: 3, msgId: "m", headers: {}, payload: new Uint8Array(), ackNow: false });
  const error = decodeFrame(encode({ type: "error", code: "rejected", message: "no", retry: false, id: null }));
  assert.deepEqual(error, { type: "error", code: "rejected", message: "no", retry: false, close: false });
  assert.equal(decodeFrame(encode({ type: "from_the_future", x: 1 })), undefined, "unknown types are skipped");
  assert.throws(() => decodeFrame(encode({ type: "push", seq: "3", msg_id: "m" })), ProtocolError);
  assert.throws(() => decodeFrame(encode({ type: "reply", id: 1, status: 200, headers: { a: 1 } })), ProtocolError);
  assert.throws(() => decodeFrame(encode([1, 2])), ProtocolError);
  assert.throws(() => decodeFrame(new Uint8Array([0xc1])), ProtocolError);
  assert.throws(() => decodeFrame(encode({ type: 7 })), ProtocolError);
});

test("the TCP decoder splits a stream at any byte and refuses an oversized prefix before buffering", () => {
  const bodies = [encodeFrame({ type: "ping", id: 1 }), encodeFrame({ type: "ack", id: 5, seq: 5 })];
  const stream = Buffer.concat(bodies.map((b) => {
    const prefix = Buffer.alloc(4);
    prefix.writeUInt32BE(b.length);
    return Buffer.concat([prefix, b]);
  }));
  const decoder = new LengthPrefixDecoder();
  const out = [];
  for (const byte of stream) {
    decoder.feed(Uint8Array.of(byte));
    for (let b = decoder.next(); b; b = decoder.next()) out.push([...b]);
  }
  assert.deepEqual(out, bodies.map((b) => [...b]));
  const small = new LengthPrefixDecoder(100);
  small.feed(Uint8Array.of(0, 0, 0, 101));
  assert.throws(() => small.next(), /over the 100-byte limit/);
});

test("automatic acks follow delivery; explicit acks never pass an unprocessed push", () => {
  const auto = new Acks(0, true);
  assert.equal(auto.pushDelivered(1), 1);
  assert.equal(auto.passed(2), 2);
  assert.ok(auto.isDuplicate(2));

  const explicit = new Acks(0, false);
  assert.equal(explicit.pushDelivered(1), undefined);
  assert.equal(explicit.passed(2), undefined, "a reply after push 1 waits for it");
  assert.equal(explicit.pushDelivered(3), undefined);
  assert.equal(explicit.appAck(1), 2);
  assert.equal(explicit.appAck(3), 3);
  assert.equal(explicit.acked, 3);
});

test("unacked pushes come again after a reconnect and acked ones do not", () => {
  const a = new Acks(0, false);
  a.pushDelivered(1);
  a.pushDelivered(2);
  assert.equal(a.appAck(1), 1);
  a.onConnect();
  assert.ok(a.isDuplicate(1));
  assert.ok(!a.isDuplicate(2), "push 2 was never acked: it is handed over again");
  assert.equal(a.pushDelivered(2), undefined);
  assert.equal(a.appAck(2), 2);
});

test("backoff grows exponentially with full jitter up to the cap", () => {
  assert.equal(backoffDelay(0, 100, 5000, 0.5), 50);
  assert.equal(backoffDelay(3, 100, 5000, 0.5), 400);
  assert.equal(backoffDelay(30, 100, 5000, 1), 5000);
  assert.equal(backoffDelay(5, 100, 5000, 0), 0);
  for (let attempt = 0; attempt < 10; attempt++) {
    const d = backoffDelay(attempt, 100, 5000);
    assert.ok(d >= 0 && d <= Math.min(5000, 100 * 2 ** attempt));
  }
});

test("endpoints parse like the Rust SDK's", () => {
  assert.deepEqual(parseEndpoint("tcp://127.0.0.1:7070"), { scheme: "tcp", url: "tcp://127.0.0.1:7070", host: "127.0.0.1", port: 7070 });
  assert.equal(parseEndpoint("tls://[::1]:7443").host, "::1");
  assert.equal(parseEndpoint("wss://gw.example.com/").port, 443);
  assert.equal(parseEndpoint("ws://h:1/").port, 1);
  for (const bad of ["http://x", "tcp://h", "tcp://h:1/path", "tcp://h:70000", "ws//h"]) {
    assert.throws(() => parseEndpoint(bad), TypeError, bad);
  }
});

test("recently failed endpoints are skipped until forgiven", () => {
  const c = new Chooser([1, 1, 1], 30_000);
  assert.deepEqual([c.pick(), c.pick(), c.pick(), c.pick()], [0, 1, 2, 0]);
  c.failed(1);
  assert.deepEqual([c.pick(), c.pick(), c.pick()], [2, 0, 2], "1 is skipped");
  const t = performance.now();
  c.failed(2, t + 1);
  c.failed(0, t + 2);
  assert.equal(c.pick(), 1, "all failed: the oldest failure first");
  c.succeeded(0);
  assert.equal(c.pick(), 0, "a success clears the failure");
  c.failed(1, t - 31_000);
  assert.equal(c.pick(), 1, "forgiven after the memory");
});

function decodeRaw(body) {
  return Object.fromEntries(Object.entries(decodeMsgpack(body)));
}

test("a call's own type and id win over keys the caller's object carries", async () => {
  const { Client } = await import("../dist/index.js");
  // An in-memory server: answers connect and uploads, records what the client sent.
  const sent = [];
  const connector = {
    schemes: ["ws"],
    async open(_endpoint, sink) {
      const answer = (frame) => queueMicrotask(() => sink.frame(encode(frame)));
      return {
        send(body) {
          const frame = decodeMsgpack(body);
          sent.push(frame);
          if (frame.type === "connect") {
            answer({ type: "connected", id: 1, session_id: "n|1", node_id: "n", heartbeat_ms: 30_000,
              reconnect_min_ms: 10, reconnect_max_ms: 20, max_frame_bytes: 65_536 });
          } else if (frame.type === "upload") {
            answer({ type: "upload_ack", id: frame.id, status: 200 });
          }
        },
        close() {},
      };
    },
  };
  const client = new Client({ endpoints: ["ws://127.0.0.1:1/"], clientId: "c", token: () => "t", connector });
  client.start();
  const sneaky = { service: "s", path: "/p", id: 7, type: "ack" };
  const ack = await client.upload(sneaky);
  const upload = sent.find((f) => f.type === "upload");
  assert.ok(upload, JSON.stringify(sent));
  assert.notEqual(upload.id, 7);
  assert.equal(ack.id, upload.id);
  assert.equal(sent.filter((f) => f.type === "ack").length, 0);
  await client.close();
});

test("notified: whichever copy of a message comes first is the app's; only the latest ids are remembered", () => {
  const seen = new Seen();
  assert.equal(seen.bySocket("a"), true, "first by socket: handed over");
  assert.equal(seen.byNotification("a"), false, "then its notification is not new");
  assert.equal(seen.byNotification("b"), true, "first by notification: new");
  assert.equal(seen.bySocket("b"), false, "then the socket's copy is dropped");
  assert.equal(seen.byNotification("b"), false);
  const bounded = new Seen();
  bounded.byNotification("old");
  for (let i = 0; i < REMEMBERED; i++) bounded.bySocket(String(i));
  assert.equal(bounded.size, REMEMBERED);
  assert.equal(bounded.bySocket("old"), true, "forgotten: handed over");
});
