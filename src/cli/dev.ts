/**
 * `stowage dev` (`npm run dev`): the whole fleet in one process on embedded defaults, for a
 * newcomer to watch. An s3rver S3 server keeps its data under .stowage/, migrations run, workers
 * for every kind with a processor, the scheduler and the HTTP server start, and sample jobs are
 * enqueued. Environment variables still win (point STOWAGE_S3_ENDPOINT elsewhere to use a real store).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { join, resolve } from 'node:path';
import { loadConfig } from '../config.js';
import { migrate } from '../db/migrate.js';
import { createDb } from '../db/pool.js';
import { createLogger } from '../observability/logger.js';
import { createMetrics } from '../observability/metrics.js';
import { createProducer } from '../producers/index.js';
import { startScheduler } from '../queues/scheduler.js';
import { PROCESSORS } from '../workers/processors.js';
import { startHttpRole } from './http-role.js';
import { chooseKinds, runUntilSignal, startWorkerRole, type Closable } from './roles.js';

const DEV_BUCKET = 'stowage-dev';
const S3RVER_KEY = 'S3RVER';

export async function runDev(opts: { port: number; s3Port: number; samples: boolean; dataDir: string }): Promise<void> {
  const dataDir = resolve(opts.dataDir);
  await mkdir(join(dataDir, 's3'), { recursive: true });
  // s3rver is a dev dependency: loaded only here.
  const { default: S3rver } = (await import('s3rver' as string)) as {
    default: new (o: object) => { run(): Promise<AddressInfo>; close(): Promise<void> };
  };
  const s3 = new S3rver({
    port: opts.s3Port,
    address: '127.0.0.1',
    silent: true,
    directory: join(dataDir, 's3'),
    configureBuckets: [{ name: DEV_BUCKET }],
  });
  const address = await s3.run();
  const endpoint = `http://127.0.0.1:${address.port}`;

  // Environment variables still win over these embedded defaults (loadConfig reads them).
  const config = loadConfig(undefined, {
    storage: { endpoint, bucket: DEV_BUCKET, accessKeyId: S3RVER_KEY, secretAccessKey: S3RVER_KEY, forcePathStyle: true },
    http: { port: opts.port },
    databaseSchema: 'stowage_dev',
    // Fast stall detection so killing a dev worker shows the recovery quickly.
    worker: { lockDurationMs: 10_000, stalledIntervalMs: 5_000, sweepIntervalMs: 5_000 },
  });
  const logger = createLogger({ level: config.logLevel });
  const applied = await migrate(config);
  logger.info({ applied }, 'migrations applied');

  const metrics = createMetrics();
  const db = createDb(config);
  const closables: Closable[] = [];
  closables.push(await startWorkerRole(config, logger, { kinds: chooseKinds(undefined), metrics, db }));
  closables.push(await startScheduler(config, logger));
  const http = await startHttpRole(config, logger, { metrics, db });
  closables.push(http);

  const base = `http://${config.http.host}:${http.port}`;
  const lines = [
    '',
    'Stowage dev fleet is up.',
    `  Bull Board   ${base}/admin/queues`,
    `  metrics      ${base}/metrics`,
    `  health       ${base}/readyz`,
    `  S3 (s3rver)  ${endpoint}  bucket ${config.storage.bucket}  (data in ${join(dataDir, 's3')})`,
    `  Postgres     schema ${config.databaseSchema}`,
    `  events       npm run stowage -- events --follow`,
    'Ctrl-C stops everything cleanly.',
    '',
  ];
  process.stdout.write(lines.join('\n'));

  if (opts.samples) await enqueueSamples(config, dataDir, logger);

  await runUntilSignal(
    async () => ({
      async close() {
        for (const c of closables.reverse()) await c.close();
        await db.close();
        await s3.close();
      },
    }),
    logger,
  );
}

/** A few build folders and jobs: three that upload, and one whose folder is missing (it parks). */
async function enqueueSamples(config: ReturnType<typeof loadConfig>, dataDir: string, logger: ReturnType<typeof createLogger>) {
  if (!PROCESSORS['build-artifact']) return;
  const producer = createProducer(config);
  const run = Date.now().toString(36);
  try {
    for (let i = 1; i <= 3; i++) {
      const dir = join(dataDir, 'samples', `site-${i}`);
      await mkdir(join(dir, 'assets'), { recursive: true });
      await writeFile(join(dir, 'index.html'), `<!doctype html><title>Sample ${i}</title><h1>Build ${i}</h1>\n`.repeat(200));
      await writeFile(join(dir, 'assets', 'app.js'), `console.log("sample ${i}");\n`.repeat(5000));
      await mkdir(join(dir, 'empty'), { recursive: true });
      const { jobId } = await producer.buildArtifact({
        userId: 'demo-user',
        projectId: `demo-site-${i}`,
        versionId: `v-${run}`,
        buildDir: dir,
      });
      logger.info({ queue: 'build-artifact', jobId }, 'sample job enqueued');
    }
    const { jobId } = await producer.buildArtifact({
      userId: 'demo-user',
      projectId: 'demo-missing',
      versionId: `v-${run}`,
      buildDir: join(dataDir, 'samples', 'does-not-exist'),
    });
    logger.info({ queue: 'build-artifact', jobId }, 'sample job enqueued (its folder is missing: it will be parked in dead-letter)');
  } finally {
    await producer.close();
  }
}
