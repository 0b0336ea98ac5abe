/** The record a parked job carries in the dead-letter queue. */
export interface ParkedJob {
  originQueue: string;
  originJobId: string;
  name: string;
  payload: unknown;
  error: { message: string; name: string; stack?: string; code?: string };
  attemptsMade: number;
  /** The origin job's retry options, reused when it is redriven. */
  opts: { attempts?: number; backoff?: unknown; priority?: number };
  /** Automatic redrives already spent on this job. */
  redrives: number;
  timestamps: { created: number; processed?: number; failed?: number; parked: number };
  /** Why it was parked: a permanent error, retries spent, or stalled too often. */
  reason: 'permanent' | 'retries_exhausted' | 'stalled';
}
