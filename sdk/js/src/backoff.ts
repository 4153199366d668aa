/** Spreading reconnects: exponential backoff with full jitter. */

/**
 * Delay before reconnect attempt `attempt` (0-based): uniform in
 * `[0, min(maxMs, minMs * 2^attempt)]`. `unit` is a random number in `[0, 1)`.
 */
export function backoffDelay(attempt: number, minMs: number, maxMs: number, unit = Math.random()): number {
  const cap = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 20));
  return cap * Math.min(Math.max(unit, 0), 1);
}
