/** Domain events on a Redis stream: emit with XADD (length bounded), read with XRANGE / XREAD. */
import type { Redis } from 'ioredis';
import type { DomainEvent, DomainEvents, DomainEventType } from './events.js';
import { redisKeys } from './keys.js';

export interface EventOrigin {
  queue?: string;
  jobId?: string;
  /** The emitting job's correlation id: a field of the entry, so following one costs no lookup. */
  correlationId?: string | undefined;
}

export interface EventStream {
  emit<T extends DomainEventType>(type: T, data: DomainEvents[T], origin?: EventOrigin): Promise<string>;
  /** Events after `afterId` (exclusive; '0' for the start) up to `until` (inclusive; default '+'), oldest first. */
  read(options?: { afterId?: string; until?: string; count?: number }): Promise<DomainEvent[]>;
  /** Block up to `blockMs` for events after `afterId` ('$' for only new ones). */
  follow(afterId: string, blockMs: number): Promise<DomainEvent[]>;
}

/**
 * The newest entry's id of a stream ('0-0' when empty). A reader started from it rather than from
 * '$' misses nothing that lands before its first XREAD (BullMQ's QueueEvents reports ready first).
 */
export async function lastStreamId(redis: Redis, key: string): Promise<string> {
  const [entry] = (await redis.xrevrange(key, '+', '-', 'COUNT', 1)) as [string, string[]][];
  return entry?.[0] ?? '0-0';
}

export function createEventStream(redis: Redis, prefix: string, maxLen = 10_000): EventStream {
  const key = redisKeys.events(prefix);
  const parse = (entries: [string, string[]][]): DomainEvent[] =>
    entries.map(([id, fields]) => {
      const f: Record<string, string> = {};
      for (let i = 0; i + 1 < fields.length; i += 2) f[fields[i]!] = fields[i + 1]!;
      return {
        id,
        type: f.type as DomainEventType,
        at: f.at ?? '',
        ...(f.queue ? { queue: f.queue } : {}),
        ...(f.jobId ? { jobId: f.jobId } : {}),
        ...(f.correlationId ? { correlationId: f.correlationId } : {}),
        data: JSON.parse(f.data ?? 'null'),
      } as DomainEvent;
    });
  return {
    async emit(type, data, origin = {}) {
      const fields = ['type', type, 'at', new Date().toISOString(), 'data', JSON.stringify(data)];
      if (origin.queue) fields.push('queue', origin.queue);
      if (origin.jobId) fields.push('jobId', origin.jobId);
      if (origin.correlationId) fields.push('correlationId', origin.correlationId);
      // '~' lets Redis trim lazily, which keeps XADD O(1).
      const id = await redis.xadd(key, 'MAXLEN', '~', String(maxLen), '*', ...fields);
      return id!;
    },
    async read({ afterId = '0', until = '+', count = 100 } = {}) {
      const start = afterId === '0' ? '-' : `(${afterId}`;
      return parse((await redis.xrange(key, start, until, 'COUNT', count)) as [string, string[]][]);
    },
    async follow(afterId, blockMs) {
      const res = (await redis.xread('COUNT', 100, 'BLOCK', blockMs, 'STREAMS', key, afterId)) as [string, [string, string[]][]][] | null;
      return res ? parse(res[0]![1]) : [];
    },
  };
}
