/**
 * What the scheduler keeps in BullMQ Job Schedulers: the schedules from the config file, plus
 * Stowage's own maintenance schedules. Job kinds add their default schedules here as they land
 * (e.g. the nightly aggregation at 02:00 UTC); a config entry with the same id replaces a default.
 */
import type { Config } from '../config.js';
import { ValidationError } from '../errors.js';
import { DEFAULT_JOB_OPTIONS, isJobKind, JOB_KINDS, parsePayload, type JobKind } from './contract.js';

/** Internal queue for fleet housekeeping (dead-letter auto-redrive). Processed by every worker. */
export const MAINTENANCE_QUEUE = 'maintenance';

export interface DesiredSchedule {
  id: string;
  queue: JobKind | typeof MAINTENANCE_QUEUE;
  jobName: string;
  repeat: { pattern: string; tz: string } | { every: number };
  data: Record<string, unknown>;
}

/** Default schedules per job kind. A config schedule with the same id replaces one; `enabled: false` removes it. */
export const DEFAULT_SCHEDULES: DesiredSchedule[] = [
  // Nightly failure-pattern export (docs/failures.md).
  {
    id: 'failure-aggregation',
    queue: 'aggregation',
    jobName: 'aggregation',
    repeat: { pattern: '0 2 * * *', tz: 'UTC' },
    data: { days: 7, minOccurrences: 3 },
  },
  // Re-upload exports left in AGG_LOCAL_FALLBACK, every 15 minutes.
  {
    id: 'failure-aggregation-retry',
    queue: 'aggregation',
    jobName: 'retry-fallbacks',
    repeat: { pattern: '*/15 * * * *', tz: 'UTC' },
    data: { task: 'retry-fallbacks', max: 100 },
  },
  // Daily retention: orphaned diff packs, the lifecycle rules (enforced on any store) and artifact
  // retention (turned off with STOWAGE_ARTIFACT_RETENTION_ENABLED=false: see desiredSchedules).
  {
    id: 'cleanup-daily',
    queue: 'cleanup',
    jobName: 'cleanup',
    repeat: { pattern: '0 3 * * *', tz: 'UTC' },
    data: { dryRun: false, orphanedPacks: true, enforceLifecycle: true, artifactRetention: true },
  },
];

export function desiredSchedules(config: Config): DesiredSchedule[] {
  const problems: string[] = [];
  const byId = new Map<string, DesiredSchedule>();
  for (const s of DEFAULT_SCHEDULES) byId.set(s.id, s);
  if (!config.artifact.retention.enabled) {
    const daily = byId.get('cleanup-daily')!;
    byId.set(daily.id, { ...daily, data: { ...daily.data, artifactRetention: false } });
  }
  if (config.deadLetter.retryIntervalMs > 0) {
    byId.set('dlq-auto-redrive', {
      id: 'dlq-auto-redrive',
      queue: MAINTENANCE_QUEUE,
      jobName: 'dlq-auto-redrive',
      repeat: { every: config.deadLetter.retryIntervalMs },
      data: {},
    });
  }
  // Each configured backup set's own schedule and its 03:30 UTC retention run.
  for (const s of backupSchedules(config)) byId.set(s.id, s);
  for (const s of config.schedules) {
    if (!isJobKind(s.kind)) {
      problems.push(`schedules.${s.id}.kind: "${s.kind}" is not a job kind (${JOB_KINDS.join(', ')})`);
      continue;
    }
    try {
      parsePayload(s.kind, s.data);
    } catch (err) {
      problems.push(`schedules.${s.id}.data: ${(err as Error).message}`);
      continue;
    }
    if (!s.enabled) {
      byId.delete(s.id);
      continue;
    }
    byId.set(s.id, { id: s.id, queue: s.kind, jobName: s.kind, repeat: { pattern: s.cron, tz: s.tz }, data: s.data });
  }
  if (problems.length) throw new ValidationError('schedules', problems);
  return [...byId.values()];
}

export function scheduleJobOptions(queue: DesiredSchedule['queue']) {
  if (queue === MAINTENANCE_QUEUE) return { attempts: 1, removeOnComplete: { count: 100 }, removeOnFail: { count: 100 } };
  const { attempts, backoff, removeOnComplete, removeOnFail } = DEFAULT_JOB_OPTIONS[queue];
  return {
    ...(attempts !== undefined ? { attempts } : {}),
    ...(backoff !== undefined ? { backoff } : {}),
    ...(removeOnComplete !== undefined ? { removeOnComplete } : {}),
    ...(removeOnFail !== undefined ? { removeOnFail } : {}),
  };
}

/**
 * Job Schedulers for the configured backup sets: each set with a `schedule` gets `backup-{set}`
 * (daily / weekly on Sunday / monthly on the 1st, at `at` UTC), and every set gets
 * `backup-prune-{set}`, its retention, daily at 03:30 UTC. Two backups of one set never overlap:
 * the processor holds a per-set lock (src/backups/lock.ts).
 */
export const BACKUP_PRUNE_CRON = '30 3 * * *';

export function backupCron(every: 'daily' | 'weekly' | 'monthly', at: string): string {
  const [hh, mm] = at.split(':').map(Number) as [number, number];
  const day = every === 'monthly' ? '1' : '*';
  const weekday = every === 'weekly' ? '0' : '*';
  return `${mm} ${hh} ${day} * ${weekday}`;
}

export function backupSchedules(config: Pick<Config, 'backupSets'>): DesiredSchedule[] {
  const out: DesiredSchedule[] = [];
  for (const set of config.backupSets) {
    if (set.schedule) {
      out.push({
        id: `backup-${set.name}`,
        queue: 'backup',
        jobName: 'backup',
        repeat: { pattern: backupCron(set.schedule.every, set.schedule.at), tz: 'UTC' },
        data: { set: set.name },
      });
    }
    out.push({
      id: `backup-prune-${set.name}`,
      queue: 'backup',
      jobName: 'backup-prune',
      repeat: { pattern: BACKUP_PRUNE_CRON, tz: 'UTC' },
      data: { set: set.name, task: 'prune' },
    });
  }
  return out;
}
