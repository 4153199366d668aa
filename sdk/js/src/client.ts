/**
 * A client that behaves like one reliable connection: it reconnects with
 * exponential backoff and full jitter (honouring the server's advice and
 * `go_away` delays), resumes from the highest seq it delivered, drops
 * duplicates, acks what the application received (held for `ackDelayMs`),
 * keeps the heartbeat and leaves a node that stops answering. Uploads and
 * requests survive reconnects. The Rust SDK's `Client`, for JavaScript.
 */

import { Acks } from "./acks.js";
import { backoffDelay } from "./backoff.js";
import { Calls } from "./calls.js";
import { Chooser, type Endpoint, fetchNodes, parseEndpoint } from "./endpoints.js";
import { DuplexError } from "./errors.js";
import type { Gap, Push, PushTokenRegistration, Reply, Request, Upload, UploadAck } from "./frames.js";
import { type Ended, Link } from "./link.js";
import { Seen } from "./notified.js";
import { type Connector, webSocketConnector } from "./transport.js";

export interface ClientOptions {
  /** `tcp://host:port`, `tls://host:port` (Node connector), `ws://host:port/`, `wss://host:port/`. */
  endpoints?: string[];
  /**
   * Dispatcher URLs (`http://<push API>/v1/nodes` of any nodes), tried in order. When set, the
   * endpoints come from the first that answers (weighted by the nodes' free capacity), fetched
   * again before every attempt; `endpoints` is the fallback while none answers.
   */
  dispatchers?: string[];
  /** Take only TLS endpoints (`tls://`, else `wss://`) from the dispatchers. Default false. */
  dispatchTls?: boolean;
  /** Stable per app install: 1..=128 bytes of `[A-Za-z0-9._:-]`. */
  clientId: string;
  /** A token for each connection attempt, and for the in-band refresh when one expires. */
  token: () => string | Promise<string>;
  /** Highest seq the application already processed (persist it across app restarts). Default 0. */
  lastSeq?: number;
  /**
   * Ack each push once every push listener returned (default true). When false, the
   * application calls `ack(seq)` after processing; pushes it has not acked come again
   * after a reconnect.
   */
  autoAck?: boolean;
  /**
   * How long an ack waits for the acks of pushes arriving after it (acks are cumulative,
   * each ack frame costs the server a store call). Default 100 ms; 0 acks every burst at
   * once. A push with `ack_now` is acked at once anyway. A held ack is not lost when the
   * connection drops: the next connect resumes after it. `close()` sends it.
   */
  ackDelayMs?: number;
  /** Backoff bounds until the server advises its own. Default 500 ms and 30 s. */
  backoffMinMs?: number;
  backoffMaxMs?: number;
  /** A connection that lasted this long resets the backoff. Default 30 s. */
  stableAfterMs?: number;
  /** Longest wait for an upload's ack or a request's reply, across reconnects. Default 60 s. */
  callTimeoutMs?: number;
  /** Longest a connect plus handshake may take before the endpoint counts as failed. Default 10 s. */
  connectTimeoutMs?: number;
  /** Calls waiting for answers at once; more are refused with `too_many_calls`. Default 256. */
  maxPendingCalls?: number;
  /** Opens connections. Default: WebSocket only; `nodeConnector()` adds TCP and TLS. */
  connector?: Connector;
}

export const DEFAULT_ACK_DELAY_MS = 100;

export type ClientState = "idle" | "connecting" | "connected" | "waiting" | "closed";

/** What listeners receive, by event name. */
export interface ClientEvents {
  /** An attempt to connect to this endpoint starts. */
  connecting: { endpoint: string };
  connected: { nodeId: string; sessionId: string; endpoint: string };
  /** A connection ended or an attempt failed; `error` when the server refused with a code. */
  disconnected: { reason: string; error?: DuplexError };
  /** A push, each stored one once (duplicates are dropped by seq). A returned promise is awaited. */
  push: Push;
  /** Pushes `from..=to` expired or were dropped and will never arrive. */
  gap: Gap;
  /** The server closed this connection with `kicked` (`admin`, `slow_consumer`); the client reconnects. */
  kicked: { reason: string; message: string };
  /** Another instance of this client id connected: the client stopped for good. */
  replaced: Record<string, never>;
  state: ClientState;
}

type Listener<K extends keyof ClientEvents> = (event: ClientEvents[K]) => void | Promise<void>;

/**
 * A listener's bug must not stop the client (the event counts as handed over all the same);
 * it is rethrown apart, where the platform reports uncaught errors.
 */
function reportListenerError(e: unknown): void {
  queueMicrotask(() => {
    throw e;
  });
}

/** Longest `close()` waits for the held ack to be written. */
const CLOSE_WAIT_MS = 2000;

export class Client {
  private readonly options: Required<Omit<ClientOptions, "connector" | "lastSeq">> & { connector: Connector };
  private readonly listeners = new Map<keyof ClientEvents, Set<Listener<never>>>();
  private readonly acks: Acks;
  private readonly calls: Calls;
  private readonly seen = new Seen();
  private link: Link | undefined;
  private currentState: ClientState = "idle";
  private stopped = false;
  private wake: (() => void) | undefined;
  private wakeEarly = false;
  private running: Promise<void> | undefined;

  constructor(options: ClientOptions) {
    const endpoints = options.endpoints ?? [];
    endpoints.forEach(parseEndpoint);
    if (endpoints.length === 0 && (options.dispatchers ?? []).length === 0) {
      throw new TypeError("give at least one endpoint or dispatcher");
    }
    this.options = {
      endpoints,
      dispatchers: options.dispatchers ?? [],
      dispatchTls: options.dispatchTls ?? false,
      clientId: options.clientId,
      token: options.token,
      autoAck: options.autoAck ?? true,
      ackDelayMs: options.ackDelayMs ?? DEFAULT_ACK_DELAY_MS,
      backoffMinMs: options.backoffMinMs ?? 500,
      backoffMaxMs: options.backoffMaxMs ?? 30_000,
      stableAfterMs: options.stableAfterMs ?? 30_000,
      callTimeoutMs: options.callTimeoutMs ?? 60_000,
      connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
      maxPendingCalls: options.maxPendingCalls ?? 256,
      connector: options.connector ?? webSocketConnector(),
    };
    this.acks = new Acks(options.lastSeq ?? 0, this.options.autoAck);
    this.calls = new Calls(this.options.callTimeoutMs, this.options.maxPendingCalls);
  }

  get state(): ClientState {
    return this.currentState;
  }

  /** Highest seq acked so far: persist it and pass it as `lastSeq` after an app restart. */
  get lastSeq(): number {
    return this.acks.acked;
  }

  /** Adds a listener; returns the function that removes it. */
  on<K extends keyof ClientEvents>(type: K, listener: Listener<K>): () => void {
    let set = this.listeners.get(type);
    if (!set) this.listeners.set(type, (set = new Set()));
    set.add(listener as Listener<never>);
    return () => set.delete(listener as Listener<never>);
  }

  /** Starts connecting (once); add listeners first. */
  start(): this {
    this.running ??= this.run();
    return this;
  }

  /** Sends an upload and resolves with its ack, across reconnects. */
  upload(upload: Upload): Promise<UploadAck> {
    if (this.stopped) return this.stoppedCall();
    // The client's own type and id win over any the caller's object carries.
    return this.calls.start((id) => ({ ...upload, type: "upload", id }), (frame) => this.sendIfOpen(frame));
  }

  /** Sends a request and resolves with the reply, which may arrive on a later connection. */
  request(request: Request): Promise<Reply> {
    if (this.stopped) return this.stoppedCall();
    return this.calls.start((id) => ({ ...request, type: "request", id }), (frame) => this.sendIfOpen(frame));
  }

  /**
   * Registers this install's OS push token for the push fallback (apps call it
   * at every start, which renews it); resolves once the server stored it, across reconnects.
   */
  registerPush(registration: PushTokenRegistration): Promise<void> {
    if (this.stopped) return this.stoppedCall();
    return this.calls.start<undefined>(
      (id) => ({ ...registration, type: "register_push", id }),
      (frame) => this.sendIfOpen(frame),
    );
  }

  /**
   * The app got an OS notification (the push fallback) for `messageId`, the
   * `duplex_message_id` of its data. Returns whether the message is new to the
   * app: false when the socket handed it over already (drop the notification).
   * The socket's copy of a message reported here is acked and not handed over.
   * The last 1,024 message ids are remembered.
   */
  notified(messageId: string): boolean {
    return this.seen.byNotification(messageId);
  }

  /** With `autoAck: false`: the application processed every push up to `seq`. */
  ack(seq: number): void {
    if (this.link?.open) this.link.appAck(seq);
    else this.acks.appAck(seq);
  }

  /**
   * Ends a reconnect backoff under way now, for apps that know the network came
   * back (the browser's `online` event, React Native's NetInfo). Does nothing while connected.
   */
  reconnectNow(): void {
    if (this.wake) this.wake();
    // Between a connection's end and the start of its backoff: that backoff is skipped.
    else if (this.currentState === "waiting") this.wakeEarly = true;
  }

  /**
   * Stops the client, first sending the ack it holds if it is connected, so pushes
   * handed to the application do not come again to the next instance. Pending calls
   * fail with `client_stopped`.
   */
  async close(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.link?.close();
    this.wake?.();
    this.calls.stopAll("the client was closed");
    this.setState("closed");
    if (this.running) {
      // A timer left behind would keep a Node process alive after close().
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([this.running, new Promise((r) => (timer = setTimeout(r, CLOSE_WAIT_MS)))]);
      clearTimeout(timer);
    }
  }

  private stoppedCall<T>(): Promise<T> {
    return Promise.reject(new DuplexError("client_stopped", "the client was closed", false));
  }

  private sendIfOpen(frame: Parameters<Link["send"]>[0]): void {
    if (this.link?.open) this.link.send(frame);
  }

  private setState(state: ClientState): void {
    if (this.currentState === state || this.currentState === "closed") return;
    this.currentState = state;
    void this.emit("state", state);
  }

  /**
   * Calls every listener of `type`; a promise when some returned one (all of them are then
   * awaited). Nothing is awaited otherwise, so a push handled by plain listeners is counted
   * as processed before anything else runs.
   */
  private emit<K extends keyof ClientEvents>(type: K, event: ClientEvents[K]): Promise<void> | undefined {
    const set = this.listeners.get(type);
    if (!set) return undefined;
    let pending: Promise<void>[] | undefined;
    for (const listener of [...set]) {
      try {
        const result = (listener as Listener<K>)(event);
        if (result instanceof Promise) (pending ??= []).push(result.catch(reportListenerError));
      } catch (e) {
        reportListenerError(e);
      }
    }
    return pending && Promise.all(pending).then(() => undefined);
  }

  /** Waits `ms`, or less if `reconnectNow()` or `close()` is called. */
  private pause(ms: number): Promise<void> {
    if (this.wakeEarly || this.stopped) {
      this.wakeEarly = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      const self = this;
      function done() {
        clearTimeout(timer);
        self.wake = undefined;
        resolve();
      }
      this.wake = done;
    });
  }

  private async run(): Promise<void> {
    const o = this.options;
    let attempt = 0;
    let [min, max] = [o.backoffMinMs, o.backoffMaxMs];
    let endpoints: Endpoint[] = o.endpoints.map(parseEndpoint);
    let chooser = new Chooser(endpoints.map(() => 1));
    let freshTokenTried = false;
    const schemes = o.connector.schemes.filter((s) => (o.dispatchTls ? s === "tls" || s === "wss" : s === "tcp" || s === "ws"));
    while (!this.stopped) {
      if (o.dispatchers.length > 0) {
        try {
          const nodes = await fetchNodes(o.dispatchers, schemes);
          const failures = endpoints.map((e, i) => [e.url, chooser.failedSince(i)] as const);
          endpoints = nodes.map((n) => n.endpoint);
          chooser = new Chooser(nodes.map((n) => n.weight));
          for (const [url, at] of failures) {
            const i = endpoints.findIndex((e) => e.url === url);
            if (at !== undefined && i >= 0) chooser.failed(i, at);
          }
        } catch {
          // The endpoints known so far stay in use.
        }
        if (this.stopped) return;
      }
      if (endpoints.length === 0) {
        this.setState("waiting");
        await this.emit("disconnected", { reason: "no endpoint known (no dispatcher answered)" });
        await this.pause(backoffDelay(attempt++, min, max));
        continue;
      }
      const index = chooser.pick();
      const endpoint = endpoints[index] as Endpoint;
      this.setState("connecting");
      this.wakeEarly = false;
      await this.emit("connecting", { endpoint: endpoint.url });
      const started = performance.now();
      const { ended, opened } = await this.connection(endpoint, (hello) => {
        chooser.succeeded(index);
        freshTokenTried = false;
        min = Math.max(hello.reconnectMinMs, 1);
        max = Math.max(hello.reconnectMaxMs, hello.reconnectMinMs, 1);
      });
      if (ended.kind === "closed" || this.stopped) return;
      // Listeners of `disconnected` already see the state it leads to.
      if (ended.kind !== "replaced") this.setState("waiting");
      let delay: number;
      switch (ended.kind) {
        case "replaced":
          this.stopped = true;
          this.calls.stopAll("another instance of this client id connected");
          this.setState("closed");
          this.emit("replaced", {});
          return;
        case "go_away":
          chooser.failed(index);
          attempt = 0;
          delay = ended.afterMs;
          await this.emit("disconnected", { reason: "go_away" });
          break;
        case "token_expired":
          // The token provider is asked again on the next attempt: once at once, then with backoff.
          delay = freshTokenTried ? backoffDelay(attempt++, min, max) : 0;
          freshTokenTried = true;
          await this.emit("disconnected", { reason: ended.reason, error: ended.error });
          break;
        case "lost":
        case "unresponsive":
          if (ended.kind === "unresponsive" || !opened) chooser.failed(index);
          if (performance.now() - started >= o.stableAfterMs) attempt = 0;
          delay = backoffDelay(attempt++, min, max);
          await this.emit("disconnected", { reason: ended.reason, ...(ended.kind === "lost" && ended.error ? { error: ended.error } : {}) });
          break;
      }
      if (this.stopped) return;
      this.setState("waiting");
      await this.pause(delay);
    }
  }

  /**
   * One connection: open, handshake within the connect timeout, serve until it ends;
   * `opened` when it got as far as `connected`.
   */
  private async connection(
    endpoint: Endpoint,
    onHello: (hello: { reconnectMinMs: number; reconnectMaxMs: number }) => void,
  ): Promise<{ ended: Ended; opened: boolean }> {
    const o = this.options;
    const link = new Link({
      acks: this.acks,
      calls: this.calls,
      ackDelayMs: o.ackDelayMs,
      seen: this.seen,
      token: async () => o.token(),
      deliverPush: (push) => this.emit("push", push),
      deliverGap: (gap) => this.emit("gap", gap),
      kicked: (reason, message) => void this.emit("kicked", { reason, message }),
    });
    this.link = link;
    let opened = false;
    const timeout = new AbortController();
    const timer = setTimeout(() => {
      timeout.abort();
      link.finish({ kind: "lost", reason: `no \`connected\` within ${o.connectTimeoutMs} ms` });
    }, o.connectTimeoutMs);
    try {
      link.transport = await o.connector.open(endpoint, link, timeout.signal);
      if (this.stopped) {
        link.finish({ kind: "closed" });
        return { ended: await link.ended, opened };
      }
      const token = await o.token();
      link.send({ type: "connect", id: 1, token, clientId: o.clientId, lastSeq: this.acks.acked });
      const hello = await link.hello;
      clearTimeout(timer);
      opened = true;
      onHello(hello);
      this.acks.onConnect();
      this.setState("connected");
      await this.emit("connected", { nodeId: hello.nodeId, sessionId: hello.sessionId, endpoint: endpoint.url });
      link.serve(hello);
    } catch (e) {
      link.finish({ kind: "lost", reason: e instanceof Error ? e.message : String(e) });
    } finally {
      clearTimeout(timer);
    }
    return { ended: await link.ended, opened };
  }
}
