/**
 * The HTTP server, assembled: the auth plugin (auth.ts, which also says who may do what), the rate
 * limits (rate-limit.ts), probes (/healthz, /readyz), /metrics, the /v1 and /api route groups (one
 * file each) and Bull Board at /admin/queues, on one Fastify instance with one error mapping
 * (error-response.ts).
 *
 * The /v1 and /api routes share one onRequest hook: cross-site refusal, authentication, then the
 * caller's rate limits, all before the body is read. Slow clients are bounded by the http.*Timeout
 * settings: a request must arrive whole within http.requestTimeoutMs (Node answers 408 and closes),
 * which bounds receiving only, so event streams and downloads run as long as they need.
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Queue } from 'bullmq';
import Fastify, { LogController, type FastifyInstance } from 'fastify';
import type { Redis } from 'ioredis';
import { HTTP_DEFAULTS, type Config } from '../config.js';
import type { Db } from '../db/pool.js';
import { StowageError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { Producer } from '../producers/index.js';
import { QUEUE_NAMES, queuePrefix } from '../queues/index.js';
import { isSecretParam } from '../queues/redact.js';
import type { Storage } from '../storage/client.js';
import { registerArtifactRoutes } from './artifacts.js';
import { authPlugin, closeUnreadBody, isLoopback } from './auth.js';
import { registerBackupRoutes } from './backups.js';
import { BOARD_PATH, boardRoutes } from './board.js';
import { registerDeadLetterRoutes } from './dead-letters.js';
import { sendError, sendNotFound } from './error-response.js';
import { registerEventRoutes, type EventRoutesOptions } from './events.js';
import { registerFailureRoutes } from './failures.js';
import { jobRoutes } from './jobs.js';
import { metricsRoute } from './metrics.js';
import { openapiPlugin } from './openapi.js';
import { probeRoutes } from './probes.js';
import { rateLimitPlugin } from './rate-limit.js';
import { registerRecordRoutes } from './records.js';

export { BOARD_COOKIE, isLoopback, type Caller } from './auth.js';
export { BOARD_PATH } from './board.js';
export { errorResponse, type ErrorBody } from './error-response.js';

export interface ServerDeps {
  config: Config;
  logger: Logger;
  /** Enqueues for POST /v1/jobs: the same validation as the SDK. */
  producer: Producer;
  /**
   * One Queue per name in QUEUE_NAMES (dead-letter included) with config.prefix, for reads, Bull Board
   * and /metrics. Extra queues (e.g. maintenance) are shown on the board and in metrics too; the
   * /v1 API reads only QUEUE_NAMES.
   */
  queues: readonly Queue[];
  /** Pinged by /readyz. */
  redis: Redis;
  db: Db;
  /**
   * Object storage, made on first use by /readyz; throws STOWAGE_ERR_CONFIG when storage is not
   * configured (readiness then reports it `skipped`). Called at most once; the caller closes it.
   */
  storage: () => Storage;
  metrics: Metrics;
}

export interface ServerOptions {
  /** Bound on each readiness check, in ms. Default 2000. */
  readyTimeoutMs?: number;
  /** Bound on each queue's reads during a /metrics scrape, in ms. Default 2000. */
  metricsTimeoutMs?: number;
  /** Server-Sent Events streams (heartbeat, slow-client bound); defaults in events.ts. */
  events?: EventRoutesOptions;
}

const DEFAULT_OPTIONS = {
  readyTimeoutMs: 2000,
  metricsTimeoutMs: 2000,
  events: {},
} satisfies Required<ServerOptions>;

/** A Fastify instance with every route registered, not listening. */
export function buildServer(deps: ServerDeps, options: ServerOptions = {}) {
  const opts = { ...DEFAULT_OPTIONS, ...options };
  const { config } = deps;
  const queues = checkQueues(deps.queues, config.prefix, deps.redis.isCluster);

  const http = { ...HTTP_DEFAULTS, ...definedOnly(config.http) };
  const { requestTimeoutMs, keepAliveTimeoutMs, connectionTimeoutMs, trustProxy } = http;
  const app = Fastify({
    // Node checks the request bounds every connectionsCheckingInterval (30 s by default): often
    // enough that a short bound holds. headersTimeout may not exceed requestTimeout.
    http: {
      requestTimeout: requestTimeoutMs,
      headersTimeout: requestTimeoutMs > 0 ? Math.min(60_000, requestTimeoutMs) : 60_000,
      connectionsCheckingInterval: requestTimeoutMs > 0 ? Math.min(30_000, Math.max(250, Math.floor(requestTimeoutMs / 4))) : 30_000,
    },
    requestTimeout: requestTimeoutMs,
    keepAliveTimeout: keepAliveTimeoutMs,
    connectionTimeout: connectionTimeoutMs,
    // request.ip, .protocol and .host honour X-Forwarded-* from these peers only.
    trustProxy,
    loggerInstance: deps.logger,
    // Fastify's own request lines carry the raw URL, which may hold ?token=; ours redact it.
    logController: new LogController({ disableRequestLogging: true }),
    // A client-chosen request id would let callers forge log correlation.
    requestIdHeader: false,
  });

  app.addHook('onResponse', async (req, reply) => {
    const quiet = req.url === '/healthz' || req.url === '/readyz' || req.url === '/metrics' || req.url.startsWith(`${BOARD_PATH}/static/`);
    req.log[quiet ? 'debug' : 'info'](
      { method: req.method, url: redactUrl(req.url), statusCode: reply.statusCode, ms: Math.round(reply.elapsedTime) },
      'request',
    );
  });
  app.setErrorHandler(sendError);
  app.setNotFoundHandler(sendNotFound);

  // First: everything registered after it sees request.caller and the checks.
  app.register(authPlugin, { config, boardPath: BOARD_PATH });
  app.register(rateLimitPlugin, {
    redis: deps.redis,
    prefix: config.prefix,
    requestsPerMinute: http.requestsPerMinute,
    enqueuesPerMinute: http.enqueuesPerMinute,
  });
  // Before the routes: it collects them (onRoute) for GET /openapi.json.
  app.register(openapiPlugin);
  app.register(probeRoutes, { redis: deps.redis, db: deps.db, storage: deps.storage, readyTimeoutMs: opts.readyTimeoutMs });
  app.register(metricsRoute, { metrics: deps.metrics, queues, timeoutMs: opts.metricsTimeoutMs });
  // Every /v1 and /api route: refused (cross-site, no credentials, over its rate) before its body is read.
  app.register(async (api: FastifyInstance<Server, IncomingMessage, ServerResponse, Logger>) => {
    api.addHook('onRequest', async (req, reply) => {
      await api.authenticateApi(req, reply);
      try {
        await api.limitRate(req, reply);
      } catch (err) {
        closeUnreadBody(req, reply);
        throw err;
      }
    });
    api.register(jobRoutes, { producer: deps.producer, queues });
    // These route groups take the check as a dependency (their own tests pass a stand-in); it
    // answers the caller the hook found.
    const { authenticate } = api;
    registerEventRoutes(api, { config, logger: deps.logger, queues, redis: deps.redis, authenticate }, opts.events);
    registerArtifactRoutes(api, { db: deps.db, storage: deps.storage, authenticate, rebuildUrl: config.artifact.rebuildUrl });
    registerFailureRoutes(api, { config, db: deps.db, redis: deps.redis, metrics: deps.metrics, logger: deps.logger, authenticate });
    registerRecordRoutes(api, { storage: deps.storage, producer: deps.producer, authenticate });
    registerBackupRoutes(api, { db: deps.db, storage: deps.storage, producer: deps.producer, authenticate, config: deps.config });
    registerDeadLetterRoutes(api, { config, redis: deps.redis, logger: deps.logger, metrics: deps.metrics, authenticate });
  });
  app.register(boardRoutes, { prefix: BOARD_PATH, queues });

  return app;
}

export type StowageServer = ReturnType<typeof buildServer>;

export interface RunningServer {
  app: StowageServer;
  /** e.g. http://127.0.0.1:3000 */
  url: string;
  close(): Promise<void>;
}

/**
 * Build and listen on config.http.host/port. Refuses, before binding anything, to listen beyond
 * loopback when neither STOWAGE_AUTH_SECRET nor STOWAGE_BASIC_AUTH is set: the board would let
 * anyone on the network empty or obliterate queues.
 */
export async function startServer(deps: ServerDeps, options: ServerOptions = {}): Promise<RunningServer> {
  const { host, port } = deps.config.http;
  if (!deps.config.authSecret && !deps.config.basicAuth && !isLoopback(host)) {
    throw new StowageError(
      'STOWAGE_ERR_CONFIG',
      `refusing to listen on ${host}:${port} without authentication: set STOWAGE_AUTH_SECRET (bearer tokens) ` +
        `or STOWAGE_BASIC_AUTH (user:password), or bind STOWAGE_HTTP_HOST to 127.0.0.1`,
    );
  }
  const app = buildServer(deps, options);
  try {
    await app.listen({ host, port });
  } catch (err) {
    await app.close();
    throw err;
  }
  const address = app.server.address() as AddressInfo;
  const shown = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return { app, url: `http://${shown}:${address.port}`, close: () => app.close() };
}

/** Every QUEUE_NAMES entry present, none twice, all under the configured prefix: fails fast on a wiring mistake. */
function checkQueues(queues: readonly Queue[], prefix: string, cluster: boolean): Queue[] {
  const names = queues.map((q) => q.name);
  const missing = QUEUE_NAMES.filter((n) => !names.includes(n));
  const repeated = names.filter((n, i) => names.indexOf(n) !== i);
  const wrongPrefix = queues.filter((q) => (q.opts.prefix ?? 'bull') !== queuePrefix(prefix, q.name, cluster)).map((q) => q.name);
  const problems = [
    missing.length && `missing queues: ${missing.join(', ')}`,
    repeated.length && `repeated queues: ${repeated.join(', ')}`,
    wrongPrefix.length && `queues not under prefix "${prefix}": ${wrongPrefix.join(', ')}`,
  ].filter(Boolean);
  if (problems.length) throw new StowageError('STOWAGE_ERR_CONFIG', `buildServer: ${problems.join('; ')}`);
  return [...queues];
}

/** `obj` without its undefined properties: what may override defaults. */
function definedOnly<T extends object>(obj: T): { [K in keyof T]?: Exclude<T[K], undefined> } {
  return Object.fromEntries(Object.entries(obj).filter(([, v]) => v !== undefined)) as { [K in keyof T]?: Exclude<T[K], undefined> };
}

/**
 * The URL with every secret query parameter blanked, for logs. Names are compared as the query
 * parser reads them (percent-decoded, any case: `?%74oken=` authenticates like `?token=`), and the
 * same secret names as in payloads count (token, access_token, password, …: isSecretParam).
 */
export function redactUrl(url: string): string {
  const q = url.indexOf('?');
  if (q === -1) return url;
  const hash = url.indexOf('#', q);
  const params = [...new URLSearchParams(url.slice(q + 1, hash === -1 ? undefined : hash))];
  if (!params.some(([name]) => isSecretParam(name))) return url;
  const kept = new URLSearchParams(params.map(([name, value]): [string, string] => [name, isSecretParam(name) ? '[redacted]' : value]));
  return `${url.slice(0, q)}?${kept}`;
}
