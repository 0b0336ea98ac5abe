/**
 * Failure ingestion: what services call (`recordFailures`, also behind `POST /api/v1/failures`) and
 * the writer that moves accepted failures into Postgres.
 *
 * Accepting means one RPUSH of the validated records (ids assigned here) onto a Redis list, the
 * same Redis (AOF on) that already holds every job. Postgres is not on the accept path, so an
 * outage there delays persistence instead of losing data. The writer takes a fleet-wide lease
 * (SET NX PX), reads a batch from the head of the list, inserts it in one statement (idempotent by
 * id), and only then trims the batch off the list, with the trim conditional on still holding the
 * lease (one Lua call). A writer that crashes or loses its lease mid-batch leaves the batch on the
 * list; the next one writes it again and ON CONFLICT makes that a no-op. While Postgres is down the
 * writer backs off and retries, forever. Only a record Postgres rejects for its data (SQLSTATE
 * class 22/23, found by retrying a failed batch one record at a time) or one that no longer parses
 * is moved to a dead list and counted in failure_persist_dropped_total. See docs/failures.md.
 */
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { z } from 'zod';
import type { Config } from '../config.js';
import { insertFailures, type NewFailure } from '../db/failures.js';
import type { Db } from '../db/pool.js';
import { StowageError, ValidationError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import { redisKeys } from '../queues/keys.js';
import { retry, sleep } from '../retry.js';
import { countMatch, countRecovery, type FailureMetrics } from './metrics.js';
import { normalizeErrorCode, normalizeSignature } from './signature.js';

/** The Redis keys of ingestion (defined with every other Stowage key in queues/keys.ts). */
export const failureKeys = redisKeys.failures;

/** At most this many failures per call or request. */
export const MAX_BATCH = 1000;

// Postgres text cannot hold NUL: refused here rather than accepted and then dropped by the writer.
const noNul = (s: string) => !s.includes('\u0000');
const text = (max: number) => z.string().trim().min(1, 'must not be empty').max(max).refine(noNul, 'must not contain NUL');

/** One reported failure, as services send it (snake_case, like the HTTP API). */
export const failureInput = z.strictObject({
  error_code: text(100),
  message: z.string().min(1, 'must not be empty').max(8000).refine(noNul, 'must not contain NUL'),
  category: text(100).nullish(),
  catalog_entry: text(200).nullish(),
  recovery_mode: text(50).nullish(),
  recovery_succeeded: z.boolean().nullish(),
  /** When it happened; default: when it was accepted. */
  occurred_at: z.iso.datetime({ offset: true }).optional(),
});
export type FailureInput = z.input<typeof failureInput>;

const failureArray = z.array(failureInput).min(1, 'at least one failure').max(MAX_BATCH, `at most ${MAX_BATCH} failures per call`);
const failureBatch = z.strictObject({ failures: failureArray });

/**
 * One failure, or a batch (an array or `{ failures: [...] }`). Chosen by shape rather than a zod
 * union, so errors name the field (`failures.3.error_code`) instead of "invalid input".
 */
function parseBatch(input: unknown) {
  if (Array.isArray(input)) return failureArray.safeParse(input);
  if (input && typeof input === 'object' && 'failures' in input) {
    const r = failureBatch.safeParse(input);
    return r.success ? { success: true as const, data: r.data.failures } : r;
  }
  const r = failureInput.safeParse(input);
  return r.success ? { success: true as const, data: [r.data] } : r;
}

/** What sits on the pending list: a complete row, JSON with an ISO date. */
const pendingRecord = z.object({
  id: z.uuid(),
  tenantId: z.string().min(1),
  errorCode: z.string(),
  category: z.string().nullable(),
  message: z.string(),
  signature: z.string(),
  catalogEntry: z.string().nullable(),
  recoveryMode: z.string().nullable(),
  recoverySucceeded: z.boolean().nullable(),
  createdAt: z.iso.datetime({ offset: true }),
});

export interface RecordFailuresDeps {
  redis: Redis;
  config: Pick<Config, 'prefix' | 'failures'>;
  metrics?: FailureMetrics;
}

/**
 * Validate and accept failures for `tenantId`. Resolves once Redis holds them all (one RPUSH, so a
 * batch is accepted whole or not at all); the writer persists them. Throws ValidationError naming
 * each bad field, or STOWAGE_ERR_STORE (HTTP 502: retry later) when the backlog is full.
 */
export async function recordFailures(deps: RecordFailuresDeps, tenantId: string, input: unknown): Promise<{ ids: string[] }> {
  if (!tenantId) throw new ValidationError('failures', ['tenant: must not be empty']);
  const parsed = parseBatch(input);
  if (!parsed.success) {
    throw ValidationError.fromZod('failures', parsed.error, '(body)');
  }
  const now = new Date().toISOString();
  const records = parsed.data.map((f) => ({
    id: randomUUID(),
    tenantId,
    errorCode: normalizeErrorCode(f.error_code),
    category: f.category ?? null,
    message: f.message,
    signature: normalizeSignature(f.message),
    catalogEntry: f.catalog_entry ?? null,
    recoveryMode: f.recovery_mode ?? null,
    recoverySucceeded: f.recovery_succeeded ?? null,
    createdAt: f.occurred_at ? new Date(f.occurred_at).toISOString() : now,
  }));
  const key = failureKeys.pending(deps.config.prefix, deps.redis.isCluster);
  // Backpressure rather than unbounded growth: a refused request was never accepted, so nothing is lost.
  const pending = await deps.redis.llen(key);
  if (pending + records.length > deps.config.failures.maxPending) {
    throw new StowageError('STOWAGE_ERR_STORE', `failure backlog is full (${pending} waiting for Postgres); retry later`);
  }
  await deps.redis.rpush(key, ...records.map((r) => JSON.stringify(r)));
  if (deps.metrics) {
    for (const r of records) {
      countMatch(deps.metrics, r);
      if (r.recoverySucceeded !== null)
        countRecovery(deps.metrics, { errorCode: r.errorCode, recoveryMode: r.recoveryMode, succeeded: r.recoverySucceeded });
    }
  }
  return { ids: records.map((r) => r.id) };
}

/**
 * Only while `token` (ARGV[1]) holds the lease (KEYS[2]): trim `count` (ARGV[2]) items off the head
 * of the pending list (KEYS[1]) and append the dropped records (ARGV[3..]) to the dead list
 * (KEYS[3]). One script, so a crash cannot trim without recording the drops, or record them twice.
 */
const TRIM_IF_LEASED = `
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('LTRIM', KEYS[1], tonumber(ARGV[2]), -1)
  for i = 3, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
  return 1
end
return 0`;

/** Take or extend the lease. */
const TAKE_LEASE = `
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
  return 1
end
return 0`;

export interface FailureWriterOptions {
  redis: Redis;
  db: Db;
  config: Pick<Config, 'prefix' | 'failures'>;
  logger: Logger;
  metrics: FailureMetrics;
  /** Poll interval when the list is empty or another writer holds the lease (ms). Default 500. */
  idleMs?: number;
  /** Longest backoff while Postgres is down (ms). Default 10000. */
  maxBackoffMs?: number;
  /** Lease lifetime (ms); renewed every batch. Default 30000. */
  leaseMs?: number;
}

export interface FailureWriter {
  /** Write what is pending now (if this writer gets the lease); resolves with rows handled. */
  flush(): Promise<number>;
  /** Stop after the batch in flight. */
  close(): Promise<void>;
}

/** SQLSTATE classes 22 (data exception) and 23 (integrity constraint): the record, not the database, is at fault. */
function isDataError(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^(22|23)/.test(code);
}

/** Start the background writer. Several may run (one per HTTP or worker process); one writes at a time. */
/** How long close() waits for an in-flight batch and the lease release. */
const CLOSE_BOUND_MS = 5_000;

export function startFailureWriter(options: FailureWriterOptions): FailureWriter {
  const { redis, db, config, logger, metrics } = options;
  const idleMs = options.idleMs ?? 500;
  const maxBackoffMs = options.maxBackoffMs ?? 10_000;
  const leaseMs = options.leaseMs ?? 30_000;
  const pendingKey = failureKeys.pending(config.prefix, redis.isCluster);
  const deadKey = failureKeys.dead(config.prefix, redis.isCluster);
  const leaseKey = failureKeys.writerLease(config.prefix, redis.isCluster);
  const token = randomUUID();
  const batchSize = config.failures.writerBatchSize;
  // close() ends the idle wait and the backoff at once.
  const stop = new AbortController();

  /** One batch; the number of list items handled (0: nothing to do or no lease). */
  const writeBatch = async (): Promise<number> => {
    const leased = (await redis.eval(TAKE_LEASE, 1, leaseKey, token, String(leaseMs))) === 1;
    if (!leased) return 0;
    const items = await redis.lrange(pendingKey, 0, batchSize - 1);
    if (!items.length) return 0;
    // Drops are recorded with the trim, after every insert of the batch succeeded: a batch that is
    // retried (Postgres went away halfway) must not count its drops twice.
    const drops: { raw: string; reason: string }[] = [];
    const good: { raw: string; row: NewFailure }[] = [];
    for (const raw of items) {
      try {
        const p = pendingRecord.parse(JSON.parse(raw));
        good.push({ raw, row: { ...p, createdAt: new Date(p.createdAt) } });
      } catch (err) {
        drops.push({ raw, reason: `unreadable record: ${(err as Error).message.slice(0, 200)}` });
      }
    }
    try {
      await insertFailures(
        db,
        good.map((g) => g.row),
      );
    } catch (err) {
      if (!isDataError(err)) throw err;
      // Find the records at fault; the rest go in one by one (still idempotent by id).
      for (const g of good) {
        try {
          await insertFailures(db, [g.row]);
        } catch (one) {
          if (!isDataError(one)) throw one;
          drops.push({ raw: g.raw, reason: `${(one as { code?: string }).code}: ${(one as Error).message}` });
        }
      }
    }
    const at = new Date().toISOString();
    const trimmed = await redis.eval(
      TRIM_IF_LEASED,
      3,
      pendingKey,
      leaseKey,
      deadKey,
      token,
      String(items.length),
      ...drops.map((d) => JSON.stringify({ ...d, at })),
    );
    if (trimmed !== 1) {
      logger.warn('failure writer lost its lease mid-batch; the next writer rewrites the batch (no duplicates)');
    } else if (drops.length) {
      metrics.persistDropped.inc(drops.length);
      logger.error(
        { count: drops.length, reasons: drops.map((d) => d.reason).slice(0, 5) },
        'failure records dropped: Postgres refused them (kept in the dead list)',
      );
    }
    return items.length;
  };

  // flush() and the loop share the lease token: run their batches one at a time.
  let chain: Promise<unknown> = Promise.resolve();
  const nextBatch = (): Promise<number> => {
    const run = chain.then(writeBatch, writeBatch);
    chain = run.catch(() => {});
    return run;
  };

  const loop = (async () => {
    while (!stop.signal.aborted) {
      // Redis or Postgres away: 100 ms doubling to maxBackoffMs, until it works (the records wait
      // in Redis meanwhile); only close() ends it. A written batch starts the next at 100 ms again.
      const n = await retry(nextBatch, {
        maxAttempts: Number.POSITIVE_INFINITY,
        delayMs: 100,
        maxDelayMs: maxBackoffMs,
        jitter: 0,
        signal: stop.signal,
        onRetry: ({ error, delayMs }) =>
          logger.warn(
            { err: { message: (error as Error).message, code: (error as { code?: unknown }).code }, retryInMs: delayMs },
            'failure writer: batch not written; retrying',
          ),
      }).catch(() => 0);
      if (n < batchSize) await sleep(idleMs, stop.signal).catch(() => {});
    }
  })();

  return {
    async flush() {
      let total = 0;
      for (;;) {
        const n = await nextBatch();
        total += n;
        if (n < batchSize) return total;
      }
    },
    async close() {
      stop.abort();
      // Bounded: with Redis or Postgres away a batch may wait forever; what it held stays in
      // Redis (records leave the list only after their insert), so nothing is lost by not waiting.
      const bound = (p: Promise<unknown>) => Promise.race([p, new Promise<void>((resolve) => setTimeout(resolve, CLOSE_BOUND_MS).unref())]);
      await bound(loop);
      // Release the lease so another writer takes over at once instead of after its TTL.
      await bound(
        redis
          .eval(`if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`, 1, leaseKey, token)
          .catch(() => {}),
      );
    },
  };
}
