/**
 * Seed 000's retention knobs, as an operator uses them: `stowage lifecycle --apply --days 180` (its
 * `r2_lifecycle.sh --apply --days 180`) run as a process against radosgw changes the bucket's
 * failure-patterns rule to 180 days, read back from the store; a bad `--days` exits 64 naming the
 * flag; `--days` without `--apply` only prints the plan. The retention setting
 * (STOWAGE_FAILURES_RETENTION_DAYS, alias R2_RETENTION_DAYS) decides that rule's days on the export
 * prefix (R2_UPLOAD_PREFIX), shows in `stowage config`, and 0 keeps the exports for ever.
 */
import { GetBucketLifecycleConfigurationCommand, type LifecycleRule } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FAILURE_PATTERNS_RULE_ID, loadConfig } from '../../src/config.js';
import { runCli } from '../helpers/cli.js';
import { isolate } from '../helpers/isolation.js';
import { startS3, storageEnv, type TestS3 } from '../helpers/s3.js';

const iso = isolate('lcdays');
let lc: TestS3;

const stowage = (args: string[], env: Record<string, string> = {}) => runCli(iso, args, { ...storageEnv(lc), ...env }, 60_000);

/** The bucket's rules as the store reports them, by id. */
async function storeRules(): Promise<Map<string, LifecycleRule>> {
  const res = await lc.client.send(new GetBucketLifecycleConfigurationCommand({ Bucket: lc.bucket }));
  return new Map((res.Rules ?? []).map((r) => [r.ID ?? '', r]));
}
const prefixOf = (r: LifecycleRule | undefined) => r?.Filter?.Prefix ?? r?.Prefix;

beforeAll(async () => {
  lc = await startS3(iso.bucket);
});
afterAll(async () => {
  await lc?.close();
  await iso.cleanup();
});

describe('stowage lifecycle --days', () => {
  it('--apply --days 180 changes the store rule to 180 days in place; --days alone only shows the plan', { timeout: 90_000 }, async () => {
    const first = await stowage(['lifecycle', '--apply']);
    expect(first.code, first.stderr).toBe(0);
    expect((await storeRules()).get(FAILURE_PATTERNS_RULE_ID)?.Expiration?.Days).toBe(90);

    const longer = await stowage(['lifecycle', '--apply', '--days', '180']);
    expect(longer.code, longer.stderr).toBe(0);
    // Same id: the rule is changed, not doubled beside a new one.
    expect(longer.stdout.trim().split('\n')).toEqual([`change\t${FAILURE_PATTERNS_RULE_ID}`]);
    const rules = await storeRules();
    expect([...rules.keys()].sort()).toEqual(['abort-incomplete-multipart-1d', FAILURE_PATTERNS_RULE_ID]);
    expect(rules.get(FAILURE_PATTERNS_RULE_ID)?.Expiration?.Days).toBe(180);
    expect(prefixOf(rules.get(FAILURE_PATTERNS_RULE_ID))).toBe('failure_patterns/');

    // Without --apply: the plan it would apply (back to 30), and the bucket untouched.
    const plan = await stowage(['lifecycle', '--days', '30']);
    expect(plan.code, plan.stderr).toBe(0);
    expect(plan.stdout.trim().split('\n')).toEqual([`would change\t${FAILURE_PATTERNS_RULE_ID}`]);
    const dry = await stowage(['lifecycle', '--apply', '--dry-run', '--days', '30', '--json']);
    expect(dry.code, dry.stderr).toBe(0);
    const dryPlan = JSON.parse(dry.stdout) as { dryRun: boolean; changed: string[]; desired: LifecycleRule[] };
    expect(dryPlan).toMatchObject({ dryRun: true, changed: [FAILURE_PATTERNS_RULE_ID] });
    expect(dryPlan.desired.find((r) => r.ID === FAILURE_PATTERNS_RULE_ID)?.Expiration?.Days).toBe(30);
    expect((await storeRules()).get(FAILURE_PATTERNS_RULE_ID)?.Expiration?.Days).toBe(180);
  });

  it('a bad --days exits 64 with one line naming --days, and changes nothing', { timeout: 60_000 }, async () => {
    const before = await storeRules();
    const runs = await Promise.all(['0', '1.5', 'abc'].map((d) => stowage(['lifecycle', '--apply', `--days=${d}`])));
    for (const [i, d] of ['0', '1.5', 'abc'].entries()) {
      const run = runs[i]!;
      expect(run.code, `--days=${d}: ${run.stderr}`).toBe(64);
      expect(run.stderr.trim()).toBe(`stowage: lifecycle: --days: expected a whole number of days from 1 to 36500, got "${d}"`);
    }
    expect(await storeRules()).toEqual(before);
  });
});

describe('the aggregation exports retention setting', () => {
  it('decides the default rule (days and prefix); the alias works; 0 means no rule', () => {
    const rule = (env: Record<string, string>) => loadConfig(env).lifecycleRules.find((r) => r.id === FAILURE_PATTERNS_RULE_ID);
    expect(rule({})).toMatchObject({ prefix: 'failure_patterns/', expireDays: 90, enabled: true });
    expect(rule({ STOWAGE_FAILURES_RETENTION_DAYS: '45' })?.expireDays).toBe(45);
    // Seed 000's names: R2_RETENTION_DAYS, and the prefix the exports really go under.
    expect(rule({ R2_RETENTION_DAYS: '14', R2_UPLOAD_PREFIX: 'agg/patterns' })).toMatchObject({
      prefix: 'agg/patterns/',
      expireDays: 14,
    });
    expect(rule({ R2_RETENTION_DAYS: '0' })).toBeUndefined();
    expect(loadConfig({ R2_RETENTION_DAYS: '0' }).lifecycleRules.map((r) => r.id)).toEqual(['abort-incomplete-multipart-1d']);
  });

  it('refuses a bad value, and the setting beside an explicit rule list, naming the variable', () => {
    expect(() => loadConfig({ R2_RETENTION_DAYS: 'ninety' })).toThrow(/R2_RETENTION_DAYS: /);
    expect(() => loadConfig({ STOWAGE_FAILURES_RETENTION_DAYS: '-1' })).toThrow(/STOWAGE_FAILURES_RETENTION_DAYS: Too small/);
    expect(() => loadConfig({ R2_RETENTION_DAYS: '30', STOWAGE_FAILURES_RETENTION_DAYS: '60' })).toThrow(
      /R2_RETENTION_DAYS set the same setting to different values|STOWAGE_FAILURES_RETENTION_DAYS and R2_RETENTION_DAYS/,
    );
    const rules = JSON.stringify([{ id: 'fp', prefix: 'failure_patterns/', expireDays: 7 }]);
    expect(() => loadConfig({ R2_RETENTION_DAYS: '30', STOWAGE_LIFECYCLE_RULES: rules })).toThrow(
      /R2_RETENTION_DAYS\) sets the default lifecycle rules only, and lifecycleRules is given/,
    );
    // An explicit list alone is the whole policy, as before.
    expect(loadConfig({ STOWAGE_LIFECYCLE_RULES: rules }).lifecycleRules).toEqual([
      { id: 'fp', prefix: 'failure_patterns/', expireDays: 7, enabled: true },
    ]);
  });

  it('shows in `stowage config`, and `lifecycle --apply` puts its days on the export prefix', { timeout: 60_000 }, async () => {
    const env = { R2_RETENTION_DAYS: '21', R2_UPLOAD_PREFIX: 'fp' };
    const shown = await stowage(['config'], env);
    expect(shown.code, shown.stderr).toBe(0);
    const cfg = JSON.parse(shown.stdout) as { failures: { retentionDays: number }; lifecycleRules: { id: string }[] };
    expect(cfg.failures.retentionDays).toBe(21);
    expect(cfg.lifecycleRules.find((r) => r.id === FAILURE_PATTERNS_RULE_ID)).toEqual({
      id: FAILURE_PATTERNS_RULE_ID,
      prefix: 'fp/',
      expireDays: 21,
      enabled: true,
    });
    const applied = await stowage(['lifecycle', '--apply'], env);
    expect(applied.code, applied.stderr).toBe(0);
    const rule = (await storeRules()).get(FAILURE_PATTERNS_RULE_ID);
    expect(rule?.Expiration?.Days).toBe(21);
    expect(prefixOf(rule)).toBe('fp/');
    // 0: kept for ever, so the bucket's expiration rule goes.
    const forever = await stowage(['lifecycle', '--apply'], { R2_RETENTION_DAYS: '0' });
    expect(forever.code, forever.stderr).toBe(0);
    expect(forever.stdout).toContain(`remove\t${FAILURE_PATTERNS_RULE_ID}`);
    expect([...(await storeRules()).keys()]).toEqual(['abort-incomplete-multipart-1d']);
  });
});
