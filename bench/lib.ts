/** Shared benchmark plumbing: the row shape and Redis cleanup. */
import { Redis } from 'ioredis';

export interface BenchRow {
  what: string;
  baseline: string;
  stowage: string;
  ratio: string;
  goal: string;
  pass: boolean | null;
  /** Peak RSS, e.g. "baseline 180 MB / stowage 95 MB", or null when not measured. */
  peakRss: string | null;
  raw: Record<string, unknown>;
}

export async function cleanupPrefix(redisUrl: string, prefix: string): Promise<void> {
  const redis = new Redis(redisUrl);
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    cursor = next;
    if (keys.length) await redis.del(...keys);
  } while (cursor !== '0');
  redis.disconnect();
}
