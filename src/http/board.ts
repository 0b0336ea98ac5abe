/**
 * Bull Board at /admin/queues: every queue (dead-letter and extra ones included), behind the auth
 * plugin's board hook (auth.ts) and the caller's rate limit (rate-limit.ts), framed by nobody, and
 * read-only for viewers.
 *
 * Nothing secret is shown: payloads from older producers, and dead letters that never expire, may
 * hold a `postgres://user:password@` URL or a `password` field. Each queue's `data` and
 * `returnValue` formatters redact them (queues/redact.ts), and every JSON answer of the board's API
 * is redacted once more on its way out, for what has no formatter (failed reasons, stack traces,
 * logs, scheduler templates). Editing a job's data on the board shows, and so saves, the redacted copy.
 */
import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { FastifyAdapter } from '@bull-board/fastify';
import type { Queue } from 'bullmq';
import type { FastifyPluginAsync } from 'fastify';
import { DEAD_LETTER_QUEUE } from '../queues/index.js';
import { redactSecrets } from '../queues/redact.js';
import { closeUnreadBody } from './auth.js';
import { errorResponse } from './error-response.js';

export const BOARD_PATH = '/admin/queues';

export interface BoardOptions {
  queues: readonly Queue[];
}

/** Register with `{ prefix: BOARD_PATH }`. */
export const boardRoutes: FastifyPluginAsync<BoardOptions> = async (board, { queues }) => {
  const serverAdapter = new FastifyAdapter();
  // basePath feeds the page's <base href>; the register prefix places the routes. Both are needed.
  serverAdapter.setBasePath(BOARD_PATH);
  createBullBoard({
    queues: queues.map((q) => {
      const adapter = new BullMQAdapter(q, {
        description:
          q.name === DEAD_LETTER_QUEUE ? 'Jobs that failed for good, parked with payload and error; redrive them from the CLI' : '',
      });
      adapter.setFormatter('data', (data: unknown) => redactSecrets(data));
      adapter.setFormatter('returnValue', (value: unknown) => redactSecrets(value));
      return adapter;
    }),
    serverAdapter,
    options: { uiConfig: { boardTitle: 'Stowage' } },
  });

  board.addHook('onRequest', async (req, reply) => {
    // One hook, so nothing runs after the auth check answered by itself (a refusal, the ?token=
    // redirect). It returns the reply then, a thenable that `await` resolves once it is sent.
    await board.authenticateBoard.call(board, req, reply);
    if (reply.sent) return reply;
    try {
      await board.limitRate(req, reply);
    } catch (err) {
      // Answered here: the board's routes have Bull Board's error handler, which knows no codes.
      closeUnreadBody(req, reply);
      const { status, body } = errorResponse(err, req.id);
      return reply.code(status).send(body);
    }
  });

  board.addHook('onSend', async (req, reply, payload) => {
    // The board's buttons can be clicked by a user tricked into it inside a frame.
    reply.header('x-frame-options', 'DENY');
    reply.header('content-security-policy', "frame-ancestors 'none'");
    if (typeof payload !== 'string' || !req.url.startsWith(`${BOARD_PATH}/api/`)) return payload;
    let body: unknown;
    try {
      body = JSON.parse(payload);
    } catch {
      return payload;
    }
    const shown = redactSecrets(body) as { queues?: Record<string, unknown>[] };
    // Viewers get the board's own read-only presentation: no buttons that would only get a 403.
    if (req.caller?.role === 'viewer' && req.routeOptions.url === `${BOARD_PATH}/api/queues`) {
      for (const q of shown.queues ?? []) Object.assign(q, { readOnlyMode: true, allowRetries: false, allowCompletedRetries: false });
    }
    return JSON.stringify(shown);
  });

  await board.register(serverAdapter.registerPlugin());
};
