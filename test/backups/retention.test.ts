/** Retention with restic's `forget` semantics: table-driven, pure. */
import { describe, expect, it } from 'vitest';
import { isPermanent } from '../../src/errors.js';
import { loadConfig } from '../../src/config.js';
import { backupCron, backupSchedules } from '../../src/queues/schedules.js';
import {
  applyRetentionPolicy,
  DEFAULT_RETENTION,
  validateRetentionPolicy,
  type RetentionCandidate,
  type RetentionPolicy,
} from '../../src/backups/retention.js';

const b = (iso: string, extra: Partial<RetentionCandidate> = {}): RetentionCandidate => ({
  key: `k-${iso}`,
  createdAt: new Date(iso),
  status: 'completed',
  verified: true,
  ...extra,
});

/** Backups every day at 03:00 UTC for `days` days ending 2026-03-31 (newest first after sorting). */
function daily(days: number): RetentionCandidate[] {
  const out: RetentionCandidate[] = [];
  for (let i = 0; i < days; i++) out.push(b(new Date(Date.UTC(2026, 2, 31 - i, 3)).toISOString()));
  return out.reverse(); // oldest first: the function must not depend on input order
}

const kept = (backups: RetentionCandidate[], policy: RetentionPolicy) =>
  applyRetentionPolicy(backups, policy)
    .filter((d) => d.action === 'keep')
    .map((d) => d.backup.createdAt.toISOString().slice(0, 16));

describe('applyRetentionPolicy', () => {
  const cases: { name: string; backups: RetentionCandidate[]; policy: RetentionPolicy; keep: string[] }[] = [
    {
      name: 'keepLast 3 keeps the three newest',
      backups: daily(10),
      policy: { keepLast: 3 },
      keep: ['2026-03-31T03:00', '2026-03-30T03:00', '2026-03-29T03:00'],
    },
    {
      name: 'keepLast larger than the history keeps everything',
      backups: daily(2),
      policy: { keepLast: 3 },
      keep: ['2026-03-31T03:00', '2026-03-30T03:00'],
    },
    {
      name: 'keepDaily keeps the newest backup of each of the last N days that have one',
      backups: [
        b('2026-03-31T10:00:00Z'),
        b('2026-03-31T03:00:00Z'),
        b('2026-03-29T23:00:00Z'),
        b('2026-03-29T01:00:00Z'),
        b('2026-03-20T01:00:00Z'),
      ],
      policy: { keepDaily: 2 },
      keep: ['2026-03-31T10:00', '2026-03-29T23:00'],
    },
    {
      name: 'keepWeekly uses ISO weeks (Monday start), UTC',
      // 2026-03-29 is a Sunday (week 13), 2026-03-30 a Monday (week 14).
      backups: [
        b('2026-03-31T03:00:00Z'),
        b('2026-03-30T03:00:00Z'),
        b('2026-03-29T03:00:00Z'),
        b('2026-03-23T03:00:00Z'),
        b('2026-03-15T03:00:00Z'),
      ],
      policy: { keepWeekly: 2 },
      keep: ['2026-03-31T03:00', '2026-03-29T03:00'],
    },
    {
      name: 'keepMonthly keeps the newest of each of the last N months',
      backups: daily(70),
      policy: { keepMonthly: 3 },
      keep: ['2026-03-31T03:00', '2026-02-28T03:00', '2026-01-31T03:00'],
    },
    {
      name: 'rules combine as a union (restic: a backup is kept if any rule keeps it)',
      backups: daily(40),
      policy: { keepLast: 2, keepMonthly: 2 },
      keep: ['2026-03-31T03:00', '2026-03-30T03:00', '2026-02-28T03:00'],
    },
    {
      name: 'keepWithinDays is measured from the newest backup, not from now',
      backups: daily(10),
      policy: { keepLast: 0, keepWithinDays: 3 },
      keep: ['2026-03-31T03:00', '2026-03-30T03:00', '2026-03-29T03:00'],
    },
    {
      name: 'keepWithinDays 0 keeps forever',
      backups: daily(5),
      policy: { keepLast: 1, keepWithinDays: 0 },
      keep: ['2026-03-31T03:00', '2026-03-30T03:00', '2026-03-29T03:00', '2026-03-28T03:00', '2026-03-27T03:00'],
    },
    {
      name: 'keepMonthly 1 alone keeps only the newest',
      backups: daily(5),
      policy: { keepMonthly: 1 },
      keep: ['2026-03-31T03:00'],
    },
    {
      name: 'unverified and incomplete backups are not counted',
      backups: [
        b('2026-03-31T03:00:00Z', { verified: false }),
        b('2026-03-30T03:00:00Z', { status: 'failed' }),
        b('2026-03-29T03:00:00Z'),
        b('2026-03-28T03:00:00Z'),
        b('2026-03-27T03:00:00Z'),
      ],
      policy: { keepLast: 2 },
      keep: ['2026-03-29T03:00', '2026-03-28T03:00'],
    },
  ];

  it.each(cases)('$name', ({ backups, policy, keep }) => {
    expect(kept(backups, policy)).toEqual(keep);
  });

  describe('the default policy (seed 004: 90 days, at least 3 kept)', () => {
    const DAY = 86_400_000;
    const newest = Date.UTC(2026, 2, 31, 3);
    /** One backup this many days before the newest. */
    const ago = (days: number) => b(new Date(newest - days * DAY).toISOString());
    const actions = (backups: RetentionCandidate[], policy: RetentionPolicy) =>
      Object.fromEntries(
        applyRetentionPolicy(backups, policy).map((d) => [Math.round((newest - d.backup.createdAt.getTime()) / DAY), d.action]),
      );

    it('keeps a 60-day-old backup and prunes a 100-day-old one beyond the newest 3', () => {
      const backups = [ago(0), ago(1), ago(2), ago(60), ago(100), ago(120)];
      expect(actions(backups, DEFAULT_RETENTION)).toEqual({ 0: 'keep', 1: 'keep', 2: 'keep', 60: 'keep', 100: 'delete', 120: 'delete' });
      const sixty = applyRetentionPolicy(backups, DEFAULT_RETENTION).find((d) => d.backup === backups[3]);
      expect(sixty?.reasons).toEqual(['within 90d of newest']);
    });

    it('keeps the newest 3 however old they are', () => {
      expect(actions([ago(0), ago(100), ago(200), ago(300)], DEFAULT_RETENTION)).toEqual({
        0: 'keep',
        100: 'keep',
        200: 'keep',
        300: 'delete',
      });
    });

    it('keepWithinDays 0 keeps everything', () => {
      expect(actions([ago(0), ago(1), ago(2), ago(60), ago(100), ago(1000)], { ...DEFAULT_RETENTION, keepWithinDays: 0 })).toEqual({
        0: 'keep',
        1: 'keep',
        2: 'keep',
        60: 'keep',
        100: 'keep',
        1000: 'keep',
      });
    });

    it('is what a configured set gets when it names no retention; a retention given is the whole policy', () => {
      const config = loadConfig(
        {},
        {
          backupSets: [
            { name: 'plain', sqlite: [{ name: 'x', path: '/srv/x.db' }] },
            { name: 'days', sqlite: [{ name: 'x', path: '/srv/x.db' }], retention: { keepWithinDays: 30 } },
            { name: 'forever', sqlite: [{ name: 'x', path: '/srv/x.db' }], retention: { keepWithinDays: 0 } },
            // Written without an age rule: none is added (keepLast keeps its own default of 3).
            { name: 'counted', sqlite: [{ name: 'x', path: '/srv/x.db' }], retention: { keepLast: 5 } },
            { name: 'calendar', sqlite: [{ name: 'x', path: '/srv/x.db' }], retention: { keepDaily: 7 } },
          ],
        },
      );
      expect(config.backupSets.map((s) => [s.name, s.retention])).toEqual([
        ['plain', DEFAULT_RETENTION],
        ['days', { keepLast: 3, keepWithinDays: 30 }],
        ['forever', { keepLast: 3, keepWithinDays: 0 }],
        ['counted', { keepLast: 5 }],
        ['calendar', { keepLast: 3, keepDaily: 7 }],
      ]);
      expect(DEFAULT_RETENTION).toEqual({ keepLast: 3, keepWithinDays: 90 });
    });
  });

  it('covers every input once, newest first, with a reason for each', () => {
    const input = daily(10);
    input.push(b('2026-04-01T00:00:00Z', { verified: false }));
    const decisions = applyRetentionPolicy(input, { keepLast: 3, keepWeekly: 1 });
    expect(decisions).toHaveLength(11);
    const times = decisions.map((d) => d.backup.createdAt.getTime());
    expect([...times].sort((x, y) => y - x)).toEqual(times);
    for (const d of decisions) expect(d.reasons.length).toBeGreaterThan(0);
    expect(decisions[0]).toMatchObject({ action: 'ignore' });
    expect(decisions[1]!.reasons).toContain('newest');
    expect(decisions[1]!.reasons).toContain('last 1/3');
    expect(decisions.filter((d) => d.action === 'delete').map((d) => d.reasons)).toEqual(Array(7).fill(['no rule keeps it']));
  });

  it('never deletes the newest, whatever the policy', () => {
    for (const policy of [{ keepWithinDays: 0.0001 }, { keepDaily: 1 }, { keepLast: 1 }] satisfies RetentionPolicy[]) {
      const decisions = applyRetentionPolicy(daily(5), policy);
      expect(decisions[0]!.action).toBe('keep');
    }
  });

  it('an empty history gives no decisions', () => {
    expect(applyRetentionPolicy([], { keepLast: 3 })).toEqual([]);
  });

  it('does not depend on the input order', () => {
    const input = daily(30);
    const shuffled = [...input].sort(() => Math.random() - 0.5);
    const policy = { keepLast: 2, keepDaily: 5, keepWeekly: 2 };
    expect(applyRetentionPolicy(shuffled, policy).map((d) => [d.backup.key, d.action])).toEqual(
      applyRetentionPolicy(input, policy).map((d) => [d.backup.key, d.action]),
    );
  });
});

describe('validateRetentionPolicy', () => {
  it.each([{}, { keepLast: 0 }, { keepLast: 0, keepDaily: 0, keepWeekly: 0, keepMonthly: 0 }] as RetentionPolicy[])(
    'refuses the empty policy %j',
    (policy) => {
      let error: unknown;
      try {
        validateRetentionPolicy(policy);
      } catch (err) {
        error = err;
      }
      expect(isPermanent(error)).toBe(true);
      expect(() => applyRetentionPolicy([], policy)).toThrow(/empty/);
    },
  );

  it.each([{ keepLast: -1 }, { keepDaily: 1.5 }, { keepWithinDays: -2 }, { keepLast: Number.NaN }] as RetentionPolicy[])(
    'refuses the malformed policy %j',
    (policy) => {
      expect(() => validateRetentionPolicy(policy)).toThrow(/non-negative/);
    },
  );

  it.each([{ keepLast: 3 }, { keepWithinDays: 0 }, { keepMonthly: 1 }] as RetentionPolicy[])('accepts %j', (policy) => {
    expect(() => validateRetentionPolicy(policy)).not.toThrow();
  });
});

describe('backup schedules and set config', () => {
  it('maps daily/weekly/monthly at HH:MM (UTC) to cron', () => {
    expect(backupCron('daily', '03:00')).toBe('0 3 * * *');
    expect(backupCron('weekly', '04:15')).toBe('15 4 * * 0');
    expect(backupCron('monthly', '23:59')).toBe('59 23 1 * *');
  });

  it('a set gets its backup schedule (default 03:00) and a daily prune at 03:30; retention defaults to 90 days, at least 3', () => {
    const config = loadConfig(
      {},
      {
        backupSets: [
          { name: 'app', sqlite: [{ name: 'main', path: '/srv/app.db' }], schedule: { every: 'daily' } },
          { name: 'adhoc', sqlite: [{ name: 'x', path: '/srv/x.db' }] },
        ],
      },
    );
    expect(config.backupSets[0]!.retention).toEqual({ keepLast: 3, keepWithinDays: 90 });
    expect(backupSchedules(config).map((s) => [s.id, 'pattern' in s.repeat ? s.repeat.pattern : null, s.data])).toEqual([
      ['backup-app', '0 3 * * *', { set: 'app' }],
      ['backup-prune-app', '30 3 * * *', { set: 'app', task: 'prune' }],
      ['backup-prune-adhoc', '30 3 * * *', { set: 'adhoc', task: 'prune' }],
    ]);
  });

  it.each([
    [{ name: 'a', sqlite: [] }, /at least one database/],
    [{ name: 'a/b', sqlite: [{ name: 'x', path: '/x.db' }] }, /must not contain/],
    [{ name: 'a', sqlite: [{ name: 'x', path: 'rel.db' }] }, /absolute path/],
    [{ name: 'a', sqlite: [{ name: 'x', path: '/x.db' }], schedule: { every: 'daily', at: '25:00' } }, /HH:MM/],
    [{ name: 'a', sqlite: [{ name: 'x', path: '/x.db' }], retention: { keepLast: -1 } }, /keepLast/],
    [{ name: 'a', sqlite: [{ name: 'x', path: '/x.db' }], retention: { keepWithinDays: -1 } }, /keepWithinDays/],
  ])('refuses the backup set %j', (set, message) => {
    expect(() => loadConfig({}, { backupSets: [set] })).toThrow(message);
  });

  it('refuses duplicate set names', () => {
    const set = { name: 'a', sqlite: [{ name: 'x', path: '/x.db' }] };
    expect(() => loadConfig({}, { backupSets: [set, set] })).toThrow(/unique/);
  });
});
