// The example page (examples/chat) in headless Chromium (Debian's `chromium`, driven by
// playwright-core): it finds the node through the dispatcher, connects over WebSocket, shows a
// push sent with curl, and sends a request whose reply it shows.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, extname, join, normalize, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { chromium } from "playwright-core";

import { mint, Servers } from "./harness.mjs";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

/** Serves the example and the built SDK from the repository, nothing else. */
async function staticServer(servers) {
  const allowed = ["examples/", "sdk/js/dist/", "sdk/js/node_modules/@msgpack/msgpack/dist.esm/"];
  const types = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".map": "application/json" };
  const server = createServer((req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname)).replace(/^\/+/, "");
    const file = join(repo, path.endsWith("/") ? `${path}index.html` : path);
    if (!allowed.some((a) => path.startsWith(a)) || !existsSync(file)) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream" });
    res.end(readFileSync(file));
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  servers.closers.push(() => new Promise((r) => server.close(r)));
  return `http://127.0.0.1:${server.address().port}`;
}

test("the example page connects over WebSocket, shows a push sent with curl and a request's reply", async (t) => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install -y chromium (or set CHROMIUM)`);
  const servers = new Servers();
  t.after(() => servers.cleanup());
  const backend = await servers.backend();
  const node = await servers.duplex({
    config: `[upstream.services.chat]\nendpoints = [{ url = "${backend.url}", weight = 1 }]\npath_prefixes = ["/messages"]\n`,
  });
  const site = await staticServer(servers);
  // playwright-core starts it headless with a fresh profile; the flags keep it off the network.
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  t.after(() => browser.close());
  const page = await browser.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(String(e)));
  const query = new URLSearchParams({
    dispatcher: `${node.pushBase}/v1/nodes`,
    token: mint("wendy"),
    client: "wendy-browser",
    service: "chat",
    path: "/messages",
  });
  await page.goto(`${site}/examples/chat/?${query}`);
  await page.locator('#state[data-state="connected"]').waitFor({ timeout: 15_000 });
  assert.match(await page.locator("#node").textContent(), new RegExp(`via ${node.ws.replace(/\//g, "\\/")}`), "WebSocket, from the dispatcher");

  const curl = await promisify(execFile)("curl", [
    "-sS", "-X", "POST", `${node.pushBase}/v1/push`,
    "-H", "Authorization: Bearer duplex-dev-api-key",
    "-d", JSON.stringify({ client_ids: ["wendy-browser"], payload: { text: "hello from curl" } }),
  ]);
  assert.equal(JSON.parse(curl.stdout).messages[0].seq, 1, curl.stdout);
  await page.locator("#messages li.push", { hasText: "hello from curl" }).waitFor({ timeout: 10_000 });

  await page.fill("#text", "hi backend");
  await page.click("button[type=submit]");
  await page.locator("#messages li.reply", { hasText: "reply 200" }).waitFor({ timeout: 10_000 });
  assert.deepEqual(backend.paths, ["POST /messages"]);
  assert.deepEqual(problems, []);
});
