/**
 * Declarative retention rules (config.lifecycleRules) and the store's bucket lifecycle
 * configuration. `applyLifecycle` makes the store's rules equal to the configured ones that a store
 * can express (a literal prefix) and is idempotent: a second run finds nothing to change. Rules
 * with a `*` segment, and every rule on a store without lifecycle support (s3rver), are enforced by
 * `cleanup --enforce-lifecycle` instead (`ruleMatcher` here is what it uses).
 */
import {
  GetBucketLifecycleConfigurationCommand,
  PutBucketLifecycleConfigurationCommand,
  DeleteBucketLifecycleCommand,
  type LifecycleRule as S3LifecycleRule,
} from '@aws-sdk/client-s3';
import { FAILURE_PATTERNS_RULE_ID, type LifecycleRule } from '../config.js';
import type { Storage } from './client.js';
import { notImplementedError, statusOf } from './store-errors.js';

const DAY_MS = 86_400_000;

export const LIFECYCLE_UNSUPPORTED_HINT =
  'run `stowage cleanup --enforce-lifecycle --force` daily (the default cleanup schedule does) to enforce the same rules';

/** True when a rule can be stored as a bucket rule (stores filter by a literal prefix only). */
export function isStoreExpressible(rule: LifecycleRule): boolean {
  return !rule.prefix.includes('*');
}

/** A test for "key is covered by this rule's prefix"; `*` matches one whole path segment. */
export function ruleMatcher(rule: Pick<LifecycleRule, 'prefix'>): (key: string) => boolean {
  if (isStoreExpressible(rule as LifecycleRule)) return (key) => key.startsWith(rule.prefix);
  const source = rule.prefix
    .split('/')
    .map((seg) => (seg === '*' ? '[^/]+' : seg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')))
    .join('/');
  const re = new RegExp(`^${source}`);
  return (key) => re.test(key);
}

/** True when an object written at `lastModified` is past a rule's expiration at `now`. */
export function isExpired(rule: LifecycleRule, lastModified: Date, now: number): boolean {
  return rule.expireDays !== undefined && now - lastModified.getTime() >= rule.expireDays * DAY_MS;
}

/** The literal prefix a rule's matches all share (for scoping a listing). */
export function literalPrefix(rule: Pick<LifecycleRule, 'prefix'>): string {
  const star = rule.prefix.indexOf('*');
  return star === -1 ? rule.prefix : rule.prefix.slice(0, star);
}

/** The S3 rule for a configured one, in a canonical shape (for comparing with the store's). */
export function toS3Rule(rule: LifecycleRule): S3LifecycleRule {
  return {
    ID: rule.id,
    Status: 'Enabled',
    Filter: { Prefix: rule.prefix },
    ...(rule.expireDays !== undefined ? { Expiration: { Days: rule.expireDays } } : {}),
    ...(rule.abortIncompleteMultipartDays !== undefined
      ? { AbortIncompleteMultipartUpload: { DaysAfterInitiation: rule.abortIncompleteMultipartDays } }
      : {}),
  };
}

/** The comparable essence of a store rule (stores echo rules back with varying optional fields). */
function canonical(r: S3LifecycleRule): string {
  return JSON.stringify({
    id: r.ID ?? '',
    status: r.Status ?? '',
    prefix: r.Filter?.Prefix ?? r.Prefix ?? '',
    expireDays: r.Expiration?.Days ?? null,
    abortDays: r.AbortIncompleteMultipartUpload?.DaysAfterInitiation ?? null,
  });
}

/** The store's current rules; [] when the bucket has none. Throws a one-line error when unsupported. */
export async function getStoreLifecycle(storage: Storage): Promise<S3LifecycleRule[]> {
  try {
    const res = await storage.client.send(new GetBucketLifecycleConfigurationCommand({ Bucket: storage.bucket }));
    return res.Rules ?? [];
  } catch (err) {
    const name = (err as Error).name;
    if (name === 'NoSuchLifecycleConfiguration' || (statusOf(err) === 404 && name !== 'NoSuchBucket')) return [];
    throw notImplementedError(err, 'bucket lifecycle rules (GetBucketLifecycleConfiguration)', LIFECYCLE_UNSUPPORTED_HINT);
  }
}

export interface LifecyclePlan {
  /** Rules the store should hold (enabled, literal prefix). */
  desired: S3LifecycleRule[];
  added: string[];
  changed: string[];
  removed: string[];
  /** Enabled rules only cleanup can enforce (a `*` segment). */
  cleanupOnly: LifecycleRule[];
  /** True when the store already matches. */
  unchanged: boolean;
}

export function planLifecycle(rules: LifecycleRule[], current: S3LifecycleRule[]): LifecyclePlan {
  const enabled = rules.filter((r) => r.enabled);
  const desired = enabled.filter(isStoreExpressible).map(toS3Rule);
  const currentById = new Map(current.map((r) => [r.ID ?? '', r]));
  const desiredIds = new Set(desired.map((r) => r.ID!));
  const added = desired.filter((r) => !currentById.has(r.ID!)).map((r) => r.ID!);
  const changed = desired.filter((r) => currentById.has(r.ID!) && canonical(currentById.get(r.ID!)!) !== canonical(r)).map((r) => r.ID!);
  const removed = current.filter((r) => !desiredIds.has(r.ID ?? '')).map((r) => r.ID ?? '(no id)');
  return {
    desired,
    added,
    changed,
    removed,
    cleanupOnly: enabled.filter((r) => !isStoreExpressible(r)),
    unchanged: !added.length && !changed.length && !removed.length,
  };
}

/**
 * Make the store's lifecycle configuration equal the configured rules. With `dryRun` it only
 * plans. A store without lifecycle support fails with a one-line STOWAGE_ERR_STORE.
 */
export async function applyLifecycle(storage: Storage, rules: LifecycleRule[], options: { dryRun?: boolean } = {}): Promise<LifecyclePlan> {
  const plan = planLifecycle(rules, await getStoreLifecycle(storage));
  if (options.dryRun || plan.unchanged) return plan;
  try {
    if (plan.desired.length) {
      await storage.client.send(
        new PutBucketLifecycleConfigurationCommand({ Bucket: storage.bucket, LifecycleConfiguration: { Rules: plan.desired } }),
      );
    } else {
      await storage.client.send(new DeleteBucketLifecycleCommand({ Bucket: storage.bucket }));
    }
  } catch (err) {
    throw notImplementedError(err, 'bucket lifecycle rules (PutBucketLifecycleConfiguration)', LIFECYCLE_UNSUPPORTED_HINT);
  }
  return plan;
}

/**
 * The rules with the aggregation exports' rule expiring after `days` (`lifecycle --apply --days N`,
 * seed 000's `r2_lifecycle.sh --days`): the rule FAILURE_PATTERNS_RULE_ID, else the one on exactly
 * `{uploadPrefix}/`, changed in place and enabled (its id kept, so the store's rule is changed, not
 * doubled); added under that id when there is neither (failures.retentionDays 0 removed it).
 */
export function withFailurePatternDays(rules: LifecycleRule[], uploadPrefix: string, days: number): LifecycleRule[] {
  const prefix = `${uploadPrefix}/`;
  const at = rules.findIndex((r) => r.id === FAILURE_PATTERNS_RULE_ID);
  const index = at !== -1 ? at : rules.findIndex((r) => r.prefix === prefix);
  if (index === -1) return [...rules, { id: FAILURE_PATTERNS_RULE_ID, prefix, expireDays: days, enabled: true }];
  return rules.map((r, i) => (i === index ? { ...r, expireDays: days, enabled: true } : r));
}

/** One line per rule, for `lifecycle --show`. */
export function describeRule(rule: LifecycleRule): string {
  const actions = [
    rule.expireDays !== undefined ? `expire after ${rule.expireDays} day(s)` : null,
    rule.abortIncompleteMultipartDays !== undefined ? `abort incomplete multipart after ${rule.abortIncompleteMultipartDays} day(s)` : null,
  ].filter(Boolean);
  const where = isStoreExpressible(rule) ? 'store + cleanup' : 'cleanup only';
  return `${rule.id}\t${rule.prefix || '(whole bucket)'}\t${actions.join(', ')}\t${rule.enabled ? where : 'disabled'}`;
}
