/**
 * Node only: the private TCP protocol (`tcp://`, and `tls://` over
 * `node:tls`), plus WebSocket for `ws://` and `wss://`.
 *
 * ```ts
 * import { Client } from "@duplex/client";
 * import { nodeConnector } from "@duplex/client/node";
 * const client = new Client({ endpoints: ["tcp://127.0.0.1:7070"], connector: nodeConnector(), ... });
 * ```
 */

import * as net from "node:net";
import * as tls from "node:tls";

import type { Endpoint } from "./endpoints.js";
import { LengthPrefixDecoder, ProtocolError, withLengthPrefix } from "./frames.js";
import {
  type Connector,
  type Transport,
  type TransportSink,
  type WebSocketConstructor,
  webSocketConnector,
} from "./transport.js";

/** How long a socket the client closed may take to flush what it wrote. */
const CLOSE_LINGER_MS = 2000;

export interface NodeConnectorOptions {
  /** CAs that `tls://` endpoints are checked against (PEM), instead of Node's default roots. */
  ca?: string | Buffer | (string | Buffer)[];
  /** A client certificate and key (PEM) for servers that ask for one (mTLS). */
  cert?: string | Buffer;
  key?: string | Buffer;
  /** For `ws://` and `wss://` (default: the global `WebSocket`). */
  WebSocket?: WebSocketConstructor;
}

export function nodeConnector(options: NodeConnectorOptions = {}): Connector {
  const ws = webSocketConnector(options.WebSocket);
  // The last TLS session per host: a reconnect resumes it (a cheaper handshake).
  const sessions = new Map<string, Buffer>();
  return {
    schemes: ["tcp", "ws", "tls", "wss"],
    open(endpoint, sink, signal) {
      switch (endpoint.scheme) {
        case "ws":
        case "wss":
          return ws.open(endpoint, sink, signal);
        case "tcp":
          return openSocket(net.connect({ host: endpoint.host, port: endpoint.port }), "connect", endpoint, sink, signal);
        case "tls": {
          const key = `${endpoint.host}:${endpoint.port}`;
          const socket = tls.connect({
            host: endpoint.host,
            port: endpoint.port,
            servername: net.isIP(endpoint.host) ? undefined : endpoint.host,
            ca: options.ca,
            cert: options.cert,
            key: options.key,
            session: sessions.get(key),
          });
          socket.on("session", (session: Buffer) => sessions.set(key, session));
          return openSocket(socket, "secureConnect", endpoint, sink, signal);
        }
      }
    },
  };
}

function openSocket(
  socket: net.Socket,
  ready: "connect" | "secureConnect",
  endpoint: Endpoint,
  sink: TransportSink,
  signal: AbortSignal,
): Promise<Transport> {
  socket.setNoDelay(true);
  const decoder = new LengthPrefixDecoder();
  return new Promise((resolve, reject) => {
    let open = false;
    let ended = false;
    const end = (reason: string, graceful = false) => {
      if (ended) return;
      ended = true;
      signal.removeEventListener("abort", abort);
      if (graceful) {
        // What was written (a held ack) still goes out; the server then closes.
        socket.end();
        setTimeout(() => socket.destroy(), CLOSE_LINGER_MS).unref();
      } else {
        socket.destroy();
      }
      if (open) sink.closed(reason);
      else reject(new Error(`${endpoint.url}: ${reason}`));
    };
    const abort = () => end("connect timed out");
    if (signal.aborted) return abort();
    signal.addEventListener("abort", abort, { once: true });
    socket.once(ready, () => {
      signal.removeEventListener("abort", abort);
      open = true;
      resolve({
        send: (body) => {
          if (!ended) socket.write(withLengthPrefix(body));
        },
        close: () => end("closed by the client", true),
      });
    });
    socket.on("data", (chunk: Buffer) => {
      decoder.feed(chunk);
      try {
        for (let body = decoder.next(); body !== undefined && !ended; body = decoder.next()) sink.frame(body);
      } catch (e) {
        end(e instanceof ProtocolError ? e.message : String(e));
      }
    });
    socket.on("error", (e) => end(e.message));
    socket.on("end", () => end("server closed the connection"));
    socket.on("close", () => end("connection closed"));
  });
}
