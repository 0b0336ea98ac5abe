/**
 * Every Redis key Stowage itself writes (BullMQ owns the queue keys). All sit under the BullMQ
 * prefix so that a `{hash-tag}` prefix keeps them in one Redis Cluster slot with the queues.
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
  /** Lock serializing updates of one records manifest on stores without conditional writes; `:fence` beside it. */
  manifestLock: (prefix: string, module: string, userId: string) => `${prefix}:stowage:manifest-lock:${module}/${userId}`,
  /** Failure ingestion (src/failures/ingest.ts). */
  failures: {
    /** Accepted failures not yet in Postgres, oldest at the head. */
    pending: (prefix: string) => `${prefix}:stowage:failures:pending`,
    /** Records Postgres refused for their data; kept for inspection, counted as dropped. */
    dead: (prefix: string) => `${prefix}:stowage:failures:dead`,
    /** The writer lease: one writer at a time fleet-wide. */
    writerLease: (prefix: string) => `${prefix}:stowage:failures:writer`,
  },
};

/** The dead-letter job id for a parked job. BullMQ ids may not contain ':'. */
export const parkedJobId = (originQueue: string, jobId: string) => `${originQueue}--${jobId}`;
