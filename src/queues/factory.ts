/**
 * The one place a BullMQ Queue is made, so every queue carries its kind's types: the payload a
 * producer puts in (the worker validates it again) and the result its processor returns.
 *
 * Job names are `string`, not the kind: schedules name their jobs (`retry-fallbacks`,
 * `backup-prune`), and a redrive keeps the parked job's name.
 */
import { Queue, type DefaultJobOptions } from 'bullmq';
import type { Redis } from 'ioredis';
import { DEFAULT_JOB_OPTIONS, isJobKind, type JobKind, type Payload, type Result } from './contract.js';
import { queuePrefix } from './keys.js';
import { MAINTENANCE_QUEUE } from './schedules.js';

/** Where a queue lives: a shared connection (the queue does not close it) and the key prefix (STOWAGE_PREFIX). */
export interface QueueConnection {
  connection: Redis;
  prefix: string;
}

/**
 * A BullMQ Queue of data `D` and result `R`, with the parameters BullMQ derives from the first ones
 * given too: derived from a generic kind's types they would stay unresolved (`add` would take nothing).
 */
export type TypedQueue<D, R> = Queue<D, R, string, D, R, string>;

/**
 * The queue of one kind: what a producer adds is the validated payload (defaults applied). Schedules
 * and redrives add by name (openQueueByName); the worker validates every job whoever added it.
 */
export type KindQueue<K extends JobKind> = TypedQueue<Payload<K>, Result<K>>;

export interface OpenQueueOptions {
  /**
   * Give jobs added through this queue the queue's default job options (a kind's DEFAULT_JOB_OPTIONS:
   * attempts, backoff, history). Default true. The HTTP role's queues have none: Bull Board adds
   * jobs with the options it is given.
   */
  jobDefaults?: boolean;
}

/** Open the queue of `kind`. */
export function openQueue<K extends JobKind>(kind: K, at: QueueConnection, options: OpenQueueOptions = {}): KindQueue<K> {
  return createQueue<Payload<K>, Result<K>>(kind, at, options.jobDefaults === false ? undefined : DEFAULT_JOB_OPTIONS[kind]);
}

/** Maintenance jobs carry no data; `dlq-auto-redrive` is the only one so far. */
export type MaintenanceData = Record<string, never>;
/** What `dlq-auto-redrive` returns: parked jobs redriven, and skipped (a job of that id is still in its origin queue). */
export type MaintenanceResult = { redriven: number; skipped: number };
export type MaintenanceQueue = TypedQueue<MaintenanceData, MaintenanceResult>;

/** Open the maintenance queue (the scheduler and the board write to it; every worker processes it). */
export function openMaintenanceQueue(at: QueueConnection): MaintenanceQueue {
  return createQueue<MaintenanceData, MaintenanceResult>(MAINTENANCE_QUEUE, at);
}

/**
 * A queue whose name is known only at run time: its jobs' data is `unknown` here, checked elsewhere
 * (a schedule's data by desiredSchedules, a parked job's payload by the worker it is redriven to).
 */
export type QueueByName = TypedQueue<unknown, unknown>;

/** Open a queue by name; a kind's queue gets the kind's DEFAULT_JOB_OPTIONS, as openQueue gives it. */
export function openQueueByName(name: string, at: QueueConnection): QueueByName {
  return createQueue(name, at, isJobKind(name) ? DEFAULT_JOB_OPTIONS[name] : undefined);
}

/**
 * The one `new Queue`: typed by the helpers above, and by openDeadLetterQueue (dead-letter.ts,
 * beside ParkedJob). Data and result default to `unknown`, never `any`.
 */
export function createQueue<Data = unknown, Res = unknown>(
  name: string,
  at: QueueConnection,
  defaultJobOptions?: DefaultJobOptions,
): TypedQueue<Data, Res> {
  const queue = new Queue<Data, Res, string, Data, Res, string>(name, {
    connection: at.connection,
    // On Redis Cluster, one hash tag per queue (keys.ts).
    prefix: queuePrefix(at.prefix, name, at.connection.isCluster),
    ...(defaultJobOptions ? { defaultJobOptions } : {}),
  });
  // A queue re-emits its connection's errors; with no listener BullMQ prints each one's stack. The
  // connection reports an outage once (connection.ts); a command's own error reaches its caller.
  queue.on('error', () => {});
  return queue;
}
