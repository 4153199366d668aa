/**
 * Which stored messages the client has, and what it tells the server (the
 * Rust SDK's `acks.rs`, rule for rule).
 *
 * Acks are cumulative, and pushes and replies share one seq space. With
 * automatic acks (the default) a push counts as processed once every push
 * listener returned. With explicit acks (`autoAck: false`) the application
 * acks pushes itself (`Client.ack`), and the client never acks past a push
 * the application has not acked: a reply or a gap after it waits. After a
 * reconnect the server replays everything above the last ack it got, so
 * unacked pushes come again (same seq and id).
 */
export class Acks {
  /** Told to the server (and the resume point of the next connection). */
  acked: number;
  /** Highest seq received on this connection. */
  private delivered: number;
  /** Highest seq the application acked (explicit mode). */
  private appAcked: number;
  /** Pushes handed to the application and not acked by it yet, ascending (explicit mode). */
  private outstanding: number[] = [];

  constructor(
    lastSeq: number,
    private readonly auto: boolean,
  ) {
    this.acked = lastSeq;
    this.delivered = lastSeq;
    this.appAcked = lastSeq;
  }

  /** A new connection resumes from the last ack; anything above it comes again. */
  onConnect(): void {
    this.delivered = this.acked;
    this.outstanding = [];
  }

  /** Seen already: on this connection, or acked by the application. */
  isDuplicate(seq: number): boolean {
    return seq !== 0 && seq <= Math.max(this.delivered, this.appAcked);
  }

  /** A stored push was handed to the application; an ack to send, if any. */
  pushDelivered(seq: number): number | undefined {
    this.delivered = Math.max(this.delivered, seq);
    // An application that acked it already (from inside its listener) owes nothing for it.
    if (!this.auto && seq > this.appAcked) {
      const last = this.outstanding[this.outstanding.length - 1];
      if (last === undefined || seq > last) {
        this.outstanding.push(seq);
      } else if (!this.outstanding.includes(seq)) {
        this.outstanding.push(seq);
        this.outstanding.sort((a, b) => a - b);
      }
    }
    return this.frontier();
  }

  /** Everything up to `seq` needs nothing from the application (a reply, a gap, a duplicate). */
  passed(seq: number): number | undefined {
    this.delivered = Math.max(this.delivered, seq);
    return this.frontier();
  }

  /** The application processed every push up to `seq`. */
  appAck(seq: number): number | undefined {
    this.appAcked = Math.max(this.appAcked, seq);
    let drop = 0;
    while (drop < this.outstanding.length && (this.outstanding[drop] as number) <= seq) drop++;
    this.outstanding.splice(0, drop);
    return this.frontier();
  }

  private frontier(): number | undefined {
    const first = this.outstanding[0];
    const limit = first === undefined ? this.delivered : first - 1;
    if (limit > this.acked) {
      this.acked = limit;
      return limit;
    }
    return undefined;
  }
}
