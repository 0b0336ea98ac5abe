/**
 * The failures API (bearer token; the tenant comes from the token, never from the request):
 *
 * | route                                   | role        |                                          |
 * | --------------------------------------- | ----------- | ---------------------------------------- |
 * | POST  /api/v1/failures                  | admin       | one failure, an array, or {failures}; 202 |
 * | GET   /api/v1/failures                  | any         | ?error_code&category&since&recovered&limit&offset |
 * | GET   /api/v1/failures/stats            | any         | ?since_hours                             |
 * | GET   /api/v1/failures/unrecovered      | any         | ?since_hours (24) &limit (50)            |
 * | GET   /api/v1/failures/:id              | any         |                                          |
 * | PATCH /api/v1/failures/:id/recovery     | admin       | {recovery_succeeded, recovered_by, notes} |
 *
 * Another tenant's failure answers 404, never 403, so ids cannot be probed. POST answers once
 * Redis holds the records; the writer started here (one per server, one active fleet-wide)
 * persists them to Postgres, and keeps trying while Postgres is down (src/failures/ingest.ts).
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Redis } from 'ioredis';
import { z } from 'zod';
import type { Role } from '../auth/tokens.js';
import type { Config } from '../config.js';
import { failureStats, getFailure, listFailures, listUnrecovered, markRecovery, type FailureRecord } from '../db/failures.js';
import type { Db } from '../db/pool.js';
import { AuthError, NotFoundError } from '../errors.js';
import { MAX_BATCH, failureInput, recordFailures, startFailureWriter, type FailureWriter } from '../failures/ingest.js';
import { countRecovery, failureMetrics } from '../failures/metrics.js';
import { normalizeErrorCode } from '../failures/signature.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import { jsonSchema, parse, replies, validatedInHandler } from './schemas.js';

export interface FailureRoutesDeps {
  config: Pick<Config, 'prefix' | 'failures'>;
  db: Db;
  redis: Redis;
  metrics: Pick<Metrics, 'registry'>;
  logger: Logger;
  authenticate: (req: FastifyRequest) => Promise<{ tenant: string; role: Role }>;
  /** Run a failure writer in this server (closed with it). Default true. */
  writer?: boolean;
}

/** The server's instance type (its logger is our pino logger). */
type App = FastifyInstance<Server, IncomingMessage, ServerResponse, Logger>;

const boolParam = z.enum(['true', 'false', '1', '0']).transform((v) => v === 'true' || v === '1');

const listQuery = z.strictObject({
  error_code: z.string().min(1).max(100).optional(),
  category: z.string().min(1).max(100).optional(),
  since: z.iso.datetime({ offset: true }).optional(),
  recovered: boolParam.optional(),
  limit: z.coerce.number().int().min(1).max(500).default(50),
  offset: z.coerce.number().int().min(0).max(1_000_000).default(0),
});

const statsQuery = z.strictObject({
  since_hours: z.coerce
    .number()
    .int()
    .min(1)
    .max(24 * 366)
    .optional(),
});

const unrecoveredQuery = z.strictObject({
  since_hours: z.coerce
    .number()
    .int()
    .min(1)
    .max(24 * 366)
    .default(24),
  limit: z.coerce.number().int().min(1).max(500).default(50),
});

const recoveryBody = z.strictObject({
  recovery_succeeded: z.boolean(),
  recovered_by: z.string().trim().min(1).max(200),
  notes: z.string().max(4000).nullish(),
});

const uuidParam = z.uuid();

const nullableText = z.string().nullable();
const failureView = z.object({
  id: z.uuid(),
  tenant_id: z.string(),
  error_code: z.string(),
  category: nullableText,
  message: z.string(),
  signature: z.string(),
  catalog_entry: nullableText,
  recovery_mode: nullableText,
  recovery_succeeded: z.boolean().nullable(),
  recovered_by: nullableText,
  recovered_at: z.iso.datetime().nullable(),
  notes: nullableText,
  created_at: z.iso.datetime(),
});
const idParams = jsonSchema(z.object({ id: uuidParam }));
/** Documentation only: recordFailures validates the body (failures/ingest.ts). */
const reportBody = z.union([
  failureInput,
  z.array(failureInput).min(1).max(MAX_BATCH),
  z.strictObject({ failures: z.array(failureInput).min(1).max(MAX_BATCH) }),
]);

const reportSchema = {
  body: jsonSchema(reportBody),
  response: replies({ 202: z.object({ accepted: z.number().int(), ids: z.array(z.uuid()) }) }),
};
const listSchema = {
  querystring: jsonSchema(listQuery),
  response: replies({
    200: z.object({
      items: z.array(failureView),
      limit: z.number().int(),
      offset: z.number().int(),
      next_offset: z.number().int().nullable(),
    }),
  }),
};
const statsSchema = {
  querystring: jsonSchema(statsQuery),
  response: replies({
    200: z.object({
      total: z.number().int(),
      matched: z.number().int(),
      unmatched: z.number().int(),
      hit_rate: z.number().nullable(),
      recovered: z.number().int(),
      recovery_failed: z.number().int(),
      unrecovered: z.number().int(),
      top_error_codes: z.array(z.object({ error_code: z.string(), count: z.number().int() })),
      by_category: z.array(z.object({ category: nullableText, count: z.number().int() })),
    }),
  }),
};
const unrecoveredSchema = {
  querystring: jsonSchema(unrecoveredQuery),
  response: replies({ 200: z.object({ items: z.array(failureView), since_hours: z.number().int(), limit: z.number().int() }) }),
};
const getSchema = { params: idParams, response: replies({ 200: failureView }) };
const recoverySchema = { params: idParams, body: jsonSchema(recoveryBody), response: replies({ 200: failureView }) };

function view(f: FailureRecord): z.output<typeof failureView> {
  return {
    id: f.id,
    tenant_id: f.tenantId,
    error_code: f.errorCode,
    category: f.category,
    message: f.message,
    signature: f.signature,
    catalog_entry: f.catalogEntry,
    recovery_mode: f.recoveryMode,
    recovery_succeeded: f.recoverySucceeded,
    recovered_by: f.recoveredBy,
    recovered_at: f.recoveredAt?.toISOString() ?? null,
    notes: f.notes,
    created_at: f.createdAt.toISOString(),
  };
}

export function registerFailureRoutes(app: App, deps: FailureRoutesDeps): void {
  const metrics = failureMetrics(deps.metrics.registry);
  const admin = async (req: FastifyRequest) => {
    const caller = await deps.authenticate(req);
    if (caller.role !== 'admin')
      throw new AuthError(`role "${caller.role}" may not change failures; an admin token is required`, 'STOWAGE_ERR_FORBIDDEN');
    return caller;
  };
  /** An id that is not a uuid cannot exist: the same 404 as another tenant's. */
  const idOf = (raw: string) => {
    const r = uuidParam.safeParse(raw);
    if (!r.success) throw new NotFoundError(`failure ${raw} not found`);
    return r.data;
  };

  let writer: FailureWriter | undefined;
  if (deps.writer !== false) {
    writer = startFailureWriter({ redis: deps.redis, db: deps.db, config: deps.config, logger: deps.logger, metrics });
    app.addHook('onClose', async () => writer?.close());
  }

  app.post('/api/v1/failures', { schema: reportSchema, ...validatedInHandler }, async (req, reply) => {
    const caller = await admin(req);
    const { ids } = await recordFailures({ redis: deps.redis, config: deps.config, metrics }, caller.tenant, req.body);
    return reply.code(202).send({ accepted: ids.length, ids });
  });

  app.get<{ Querystring: Record<string, string> }>('/api/v1/failures', { schema: listSchema, ...validatedInHandler }, async (req) => {
    const caller = await deps.authenticate(req);
    const qy = parse(listQuery, req.query, 'query');
    const items = await listFailures(deps.db, caller.tenant, {
      ...(qy.error_code ? { errorCode: normalizeErrorCode(qy.error_code) } : {}),
      ...(qy.category ? { category: qy.category } : {}),
      ...(qy.since ? { since: new Date(qy.since) } : {}),
      ...(qy.recovered !== undefined ? { recovered: qy.recovered } : {}),
      limit: qy.limit,
      offset: qy.offset,
    });
    return {
      items: items.map(view),
      limit: qy.limit,
      offset: qy.offset,
      next_offset: items.length === qy.limit ? qy.offset + qy.limit : null,
    };
  });

  app.get<{ Querystring: Record<string, string> }>(
    '/api/v1/failures/stats',
    { schema: statsSchema, ...validatedInHandler },
    async (req) => {
      const caller = await deps.authenticate(req);
      const qy = parse(statsQuery, req.query, 'query');
      const since = qy.since_hours ? new Date(Date.now() - qy.since_hours * 3_600_000) : null;
      const s = await failureStats(deps.db, caller.tenant, since);
      return {
        total: s.total,
        matched: s.matched,
        unmatched: s.unmatched,
        hit_rate: s.total ? s.matched / s.total : null,
        recovered: s.recovered,
        recovery_failed: s.recoveryFailed,
        unrecovered: s.unrecovered,
        top_error_codes: s.topErrorCodes.map((c) => ({ error_code: c.errorCode, count: c.count })),
        by_category: s.byCategory,
      };
    },
  );

  app.get<{ Querystring: Record<string, string> }>(
    '/api/v1/failures/unrecovered',
    { schema: unrecoveredSchema, ...validatedInHandler },
    async (req) => {
      const caller = await deps.authenticate(req);
      const qy = parse(unrecoveredQuery, req.query, 'query');
      const items = await listUnrecovered(deps.db, caller.tenant, qy.since_hours, qy.limit);
      return { items: items.map(view), since_hours: qy.since_hours, limit: qy.limit };
    },
  );

  app.get<{ Params: { id: string } }>('/api/v1/failures/:id', { schema: getSchema, ...validatedInHandler }, async (req) => {
    const caller = await deps.authenticate(req);
    const id = idOf(req.params.id);
    const f = await getFailure(deps.db, caller.tenant, id);
    if (!f) throw new NotFoundError(`failure ${id} not found`);
    return view(f);
  });

  app.patch<{ Params: { id: string } }>('/api/v1/failures/:id/recovery', { schema: recoverySchema, ...validatedInHandler }, async (req) => {
    const caller = await admin(req);
    const id = idOf(req.params.id);
    const body = parse(recoveryBody, req.body, 'body');
    const f = await markRecovery(deps.db, caller.tenant, id, {
      succeeded: body.recovery_succeeded,
      recoveredBy: body.recovered_by,
      notes: body.notes ?? null,
    });
    if (!f) throw new NotFoundError(`failure ${id} not found`);
    countRecovery(metrics, { errorCode: f.errorCode, recoveryMode: f.recoveryMode, succeeded: body.recovery_succeeded });
    return view(f);
  });
}
