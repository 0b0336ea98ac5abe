/**
 * Artifact retention (issue 19, item 1) against radosgw and Postgres:
 * - a project whose newest artifact is 40 days old keeps it through the shipped daily cleanup (the
 *   `cleanup-daily` payload run by a real worker), which an age rule would have deleted;
 * - a year of daily snapshots is pruned to the tiers, `stowage cleanup --artifact-retention
 *   --dry-run` (a process) printing why each version is kept or deleted and deleting nothing, and
 *   `--force` then leaving exactly the versions the dry run kept;
 * - a deleted artifact's row says so, and its download answers 404 with canRebuild and the
 *   rebuildUrl, while the project's export still signs the newest version;
 * - a rebuild of a deleted version clears the mark.
 */
import { createHash } from 'node:crypto';
import { HeadObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToken } from '../../src/auth/tokens.js';
import { applyArtifactRetention } from '../../src/cleanup/artifact-retention.js';
import { loadConfig } from '../../src/config.js';
import { upsertProjectVersionArtifact } from '../../src/db/project-versions.js';
import { buildServer } from '../../src/http/server.js';
import { DEFAULT_SCHEDULES, desiredSchedules } from '../../src/queues/schedules.js';
import { artifactKey, sha256SidecarKey } from '../../src/storage/keys.js';
import type { Runtime } from '../../src/workers/runtime.js';
import { runCli } from '../helpers/cli.js';
import { isolate } from '../helpers/isolation.js';
import { harness, harnessRuntime, type Harness } from '../http/harness.js';

const iso = isolate('artretention');
const DAY = 86_400_000;
const DEFAULT_POLICY = loadConfig({}).artifact.retention;
let h: Harness;
let runtime: Runtime;
let app: ReturnType<typeof buildServer>;

const day = (d: Date) => d.toISOString().slice(0, 10);

/** Store a version's artifact (object, sidecar, row) as if it was built `ageDays` ago. */
async function seedVersion(userId: string, projectId: string, versionId: string, createdAt: Date): Promise<string> {
  const { storage, db } = { storage: h.deps.storage(), db: h.deps.db };
  const key = artifactKey(userId, projectId, versionId);
  const body = Buffer.from(`zip of ${versionId}`);
  const sha = createHash('sha256').update(body).digest('hex');
  await storage.client.send(new PutObjectCommand({ Bucket: storage.bucket, Key: key, Body: body }));
  await storage.client.send(
    new PutObjectCommand({ Bucket: storage.bucket, Key: sha256SidecarKey(key), Body: `${sha}  ${versionId}.zip\n` }),
  );
  await upsertProjectVersionArtifact(db.pool, {
    userId,
    projectId,
    versionId,
    artifactUrl: `s3://${storage.bucket}/${key}`,
    artifactSize: body.length,
    artifactChecksum: sha,
  });
  await db.pool.query('UPDATE project_versions SET created_at = $4 WHERE user_id = $1 AND project_id = $2 AND version_id = $3', [
    userId,
    projectId,
    versionId,
    createdAt,
  ]);
  return key;
}

async function exists(key: string): Promise<boolean> {
  const storage = h.deps.storage();
  try {
    await storage.client.send(new HeadObjectCommand({ Bucket: storage.bucket, Key: key }));
    return true;
  } catch (err) {
    if ((err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404) return false;
    throw err;
  }
}

function cliEnv(): Record<string, string> {
  const s = h.deps.config.storage;
  return {
    R2_ENDPOINT: s.endpoint ?? '',
    R2_BUCKET: s.bucket ?? '',
    R2_ACCESS_KEY_ID: s.accessKeyId ?? '',
    R2_SECRET_ACCESS_KEY: s.secretAccessKey ?? '',
  };
}

beforeAll(async () => {
  h = await harness(iso, { s3: true });
  runtime = await harnessRuntime(h, ['cleanup']);
  app = buildServer(h.deps);
}, 60_000);

afterAll(async () => {
  await app?.close();
  await runtime?.close(2000);
  await h?.close();
  await iso.cleanup();
});

describe('the policy', () => {
  it('keeps the newest N, everything within 30 days, the first of each month for a year and of each year for ever', () => {
    const now = Date.parse('2026-12-02T12:00:00Z');
    // Two years of daily snapshots, one a day at noon.
    const versions = Array.from({ length: 730 }, (_, i) => ({ versionId: `v${i}`, createdAt: new Date(now - (729 - i) * DAY) }));
    const verdicts = applyArtifactRetention(versions, DEFAULT_POLICY, now);
    expect(verdicts).toHaveLength(730);
    const kept = verdicts.filter((v) => v.action === 'keep');
    const days = kept.map((v) => day(v.version.createdAt));
    // 30 days within the window (today and the 29 before it) …
    const recent = days.filter((d) => d >= '2026-11-03');
    expect(recent).toHaveLength(30);
    // … the first of each month for 365 days (2026-01-01 … 2026-11-01: 2025-12-01 is 366 days old),
    // and the first of each year for ever (2024-12-03, the oldest version, and 2025-01-01).
    const older = days.filter((d) => d < '2026-11-03').sort();
    expect(older).toEqual([
      '2024-12-03',
      '2025-01-01',
      ...Array.from({ length: 11 }, (_, m) => `2026-${String(m + 1).padStart(2, '0')}-01`),
    ]);
    const byDay = new Map(verdicts.map((v) => [day(v.version.createdAt), v]));
    expect(byDay.get('2026-12-02')!.reasons).toEqual(['newest 1/3', 'within 30d (0d old)']);
    expect(byDay.get('2026-03-01')!.reasons).toEqual(['first of 2026-03 (monthly, 365d)']);
    expect(byDay.get('2025-01-01')!.reasons).toEqual(['first of 2025 (yearly, for ever)']);
    // The first of a month older than a year is not kept by the monthly tier.
    expect(byDay.get('2025-06-01')!.action).toBe('delete');
    expect(byDay.get('2025-06-01')!.reasons[0]).toMatch(/^\d+d old: no rule keeps it$/);
    expect(byDay.get('2026-10-15')!.action).toBe('delete');
  });

  it('always keeps the newest N, however old', () => {
    const now = Date.now();
    const versions = [100, 200, 300, 400].map((d, i) => ({ versionId: `v${i}`, createdAt: new Date(now - d * DAY) }));
    const verdicts = applyArtifactRetention(versions, { ...DEFAULT_POLICY, keepMonthlyDays: false, keepYearlyDays: false }, now);
    expect(verdicts.map((v) => [v.version.versionId, v.action])).toEqual([
      ['v0', 'keep'],
      ['v1', 'keep'],
      ['v2', 'keep'],
      ['v3', 'delete'],
    ]);
  });

  it('reads its settings from the environment, `off` turning a tier off', () => {
    const c = loadConfig({ STOWAGE_ARTIFACT_RETENTION_KEEP_LAST: '5', STOWAGE_ARTIFACT_RETENTION_KEEP_MONTHLY_DAYS: 'off' });
    expect(c.artifact.retention).toMatchObject({ keepLast: 5, keepWithinDays: 30, keepMonthlyDays: false, keepYearlyDays: 0 });
    expect(() => loadConfig({ STOWAGE_ARTIFACT_RETENTION_KEEP_LAST: '0' })).toThrow(/STOWAGE_ARTIFACT_RETENTION_KEEP_LAST|keepLast/);
  });

  it('ships no age rule over snapshots, and the daily cleanup runs artifact retention unless it is turned off', () => {
    const c = loadConfig({});
    expect(c.lifecycleRules.some((r) => r.prefix.includes('snapshots'))).toBe(false);
    const daily = (cfg: typeof c) => desiredSchedules(cfg).find((s) => s.id === 'cleanup-daily')!.data;
    expect(daily(c).artifactRetention).toBe(true);
    expect(daily(loadConfig({ STOWAGE_ARTIFACT_RETENTION_ENABLED: 'false' })).artifactRetention).toBe(false);
  });
});

describe('the daily cleanup', () => {
  it("keeps a project's newest artifact that is 40 days old, and deletes what no rule keeps", async () => {
    const now = Date.now();
    // Built 40, 41, 42 and 43 days ago, and a version at the start of b3's month, which is then the
    // first of that month (and of the project: kept by the tiers), so b3 is the one no rule keeps.
    const keys: string[] = [];
    for (const [i, age] of [40, 41, 42, 43].entries()) keys.push(await seedVersion('dana', 'blog', `b${i}`, new Date(now - age * DAY)));
    const b3 = new Date(now - 43 * DAY);
    keys.push(await seedVersion('dana', 'blog', 'b4', new Date(Date.UTC(b3.getUTCFullYear(), b3.getUTCMonth(), 1))));
    const daily = DEFAULT_SCHEDULES.find((s) => s.id === 'cleanup-daily')!;
    expect(daily.data).toMatchObject({ artifactRetention: true });
    const { jobId } = await h.deps.producer.cleanup({ ...(daily.data as object), prefix: 'dana/' });
    const result = (await h.deps.producer.waitFor('cleanup', jobId, 60_000)) as { artifacts: { kept: number; deleted: number } };
    expect(result.artifacts).toEqual({ kept: 4, deleted: 1 });
    const { rows } = await h.deps.db.pool.query(
      `SELECT version_id, artifact_url IS NOT NULL AS stored, artifact_deleted_at IS NOT NULL AS deleted, artifact_deleted_reason
         FROM project_versions WHERE user_id = 'dana' ORDER BY version_id`,
    );
    expect(rows.map((r) => r.stored)).toEqual([true, true, true, false, true]);
    for (const i of [0, 1, 2, 4]) expect(await exists(keys[i]!)).toBe(true);
    expect(rows[3]).toMatchObject({ stored: false, deleted: true });
    expect(rows[3].artifact_deleted_reason).toMatch(/^43d old: no rule keeps it$/);
    expect(await exists(keys[3]!)).toBe(false);
    expect(await exists(sha256SidecarKey(keys[3]!))).toBe(false);
  }, 90_000);

  it('prunes a year of daily snapshots to the tiers: the dry run says why, --force does what it said', async () => {
    const now = Date.now();
    const created = Array.from({ length: 365 }, (_, i) => new Date(now - (364 - i) * DAY - 3_600_000));
    for (let i = 0; i < created.length; i += 25) {
      await Promise.all(created.slice(i, i + 25).map((at, j) => seedVersion('erin', 'shop', `d${String(i + j).padStart(3, '0')}`, at)));
    }
    const expected = applyArtifactRetention(
      created.map((createdAt, i) => ({ versionId: `d${String(i).padStart(3, '0')}`, createdAt })),
      DEFAULT_POLICY,
      Date.now(),
    );
    const keepIds = expected.filter((v) => v.action === 'keep').map((v) => v.version.versionId);
    // 30 within the window plus the firsts of the months (and the year) before it.
    expect(keepIds.length).toBeGreaterThanOrEqual(40);
    expect(keepIds.length).toBeLessThanOrEqual(45);

    const dry = await runCli(iso, ['cleanup', '--artifact-retention', '--prefix', 'erin/', '--dry-run'], cliEnv());
    expect(dry.stderr).not.toMatch(/error/i);
    expect(dry.code).toBe(0);
    const keepLines = dry.stdout.split('\n').filter((l) => l.startsWith('keep\t'));
    expect(keepLines).toHaveLength(keepIds.length);
    expect(keepLines.find((l) => l.includes('/d364.zip'))).toMatch(/\tnewest 1\/3; within 30d \(0d old\)$/);
    expect(keepLines.some((l) => /\tfirst of \d{4}-\d{2} \(monthly, 365d\)/.test(l))).toBe(true);
    const zipDeletes = dry.stdout.split('\n').filter((l) => l.startsWith('would delete\t') && l.split('\t')[1]!.endsWith('.zip'));
    expect(zipDeletes).toHaveLength(365 - keepIds.length);
    expect(zipDeletes[0]).toMatch(/\tartifact-retention: \d+d old: no rule keeps it$/);
    // Nothing deleted by the dry run.
    expect(await exists(artifactKey('erin', 'shop', 'd100'))).toBe(true);

    const real = await runCli(iso, ['cleanup', '--artifact-retention', '--prefix', 'erin/', '--force', '--json'], cliEnv());
    expect(real.code).toBe(0);
    const report = JSON.parse(real.stdout) as { deleted: number; artifacts: { versionId: string; action: string }[] };
    expect(report.deleted).toBe(2 * (365 - keepIds.length));
    const { rows } = await h.deps.db.pool.query(
      `SELECT version_id FROM project_versions WHERE user_id = 'erin' AND artifact_url IS NOT NULL ORDER BY version_id`,
    );
    expect(rows.map((r) => r.version_id)).toEqual([...keepIds].sort());
    const { rows: gone } = await h.deps.db.pool.query(
      `SELECT count(*)::int AS n FROM project_versions WHERE user_id = 'erin' AND artifact_deleted_at IS NOT NULL`,
    );
    expect(gone[0].n).toBe(365 - keepIds.length);
    // A second run finds nothing more to delete.
    const again = await runCli(iso, ['cleanup', '--artifact-retention', '--prefix', 'erin/', '--force', '--json'], cliEnv());
    expect(JSON.parse(again.stdout).deleted).toBe(0);
  }, 180_000);
});

describe('a deleted artifact', () => {
  it('answers 404 with canRebuild and the rebuildUrl; the export still signs the newest; a rebuild clears the mark', async () => {
    const now = Date.now();
    for (const [i, age] of [1, 2, 3, 400].entries()) await seedVersion('frank', 'app', `r${i}`, new Date(now - age * DAY - 3_600_000));
    const run = await runCli(
      iso,
      ['cleanup', '--artifact-retention', '--prefix', 'frank/', '--force'],
      // No yearly tier, so the 400-day-old version is deleted whatever the calendar.
      { ...cliEnv(), STOWAGE_ARTIFACT_RETENTION_KEEP_YEARLY_DAYS: 'off' },
    );
    expect(run.code).toBe(0);
    const token = await createToken(h.secret, { user: 'frank', role: 'user' });
    const auth = { authorization: `Bearer ${token}` };
    const res = await app.inject({ method: 'GET', url: '/v1/versions/r3/download', headers: auth });
    expect(res.statusCode).toBe(404);
    const body = res.json();
    expect(body).toMatchObject({ canRebuild: true, rebuildUrl: '/v1/versions/r3/rebuild', error: { code: 'STOWAGE_ERR_NOT_FOUND' } });
    expect(body.error.message).toMatch(/artifact retention deleted it/);
    expect(Date.parse(body.artifactDeletedAt)).toBeGreaterThan(now - 60_000);
    expect(body.artifactDeletedReason).toMatch(/no rule keeps it/);

    const exp = await app.inject({ method: 'GET', url: '/v1/projects/app/export', headers: auth });
    expect(exp.statusCode).toBe(200);
    expect(exp.json().downloadUrl).toContain('r0.zip');

    // The application rebuilds r3: a new upload clears the mark, and the download works again.
    await seedVersion('frank', 'app', 'r3', new Date(now - 400 * DAY));
    const again = await app.inject({ method: 'GET', url: '/v1/versions/r3/download', headers: auth });
    expect(again.statusCode).toBe(200);
  }, 60_000);

  it('fills the rebuild link template from the configuration', async () => {
    const c = loadConfig({ STOWAGE_ARTIFACT_REBUILD_URL: 'https://builder.example/p/{projectId}/v/{versionId}/rebuild' });
    expect(c.artifact.rebuildUrl).toBe('https://builder.example/p/{projectId}/v/{versionId}/rebuild');
    expect(() => loadConfig({ STOWAGE_ARTIFACT_REBUILD_URL: 'ftp://x' })).toThrow(/STOWAGE_ARTIFACT_REBUILD_URL|rebuildUrl/);
  });
});
