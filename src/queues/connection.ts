/** Redis connections for BullMQ and for Stowage's own keys. */
import { Redis, type RedisOptions } from 'ioredis';
import { backoffDelay } from '../retry.js';

/**
 * A connection suitable for BullMQ workers: `maxRetriesPerRequest: null` so blocking commands
 * wait through a Redis restart instead of failing, and a capped reconnect backoff (ioredis owns
 * the reconnect loop; src/retry.ts the formula): 400 ms doubling to 5 s.
 */
export function createRedis(url: string, options: RedisOptions = {}): Redis {
  return new Redis(url, {
    maxRetriesPerRequest: null,
    enableReadyCheck: true,
    retryStrategy: (times) => backoffDelay(times, { delayMs: 400, maxDelayMs: 5_000, jitter: 0 }),
    ...options,
  });
}

/**
 * A connection for producers: fail fast (a bounded number of retries per command) so an
 * application request is not held forever while Redis is away.
 */
export function createProducerRedis(url: string): Redis {
  return createRedis(url, { maxRetriesPerRequest: 3, enableOfflineQueue: true });
}
