/**
 * The dead-letter queue over HTTP (bearer token; no token 401). Payloads, messages and stacks are
 * shown with secrets redacted (queues/redact.ts): parked jobs of older producers may hold them.
 *
 * | route                                               | role          |                                      |
 * | --------------------------------------------------- | ------------- | ------------------------------------ |
 * | GET  /api/dead-letters                              | admin, viewer | ?queue&limit&offset: oldest first    |
 * | GET  /api/dead-letters/groups                       | admin, viewer | ?queue: by cause, largest first      |
 * | POST /api/dead-letters/groups/:signature/redrive    | admin         | ?dryRun=true: say what would move    |
 *
 * Role `user` gets 403: parked jobs are every tenant's. A signature no parked job has answers 404.
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Redis } from 'ioredis';
import { z } from 'zod';
import type { Role } from '../auth/tokens.js';
import type { Config } from '../config.js';
import { AuthError, NotFoundError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import { DeadLetter, GROUP_SIGNATURE, showParked } from '../queues/dead-letter.js';
import { createEventStream } from '../queues/index.js';
import { jsonSchema, parse, replies, validatedInHandler } from './schemas.js';

export interface DeadLetterRoutesDeps {
  config: Pick<Config, 'prefix' | 'events'>;
  redis: Redis;
  logger: Logger;
  metrics?: Metrics;
  authenticate: (req: FastifyRequest) => Promise<{ userId: string; role: Role }>;
}

type App = FastifyInstance<Server, IncomingMessage, ServerResponse, Logger>;

const queueName = z.string().min(1).max(200);
const boolParam = z.enum(['true', 'false', '1', '0']).transform((v) => v === 'true' || v === '1');

const listQuery = z.strictObject({
  queue: queueName.optional(),
  limit: z.coerce.number().int().min(1).max(1000).default(100),
  offset: z.coerce.number().int().min(0).max(1_000_000).default(0),
});
const groupsQuery = z.strictObject({ queue: queueName.optional() });
const redriveQuery = z.strictObject({ dryRun: boolParam.optional() });
const signatureParam = z.string().regex(GROUP_SIGNATURE, 'expected a signature of 12 hex digits, as GET /api/dead-letters/groups lists it');

const reason = z.enum(['permanent', 'retries_exhausted', 'stalled']);
const parkedView = z.object({
  id: z.string(),
  signature: z.string().describe('its group: GET /api/dead-letters/groups'),
  originQueue: z.string(),
  originJobId: z.string(),
  name: z.string(),
  payload: z.unknown().describe('the origin payload, secrets redacted'),
  error: z.object({ message: z.string(), name: z.string(), stack: z.string().optional(), code: z.string().optional() }),
  attemptsMade: z.number().int(),
  opts: z.looseObject({}),
  redrives: z.number().int(),
  timestamps: z.object({
    created: z.number().int(),
    processed: z.number().int().optional(),
    failed: z.number().int().optional(),
    parked: z.number().int(),
  }),
  reason,
});
const groupView = z.object({
  signature: z.string(),
  errorName: z.string(),
  errorCode: z.string().nullable(),
  message: z.string().describe('ids, numbers and quoted values masked'),
  example: z.string().describe('the newest message as it was'),
  queues: z.array(z.string()),
  reasons: z.array(reason),
  count: z.number().int(),
  firstParkedAt: z.iso.datetime(),
  lastParkedAt: z.iso.datetime(),
  jobIds: z.array(z.string()).describe('the oldest few dead-letter job ids'),
});
const outcomeView = z.object({
  id: z.string(),
  originQueue: z.string(),
  originJobId: z.string(),
  action: z.enum(['redriven', 'would_redrive', 'skipped']),
  reason: z.string().optional(),
});

const listSchema = {
  querystring: jsonSchema(listQuery),
  response: replies({
    200: z.object({
      items: z.array(parkedView),
      total: z.number().int(),
      limit: z.number().int(),
      offset: z.number().int(),
      next_offset: z.number().int().nullable(),
    }),
  }),
};
const groupsSchema = { querystring: jsonSchema(groupsQuery), response: replies({ 200: z.object({ groups: z.array(groupView) }) }) };
const redriveSchema = {
  params: jsonSchema(z.object({ signature: signatureParam })),
  querystring: jsonSchema(redriveQuery),
  response: replies({
    200: z.object({
      signature: z.string(),
      dryRun: z.boolean(),
      outcomes: z.array(outcomeView),
      redriven: z.number().int().describe('moved, or with dryRun would move'),
      skipped: z.number().int(),
    }),
  }),
};

export function registerDeadLetterRoutes(app: App, deps: DeadLetterRoutesDeps): void {
  const deadLetter = new DeadLetter({
    connection: deps.redis,
    prefix: deps.config.prefix,
    logger: deps.logger,
    events: createEventStream(deps.redis, deps.config.prefix, deps.config.events.maxLen),
    ...(deps.metrics ? { metrics: deps.metrics } : {}),
  });
  app.addHook('onClose', async () => deadLetter.close());

  const allowed = async (req: FastifyRequest, roles: readonly Role[], action: string) => {
    const caller = await deps.authenticate(req);
    if (!roles.includes(caller.role))
      throw new AuthError(`role "${caller.role}" may not ${action}; an ${roles.join(' or ')} token is required`, 'STOWAGE_ERR_FORBIDDEN');
    return caller;
  };

  app.get<{ Querystring: Record<string, string> }>('/api/dead-letters', { schema: listSchema, ...validatedInHandler }, async (req) => {
    await allowed(req, ['admin', 'viewer'], 'read the dead-letter queue');
    const q = parse(listQuery, req.query ?? {}, 'query');
    const jobs = await deadLetter.list(q.queue ? { queue: q.queue } : {});
    const items = jobs.slice(q.offset, q.offset + q.limit).map(showParked);
    const next = q.offset + q.limit;
    return { items, total: jobs.length, limit: q.limit, offset: q.offset, next_offset: next < jobs.length ? next : null };
  });

  app.get<{ Querystring: Record<string, string> }>(
    '/api/dead-letters/groups',
    { schema: groupsSchema, ...validatedInHandler },
    async (req) => {
      await allowed(req, ['admin', 'viewer'], 'read the dead-letter queue');
      const q = parse(groupsQuery, req.query ?? {}, 'query');
      return { groups: await deadLetter.groups(q.queue ? { queue: q.queue } : {}) };
    },
  );

  app.post<{ Params: { signature: string }; Querystring: Record<string, string> }>(
    '/api/dead-letters/groups/:signature/redrive',
    { schema: redriveSchema, ...validatedInHandler },
    async (req) => {
      const caller = await allowed(req, ['admin'], 'redrive parked jobs');
      const { signature } = parse(z.object({ signature: signatureParam }), req.params, 'path');
      const dryRun = parse(redriveQuery, req.query ?? {}, 'query').dryRun ?? false;
      const outcomes = await deadLetter.redrive({ group: signature }, { dryRun });
      if (!outcomes.length) throw new NotFoundError(`no parked job in group ${signature}`);
      const skipped = outcomes.filter((o) => o.action === 'skipped').length;
      req.log.info({ signature, dryRun, moved: outcomes.length - skipped, skipped, user: caller.userId }, 'dead-letter group redriven');
      return { signature, dryRun, outcomes, redriven: outcomes.length - skipped, skipped };
    },
  );
}
