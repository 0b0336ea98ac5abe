/**
 * Per-caller rate limits, counted in Redis so every http process shares them: a general limit on
 * requests (http.requestsPerMinute) and a tighter one on enqueues (http.enqueuesPerMinute), over
 * fixed one-minute windows (@fastify/rate-limit's Redis store). The caller is who authenticated
 * (a token's tenant and user, the basic-auth user), else the client address (request.ip, which
 * honours http.trustProxy). A request over a limit gets 429 STOWAGE_ERR_RATE_LIMITED with
 * Retry-After, before its body is read.
 *
 * `app.limitRate` runs after authentication, from the API's and the board's onRequest hooks
 * (server.ts, board.ts); probes, /metrics and /openapi.json do not call it. When Redis does not
 * answer within LIMIT_TIMEOUT_MS the request is let through (logged): the limiter must not turn a
 * Redis outage into hung requests on routes that do not need Redis.
 */
import fastifyRateLimit, { normalizeIP } from '@fastify/rate-limit';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import type { Redis } from 'ioredis';
import { StowageError } from '../errors.js';

/** Routes that enqueue jobs (`METHOD url` as registered): they count against both limits. */
export const ENQUEUE_ROUTES: ReadonlySet<string> = new Set([
  'POST /v1/jobs/:kind',
  'POST /api/v1/records/:module',
  'POST /v1/records/:module',
  'POST /api/backups/now',
  'POST /api/dead-letters/groups/:signature/redrive',
]);

const WINDOW_MS = 60_000;
/** Longest a limit check waits for Redis before letting the request through. */
const LIMIT_TIMEOUT_MS = 1_000;
/** At most one "limiter skipped" warning this often. */
const WARN_EVERY_MS = 60_000;

export interface RateLimitOptions {
  redis: Redis;
  /** config.prefix: the counters live at `<prefix>:stowage:rate-limit:<limit>:<caller>`. */
  prefix: string;
  /** 0 = no limit. */
  requestsPerMinute: number;
  /** 0 = no limit. */
  enqueuesPerMinute: number;
}

declare module 'fastify' {
  interface FastifyInstance {
    /** Count this request against its caller's limits; throws STOWAGE_ERR_RATE_LIMITED (429, Retry-After set) when over one. */
    limitRate(req: FastifyRequest, reply: FastifyReply): Promise<void>;
  }
}

type Check = ReturnType<FastifyInstance['createRateLimit']>;

interface Limit {
  name: 'requests' | 'enqueues';
  setting: string;
  max: number;
  check: Check;
}

/** The key a caller's requests are counted under. */
export function callerKey(req: FastifyRequest): string {
  const c = req.caller;
  if (c && c.via !== 'open') return c.via === 'basic' ? `basic:${c.userId}` : `token:${JSON.stringify([c.tenant, c.userId])}`;
  // No auth configured (every caller is the same anonymous admin), or no caller: the client address.
  return `ip:${normalizeIP(req.ip)}`;
}

const describeCaller = (req: FastifyRequest) =>
  req.caller && req.caller.via !== 'open' ? `${req.caller.role} "${req.caller.userId}"` : `client ${req.ip}`;

export const rateLimitPlugin = fp<RateLimitOptions>(
  async (app, opts) => {
    const limits: Limit[] = [];
    // One @fastify/rate-limit per limit, each in its own scope: its store's key space is fixed when
    // it is registered, and a store made for options instead shares one key space with every other.
    const add = async (name: Limit['name'], setting: string, max: number) => {
      if (max <= 0) return;
      await app.register(async (scope) => {
        await scope.register(fastifyRateLimit, {
          global: false,
          redis: opts.redis,
          nameSpace: `${opts.prefix}:stowage:rate-limit:${name}:`,
          max,
          timeWindow: WINDOW_MS,
          keyGenerator: callerKey,
          // A Redis error lets the request through (see the file comment); a hang is bounded below.
          skipOnError: true,
        });
        limits.push({ name, setting, max, check: scope.createRateLimit() });
      });
    };
    await add('requests', 'http.requestsPerMinute (STOWAGE_HTTP_REQUESTS_PER_MINUTE)', opts.requestsPerMinute);
    await add('enqueues', 'http.enqueuesPerMinute (STOWAGE_HTTP_ENQUEUES_PER_MINUTE)', opts.enqueuesPerMinute);

    let warnedAt = 0;
    const withinTime = async (check: Check, req: FastifyRequest) => {
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<undefined>((resolve) => {
        timer = setTimeout(() => resolve(undefined), LIMIT_TIMEOUT_MS);
      });
      try {
        const result = await Promise.race([check(req), late]);
        if (!result && Date.now() - warnedAt > WARN_EVERY_MS) {
          warnedAt = Date.now();
          req.log.warn({ timeoutMs: LIMIT_TIMEOUT_MS }, 'rate limit not checked: Redis did not answer in time; requests are let through');
        }
        return result;
      } finally {
        clearTimeout(timer);
      }
    };

    app.decorate('limitRate', async (req: FastifyRequest, reply: FastifyReply) => {
      const route = `${req.method} ${req.routeOptions.url ?? ''}`;
      for (const limit of limits) {
        if (limit.name === 'enqueues' && !ENQUEUE_ROUTES.has(route)) continue;
        const result = await withinTime(limit.check, req);
        if (!result || result.isAllowed || !result.isExceeded) continue;
        const retryAfter = Math.max(1, result.ttlInSeconds);
        reply.headers({
          'retry-after': String(retryAfter),
          'x-ratelimit-limit': String(limit.max),
          'x-ratelimit-remaining': '0',
          'x-ratelimit-reset': String(retryAfter),
        });
        req.log.info(
          { code: 'STOWAGE_ERR_RATE_LIMITED', limit: limit.name, key: result.key },
          'request refused: caller over its rate limit',
        );
        const what = limit.name === 'enqueues' ? 'enqueues' : 'requests';
        throw new StowageError(
          'STOWAGE_ERR_RATE_LIMITED',
          `too many ${what}: ${describeCaller(req)} may make at most ${limit.max} ${what} a minute (${limit.setting}); retry in ${retryAfter} s`,
        );
      }
    });
  },
  { name: 'stowage-rate-limit', fastify: '5.x' },
);
