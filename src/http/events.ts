/**
 * Live events over Server-Sent Events.
 *
 * - `GET /v1/jobs/:kind/:id/events`: one job. First the job's earlier domain events and a `state`
 *   snapshot, then live `progress`, `state` (active, waiting, delayed: a retry is on its way),
 *   the job's domain events, and finally `completed` (with the result) or `failed` (with the
 *   reason), after which the stream ends.
 * - `GET /v1/events[?type=a,b]`: every domain event (or those types), live. A reconnecting client
 *   (`Last-Event-ID`) first gets what it missed. A `user` token gets only events whose data carry
 *   its own `userId` (operators see all; see mayRead), and a job stream of its own jobs only.
 *
 * Domain events go out as `event: <type>` with `id: <stream id>` and the DomainEvent as data.
 *
 * Redis connections are bounded whatever the number of clients: one shared reader of the domain
 * stream (XREAD BLOCK on its own connection) fans out to every client, and one shared BullMQ
 * QueueEvents per queue (made on first use) carries progress, state changes, completed and failed.
 * Both close with the server.
 *
 * Ordering. A job's lifecycle events (BullMQ's event stream of its queue) and its domain events
 * (Stowage's stream) are two Redis streams read by two readers, so they can arrive in either order,
 * and one reader can lag (a reconnect). Before a job stream sends an event from one stream it reads
 * the other stream from its cursor up to that event's time (stream ids are Redis time, ms) and sends
 * what it finds first; events arriving later that a read already sent are skipped by id. So events
 * go out in Redis time order whichever reader is first. Within one millisecond, progress and state
 * go before a domain event, and completed/failed after it (a job's domain events are written before
 * it finishes). Per client that is one short stream read per event of its job.
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { QueueEvents, type Queue } from 'bullmq';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Redis } from 'ioredis';
import { z } from 'zod';
import { mayRead, type Role } from '../auth/tokens.js';
import type { Config } from '../config.js';
import { NotFoundError, StowageError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import { createEventStream, QUEUE_NAMES, redisKeys, type DomainEvent, type EventStream } from '../queues/index.js';
import { sleep } from '../retry.js';
import { jsonSchema, replies, validatedInHandler } from './schemas.js';

export interface EventRoutesDeps {
  config: Config;
  logger: Logger;
  /** The server's queues; the job route serves QUEUE_NAMES only. */
  queues: readonly Queue[];
  /** For short reads; duplicated for the blocking readers. */
  redis: Redis;
  /** Resolves for an allowed caller, throws AuthError otherwise. Runs before the stream opens. */
  authenticate(req: FastifyRequest): Promise<{ userId: string; role: Role }>;
}

export interface EventRoutesOptions {
  /** Comment line sent this often so proxies keep the connection open, in ms. Default 15000. */
  heartbeatMs?: number;
  /** A client whose unsent output exceeds this many bytes is too slow and is disconnected. Default 1 MiB. */
  maxBufferedBytes?: number;
  /** Open streams at most; another one is refused with 503. Default: config `events.maxClients`. */
  maxClients?: number;
}

const DEFAULTS = {
  heartbeatMs: 15_000,
  maxBufferedBytes: 1024 * 1024,
} satisfies Omit<Required<EventRoutesOptions>, 'maxClients'>;

/** XREAD BLOCK bound of the shared domain-event reader's loop. */
const BLOCK_MS = 2_000;
/** Page size of stream replays. */
const PAGE = 500;
/** Job timestamps come from the producer's clock, stream ids from Redis's: allow this much skew. */
const CLOCK_SKEW_MS = 60_000;
/** `id:` of a job stream's final event. EventSource reconnects after a stream ends; this says "don't": 204. */
const DONE_ID = 'done';
const TYPE_PATTERN = /^[a-z][a-z0-9_]{0,63}$/;
/** Largest sequence number of a stream id. */
const MAX_SEQ = '18446744073709551615';

const sse = { description: 'Server-Sent Events', content: { 'text/event-stream': { schema: { type: 'string' } } } };
const resume = jsonSchema(
  z.object({ 'last-event-id': z.string().optional().describe('the last `id:` received: a reconnect resumes after it') }),
);
const allEventsSchema = {
  querystring: jsonSchema(
    z.object({
      type: z
        .union([z.string(), z.array(z.string())])
        .optional()
        .describe('event types, comma-separated or repeated'),
    }),
  ),
  headers: resume,
  response: replies({ 200: sse }),
};
const jobEventsSchema = {
  params: jsonSchema(z.object({ kind: z.enum(QUEUE_NAMES), id: z.string() })),
  headers: resume,
  response: replies({ 200: sse, 204: z.null().describe(`the stream already ended (Last-Event-ID: ${DONE_ID})`) }),
};

/** The server's Fastify instance (its logger is Stowage's pino logger). */
type App = FastifyInstance<Server, IncomingMessage, ServerResponse, Logger>;

export function registerEventRoutes(app: App, deps: EventRoutesDeps, options: EventRoutesOptions = {}): void {
  const { config, logger } = deps;
  const opts = { ...DEFAULTS, maxClients: config.events.maxClients, ...options };
  const domainKey = redisKeys.events(config.prefix);
  const hub = createDomainHub(deps.redis, config, logger);
  const stream = createEventStream(deps.redis, config.prefix, config.events.maxLen);
  const queueEvents = createQueueEventsPool(deps.redis, config.prefix, logger);
  const clients = new Set<SseClient>();

  // Open streams would keep server.close() waiting for ever: end them first.
  app.addHook('preClose', async () => {
    for (const client of [...clients]) client.end();
  });
  app.addHook('onClose', async () => {
    await Promise.all([hub.close(), queueEvents.close()]);
  });

  /** Each stream holds a socket and a subscription: refuse one past the bound, before any of that. */
  const admit = () => {
    if (clients.size >= opts.maxClients) {
      throw new StowageError('STOWAGE_ERR_BUSY', `too many open event streams (${clients.size}); try again later`);
    }
  };

  const open = (req: FastifyRequest, reply: FastifyReply, what: Record<string, unknown>): SseClient => {
    const client = openSse(reply, opts, logger.child({ sse: req.routeOptions.url, ...what, reqId: req.id }));
    clients.add(client);
    client.onEnd(() => clients.delete(client));
    return client;
  };

  app.get<{ Querystring: { type?: string | string[] } }>(
    '/v1/events',
    { schema: allEventsSchema, ...validatedInHandler },
    async (req, reply) => {
      const caller = await deps.authenticate(req);
      admit();
      const types = parseTypes(req.query.type);
      const since = lastEventId(req);
      await hub.ready();
      let client: SseClient | undefined;
      let run: ReturnType<typeof serial> | undefined;
      let cursor = '0-0';
      const deliver = (e: DomainEvent) => {
        if (compareIds(e.id, cursor) <= 0) return;
        cursor = e.id;
        if ((!types || types.has(e.type)) && mayRead(caller, (e.data as { userId?: unknown }).userId)) client!.send(e.type, e, e.id);
      };
      // Subscribed, then the starting point read, then the headers sent: the shared reader is never
      // ahead of that point, so from the moment a client sees the headers every entry reaches it,
      // once (deduplicated by id). Entries that come before the headers are covered by the replay.
      const unsubscribe = hub.subscribe((e) => run?.(() => deliver(e)));
      try {
        cursor = since ?? (await lastStreamId(deps.redis, domainKey));
      } catch (err) {
        unsubscribe();
        throw err;
      }
      client = open(req, reply, { types: types ? [...types] : 'all' });
      client.onEnd(unsubscribe);
      run = serial(client);
      // After a reconnect: what was missed. Otherwise whatever came while the headers went out.
      run(async () => {
        for await (const e of replay(stream, cursor, '+')) deliver(e);
      });
    },
  );

  app.get<{ Params: { kind: string; id: string } }>(
    '/v1/jobs/:kind/:id/events',
    { schema: jobEventsSchema, ...validatedInHandler },
    async (req, reply) => {
      const caller = await deps.authenticate(req);
      admit();
      const { kind, id } = req.params;
      const queue = (QUEUE_NAMES as readonly string[]).includes(kind) ? deps.queues.find((q) => q.name === kind) : undefined;
      if (!queue)
        throw new StowageError('STOWAGE_ERR_UNKNOWN_KIND', `unknown job kind "${kind}"; expected one of ${QUEUE_NAMES.join(', ')}`);
      if (lastEventId(req) === DONE_ID) return reply.code(204).send();
      const known = await queue.getJob(id);
      // Another user's job answers like a missing one (GET /v1/jobs/:kind/:id does the same).
      if (!known || !mayRead(caller, (known.data as { userId?: unknown } | undefined)?.userId))
        throw new NotFoundError(`job ${id} not found in queue ${kind}`);
      const events = await queueEvents.get(queue);
      await hub.ready();

      const client = open(req, reply, { queue: kind, jobId: id });
      const bullKey = queue.keys.events!;
      let bullCursor = '0-0';
      let domainCursor = `${Math.max(0, known.timestamp - CLOCK_SKEW_MS)}-0`;
      const since = lastEventId(req);
      if (since && compareIds(since, domainCursor) > 0) domainCursor = since;
      let finished = false;
      const run = serial(client, () => finished);
      const mine = (e: DomainEvent) => e.jobId === id && e.queue === kind;

      /** This job's domain events after domainCursor up to `until`, sent. */
      const domainUpTo = async (until: string) => {
        for await (const e of replay(stream, domainCursor, until)) {
          domainCursor = e.id;
          if (mine(e)) client.send(e.type, e, e.id);
        }
      };
      /** One lifecycle entry of the queue's BullMQ event stream (bullCursor already past it). */
      const lifecycle = async (e: LifecycleEvent) => {
        if (e.jobId !== id || finished) return;
        const ms = e.id.split('-')[0]!;
        const final = e.event === 'completed' || e.event === 'failed';
        // Domain events of earlier milliseconds first; at the same millisecond, progress goes before
        // a domain event (its usual order in a processor) and a final event after (causality).
        await domainUpTo(final ? `${ms}-${MAX_SEQ}` : `${Number(ms) - 1}-${MAX_SEQ}`);
        if (e.event === 'progress') client.send('progress', { jobId: id, progress: e.data ?? null });
        else if (e.event === 'active' || e.event === 'waiting') client.send('state', { jobId: id, state: e.event });
        else if (e.event === 'delayed')
          client.send('state', { jobId: id, state: 'delayed', until: new Date(Number(e.delay)).toISOString() });
        else if (final) {
          finished = true;
          const body =
            e.event === 'completed' ? { jobId: id, result: e.returnvalue ?? null } : { jobId: id, failedReason: e.failedReason ?? '' };
          client.send(e.event, body, DONE_ID);
          client.end();
        }
      };
      /** Lifecycle entries after bullCursor up to `until`, from the stream itself: the reader may lag. */
      const lifecycleUpTo = async (until: string) => {
        for (;;) {
          const page = (await deps.redis.xrange(bullKey, `(${bullCursor}`, until, 'COUNT', PAGE)) as [string, string[]][];
          for (const entry of page) {
            bullCursor = entry[0];
            await lifecycle(parseLifecycle(entry));
            if (finished) return;
          }
          if (page.length < PAGE) return;
        }
      };
      // Every lifecycle event's arguments carry the job id, and more by event (data, returnvalue, …).
      const fromQueueEvents = (event: string) => (args: { jobId: string } & Record<string, unknown>, eventId: string) => {
        if (args.jobId !== id) return;
        run(() => {
          // Already sent by a catch-up read, or reflected in the snapshot.
          if (compareIds(eventId, bullCursor) <= 0) return;
          bullCursor = eventId;
          return lifecycle({ ...args, id: eventId, event, jobId: id } as LifecycleEvent);
        });
      };
      const fromHub = (e: DomainEvent) =>
        run(async () => {
          if (compareIds(e.id, domainCursor) <= 0) return;
          if (!mine(e)) {
            domainCursor = e.id;
            return;
          }
          // Lifecycle entries up to this millisecond go first. The cursor stays before this event
          // meanwhile: a final entry among them sends it (before itself) through domainUpTo.
          await lifecycleUpTo(`${e.id.split('-')[0]}-${MAX_SEQ}`);
          if (finished || compareIds(e.id, domainCursor) <= 0) return;
          domainCursor = e.id;
          client.send(e.type, e, e.id);
        });

      const listeners = LIFECYCLE_EVENTS.map((event) => [event, fromQueueEvents(event)] as const);
      for (const [event, fn] of listeners) events.on(event, fn);
      const unsubscribe = hub.subscribe(fromHub);
      client.onEnd(() => {
        unsubscribe();
        for (const [event, fn] of listeners) events.off(event, fn);
      });

      // Subscribed above; now the snapshot. Lifecycle entries after this cursor are sent live.
      run(async () => {
        bullCursor = await lastStreamId(deps.redis, bullKey);
        // The job's earlier domain events, up to the snapshot; later ones arrive live.
        await domainUpTo(`${bullCursor.split('-')[0]}-${MAX_SEQ}`);
        const job = await queue.getJob(id);
        if (!job) {
          finished = true;
          client.send('failed', { jobId: id, failedReason: 'the job was removed' }, DONE_ID);
          client.end();
          return;
        }
        const state = await job.getState();
        client.send('state', { jobId: id, state, progress: job.progress ?? null, attemptsMade: job.attemptsMade });
        if (state === 'completed' || state === 'failed') {
          finished = true;
          const body =
            state === 'completed' ? { jobId: id, result: job.returnvalue ?? null } : { jobId: id, failedReason: job.failedReason };
          client.send(state, body, DONE_ID);
          client.end();
        }
      });
    },
  );
}

/** BullMQ queue events a job stream relays. */
const LIFECYCLE_EVENTS = ['progress', 'active', 'waiting', 'delayed', 'completed', 'failed'] as const;

interface LifecycleEvent {
  /** Entry id in the queue's BullMQ event stream. */
  id: string;
  event: string;
  jobId: string;
  data?: unknown;
  returnvalue?: unknown;
  failedReason?: string | undefined;
  delay?: string | number | undefined;
}

/** An entry of BullMQ's event stream, parsed as QueueEvents does (progress data and results are JSON). */
function parseLifecycle([id, fields]: [string, string[]]): LifecycleEvent {
  const f: Record<string, string> = {};
  for (let i = 0; i + 1 < fields.length; i += 2) f[fields[i]!] = fields[i + 1]!;
  const json = (text: string | undefined) => {
    try {
      return text === undefined ? undefined : (JSON.parse(text) as unknown);
    } catch {
      return text;
    }
  };
  return {
    id,
    event: f.event ?? '',
    jobId: f.jobId ?? '',
    data: json(f.data),
    returnvalue: json(f.returnvalue),
    failedReason: f.failedReason,
    delay: f.delay,
  };
}

// ---- one client ---------------------------------------------------------------------------------

/**
 * Runs a client's handlers one after another, in arrival order, so a catch-up read never
 * interleaves with later events. Stops once the client ended (or `done()` says so).
 */
function serial(client: SseClient, done: () => boolean = () => false) {
  let chain: Promise<void> = Promise.resolve();
  return (fn: () => void | Promise<void>): void => {
    chain = chain.then(() => (done() || client.ended ? undefined : fn())).catch((err: unknown) => client.fail(err));
  };
}

interface SseClient {
  readonly ended: boolean;
  send(event: string, data: unknown, id?: string): void;
  /** End the stream (idempotent). */
  end(): void;
  /** Log an unexpected error and end the stream. */
  fail(err: unknown): void;
  onEnd(fn: () => void): void;
}

function openSse(reply: FastifyReply, opts: Required<EventRoutesOptions>, log: Logger): SseClient {
  reply.hijack();
  const res: ServerResponse = reply.raw;
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache, no-transform',
    connection: 'keep-alive',
    // nginx would otherwise buffer the stream.
    'x-accel-buffering': 'no',
  });
  // Sends the headers now, and tells EventSource how soon to reconnect.
  res.write('retry: 3000\n: connected\n\n');
  const started = Date.now();
  log.info('event stream opened');

  let ended = false;
  const endHandlers: (() => void)[] = [];
  const write = (text: string) => {
    if (ended) return;
    res.write(text);
    if (res.writableLength > opts.maxBufferedBytes) {
      log.warn({ buffered: res.writableLength }, 'event stream client too slow; disconnecting');
      close();
    }
  };
  const heartbeat = setInterval(() => write(': heartbeat\n\n'), opts.heartbeatMs);
  const close = () => {
    if (ended) return;
    ended = true;
    clearInterval(heartbeat);
    res.end();
    for (const fn of endHandlers.splice(0)) fn();
    log.info({ ms: Date.now() - started }, 'event stream closed');
  };
  // The client went away (or the socket broke): stop listening for it. (Not req's 'close': it
  // fires as soon as the request body has been read.)
  res.on('close', close);

  return {
    get ended() {
      return ended;
    },
    send(event, data, id) {
      write(`event: ${event}\n${id ? `id: ${id}\n` : ''}data: ${JSON.stringify(data)}\n\n`);
    },
    end: close,
    fail(err) {
      if (ended) return;
      log.error({ err }, 'event stream failed');
      write(
        `event: error\ndata: ${JSON.stringify({ error: { code: 'STOWAGE_ERR_INTERNAL', message: 'event stream failed; see the server log' } })}\n\n`,
      );
      close();
    },
    onEnd(fn) {
      if (ended) fn();
      else endHandlers.push(fn);
    },
  };
}

// ---- shared readers -----------------------------------------------------------------------------

interface DomainHub {
  /** Resolves once the reader has its starting point: entries added after that reach subscribers. */
  ready(): Promise<void>;
  subscribe(fn: (e: DomainEvent) => void): () => void;
  close(): Promise<void>;
}

/**
 * One XREAD BLOCK loop on its own connection, fanned out to every subscriber. Started by the first
 * client, it runs until the server closes: an idle loop costs one blocked command per BLOCK_MS, and
 * a reader that never restarts never skips entries between two runs.
 */
function createDomainHub(redis: Redis, config: Config, logger: Logger): DomainHub {
  const subscribers = new Set<(e: DomainEvent) => void>();
  let connection: Redis | undefined;
  let started: Promise<void> | undefined;
  let closed = false;

  const start = async () => {
    connection = redis.duplicate({ connectionName: `stowage:http:events:${config.prefix}` });
    const stream = createEventStream(connection, config.prefix, config.events.maxLen);
    let last = await lastStreamId(connection, redisKeys.events(config.prefix));
    void (async () => {
      while (!closed) {
        try {
          const batch = await stream.follow(last, BLOCK_MS);
          for (const e of batch) {
            last = e.id;
            for (const fn of subscribers) fn(e);
          }
        } catch (err) {
          if (closed) break;
          logger.warn({ err }, 'domain event reader failed; retrying in 1 s');
          await sleep(1000);
        }
      }
    })();
  };

  return {
    ready() {
      if (closed) return Promise.reject(new StowageError('STOWAGE_ERR_INTERNAL', 'server is closing'));
      started ??= start().catch((err: unknown) => {
        started = undefined;
        connection?.disconnect();
        throw err;
      });
      return started;
    },
    subscribe(fn) {
      subscribers.add(fn);
      return () => void subscribers.delete(fn);
    },
    async close() {
      closed = true;
      subscribers.clear();
      // Interrupts a pending XREAD BLOCK.
      connection?.disconnect();
    },
  };
}

interface QueueEventsPool {
  get(queue: Queue): Promise<QueueEvents>;
  close(): Promise<void>;
}

/** One QueueEvents per queue, made on first use and shared by every client of that queue. */
function createQueueEventsPool(redis: Redis, prefix: string, logger: Logger): QueueEventsPool {
  const made = new Map<string, Promise<{ events: QueueEvents; connection: Redis }>>();
  let closed = false;
  return {
    async get(queue) {
      if (closed) throw new StowageError('STOWAGE_ERR_INTERNAL', 'server is closing');
      let entry = made.get(queue.name);
      if (!entry) {
        entry = (async () => {
          // Read from the stream's current end, fixed now: whatever happens before the reader's
          // first XREAD is still delivered (QueueEvents' default '$' would skip it).
          const lastEventId = await lastStreamId(redis, queue.keys.events!);
          const connection = redis.duplicate({ connectionName: `stowage:http:queue-events:${queue.name}` });
          const events = new QueueEvents(queue.name, { connection, prefix, lastEventId, autorun: true });
          // Every SSE client of the queue adds its listeners.
          events.setMaxListeners(0);
          events.on('error', (err) => logger.warn({ err, queue: queue.name }, 'queue events reader error'));
          await events.waitUntilReady();
          return { events, connection };
        })();
        made.set(queue.name, entry);
        entry.catch(() => made.delete(queue.name));
      }
      return (await entry).events;
    },
    async close() {
      closed = true;
      await Promise.all(
        [...made.values()].map(async (entry) => {
          const { events, connection } = await entry.catch(() => ({ events: undefined, connection: undefined }));
          await events?.close().catch(() => {});
          await connection?.quit().catch(() => connection.disconnect());
        }),
      );
      made.clear();
    },
  };
}

// ---- stream helpers -----------------------------------------------------------------------------

/** The id of the newest entry of a stream, or '0-0' when it is empty. */
async function lastStreamId(redis: Redis, key: string): Promise<string> {
  const [entry] = (await redis.xrevrange(key, '+', '-', 'COUNT', 1)) as [string, string[]][];
  return entry?.[0] ?? '0-0';
}

/** Domain events after `afterId` (exclusive) up to `until` (inclusive, or '+'), page by page. */
async function* replay(stream: EventStream, afterId: string, until: string): AsyncGenerator<DomainEvent> {
  let cursor = afterId;
  for (;;) {
    const page = await stream.read({ afterId: cursor, until, count: PAGE });
    yield* page;
    if (page.length < PAGE) return;
    cursor = page[page.length - 1]!.id;
  }
}

/**
 * Order of two stream ids (`<ms>-<seq>`). With `msOnly`, ids of different streams compare by
 * time alone: their sequence numbers count within one stream and say nothing across two.
 */
function compareIds(a: string, b: string, msOnly = false): number {
  const [am = 0, as = 0] = a.split('-').map(Number);
  const [bm = 0, bs = 0] = b.split('-').map(Number);
  return am - bm || (msOnly ? 0 : as - bs);
}

function lastEventId(req: FastifyRequest): string | undefined {
  const header = req.headers['last-event-id'];
  const value = Array.isArray(header) ? header[0] : header;
  if (value === DONE_ID) return value;
  return value && /^\d+-\d+$/.test(value) ? value : undefined;
}

function parseTypes(raw: string | string[] | undefined): Set<string> | undefined {
  if (raw === undefined) return undefined;
  const types = (Array.isArray(raw) ? raw : [raw])
    .flatMap((t) => t.split(','))
    .map((t) => t.trim())
    .filter(Boolean);
  const bad = types.filter((t) => !TYPE_PATTERN.test(t));
  if (bad.length || !types.length) {
    throw new StowageError(
      'STOWAGE_ERR_USAGE',
      `type: expected event type names such as artifact_uploaded, got "${[raw].flat().join(',')}"`,
    );
  }
  return new Set(types);
}
