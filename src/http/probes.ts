/**
 * Probes, open whatever auth is configured: `GET /healthz` (the process answers; touches nothing)
 * and `GET /readyz` (Redis, Postgres and the bucket answer, each within a bound; 503 when one
 * fails). They say ok/fail and an error code or class only, never a message that may name hosts.
 */
import { HeadBucketCommand } from '@aws-sdk/client-s3';
import type { FastifyPluginAsync } from 'fastify';
import type { Redis } from 'ioredis';
import { z } from 'zod';
import type { Db } from '../db/pool.js';
import { codeOf } from '../errors.js';
import type { Storage } from '../storage/client.js';
import { replies, validatedInHandler } from './schemas.js';

export interface ProbeOptions {
  redis: Redis;
  db: Db;
  /** Made on first use; throws STOWAGE_ERR_CONFIG when storage is not configured (then `skipped`). */
  storage: () => Storage;
  /** Bound on each readiness check, in ms. */
  readyTimeoutMs: number;
}

const health = z.object({ status: z.literal('ok'), uptimeSeconds: z.number().int() });

const readyCheck = z.discriminatedUnion('status', [
  z.object({ status: z.literal('ok'), ms: z.number().int() }),
  z.object({
    status: z.literal('fail'),
    ms: z.number().int(),
    error: z.string().describe('an error code or class, and the HTTP status if any'),
  }),
  z.object({ status: z.literal('skipped'), reason: z.string() }),
]);
type ReadyCheck = z.output<typeof readyCheck>;

const readiness = z.object({
  status: z.enum(['ok', 'fail']),
  checks: z.object({ redis: readyCheck, postgres: readyCheck, storage: readyCheck }),
});

export const probeRoutes: FastifyPluginAsync<ProbeOptions> = async (app, deps) => {
  app.get('/healthz', { schema: { response: replies({ 200: health }) }, ...validatedInHandler }, async () => ({
    status: 'ok' as const,
    uptimeSeconds: Math.round(process.uptime()),
  }));

  let storageMemo: { storage: Storage } | { error: unknown } | undefined;
  const storage = (): { storage: Storage } | { error: unknown } => {
    if (!storageMemo) {
      try {
        storageMemo = { storage: deps.storage() };
      } catch (error) {
        storageMemo = { error };
      }
    }
    return storageMemo;
  };

  app.get('/readyz', { schema: { response: replies({ 200: readiness, 503: readiness }) }, ...validatedInHandler }, async (req, reply) => {
    const timeoutMs = deps.readyTimeoutMs;
    const made = storage();
    const [redis, postgres, objectStore] = await Promise.all([
      timedCheck(() => deps.redis.ping(), timeoutMs),
      timedCheck(() => deps.db.pool.query('SELECT 1'), timeoutMs),
      'storage' in made
        ? timedCheck(
            (signal) => made.storage.client.send(new HeadBucketCommand({ Bucket: made.storage.bucket }), { abortSignal: signal }),
            timeoutMs,
          )
        : codeOf(made.error) === 'STOWAGE_ERR_CONFIG'
          ? ({ status: 'skipped', reason: 'object storage is not configured' } as const)
          : ({ status: 'fail', ms: 0, error: describeFailure(made.error) } as const),
    ]);
    const checks = { redis, postgres, storage: objectStore };
    const ready = Object.values(checks).every((c) => c.status !== 'fail');
    if (!ready) req.log.warn({ checks }, 'not ready');
    return reply.code(ready ? 200 : 503).send({ status: ready ? 'ok' : 'fail', checks } satisfies z.output<typeof readiness>);
  });
};

/** A readiness check that did not answer in time (its message is safe to show: no host, no user). */
class CheckTimeout extends Error {
  constructor(ms: number) {
    super(`timed out after ${ms} ms`);
    this.name = 'CheckTimeout';
  }
}

async function timedCheck(run: (signal: AbortSignal) => Promise<unknown>, timeoutMs: number): Promise<ReadyCheck> {
  const started = performance.now();
  const controller = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      controller.abort();
      reject(new CheckTimeout(timeoutMs));
    }, timeoutMs);
  });
  try {
    await Promise.race([run(controller.signal), timeout]);
    return { status: 'ok', ms: Math.round(performance.now() - started) };
  } catch (err) {
    return { status: 'fail', ms: Math.round(performance.now() - started), error: describeFailure(err) };
  } finally {
    clearTimeout(timer);
  }
}

/**
 * A short, non-revealing reason for an unauthenticated probe response: an error code or class,
 * never a message that may name hosts, users or buckets. The full error goes to the log.
 */
function describeFailure(err: unknown): string {
  if (!(err instanceof Error)) return 'error';
  if (err instanceof CheckTimeout) return err.message;
  const code = (err as { code?: unknown }).code;
  const http = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
  const label = typeof code === 'string' ? code : err.name;
  return http ? `${label} (HTTP ${http})` : label;
}
