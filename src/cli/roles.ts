/**
 * The long-running roles (worker, scheduler, http) wired from a config. Each returns something
 * with `close()`; the CLI handles signals and exit codes.
 */
import { createServer, type Server } from 'node:http';
import type { Config } from '../config.js';
import { createDb, type Db } from '../db/pool.js';
import { StowageError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import { createMetrics, type Metrics } from '../observability/metrics.js';
import { JOB_KINDS, isJobKind, type JobKind } from '../queues/index.js';
import { startScheduler, type Scheduler } from '../queues/scheduler.js';
import { PROCESSORS } from '../workers/processors.js';
import { startRuntime, type ProcessorMap, type Runtime } from '../workers/runtime.js';

export interface Closable {
  close(): Promise<void>;
}

/** Kinds from `--queues a,b` (default: every kind that has a processor). */
export function chooseKinds(list: string | undefined, processors: ProcessorMap = PROCESSORS): JobKind[] {
  const available = JOB_KINDS.filter((k) => processors[k]);
  if (!list) {
    if (!available.length) throw new StowageError('STOWAGE_ERR_USAGE', 'no job kind has a processor yet');
    return available;
  }
  const names = list
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const unknown = names.filter((n) => !isJobKind(n));
  if (unknown.length) {
    throw new StowageError(
      'STOWAGE_ERR_USAGE',
      `--queues: unknown kind(s) ${unknown.join(', ')}; expected some of ${JOB_KINDS.join(', ')}`,
    );
  }
  const missing = names.filter((n) => !processors[n as JobKind]);
  if (missing.length) {
    throw new StowageError(
      'STOWAGE_ERR_USAGE',
      `--queues: no processor yet for ${missing.join(', ')}; available: ${available.join(', ') || 'none'}`,
    );
  }
  return names as JobKind[];
}

export interface WorkerRole extends Closable {
  runtime: Runtime;
  metricsServer?: Server;
}

export async function startWorkerRole(
  config: Config,
  logger: Logger,
  options: { kinds: JobKind[]; concurrency?: number; metricsPort?: number; metrics?: Metrics; db?: Db; processors?: ProcessorMap },
): Promise<WorkerRole> {
  if (options.metricsPort !== undefined) await checkMetricsHost(config, options.metricsPort);
  const metrics = options.metrics ?? createMetrics();
  const db = options.db ?? createDb(config);
  const concurrency = options.concurrency ? Object.fromEntries(options.kinds.map((k) => [k, options.concurrency!])) : undefined;
  const runtime = await startRuntime({
    config,
    logger,
    metrics,
    db,
    kinds: options.kinds,
    processors: options.processors ?? PROCESSORS,
    ...(concurrency ? { concurrency } : {}),
  });
  let metricsServer: Server | undefined;
  if (options.metricsPort !== undefined) {
    // Each worker process can be scraped on its own: counters live in the process that ran the job.
    metricsServer = createServer((req, res) => {
      if (req.url !== '/metrics') {
        res.writeHead(404).end();
        return;
      }
      metrics.registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(text),
        () => res.writeHead(500).end(),
      );
    });
    await new Promise<void>((resolve, reject) => {
      metricsServer!.once('error', reject);
      metricsServer!.listen(options.metricsPort, config.http.host, resolve);
    });
    logger.info({ port: options.metricsPort }, 'worker metrics listening');
  }
  return {
    runtime,
    ...(metricsServer ? { metricsServer } : {}),
    async close() {
      await runtime.close();
      await new Promise<void>((resolve) => (metricsServer ? metricsServer.close(() => resolve()) : resolve()));
      if (!options.db) await db.close();
    },
  };
}

/**
 * The http role's rule for the worker's metrics listener: without authentication configured (the
 * dev mode), listen on loopback only. /metrics is open on both listeners; a deployment that set
 * STOWAGE_AUTH_SECRET or STOWAGE_BASIC_AUTH has chosen to expose its listeners (Prometheus scrapes
 * each worker pod), while an unconfigured one that inherited HTTP_HOST=0.0.0.0 has not. Checked
 * before the runtime starts, so a refused worker never takes a job.
 */
async function checkMetricsHost(config: Config, port: number): Promise<void> {
  const { host } = config.http;
  if (config.authSecret || config.basicAuth) return;
  // Loaded here: the worker otherwise needs nothing from the HTTP layer.
  const { isLoopback } = await import('../http/auth.js');
  if (isLoopback(host)) return;
  throw new StowageError(
    'STOWAGE_ERR_CONFIG',
    `refusing to serve worker metrics on ${host}:${port} without authentication configured: bind STOWAGE_HTTP_HOST to 127.0.0.1, ` +
      'or set STOWAGE_AUTH_SECRET or STOWAGE_BASIC_AUTH as the http role requires for a non-loopback host',
  );
}

export async function startSchedulerRole(config: Config, logger: Logger): Promise<Scheduler> {
  return startScheduler(config, logger);
}

/**
 * Run a long-lived role until SIGTERM/SIGINT, then close it; a second signal exits at once. The
 * handlers are in place before `start` runs, so a signal during start-up closes the role once it is up.
 */
export async function runUntilSignal(start: () => Promise<Closable>, log: Logger): Promise<void> {
  let signalled: NodeJS.Signals | undefined;
  let stopping = false;
  let role: Closable | undefined;
  let done!: () => void;
  const finished = new Promise<void>((resolve) => (done = resolve));
  const stop = (signal: NodeJS.Signals) => {
    stopping = true;
    log.info({ signal }, 'shutting down');
    role!.close().then(done, (err: unknown) => {
      log.error({ err }, 'shutdown failed');
      process.exitCode = 1;
      done();
    });
  };
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping || signalled) {
      log.warn({ signal }, 'second signal: exiting now');
      process.exit(130);
    }
    if (role) stop(signal);
    else signalled = signal;
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  role = await start();
  if (signalled) stop(signalled);
  await finished;
}
