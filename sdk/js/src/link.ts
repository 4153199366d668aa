/**
 * One connection of the reconnecting client, from the `connect` frame to its
 * end: the handshake, then frames in both directions (pushes to the
 * application with their acks, calls resent and answered, the heartbeat and
 * the liveness rule) until it ends, and how it ended. As the Rust SDK's
 * `link.rs`.
 */

import type { Acks } from "./acks.js";
import type { Calls } from "./calls.js";
import type { Seen } from "./notified.js";
import { DuplexError } from "./errors.js";
import {
  type ClientFrame,
  type Connected,
  decodeFrame,
  encodeFrame,
  type Gap,
  ProtocolError,
  type Push,
  type ServerFrame,
} from "./frames.js";
import type { Transport, TransportSink } from "./transport.js";

/** How one connection ended. */
export type Ended =
  | { kind: "lost"; reason: string; error?: DuplexError }
  /** A ping went unanswered past the pong deadline: the node hangs; the next attempt goes elsewhere. */
  | { kind: "unresponsive"; reason: string }
  /** The token expired: a fresh one is worth trying at once. */
  | { kind: "token_expired"; reason: string; error: DuplexError }
  | { kind: "go_away"; afterMs: number }
  /** Another instance of this client id connected: stop for good. */
  | { kind: "replaced" }
  /** The application closed the client. */
  | { kind: "closed" };

/** What a link needs from its client. */
export interface LinkHost {
  readonly acks: Acks;
  readonly calls: Calls;
  readonly ackDelayMs: number;
  /** Messages the app got as OS notifications (`notified.ts`). */
  readonly seen: Seen;
  token(): Promise<string>;
  /** A promise when the application is still processing it. */
  deliverPush(push: Push): Promise<void> | undefined;
  deliverGap(gap: Gap): Promise<void> | undefined;
  kicked(reason: string, message: string): void;
}

/**
 * Frames received and not yet handled. Past this many the application is
 * not keeping up (push listeners that do not return): the connection is
 * dropped rather than buffering without end; nothing is lost, since every
 * push not yet acked comes again on the next connection.
 */
export const MAX_QUEUED_FRAMES = 1024;

/** The id of the SDK's own `refresh` frames, apart from the application's calls. */
const REFRESH_ID = Number.MAX_SAFE_INTEGER;

export class Link implements TransportSink {
  transport: Transport | undefined;
  /** Settles with the first frame: `connected`, or the refusal. */
  readonly hello: Promise<Connected>;
  /** Settles once, when the connection is over. */
  readonly ended: Promise<Ended>;

  private phase: "handshake" | "open" | "ended" = "handshake";
  private resolveHello!: (c: Connected) => void;
  private rejectHello!: (e: Ended) => void;
  private resolveEnded!: (e: Ended) => void;
  private queue: ServerFrame[] = [];
  private queueHead = 0;
  private serving = false;
  private pumping = false;
  private pingTimer: ReturnType<typeof setTimeout> | undefined;
  private pongTimer: ReturnType<typeof setTimeout> | undefined;
  private ackTimer: ReturnType<typeof setTimeout> | undefined;
  private pingId = 0;
  /** The cumulative ack owed and not sent yet; already counted in `acks.acked`. */
  private heldAck: number | undefined;
  /** A push of the current burst asked for its ack at once (`ack_now`). */
  private ackUrgent = false;

  constructor(private readonly host: LinkHost) {
    this.hello = new Promise((resolve, reject) => {
      this.resolveHello = resolve;
      this.rejectHello = reject;
    });
    // A refusal is also reported through `ended`; the handshake's own rejection needs no handler.
    this.hello.catch(() => {});
    this.ended = new Promise((resolve) => (this.resolveEnded = resolve));
  }

  get open(): boolean {
    return this.phase === "open";
  }

  send(frame: ClientFrame): void {
    this.transport?.send(encodeFrame(frame));
  }

  // TransportSink: called by the transport, possibly several times in one tick.
  frame(body: Uint8Array): void {
    if (this.phase === "ended") return;
    let frame: ServerFrame | undefined;
    try {
      frame = decodeFrame(body);
    } catch (e) {
      this.finish({ kind: "lost", reason: e instanceof ProtocolError ? e.message : String(e) });
      return;
    }
    if (frame === undefined) return;
    if (this.phase === "handshake") {
      this.handshakeFrame(frame);
      return;
    }
    if (frame.type === "pong") {
      // Liveness is the transport's business: a pong counts even behind a slow push listener.
      clearTimeout(this.pongTimer);
      this.pongTimer = undefined;
      return;
    }
    if (this.queue.length - this.queueHead >= MAX_QUEUED_FRAMES) {
      this.finish({ kind: "lost", reason: `the application falls behind (${MAX_QUEUED_FRAMES} frames waiting)` });
      return;
    }
    this.queue.push(frame);
    this.pump();
  }

  closed(reason: string): void {
    if (this.phase === "handshake") {
      this.finish({ kind: "lost", reason: `before \`connected\`: ${reason}` });
    } else {
      this.finish({ kind: "lost", reason });
    }
  }

  private handshakeFrame(frame: ServerFrame): void {
    switch (frame.type) {
      case "connected":
        this.phase = "open";
        this.resolveHello(frame);
        return;
      case "error": {
        const error = DuplexError.fromServer(frame);
        const reason = `${frame.code}: ${frame.message}`;
        this.finish(
          frame.code === "token_expired" ? { kind: "token_expired", reason, error } : { kind: "lost", reason, error },
        );
        return;
      }
      case "kicked":
        this.finish(frame.reason === "replaced" ? { kind: "replaced" } : { kind: "lost", reason: `kicked: ${frame.reason}` });
        return;
      default:
        this.finish({ kind: "lost", reason: `unexpected \`${frame.type}\` before \`connected\`` });
    }
  }

  /** After `connected`: resends unanswered calls, starts the heartbeat and handles what already arrived. */
  serve(hello: Connected): void {
    if (this.phase !== "open") return;
    this.serving = true;
    for (const frame of this.host.calls.unanswered()) this.send(frame);
    const heartbeat = Math.max(hello.heartbeatMs, 100);
    // A server that advertises no deadline gets the heartbeat as one.
    const pongDeadline = hello.pongDeadlineMs > 0 ? hello.pongDeadlineMs : heartbeat;
    const ping = () => {
      if (this.phase !== "open") return;
      this.send({ type: "ping", id: ++this.pingId });
      this.pongTimer ??= setTimeout(
        () => this.finish({ kind: "unresponsive", reason: `no pong within ${pongDeadline} ms: the node does not answer` }),
        pongDeadline,
      );
      this.pingTimer = setTimeout(ping, heartbeat);
    };
    this.pingTimer = setTimeout(ping, heartbeat);
    this.pump();
  }

  /** The application acked every push up to `seq` (explicit acks). */
  appAck(seq: number): void {
    this.hold(this.host.acks.appAck(seq));
    if (!this.pumping) this.releaseAck();
  }

  /** Sends the held ack and ends the connection (the application closes the client). */
  close(): void {
    if (this.phase === "open") this.sendHeldAck();
    this.finish({ kind: "closed" });
  }

  /** Handles queued frames one at a time (a push listener may take its time), then releases the ack. */
  private async pump(): Promise<void> {
    if (this.pumping || !this.serving) return;
    this.pumping = true;
    try {
      while (this.phase === "open" && this.queueHead < this.queue.length) {
        const frame = this.queue[this.queueHead++] as ServerFrame;
        if (this.queueHead > 256 && this.queueHead * 2 > this.queue.length) {
          this.queue = this.queue.slice(this.queueHead);
          this.queueHead = 0;
        }
        // Bookkeeping of a frame whose listeners return nothing is done before this yields.
        const ended = await this.handle(frame);
        if (ended) {
          if (ended.kind === "go_away") this.sendHeldAck();
          this.finish(ended);
          return;
        }
      }
      if (this.phase === "open") this.releaseAck();
    } finally {
      this.pumping = false;
    }
  }

  private async handle(frame: ServerFrame): Promise<Ended | undefined> {
    const { acks, calls } = this.host;
    switch (frame.type) {
      case "push": {
        const { type: _, ...push } = frame;
        if (acks.isDuplicate(push.seq) || (push.seq !== 0 && !this.host.seen.bySocket(push.msgId))) {
          this.hold(acks.passed(push.seq));
          return undefined;
        }
        const processing = this.host.deliverPush(push);
        if (processing) await processing;
        // seq 0: qos 0, never stored, nothing to ack.
        if (push.seq === 0 || this.phase !== "open") return undefined;
        this.ackUrgent ||= push.ackNow;
        this.hold(acks.pushDelivered(push.seq));
        return undefined;
      }
      case "reply": {
        const { type: _, ...reply } = frame;
        if (!acks.isDuplicate(reply.seq)) calls.replied(reply);
        if (reply.seq !== 0) this.hold(acks.passed(reply.seq));
        return undefined;
      }
      case "upload_ack": {
        const { type: _, ...ack } = frame;
        calls.uploadAcked(ack);
        return undefined;
      }
      case "push_registered":
        calls.pushRegistered(frame.id);
        return undefined;
      case "gap": {
        const { type: _, ...gap } = frame;
        const processing = this.host.deliverGap(gap);
        if (processing) await processing;
        if (this.phase === "open") this.hold(acks.passed(gap.to));
        return undefined;
      }
      case "kicked":
        if (frame.reason === "replaced") return { kind: "replaced" };
        this.host.kicked(frame.reason, frame.message);
        return { kind: "lost", reason: `kicked: ${frame.reason}` };
      case "go_away":
        return { kind: "go_away", afterMs: frame.reconnectAfterMs };
      case "error": {
        const error = DuplexError.fromServer(frame);
        const reason = `${frame.code}: ${frame.message}`;
        if (frame.close) {
          return frame.code === "token_expired" ? { kind: "token_expired", reason, error } : { kind: "lost", reason, error };
        }
        if (frame.code === "token_expired" && frame.id === undefined) {
          // The connection's token expires: hand over a new one in-band. If that one is refused
          // too, the server closes after its grace and the reconnect asks the provider again.
          const token = await this.host.token().catch(() => undefined);
          if (token !== undefined) this.send({ type: "refresh", id: REFRESH_ID, token });
          return undefined;
        }
        if (frame.id !== undefined && frame.id !== REFRESH_ID) calls.refused(frame.id, error);
        return undefined;
      }
      default:
        return undefined;
    }
  }

  /** Notes a cumulative ack to send at the end of the burst (the highest wins). */
  private hold(seq: number | undefined): void {
    if (seq !== undefined) this.heldAck = Math.max(this.heldAck ?? 0, seq);
  }

  /** At the end of a burst: the held ack now (no delay, or `ack_now`), else within the delay. */
  private releaseAck(): void {
    if (this.heldAck === undefined) return;
    if (this.host.ackDelayMs <= 0 || this.ackUrgent) {
      this.sendHeldAck();
      return;
    }
    this.ackTimer ??= setTimeout(() => this.sendHeldAck(), this.host.ackDelayMs);
  }

  private sendHeldAck(): void {
    clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
    this.ackUrgent = false;
    const seq = this.heldAck;
    this.heldAck = undefined;
    if (seq !== undefined && this.phase === "open") this.send({ type: "ack", id: seq, seq });
  }

  /** Ends the connection once; what it owed stays in `acks.acked`, the next `connect`'s `last_seq`. */
  finish(ended: Ended): void {
    if (this.phase === "ended") return;
    const wasOpen = this.phase === "open";
    this.phase = "ended";
    clearTimeout(this.pingTimer);
    clearTimeout(this.pongTimer);
    clearTimeout(this.ackTimer);
    this.transport?.close();
    if (!wasOpen) this.rejectHello(ended);
    this.resolveEnded(ended);
  }
}
