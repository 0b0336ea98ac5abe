/**
 * Scenario 4, Postgres unavailable. The shared Postgres cannot be stopped (other suites use it), so
 * every process of this scenario reaches it through the fault proxy, which refuses and then resets
 * connections for OUTAGE_MS. Meanwhile: build-artifact jobs run (their upload receipts and catalog
 * rows are written inside the job, so those attempts fail and retry), one job fails permanently and
 * is parked (its job_receipts row is written behind), every job's `completed` receipt is written
 * behind (STOWAGE_JOB_RECEIPTS=all), and a service reports failures to the http role (accepted into
 * Redis, persisted by the failure writer). After recovery everything is in Postgres, once, and
 * failure_persist_dropped_total is 0.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToken } from '../../src/auth/tokens.js';
import { createDb } from '../../src/db/pool.js';
import { DATABASE_URL } from '../helpers/isolation.js';
import { checkArtifacts, makeSources } from './artifacts.js';
import { startFaultProxy, type FaultProxy } from './fault-proxy.js';
import { expectNoSecrets, recordSummary, sleep, waitUntil, withPassword } from './fleet.js';
import { setupScenario, type Scenario } from './scenario.js';

const N = Number(process.env.CHAOS_PG_JOBS ?? 30);
const OUTAGE_MS = Number(process.env.CHAOS_PG_OUTAGE_MS ?? 12_000);
const EXPORTS = 10;
const FAILURE_POSTS = 20;
const PER_POST = 5;
let sc: Scenario;
let pgProxy: FaultProxy;
let httpPort: number;

beforeAll(async () => {
  const pgUrl = new URL(DATABASE_URL);
  pgProxy = await startFaultProxy({ host: pgUrl.hostname, port: Number(pgUrl.port || 5432) });
  httpPort = 20_000 + Math.floor(Math.random() * 20_000);
  sc = await setupScenario('pg', {
    env: (secrets) => ({
      // Every process of the scenario reaches Postgres through the proxy (the test's own pool does not).
      DATABASE_URL: withPassword(DATABASE_URL, secrets.dbPassword, pgProxy.port),
      STOWAGE_JOB_RECEIPTS: 'all',
      HTTP_PORT: String(httpPort),
      FAILURE_WRITER_BATCH_SIZE: '25',
    }),
  });
});
afterAll(async () => {
  await sc?.close();
  await pgProxy?.close();
});

async function metric(name: string): Promise<number | undefined> {
  const text = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  return line === undefined ? undefined : Number(line.split(' ').pop());
}

describe('chaos: Postgres unavailable', () => {
  it('a checked-out client whose connection drops between queries does not take the process down', async () => {
    // What killed worker processes in this scenario before src/db/pool.ts listened to every client.
    const pool = createDb({ databaseUrl: withPassword(DATABASE_URL, 'x', pgProxy.port), databaseSchema: sc.iso.schema }, { max: 2 });
    const unhandled: unknown[] = [];
    const onError = (err: unknown) => unhandled.push(err);
    process.on('uncaughtException', onError);
    try {
      const client = await pool.pool.connect();
      await client.query('BEGIN');
      await pgProxy.set({ mode: 'reset' });
      await sleep(300);
      await expect(client.query('SELECT 1')).rejects.toThrow();
      client.release();
      await pgProxy.set({ mode: 'pass' });
      expect((await pool.pool.query('SELECT 1 AS one')).rows[0].one).toBe(1);
      expect(unhandled).toEqual([]);
    } finally {
      process.off('uncaughtException', onError);
      await pgProxy.set({ mode: 'pass' });
      await pool.close();
    }
  });

  it(`receipts and reported failures written during a ${OUTAGE_MS / 1000} s Postgres outage arrive after it`, async () => {
    const started = Date.now();
    const { group, producer, db } = sc;
    const jobs = await makeSources(sc.srcRoot, 'pg', N);
    await sc.storeProxy.set({ mode: 'delay', ms: 20 });
    await Promise.all([
      group.start('w1', ['worker', '--queues', 'build-artifact,export', '--concurrency', '2']),
      group.start('w2', ['worker', '--queues', 'build-artifact,export', '--concurrency', '2']),
      group.start('http', ['http'], { readyText: 'http listening' }),
    ]);
    const token = await createToken(sc.secrets.authSecret, { user: 'svc-chaos', role: 'admin' });
    const queue = producer.queue('build-artifact');

    // Half the jobs before the outage, the rest (and the doomed one) during it.
    const half = Math.floor(N / 2);
    for (const j of jobs.slice(0, half))
      await producer.buildArtifact({ userId: j.userId, projectId: j.projectId, versionId: j.versionId, buildDir: j.buildDir });
    await waitUntil('a few jobs completed', async () => ((await queue.getJobCounts('completed')).completed ?? 0) >= 3, 60_000);

    await pgProxy.set({ mode: 'refuse' });
    const outageStarted = Date.now();
    for (const j of jobs.slice(half))
      await producer.buildArtifact({ userId: j.userId, projectId: j.projectId, versionId: j.versionId, buildDir: j.buildDir });
    // Exports do not touch Postgres: they complete during the outage, and only their job receipt waits.
    for (let i = 0; i < EXPORTS; i++)
      await producer.export({ module: 'chaos', userId: 'u1', format: 'json', records: [{ i, at: 'outage' }] });
    const doomed = await producer.buildArtifact({
      userId: 'u0',
      projectId: 'pg-doomed',
      versionId: 'v1',
      buildDir: `${sc.srcRoot}/does-not-exist`,
    });
    let posted = 0;
    for (let i = 0; i < FAILURE_POSTS; i++) {
      const res = await fetch(`http://127.0.0.1:${httpPort}/api/v1/failures`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify({
          failures: Array.from({ length: PER_POST }, (_, k) => ({
            error_code: 'E_CHAOS',
            message: `outage report ${i}-${k} at ${Date.now()}`,
          })),
        }),
      });
      expect(res.status, await res.clone().text()).toBe(202);
      posted += PER_POST;
      if (i === FAILURE_POSTS / 2) await pgProxy.set({ mode: 'reset' });
      await sleep(OUTAGE_MS / 2 / FAILURE_POSTS);
    }
    await sleep(Math.max(0, OUTAGE_MS - (Date.now() - outageStarted)));
    // Nothing of the outage's work can be in Postgres yet.
    const duringCounts = {
      ...(await queue.getJobCounts('completed', 'delayed', 'active', 'waiting')),
      exportsCompleted: (await producer.queue('export').getJobCounts('completed')).completed,
    };
    await pgProxy.set({ mode: 'pass' });
    const recoveredAt = Date.now();

    const tenantFailures = async () =>
      Number((await db.pool.query('SELECT count(*) FROM failure_matches WHERE tenant_id = $1', ['svc-chaos'])).rows[0].count);
    const receiptsBy = async () =>
      Object.fromEntries(
        (await db.pool.query('SELECT status, count(*)::int AS n FROM job_receipts GROUP BY status')).rows.map((r) => [r.status, r.n]),
      );
    await waitUntil(
      'every job completed or parked, every receipt and failure written',
      async () => {
        const c = await queue.getJobCounts('completed');
        const r = await receiptsBy();
        const e = await producer.queue('export').getJobCounts('completed');
        return (
          (c.completed ?? 0) >= N &&
          (e.completed ?? 0) >= EXPORTS &&
          (await producer.deadLetterQueue().count()) >= 1 &&
          (r.completed ?? 0) >= N + EXPORTS &&
          (r.parked ?? 0) >= 1 &&
          (await tenantFailures()) >= posted
        );
      },
      120_000,
      500,
    ).catch(async (err: Error) => {
      throw new Error(
        `${err.message}; receipts ${JSON.stringify(await receiptsBy())}, failures ${await tenantFailures()}/${posted}, jobs ${JSON.stringify(await queue.getJobCounts('completed', 'failed', 'delayed', 'waiting', 'active'))}`,
      );
    });
    const recoverySeconds = Math.round((Date.now() - recoveredAt) / 1000);
    await sleep(1500);
    const receipts = await receiptsBy();
    const failures = await tenantFailures();
    const dropped = await metric('failure_persist_dropped_total');
    const parked = await producer.deadLetterQueue().getJobs(['waiting']);
    const check = await checkArtifacts(sc.s3, db.pool, jobs);
    // Every process lived through it (none crashed on the fault).
    const survivors = group.alive().length;
    await group.stopAll();
    const logs = expectNoSecrets(group.text(), sc.secrets);

    await recordSummary('postgres-outage', {
      jobs: N + EXPORTS + 1,
      outages: 1,
      outageSeconds: OUTAGE_MS / 1000,
      duringOutage: duringCounts,
      failuresReported: posted,
      failuresPersisted: failures,
      jobReceipts: receipts,
      failurePersistDropped: dropped ?? null,
      pgProxy: { ...pgProxy.stats },
      recoverySeconds,
      processesSurvived: survivors,
      lost: check.lost.length + (posted - Math.min(posted, failures)),
      duplicated: check.duplicated + Math.max(0, failures - posted),
      logBytesScanned: logs.bytesScanned,
      seconds: Math.round((Date.now() - started) / 1000),
    });

    expect(pgProxy.stats.resets + pgProxy.stats.cut).toBeGreaterThan(0);
    expect(survivors, group.text().slice(-3000)).toBe(3);
    expect(check.lost).toEqual([]);
    expect(check).toMatchObject({ objects: N, receipts: N, catalogRows: N, duplicated: 0 });
    expect(failures).toBe(posted);
    expect(dropped).toBe(0);
    expect(receipts).toEqual({ completed: N + EXPORTS, parked: 1 });
    expect(parked.map((j) => j.data.originJobId)).toEqual([doomed.jobId]);
  });
});
