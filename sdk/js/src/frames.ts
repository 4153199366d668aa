/**
 * The wire frames of docs/PROTOCOL.md as TypeScript values, and their
 * MessagePack encoding. No I/O here: transports move the bytes.
 *
 * Field names are camelCase in TypeScript and snake_case on the wire; the
 * encoder and decoder translate. A server frame with a field of the wrong
 * type is a `ProtocolError` (the connection is then dropped and resumed, as
 * the Rust SDK does); an unknown frame type from a newer server is skipped.
 */

import { Decoder, Encoder } from "@msgpack/msgpack";

export const PROTOCOL_VERSION = 1;

/** The largest body the client accepts: whatever a server may legitimately send. */
export const MAX_INCOMING_FRAME_BYTES = 16 * 1024 * 1024;

export type Headers = Record<string, string>;

/** A message pushed by a backend. `seq` 0: qos 0, never stored, needs no ack. */
export interface Push {
  seq: number;
  msgId: string;
  headers: Headers;
  payload: Uint8Array;
  /** A backend call waits for this ack: it is sent at once instead of held. */
  ackNow: boolean;
}

/** Pushes `from..=to` were lost (expired or dropped) and will never arrive. */
export interface Gap {
  from: number;
  to: number;
  reason: string;
}

export interface UploadAck {
  id: number;
  /** The backend's HTTP status, or 202 when spooled. */
  status: number;
  spooled: boolean;
}

export interface Reply {
  id: number;
  status: number;
  headers: Headers;
  body: Uint8Array;
  /** Non-zero when the reply was stored for the client (it is acked like a push). */
  seq: number;
}

export interface Connected {
  id: number;
  sessionId: string;
  nodeId: string;
  heartbeatMs: number;
  reconnectMinMs: number;
  reconnectMaxMs: number;
  maxFrameBytes: number;
  /** 0 from older servers: the heartbeat is the deadline then. */
  pongDeadlineMs: number;
  /** Unix seconds; 0 when the server does not say. */
  tokenExpiresAt: number;
}

export interface ErrorFrame {
  id?: number;
  code: string;
  message: string;
  retry: boolean;
  close: boolean;
}

export type ServerFrame =
  | ({ type: "connected" } & Connected)
  | { type: "pong"; id: number }
  | ({ type: "error" } & ErrorFrame)
  | { type: "refreshed"; id: number; tokenExpiresAt: number }
  | { type: "push_registered"; id: number }
  | ({ type: "upload_ack" } & UploadAck)
  | ({ type: "reply" } & Reply)
  | ({ type: "push" } & Push)
  | ({ type: "gap" } & Gap)
  | { type: "kicked"; reason: string; message: string }
  | { type: "go_away"; reconnectAfterMs: number; endpoints: string[] };

/** What the application sends to a backend service (`Client.upload`). */
export interface Upload {
  service: string;
  path: string;
  headers?: Headers;
  body?: Uint8Array | string;
}

/** A call whose answer comes back as a `reply` (`Client.request`). */
export interface Request extends Upload {
  /** Default "POST". */
  method?: string;
  /** Overall deadline; 0 or absent: the service's configured one. */
  timeoutMs?: number;
}

export type ClientFrame =
  | { type: "connect"; id: number; token: string; clientId: string; lastSeq: number }
  | { type: "ping"; id: number }
  | { type: "ack"; id: number; seq: number }
  | { type: "refresh"; id: number; token: string }
  | ({ type: "upload"; id: number } & Upload)
  | ({ type: "request"; id: number } & Request)
  | ({ type: "register_push"; id: number } & PushTokenRegistration);

/** One of this install's OS push tokens, for the push fallback (`Client.registerPush`). */
export interface PushTokenRegistration {
  /** "apns", "fcm" or "webpush". */
  provider: string;
  /** APNs device token (hex), FCM registration token, or the Web Push subscription as JSON text. */
  token: string;
  /** APNs topic (bundle id), FCM app or Web Push site. */
  app?: string;
}

/** A server frame that breaks the protocol. */
export class ProtocolError extends Error {
  override name = "ProtocolError";
}

const encoder = new Encoder({ ignoreUndefined: true });
const utf8 = new TextEncoder();

function bytes(body: Uint8Array | string | undefined): Uint8Array | undefined {
  return typeof body === "string" ? utf8.encode(body) : body;
}

/** One frame as a MessagePack body (no length prefix). */
export function encodeFrame(frame: ClientFrame): Uint8Array {
  switch (frame.type) {
    case "connect":
      return encoder.encode({
        type: "connect",
        id: frame.id,
        version: PROTOCOL_VERSION,
        token: frame.token,
        client_id: frame.clientId,
        last_seq: frame.lastSeq,
      });
    case "ping":
    case "ack":
    case "refresh":
      return encoder.encode(frame);
    case "register_push":
      return encoder.encode({
        type: "register_push",
        id: frame.id,
        provider: frame.provider,
        token: frame.token,
        ...(frame.app === undefined ? {} : { app: frame.app }),
      });
    case "upload":
      return encoder.encode({
        type: "upload",
        id: frame.id,
        service: frame.service,
        path: frame.path,
        headers: frame.headers,
        body: bytes(frame.body),
      });
    case "request":
      return encoder.encode({
        type: "request",
        id: frame.id,
        service: frame.service,
        method: frame.method,
        path: frame.path,
        headers: frame.headers,
        body: bytes(frame.body),
        timeout_ms: frame.timeoutMs,
      });
  }
}

/** A body with its 4-byte big-endian length prefix, for the TCP transport. */
export function withLengthPrefix(body: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + body.length);
  new DataView(out.buffer).setUint32(0, body.length);
  out.set(body, 4);
  return out;
}

const decoder = new Decoder({
  maxStrLength: MAX_INCOMING_FRAME_BYTES,
  maxBinLength: MAX_INCOMING_FRAME_BYTES,
  maxArrayLength: 65_536,
  maxMapLength: 65_536,
  maxExtLength: 0,
});

type Fields = Record<string, unknown>;

function fail(type: string, key: string, what: string): never {
  throw new ProtocolError(`${type}.${key}: expected ${what}`);
}

function uint(o: Fields, type: string, key: string, fallback?: number): number {
  const v = o[key];
  if (v === undefined && fallback !== undefined) return fallback;
  if (typeof v === "number" && Number.isInteger(v) && v >= 0) return v;
  if (typeof v === "bigint" && v >= 0n) return Number(v);
  return fail(type, key, "an unsigned integer");
}

function str(o: Fields, type: string, key: string): string {
  const v = o[key];
  return typeof v === "string" ? v : fail(type, key, "a string");
}

function bool(o: Fields, type: string, key: string): boolean {
  const v = o[key];
  if (v === undefined) return false;
  return typeof v === "boolean" ? v : fail(type, key, "a boolean");
}

function bin(o: Fields, type: string, key: string): Uint8Array {
  const v = o[key];
  if (v === undefined) return new Uint8Array();
  if (v instanceof Uint8Array) return v;
  if (Array.isArray(v) && v.every((b) => Number.isInteger(b) && b >= 0 && b <= 255)) return Uint8Array.from(v);
  return fail(type, key, "bytes");
}

function headers(o: Fields, type: string, key: string): Headers {
  const v = o[key];
  if (v === undefined) return {};
  if (v === null || typeof v !== "object" || Array.isArray(v) || v instanceof Uint8Array) {
    return fail(type, key, "a map of strings");
  }
  for (const value of Object.values(v)) {
    if (typeof value !== "string") fail(type, key, "a map of strings");
  }
  return v as Headers;
}

/** Decodes one server frame; `undefined` for a frame type this client does not know. */
export function decodeFrame(body: Uint8Array): ServerFrame | undefined {
  let value: unknown;
  try {
    value = decoder.decode(body);
  } catch (e) {
    throw new ProtocolError(`undecodable frame: ${(e as Error).message}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value) || value instanceof Uint8Array) {
    throw new ProtocolError("a frame must be a map");
  }
  const o = value as Fields;
  const type = o["type"];
  if (typeof type !== "string") throw new ProtocolError("a frame needs a string `type`");
  switch (type) {
    case "connected":
      return {
        type,
        id: uint(o, type, "id"),
        sessionId: str(o, type, "session_id"),
        nodeId: str(o, type, "node_id"),
        heartbeatMs: uint(o, type, "heartbeat_ms"),
        reconnectMinMs: uint(o, type, "reconnect_min_ms"),
        reconnectMaxMs: uint(o, type, "reconnect_max_ms"),
        maxFrameBytes: uint(o, type, "max_frame_bytes"),
        pongDeadlineMs: uint(o, type, "pong_deadline_ms", 0),
        tokenExpiresAt: uint(o, type, "token_expires_at", 0),
      };
    case "pong":
      return { type, id: uint(o, type, "id") };
    case "error": {
      const id = o["id"] === undefined || o["id"] === null ? undefined : uint(o, type, "id");
      return {
        type,
        ...(id === undefined ? {} : { id }),
        code: str(o, type, "code"),
        message: str(o, type, "message"),
        retry: bool(o, type, "retry"),
        close: bool(o, type, "close"),
      };
    }
    case "refreshed":
      return { type, id: uint(o, type, "id"), tokenExpiresAt: uint(o, type, "token_expires_at") };
    case "push_registered":
      return { type, id: uint(o, type, "id") };
    case "upload_ack":
      return { type, id: uint(o, type, "id"), status: uint(o, type, "status"), spooled: bool(o, type, "spooled") };
    case "reply":
      return {
        type,
        id: uint(o, type, "id"),
        status: uint(o, type, "status"),
        headers: headers(o, type, "headers"),
        body: bin(o, type, "body"),
        seq: uint(o, type, "seq", 0),
      };
    case "push":
      return {
        type,
        seq: uint(o, type, "seq"),
        msgId: str(o, type, "msg_id"),
        headers: headers(o, type, "headers"),
        payload: bin(o, type, "payload"),
        ackNow: bool(o, type, "ack_now"),
      };
    case "gap":
      return { type, from: uint(o, type, "from"), to: uint(o, type, "to"), reason: str(o, type, "reason") };
    case "kicked":
      return { type, reason: str(o, type, "reason"), message: str(o, type, "message") };
    case "go_away": {
      const endpoints = o["endpoints"] ?? [];
      if (!Array.isArray(endpoints) || !endpoints.every((e) => typeof e === "string")) {
        fail(type, "endpoints", "a list of strings");
      }
      return { type, reconnectAfterMs: uint(o, type, "reconnect_after_ms"), endpoints: endpoints as string[] };
    }
    default:
      return undefined;
  }
}

/**
 * Splits a TCP byte stream into bodies. The length prefix is checked against
 * the limit before anything of the body is buffered.
 */
export class LengthPrefixDecoder {
  private buffer = new Uint8Array(0);
  private start = 0;
  private end = 0;

  constructor(private readonly maxBody = MAX_INCOMING_FRAME_BYTES) {}

  feed(chunk: Uint8Array): void {
    const pending = this.end - this.start;
    if (this.end + chunk.length > this.buffer.length) {
      const grown = new Uint8Array(Math.max(pending + chunk.length, this.buffer.length * 2, 8192));
      grown.set(this.buffer.subarray(this.start, this.end));
      this.buffer = grown;
      this.start = 0;
      this.end = pending;
    }
    this.buffer.set(chunk, this.end);
    this.end += chunk.length;
  }

  /** The next complete body, or `undefined` until more bytes arrive. */
  next(): Uint8Array | undefined {
    if (this.end - this.start < 4) return undefined;
    const length = new DataView(this.buffer.buffer, this.buffer.byteOffset + this.start, 4).getUint32(0);
    if (length > this.maxBody) {
      throw new ProtocolError(`frame of ${length} bytes is over the ${this.maxBody}-byte limit`);
    }
    if (this.end - this.start < 4 + length) return undefined;
    const body = this.buffer.slice(this.start + 4, this.start + 4 + length);
    this.start += 4 + length;
    if (this.start === this.end) {
      this.start = 0;
      this.end = 0;
    }
    return body;
  }
}
