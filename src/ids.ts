/**
 * Validation of the ids and paths that end up in object keys, job ids and file system calls, and of
 * the nesting depth of stored JSON. Shared by the queue contract, config, HTTP and storage, so it
 * belongs to none of those layers.
 */
import { isAbsolute } from 'node:path';
import { z } from 'zod';

/** One path segment: no separators, no `..`, no control characters, bounded length. */
export const safeId = z
  .string()
  .min(1, 'must not be empty')
  .max(128, 'at most 128 characters')
  .refine((s) => !/[/\\]/.test(s), 'must not contain / or \\')
  .refine((s) => !s.includes('..'), 'must not contain ..')
  // biome-ignore lint/suspicious/noControlCharactersInRegex: finding control characters is the point
  .refine((s) => !/[\u0000-\u001f\u007f]/.test(s), 'must not contain control characters')
  .refine((s) => s.trim() === s, 'must not start or end with whitespace');

/** A file system path a worker will open: absolute, bounded, no NUL (used by payloads, config and HTTP). */
export const absolutePath = z
  .string()
  .min(1, 'must not be empty')
  .max(4096, 'at most 4096 characters')
  .refine((p) => isAbsolute(p), 'must be an absolute path')
  .refine((p) => !p.includes('\u0000'), 'must not contain NUL');

/**
 * The names BullMQ gives its own keys under a queue (`{prefix}:{queue}:{name}`: QueueKeys in
 * bullmq's queue-keys.js, plus `metrics`, whose `metrics:completed` / `metrics:failed` keys a job
 * named `metrics` would take for its own `:completed` / `:failed` sub-keys). A job's hash is
 * `{prefix}:{queue}:{jobId}` too, so a job id equal to one of these names reads (or writes) the
 * queue's meta hash, event stream or id counter instead of a job.
 */
export const RESERVED_JOB_IDS: ReadonlySet<string> = new Set([
  'active',
  'completed',
  'de',
  'delayed',
  'events',
  'failed',
  'id',
  'limiter',
  'marker',
  'meta',
  'metrics',
  'paused',
  'pc',
  'prioritized',
  'repeat',
  'stalled',
  'stalled-check',
  'wait',
  'waiting-children',
]);

/** Why `id` cannot be a job id (it names a BullMQ key), or undefined when it can. */
export function reservedJobIdReason(id: string): string | undefined {
  return RESERVED_JOB_IDS.has(id) ? `"${id}" is reserved: BullMQ keeps its own "${id}" key under every queue` : undefined;
}

/**
 * A job id a caller may choose: a safeId that is no BullMQ key name and holds no `:`. BullMQ refuses
 * most ids with `:` itself; the ones it lets through (three parts) are its own Job Scheduler ids
 * (`repeat:{scheduler}:{millis}`), which no caller should impersonate.
 */
export const jobId = safeId
  .refine((s) => !RESERVED_JOB_IDS.has(s), { error: (issue) => reservedJobIdReason(String(issue.input)) ?? 'is reserved' })
  .refine((s) => !s.includes(':'), 'must not contain ":" (BullMQ keeps ids with ":" for its Job Schedulers)');

/**
 * Whether `id` may name a job when reading one: not a BullMQ key name, and either without `:` or a
 * Job Scheduler's `repeat:{scheduler}:{millis}`. Anything else with `:` names another key (a
 * deduplication key `de:…`, metrics, a job's `:logs` or `:lock`): reading it as a job hash answers a
 * WRONGTYPE error or a job made of another key's fields.
 */
export function isReadableJobId(id: string): boolean {
  if (!id || RESERVED_JOB_IDS.has(id)) return false;
  return !id.includes(':') || /^repeat:[^:]+:\d+$/.test(id);
}

/**
 * How deep arrays and objects may nest in a stored JSON value (a record, a payload's data). Deeper
 * values are refused at the door: canonical JSON, hashing and every reader walk them recursively,
 * so thousands of levels would overflow the stack (a 500) wherever they went.
 */
export const MAX_JSON_DEPTH = 64;

/**
 * Whether `value` nests arrays and objects more than `limit` levels deep (`{}` and `[]` are one
 * level, a scalar none). Walked with an explicit stack, so any depth is measured without recursing,
 * and it stops at the first value past the limit.
 */
export function nestsDeeperThan(value: unknown, limit: number): boolean {
  const stack: [unknown, number][] = [[value, 0]];
  while (stack.length) {
    const [v, depth] = stack.pop()!;
    if (v === null || typeof v !== 'object') continue;
    if (depth + 1 > limit) return true;
    for (const child of Array.isArray(v) ? v : Object.values(v)) {
      if (child !== null && typeof child === 'object') stack.push([child, depth + 1]);
    }
  }
  return false;
}
