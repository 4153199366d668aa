/**
 * Uploads and requests of a reconnecting client. Each call gets an id once
 * and keeps it: a call that has no answer when the connection drops is sent
 * again, with the same id, on the next connection. The server deduplicates
 * by (client, id), so a resend never reaches the backend twice, and the
 * answer (an `upload_ack`, or a `reply` that may arrive on a later
 * connection) is matched by id. As the Rust SDK's `calls.rs`.
 */

import { DuplexError } from "./errors.js";
import type { ClientFrame, Reply, UploadAck } from "./frames.js";

type CallFrame = Extract<ClientFrame, { type: "upload" | "request" | "register_push" }>;
/** What a call resolves with; `undefined` for a registered push token. */
type CallAnswer = UploadAck | Reply | undefined;

interface Pending {
  frame: CallFrame;
  resolve(answer: CallAnswer): void;
  reject(error: DuplexError): void;
  timer: ReturnType<typeof setTimeout>;
}

export class Calls {
  /** Sent and not answered yet, by id; insertion order is id order, so resends keep call order. */
  private pending = new Map<number, Pending>();
  // Ids stay unique across app restarts (the server deduplicates by client and id).
  private nextId = Date.now() * 1000;

  constructor(
    private readonly timeoutMs: number,
    private readonly limit: number,
  ) {}

  get size(): number {
    return this.pending.size;
  }

  /** Registers a call and gives it its id; `send` puts it on the wire if a connection is open. */
  start<A extends CallAnswer>(make: (id: number) => CallFrame, send: (frame: CallFrame) => void): Promise<A> {
    if (this.pending.size >= this.limit) {
      return Promise.reject(
        new DuplexError("too_many_calls", `${this.limit} calls are waiting for answers already`, true),
      );
    }
    const id = this.nextId++;
    const frame = make(id);
    return new Promise<A>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new DuplexError("call_timeout", `no answer within ${this.timeoutMs} ms`, true));
      }, this.timeoutMs);
      this.pending.set(id, { frame, resolve: resolve as (a: CallAnswer) => void, reject, timer });
      send(frame);
    });
  }

  /** The frames to send again on a new connection, in call order. */
  unanswered(): CallFrame[] {
    return [...this.pending.values()].map((p) => p.frame);
  }

  uploadAcked(ack: UploadAck): void {
    this.settle(ack.id, (p) => (p.frame.type === "upload" ? p.resolve(ack) : p.reject(mismatch("upload_ack"))));
  }

  pushRegistered(id: number): void {
    this.settle(id, (p) => (p.frame.type === "register_push" ? p.resolve(undefined) : p.reject(mismatch("push_registered"))));
  }

  replied(reply: Reply): void {
    this.settle(reply.id, (p) => (p.frame.type === "request" ? p.resolve(reply) : p.reject(mismatch("reply"))));
  }

  /** An error frame naming one of our calls ends it. */
  refused(id: number, error: DuplexError): void {
    this.settle(id, (p) => p.reject(error));
  }

  /** Every call fails: the client stopped. */
  stopAll(why: string): void {
    for (const id of [...this.pending.keys()]) {
      this.settle(id, (p) => p.reject(new DuplexError("client_stopped", why, false)));
    }
  }

  private settle(id: number, act: (p: Pending) => void): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    act(p);
  }
}

function mismatch(what: string): DuplexError {
  return new DuplexError("internal", `the server answered another kind of call with \`${what}\``, false);
}
