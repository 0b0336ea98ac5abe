/**
 * Cleanup of 10,000 objects under one prefix (quick: 1,000), seeded by parallel PutObject into the
 * same radosgw before each side runs (directly, and through the link shaper):
 *   baseline — `rclone delete bench:<bucket>/<prefix>` with its defaults;
 *   Stowage  — the cleanup processor (src/workers/cleanup.ts) with `{ prefix, dryRun: false }`, in
 *              a child process (bench/stowage-child.ts): paginated listing, DeleteObjects batches
 *              of 1000, an r2_cleanup_logs row and the event.
 * Goal: Stowage ≥ 1.0× rclone's speed.
 *
 *   npx tsx bench/cleanup.ts [--quick]
 */
import { migrate } from '../src/db/migrate.js';
import { fileURLToPath } from 'node:url';
import { ListObjectsCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { loadConfig } from '../src/config.js';
import { createStorage, type Storage } from '../src/storage/client.js';
import { startS3, storeLabel, storeModes } from './store.js';
import { fmtMb, rcloneEnv, runTsChild, stowageEnv, timeCommand, type BenchRow, runIfMain, dropBenchState } from './lib.js';

const CHILD = fileURLToPath(new URL('./stowage-child.ts', import.meta.url));
const SEED_CONCURRENCY = 32;

/**
 * Keys spread over 100 "folders" under the prefix (`<prefix>042/000142.log`), as dated or per-user
 * layouts are. Not one flat folder: s3rver runs a synchronous readdir of the key's folder after
 * every delete, so 10,000 keys in one folder make any client's delete O(n²) on the server
 * (~80 deletes/s for rclone and Stowage alike) and the row would measure only that.
 */
function seedKey(prefix: string, i: number): string {
  return `${prefix}${String(i % 100).padStart(3, '0')}/${String(i).padStart(6, '0')}.log`;
}

async function seed(storage: Storage, prefix: string, n: number): Promise<void> {
  let next = 0;
  const body = Buffer.alloc(256, 'x');
  await Promise.all(
    Array.from({ length: SEED_CONCURRENCY }, async () => {
      while (next < n) {
        const i = next++;
        await storage.client.send(new PutObjectCommand({ Bucket: storage.bucket, Key: seedKey(prefix, i), Body: body }));
      }
    }),
  );
}

async function remaining(storage: Storage, prefix: string): Promise<number> {
  const page = await storage.client.send(new ListObjectsCommand({ Bucket: storage.bucket, Prefix: prefix, MaxKeys: 10 }));
  return page.Contents?.length ?? 0;
}

export async function runCleanupBench({ quick }: { quick: boolean }): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  for (const mode of storeModes()) rows.push(...(await cleanupRows(mode, quick)));
  return rows;
}

async function cleanupRows(mode: 'direct' | 'shaped', quick: boolean): Promise<BenchRow[]> {
  const n = Number(process.env.BENCH_CLEANUP_N ?? (quick ? 1000 : 10_000));
  const tag = `${Date.now().toString(36)}${mode[0]}`;
  const schema = `bench_cleanup_${tag}`;
  const databaseUrl = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
  const s3 = await startS3(`bench-cleanup-${mode}`, { shaped: mode === 'shaped' });
  const config = loadConfig(
    {
      DATABASE_URL: databaseUrl,
      STOWAGE_DB_SCHEMA: schema,
      STOWAGE_PREFIX: `bench-cln-${tag}`,
      // Seeding and the checks go direct; the measured deletes use s3.endpoint.
      R2_ENDPOINT: s3.directEndpoint,
      R2_BUCKET: s3.bucket,
      R2_ACCESS_KEY_ID: s3.accessKeyId,
      R2_SECRET_ACCESS_KEY: s3.secretAccessKey,
    },
    {},
  );
  const storage = createStorage(config);
  try {
    await migrate(config);
    const env = stowageEnv(s3, { DATABASE_URL: databaseUrl, STOWAGE_DB_SCHEMA: schema, STOWAGE_PREFIX: `bench-cln-${tag}` });
    const baseline = async (i: number) => {
      const prefix = `logs/rclone-${i}/`;
      await seed(storage, prefix, n);
      const r = await timeCommand('rclone', ['delete', `bench:${s3.bucket}/${prefix}`], { env: rcloneEnv(s3) });
      if (await remaining(storage, prefix)) throw new Error(`bench cleanup: rclone left objects under ${prefix}`);
      return r;
    };
    const ours = async (i: number) => {
      const prefix = `logs/stowage-${i}/`;
      await seed(storage, prefix, n);
      const r = await runTsChild(CHILD, ['processor', 'cleanup', JSON.stringify({ prefix, dryRun: false })], env);
      const deleted = (r.result as { deleted: number }).deleted;
      if (deleted !== n || (await remaining(storage, prefix)))
        throw new Error(`bench cleanup: Stowage deleted ${deleted} of ${n} under ${prefix}`);
      return r;
    };
    // One round: seeding 10,000 objects per side costs more than the measured deletes.
    const rounds = 1;
    const base: { ms: number; maxRssBytes: number }[] = [];
    const stw: { ms: number; maxRssBytes: number }[] = [];
    for (let i = 0; i < rounds; i++) {
      if (i % 2 === 0) {
        base.push(await baseline(i));
        stw.push(await ours(i));
      } else {
        stw.push(await ours(i));
        base.push(await baseline(i));
      }
    }
    const best = (rs: { ms: number }[]) => Math.min(...rs.map((r) => r.ms));
    const b = best(base);
    const o = best(stw);
    const speedup = b / o;
    const peak = (rs: { maxRssBytes: number }[]) => fmtMb(Math.max(...rs.map((r) => r.maxRssBytes)));
    return [
      {
        what: `cleanup: ${n} objects under one prefix, ${storeLabel(s3)}`,
        baseline: `${(b / 1000).toFixed(2)} s (rclone delete; ${(n / (b / 1000)).toFixed(0)} objects/s)`,
        stowage: `${(o / 1000).toFixed(2)} s (cleanup processor; ${(n / (o / 1000)).toFixed(0)} objects/s)`,
        ratio: `${speedup.toFixed(2)}× rclone's speed`,
        goal: s3.shaper ? '≥ 2.0×' : '≥ 1.0×',
        pass: speedup >= (s3.shaper ? 2.0 : 1.0),
        peakRss: `baseline ${peak(base)} / stowage ${peak(stw)}`,
        raw: { n, baselineMs: base.map((r) => r.ms), stowageMs: stw.map((r) => r.ms), speedup },
      },
    ];
  } finally {
    storage.close();
    await s3.close();
    // The processors' domain events (a Redis stream under the prefix) and the schema.
    await dropBenchState(`bench-cln-${tag}`, schema, databaseUrl);
  }
}

await runIfMain(import.meta.url, (argv) => runCleanupBench({ quick: argv.includes('--quick') }));
