// Real servers for the SDK's tests: the `duplex` binary (built by cargo), a private
// redis-server and a fake backend, all on free loopback ports, stopped after each test.

import { spawn, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtempSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { createServer as createNetServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

import { Client } from "../dist/index.js";
import { nodeConnector } from "../dist/node.js";

const here = dirname(fileURLToPath(import.meta.url));

/** The server under test: `TEST_DUPLEX_BIN`, else the workspace's debug build. */
export const DUPLEX_BIN = process.env.TEST_DUPLEX_BIN ?? resolve(here, "../../../target/debug/duplex");

function requireBinary() {
  if (!existsSync(DUPLEX_BIN)) {
    throw new Error(`${DUPLEX_BIN} is missing: run \`cargo build --bin duplex\` in the repository first (or set TEST_DUPLEX_BIN)`);
  }
}

/** Processes started by a test, killed by `cleanup` (register it with `t.after`). */
export class Servers {
  children = [];
  closers = [];

  /** Starts `duplex` on ephemeral ports; the addresses it printed. */
  async duplex({ args = [], env = {}, config } = {}) {
    requireBinary();
    const extra = [...args];
    if (config !== undefined) {
      const dir = mkdtempSync(join(tmpdir(), "duplex-js-"));
      const path = join(dir, "duplex.toml");
      writeFileSync(path, config);
      extra.push("--config", path);
    }
    const child = spawn(
      DUPLEX_BIN,
      [
        "--tcp-listen", "127.0.0.1:0",
        "--ws-listen", "127.0.0.1:0",
        "--http-listen", "127.0.0.1:0",
        "--admin-listen", "127.0.0.1:0",
        ...extra,
      ],
      { env: { ...process.env, RUST_LOG: "warn", ...env }, stdio: ["ignore", "pipe", process.env.TEST_DUPLEX_LOG ? "inherit" : "ignore"] },
    );
    this.children.push(child);
    const printed = {};
    const labels = [
      ["client tcp:", "tcp"],
      ["client websocket:", "ws"],
      ["client tls:", "tls"],
      ["push API:", "push"],
      ["admin:", "admin"],
    ];
    const lines = createInterface({ input: child.stdout });
    const exited = new Promise((_, reject) =>
      child.once("exit", (code) => reject(new Error(`duplex exited (${code}) before printing its addresses`))),
    );
    exited.catch(() => {});
    const ready = (async () => {
      for await (const line of lines) {
        for (const [prefix, label] of labels) {
          const at = line.trim();
          if (at.startsWith(prefix)) printed[label] = at.slice(prefix.length).trim();
        }
        if (printed.admin) return;
      }
    })();
    await Promise.race([ready, exited, deadline(20_000, "duplex printed no addresses within 20 s")]);
    if (!printed.admin || !printed.push) {
      throw new Error(`duplex ended its output before printing its addresses (set TEST_DUPLEX_LOG=1 to see why)`);
    }
    // Keep reading stdout so the server never writes into a full pipe.
    lines.on("line", () => {});
    const pushBase = printed.push.replace(/\/v1\/push$/, "");
    return {
      child,
      pid: child.pid,
      tcp: `tcp://${printed.tcp}`,
      ws: printed.ws,
      /** `tls://127.0.0.1:port`, when a TLS listener is configured. */
      tls: printed.tls,
      pushBase,
      signal: (sig) => process.kill(child.pid, sig),
      exited: () => new Promise((r) => (child.exitCode !== null ? r(child.exitCode) : child.once("exit", r))),
    };
  }

  /** A private redis-server that keeps nothing on disk. */
  async redis() {
    for (let tries = 0; tries < 5; tries++) {
      const port = await freePort();
      const child = spawn("redis-server", ["--bind", "127.0.0.1", "--port", String(port), "--save", "", "--appendonly", "no"], {
        stdio: "ignore",
      });
      this.children.push(child);
      if (await waitForPort(port, 5000)) return `redis://127.0.0.1:${port}/`;
      child.kill("SIGKILL");
    }
    throw new Error("redis-server did not start (is it installed?)");
  }

  /** A backend service: counts calls; `slowMs` delays its answers. */
  async backend() {
    const state = { count: 0, slowMs: 0, paths: [] };
    const server = createServer((req, res) => {
      state.count++;
      state.paths.push(`${req.method} ${req.url}`);
      req.resume();
      req.on("end", () =>
        setTimeout(() => {
          res.writeHead(200, { "content-type": "application/json" });
          res.end(JSON.stringify({ path: req.url, slow: state.slowMs > 0 }));
        }, state.slowMs),
      );
    });
    await new Promise((r) => server.listen(0, "127.0.0.1", r));
    this.closers.push(() => new Promise((r) => server.close(r)));
    state.url = `http://127.0.0.1:${server.address().port}`;
    return state;
  }

  async cleanup() {
    for (const child of this.children) {
      if (child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(child.pid, "SIGCONT");
        } catch {}
        child.kill("SIGKILL");
      }
    }
    for (const close of this.closers) await close();
  }
}

/** A development token for `sub` (signed with the built-in development secret). */
export function mint(sub, ttlSeconds = 3600) {
  requireBinary();
  const out = spawnSync(DUPLEX_BIN, ["token", "--sub", sub, "--ttl", String(ttlSeconds)], { encoding: "utf8" });
  if (out.status !== 0) throw new Error(`duplex token: ${out.stderr}`);
  return out.stdout.trim();
}

const API_KEY = "duplex-dev-api-key";

/** POST /v1/push; the JSON answer (asserts 202). */
export async function push(node, clientId, payload, extra = {}) {
  const response = await fetch(`${node.pushBase}/v1/push`, {
    method: "POST",
    headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
    body: JSON.stringify({ client_ids: [clientId], payload, ...extra }),
  });
  const body = await response.json();
  if (response.status !== 202) throw new Error(`push answered ${response.status}: ${JSON.stringify(body)}`);
  return body;
}

/** GET or DELETE /v1/clients/{id}: [status, body]. */
export async function clientInfo(node, clientId, method = "GET") {
  const response = await fetch(`${node.pushBase}/v1/clients/${clientId}`, {
    method,
    headers: { authorization: `Bearer ${API_KEY}` },
  });
  return [response.status, await response.json()];
}

/**
 * Starts a client over the Node connector with short backoffs, its token minted for the user
 * named by the client id's first part (`sam-phone` -> `sam`); its events collected.
 */
export function startClient(endpoints, clientId, extra = {}) {
  const client = new Client({
    endpoints: [endpoints ?? []].flat(),
    clientId,
    token: () => mint(clientId.split("-")[0]),
    connector: nodeConnector(),
    backoffMinMs: 10,
    backoffMaxMs: 50,
    ...extra,
  });
  const events = collect(client);
  client.start();
  return { client, events };
}

/** Polls `check` every 20 ms until it holds, at most `ms`. */
export async function eventually(what, check, ms = 10_000) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (await check()) return;
    await sleep(20);
  }
  throw new Error(`not within ${ms} ms: ${what}`);
}

/** Every event of a client, by type, taken in order with a deadline. */
export function collect(client) {
  const queues = new Map();
  const waiters = new Map();
  const types = ["connecting", "connected", "disconnected", "push", "gap", "kicked", "replaced", "state"];
  for (const type of types) {
    queues.set(type, []);
    waiters.set(type, []);
    client.on(type, (event) => {
      const waiting = waiters.get(type).shift();
      if (waiting) waiting(event);
      else queues.get(type).push(event);
    });
  }
  return {
    all: (type) => queues.get(type),
    /** The next event of `type`, within `ms`. */
    next(type, ms = 10_000) {
      const queued = queues.get(type);
      if (queued.length > 0) return Promise.resolve(queued.shift());
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          const list = waiters.get(type);
          list.splice(list.indexOf(done), 1);
          reject(new Error(`no \`${type}\` event within ${ms} ms`));
        }, ms);
        const done = (event) => {
          clearTimeout(timer);
          resolve(event);
        };
        waiters.get(type).push(done);
      });
    },
  };
}

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

function deadline(ms, message) {
  return new Promise((_, reject) => setTimeout(() => reject(new Error(message)), ms).unref());
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = createNetServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function waitForPort(port, ms) {
  const { connect } = await import("node:net");
  const until = Date.now() + ms;
  while (Date.now() < until) {
    const ok = await new Promise((r) => {
      const s = connect(port, "127.0.0.1");
      s.once("connect", () => {
        s.destroy();
        r(true);
      });
      s.once("error", () => r(false));
    });
    if (ok) return true;
    await sleep(20);
  }
  return false;
}
