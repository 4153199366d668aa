/**
 * Where to connect: endpoint URLs, the dispatcher (`GET /v1/nodes`) that
 * lists access nodes with weights, and the choice of the next endpoint:
 * round robin (or weighted at random, when a dispatcher gave weights),
 * skipping endpoints that failed recently, so a reconnect goes to a healthy
 * node first instead of hammering a dead one. As in the Rust SDK's
 * `endpoints.rs` and `dispatch.rs`.
 */

export type Scheme = "tcp" | "tls" | "ws" | "wss";

export interface Endpoint {
  scheme: Scheme;
  /** As given: `tcp://host:port`, `tls://host:port`, `ws://host:port/path`, `wss://host:port/path`. */
  url: string;
  host: string;
  port: number;
}

/** Parses an endpoint URL; throws `TypeError` with the accepted forms. */
export function parseEndpoint(url: string): Endpoint {
  const usage = () => new TypeError(`${url}: use tcp://host:port, tls://host:port, ws://host:port/ or wss://host:port/`);
  const match = /^(tcp|tls|ws|wss):\/\/(\[[^\]]+\]|[^/:]+)(?::(\d+))?(\/.*)?$/.exec(url);
  if (!match) throw usage();
  const scheme = match[1] as Scheme;
  const host = (match[2] as string).replace(/^\[|\]$/g, "");
  const defaultPort = scheme === "ws" ? 80 : scheme === "wss" ? 443 : undefined;
  const port = match[3] === undefined ? defaultPort : Number(match[3]);
  if (port === undefined || !Number.isInteger(port) || port < 1 || port > 65535) throw usage();
  if ((scheme === "tcp" || scheme === "tls") && match[4] !== undefined) throw usage();
  return { scheme, url, host, port };
}

/** How long an endpoint that failed is skipped while others are available. */
export const FAILED_ENDPOINT_MEMORY_MS = 30_000;

const now = () => performance.now();

export class Chooser {
  private failedAt: (number | undefined)[];
  private next = 0;
  private readonly weights: number[];

  constructor(
    weights: number[],
    private readonly memoryMs = FAILED_ENDPOINT_MEMORY_MS,
  ) {
    this.weights = weights.length > 0 ? weights.map((w) => Math.max(1, w)) : [1];
    this.failedAt = this.weights.map(() => undefined);
  }

  /** The next endpoint in turn that did not fail within the memory; when all did, the oldest failure. */
  pick(): number {
    const n = this.weights.length;
    const t = now();
    const usable = (i: number) => {
      const at = this.failedAt[i];
      return at === undefined || t - at >= this.memoryMs;
    };
    let chosen: number | undefined;
    if (this.weights.every((w) => w === this.weights[0])) {
      for (let k = 0; k < n && chosen === undefined; k++) {
        const i = (this.next + k) % n;
        if (usable(i)) chosen = i;
      }
    } else {
      const candidates = [...this.weights.keys()].filter(usable);
      const total = candidates.reduce((sum, i) => sum + (this.weights[i] as number), 0);
      let ticket = Math.floor(Math.random() * total);
      for (const i of candidates) {
        const w = this.weights[i] as number;
        if (ticket < w) {
          chosen = i;
          break;
        }
        ticket -= w;
      }
    }
    if (chosen === undefined) {
      chosen = 0;
      for (let i = 1; i < n; i++) {
        if ((this.failedAt[i] ?? 0) < (this.failedAt[chosen] ?? 0)) chosen = i;
      }
    }
    this.next = (chosen + 1) % n;
    return chosen;
  }

  failed(index: number, at = now()): void {
    if (index < this.failedAt.length) this.failedAt[index] = at;
  }

  failedSince(index: number): number | undefined {
    return this.failedAt[index];
  }

  succeeded(index: number): void {
    if (index < this.failedAt.length) this.failedAt[index] = undefined;
  }
}

/** A node as `GET /v1/nodes` lists it (docs/API.md). */
interface ListedNode {
  tcp?: string | null;
  ws?: string | null;
  tls?: string | null;
  wss?: string | null;
  weight?: number;
}

/** Why no dispatcher gave a usable list: the last one's reason. */
export class DispatchError extends Error {
  override name = "DispatchError";
}

/**
 * Endpoints and their weights (1..=100) from the first dispatcher that
 * answers, in the first of `schemes` each node offers. A client that asks
 * for TLS schemes only is never given a plain endpoint.
 */
export async function fetchNodes(
  dispatchers: readonly string[],
  schemes: readonly Scheme[],
  timeoutMs = 3000,
): Promise<{ endpoint: Endpoint; weight: number }[]> {
  let last = "no dispatcher configured";
  for (const url of dispatchers) {
    // Not AbortSignal.timeout: React Native lacks it.
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), timeoutMs);
    try {
      const response = await fetch(url, { signal: abort.signal });
      if (!response.ok) {
        last = `${url}: HTTP ${response.status}`;
        continue;
      }
      const body = (await response.json()) as { nodes?: unknown };
      if (!Array.isArray(body.nodes)) {
        last = `${url}: no \`nodes\` list in the answer`;
        continue;
      }
      const nodes = body.nodes.flatMap((n: ListedNode) => {
        const endpoint = listedEndpoint(n, schemes);
        const weight = Math.min(100, Math.max(1, Math.floor(Number(n.weight) || 1)));
        return endpoint ? [{ endpoint, weight }] : [];
      });
      if (nodes.length > 0) return nodes;
      last = `${url}: no access node listed with ${schemes.join(" or ")}`;
    } catch (e) {
      last = `${url}: ${(e as Error).message}`;
    } finally {
      clearTimeout(timer);
    }
  }
  throw new DispatchError(`dispatch: ${last}`);
}

function listedEndpoint(n: ListedNode, schemes: readonly Scheme[]): Endpoint | undefined {
  for (const scheme of schemes) {
    const value = n[scheme];
    if (typeof value !== "string" || value === "") continue;
    const url = scheme === "tcp" || scheme === "tls" ? `${scheme}://${value}` : value;
    try {
      const endpoint = parseEndpoint(url);
      if (endpoint.scheme === scheme) return endpoint;
    } catch {
      // A node that lists a malformed address is skipped, not fatal.
    }
  }
  return undefined;
}
