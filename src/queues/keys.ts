import { StowageError } from '../errors.js';

/**
 * Every Redis key Stowage itself writes (BullMQ owns the queue keys). All sit under the prefix
 * (`STOWAGE_PREFIX`, never the per-queue form of queuePrefix). Each is read and written on its own
 * (single-key commands and single-key Lua), so on Redis Cluster they may sit in any slot; with a
 * `{hash-tag}` prefix they share the queues' one slot.
 */
export const redisKeys = {
  /** Domain events other services read (XREAD / XREADGROUP). */
  events: (prefix: string) => `${prefix}:stowage:events`,
  /** How many times a parked job has been redriven automatically (expires after 30 days). */
  redrives: (prefix: string, parkedId: string) => `${prefix}:stowage:redrives:${parkedId}`,
  /**
   * A failed attempt's error as data ({name, code, message}), next to the failedReason BullMQ keeps
   * as text; read when the job is parked. Expires with BullMQ's failed-job retention.
   */
  jobError: (prefix: string, queue: string, jobId: string) => `${prefix}:stowage:job-error:${queue}:${jobId}`,
  /**
   * A job's interrupted multipart upload (`name`: which of the job's uploads), resumed by its next
   * attempt (src/storage/resume.ts). Deleted when the upload completes or is aborted; expires a week after its last write.
   */
  uploadState: (prefix: string, queue: string, jobId: string, name: string) => `${prefix}:stowage:upload-state:${queue}:${jobId}:${name}`,
  /** Lock serializing updates of one records manifest on stores without conditional writes; `:fence` beside it. */
  manifestLock: (prefix: string, module: string, userId: string) => `${prefix}:stowage:manifest-lock:${module}/${userId}`,
  /**
   * Failure ingestion (src/failures/ingest.ts). One script moves a batch between these three, so
   * on Redis Cluster (`cluster`) they share a hash tag, `stowage:stowage:{failures}:…`, unless the
   * prefix carries one; on one Redis the names are unchanged.
   */
  failures: {
    /** Accepted failures not yet in Postgres, oldest at the head. */
    pending: (prefix: string, cluster = false) => `${failuresBase(prefix, cluster)}:pending`,
    /** Records Postgres refused for their data; kept for inspection, counted as dropped. */
    dead: (prefix: string, cluster = false) => `${failuresBase(prefix, cluster)}:dead`,
    /** The writer lease: one writer at a time fleet-wide. */
    writerLease: (prefix: string, cluster = false) => `${failuresBase(prefix, cluster)}:writer`,
  },
};

function failuresBase(prefix: string, cluster: boolean): string {
  return cluster && hashTag(prefix) === undefined ? `${prefix}:stowage:{failures}` : `${prefix}:stowage:failures`;
}

/** The dead-letter job id for a parked job. BullMQ ids may not contain ':'. */
export const parkedJobId = (originQueue: string, jobId: string) => `${originQueue}--${jobId}`;

/**
 * The hash tag Redis Cluster hashes a key by: the text between the first `{` and the first `}`
 * after it, if not empty; otherwise (undefined) the whole key.
 */
export function hashTag(key: string): string | undefined {
  const open = key.indexOf('{');
  if (open === -1) return undefined;
  const close = key.indexOf('}', open + 1);
  return close > open + 1 ? key.slice(open + 1, close) : undefined;
}

/**
 * The BullMQ prefix of queue `name` (its keys are `<prefix>:<name>:…`).
 *
 * On one Redis, the configured prefix as it is. On Redis Cluster every key of a queue must hash
 * to one slot (BullMQ's scripts touch several at once): a plain prefix gets one hash tag per queue,
 * `stowage` → `stowage:{build-artifact}`, so the queues spread over the masters while the keys
 * still start with `stowage:` (ACL key patterns such as `~stowage:*` keep matching). A prefix
 * that carries its own `{tag}` is used as it is: every queue in that one slot.
 *
 * Throws, naming the fix, for a prefix that would spread one queue's keys over several slots.
 */
export function queuePrefix(prefix: string, name: string, cluster: boolean): string {
  if (!cluster) return prefix;
  const effective = prefix.includes('{') || prefix.includes('}') ? prefix : `${prefix}:{${name}}`;
  assertOneSlot(effective, name);
  return effective;
}

/**
 * Every key of the queue starts with `<prefix>:<name>:`, so they share a slot exactly when the
 * prefix holds a whole non-empty tag: an unclosed `{`, or `{}`, makes Redis hash each key whole.
 */
function assertOneSlot(prefix: string, name: string): void {
  if (hashTag(prefix) !== undefined) return;
  throw new StowageError(
    'STOWAGE_ERR_CONFIG',
    `STOWAGE_PREFIX "${prefix}" would spread the keys of queue "${name}" over many Redis Cluster slots ` +
      '(its "{" … "}" is not a closed, non-empty hash tag); ' +
      'use a plain prefix (Stowage then adds one hash tag per queue) or one with a whole tag, e.g. "{stowage}"',
  );
}
