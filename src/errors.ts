/**
 * Named errors with stable codes. Code is checked, never message text; `name` survives a process
 * boundary (a job's failedReason, a child process) where `instanceof` does not.
 *
 * The CLI maps a code to an exit status and the HTTP server to a status code, both from ERROR_CODES.
 */

export const ERROR_CODES = {
  STOWAGE_ERR_CONFIG: { exit: 78, http: 500 },
  STOWAGE_ERR_INVALID_PAYLOAD: { exit: 65, http: 400 },
  STOWAGE_ERR_PERMANENT: { exit: 1, http: 422 },
  STOWAGE_ERR_NOT_FOUND: { exit: 1, http: 404 },
  STOWAGE_ERR_UNAUTHORIZED: { exit: 77, http: 401 },
  STOWAGE_ERR_FORBIDDEN: { exit: 77, http: 403 },
  STOWAGE_ERR_UNKNOWN_KIND: { exit: 64, http: 404 },
  STOWAGE_ERR_USAGE: { exit: 64, http: 400 },
  STOWAGE_ERR_JOB_FAILED: { exit: 1, http: 500 },
  STOWAGE_ERR_STORE: { exit: 1, http: 502 },
  /** A bounded resource is full (open event streams): try again later. */
  STOWAGE_ERR_BUSY: { exit: 1, http: 503 },
  /** A caller went over its request or enqueue rate (http.requestsPerMinute, http.enqueuesPerMinute): wait Retry-After. */
  STOWAGE_ERR_RATE_LIMITED: { exit: 1, http: 429 },
  /** Redis, Postgres or the store did not answer (sysexits EX_UNAVAILABLE). */
  STOWAGE_ERR_UNREACHABLE: { exit: 69, http: 503 },
  STOWAGE_ERR_INTERNAL: { exit: 1, http: 500 },
} as const satisfies Record<string, { exit: number; http: number }>;

export type ErrorCode = keyof typeof ERROR_CODES;

export class StowageError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'StowageError';
  }
}

/** A failure that retrying cannot fix: bad input, missing source, refused credentials. Parked at once. */
export class PermanentError extends StowageError {
  constructor(message: string, options?: { cause?: unknown; code?: ErrorCode }) {
    super(options?.code ?? 'STOWAGE_ERR_PERMANENT', message, options);
    this.name = 'PermanentError';
  }
}

/** A payload that does not match its kind's schema. Permanent. */
export class ValidationError extends PermanentError {
  readonly issues: string[];
  constructor(what: string, issues: string[]) {
    super(`invalid ${what}: ${issues.join('; ')}`, { code: 'STOWAGE_ERR_INVALID_PAYLOAD' });
    this.name = 'ValidationError';
    this.issues = issues;
  }

  /**
   * One line per zod issue, `path: message`; `root` names an issue at the top level (no path).
   * Typed structurally so this module needs no zod import.
   */
  static fromZod(
    what: string,
    error: { issues: ReadonlyArray<{ path: ReadonlyArray<PropertyKey>; message: string }> },
    root = what,
  ): ValidationError {
    return new ValidationError(
      what,
      error.issues.map((i) => `${i.path.length ? i.path.map(String).join('.') : root}: ${i.message}`),
    );
  }
}

export class ConfigError extends StowageError {
  readonly problems: string[];
  constructor(problems: string[]) {
    super('STOWAGE_ERR_CONFIG', `invalid configuration: ${problems.join('; ')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

export class NotFoundError extends StowageError {
  constructor(message: string) {
    super('STOWAGE_ERR_NOT_FOUND', message);
    this.name = 'NotFoundError';
  }
}

export class AuthError extends StowageError {
  constructor(message: string, code: 'STOWAGE_ERR_UNAUTHORIZED' | 'STOWAGE_ERR_FORBIDDEN' = 'STOWAGE_ERR_UNAUTHORIZED') {
    super(code, message);
    this.name = 'AuthError';
  }
}

/**
 * A job failed for good and was parked in the dead-letter queue: what `waitFor` (and anything that
 * waits) throws, with why, after how many attempts, and the dead-letter id to redrive or purge.
 */
export class JobParkedError extends StowageError {
  readonly queue: string;
  readonly jobId: string;
  readonly reason: 'permanent' | 'retries_exhausted' | 'stalled';
  readonly attemptsMade: number;
  readonly deadLetterId: string;
  /** ISO time it was parked. */
  readonly parkedAt: string;
  /** The last attempt's error, as data. */
  readonly error: { name: string; code?: string; message: string };
  constructor(
    parked: {
      queue: string;
      jobId: string;
      reason: JobParkedError['reason'];
      attemptsMade: number;
      deadLetterId: string;
      parkedAt: string;
      error: { name: string; code?: string; message: string };
    },
    options?: { cause?: unknown },
  ) {
    super(
      'STOWAGE_ERR_JOB_FAILED',
      `job ${parked.jobId} was parked in the dead-letter queue (${parked.reason}) after ${parked.attemptsMade} attempt${parked.attemptsMade === 1 ? '' : 's'} as ${parked.deadLetterId}: ${parked.error.message}`,
      options,
    );
    this.name = 'JobParkedError';
    this.queue = parked.queue;
    this.jobId = parked.jobId;
    this.reason = parked.reason;
    this.attemptsMade = parked.attemptsMade;
    this.deadLetterId = parked.deadLetterId;
    this.parkedAt = parked.parkedAt;
    this.error = parked.error;
  }
}

/** Error names that mean "do not retry", here or revived from another process (BullMQ's own too). */
export const PERMANENT_ERROR_NAMES: ReadonlySet<string> = new Set(['PermanentError', 'ValidationError', 'UnrecoverableError']);

/** True for errors that must not be retried, whether thrown here or revived from another process. */
export function isPermanent(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  return err instanceof PermanentError || PERMANENT_ERROR_NAMES.has(err.name);
}

/** An error as data: what survives a process boundary (a failed job, a parked job, a log line). */
export interface ErrorData {
  name: string;
  /** A STOWAGE_ERR_* code, when the error had one. */
  code?: ErrorCode;
  message: string;
}

export function errorData(err: unknown): ErrorData {
  const e = err instanceof Error ? err : new Error(String(err));
  const code = (e as { code?: unknown }).code;
  return { name: e.name, ...(typeof code === 'string' && code in ERROR_CODES ? { code: code as ErrorCode } : {}), message: e.message };
}

export function codeOf(err: unknown): ErrorCode {
  if (err instanceof StowageError) return err.code;
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && code in ERROR_CODES ? (code as ErrorCode) : 'STOWAGE_ERR_INTERNAL';
}
