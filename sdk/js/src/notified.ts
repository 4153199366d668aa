/**
 * One message, two paths: a push whose socket delivery was late can also
 * reach the app as an OS notification (the push fallback), whose data carries
 * `duplex_message_id`. The app reports such notifications
 * (`Client.notified`); whichever copy comes first is the app's, the other is
 * dropped: a notification for a message the socket handed over already is
 * reported as not new, and the socket's copy of a message the app was
 * notified of is acked without being handed over.
 *
 * Bounded: the last `REMEMBERED` message ids; a copy arriving after that
 * many others is handed over again.
 */

/** Message ids remembered. */
export const REMEMBERED = 1024;

export class Seen {
  /** Insertion order is age: the first key is the oldest. */
  private readonly came = new Map<string, "socket" | "notification">();

  /** The socket brought `msgId`; whether to hand it to the app. */
  bySocket(msgId: string): boolean {
    const came = this.came.get(msgId);
    if (came === undefined) this.remember(msgId, "socket");
    return came !== "notification";
  }

  /** The app got a notification for `msgId`; whether the message is new to it. */
  byNotification(msgId: string): boolean {
    if (this.came.has(msgId)) return false;
    this.remember(msgId, "notification");
    return true;
  }

  get size(): number {
    return this.came.size;
  }

  private remember(msgId: string, came: "socket" | "notification"): void {
    if (this.came.size >= REMEMBERED) {
      const oldest = this.came.keys().next();
      if (!oldest.done) this.came.delete(oldest.value);
    }
    this.came.set(msgId, came);
  }
}
