/** Redis connections for BullMQ and for Stowage's own keys. */
import { Redis, type RedisOptions } from 'ioredis';

/**
 * A connection suitable for BullMQ workers: `maxRetriesPerRequest: null` so blocking commands
 * wait through a Redis restart instead of failing, and a capped reconnect backoff.
 */
export function createRedis(url: string, options: RedisOptions = {}): Redis {
  return new Redis(url, {
    maxRetriesPerRequest: null,
    enableReadyCheck: true,
    retryStrategy: (times) => Math.min(200 * 2 ** Math.min(times, 6), 5_000),
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
