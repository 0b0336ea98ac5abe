/**
 * Where a job keeps the state of its resumable uploads (src/storage/resume.ts): one Redis hash per
 * job and upload, under the Stowage prefix beside the job's error record (redisKeys.jobError),
 * named by the job's queue and id so that every attempt of the job finds it. Each command touches
 * that one key only, so it works on Redis Cluster whatever slot the key hashes to.
 */
import type { Job } from 'bullmq';
import { redisKeys } from '../queues/index.js';
import { redisResumeStore, type ResumeStore } from '../storage/resume.js';
import type { ProcessorContext } from './context.js';

/** The resume state of the upload `name` ('artifact', 'pack', 'records') of this job; undefined for a job without an id. */
export function jobResumeStore(
  ctx: Pick<ProcessorContext, 'redis' | 'config'>,
  job: Pick<Job, 'queueName' | 'id'>,
  name: string,
): ResumeStore | undefined {
  if (!job.id) return undefined;
  return redisResumeStore(ctx.redis, redisKeys.uploadState(ctx.config.prefix, job.queueName, job.id, name));
}
