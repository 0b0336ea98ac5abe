/**
 * Waiting and retrying, in one place: `sleep` (an abortable timer) and `retry` (exponential backoff
 * with jitter, bounded by attempts and/or a deadline, an abort signal, a predicate for what is worth
 * another try, a hook for logging).
 *
 * Who retries what. `retry` is for a step *inside* one job attempt or one long-lived loop: a 412 on
 * a manifest write, a lock someone else holds, Postgres away under the receipts. A job's own retries
 * belong to BullMQ (`attempts` and `backoff` in queues/contract.ts). Retries nest by multiplication
 * (job attempts × in-job attempts × the S3 SDK's attempts per request), so a retry here is either
 * brief or the only one on its path; see docs/failures.md for the aggregation export's.
 */
import { setTimeout as timer } from 'node:timers/promises';

/** Node's timers overflow past this (about 24.8 days) and then fire after 1 ms. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Resolve after `ms`. Aborting `signal` rejects at once with Node's AbortError (its `cause` is the
 * signal's reason). `ref: false`: the wait does not keep the process alive.
 */
export function sleep(ms: number, signal?: AbortSignal, options: { ref?: boolean } = {}): Promise<void> {
  return timer(Math.max(0, Math.min(ms, MAX_TIMER_MS)), undefined, { ref: options.ref ?? true, ...(signal ? { signal } : {}) });
}

export interface BackoffOptions {
  /** Wait before the first retry (ms). Default 100. */
  delayMs?: number;
  /** Growth of the wait per retry; 1 keeps it constant. Default 2. */
  factor?: number;
  /** Longest wait (ms). Default: no cap beyond the timer's. */
  maxDelayMs?: number;
  /**
   * Share of each wait taken off at random, 0–1: the wait is uniform in [d × (1 − jitter), d], as
   * BullMQ's `backoff.jitter`, so a fleet that failed together does not retry together. Default 0.5.
   */
  jitter?: number;
}

export const BACKOFF_DEFAULTS = {
  delayMs: 100,
  factor: 2,
  maxDelayMs: Number.POSITIVE_INFINITY,
  jitter: 0.5,
} satisfies Required<BackoffOptions>;

/**
 * The wait before retry number `retry` (1 = after the first failure):
 * `min(maxDelayMs, delayMs × factor^(retry − 1))`, less up to `jitter` of it. `random` returns
 * 0 ≤ x < 1 (Math.random).
 */
export function backoffDelay(retry: number, options: BackoffOptions = {}, random: () => number = Math.random): number {
  const delayMs = options.delayMs ?? BACKOFF_DEFAULTS.delayMs;
  const factor = options.factor ?? BACKOFF_DEFAULTS.factor;
  const maxDelayMs = options.maxDelayMs ?? BACKOFF_DEFAULTS.maxDelayMs;
  const jitter = options.jitter ?? BACKOFF_DEFAULTS.jitter;
  // delayMs 0 stays 0 however many retries (0 × Infinity would be NaN).
  const grown = delayMs === 0 ? 0 : delayMs * factor ** Math.max(0, retry - 1);
  const d = Math.min(maxDelayMs, grown, MAX_TIMER_MS);
  return d * (1 - jitter * random());
}

export interface RetryInfo {
  /** What the failed attempt threw. */
  error: unknown;
  /** The attempt that failed, 1 for the first. */
  attempt: number;
  /** The wait before the next attempt (ms). */
  delayMs: number;
  /** Time since the first attempt started (ms). */
  elapsedMs: number;
}

export interface RetryOptions extends BackoffOptions {
  /**
   * Attempts in all, the first included; `Infinity` retries until success (or the deadline, or the
   * signal). At least one of `maxAttempts` and `timeoutMs` must be given.
   */
  maxAttempts?: number;
  /**
   * No attempt starts later than this long after the first one (ms): the wait before it is cut to
   * end at the deadline, and a failure at or past it is final. An attempt in flight is not cut.
   */
  timeoutMs?: number;
  /**
   * Ends the retrying: an abort before the first attempt rejects with the abort error; during a
   * wait, with the last attempt's error (what failed is the operation, not the wait). `fn` gets no
   * signal from here: pass it to the operation yourself if it should stop mid-attempt.
   */
  signal?: AbortSignal;
  /** Whether an error is worth another attempt. Default: every error. An error it throws ends the retry. */
  retryable?: (err: unknown) => boolean;
  /** Called (and awaited) before each wait, e.g. to log; an error it throws ends the retry. */
  onRetry?: (info: RetryInfo) => void | Promise<void>;
  /** false: the waits do not keep the process alive. Default true. */
  ref?: boolean;
  /** Source of the jitter, 0 ≤ x < 1 (tests pin it). Default Math.random. */
  random?: () => number;
}

function check(o: RetryOptions): void {
  const bad = (what: string) => {
    throw new RangeError(`retry: ${what}`);
  };
  if (o.maxAttempts === undefined && o.timeoutMs === undefined)
    bad('give maxAttempts, timeoutMs or both (maxAttempts: Infinity retries until success)');
  if (o.maxAttempts !== undefined && !(o.maxAttempts >= 1)) bad(`maxAttempts must be at least 1, got ${o.maxAttempts}`);
  if (o.timeoutMs !== undefined && !(o.timeoutMs >= 0)) bad(`timeoutMs must be 0 or more, got ${o.timeoutMs}`);
  if (o.delayMs !== undefined && !(o.delayMs >= 0)) bad(`delayMs must be 0 or more, got ${o.delayMs}`);
  if (o.maxDelayMs !== undefined && !(o.maxDelayMs >= 0)) bad(`maxDelayMs must be 0 or more, got ${o.maxDelayMs}`);
  if (o.factor !== undefined && !(o.factor >= 1)) bad(`factor must be at least 1, got ${o.factor}`);
  if (o.jitter !== undefined && !(o.jitter >= 0 && o.jitter <= 1)) bad(`jitter must be between 0 and 1, got ${o.jitter}`);
}

/**
 * Run `fn` (given the attempt number, 1 first) until it resolves; between failed attempts wait
 * `backoffDelay`. Rejects with the last attempt's error once attempts or time run out, or at once
 * when `retryable` says no.
 */
export async function retry<T>(fn: (attempt: number) => Promise<T>, options: RetryOptions): Promise<T> {
  check(options);
  const { maxAttempts = Number.POSITIVE_INFINITY, timeoutMs, signal, retryable, onRetry, ref = true, random = Math.random } = options;
  signal?.throwIfAborted();
  const started = Date.now();
  const deadline = timeoutMs === undefined ? Number.POSITIVE_INFINITY : started + timeoutMs;
  // Set once a wait has been cut to end at the deadline: the attempt after it is the last, whatever
  // the clock says (a timer may fire a millisecond before Date.now() reaches the deadline).
  let atDeadline = false;
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (err) {
      if (attempt >= maxAttempts || signal?.aborted || (retryable && !retryable(err))) throw err;
      const now = Date.now();
      if (atDeadline || now >= deadline) throw err;
      let delayMs = backoffDelay(attempt, options, random);
      if (delayMs >= deadline - now) {
        delayMs = deadline - now;
        atDeadline = true;
      }
      await onRetry?.({ error: err, attempt, delayMs, elapsedMs: now - started });
      try {
        await sleep(delayMs, signal, { ref });
      } catch {
        throw err;
      }
    }
  }
}
