/**
 * Duplex client SDK for browsers, React Native and Node.
 *
 * Layout: `client` (the reconnecting `Client`), `link` (one live connection),
 * `acks` and `calls` (what it owes and is owed), `endpoints` (URLs, the
 * dispatcher, the choice of node), `transport` (WebSocket; `./node` adds TCP
 * and TLS), `frames` (the wire format, no I/O), `errors` (typed codes).
 */

export { Client, DEFAULT_ACK_DELAY_MS } from "./client.js";
export type { ClientEvents, ClientOptions, ClientState } from "./client.js";
export { backoffDelay } from "./backoff.js";
export { DispatchError, fetchNodes, parseEndpoint } from "./endpoints.js";
export type { Endpoint, Scheme } from "./endpoints.js";
export { DuplexError, SERVER_ERROR_RETRY } from "./errors.js";
export type { ClientErrorCode, ErrorCode, ServerErrorCode } from "./errors.js";
export { decodeFrame, encodeFrame, LengthPrefixDecoder, PROTOCOL_VERSION, ProtocolError } from "./frames.js";
export type { ClientFrame, Connected, ErrorFrame, Gap, Headers, Push, PushTokenRegistration, Reply, Request, ServerFrame, Upload, UploadAck } from "./frames.js";
export { webSocketConnector } from "./transport.js";
export type { Connector, Transport, TransportSink, WebSocketConstructor, WebSocketLike } from "./transport.js";
