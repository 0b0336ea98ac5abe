/**
 * `stowage dev` (`npm run dev`): the whole fleet in one process on embedded defaults, for a
 * newcomer to watch. An s3rver S3 server keeps its data under .stowage/, migrations run, workers
 * for every kind with a processor, the scheduler and the HTTP server start, and sample jobs are
 * enqueued. Environment variables still win (point STOWAGE_S3_ENDPOINT elsewhere to use a real store).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { join, resolve } from 'node:path';
import { createToken } from '../auth/tokens.js';
import { loadConfig, type Config } from '../config.js';
import { migrate } from '../db/migrate.js';
import { createDb } from '../db/pool.js';
import { StowageError } from '../errors.js';
import { createLogger } from '../observability/logger.js';
import { createMetrics } from '../observability/metrics.js';
import { createProducer } from '../producers/index.js';
import { startScheduler } from '../queues/scheduler.js';
import { PROCESSORS } from '../workers/processors.js';
import { startHttpRole } from './http-role.js';
import { chooseKinds, runUntilSignal, startWorkerRole, type Closable } from './roles.js';

const DEV_BUCKET = 'stowage-dev';
const S3RVER_KEY = 'S3RVER';
/** Its own prefix and schema, so on a shared Redis or Postgres the dev fleet sees only its own jobs. */
const DEV_PREFIX = 'stowage-dev';
const DEV_SCHEMA = 'stowage_dev';

interface EmbeddedS3 {
  endpoint: string;
  close(): Promise<void>;
}

export async function runDev(opts: { port: number; s3Port: number; samples: boolean; dataDir: string }): Promise<void> {
  const dataDir = resolve(opts.dataDir);
  // A store given in the environment is used as is; otherwise the embedded one starts.
  const fromEnv = loadConfig();
  const external = fromEnv.storage.endpoint ?? fromEnv.storage.accountId;
  const host = fromEnv.http.host;
  // Every port is checked before anything starts, so a taken one costs nothing to fix.
  await assertPortFree(host, opts.port, '--port');
  if (!external) await assertPortFree('127.0.0.1', opts.s3Port, '--s3-port');

  const s3 = external ? undefined : await startEmbeddedS3(opts.s3Port, join(dataDir, 's3'));
  // Environment variables still win over these embedded defaults (loadConfig reads them).
  const config = loadConfig(undefined, {
    ...(s3
      ? {
          storage: {
            endpoint: s3.endpoint,
            bucket: DEV_BUCKET,
            accessKeyId: S3RVER_KEY,
            secretAccessKey: S3RVER_KEY,
            forcePathStyle: true,
          },
        }
      : {}),
    http: { port: opts.port },
    prefix: DEV_PREFIX,
    databaseSchema: DEV_SCHEMA,
    // Fast stall detection so killing a dev worker shows the recovery quickly.
    worker: { lockDurationMs: 10_000, stalledIntervalMs: 5_000, sweepIntervalMs: 5_000 },
  });
  // The samples' build folders live in the data folder, wherever --data-dir puts it.
  if (!config.sourceRoots.includes('*')) config.sourceRoots = [...config.sourceRoots, dataDir];
  const logger = createLogger({ level: config.logLevel });
  const closables: Closable[] = [];
  let httpPort = 0;
  const db = createDb(config);
  try {
    const applied = await migrate(config);
    logger.info({ applied }, 'migrations applied');
    const metrics = createMetrics();
    closables.push(await startWorkerRole(config, logger, { kinds: chooseKinds(undefined), metrics, db }));
    closables.push(await startScheduler(config, logger));
    const http = await startHttpRole(config, logger, { metrics, db });
    closables.push(http);
    httpPort = http.port;
  } catch (err) {
    for (const c of closables.reverse()) await c.close().catch(() => {});
    await db.close();
    await s3?.close();
    throw err;
  }

  await runUntilSignal(async () => {
    // Printed once the signal handlers are in place: Ctrl-C right after the banner stops cleanly.
    process.stdout.write(await banner(config, httpPort, s3 ? join(dataDir, 's3') : undefined));
    if (opts.samples) await enqueueSamples(config, dataDir, logger);
    return {
      async close() {
        for (const c of closables.reverse()) await c.close();
        await db.close();
        await s3?.close();
      },
    };
  }, logger);
}

/** s3rver is an optional dependency: a production install may leave it out (npm ci --omit=optional). */
async function startEmbeddedS3(port: number, directory: string): Promise<EmbeddedS3> {
  let S3rver: new (o: object) => { run(): Promise<AddressInfo>; close(): Promise<void> };
  try {
    ({ default: S3rver } = (await import('s3rver' as string)) as { default: typeof S3rver });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ERR_MODULE_NOT_FOUND') throw err;
    throw new StowageError(
      'STOWAGE_ERR_CONFIG',
      'stowage dev: its embedded S3 server, the optional dependency s3rver, is not installed: run `npm install s3rver`, or set STOWAGE_S3_ENDPOINT (and its keys and bucket) to use a real store',
    );
  }
  await mkdir(directory, { recursive: true });
  const s3 = new S3rver({ port, address: '127.0.0.1', silent: true, directory, configureBuckets: [{ name: DEV_BUCKET }] });
  const address = await s3.run();
  return { endpoint: `http://127.0.0.1:${address.port}`, close: () => s3.close() };
}

/** Bind and release `port`, or say which flag picks another. Port 0 (any free port) is always free. */
async function assertPortFree(host: string, port: number, flag: string): Promise<void> {
  if (port === 0) return;
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(
        new StowageError(
          'STOWAGE_ERR_USAGE',
          err.code === 'EADDRINUSE'
            ? `stowage dev: port ${port} on ${host} is in use: pass ${flag} with another port (or 0 for any free one)`
            : `stowage dev: cannot listen on ${host}:${port} (${err.code ?? err.message}): pass ${flag} with another port`,
        ),
      ),
    );
    server.listen(port, host, () => server.close(() => resolve()));
  });
}

/** What a person needs: where everything is, and an env block a second terminal can paste. */
async function banner(config: Config, port: number, s3Data: string | undefined): Promise<string> {
  const base = `http://${config.http.host}:${port}`;
  const token = config.authSecret ? await createToken(config.authSecret, { user: 'dev-admin', role: 'admin', ttl: '7d' }) : undefined;
  const s = config.storage;
  const env: [string, string | undefined][] = [
    ['REDIS_URL', config.redisUrl],
    ['DATABASE_URL', config.databaseUrl],
    ['STOWAGE_PREFIX', config.prefix],
    ['STOWAGE_DB_SCHEMA', config.databaseSchema],
    ['R2_ENDPOINT', s.endpoint],
    ['R2_BUCKET', s.bucket],
    ['R2_ACCESS_KEY_ID', s.accessKeyId],
    ['R2_SECRET_ACCESS_KEY', s.secretAccessKey],
    ['STOWAGE_URL', base],
    ['STOWAGE_TOKEN', token],
  ];
  const lines = [
    '',
    'Stowage dev fleet is up.',
    `  Bull Board   ${base}/admin/queues`,
    `  API          ${base}/v1/jobs/<kind>/<id>`,
    `  metrics      ${base}/metrics`,
    `  health       ${base}/readyz`,
    `  S3           ${s.endpoint ?? '(R2 account endpoint)'}  bucket ${s.bucket}${s3Data ? `  (s3rver, data in ${s3Data})` : ''}`,
    `  Redis        prefix ${config.prefix}    Postgres  schema ${config.databaseSchema}`,
    token
      ? '  auth         on: STOWAGE_TOKEN below is an admin token for 7 days (stowage token create makes others)'
      : `  auth         OFF: the board and the API are open to anyone who can reach ${config.http.host}:${port} (set STOWAGE_AUTH_SECRET to require tokens)`,
    '',
    'In another terminal, paste this to use the CLI, curl or the SDK against this fleet:',
    '',
    ...env.filter(([, v]) => v !== undefined).map(([k, v]) => `export ${k}=${shellQuote(v!)}`),
    '',
    `  ${CLI} dlq list`,
    `  curl -s${token ? ' -H "authorization: Bearer $STOWAGE_TOKEN"' : ''} "$STOWAGE_URL/v1/jobs/build-artifact/<id>"`,
    `  ${CLI} events --follow`,
    '',
    'Ctrl-C stops everything cleanly.',
    '',
  ];
  return lines.join('\n');
}

/** How the other terminal runs the CLI: from a checkout (tsx runs src/) or an installed package. */
const CLI = import.meta.url.includes('/src/cli/') ? 'npm run stowage --' : 'npx stowage';

function shellQuote(v: string): string {
  return /^[\w@%+=:,./-]+$/.test(v) ? v : `'${v.replace(/'/g, `'\\''`)}'`;
}

/** A few build folders and jobs: three that upload, and one whose folder is missing (it parks). */
async function enqueueSamples(config: Config, dataDir: string, logger: ReturnType<typeof createLogger>) {
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
