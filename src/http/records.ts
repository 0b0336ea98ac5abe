/**
 * Record exports over HTTP, under both `/api/v1/records` (the paths) and `/v1/records`
 * (next to the rest of the /v1 API): one plugin registered at each prefix. The user comes from the
 * bearer token and every lookup goes through that user's manifest, so another user's ids answer
 * 404 (never 403).
 *
 * - `POST {prefix}/:module` `{format, records, id?}` (an admin or user token; a viewer only reads):
 *   enqueue an export job into the caller's own space; 202 `{jobId, kind, created, id}`.
 * - `GET  {prefix}/:module?q=&from=&to=&limit=&read=`: the manifest entries (from inclusive, to
 *   exclusive, ISO 8601), or with `q` the search hits (`read`: all | text | none, see
 *   searchRecords).
 * - `GET  {prefix}/:module/:id`: one object's entry and records.
 * - `GET  {prefix}/:module/:id/url?expiresIn=`: a presigned GET URL (at most 7 days).
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { AuthError, StowageError, ValidationError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { Producer } from '../producers/index.js';
import { safeId } from '../ids.js';
import { MAX_PRESIGN_SECONDS, type Storage } from '../storage/client.js';
import { DEFAULT_PRESIGN_SECONDS } from '../storage/presign.js';
import { getRecord, listRecords, recordUrl, searchRecords } from '../storage/records.js';

export interface RecordRoutesDeps {
  storage: () => Storage;
  producer: Pick<Producer, 'storeRecords'>;
  /** The caller; `role` absent means it may write (test harnesses without roles). */
  authenticate: (req: FastifyRequest) => Promise<{ userId: string; role?: string }>;
}

/** Where the routes are mounted. */
export const RECORD_ROUTE_PREFIXES = ['/api/v1/records', '/v1/records'] as const;

type App = FastifyInstance<Server, IncomingMessage, ServerResponse, Logger>;

function parse<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const r = schema.safeParse(value);
  if (!r.success) throw ValidationError.fromZod(what, r.error);
  return r.data;
}

const listQuery = z.strictObject({
  q: z.string().min(1).max(256).optional(),
  from: z.iso.datetime({ offset: true }).optional(),
  to: z.iso.datetime({ offset: true }).optional(),
  limit: z.coerce.number().int().min(1).max(1000).optional(),
  read: z.enum(['all', 'text', 'none']).optional(),
});

const urlQuery = z.strictObject({
  expiresIn: z.coerce.number().int().min(1).max(MAX_PRESIGN_SECONDS, `at most ${MAX_PRESIGN_SECONDS} seconds (7 days)`).optional(),
});

const body = z.object({
  format: z.enum(['json', 'jsonl', 'parquet']),
  records: z.array(z.record(z.string(), z.unknown())).min(1),
  id: safeId.optional(),
});

const notFound = (module: string, id: string) => new StowageError('STOWAGE_ERR_NOT_FOUND', `record ${id} not found in ${module}`);

export function registerRecordRoutes(app: App, deps: RecordRoutesDeps): void {
  for (const prefix of RECORD_ROUTE_PREFIXES) {
    app.register(async (scope) => recordRoutes(scope, deps), { prefix });
  }
}

function recordRoutes(app: FastifyInstance, deps: RecordRoutesDeps): void {
  const noStore = { 'cache-control': 'no-store' };

  app.post<{ Params: { module: string } }>('/:module', async (req, reply) => {
    const caller = await deps.authenticate(req);
    // A user stores into their own space (the user id is the token's); a viewer is a read-only operator.
    if (caller.role === 'viewer') {
      throw new AuthError('role "viewer" may not store records; a user or admin token is required', 'STOWAGE_ERR_FORBIDDEN');
    }
    const module = parse(safeId, req.params.module, 'module');
    const b = parse(body, req.body, 'body');
    // The answer carries the object's id (derived from the records when not given) for the GETs.
    const enqueued = await deps.producer.storeRecords({ module, userId: caller.userId, format: b.format, records: b.records, ...(b.id ? { id: b.id } : {}) });
    return reply.code(202).send(enqueued);
  });

  app.get<{ Params: { module: string }; Querystring: Record<string, string> }>('/:module', async (req, reply) => {
    const caller = await deps.authenticate(req);
    const module = parse(safeId, req.params.module, 'module');
    const q = parse(listQuery, req.query, 'query');
    const range = { ...(q.from ? { from: new Date(q.from) } : {}), ...(q.to ? { to: new Date(q.to) } : {}) };
    if (q.q) {
      const hits = await searchRecords(deps.storage(), module, caller.userId, q.q, {
        ...range,
        ...(q.limit ? { limit: q.limit } : {}),
        ...(q.read ? { read: q.read } : {}),
      });
      return reply.headers(noStore).send({ module, q: q.q, hits });
    }
    const entries = await listRecords(deps.storage(), module, caller.userId, range);
    return reply.headers(noStore).send({ module, entries });
  });

  app.get<{ Params: { module: string; id: string } }>('/:module/:id', async (req, reply) => {
    const caller = await deps.authenticate(req);
    const module = parse(safeId, req.params.module, 'module');
    const id = parse(safeId, req.params.id, 'id');
    const found = await getRecord(deps.storage(), module, caller.userId, id);
    if (!found) throw notFound(module, id);
    return reply.headers(noStore).send(found);
  });

  app.get<{ Params: { module: string; id: string }; Querystring: Record<string, string> }>('/:module/:id/url', async (req, reply) => {
    const caller = await deps.authenticate(req);
    const module = parse(safeId, req.params.module, 'module');
    const id = parse(safeId, req.params.id, 'id');
    const { expiresIn } = parse(urlQuery, req.query, 'query');
    const signed = await recordUrl(deps.storage(), module, caller.userId, id, expiresIn ?? DEFAULT_PRESIGN_SECONDS);
    if (!signed) throw notFound(module, id);
    // The URL is a bearer credential until it expires: keep it out of shared caches.
    return reply.headers(noStore).send({ url: signed.url, expiresAt: signed.expiresAt.toISOString(), filename: signed.filename, size: signed.entry.size });
  });
}
