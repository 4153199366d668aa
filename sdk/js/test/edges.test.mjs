// Over TLS with Node's `tls`, gaps, and reconnectNow, against a real `duplex`.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

import { nodeConnector } from "../dist/node.js";
import { clientInfo, DUPLEX_BIN, eventually, push, Servers, startClient } from "./harness.mjs";

test("over tls:// with a private CA; without it the certificate is refused and nothing connects", async (t) => {
  const servers = new Servers();
  t.after(() => servers.cleanup());
  const dir = mkdtempSync(join(tmpdir(), "duplex-js-tls-"));
  const made = spawnSync(DUPLEX_BIN, ["cert", "dev", "--dir", dir], { encoding: "utf8" });
  assert.equal(made.status, 0, made.stderr);
  const node = await servers.duplex({
    env: {
      DUPLEX_ACCESS__TLS_LISTEN: "127.0.0.1:0",
      DUPLEX_ACCESS__TLS__CERT_FILE: join(dir, "cert.pem"),
      DUPLEX_ACCESS__TLS__KEY_FILE: join(dir, "key.pem"),
    },
  });
  assert.ok(node.tls, "the node printed its TLS listener");
  const endpoint = node.tls.replace("127.0.0.1", "localhost");
  const trusted = startClient(endpoint, "tess-phone", { connector: nodeConnector({ ca: readFileSync(join(dir, "ca.pem")) }) });
  t.after(() => trusted.client.close());
  assert.equal((await trusted.events.next("connected")).endpoint, endpoint);
  await push(node, "tess-phone", "over tls");
  assert.equal(new TextDecoder().decode((await trusted.events.next("push")).payload), '"over tls"');

  const untrusted = startClient(endpoint, "tess-laptop");
  t.after(() => untrusted.client.close());
  assert.match((await untrusted.events.next("disconnected")).reason, /self[- ]signed|unable to verify|certificate/i);
  assert.equal(untrusted.events.all("connected").length, 0);
  assert.equal((await clientInfo(node, "tess-laptop"))[1].online, false);
});

test("a push that expired while the client was away arrives as a gap, and the next push after it", async (t) => {
  const servers = new Servers();
  t.after(() => servers.cleanup());
  const node = await servers.duplex();
  const short = await push(node, "gil-phone", "short", { ttl: 1 });
  await push(node, "gil-phone", "long");
  const id = short.messages[0].message_id;
  await eventually("the short push expired", async () => {
    const response = await fetch(`${node.pushBase}/v1/messages/${id}`, { headers: { authorization: "Bearer duplex-dev-api-key" } });
    return (await response.json()).state === "expired";
  });
  const { client, events } = startClient(node.ws, "gil-phone");
  t.after(() => client.close());
  assert.deepEqual(await events.next("gap"), { from: 1, to: 1, reason: "expired" });
  assert.equal((await events.next("push")).seq, 2);
  await eventually("the gap and the push acked", async () => (await clientInfo(node, "gil-phone"))[1].last_acked_seq === 2);
});

test("reconnectNow() ends a long backoff at once", async (t) => {
  const servers = new Servers();
  t.after(() => servers.cleanup());
  const node = await servers.duplex({ env: { DUPLEX_ACCESS__RECONNECT_MIN_MS: "60000", DUPLEX_ACCESS__RECONNECT_MAX_MS: "60000" } });
  const { client, events } = startClient(node.tcp, "ned-phone", { backoffMinMs: 60_000, backoffMaxMs: 60_000 });
  t.after(() => client.close());
  await events.next("connected");
  // Full jitter picks the delay at random: pinned near its 60 s cap, so only reconnectNow() can end it in time.
  const random = Math.random;
  Math.random = () => 0.999;
  t.after(() => (Math.random = random));
  assert.equal((await clientInfo(node, "ned-phone", "DELETE"))[0], 200);
  await events.next("disconnected");
  assert.equal(client.state, "waiting");
  client.reconnectNow();
  await events.next("connected", 5000);
});
