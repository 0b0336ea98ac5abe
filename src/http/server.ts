/**
 * The HTTP surface: /healthz, /readyz, /metrics, the /v1 job API and Bull Board at /admin/queues.
 *
 * Who may do what, decided here and nowhere else:
 *
 * | route                  | no auth configured (dev) | STOWAGE_AUTH_SECRET / STOWAGE_BASIC_AUTH set          |
 * | ---------------------- | ------------------------ | ----------------------------------------------------- |
 * | /healthz /readyz       | open                     | open (probes; they say ok/fail and an error code only) |
 * | /metrics               | open                     | open (Prometheus; counts and queue names only)         |
 * | POST /v1/jobs/:kind    | open                     | bearer token with role admin; viewer gets 403          |
 * | GET /v1/jobs/:kind/:id | open                     | any valid bearer token; role user: own jobs only (404) |
 * | GET /v1/…/events (SSE) | open                     | any valid bearer token; role user: own only (events.ts) |
 * | /api/backups…          | open                     | bearer token with role admin, else 403 (backups.ts)    |
 * | /admin/queues          | open                     | basic auth (full access), or a token: admin writes,    |
 * |                        |                          | viewer reads only (writes 403, buttons hidden), user 403 |
 *
 * Basic auth is for people at the board; /v1 takes bearer tokens only. `startServer` refuses to
 * listen beyond loopback when no auth is configured, so "open" only ever means a developer's machine;
 * there, /v1 and the board also refuse a non-loopback Host (DNS rebinding).
 *
 * Browsers cannot add a bearer header to a page load, so the board also takes `?token=` once: it
 * sets an HttpOnly, SameSite=Strict cookie scoped to /admin/queues and redirects to the same URL
 * without the token. Board writes are refused when Origin / Referer / Sec-Fetch-Site show another
 * site; the cookie is never sent cross-site (SameSite=Strict), and basic credentials a browser
 * replays cross-site are caught by the Origin check.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { isIP, type AddressInfo } from 'node:net';
import { HeadBucketCommand } from '@aws-sdk/client-s3';
import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { FastifyAdapter } from '@bull-board/fastify';
import type { Queue } from 'bullmq';
import Fastify, { LogController, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Redis } from 'ioredis';
import { mayRead, verifyToken, type Role } from '../auth/tokens.js';
import type { Config } from '../config.js';
import type { Db } from '../db/pool.js';
import { AuthError, ERROR_CODES, NotFoundError, StowageError, codeOf, type ErrorCode } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import { renderQueueMetrics, type Metrics } from '../observability/metrics.js';
import type { Producer } from '../producers/index.js';
import { DEAD_LETTER_QUEUE, JOB_KINDS, QUEUE_NAMES, isJobKind, type PayloadInput } from '../queues/index.js';
import type { Storage } from '../storage/client.js';
import { registerArtifactRoutes } from './artifacts.js';
import { registerBackupRoutes } from './backups.js';
import { registerFailureRoutes } from './failures.js';
import { registerRecordRoutes } from './records.js';
import { registerEventRoutes, type EventRoutesOptions } from './events.js';

export const BOARD_PATH = '/admin/queues';
/** Cookie that carries a board token after `?token=`; scoped to BOARD_PATH. */
export const BOARD_COOKIE = 'stowage_board';

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

/** Who made a request. `open` is the no-auth dev mode. */
export interface Caller {
  userId: string;
  tenant: string;
  role: Role;
  via: 'token' | 'basic' | 'open';
}

const OPEN_CALLER: Caller = { userId: 'anonymous', tenant: 'anonymous', role: 'admin', via: 'open' };

export interface ErrorBody {
  error: { code: ErrorCode; message: string; issues?: string[] };
  /** On a 404 for a missing artifact: the version can be rebuilt. */
  canRebuild?: true;
}

type ReadyCheck = { status: 'ok'; ms: number } | { status: 'fail'; ms: number; error: string } | { status: 'skipped'; reason: string };

/** A Fastify instance with every route registered, not listening. */
export function buildServer(deps: ServerDeps, options: ServerOptions = {}) {
  const opts = { ...DEFAULT_OPTIONS, ...options };
  const { config } = deps;
  const queues = checkQueues(deps.queues, config.prefix);
  const authEnabled = Boolean(config.authSecret || config.basicAuth);

  const app = Fastify({
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

  app.setErrorHandler((err, req, reply) => {
    const { status, body } = errorResponse(err, req.id);
    if (status >= 500) req.log.error({ err, code: body.error.code }, 'request failed');
    else req.log.info({ code: body.error.code, message: body.error.message }, 'request refused');
    if (status === 401 && !reply.hasHeader('www-authenticate')) reply.header('www-authenticate', 'Bearer realm="stowage"');
    // EventSource and HTTP clients back off on it.
    if (body.error.code === 'STOWAGE_ERR_BUSY') reply.header('retry-after', '5');
    return reply.code(status).send(body);
  });

  app.setNotFoundHandler((req, reply) => {
    const path = req.url.split('?')[0];
    return reply.code(404).send({ error: { code: 'STOWAGE_ERR_NOT_FOUND', message: `no route for ${req.method} ${path}` } } satisfies ErrorBody);
  });

  // ---- probes and metrics ------------------------------------------------------------------

  app.get('/healthz', async () => ({ status: 'ok', uptimeSeconds: Math.round(process.uptime()) }));

  let storageMemo: { storage: Storage } | { error: unknown } | undefined;
  const storage = (): { storage: Storage } | { error: unknown } => {
    if (!storageMemo) {
      try {
        storageMemo = { storage: deps.storage() };
      } catch (error) {
        storageMemo = { error };
      }
    }
    return storageMemo;
  };

  app.get('/readyz', async (req, reply) => {
    const timeoutMs = opts.readyTimeoutMs;
    const made = storage();
    const [redis, postgres, objectStore] = await Promise.all([
      timedCheck(() => deps.redis.ping(), timeoutMs),
      timedCheck(() => deps.db.pool.query('SELECT 1'), timeoutMs),
      'storage' in made
        ? timedCheck((signal) => made.storage.client.send(new HeadBucketCommand({ Bucket: made.storage.bucket }), { abortSignal: signal }), timeoutMs)
        : codeOf(made.error) === 'STOWAGE_ERR_CONFIG'
          ? ({ status: 'skipped', reason: 'object storage is not configured' } as const)
          : ({ status: 'fail', ms: 0, error: describeFailure(made.error) } as const),
    ]);
    const checks = { redis, postgres, storage: objectStore };
    const ready = Object.values(checks).every((c) => c.status !== 'fail');
    if (!ready) req.log.warn({ checks }, 'not ready');
    return reply.code(ready ? 200 : 503).send({ status: ready ? 'ok' : 'fail', checks });
  });

  app.get('/metrics', async (_req, reply) => {
    const [base, queueText] = await Promise.all([
      deps.metrics.registry.metrics(),
      renderQueueMetrics(queues, { timeoutMs: opts.metricsTimeoutMs }),
    ]);
    // Two registries' text concatenated is valid exposition: their metric names are disjoint.
    const text = base.endsWith('\n') || base === '' ? base + queueText : `${base}\n${queueText}`;
    return reply.header('content-type', deps.metrics.registry.contentType).send(text);
  });

  // ---- /v1 job API --------------------------------------------------------------------------

  /** The caller of a /v1 request, from its bearer token. */
  const apiCaller = async (req: FastifyRequest): Promise<Caller> => {
    if (!authEnabled) {
      assertLoopbackHost(req);
      return OPEN_CALLER;
    }
    const auth = req.headers.authorization;
    const bearer = auth ? parseBearer(auth) : undefined;
    if (!bearer) {
      throw new AuthError(
        auth ? 'the /v1 API takes bearer tokens only (Authorization: Bearer <token>)' : 'missing bearer token: send Authorization: Bearer <token>',
      );
    }
    if (!config.authSecret) throw new AuthError('bearer tokens are not enabled on this server (STOWAGE_AUTH_SECRET is not set)');
    const principal = await verifyToken(config.authSecret, bearer);
    return { userId: principal.userId, tenant: principal.tenant, role: principal.role, via: 'token' };
  };

  app.post<{ Params: { kind: string } }>('/v1/jobs/:kind', async (req, reply) => {
    const caller = await apiCaller(req);
    if (caller.role !== 'admin') {
      throw new AuthError(`role "${caller.role}" may not enqueue jobs; an admin token is required`, 'STOWAGE_ERR_FORBIDDEN');
    }
    const { kind } = req.params;
    if (!isJobKind(kind)) throw unknownKind(kind, JOB_KINDS);
    // producer.enqueue validates with the same schema as the SDK and names each bad field.
    const enqueued = await deps.producer.enqueue(kind, req.body as PayloadInput<typeof kind>);
    req.log.info({ kind, jobId: enqueued.jobId, created: enqueued.created, user: caller.userId, tenant: caller.tenant }, 'job enqueued');
    return reply.code(202).send(enqueued);
  });

  app.get<{ Params: { kind: string; id: string } }>('/v1/jobs/:kind/:id', async (req) => {
    const caller = await apiCaller(req);
    const { kind, id } = req.params;
    const queue = (QUEUE_NAMES as readonly string[]).includes(kind) ? queues.find((q) => q.name === kind) : undefined;
    if (!queue) throw unknownKind(kind, QUEUE_NAMES);
    const job = await queue.getJob(id);
    // Another user's job answers exactly like a missing one, so ids cannot be probed.
    if (!job || !mayRead(caller, (job.data as { userId?: unknown } | undefined)?.userId)) throw new NotFoundError(`job ${id} not found in queue ${kind}`);
    const iso = (ms: number | undefined) => (ms ? new Date(ms).toISOString() : null);
    return {
      jobId: job.id ?? id,
      kind,
      state: await job.getState(),
      progress: job.progress ?? null,
      result: job.returnvalue ?? null,
      failedReason: job.failedReason || null,
      attemptsMade: job.attemptsMade,
      createdAt: iso(job.timestamp),
      processedAt: iso(job.processedOn),
      finishedAt: iso(job.finishedOn),
    };
  });

  registerEventRoutes(app, { config, logger: deps.logger, queues, redis: deps.redis, authenticate: apiCaller }, opts.events);
  registerArtifactRoutes(app, { db: deps.db, storage: deps.storage, authenticate: apiCaller });
  registerFailureRoutes(app, { config, db: deps.db, redis: deps.redis, metrics: deps.metrics, logger: deps.logger, authenticate: apiCaller });
  registerRecordRoutes(app, { storage: deps.storage, producer: deps.producer, authenticate: apiCaller });
  registerBackupRoutes(app, { db: deps.db, storage: deps.storage, producer: deps.producer, authenticate: apiCaller });

  // ---- Bull Board ---------------------------------------------------------------------------

  const serverAdapter = new FastifyAdapter();
  // basePath feeds the page's <base href>; the register prefix below places the routes. Both are needed.
  serverAdapter.setBasePath(BOARD_PATH);
  createBullBoard({
    queues: queues.map(
      (q) =>
        new BullMQAdapter(q, {
          description: q.name === DEAD_LETTER_QUEUE ? 'Jobs that failed for good, parked with payload and error; redrive them from the CLI' : '',
        }),
    ),
    serverAdapter,
    options: { uiConfig: { boardTitle: 'Stowage' } },
  });

  /** Board role per request, read by onSend to present a read-only board to viewers. */
  const boardRoles = new WeakMap<FastifyRequest, Role>();

  const boardDeny = (reply: FastifyReply, err: unknown): FastifyReply => {
    const { status, body } = errorResponse(err, reply.request.id);
    if (status === 401) {
      // A Basic challenge makes a browser prompt for the user and password.
      reply.header('www-authenticate', config.basicAuth ? 'Basic realm="stowage", charset="UTF-8"' : 'Bearer realm="stowage"');
      if (config.authSecret) body.error.message += `; with a token, open ${BOARD_PATH}?token=<token>`;
    }
    return reply.code(status).send(body);
  };

  /** The board caller, or `{ fromQuery }` when a `?token=` must be swapped for the cookie first. */
  const boardCaller = async (req: FastifyRequest): Promise<{ role: Role; fromQuery?: { token: string; expiresAt: number } }> => {
    const auth = req.headers.authorization;
    if (auth) {
      const basic = parseBasic(auth);
      if (basic !== undefined) {
        if (!config.basicAuth) throw new AuthError('basic auth is not enabled on this server');
        if (!sameSecret(basic, config.basicAuth)) throw new AuthError('wrong user name or password');
        return { role: 'admin' };
      }
      const bearer = parseBearer(auth);
      if (!bearer) throw new AuthError('unsupported Authorization scheme; use Basic or Bearer');
      return { role: (await verifyBoardToken(bearer)).role };
    }
    const query = (req.query ?? {}) as Record<string, unknown>;
    if (typeof query.token === 'string' && (req.method === 'GET' || req.method === 'HEAD')) {
      const principal = await verifyBoardToken(query.token);
      return { role: principal.role, fromQuery: { token: query.token, expiresAt: principal.expiresAt } };
    }
    const cookie = readCookie(req.headers.cookie, BOARD_COOKIE);
    if (cookie) return { role: (await verifyBoardToken(cookie)).role };
    throw new AuthError('authentication required');
  };

  const verifyBoardToken = async (token: string) => {
    if (!config.authSecret) throw new AuthError('bearer tokens are not enabled on this server (STOWAGE_AUTH_SECRET is not set)');
    return verifyToken(config.authSecret, token);
  };

  app.register(
    async (board) => {
      board.addHook('onRequest', async (req, reply) => {
        const write = req.method !== 'GET' && req.method !== 'HEAD';
        if (write) {
          const crossSite = crossSiteReason(req);
          if (crossSite) return boardDeny(reply, new AuthError(crossSite, 'STOWAGE_ERR_FORBIDDEN'));
        }
        if (!authEnabled) {
          try {
            assertLoopbackHost(req);
          } catch (err) {
            return boardDeny(reply, err);
          }
          boardRoles.set(req, 'admin');
          return;
        }
        let caller: Awaited<ReturnType<typeof boardCaller>>;
        try {
          caller = await boardCaller(req);
        } catch (err) {
          // A stale or tampered cookie would otherwise fail every request until it expires.
          if (readCookie(req.headers.cookie, BOARD_COOKIE)) reply.header('set-cookie', boardCookie('', 0, req.protocol === 'https'));
          return boardDeny(reply, err);
        }
        if (caller.role === 'user') {
          return boardDeny(reply, new AuthError('the board is for operators; a user token may not open it (use an admin or viewer token)', 'STOWAGE_ERR_FORBIDDEN'));
        }
        if (caller.fromQuery) {
          const maxAge = caller.fromQuery.expiresAt - Math.floor(Date.now() / 1000);
          const url = new URL(req.url, 'http://board.invalid');
          url.searchParams.delete('token');
          // Redirect so the token leaves the address bar and history; the cookie carries it from here.
          return reply
            .header('set-cookie', boardCookie(caller.fromQuery.token, maxAge, req.protocol === 'https'))
            .header('cache-control', 'no-store')
            .header('referrer-policy', 'no-referrer')
            .redirect(url.pathname + url.search, 303);
        }
        if (write && caller.role !== 'admin') {
          return boardDeny(reply, new AuthError('viewers have a read-only board; an admin token or basic auth is required to change jobs', 'STOWAGE_ERR_FORBIDDEN'));
        }
        boardRoles.set(req, caller.role);
      });

      board.addHook('onSend', async (req, reply, payload) => {
        // The board's buttons can be clicked by a user tricked into it inside a frame.
        reply.header('x-frame-options', 'DENY');
        reply.header('content-security-policy', "frame-ancestors 'none'");
        // Viewers get the board's own read-only presentation: no buttons that would only get a 403.
        if (boardRoles.get(req) === 'viewer' && req.routeOptions.url === `${BOARD_PATH}/api/queues` && typeof payload === 'string') {
          try {
            const body = JSON.parse(payload) as { queues?: Record<string, unknown>[] };
            for (const q of body.queues ?? []) Object.assign(q, { readOnlyMode: true, allowRetries: false, allowCompletedRetries: false });
            return JSON.stringify(body);
          } catch {
            return payload;
          }
        }
        return payload;
      });

      await board.register(serverAdapter.registerPlugin());
    },
    { prefix: BOARD_PATH },
  );

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
        `or STOWAGE_BASIC_AUTH (user:password), or bind HTTP_HOST to 127.0.0.1`,
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

/** True for addresses only this machine can reach. */
export function isLoopback(host: string): boolean {
  const h = host.trim().toLowerCase().replace(/^\[(.*)\]$/, '$1');
  if (h === 'localhost') return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  if (isIP(h) === 6) return h === '::1' || /^::ffff:127\./.test(h);
  return false;
}

/**
 * In the no-auth mode, serve only requests addressed to a loopback name. A hostile page can point
 * its own domain at 127.0.0.1 (DNS rebinding): its requests then pass the Origin check, but carry
 * its Host.
 */
function assertLoopbackHost(req: FastifyRequest): void {
  const host = req.host.startsWith('[') ? req.host.slice(0, req.host.indexOf(']') + 1) : req.host.split(':')[0]!;
  if (!isLoopback(host)) {
    throw new AuthError(
      `no authentication is configured, so only loopback host names are served (got Host ${host}); set STOWAGE_AUTH_SECRET or STOWAGE_BASIC_AUTH`,
      'STOWAGE_ERR_FORBIDDEN',
    );
  }
}

/** Status and body for an error: StowageError codes via ERROR_CODES; never a stack trace. */
export function errorResponse(err: unknown, requestId: string): { status: number; body: ErrorBody } {
  const code = codeOf(err);
  if (code !== 'STOWAGE_ERR_INTERNAL' || err instanceof StowageError) {
    const error: ErrorBody['error'] = { code, message: (err as Error).message };
    const issues = (err as { issues?: unknown }).issues;
    if (Array.isArray(issues)) error.issues = issues.map(String);
    // A missing artifact can be rebuilt: say so, as the download endpoints promise.
    const canRebuild = (err as { canRebuild?: unknown }).canRebuild === true;
    return { status: ERROR_CODES[code].http, body: canRebuild ? { error, canRebuild: true } : { error } };
  }
  // Fastify's own client errors (bad JSON, wrong content type, body too large) keep their status.
  const statusCode = (err as { statusCode?: unknown } | null)?.statusCode;
  if (typeof statusCode === 'number' && statusCode >= 400 && statusCode < 500) {
    return {
      status: statusCode,
      body: { error: { code: statusCode === 404 ? 'STOWAGE_ERR_NOT_FOUND' : 'STOWAGE_ERR_USAGE', message: (err as Error).message } },
    };
  }
  return { status: 500, body: { error: { code: 'STOWAGE_ERR_INTERNAL', message: `internal error (request ${requestId}); see the server log` } } };
}

function unknownKind(kind: string, known: readonly string[]): StowageError {
  return new StowageError('STOWAGE_ERR_UNKNOWN_KIND', `unknown job kind "${kind}"; expected one of ${known.join(', ')}`);
}

/** Every QUEUE_NAMES entry present, none twice, all under the configured prefix: fails fast on a wiring mistake. */
function checkQueues(queues: readonly Queue[], prefix: string): Queue[] {
  const names = queues.map((q) => q.name);
  const missing = QUEUE_NAMES.filter((n) => !names.includes(n));
  const repeated = names.filter((n, i) => names.indexOf(n) !== i);
  const wrongPrefix = queues.filter((q) => (q.opts.prefix ?? 'bull') !== prefix).map((q) => q.name);
  const problems = [
    missing.length && `missing queues: ${missing.join(', ')}`,
    repeated.length && `repeated queues: ${repeated.join(', ')}`,
    wrongPrefix.length && `queues not under prefix "${prefix}": ${wrongPrefix.join(', ')}`,
  ].filter(Boolean);
  if (problems.length) throw new StowageError('STOWAGE_ERR_CONFIG', `buildServer: ${problems.join('; ')}`);
  return [...queues];
}

async function timedCheck(run: (signal: AbortSignal) => Promise<unknown>, timeoutMs: number): Promise<ReadyCheck> {
  const started = performance.now();
  const controller = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      controller.abort();
      reject(new Error(`timed out after ${timeoutMs} ms`));
    }, timeoutMs);
  });
  try {
    await Promise.race([run(controller.signal), timeout]);
    return { status: 'ok', ms: Math.round(performance.now() - started) };
  } catch (err) {
    return { status: 'fail', ms: Math.round(performance.now() - started), error: describeFailure(err) };
  } finally {
    clearTimeout(timer);
  }
}

/**
 * A short, non-revealing reason for an unauthenticated probe response: an error code or class,
 * never a message that may name hosts, users or buckets. The full error goes to the log.
 */
function describeFailure(err: unknown): string {
  if (!(err instanceof Error)) return 'error';
  if (/^timed out after \d+ ms$/.test(err.message)) return err.message;
  const code = (err as { code?: unknown }).code;
  const http = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
  const label = typeof code === 'string' ? code : err.name;
  return http ? `${label} (HTTP ${http})` : label;
}

function parseBearer(header: string): string | undefined {
  return /^Bearer\s+([A-Za-z0-9._~+/=-]+)\s*$/i.exec(header)?.[1];
}

/** `user:password` from a Basic header, or undefined when the scheme is not Basic. */
function parseBasic(header: string): string | undefined {
  const match = /^Basic\s+([A-Za-z0-9+/=]*)\s*$/i.exec(header);
  return match ? Buffer.from(match[1]!, 'base64').toString('utf8') : undefined;
}

/** Constant-time comparison that also hides the length. */
function sameSecret(a: string, b: string): boolean {
  return timingSafeEqual(createHash('sha256').update(a).digest(), createHash('sha256').update(b).digest());
}

function readCookie(header: string | undefined, name: string): string | undefined {
  for (const part of header?.split(';') ?? []) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return decodeURIComponent(part.slice(eq + 1).trim()) || undefined;
  }
  return undefined;
}

function boardCookie(token: string, maxAgeSeconds: number, secure: boolean): string {
  const attributes = [`Path=${BOARD_PATH}`, 'HttpOnly', 'SameSite=Strict', `Max-Age=${Math.max(0, maxAgeSeconds)}`];
  if (secure) attributes.push('Secure');
  return [`${BOARD_COOKIE}=${encodeURIComponent(token)}`, ...attributes].join('; ');
}

/**
 * Why a board write looks cross-site, or undefined. Origin (or Referer when Origin is absent) must
 * name this Host; Sec-Fetch-Site, sent by current browsers, must say same-origin. Absent headers
 * pass: non-browser clients (curl, the CLI) send none and authenticate by header.
 */
function crossSiteReason(req: FastifyRequest): string | undefined {
  const site = req.headers['sec-fetch-site'];
  if (typeof site === 'string' && site !== 'same-origin' && site !== 'none') {
    return `cross-site request refused (Sec-Fetch-Site: ${site})`;
  }
  const host = req.host.toLowerCase();
  const hostOf = (value: string) => {
    try {
      return new URL(value).host.toLowerCase();
    } catch {
      return undefined;
    }
  };
  const origin = req.headers.origin;
  if (origin !== undefined) {
    return hostOf(origin) === host ? undefined : `cross-origin request refused: Origin does not match Host ${host}`;
  }
  const referer = req.headers.referer;
  if (referer !== undefined) {
    return hostOf(referer) === host ? undefined : `cross-origin request refused: Referer does not match Host ${host}`;
  }
  return undefined;
}

/** The URL with any `token` query parameter blanked, for logs. */
export function redactUrl(url: string): string {
  if (!/[?&]token=/.test(url)) return url;
  const parsed = new URL(url, 'http://log.invalid');
  parsed.searchParams.set('token', '[redacted]');
  return parsed.pathname + parsed.search;
}
