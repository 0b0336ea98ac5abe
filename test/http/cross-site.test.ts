/**
 * Cross-site writes to /v1 and /api are refused (403) in every mode, auth off (a developer's
 * machine, where a page could otherwise stage a restore next to a live database) and on, by Origin,
 * Referer or Sec-Fetch-Site, as the board's are; same-origin and header-less clients pass; reads
 * are not refused. Real Redis, Postgres and radosgw, through inject().
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToken } from '../../src/auth/tokens.js';
import { migrate } from '../../src/db/migrate.js';
import { buildServer, type StowageServer } from '../../src/http/server.js';
import type { PayloadInput } from '../../src/queues/index.js';
import { isolate } from '../helpers/isolation.js';
import { harness, type Harness } from './harness.js';

const iso = isolate('crosssite');
const HOST = '127.0.0.1:3000';
const RESTORE = '/api/backups/web-backup-2026-01-01-000000/restore';

let h: Harness;
/** No auth configured. */
let open: StowageServer;
/** STOWAGE_AUTH_SECRET set. */
let authed: StowageServer;
let admin: string;
let n = 0;

const exportPayload = () => ({ module: 'reports', userId: 'u1', format: 'json', records: [{ id: ++n }] }) satisfies PayloadInput<'export'>;

const CROSS_SITE: Record<string, Record<string, string>> = {
  'a foreign Origin': { origin: 'https://evil.example' },
  'an Origin on another port': { origin: 'http://127.0.0.1:8080' },
  'Sec-Fetch-Site: cross-site': { 'sec-fetch-site': 'cross-site' },
  'Sec-Fetch-Site: same-site': { 'sec-fetch-site': 'same-site' },
  'a foreign Referer': { referer: 'https://evil.example/page' },
};
const SAME_ORIGIN: Record<string, Record<string, string>> = {
  'no browser headers (curl, the SDK)': {},
  'the same Origin': { origin: `http://${HOST}` },
  'Sec-Fetch-Site: same-origin': { 'sec-fetch-site': 'same-origin', origin: `http://${HOST}` },
};

beforeAll(async () => {
  h = await harness(iso, { s3: true });
  await migrate(h.deps.config);
  open = buildServer({ ...h.deps, config: { ...h.deps.config, authSecret: undefined, basicAuth: undefined } });
  authed = buildServer(h.deps);
  await Promise.all([open.ready(), authed.ready()]);
  admin = await createToken(h.secret, { user: 'alice', role: 'admin' });
});

afterAll(async () => {
  await open?.close();
  await authed?.close();
  await h?.close();
  await iso.cleanup();
});

describe('with no auth configured', () => {
  it('refuses a cross-site restore and enqueue with 403; nothing is enqueued', async () => {
    const before = await h.queue('export').getJobCountByTypes('waiting');
    for (const [what, headers] of Object.entries(CROSS_SITE)) {
      const restore = await open.inject({ method: 'POST', url: RESTORE, headers: { host: HOST, ...headers }, payload: { force: true } });
      expect(restore.statusCode, what).toBe(403);
      expect(restore.json().error).toMatchObject({
        code: 'STOWAGE_ERR_FORBIDDEN',
        message: expect.stringMatching(/^cross-(site|origin) request refused/),
      });
      const enqueue = await open.inject({
        method: 'POST',
        url: '/v1/jobs/export',
        headers: { host: HOST, ...headers },
        payload: exportPayload(),
      });
      expect(enqueue.statusCode, what).toBe(403);
    }
    expect(await h.queue('export').getJobCountByTypes('waiting')).toBe(before);
  });

  it('lets same-origin and header-less writes through', async () => {
    for (const [what, headers] of Object.entries(SAME_ORIGIN)) {
      const restore = await open.inject({ method: 'POST', url: RESTORE, headers: { host: HOST, ...headers }, payload: {} });
      // Past the checks: the handler answers that there is no such backup.
      expect(restore.statusCode, what).toBe(404);
      expect(restore.json().error.code).toBe('STOWAGE_ERR_NOT_FOUND');
      const enqueue = await open.inject({
        method: 'POST',
        url: '/v1/jobs/export',
        headers: { host: HOST, ...headers },
        payload: exportPayload(),
      });
      expect(enqueue.statusCode, what).toBe(202);
    }
  });

  it('does not refuse cross-site reads (the browser does not let the page read the answer)', async () => {
    const read = await open.inject({
      method: 'GET',
      url: '/v1/jobs/export/export.none',
      headers: { host: HOST, ...CROSS_SITE['a foreign Origin'] },
    });
    expect(read.statusCode).toBe(404);
  });
});

describe('with auth configured', () => {
  it('refuses a cross-site write even with a valid admin token', async () => {
    for (const [what, headers] of Object.entries(CROSS_SITE)) {
      const res = await authed.inject({
        method: 'POST',
        url: '/v1/jobs/export',
        headers: { host: HOST, authorization: `Bearer ${admin}`, ...headers },
        payload: exportPayload(),
      });
      expect(res.statusCode, what).toBe(403);
      expect(res.json().error.code).toBe('STOWAGE_ERR_FORBIDDEN');
    }
    const same = await authed.inject({
      method: 'POST',
      url: '/v1/jobs/export',
      headers: { host: HOST, authorization: `Bearer ${admin}`, origin: `http://${HOST}` },
      payload: exportPayload(),
    });
    expect(same.statusCode).toBe(202);
  });

  it('refuses a cross-site DELETE and PATCH too', async () => {
    const headers = { host: HOST, authorization: `Bearer ${admin}`, 'sec-fetch-site': 'cross-site' };
    const del = await authed.inject({ method: 'DELETE', url: '/api/backups/web-backup-2026-01-01-000000', headers });
    expect(del.statusCode).toBe(403);
    const patch = await authed.inject({
      method: 'PATCH',
      url: '/api/v1/failures/00000000-0000-4000-8000-000000000000/recovery',
      headers,
      payload: { succeeded: true },
    });
    expect(patch.statusCode).toBe(403);
  });
});
