/**
 * Backup of a set of SQLite databases (~1 GB; quick ~50 MB), same databases, same radosgw,
 * directly and through the link shaper (bench/shaper.ts):
 *   baseline — `sqlite3 <db> ".backup <copy>"` per database, then `tar | pigz | rclone rcat` of the
 *              copies (gzip on every core, streamed up: what a careful cron script would do);
 *   Stowage  — the backup processor (src/workers/backup.ts) on an ad hoc set, in a child process
 *              (bench/stowage-child.ts): VACUUM INTO snapshots, quick_check, tar → gzip → multipart
 *              upload in one stream, sidecar, backups row and receipt.
 * Goal: Stowage ≥ 1.5× faster. Peak RSS: the largest of the baseline's commands; Stowage's process.
 *
 *   npx tsx bench/backup.ts [--quick]
 */
import { migrate } from '../src/db/migrate.js';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../src/config.js';
import { HeadObjectCommand } from '@aws-sdk/client-s3';
import { startS3, storeLabel, storeModes } from './store.js';
import { MB, fmtMb, rcloneEnv, runTsChild, stowageEnv, timeCommand, type BenchRow, runIfMain, dropBenchState } from './lib.js';

const CHILD = fileURLToPath(new URL('./stowage-child.ts', import.meta.url));

/**
 * One database of about `bytes`: an events table whose rows are part text (tenant, kind, a
 * templated message: compresses well) and part random blob (does not), plus an index.
 */
async function makeDatabase(path: string, bytes: number, seed: number): Promise<void> {
  const rows = Math.round(bytes / 260);
  const sql = `
PRAGMA journal_mode=WAL;
PRAGMA synchronous=OFF;
CREATE TABLE events(id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, kind TEXT NOT NULL, message TEXT NOT NULL, payload BLOB, created_at INTEGER NOT NULL);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ${rows})
INSERT INTO events(id, tenant, kind, message, payload, created_at)
SELECT x, 'tenant-' || (x * ${seed} % 97), 'kind-' || (x % 13),
       'upload of artifacts/build-' || (x % 1000) || '.zip finished after ' || (x % 977) || ' ms with status ' || (x % 7) || ' on worker w' || (x % 16),
       randomblob(80), 1700000000 + x
  FROM c;
CREATE INDEX events_tenant_created ON events(tenant, created_at);
PRAGMA wal_checkpoint(TRUNCATE);
`;
  await timeCommand('sqlite3', [path, sql]);
}

export async function runBackupBench({ quick }: { quick: boolean }): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  for (const mode of storeModes()) rows.push(...(await backupRows(mode, quick)));
  return rows;
}

async function backupRows(mode: 'direct' | 'shaped', quick: boolean): Promise<BenchRow[]> {
  const totalBytes = Number(process.env.BENCH_BACKUP_MB ?? (quick ? 50 : 1000)) * MB;
  const dbCount = quick ? 2 : 4;
  const tag = `${Date.now().toString(36)}${mode[0]}`;
  const schema = `bench_backup_${tag}`;
  const work = await mkdtemp(join(tmpdir(), 'stowage-bench-backup-'));
  const s3 = await startS3(`bench-backup-${mode}`, { shaped: mode === 'shaped' });
  const databaseUrl = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
  try {
    const dbs: { name: string; path: string }[] = [];
    await mkdir(join(work, 'dbs'));
    await Promise.all(
      Array.from({ length: dbCount }, async (_, i) => {
        const path = join(work, 'dbs', `app-${i}.db`);
        await makeDatabase(path, totalBytes / dbCount, i + 3);
        dbs.push({ name: `app${i}`, path });
      }),
    );
    dbs.sort((a, b) => (a.name < b.name ? -1 : 1));
    const { stat } = await import('node:fs/promises');
    const setBytes = (await Promise.all(dbs.map((d) => stat(d.path)))).reduce((a, s) => a + s.size, 0);

    const baseline = async (i: number) => {
      const out = join(work, `baseline-${i}`);
      await mkdir(out);
      const started = performance.now();
      let peak = 0;
      for (const db of dbs)
        peak = Math.max(peak, (await timeCommand('sqlite3', [db.path, `.backup ${join(out, `${db.name}.db`)}`])).maxRssBytes);
      // What a team would script: the copies tarred, gzipped on every core (pigz), streamed up (rclone rcat).
      const key = `baseline/set-${i}.tar.gz`;
      const pipeline = `set -o pipefail; tar -C '${out}' -cf - . | pigz | rclone rcat 'bench:${s3.bucket}/${key}'`;
      peak = Math.max(peak, (await timeCommand('bash', ['-c', pipeline], { env: rcloneEnv(s3) })).maxRssBytes);
      const ms = performance.now() - started;
      const size = (await s3.client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: key }))).ContentLength ?? 0;
      await rm(out, { recursive: true, force: true });
      return { ms, maxRssBytes: peak, size };
    };

    await migrate(loadConfig({ DATABASE_URL: databaseUrl, STOWAGE_DB_SCHEMA: schema, STOWAGE_PREFIX: `bench-bkp-${tag}` }, {}));
    const env = stowageEnv(s3, { DATABASE_URL: databaseUrl, STOWAGE_DB_SCHEMA: schema, STOWAGE_PREFIX: `bench-bkp-${tag}` });
    const ours = async (i: number) => {
      const r = await runTsChild(CHILD, ['processor', 'backup', JSON.stringify({ name: `benchset${i}`, sqlite: dbs })], env);
      return {
        ms: r.ms,
        maxRssBytes: r.maxRssBytes,
        size: Number((r.result as { size?: number; bytes?: number }).size ?? (r.result as { bytes?: number }).bytes ?? 0),
      };
    };

    const rounds = quick ? 1 : 2;
    const base: Awaited<ReturnType<typeof baseline>>[] = [];
    const stw: Awaited<ReturnType<typeof ours>>[] = [];
    for (let i = 0; i < rounds; i++) {
      if (i % 2 === 0) {
        base.push(await baseline(i));
        stw.push(await ours(i));
      } else {
        stw.push(await ours(i));
        base.push(await baseline(i));
      }
    }
    const best = <T extends { ms: number }>(rs: T[]) => rs.reduce((a, b) => (b.ms < a.ms ? b : a));
    const b = best(base);
    const o = best(stw);
    const speedup = b.ms / o.ms;
    const peak = (rs: { maxRssBytes: number }[]) => fmtMb(Math.max(...rs.map((r) => r.maxRssBytes)));
    return [
      {
        what: `backup: ${dbCount} SQLite databases, ${fmtMb(setBytes)}, ${storeLabel(s3)}`,
        baseline: `${(b.ms / 1000).toFixed(2)} s (sqlite3 .backup + tar | pigz | rclone rcat; ${fmtMb(b.size)} tar.gz)`,
        stowage: `${(o.ms / 1000).toFixed(2)} s (backup processor${o.size ? `; ${fmtMb(o.size)} tar.gz` : ''})`,
        ratio: `${speedup.toFixed(2)}× faster`,
        goal: '≥ 1.5× faster',
        pass: speedup >= 1.5,
        peakRss: `baseline ${peak(base)} (largest command) / stowage ${peak(stw)}`,
        raw: { setBytes, dbCount, baseline: base, stowage: stw, speedup },
      },
    ];
  } finally {
    await s3.close();
    await rm(work, { recursive: true, force: true });
    // The processors' domain events (a Redis stream under the prefix) and the schema.
    await dropBenchState(`bench-bkp-${tag}`, schema, databaseUrl);
  }
}

await runIfMain(import.meta.url, (argv) => runBackupBench({ quick: argv.includes('--quick') }));
