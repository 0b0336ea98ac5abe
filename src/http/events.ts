/**
 * Live events over Server-Sent Events.
 *
 * - `GET /v1/jobs/:kind/:id/events`: one job. First the job's earlier domain events and a `state`
 *   snapshot, then live `progress`, `state` (active, waiting, delayed: a retry is on its way),
 *   the job's domain events, and finally `completed` (with the result), or `failed` (with the
 *   reason) followed by `job_parked` once the job is parked in the dead-letter queue (reason,
 *   attempts, dead-letter id, when, the error), after which the stream ends. A job already parked
 *   gets its earlier domain events, `state` `parked` and `job_parked`. The domain stream's own
 *   `job_parked` entry is not relayed on a job stream: the final `job_parked` says the same, with more.
 * - `GET /v1/events[?type=a,b][&correlationId=c]`: every domain event (or those types), live. A reconnecting client
 *   (`Last-Event-ID`) first gets what it missed. A `user` token gets only events whose data carry
 *   its own `userId` (operators see all; see mayRead), and a job stream of its own jobs only.
 *   With `correlationId`, only the events of jobs enqueued with that id: each entry carries its
 *   job's id (no lookup per event), and such a job's completion is a `job_completed` entry (a final
 *   failure: `job_parked`), so one stream follows every job of a build to its end.
 *
 * Domain events go out as `event: <type>` with `id: <stream id>` and the DomainEvent as data. A job
 * stream's final event has `id: done`: EventSource reconnects after every end, and that id answers
 * it with 204 (when a final `failed` is not followed by a park in time, a bare `id: done` ends it).
 *
 * Bounds. Open streams are bounded per process (events.maxClients, else 503) and per caller, a
 * token's user and role (events.maxClientsPerCaller, else 429); the slot is taken in the same
 * synchronous step as the check, right after authentication, and given back however the request
 * ends. A stream lives at most events.maxStreamSeconds: it then ends with a bare `id:` line naming
 * where it stands, so EventSource reconnects with that Last-Event-ID (and its token is checked again)
 * and the reconnect resumes from there: no domain event is lost, and a job stream starts with a
 * fresh `state` snapshot.
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
import { isReadableJobId, safeId } from '../ids.js';
import type { Logger } from '../observability/logger.js';
import { createEventStream, lastStreamId, QUEUE_NAMES, redisKeys, type DomainEvent, type EventStream } from '../queues/index.js';
import { sleep } from '../retry.js';
import type { ErrorBody } from './error-response.js';
import { findParked, parkedDetails, parkedOwner, type FoundParked } from './jobs.js';
import { jsonSchema, replies, validatedInHandler } from './schemas.js';

/** Who opened a stream: what the per-caller bound counts by. */
export interface StreamCaller {
  userId: string;
  role: Role;
  tenant?: string;
  /** `open`: auth is off (loopback only) and every caller is the same anonymous admin: no per-caller bound. */
  via?: string;
}

export interface EventRoutesDeps {
  config: Config;
  logger: Logger;
  /** The server's queues (the dead-letter queue among them); the job route serves QUEUE_NAMES only. */
  queues: readonly Queue[];
  /** For short reads; duplicated for the blocking readers. */
  redis: Redis;
  /** Resolves for an allowed caller, throws AuthError otherwise. Runs before the stream opens. */
  authenticate(req: FastifyRequest): Promise<StreamCaller>;
}

export interface EventRoutesOptions {
  /** Comment line sent this often so proxies keep the connection open, in ms. Default 15000. */
  heartbeatMs?: number;
  /** A client whose unsent output exceeds this many bytes is too slow and is disconnected. Default 1 MiB. */
  maxBufferedBytes?: number;
  /** Open streams at most; another one is refused with 503. Default: config `events.maxClients`. */
  maxClients?: number;
  /** Open streams one caller holds at most; another one is refused with 429. Default: config `events.maxClientsPerCaller`. */
  maxClientsPerCaller?: number;
  /** A stream is ended (for the client to reconnect) after this long, less up to 10%, in ms. Default: config `events.maxStreamSeconds`. */
  maxStreamMs?: number;
  /** After a job's final `failed`, how long its stream waits for the job to be parked, in ms. Default 5000. */
  parkGraceMs?: number;
}

type Settings = Required<EventRoutesOptions>;

const DEFAULTS = {
  heartbeatMs: 15_000,
  maxBufferedBytes: 1024 * 1024,
  parkGraceMs: 5_000,
} satisfies Partial<Settings>;

/** XREAD BLOCK bound of the shared domain-event reader's loop. */
const BLOCK_MS = 2_000;
/** Page size of stream replays. */
const PAGE = 500;
/** Job timestamps come from the producer's clock, stream ids from Redis's: allow this much skew. */
const CLOCK_SKEW_MS = 60_000;
/** `id:` of a job stream's final event. EventSource reconnects after a stream ends; this says "don't": 204. */
const DONE_ID = 'done';
/** Seconds a refused client is told to wait (Retry-After), as sendError says for STOWAGE_ERR_BUSY. */
const RETRY_AFTER_SECONDS = 5;
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
      correlationId: safeId
        .optional()
        .describe("only the events of jobs enqueued with this correlation id (a build artifact's default: its buildId, else versionId)"),
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
  const opts: Settings = {
    ...DEFAULTS,
    maxClients: config.events.maxClients,
    maxClientsPerCaller: config.events.maxClientsPerCaller,
    maxStreamMs: config.events.maxStreamSeconds * 1000,
    ...options,
  };
  const domainKey = redisKeys.events(config.prefix);
  const hub = createDomainHub(deps.redis, config, logger);
  const stream = createEventStream(deps.redis, config.prefix, config.events.maxLen);
  const queueEvents = createQueueEventsPool(deps.redis, config.prefix, logger);
  const clients = new Set<SseClient>();
  const slots = createSlots(opts.maxClients, opts.maxClientsPerCaller);

  // Open streams would keep server.close() waiting for ever: end them first.
  app.addHook('preClose', async () => {
    for (const client of [...clients]) client.end();
  });
  app.addHook('onClose', async () => {
    await Promise.all([hub.close(), queueEvents.close()]);
  });

  /**
   * Each stream holds a socket and a subscription: take a slot before any of that, in the same
   * synchronous step as the check, or refuse (503 when the server is full, 429 when the caller is).
   * Returns the release (idempotent), or undefined when the reply was sent.
   */
  const admit = (req: FastifyRequest, reply: FastifyReply, caller: StreamCaller): (() => void) | undefined => {
    const slot = slots.take(caller.via === 'open' ? undefined : JSON.stringify([caller.role, caller.tenant ?? '', caller.userId]));
    if ('release' in slot) return slot.release;
    if (slot.full === 'server') {
      throw new StowageError('STOWAGE_ERR_BUSY', `too many open event streams (${slot.held} of ${opts.maxClients}); try again later`);
    }
    const message =
      `${caller.role} "${caller.userId}" already has ${slot.held} open event streams, the most one caller may hold ` +
      `(events.maxClientsPerCaller = ${opts.maxClientsPerCaller}); close one, then try again`;
    req.log.info(
      { code: 'STOWAGE_ERR_BUSY', user: caller.userId, role: caller.role, held: slot.held },
      'event stream refused: caller at its bound',
    );
    // ERROR_CODES maps STOWAGE_ERR_BUSY to 503 (the server is full); this one is the caller's own bound.
    void reply
      .code(429)
      .header('retry-after', String(RETRY_AFTER_SECONDS))
      .send({ error: { code: 'STOWAGE_ERR_BUSY', message } } satisfies ErrorBody);
    return undefined;
  };

  const open = (
    req: FastifyRequest,
    reply: FastifyReply,
    what: Record<string, unknown>,
    release: () => void,
    resumeId: () => string,
  ): SseClient => {
    const client = openSse(reply, opts, logger.child({ sse: req.routeOptions.url, ...what, reqId: req.id }), resumeId);
    clients.add(client);
    client.onEnd(() => {
      clients.delete(client);
      release();
    });
    return client;
  };

  app.get<{ Querystring: { type?: string | string[]; correlationId?: string | string[] } }>(
    '/v1/events',
    { schema: allEventsSchema, ...validatedInHandler },
    async (req, reply) => {
      const caller = await deps.authenticate(req);
      const types = parseTypes(req.query.type);
      const correlationId = parseCorrelationId(req.query.correlationId);
      const given = lastEventId(req);
      // `done` ends a job stream; here it means nothing.
      const since = given === DONE_ID ? undefined : given;
      const release = admit(req, reply, caller);
      if (!release) return reply;
      try {
        await hub.ready();
        let client: SseClient | undefined;
        let run: ReturnType<typeof serial> | undefined;
        let cursor = '0-0';
        const deliver = (e: DomainEvent) => {
          if (compareIds(e.id, cursor) <= 0) return;
          cursor = e.id;
          if (correlationId !== undefined && e.correlationId !== correlationId) return;
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
        // At the end of its lifetime the stream names the entry it has read up to (sent or filtered
        // out), so the reconnect resumes there even if it was sent nothing.
        client = open(
          req,
          reply,
          { types: types ? [...types] : 'all', ...(correlationId ? { correlationId } : {}) },
          release,
          () => cursor,
        );
        client.onEnd(unsubscribe);
        run = serial(client);
        // After a reconnect: what was missed. Otherwise whatever came while the headers went out.
        run(async () => {
          for await (const e of replay(stream, cursor, '+')) deliver(e);
        });
      } catch (err) {
        release();
        throw err;
      }
    },
  );

  app.get<{ Params: { kind: string; id: string } }>(
    '/v1/jobs/:kind/:id/events',
    { schema: jobEventsSchema, ...validatedInHandler },
    async (req, reply) => {
      const caller = await deps.authenticate(req);
      const { kind, id } = req.params;
      const queue = (QUEUE_NAMES as readonly string[]).includes(kind) ? deps.queues.find((q) => q.name === kind) : undefined;
      if (!queue)
        throw new StowageError('STOWAGE_ERR_UNKNOWN_KIND', `unknown job kind "${kind}"; expected one of ${QUEUE_NAMES.join(', ')}`);
      const since = lastEventId(req);
      if (since === DONE_ID) return reply.code(204).send();
      const release = admit(req, reply, caller);
      if (!release) return reply;
      try {
        await followJob(req, reply, caller, queue, id, since, release);
      } catch (err) {
        release();
        throw err;
      }
    },
  );

  /** Opens the stream of job `id` of `queue` for `caller`, or throws before anything is sent. */
  const followJob = async (
    req: FastifyRequest,
    reply: FastifyReply,
    caller: StreamCaller,
    queue: Queue,
    id: string,
    since: string | undefined,
    release: () => void,
  ): Promise<void> => {
    const kind = queue.name;
    // An id naming one of BullMQ's own keys (meta, events, …) is no job: reading it as one fails.
    if (!isReadableJobId(id)) throw new NotFoundError(`job ${id} not found in queue ${kind}`);
    const known = await queue.getJob(id);
    // Once parked, the job is in the dead-letter queue only (until a redrive puts it back).
    const parkedBefore = known ? undefined : await findParked(deps.queues, kind, id);
    const owner = known ? (known.data as { userId?: unknown } | undefined)?.userId : parkedBefore && parkedOwner(parkedBefore.record);
    // Another user's job answers like a missing one (GET /v1/jobs/:kind/:id does the same).
    if ((!known && !parkedBefore) || !mayRead(caller, owner)) throw new NotFoundError(`job ${id} not found in queue ${kind}`);
    const events = await queueEvents.get(queue);
    await hub.ready();

    const created = known?.timestamp ?? parkedBefore!.record.timestamps.created;
    let domainCursor = `${Math.max(0, created - CLOCK_SKEW_MS)}-0`;
    if (since && compareIds(since, domainCursor) > 0) domainCursor = since;
    const client = open(req, reply, { queue: kind, jobId: id }, release, () => domainCursor);
    const bullKey = queue.keys.events!;
    let bullCursor = '0-0';
    let finished = false;
    const run = serial(client, () => finished);
    // The domain stream's job_parked and job_completed are not relayed: the stream's own final
    // job_parked and completed say the same.
    const mine = (e: DomainEvent) => e.jobId === id && e.queue === kind && e.type !== 'job_parked' && e.type !== 'job_completed';

    /** The end of a parked job's stream: `job_parked` (after a `parked` snapshot, unless it follows `failed`). */
    const sendParked = (parked: FoundParked, snapshot: boolean) => {
      finished = true;
      const { attemptsMade } = parked.record;
      if (snapshot) client.send('state', { jobId: id, state: 'parked', progress: null, attemptsMade });
      client.send('job_parked', { jobId: id, queue: kind, attemptsMade, ...parkedDetails(parked) }, DONE_ID);
      client.end();
    };
    /** Resolves the wait for the park; set while waiting. */
    let parkSeen: (() => void) | undefined;
    let parkEvent = false;
    /**
     * After the final `failed`: the runtime parks the job right after that event, and its
     * job_parked domain event says when. Outside the serial chain, which stays stopped meanwhile.
     */
    const awaitPark = async () => {
      let parked = await findParked(deps.queues, kind, id);
      if (!parked) {
        if (!parkEvent) {
          await new Promise<void>((resolve) => {
            const timer = setTimeout(resolve, opts.parkGraceMs);
            parkSeen = () => {
              clearTimeout(timer);
              resolve();
            };
            client.onEnd(parkSeen);
          });
          parkSeen = undefined;
        }
        if (client.ended) return;
        parked = await findParked(deps.queues, kind, id);
      }
      if (client.ended) return;
      if (parked) sendParked(parked, false);
      // Not parked in time (no runtime parks it now; a sweep will): `failed` was the last word.
      else client.end(DONE_ID);
    };
    const failed = (failedReason: string) => {
      finished = true;
      client.send('failed', { jobId: id, failedReason });
      void awaitPark().catch((err: unknown) => client.fail(err));
    };
    /** The job is no longer in its queue: parked, or removed. */
    const gone = async () => {
      const parked = await findParked(deps.queues, kind, id);
      if (parked) return sendParked(parked, true);
      finished = true;
      client.send('failed', { jobId: id, failedReason: 'the job was removed' }, DONE_ID);
      client.end();
    };

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
      else if (e.event === 'delayed') client.send('state', { jobId: id, state: 'delayed', until: new Date(Number(e.delay)).toISOString() });
      else if (e.event === 'completed') {
        finished = true;
        client.send('completed', { jobId: id, result: e.returnvalue ?? null }, DONE_ID);
        client.end();
      } else if (e.event === 'failed') failed(e.failedReason ?? '');
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
    const fromHub = (e: DomainEvent) => {
      if (e.type === 'job_parked' && e.jobId === id && e.queue === kind) {
        parkEvent = true;
        parkSeen?.();
      }
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
    };

    const listeners = LIFECYCLE_EVENTS.map((event) => [event, fromQueueEvents(event)] as const);
    for (const [event, fn] of listeners) events.on(event, fn);
    const unsubscribe = hub.subscribe(fromHub);
    client.onEnd(() => {
      unsubscribe();
      for (const [event, fn] of listeners) events.off(event, fn);
    });

    // Subscribed above; now the snapshot. Lifecycle entries after this cursor are sent live.
    run(async () => {
      // The domain stream's end first, then the lifecycle stream's: lifecycle entries older than that
      // end are then all at or before bullCursor, reflected in the snapshot rather than sent after it.
      const domainEnd = await lastStreamId(deps.redis, domainKey);
      bullCursor = await lastStreamId(deps.redis, bullKey);
      // The job's earlier domain events, up to the snapshot: up to the end of the domain stream, read
      // after subscribing, since the shared reader may have passed entries on before this client
      // subscribed (they are all at or before that end). Later ones arrive live.
      await domainUpTo(domainEnd);
      const job = await queue.getJob(id);
      if (!job) return gone();
      const state = await job.getState();
      // Removed between the two reads: parked, most likely.
      if (state === 'unknown') return gone();
      client.send('state', { jobId: id, state, progress: job.progress ?? null, attemptsMade: job.attemptsMade });
      if (state === 'completed') {
        finished = true;
        client.send('completed', { jobId: id, result: job.returnvalue ?? null }, DONE_ID);
        client.end();
      } else if (state === 'failed') failed(job.failedReason);
    });
  };
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
  /** End the stream (idempotent); with `lastId`, first a bare `id:` line, which EventSource keeps as its Last-Event-ID. */
  end(lastId?: string): void;
  /** Log an unexpected error and end the stream. */
  fail(err: unknown): void;
  onEnd(fn: () => void): void;
}

/** `resumeId`: where the stream stands, named when its lifetime ends so the reconnect resumes there. */
function openSse(reply: FastifyReply, opts: Settings, log: Logger, resumeId: () => string): SseClient {
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
  // Up to 10% early, so the clients of a restart do not all come back at the same moment.
  const lifetime = setTimeout(
    () => {
      log.info({ resumeId: resumeId() }, 'event stream lifetime reached; the client reconnects');
      close(resumeId());
    },
    Math.max(1, Math.round(opts.maxStreamMs * (1 - Math.random() * 0.1))),
  );
  const close = (lastId?: string) => {
    if (ended) return;
    // An id-only frame dispatches no event; EventSource still takes the id as its Last-Event-ID.
    if (lastId) write(`: end of stream\nid: ${lastId}\n\n`);
    ended = true;
    clearInterval(heartbeat);
    clearTimeout(lifetime);
    res.end();
    for (const fn of endHandlers.splice(0)) fn();
    log.info({ ms: Date.now() - started }, 'event stream closed');
  };
  // The client went away (or the socket broke): stop listening for it. (Not req's 'close': it
  // fires as soon as the request body has been read.)
  res.on('close', () => close());
  // Gone while the route was still reading Redis: that 'close' has already fired.
  if (!res.socket || res.socket.destroyed) close();

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

// ---- bounds --------------------------------------------------------------------------------------

type Slot = { release: () => void } | { full: 'server' | 'caller'; held: number };

/**
 * Open-stream slots: the server's bound and each caller's. take() checks and counts in one
 * synchronous step, so requests that arrive together cannot all pass the check before any counts.
 */
function createSlots(max: number, perCaller: number) {
  let open = 0;
  const byCaller = new Map<string, number>();
  return {
    /** A slot for the caller `key` (undefined: not counted per caller), or which bound is full. */
    take(key: string | undefined): Slot {
      if (open >= max) return { full: 'server', held: open };
      const held = key === undefined ? 0 : (byCaller.get(key) ?? 0);
      if (key !== undefined && held >= perCaller) return { full: 'caller', held };
      open++;
      if (key !== undefined) byCaller.set(key, held + 1);
      let released = false;
      return {
        release() {
          if (released) return;
          released = true;
          open--;
          if (key === undefined) return;
          const left = (byCaller.get(key) ?? 1) - 1;
          if (left > 0) byCaller.set(key, left);
          else byCaller.delete(key);
        },
      };
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
          const events = new QueueEvents(queue.name, { connection, prefix: queue.opts.prefix ?? prefix, lastEventId, autorun: true });
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

/** `correlationId`: one safe id (as enqueue takes it), or undefined for every job's events. */
function parseCorrelationId(raw: string | string[] | undefined): string | undefined {
  if (raw === undefined) return undefined;
  if (Array.isArray(raw)) throw new StowageError('STOWAGE_ERR_USAGE', 'correlationId: give one correlation id, not several');
  const checked = safeId.safeParse(raw);
  if (!checked.success)
    throw new StowageError('STOWAGE_ERR_USAGE', `correlationId: ${checked.error.issues[0]?.message ?? 'not a valid id'}`);
  return raw;
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
