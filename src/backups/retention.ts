/**
 * Backup retention with restic's `forget` semantics, as a pure function.
 *
 * - Only completed, verified backups are counted (and only they can be deleted by the policy);
 *   anything else is reported as `ignored` and left alone.
 * - Backups are walked newest first. `keepLast` keeps the N newest. `keepDaily`/`keepWeekly`/
 *   `keepMonthly` each keep the newest backup of the N most recent days / ISO weeks / months that
 *   have a backup (UTC), as restic does: a bucket counts only when a backup falls in it.
 * - `keepWithinDays` keeps every backup taken less than that many days before the newest backup
 *   (restic measures from the latest snapshot, not from now, so a stalled schedule deletes nothing
 *   more). 0 means keep forever.
 * - A set that names no policy gets DEFAULT_RETENTION (seed 004): 90 days, and at least the 3 newest.
 * - The newest backup is never deleted, whatever the policy.
 * - A policy that keeps nothing (every rule absent or 0, and no keepWithinDays) is refused.
 */
import { PermanentError } from '../errors.js';

export interface RetentionPolicy {
  keepLast?: number | undefined;
  keepDaily?: number | undefined;
  keepWeekly?: number | undefined;
  keepMonthly?: number | undefined;
  /** Keep everything within this many days of the newest backup; 0 = forever. */
  keepWithinDays?: number | undefined;
}

export interface RetentionCandidate {
  key: string;
  createdAt: Date;
  status: string;
  verified: boolean;
}

export interface RetentionDecision<T extends RetentionCandidate = RetentionCandidate> {
  backup: T;
  action: 'keep' | 'delete' | 'ignore';
  /** Why, e.g. `last 1/3`, `daily 2026-01-08 (2/7)`, `newest`, `within 30d`, `no rule keeps it`. */
  reasons: string[];
}

export const DEFAULT_KEEP_LAST = 3;
export const DEFAULT_KEEP_WITHIN_DAYS = 90;
/** A backup set's retention when its configuration names none (config.ts has the same default). */
export const DEFAULT_RETENTION: Readonly<RetentionPolicy> = { keepLast: DEFAULT_KEEP_LAST, keepWithinDays: DEFAULT_KEEP_WITHIN_DAYS };

/** Throws PermanentError on an empty or malformed policy. */
export function validateRetentionPolicy(policy: RetentionPolicy): void {
  for (const [name, value] of Object.entries(policy)) {
    if (value === undefined) continue;
    if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || (name !== 'keepWithinDays' && !Number.isInteger(value))) {
      throw new PermanentError(`retention policy: ${name} must be a non-negative ${name === 'keepWithinDays' ? 'number' : 'integer'}`);
    }
  }
  const counts = [policy.keepLast, policy.keepDaily, policy.keepWeekly, policy.keepMonthly].some((n) => (n ?? 0) > 0);
  if (!counts && policy.keepWithinDays === undefined) {
    throw new PermanentError('retention policy is empty: it would delete every backup but the newest; set keepLast or another rule');
  }
}

const pad = (n: number, w = 2) => String(n).padStart(w, '0');

function dayBucket(d: Date): string {
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
}

/** ISO 8601 week, UTC: `2026-W02`. */
function weekBucket(d: Date): string {
  const t = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
  const dayNum = t.getUTCDay() || 7; // Monday 1 … Sunday 7
  t.setUTCDate(t.getUTCDate() + 4 - dayNum); // the Thursday of this week decides its year
  const yearStart = Date.UTC(t.getUTCFullYear(), 0, 1);
  const week = Math.ceil(((t.getTime() - yearStart) / 86_400_000 + 1) / 7);
  return `${t.getUTCFullYear()}-W${pad(week)}`;
}

function monthBucket(d: Date): string {
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}`;
}

/**
 * Decide for every backup whether it is kept or deleted. Pure: same input, same output; the
 * result is ordered newest first (ties broken by key) and covers every input backup.
 */
export function applyRetentionPolicy<T extends RetentionCandidate>(backups: readonly T[], policy: RetentionPolicy): RetentionDecision<T>[] {
  validateRetentionPolicy(policy);
  const sorted = [...backups].sort((a, b) => b.createdAt.getTime() - a.createdAt.getTime() || (a.key < b.key ? 1 : a.key > b.key ? -1 : 0));
  const counted = sorted.filter((b) => b.status === 'completed' && b.verified);
  const newest = counted[0];

  const buckets: { name: string; limit: number; of: (d: Date) => string; seen: number; last: string | null }[] = [
    { name: 'daily', limit: policy.keepDaily ?? 0, of: dayBucket, seen: 0, last: null },
    { name: 'weekly', limit: policy.keepWeekly ?? 0, of: weekBucket, seen: 0, last: null },
    { name: 'monthly', limit: policy.keepMonthly ?? 0, of: monthBucket, seen: 0, last: null },
  ];
  const keepLast = policy.keepLast ?? 0;
  const withinMs = policy.keepWithinDays === undefined ? null : policy.keepWithinDays * 86_400_000;

  const decisions = new Map<T, RetentionDecision<T>>();
  counted.forEach((b, index) => {
    const reasons: string[] = [];
    if (b === newest) reasons.push('newest');
    if (index < keepLast) reasons.push(`last ${index + 1}/${keepLast}`);
    for (const bucket of buckets) {
      if (bucket.seen >= bucket.limit) continue;
      const id = bucket.of(b.createdAt);
      if (id !== bucket.last) {
        bucket.last = id;
        bucket.seen += 1;
        reasons.push(`${bucket.name} ${id} (${bucket.seen}/${bucket.limit})`);
      }
    }
    if (withinMs !== null) {
      if (withinMs === 0) reasons.push('within forever (keepWithinDays 0)');
      else if (newest && newest.createdAt.getTime() - b.createdAt.getTime() < withinMs)
        reasons.push(`within ${policy.keepWithinDays}d of newest`);
    }
    decisions.set(b, { backup: b, action: reasons.length ? 'keep' : 'delete', reasons: reasons.length ? reasons : ['no rule keeps it'] });
  });

  return sorted.map(
    (b) =>
      decisions.get(b) ?? { backup: b, action: 'ignore', reasons: [`not counted: status ${b.status}${b.verified ? '' : ', unverified'}`] },
  );
}
