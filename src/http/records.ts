/**
 * Record exports over HTTP. The user comes from the bearer token and every lookup goes through
 * that user's manifest, so another user's ids answer 404 (never 403).
 *
 * - `POST /api/v1/records/:module` `{format, records, id?}`: enqueue an export job (202).
 * - `GET  /api/v1/records/:module?q=&from=&to=`: the manifest entries (from inclusive, to
 *   exclusive, ISO 8601), or with `q` the matching records.
 * - `GET  /api/v1/records/:module/:id`: one object's entry and records.
 * - `GET  /api/v1/records/:module/:id/url?expiresIn=`: a presigned GET URL (at most 7 days).
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { StowageError, ValidationError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { Producer } from '../producers/index.js';
import { safeId } from '../queues/ids.js';
import { MAX_PRESIGN_SECONDS, type Storage } from '../storage/client.js';
import { DEFAULT_PRESIGN_SECONDS } from '../storage/presign.js';
import { getRecord, listRecords, recordUrl, searchRecords } from '../storage/records.js';

export interface RecordRoutesDeps {
  storage: () => Storage;
  producer: Pick<Producer, 'export'>;
  authenticate: (req: FastifyRequest) => Promise<{ userId: string }>;
}

type App = FastifyInstance<Server, IncomingMessage, ServerResponse, Logger>;

function parse<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const r = schema.safeParse(value);
  if (!r.success) throw new ValidationError(what, r.error.issues.map((i) => `${i.path.join('.') || what}: ${i.message}`));
  return r.data;
}

const listQuery = z.strictObject({
  q: z.string().min(1).max(256).optional(),
  from: z.iso.datetime({ offset: true }).optional(),
  to: z.iso.datetime({ offset: true }).optional(),
  limit: z.coerce.number().int().min(1).max(1000).optional(),
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
  const noStore = { 'cache-control': 'no-store' };

  app.post<{ Params: { module: string } }>('/api/v1/records/:module', async (req, reply) => {
    const caller = await deps.authenticate(req);
    const module = parse(safeId, req.params.module, 'module');
    const b = parse(body, req.body, 'body');
    const enqueued = await deps.producer.export({ module, userId: caller.userId, format: b.format, records: b.records, ...(b.id ? { id: b.id } : {}) });
    return reply.code(202).send(enqueued);
  });

  app.get<{ Params: { module: string }; Querystring: Record<string, string> }>('/api/v1/records/:module', async (req, reply) => {
    const caller = await deps.authenticate(req);
    const module = parse(safeId, req.params.module, 'module');
    const q = parse(listQuery, req.query, 'query');
    const range = { ...(q.from ? { from: new Date(q.from) } : {}), ...(q.to ? { to: new Date(q.to) } : {}) };
    if (q.q) {
      const hits = await searchRecords(deps.storage(), module, caller.userId, q.q, { ...range, ...(q.limit ? { limit: q.limit } : {}) });
      return reply.headers(noStore).send({ module, q: q.q, hits });
    }
    const entries = await listRecords(deps.storage(), module, caller.userId, range);
    return reply.headers(noStore).send({ module, entries });
  });

  app.get<{ Params: { module: string; id: string } }>('/api/v1/records/:module/:id', async (req, reply) => {
    const caller = await deps.authenticate(req);
    const module = parse(safeId, req.params.module, 'module');
    const id = parse(safeId, req.params.id, 'id');
    const found = await getRecord(deps.storage(), module, caller.userId, id);
    if (!found) throw notFound(module, id);
    return reply.headers(noStore).send(found);
  });

  app.get<{ Params: { module: string; id: string }; Querystring: Record<string, string> }>('/api/v1/records/:module/:id/url', async (req, reply) => {
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
