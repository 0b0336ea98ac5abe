/** Domain events: their names and shapes. Written to a Redis stream (see redisKeys.events). */
export interface DomainEvents {
  artifact_uploaded: {
    key: string;
    artifactUrl: string;
    size: number;
    sha256: string;
    filename: string;
    downloadReady: true;
    userId: string;
    projectId: string;
    versionId: string;
    buildId?: string;
  };
  artifact_size_warning: {
    key: string;
    size: number;
    limit: number;
    warnAt: number;
    skipped: boolean;
    suggestion: string;
    userId: string;
    projectId: string;
    versionId: string;
    buildId?: string;
  };
  backup_completed: { set: string; key: string; size: number; sha256: string; databases: number };
  export_completed: { module: string; userId: string; key: string; records: number };
  aggregation_completed: { key: string | null; patterns: number; status: string };
  cleanup_completed: { mode: string; scanned: number; deleted: number; bytesFreed: number; dryRun: boolean };
  /** `userId`: the payload's, when it has one (a `user` token reads its own jobs' events only). */
  job_parked: { queue: string; jobId: string; name: string; reason: string; attempts: number; userId?: string };
  /**
   * A job that carries a correlation id completed (jobs without one emit nothing here: their
   * completion is on their queue's BullMQ stream, which GET /v1/jobs/:kind/:id/events relays).
   */
  job_completed: { queue: string; jobId: string; name: string; result: unknown; userId?: string };
  job_redriven: { queue: string; jobId: string; automatic: boolean };
}
export type DomainEventType = keyof DomainEvents;

export interface DomainEvent<T extends DomainEventType = DomainEventType> {
  /** Stream entry id (`<ms>-<seq>`). */
  id: string;
  type: T;
  at: string;
  /** Origin of the event: queue and job id, when a job emitted it. */
  queue?: string;
  jobId?: string;
  /** The job's correlation id (enqueue option `correlationId`), when it has one: GET /v1/events?correlationId= follows it. */
  correlationId?: string;
  data: DomainEvents[T];
}
