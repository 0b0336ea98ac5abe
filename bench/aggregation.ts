/**
 * Aggregation over 1,000,000 failure rows (quick: 100,000) in one Postgres schema, generated with
 * one INSERT … SELECT generate_series (40 error codes × 50 signatures = 2,000 patterns, 50 tenants,
 * spread over the last 6 days):
 *   baseline — the bare GROUP BY that src/db/failures.ts candidatePatterns runs, in `psql -c`
 *              (output to /dev/null);
 *   Stowage  — the aggregation processor (src/workers/aggregation.ts) in a child process
 *              (bench/stowage-child.ts): the same query, the canonical JSON export, its SHA-256,
 *              the upload with sidecar, and the audit row.
 * Rounds alternate; each side's best counts. Goal: Stowage ≤ 1.5× the query's time.
 *
 *   npx tsx bench/aggregation.ts [--quick]
 */
import { migrate } from '../src/db/migrate.js';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { loadConfig } from '../src/config.js';
import { SAMPLES } from '../src/failures/aggregation.js';
import { startS3 } from './store.js';
import { cleanupPrefix, fmtMb, runTsChild, stowageEnv, timeCommand, type BenchRow, runIfMain } from './lib.js';

const CHILD = fileURLToPath(new URL('./stowage-child.ts', import.meta.url));
const DAYS = 7;
const MIN_OCCURRENCES = 3;

export async function runAggregationBench({ quick }: { quick: boolean }): Promise<BenchRow[]> {
  const n = quick ? 100_000 : 1_000_000;
  const tag = Date.now().toString(36);
  const schema = `bench_agg_${tag}`;
  const databaseUrl = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
  const s3 = await startS3('bench-aggregation');
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    await migrate(loadConfig({ DATABASE_URL: databaseUrl, STOWAGE_DB_SCHEMA: schema, STOWAGE_PREFIX: `bench-agg-${tag}` }, {}));
    const windowEnd = new Date(Math.floor(Date.now() / 1000) * 1000);
    await client.query(
      `INSERT INTO ${schema}.failure_matches (id, tenant_id, error_code, category, message, signature, created_at)
       SELECT gen_random_uuid(), 'tenant-' || (i % 50), 'STOWAGE_ERR_' || (i % 40), 'upload',
              'upload of artifacts/' || i || '.zip failed after ' || (i % 997) || ' ms: code ' || ((i / 40) % 50),
              'upload of artifacts/<n>.zip failed after <n> ms: code ' || ((i / 40) % 50),
              $1::timestamptz - ((i % 518400) * interval '1 second') - interval '1 second'
         FROM generate_series(1, ${n}) AS i`,
      [windowEnd],
    );
    await client.query(`ANALYZE ${schema}.failure_matches`);
    const from = new Date(windowEnd.getTime() - DAYS * 86_400_000);
    // The query of src/db/failures.ts candidatePatterns, its parameters written in.
    const query = `SET search_path = ${schema}, public;
SELECT error_code, signature, count(*)::int AS n,
       array_agg(DISTINCT tenant_id ORDER BY tenant_id) AS tenants,
       min(created_at) AS first_seen, max(created_at) AS last_seen,
       (array_agg(message ORDER BY created_at, id))[1:${SAMPLES}] AS samples
  FROM failure_matches
 WHERE created_at >= '${from.toISOString()}' AND created_at < '${windowEnd.toISOString()}'
 GROUP BY error_code, signature
HAVING count(*) >= ${MIN_OCCURRENCES}
 ORDER BY n DESC, error_code, signature`;
    const env = stowageEnv(s3, {
      DATABASE_URL: databaseUrl,
      STOWAGE_DB_SCHEMA: schema,
      STOWAGE_PREFIX: `bench-agg-${tag}`,
      ...(process.env.BENCH_COLD ? {} : { BENCH_WARM: '1' }),
    });
    const baseline = () =>
      timeCommand('psql', ['-X', '-q', '-A', '-t', '-o', '/dev/null', '-v', 'ON_ERROR_STOP=1', '-d', databaseUrl, '-c', query]);
    const ours = async () => {
      const r = await runTsChild(
        CHILD,
        ['processor', 'aggregation', JSON.stringify({ days: DAYS, minOccurrences: MIN_OCCURRENCES, windowEnd: windowEnd.toISOString() })],
        env,
      );
      const summary = r.result as { status: string; patterns: number; size: number };
      if (summary.status !== 'uploaded') throw new Error(`bench aggregation: export ${summary.status}`);
      return { ...r, patterns: summary.patterns, size: summary.size };
    };
    const rounds = quick ? 2 : 3;
    const base: { ms: number; maxRssBytes: number }[] = [];
    const stw: Awaited<ReturnType<typeof ours>>[] = [];
    for (let i = 0; i < rounds; i++) {
      if (i % 2 === 0) {
        base.push(await baseline());
        stw.push(await ours());
      } else {
        stw.push(await ours());
        base.push(await baseline());
      }
    }
    const best = (rs: { ms: number }[]) => Math.min(...rs.map((r) => r.ms));
    const b = best(base);
    const o = best(stw);
    const ratio = o / b;
    const peak = (rs: { maxRssBytes: number }[]) => fmtMb(Math.max(...rs.map((r) => r.maxRssBytes)));
    return [
      {
        what: `aggregation: ${n.toLocaleString('en')} failure rows, ${stw[0]!.patterns} patterns`,
        baseline: `${(b / 1000).toFixed(2)} s (the GROUP BY in psql)`,
        stowage: `${(o / 1000).toFixed(2)} s (aggregation processor: query, JSON, upload, audit row; ${(stw[0]!.size / 1000).toFixed(0)} kB export)`,
        ratio: `${ratio.toFixed(2)}× the query's time`,
        goal: '≤ 1.5×',
        pass: ratio <= 1.5,
        peakRss: `baseline ${peak(base)} (psql) / stowage ${peak(stw)}`,
        raw: { rows: n, baselineMs: base.map((r) => r.ms), stowageMs: stw.map((r) => r.ms), ratio },
      },
    ];
  } finally {
    // The processors' domain events (a Redis stream under the prefix).
    await cleanupPrefix(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', `bench-agg-${tag}`);
    await client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).catch(() => {});
    await client.end();
    await s3.close();
  }
}

await runIfMain(import.meta.url, (argv) => runAggregationBench({ quick: argv.includes('--quick') }));
