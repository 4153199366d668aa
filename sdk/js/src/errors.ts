/**
 * Typed errors: every failure an application sees carries a stable `code` and
 * whether doing the same again later may succeed (`retry`). Server codes and
 * their meaning are docs/PROTOCOL.md's table; the client adds its own few.
 */

/** Codes the server sends (docs/PROTOCOL.md, "Error codes"). */
export type ServerErrorCode =
  | "frame_too_large"
  | "malformed_frame"
  | "nesting_too_deep"
  | "unknown_frame_type"
  | "unexpected_frame"
  | "unsupported_version"
  | "invalid_client_id"
  | "client_id_taken"
  | "bad_last_seq"
  | "auth_timeout"
  | "token_invalid"
  | "token_expired"
  | "token_not_yet_valid"
  | "token_wrong_algorithm"
  | "token_bad_audience"
  | "token_bad_issuer"
  | "server_full"
  | "rate_limited"
  | "bad_push_token"
  | "store_unavailable"
  | "upstream_unavailable"
  | "rejected"
  | "internal";

/** Codes of failures the client itself detects. */
export type ClientErrorCode =
  /** No answer to an upload or request within `callTimeoutMs`; it may still have reached the backend. */
  | "call_timeout"
  /** The client was closed, or replaced by another instance of the same client id. */
  | "client_stopped"
  /** More calls waiting for answers than `maxPendingCalls`. */
  | "too_many_calls";

export type ErrorCode = ServerErrorCode | ClientErrorCode;

/** Whether each server code may succeed later, as PROTOCOL.md's table says. */
export const SERVER_ERROR_RETRY: Readonly<Record<ServerErrorCode, boolean>> = {
  frame_too_large: false,
  malformed_frame: false,
  nesting_too_deep: false,
  unknown_frame_type: false,
  unexpected_frame: false,
  unsupported_version: false,
  invalid_client_id: false,
  client_id_taken: false,
  bad_last_seq: false,
  auth_timeout: true,
  token_invalid: false,
  token_expired: true,
  token_not_yet_valid: true,
  token_wrong_algorithm: false,
  token_bad_audience: false,
  token_bad_issuer: false,
  server_full: true,
  rate_limited: true,
  bad_push_token: false,
  store_unavailable: true,
  upstream_unavailable: true,
  rejected: false,
  internal: true,
};

/** A refusal by the server, or a call the client gave up on. */
export class DuplexError extends Error {
  override name = "DuplexError";

  constructor(
    /** Stable; branch on it. A newer server may send codes not listed in `ErrorCode`. */
    readonly code: ErrorCode | (string & {}),
    message: string,
    /** Whether the same action may succeed later. */
    readonly retry: boolean,
  ) {
    super(message);
  }

  /** From a server `error` frame: its own `retry` flag is what counts. */
  static fromServer(frame: { code: string; message: string; retry: boolean }): DuplexError {
    return new DuplexError(frame.code, frame.message, frame.retry);
  }
}
