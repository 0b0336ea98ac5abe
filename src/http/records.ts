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
import { AuthError, StowageError } from '../errors.js';
import { MAX_JSON_DEPTH, nestsDeeperThan, safeId } from '../ids.js';
import type { Logger } from '../observability/logger.js';
import type { Producer } from '../producers/index.js';
import { MAX_PRESIGN_SECONDS, type Storage } from '../storage/client.js';
import { DEFAULT_PRESIGN_SECONDS } from '../storage/presign.js';
import { getRecord, listRecords, recordModule, recordUrl, searchRecords } from '../storage/records.js';
import { jsonSchema, parse, replies, validatedInHandler } from './schemas.js';

export interface RecordRoutesDeps {
  storage: () => Storage;
  producer: Pick<Producer, 'storeRecords'>;
  /** The caller; `role` absent means it may write (test harnesses without roles). */
  authenticate: (req: FastifyRequest) => Promise<{ userId: string; role?: string }>;
}

/** Where the routes are mounted. */
export const RECORD_ROUTE_PREFIXES = ['/api/v1/records', '/v1/records'] as const;

type App = FastifyInstance<Server, IncomingMessage, ServerResponse, Logger>;

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

/** One record: an object whose arrays and objects nest at most MAX_JSON_DEPTH levels (ids.ts). */
const record = z
  .record(z.string(), z.unknown())
  .refine(
    (r) => !nestsDeeperThan(r, MAX_JSON_DEPTH),
    `nests deeper than ${MAX_JSON_DEPTH} levels of objects and arrays (the limit); flatten it`,
  );

const body = z.object({
  format: z.enum(['json', 'jsonl', 'parquet']),
  records: z.array(record).min(1),
  id: safeId.optional(),
});

const moduleParams = z.object({ module: safeId });
/** Stores refuse Stowage's own top-level prefixes as module names; reads do not (older records). */
const storeParams = z.object({ module: recordModule });
const recordParams = z.object({ module: safeId, id: safeId });
/** A manifest entry (storage/manifest.ts). */
const entry = z.looseObject({
  id: z.string(),
  key: z.string(),
  format: z.string(),
  record_count: z.number().int(),
  size: z.number().int(),
  sha256: z.string(),
  created_at: z.iso.datetime(),
});
const hit = z.looseObject({
  source: z.enum(['record', 'manifest']),
  id: z.string(),
  key: z.string(),
  format: z.string(),
  created_at: z.iso.datetime(),
});

const storeSchema = {
  params: jsonSchema(storeParams),
  body: jsonSchema(body),
  response: replies({ 202: z.object({ jobId: z.string(), kind: z.literal('export'), created: z.boolean(), id: z.string() }) }),
};
const listSchema = {
  params: jsonSchema(moduleParams),
  querystring: jsonSchema(listQuery),
  response: replies({
    200: z.union([
      z.object({ module: z.string(), entries: z.array(entry) }),
      z.object({ module: z.string(), q: z.string(), hits: z.array(hit) }),
    ]),
  }),
};
const getSchema = {
  params: jsonSchema(recordParams),
  response: replies({ 200: z.object({ entry, records: z.array(z.record(z.string(), z.unknown())) }) }),
};
const urlSchema = {
  params: jsonSchema(recordParams),
  querystring: jsonSchema(urlQuery),
  response: replies({ 200: z.object({ url: z.url(), expiresAt: z.iso.datetime(), filename: z.string(), size: z.number().int() }) }),
};

const notFound = (module: string, id: string) => new StowageError('STOWAGE_ERR_NOT_FOUND', `record ${id} not found in ${module}`);

export function registerRecordRoutes(app: App, deps: RecordRoutesDeps): void {
  for (const prefix of RECORD_ROUTE_PREFIXES) {
    app.register(async (scope) => recordRoutes(scope, deps), { prefix });
  }
}

function recordRoutes(app: FastifyInstance, deps: RecordRoutesDeps): void {
  const noStore = { 'cache-control': 'no-store' };

  app.post<{ Params: { module: string } }>('/:module', { schema: storeSchema, ...validatedInHandler }, async (req, reply) => {
    const caller = await deps.authenticate(req);
    // A user stores into their own space (the user id is the token's); a viewer is a read-only operator.
    if (caller.role === 'viewer') {
      throw new AuthError('role "viewer" may not store records; a user or admin token is required', 'STOWAGE_ERR_FORBIDDEN');
    }
    const module = parse(recordModule, req.params.module, 'module');
    const b = parse(body, req.body, 'body');
    // The answer carries the object's id (derived from the records when not given) for the GETs.
    const enqueued = await deps.producer.storeRecords({
      module,
      userId: caller.userId,
      format: b.format,
      records: b.records,
      ...(b.id ? { id: b.id } : {}),
    });
    return reply.code(202).send(enqueued);
  });

  app.get<{ Params: { module: string }; Querystring: Record<string, string> }>(
    '/:module',
    { schema: listSchema, ...validatedInHandler },
    async (req, reply) => {
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
    },
  );

  app.get<{ Params: { module: string; id: string } }>('/:module/:id', { schema: getSchema, ...validatedInHandler }, async (req, reply) => {
    const caller = await deps.authenticate(req);
    const module = parse(safeId, req.params.module, 'module');
    const id = parse(safeId, req.params.id, 'id');
    const found = await getRecord(deps.storage(), module, caller.userId, id);
    if (!found) throw notFound(module, id);
    return reply.headers(noStore).send(found);
  });

  app.get<{ Params: { module: string; id: string }; Querystring: Record<string, string> }>(
    '/:module/:id/url',
    { schema: urlSchema, ...validatedInHandler },
    async (req, reply) => {
      const caller = await deps.authenticate(req);
      const module = parse(safeId, req.params.module, 'module');
      const id = parse(safeId, req.params.id, 'id');
      const { expiresIn } = parse(urlQuery, req.query, 'query');
      const signed = await recordUrl(deps.storage(), module, caller.userId, id, expiresIn ?? DEFAULT_PRESIGN_SECONDS);
      if (!signed) throw notFound(module, id);
      // The URL is a bearer credential until it expires: keep it out of shared caches.
      return reply
        .headers(noStore)
        .send({ url: signed.url, expiresAt: signed.expiresAt.toISOString(), filename: signed.filename, size: signed.entry.size });
    },
  );
}
