/**
 * The default backup retention (seed 004: 90 days, at least 3 kept, 0 = for ever) end to end: the
 * scheduled prune task of the backup processor, with the policy the configuration gives a set that
 * names none, against real Postgres (this file's schema) and radosgw; and `stowage config` in a
 * separate process shows that default for a set given in STOWAGE_BACKUP_SETS.
 */
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listBackups, recordBackup } from '../../src/db/backups.js';
import { backupKey } from '../../src/storage/keys.js';
import { backup } from '../../src/workers/backup.js';
import { runCli } from '../helpers/cli.js';
import { processorTestEnv, type ProcessorTestEnv } from '../helpers/fleet.js';
import { isolate } from '../helpers/isolation.js';

const iso = isolate('retdefault');
const DAY = 86_400_000;
const AGES = [0, 1, 2, 60, 100, 120];
let env: ProcessorTestEnv<'backup'>;
const keys = new Map<string, Map<number, string>>();

const backupSets = [
  // No retention given: the default.
  { name: 'plain', sqlite: [{ name: 'main', path: '/srv/app/plain.db' }] },
  { name: 'forever', sqlite: [{ name: 'main', path: '/srv/app/forever.db' }], retention: { keepWithinDays: 0 } },
];

beforeAll(async () => {
  env = await processorTestEnv(iso, 'backup', backup, { backupSets });
  // Whole seconds: backup names carry the time to the second.
  const newest = Math.floor(Date.now() / 1000) * 1000 - 60_000;
  for (const { name } of backupSets) {
    const byAge = new Map<number, string>();
    for (const age of AGES) {
      const takenAt = new Date(newest - age * DAY);
      const key = backupKey(name, takenAt);
      byAge.set(age, key);
      await env.reader.send(new PutObjectCommand({ Bucket: env.s3.bucket, Key: key, Body: `archive ${age}` }));
      await env.reader.send(new PutObjectCommand({ Bucket: env.s3.bucket, Key: `${key}.sha256`, Body: 'x' }));
      await recordBackup(env.db, {
        set: name,
        bucket: env.s3.bucket,
        key,
        takenAt,
        size: 9,
        sha256: 'x',
        verified: true,
        databases: [],
        queue: null,
        jobId: null,
      });
    }
    keys.set(name, byAge);
  }
}, 60_000);

afterAll(async () => {
  await env?.close();
});

describe('default backup retention', () => {
  it('the scheduled prune keeps a 60-day-old backup and deletes the 100- and 120-day-old ones beyond the newest 3', async () => {
    expect(env.config.backupSets.find((s) => s.name === 'plain')!.retention).toEqual({ keepLast: 3, keepWithinDays: 90 });
    const plain = keys.get('plain')!;
    const { result } = await env.run({ set: 'plain', task: 'prune' });
    expect(result).toMatchObject({ status: 'pruned', set: 'plain', dryRun: false });
    expect(new Set((result as { deleted: string[] }).deleted)).toEqual(new Set([plain.get(100), plain.get(120)]));
    for (const age of [0, 1, 2, 60]) expect(await env.exists(plain.get(age)!), `${age} days old`).toBe(true);
    for (const age of [100, 120]) {
      expect(await env.exists(plain.get(age)!), `${age} days old`).toBe(false);
      expect(await env.exists(`${plain.get(age)!}.sha256`)).toBe(false);
    }
    const rows = await listBackups(env.db, 'plain', { includeDeleted: true });
    expect(rows.map((r) => r.status)).toEqual(['completed', 'completed', 'completed', 'completed', 'deleted', 'deleted']);
    const sixty = (result as { decisions: { key: string; reasons: string[] }[] }).decisions.find((d) => d.key === plain.get(60));
    expect(sixty?.reasons).toEqual(['within 90d of newest']);
  });

  it('keepWithinDays 0 keeps every backup, however old', async () => {
    const forever = keys.get('forever')!;
    const { result } = await env.run({ set: 'forever', task: 'prune' });
    expect(result).toMatchObject({ status: 'pruned', set: 'forever', deleted: [] });
    for (const age of AGES) expect(await env.exists(forever.get(age)!), `${age} days old`).toBe(true);
  });

  it('`stowage config` shows the 90-day default for a set that names no retention', async () => {
    const run = await runCli(iso, ['config'], { STOWAGE_BACKUP_SETS: JSON.stringify(backupSets) }, 30_000);
    expect(run.code, run.stderr).toBe(0);
    const shown = JSON.parse(run.stdout) as { backupSets: { name: string; retention: unknown }[] };
    expect(shown.backupSets.map((s) => [s.name, s.retention])).toEqual([
      ['plain', { keepLast: 3, keepWithinDays: 90 }],
      ['forever', { keepLast: 3, keepWithinDays: 0 }],
    ]);
  });
});
