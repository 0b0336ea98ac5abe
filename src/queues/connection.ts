/** Redis connections for BullMQ and for Stowage's own keys. */
import { Redis, type RedisOptions } from 'ioredis';
import { StowageError } from '../errors.js';
import { backoffDelay } from '../retry.js';

/** Where an outage is reported: a pino logger, or (default) one line on stderr. */
export interface OutageLog {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

const STDERR_LOG: OutageLog = {
  warn: (obj, msg) => process.stderr.write(`stowage: ${msg} (${(obj as { code?: string }).code ?? 'error'}); retrying\n`),
  info: () => {},
};

/**
 * A connection suitable for BullMQ workers: `maxRetriesPerRequest: null` so blocking commands
 * wait through a Redis restart instead of failing, and a capped reconnect backoff (ioredis owns
 * the reconnect loop; src/retry.ts the formula): 400 ms doubling to 5 s.
 *
 * An outage is one warning when it starts and one line when Redis is back, not ioredis's stack
 * per reconnect attempt ("Unhandled error event" is what ioredis prints with no error listener).
 */
export function createRedis(url: string, options: RedisOptions & { log?: OutageLog } = {}): Redis {
  const { log = STDERR_LOG, ...redisOptions } = options;
  const redis = new Redis(url, {
    maxRetriesPerRequest: null,
    enableReadyCheck: true,
    retryStrategy: (times) => backoffDelay(times, { delayMs: 400, maxDelayMs: 5_000, jitter: 0 }),
    ...redisOptions,
  });
  reportOutages(redis, log);
  return redis;
}

/** One warning per outage on `redis` (and on its duplicates, which BullMQ makes for blocking reads). */
export function reportOutages(redis: Redis, log: OutageLog, outage = { down: new Set<Redis>() }): void {
  // A connection and its duplicates share one outage: the first to fail warns, the last to come back says so.
  const where = redisAddress(redis);
  redis.on('error', (err: NodeJS.ErrnoException) => {
    if (outage.down.has(redis)) return;
    outage.down.add(redis);
    if (outage.down.size === 1)
      log.warn({ redis: where, code: err.code ?? err.name, err: err.message }, `Redis at ${where} is unreachable`);
  });
  const back = () => {
    if (!outage.down.delete(redis)) return;
    if (outage.down.size === 0) log.info({ redis: where }, `Redis at ${where} is reachable again`);
  };
  redis.on('ready', back);
  // Closed for good (shutdown): no longer part of the outage, and nothing to announce.
  redis.on('end', () => outage.down.delete(redis));
  const duplicate = redis.duplicate.bind(redis);
  redis.duplicate = (override?: Partial<RedisOptions>) => {
    const copy = duplicate(override);
    reportOutages(copy, log, outage);
    return copy;
  };
}

function redisAddress(redis: Redis): string {
  const { host, port, path } = redis.options;
  return path ?? `${host ?? '127.0.0.1'}:${port ?? 6379}`;
}

/**
 * A connection for producers: fail fast (a bounded number of retries per command) so an
 * application request is not held forever while Redis is away.
 */
export function createProducerRedis(url: string): Redis {
  return createRedis(url, { maxRetriesPerRequest: 3, enableOfflineQueue: true });
}

/**
 * For one-shot commands (the CLI): connect once, within `timeoutMs`, or throw one line naming the
 * address and the cause, e.g. "Redis at 127.0.0.1:6390 is unreachable (ECONNREFUSED)".
 */
export async function assertRedisReachable(url: string, timeoutMs = 3_000): Promise<void> {
  const probe = new Redis(url, {
    lazyConnect: true,
    connectTimeout: timeoutMs,
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    retryStrategy: () => null,
  });
  let last: NodeJS.ErrnoException | undefined;
  probe.on('error', (err: NodeJS.ErrnoException) => (last = err));
  try {
    await probe.connect();
    await probe.ping();
  } catch (err) {
    const e = last ?? (err as NodeJS.ErrnoException);
    const cause = e.code ?? (/timeout/i.test(e.message) ? 'ETIMEDOUT' : e.message.split('\n')[0]);
    throw new StowageError('STOWAGE_ERR_UNREACHABLE', `Redis at ${redisAddress(probe)} is unreachable (${cause})`);
  } finally {
    probe.disconnect();
  }
}

const CONNECTION_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EPIPE',
]);

/** A lost or refused Redis connection (already reported once per outage by reportOutages), not a job's or command's error. */
export function isConnectionError(err: unknown): boolean {
  const e = err as NodeJS.ErrnoException | undefined;
  return (
    !!e && ((e.code !== undefined && CONNECTION_CODES.has(e.code)) || /^Connection is closed|^Stream isn't writeable/.test(e.message ?? ''))
  );
}
