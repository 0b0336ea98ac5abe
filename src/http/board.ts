/**
 * Bull Board at /admin/queues: every queue (dead-letter and extra ones included), behind the auth
 * plugin's board hook (auth.ts), framed by nobody, and read-only for viewers.
 */
import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { FastifyAdapter } from '@bull-board/fastify';
import type { Queue } from 'bullmq';
import type { FastifyPluginAsync } from 'fastify';
import { DEAD_LETTER_QUEUE } from '../queues/index.js';

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
    queues: queues.map(
      (q) =>
        new BullMQAdapter(q, {
          description:
            q.name === DEAD_LETTER_QUEUE ? 'Jobs that failed for good, parked with payload and error; redrive them from the CLI' : '',
        }),
    ),
    serverAdapter,
    options: { uiConfig: { boardTitle: 'Stowage' } },
  });

  board.addHook('onRequest', board.authenticateBoard);

  board.addHook('onSend', async (req, reply, payload) => {
    // The board's buttons can be clicked by a user tricked into it inside a frame.
    reply.header('x-frame-options', 'DENY');
    reply.header('content-security-policy', "frame-ancestors 'none'");
    // Viewers get the board's own read-only presentation: no buttons that would only get a 403.
    if (req.caller?.role === 'viewer' && req.routeOptions.url === `${BOARD_PATH}/api/queues` && typeof payload === 'string') {
      try {
        const body = JSON.parse(payload) as { queues?: Record<string, unknown>[] };
        for (const q of body.queues ?? []) Object.assign(q, { readOnlyMode: true, allowRetries: false, allowCompletedRetries: false });
        return JSON.stringify(body);
      } catch {
        return payload;
      }
    }
    return payload;
  });

  await board.register(serverAdapter.registerPlugin());
};
