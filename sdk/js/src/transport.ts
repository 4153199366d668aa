/**
 * Transports move frame bodies; the client never sees sockets. A `Connector`
 * opens one connection to an endpoint; the default speaks WebSocket (`ws://`,
 * `wss://`) with the platform's `WebSocket` (browsers, React Native, Node 22,
 * Node 20 with `--experimental-websocket`). `@duplex/client/node` adds the
 * private TCP protocol (`tcp://`, `tls://`).
 */

import type { Endpoint, Scheme } from "./endpoints.js";

/** What a transport reports to the client. */
export interface TransportSink {
  /** One whole frame body (no length prefix). */
  frame(body: Uint8Array): void;
  /** The connection ended; called once, and never for a connection that did not open. */
  closed(reason: string): void;
}

/** One open connection. */
export interface Transport {
  /** Sends one frame body; the transport adds its framing. */
  send(body: Uint8Array): void;
  /** Closes; `closed` follows, at most once. */
  close(): void;
}

export interface Connector {
  /** The schemes it opens, in the order a dispatcher's answer is read (plain, then TLS ones). */
  readonly schemes: readonly Scheme[];
  /** Opens a connection; rejects when it cannot, or when `signal` aborts first (the connect timeout). */
  open(endpoint: Endpoint, sink: TransportSink, signal: AbortSignal): Promise<Transport>;
}

/** The subset of the standard `WebSocket` the client uses. */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onclose: ((ev: { code?: number; reason?: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

/**
 * Opens `ws://` and `wss://` endpoints with `WebSocket` (default: the
 * global one). Each binary message is one frame body; text messages carry
 * no frame and are skipped. `wss://` trusts what the platform trusts (in
 * Node, add a private CA with `NODE_EXTRA_CA_CERTS`).
 */
export function webSocketConnector(WebSocketImpl?: WebSocketConstructor): Connector {
  return {
    schemes: ["ws", "wss"],
    open(endpoint, sink, signal) {
      const Ctor = WebSocketImpl ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
      if (!Ctor) {
        return Promise.reject(
          new Error("no WebSocket here: on Node 20 run with --experimental-websocket, or pass one (e.g. from `ws`)"),
        );
      }
      if (endpoint.scheme !== "ws" && endpoint.scheme !== "wss") {
        return Promise.reject(new Error(`${endpoint.url}: this connector opens ws:// and wss:// only`));
      }
      return openWebSocket(new Ctor(endpoint.url), endpoint.url, sink, signal);
    },
  };
}

function openWebSocket(ws: WebSocketLike, url: string, sink: TransportSink, signal: AbortSignal): Promise<Transport> {
  ws.binaryType = "arraybuffer";
  return new Promise((resolve, reject) => {
    let open = false;
    let ended = false;
    const end = (reason: string) => {
      if (ended) return;
      ended = true;
      if (open) sink.closed(reason);
      else reject(new Error(`${url}: ${reason}`));
    };
    const abort = () => {
      end("connect timed out");
      ws.close();
    };
    if (signal.aborted) return abort();
    signal.addEventListener("abort", abort, { once: true });
    ws.onopen = () => {
      signal.removeEventListener("abort", abort);
      if (ended) return;
      open = true;
      resolve({
        send: (body) => {
          if (!ended) ws.send(body);
        },
        close: () => {
          ws.close(1000);
          end("closed by the client");
        },
      });
    };
    ws.onmessage = (ev) => {
      if (ended) return;
      if (ev.data instanceof ArrayBuffer) sink.frame(new Uint8Array(ev.data));
      else if (ArrayBuffer.isView(ev.data)) {
        sink.frame(new Uint8Array(ev.data.buffer, ev.data.byteOffset, ev.data.byteLength));
      }
    };
    ws.onerror = () => end("WebSocket error");
    ws.onclose = (ev) => end(`closed by the server (WebSocket code ${ev.code ?? "none"}${ev.reason ? `: ${ev.reason}` : ""})`);
  });
}
