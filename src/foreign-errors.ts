/**
 * The text of other libraries' errors that Stowage must recognise. They carry no name or code to
 * go by, so matching the message is the only way; every such match lives here, named. Stowage's own
 * errors are data (name and code as fields, src/errors.ts) and are never matched by text.
 */
export const FOREIGN_ERROR_TEXT = {
  /** BullMQ's failedReason for a job that stalled more than maxStalledCount times. */
  bullmqStalled: /stalled more than allowable limit/i,
  /** BullMQ's Job.waitUntilFinished when its ttl passes before the job finishes. */
  bullmqWaitTimedOut: /timed out before finishing/i,
  /** node-pg-migrate when another run holds its lock (it tries the lock, it does not wait). */
  pgMigrateLocked: /Another migration is already running/,
} as const;
