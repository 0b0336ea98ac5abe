/**
 * src/retry.ts: the backoff formula and its jitter bounds (random pinned), attempts, the retryable
 * predicate, the onRetry hook, the deadline (the last wait is cut to it), the abort signal, and the
 * fail-fast checks. Waits are a few milliseconds; nothing here needs a service.
 */
import { describe, expect, it } from 'vitest';
import { backoffDelay, retry, sleep, type RetryInfo } from '../src/retry.js';

/** An operation that fails `failures` times with numbered errors, then returns 'ok'. */
function flaky(failures: number) {
  const calls: number[] = [];
  const fn = async (attempt: number) => {
    calls.push(attempt);
    if (calls.length <= failures) throw new Error(`fail ${calls.length}`);
    return 'ok';
  };
  return { fn, calls };
}

describe('backoffDelay', () => {
  it('grows by factor from delayMs and stops at maxDelayMs', () => {
    const full = () => 0; // no jitter taken off
    expect([1, 2, 3, 4, 5, 6].map((n) => backoffDelay(n, { delayMs: 100, maxDelayMs: 1_000 }, full))).toEqual([
      100, 200, 400, 800, 1000, 1000,
    ]);
    expect([1, 2, 3].map((n) => backoffDelay(n, { delayMs: 50, factor: 3 }, full))).toEqual([50, 150, 450]);
    expect([1, 5, 50].map((n) => backoffDelay(n, { delayMs: 500, factor: 1, jitter: 0 }))).toEqual([500, 500, 500]);
  });

  it('takes off at most `jitter` of each wait: [d × (1 − jitter), d]', () => {
    expect(backoffDelay(3, { delayMs: 100, jitter: 0.5 }, () => 0)).toBe(400);
    expect(backoffDelay(3, { delayMs: 100, jitter: 0.5 }, () => 0.5)).toBe(300);
    expect(backoffDelay(3, { delayMs: 100, jitter: 0.5 }, () => 1 - Number.EPSILON)).toBeCloseTo(200, 6);
    expect(backoffDelay(1, { delayMs: 100, jitter: 1 }, () => 0.75)).toBe(25);
    expect(backoffDelay(1, { delayMs: 100, jitter: 0 }, () => 0.75)).toBe(100);
    // With Math.random: always within the bounds.
    for (let i = 0; i < 1_000; i++) {
      const d = backoffDelay(2, { delayMs: 100, jitter: 0.6 });
      expect(d).toBeGreaterThanOrEqual(80);
      expect(d).toBeLessThanOrEqual(200);
    }
  });

  it('stays finite: 0 stays 0 after any number of retries, no cap still fits a timer', () => {
    expect(backoffDelay(5_000, { delayMs: 0, jitter: 0 })).toBe(0);
    expect(backoffDelay(5_000, { delayMs: 100, jitter: 0 })).toBe(2 ** 31 - 1);
    expect(backoffDelay(5_000, { delayMs: 100, maxDelayMs: 10_000, jitter: 0 })).toBe(10_000);
  });
});

describe('retry', () => {
  it('retries until the operation succeeds, passing the attempt number', async () => {
    const { fn, calls } = flaky(3);
    expect(await retry(fn, { maxAttempts: 5, delayMs: 1 })).toBe('ok');
    expect(calls).toEqual([1, 2, 3, 4]);
  });

  it('stops after maxAttempts with the last error', async () => {
    const { fn, calls } = flaky(10);
    await expect(retry(fn, { maxAttempts: 3, delayMs: 1 })).rejects.toThrow('fail 3');
    expect(calls).toEqual([1, 2, 3]);
    const once = flaky(10);
    await expect(retry(once.fn, { maxAttempts: 1 })).rejects.toThrow('fail 1');
    expect(once.calls).toEqual([1]);
  });

  it('does not retry what the predicate refuses', async () => {
    class Permanent extends Error {}
    let calls = 0;
    const fn = async () => {
      calls++;
      throw calls === 1 ? new Error('transient') : new Permanent('permanent');
    };
    await expect(retry(fn, { maxAttempts: 10, delayMs: 1, retryable: (err) => !(err instanceof Permanent) })).rejects.toBeInstanceOf(
      Permanent,
    );
    expect(calls).toBe(2);
    // A predicate that throws ends the retry with what it threw.
    await expect(
      retry(flaky(5).fn, {
        maxAttempts: 10,
        delayMs: 1,
        retryable: () => {
          throw new Error('refused');
        },
      }),
    ).rejects.toThrow('refused');
  });

  it('calls onRetry before each wait with the failed attempt and the wait, and awaits it', async () => {
    const seen: RetryInfo[] = [];
    const order: string[] = [];
    const { fn } = flaky(3);
    await retry(
      async (attempt) => {
        order.push(`try ${attempt}`);
        return fn(attempt);
      },
      {
        maxAttempts: 5,
        delayMs: 2,
        jitter: 0.5,
        random: () => 0.5,
        onRetry: async (info) => {
          seen.push(info);
          await sleep(1);
          order.push(`hook ${info.attempt}`);
        },
      },
    );
    expect(seen.map((i) => [i.attempt, i.delayMs, (i.error as Error).message])).toEqual([
      [1, 1.5, 'fail 1'],
      [2, 3, 'fail 2'],
      [3, 6, 'fail 3'],
    ]);
    expect(seen.every((i) => i.elapsedMs >= 0)).toBe(true);
    expect(order).toEqual(['try 1', 'hook 1', 'try 2', 'hook 2', 'try 3', 'hook 3', 'try 4']);
    // A hook that throws ends the retry with its error.
    await expect(
      retry(flaky(5).fn, {
        maxAttempts: 10,
        delayMs: 1,
        onRetry: () => {
          throw new Error('hook failed');
        },
      }),
    ).rejects.toThrow('hook failed');
  });

  it('gives up at the deadline, cutting the last wait to end at it', async () => {
    const waits: number[] = [];
    const started = Date.now();
    const { fn, calls } = flaky(Number.POSITIVE_INFINITY);
    await expect(
      retry(fn, {
        maxAttempts: Number.POSITIVE_INFINITY,
        timeoutMs: 200,
        delayMs: 45,
        factor: 1,
        jitter: 0,
        onRetry: (i) => void waits.push(i.delayMs),
      }),
    ).rejects.toThrow(/^fail \d+$/);
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(195);
    expect(elapsed).toBeLessThan(1_000);
    // Full 45 ms waits (four on an idle machine, fewer if the event loop stalls), then one cut to what
    // is left of the 200 ms, then one last try at the deadline. Timers may fire a millisecond early
    // or late, so the cut wait is bounded, not pinned.
    const last = waits.at(-1)!;
    expect(waits.slice(0, -1).every((w) => w === 45)).toBe(true);
    expect(waits.length).toBeGreaterThanOrEqual(2);
    expect(waits.length).toBeLessThanOrEqual(5);
    expect(last).toBeLessThanOrEqual(45);
    expect(waits.reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(200);
    expect(calls).toHaveLength(waits.length + 1);
  });

  it('timeoutMs alone bounds it; attempts bound it before the deadline', async () => {
    const slow = flaky(Number.POSITIVE_INFINITY);
    await expect(retry(slow.fn, { timeoutMs: 20, delayMs: 5, factor: 1 })).rejects.toThrow();
    expect(slow.calls.length).toBeGreaterThan(1);
    const few = flaky(Number.POSITIVE_INFINITY);
    const started = Date.now();
    await expect(retry(few.fn, { maxAttempts: 2, timeoutMs: 60_000, delayMs: 1 })).rejects.toThrow('fail 2');
    expect(Date.now() - started).toBeLessThan(1_000);
  });

  it('an abort during a wait ends it at once with the last error; an abort before the start rejects with the reason', async () => {
    const controller = new AbortController();
    const { fn, calls } = flaky(Number.POSITIVE_INFINITY);
    const started = Date.now();
    const run = retry(fn, { maxAttempts: 10, delayMs: 10_000, signal: controller.signal });
    setTimeout(() => controller.abort(new Error('shutting down')), 20);
    await expect(run).rejects.toThrow('fail 1');
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(calls).toEqual([1]);

    const { fn: never, calls: none } = flaky(0);
    await expect(retry(never, { maxAttempts: 3, signal: AbortSignal.abort(new Error('already')) })).rejects.toThrow('already');
    expect(none).toEqual([]);

    // Aborted while an attempt runs: that attempt's failure is the last.
    const mid = new AbortController();
    let n = 0;
    await expect(
      retry(
        async () => {
          n++;
          mid.abort();
          throw new Error('failed while aborting');
        },
        { maxAttempts: 5, delayMs: 1, signal: mid.signal },
      ),
    ).rejects.toThrow('failed while aborting');
    expect(n).toBe(1);
  });

  it('refuses options that cannot work', async () => {
    const ok = async () => 1;
    await expect(retry(ok, {})).rejects.toThrow(/maxAttempts, timeoutMs or both/);
    await expect(retry(ok, { maxAttempts: 0 })).rejects.toThrow(/maxAttempts must be at least 1/);
    await expect(retry(ok, { maxAttempts: 3, jitter: 1.5 })).rejects.toThrow(/jitter/);
    await expect(retry(ok, { maxAttempts: 3, factor: 0.5 })).rejects.toThrow(/factor/);
    await expect(retry(ok, { timeoutMs: -1 })).rejects.toThrow(/timeoutMs/);
    await expect(retry(ok, { maxAttempts: Number.POSITIVE_INFINITY })).resolves.toBe(1);
  });
});

describe('sleep', () => {
  it('waits, and rejects with an AbortError when aborted', async () => {
    const started = Date.now();
    await sleep(20);
    expect(Date.now() - started).toBeGreaterThanOrEqual(15);
    const controller = new AbortController();
    const waiting = sleep(10_000, controller.signal, { ref: false });
    controller.abort();
    await expect(waiting).rejects.toMatchObject({ name: 'AbortError' });
    await expect(sleep(10, AbortSignal.abort())).rejects.toMatchObject({ name: 'AbortError' });
  });
});
