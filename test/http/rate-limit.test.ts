/**
 * Per-caller rate limits (http.requestsPerMinute, http.enqueuesPerMinute) against real Redis: over
 * a limit is 429 with Retry-After and a message naming the bound, other callers are unaffected,
 * nothing accepted is lost, probes and /metrics are not counted, and two servers on one Redis share
 * the count.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToken } from '../../src/auth/tokens.js';
import { buildServer, type StowageServer } from '../../src/http/server.js';
import type { PayloadInput } from '../../src/queues/index.js';
import { isolate } from '../helpers/isolation.js';
import { basicHeader, harness, type Harness } from './harness.js';
import { redisVariants } from '../helpers/redis-cluster.js';

// The same behaviour on one Redis and on a 3-master Redis Cluster (a hash tag per queue).
describe.each(await redisVariants())('on $name Redis', (variant) => {
  const iso = isolate('ratelimit', variant);
  const REQUESTS = 20;
  const ENQUEUES = 5;

  let h: Harness;
  let app: StowageServer;
  let other: StowageServer;

  const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
  const exportPayload = (user: string, i: number) =>
    ({ module: 'reports', userId: user, format: 'json', records: [{ id: i }] }) satisfies PayloadInput<'export'>;
  const adminToken = (user: string) => createToken(h.secret, { user, role: 'admin' });

  function expectLimited(res: { statusCode: number; headers: Record<string, unknown>; json(): unknown }, what: RegExp) {
    expect(res.statusCode).toBe(429);
    const retryAfter = Number(res.headers['retry-after']);
    expect(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 60, `Retry-After ${res.headers['retry-after']}`).toBe(true);
    const { error } = res.json() as { error: { code: string; message: string } };
    expect(error.code).toBe('STOWAGE_ERR_RATE_LIMITED');
    expect(error.message).toMatch(what);
  }

  beforeAll(async () => {
    h = await harness(iso, { config: { http: { requestsPerMinute: REQUESTS, enqueuesPerMinute: ENQUEUES } } });
    app = buildServer(h.deps);
    other = buildServer(h.deps);
    await Promise.all([app.ready(), other.ready()]);
  });

  afterAll(async () => {
    await app?.close();
    await other?.close();
    await h?.close();
    await iso.cleanup();
  });

  describe('enqueues per minute', () => {
    it('refuses the 6th enqueue of one token with 429 and Retry-After; another token goes on; nothing accepted is lost', async () => {
      const [alice, bob] = await Promise.all([adminToken('alice'), adminToken('bob')]);
      const accepted: string[] = [];
      for (let i = 0; i < ENQUEUES; i++) {
        const res = await app.inject({
          method: 'POST',
          url: '/v1/jobs/export',
          headers: bearer(alice),
          payload: exportPayload('alice', i),
        });
        expect(res.statusCode, res.body).toBe(202);
        accepted.push(res.json<{ jobId: string }>().jobId);
      }
      const refused = await app.inject({
        method: 'POST',
        url: '/v1/jobs/export',
        headers: bearer(alice),
        payload: exportPayload('alice', 99),
      });
      expectLimited(
        refused,
        /at most 5 enqueues a minute \(http\.enqueuesPerMinute \(STOWAGE_HTTP_ENQUEUES_PER_MINUTE\)\); retry in \d+ s/,
      );
      expect(refused.json<{ error: { message: string } }>().error.message).toContain('"alice"');

      // Record stores count as enqueues too, under the same budget.
      const store = await app.inject({
        method: 'POST',
        url: '/api/v1/records/reports',
        headers: bearer(alice),
        payload: { format: 'json', records: [{ id: 1 }] },
      });
      expect(store.statusCode).toBe(429);

      // Reads are not enqueues: alice may still look at her jobs.
      const read = await app.inject({ method: 'GET', url: `/v1/jobs/export/${accepted[0]}`, headers: bearer(alice) });
      expect(read.statusCode).toBe(200);

      const fromBob = await app.inject({ method: 'POST', url: '/v1/jobs/export', headers: bearer(bob), payload: exportPayload('bob', 1) });
      expect(fromBob.statusCode).toBe(202);

      const queue = h.queue('export');
      const jobs = await Promise.all(accepted.map((id) => queue.getJob(id)));
      expect(jobs.map((j) => j?.id)).toEqual(accepted);
      expect(await queue.getJobCountByTypes('waiting')).toBe(ENQUEUES + 1);
    });

    it('is shared by two servers on the same Redis', async () => {
      const carol = await adminToken('carol');
      const statuses: number[] = [];
      for (let i = 0; i < ENQUEUES + 1; i++) {
        const server = i % 2 === 0 ? app : other;
        const res = await server.inject({
          method: 'POST',
          url: '/v1/jobs/export',
          headers: bearer(carol),
          payload: exportPayload('carol', i),
        });
        statuses.push(res.statusCode);
      }
      expect(statuses).toEqual([202, 202, 202, 202, 202, 429]);
    });
  });

  describe('requests per minute', () => {
    it('refuses a token over its request rate, on any route, before the handler; probes and /metrics are not counted', async () => {
      const dave = await createToken(h.secret, { user: 'dave', role: 'viewer' });
      for (let i = 0; i < REQUESTS; i++) {
        const res = await app.inject({ method: 'GET', url: '/v1/jobs/export/export.none', headers: bearer(dave) });
        expect(res.statusCode).toBe(404);
      }
      const refused = await other.inject({ method: 'GET', url: '/api/dead-letters', headers: bearer(dave) });
      expectLimited(refused, /viewer "dave" may make at most 20 requests a minute \(http\.requestsPerMinute/);
      // A viewer's enqueue is over the request limit before it is a 403.
      const enqueue = await app.inject({
        method: 'POST',
        url: '/v1/jobs/export',
        headers: bearer(dave),
        payload: exportPayload('dave', 1),
      });
      expect(enqueue.statusCode).toBe(429);

      for (let i = 0; i < REQUESTS + 5; i++) {
        for (const url of ['/healthz', '/metrics']) {
          const res = await app.inject({ method: 'GET', url });
          expect(res.statusCode, url).toBe(200);
        }
      }
    });

    it('limits the board too, by its basic-auth user, with the same 429 body', async () => {
      let res;
      for (let i = 0; i <= REQUESTS; i++) {
        res = await app.inject({ method: 'GET', url: '/admin/queues/api/queues', headers: { authorization: basicHeader() } });
        if (i < REQUESTS) expect(res.statusCode).toBe(200);
      }
      expectLimited(res!, /"ops" may make at most 20 requests a minute/);
    });

    it('does not count requests refused for want of credentials', async () => {
      for (let i = 0; i < REQUESTS + 5; i++) {
        const res = await app.inject({ method: 'GET', url: '/v1/jobs/export/x' });
        expect(res.statusCode).toBe(401);
      }
    });
  });
});
