/**
 * The job API: `POST /v1/jobs/:kind` enqueues (admin token; the same validation as the SDK) and
 * `GET /v1/jobs/:kind/:id` reports a job's state, progress and outcome (any token; a `user` token
 * sees its own jobs only). A job that failed for good leaves its queue when it is parked: it is then
 * found in the dead-letter queue and reported as `parked`, with why and where. A job's live events
 * are in events.ts.
 */
import type { JobState, Queue } from 'bullmq';
import type { FastifyPluginAsync } from 'fastify';
import { z } from 'zod';
import { mayRead } from '../auth/tokens.js';
import { NotFoundError, StowageError } from '../errors.js';
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

const enqueued = z.object({
  jobId: z.string(),
  kind: z.enum(JOB_KINDS),
  created: z.boolean().describe('false when the same work was already enqueued'),
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

const enqueueSchema = { params: jsonSchema(enqueueParams), body: jsonSchema(payload), response: replies({ 202: enqueued }) };
const readSchema = { params: jsonSchema(readParams), response: replies({ 200: jobView }) };

export const jobRoutes: FastifyPluginAsync<JobRoutesOptions> = async (app, deps) => {
  app.post<{ Params: { kind: string } }>(
    '/v1/jobs/:kind',
    { schema: enqueueSchema, ...validatedInHandler, preHandler: app.adminOnly('enqueue jobs') },
    async (req, reply) => {
      const caller = req.caller!;
      const { kind } = req.params;
      if (!isJobKind(kind)) throw unknownKind(kind, JOB_KINDS);
      // producer.enqueue validates with the same schema as the SDK and names each bad field.
      const result = await deps.producer.enqueue(kind, req.body as PayloadInput<typeof kind>);
      req.log.info({ kind, jobId: result.jobId, created: result.created, user: caller.userId, tenant: caller.tenant }, 'job enqueued');
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
      const job = await queue.getJob(id);
      const at = (ms: number | undefined) => (ms ? new Date(ms).toISOString() : null);
      const notFound = () => new NotFoundError(`job ${id} not found in queue ${kind}`);
      if (!job) {
        const parked = isJobKind(kind) ? await parkedJob(deps.queues, kind, id) : undefined;
        // Another user's job answers exactly like a missing one, so ids cannot be probed.
        if (!parked || !mayRead(caller, (parked.data.payload as { userId?: unknown } | undefined)?.userId)) throw notFound();
        const p = parked.data;
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
          parked: {
            reason: p.reason,
            deadLetterId: parked.id ?? parkedJobId(kind, id),
            parkedAt: new Date(p.timestamps.parked).toISOString(),
            error: { name: p.error.name, ...(p.error.code ? { code: p.error.code } : {}), message: p.error.message },
          },
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

/** The dead-letter copy of a job of `kind` that was parked (its origin queue no longer has it). */
async function parkedJob(
  queues: readonly Queue[],
  kind: string,
  id: string,
): Promise<{ id?: string | undefined; data: ParkedJob } | undefined> {
  const dlq = queues.find((q) => q.name === DEAD_LETTER_QUEUE);
  const job = await dlq?.getJob(parkedJobId(kind, id));
  return job && (job.data as ParkedJob | undefined)?.originJobId === id ? { id: job.id, data: job.data as ParkedJob } : undefined;
}

function unknownKind(kind: string, known: readonly string[]): StowageError {
  return new StowageError('STOWAGE_ERR_UNKNOWN_KIND', `unknown job kind "${kind}"; expected one of ${known.join(', ')}`);
}
