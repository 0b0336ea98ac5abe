/**
 * `GET /metrics`, open whatever auth is configured (counts and queue names only): the process
 * registry's text followed by each queue's depth and oldest waiting age, read at scrape time.
 */
import type { Queue } from 'bullmq';
import type { FastifyPluginAsync } from 'fastify';
import { renderQueueMetrics, type Metrics } from '../observability/metrics.js';
import { replies, validatedInHandler } from './schemas.js';

export interface MetricsRouteOptions {
  metrics: Metrics;
  /** Every queue to report, extra ones (e.g. maintenance) included. */
  queues: readonly Queue[];
  /** Bound on each queue's reads during a scrape, in ms. */
  timeoutMs: number;
}

const exposition = {
  description: 'Prometheus text exposition format 0.0.4',
  content: { 'text/plain': { schema: { type: 'string' } } },
};

export const metricsRoute: FastifyPluginAsync<MetricsRouteOptions> = async (app, deps) => {
  app.get('/metrics', { schema: { response: replies({ 200: exposition }) }, ...validatedInHandler }, async (_req, reply) => {
    const [base, queueText] = await Promise.all([
      deps.metrics.registry.metrics(),
      renderQueueMetrics(deps.queues, { timeoutMs: deps.timeoutMs }),
    ]);
    // Two registries' text concatenated is valid exposition: their metric names are disjoint.
    const text = base.endsWith('\n') || base === '' ? base + queueText : `${base}\n${queueText}`;
    return reply.header('content-type', deps.metrics.registry.contentType).send(text);
  });
};
