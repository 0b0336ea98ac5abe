/**
 * The job API: `POST /v1/jobs/:kind` enqueues (admin token; the same validation as the SDK) and
 * `GET /v1/jobs/:kind/:id` reports a job's state, progress and outcome (any token; a `user` token
 * sees its own jobs only). A job that failed for good leaves its queue when it is parked: it is then
 * found in the dead-letter queue and reported as `parked`, with why and where. A redrive puts it back
 * in its queue under the same id, so the same URL then reports the live job. A job's live events
 * are in events.ts.
 */
import type { JobState, Queue } from 'bullmq';
import type { FastifyPluginAsync } from 'fastify';
import { z } from 'zod';
import { mayRead } from '../auth/tokens.js';
import { NotFoundError, StowageError, ValidationError } from '../errors.js';
import { MAX_JSON_DEPTH, isReadableJobId, nestsDeeperThan, safeId } from '../ids.js';
import type { Producer } from '../producers/index.js';
import {
  DEAD_LETTER_QUEUE,
  JOB_KINDS,
  PAYLOAD_SCHEMAS,
  QUEUE_NAMES,
  isJobKind,
  parkedJobId,
  type ParkedJob,
  type PayloadInput,
} from '../queues/index.js';
import { jsonSchema, replies, validatedInHandler } from './schemas.js';

export interface JobRoutesOptions {
  /** Enqueues: the same validation as the SDK. */
  producer: Producer;
  /** The server's queues; reads serve QUEUE_NAMES only. */
  queues: readonly Queue[];
}

const enqueueParams = z.object({ kind: z.enum(JOB_KINDS) });
const readParams = z.object({ kind: z.enum(QUEUE_NAMES), id: z.string() });
/** Documentation only: producer.enqueue validates the body against its kind's schema. */
const payload = z.union(Object.values(PAYLOAD_SCHEMAS)).describe("the payload of the path's kind");
/** Beside the payload's fields, taken off before the payload is validated. */
const correlation = z.object({
  correlationId: safeId
    .optional()
    .describe(
      "groups jobs for GET /v1/events?correlationId=: their domain events carry it, and each emits job_completed. Default: a build artifact's buildId, else its versionId",
    ),
});

const enqueued = z.object({
  jobId: z.string(),
  kind: z.enum(JOB_KINDS),
  created: z.boolean().describe('false when the same work was already enqueued'),
  correlationId: z
    .string()
    .optional()
    .describe('the correlation id given or defaulted (the job keeps its first one when it already existed)'),
});

const JOB_STATES = [
  'completed',
  'failed',
  'active',
  'delayed',
  'prioritized',
  'waiting',
  'waiting-children',
  'unknown',
  'parked',
] as const satisfies readonly (JobState | 'unknown' | 'parked')[];
const iso = z.iso.datetime().nullable();
const jobView = z.object({
  jobId: z.string(),
  kind: z.enum(QUEUE_NAMES),
  state: z.enum(JOB_STATES),
  progress: z.unknown(),
  result: z.unknown(),
  failedReason: z.string().nullable(),
  attemptsMade: z.number().int(),
  createdAt: iso,
  processedAt: iso,
  finishedAt: iso,
  /** Present when state is `parked`: why, and the dead-letter job to redrive or purge. */
  parked: z
    .object({
      reason: z.enum(['permanent', 'retries_exhausted', 'stalled']),
      deadLetterId: z.string(),
      parkedAt: z.iso.datetime(),
      error: z.object({ name: z.string(), code: z.string().optional(), message: z.string() }),
    })
    .optional(),
});

const enqueueSchema = {
  params: jsonSchema(enqueueParams),
  body: jsonSchema(z.intersection(payload, correlation)),
  response: replies({ 202: enqueued }),
};
const readSchema = { params: jsonSchema(readParams), response: replies({ 200: jobView }) };

export const jobRoutes: FastifyPluginAsync<JobRoutesOptions> = async (app, deps) => {
  app.post<{ Params: { kind: string } }>(
    '/v1/jobs/:kind',
    { schema: enqueueSchema, ...validatedInHandler, preHandler: app.adminOnly('enqueue jobs') },
    async (req, reply) => {
      const caller = req.caller!;
      const { kind } = req.params;
      if (!isJobKind(kind)) throw unknownKind(kind, JOB_KINDS);
      // The payload is hashed for its job id (canonical JSON, recursive) before any schema sees it:
      // thousands of levels would overflow the stack. Records may nest MAX_JSON_DEPTH levels, and
      // sit two below the body (`{records: [record]}`).
      if (nestsDeeperThan(req.body, MAX_JSON_DEPTH + 2)) {
        throw new ValidationError('body', [`nests deeper than ${MAX_JSON_DEPTH + 2} levels of objects and arrays (the limit)`]);
      }
      const { body, correlationId } = splitCorrelation(req.body);
      // producer.enqueue validates with the same schema as the SDK (and the correlation id) and names each bad field.
      const result = await deps.producer.enqueue(
        kind,
        body as PayloadInput<typeof kind>,
        correlationId === undefined ? {} : { correlationId },
      );
      req.log.info(
        {
          kind,
          jobId: result.jobId,
          created: result.created,
          correlationId: result.correlationId,
          user: caller.userId,
          tenant: caller.tenant,
        },
        'job enqueued',
      );
      return reply.code(202).send(result satisfies z.output<typeof enqueued>);
    },
  );

  app.get<{ Params: { kind: string; id: string } }>(
    '/v1/jobs/:kind/:id',
    { schema: readSchema, ...validatedInHandler, preHandler: app.authenticate },
    async (req): Promise<z.output<typeof jobView>> => {
      const caller = req.caller!;
      const { kind, id } = req.params;
      const queue = (QUEUE_NAMES as readonly string[]).includes(kind) ? deps.queues.find((q) => q.name === kind) : undefined;
      if (!queue) throw unknownKind(kind, QUEUE_NAMES);
      // `meta`, `events`, `id`, … name BullMQ's own keys beside the job hashes: read as a job they
      // answer WRONGTYPE (a 500) or a "job" made of the queue's meta fields. They are no job.
      if (!isReadableJobId(id)) throw new NotFoundError(`job ${id} not found in queue ${kind}`);
      const job = await queue.getJob(id);
      const at = (ms: number | undefined) => (ms ? new Date(ms).toISOString() : null);
      const notFound = () => new NotFoundError(`job ${id} not found in queue ${kind}`);
      if (!job) {
        const parked = await findParked(deps.queues, kind, id);
        // Another user's job answers exactly like a missing one, so ids cannot be probed.
        if (!parked || !mayRead(caller, parkedOwner(parked.record))) throw notFound();
        const p = parked.record;
        return {
          jobId: id,
          kind: kind as (typeof QUEUE_NAMES)[number],
          state: 'parked',
          progress: null,
          result: null,
          failedReason: p.error.message,
          attemptsMade: p.attemptsMade,
          createdAt: at(p.timestamps.created),
          processedAt: at(p.timestamps.processed),
          finishedAt: at(p.timestamps.failed),
          parked: parkedDetails(parked),
        };
      }
      if (!mayRead(caller, (job.data as { userId?: unknown } | undefined)?.userId)) throw notFound();
      return {
        jobId: job.id ?? id,
        kind: kind as (typeof QUEUE_NAMES)[number],
        state: await job.getState(),
        progress: job.progress ?? null,
        result: job.returnvalue ?? null,
        failedReason: job.failedReason || null,
        attemptsMade: job.attemptsMade,
        createdAt: at(job.timestamp),
        processedAt: at(job.processedOn),
        finishedAt: at(job.finishedOn),
      };
    },
  );
};

/** A parked job: its dead-letter record and that record's job id. */
export interface FoundParked {
  deadLetterId: string;
  record: ParkedJob;
}

/**
 * The dead-letter copy of job `id` of queue `kind`, found once its origin queue no longer has it.
 * A redrive re-adds the job to its origin queue under the same id, so the origin queue is always
 * asked first: a redriven job is reported live, under the id it always had.
 */
export async function findParked(queues: readonly Queue[], kind: string, id: string): Promise<FoundParked | undefined> {
  if (!isJobKind(kind)) return undefined;
  const dlq = queues.find((q) => q.name === DEAD_LETTER_QUEUE);
  const deadLetterId = parkedJobId(kind, id);
  const job = await dlq?.getJob(deadLetterId);
  const record = job?.data as ParkedJob | undefined;
  return record?.originJobId === id && record.originQueue === kind ? { deadLetterId: job!.id ?? deadLetterId, record } : undefined;
}

/** Whose job it was: a `user` token reads its own parked jobs only. */
export const parkedOwner = (record: ParkedJob): unknown => (record.payload as { userId?: unknown } | undefined)?.userId;

/** Why and where a job is parked, as GET /v1/jobs/:kind/:id and the job's event stream report it. */
export function parkedDetails({ deadLetterId, record }: FoundParked) {
  const { name, code, message } = record.error;
  return {
    reason: record.reason,
    deadLetterId,
    parkedAt: new Date(record.timestamps.parked).toISOString(),
    error: { name, ...(code ? { code } : {}), message },
  };
}

/** The body without its `correlationId` (no payload has a field of that name), and that id. */
function splitCorrelation(raw: unknown): { body: unknown; correlationId?: string } {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw) || !('correlationId' in raw)) return { body: raw };
  const { correlationId, ...body } = raw as Record<string, unknown>;
  if (typeof correlationId !== 'string')
    throw new ValidationError('body', [
      `correlationId: expected a string, got ${correlationId === null ? 'null' : Array.isArray(correlationId) ? 'an array' : typeof correlationId}`,
    ]);
  return { body, correlationId };
}

function unknownKind(kind: string, known: readonly string[]): StowageError {
  return new StowageError('STOWAGE_ERR_UNKNOWN_KIND', `unknown job kind "${kind}"; expected one of ${known.join(', ')}`);
}
