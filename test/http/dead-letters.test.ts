/**
 * /api/dead-letters against real Redis: admin and viewer list parked jobs (secrets redacted) and
 * their groups by cause; only admin redrives a group (dry run first); user tokens get 403, no
 * token 401. The parked jobs are written into the dead-letter queue as an older fleet left them.
 */
import type { RouteOptions } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToken } from '../../src/auth/tokens.js';
import { buildServer } from '../../src/http/server.js';
import type { ParkedJob } from '../../src/queues/dead-letter.js';
import { parkedJobId } from '../../src/queues/index.js';
import { isolate } from '../helpers/isolation.js';
import { harness, type Harness } from './harness.js';

const iso = isolate('httpdlq');
let h: Harness;
let app: ReturnType<typeof buildServer>;
let admin: string;
let viewer: string;
let user: string;
const routes: RouteOptions[] = [];

const PASSWORD = 'pw-from-an-older-producer';
const T0 = Date.parse('2025-04-01T08:00:00.000Z');

function parked(jobId: string, message: string, at: number, payload: unknown): ParkedJob {
  return {
    originQueue: 'export',
    originJobId: jobId,
    name: 'export',
    payload,
    error: { message, name: 'StowageError', code: 'STOWAGE_ERR_STORE' },
    attemptsMade: 5,
    opts: { attempts: 5 },
    redrives: 0,
    timestamps: { created: at - 1000, parked: at },
    reason: 'retries_exhausted',
  };
}

const slow = [1, 2, 3].map((i) => parked(`export.slow${i}`, `S3 503 SlowDown on part ${i * 11}`, T0 + i * 1000, { n: i }));
const refused = parked('export.refused', `connect to postgres://app:${PASSWORD}@db/app refused`, T0 + 9000, {
  url: `postgres://app:${PASSWORD}@db/app`,
  password: PASSWORD,
});

const call = (method: 'GET' | 'POST', url: string, token?: string) =>
  app.inject({ method, url, headers: token ? { authorization: `Bearer ${token}` } : {} });

beforeAll(async () => {
  h = await harness(iso);
  app = buildServer(h.deps);
  app.addHook('onRoute', (r) => {
    // Fastify adds a HEAD for each GET itself, with the GET's options.
    if (r.url.startsWith('/api/dead-letters') && r.method !== 'HEAD') routes.push(r);
  });
  await app.ready();
  admin = await createToken(h.secret, { user: 'ops', role: 'admin' });
  viewer = await createToken(h.secret, { user: 'vic', role: 'viewer' });
  user = await createToken(h.secret, { user: 'ursula', role: 'user' });
  for (const r of [...slow, refused]) await h.queue('dead-letter').add(r.name, r, { jobId: parkedJobId(r.originQueue, r.originJobId) });
});
afterAll(async () => {
  await app?.close();
  await h?.close();
  await iso.cleanup();
});

interface Group {
  signature: string;
  count: number;
  message: string;
  example: string;
  jobIds: string[];
  firstParkedAt: string;
  lastParkedAt: string;
}

describe('/api/dead-letters', () => {
  it('every route declares its request and response schemas', () => {
    expect(routes.map((r) => `${r.method} ${r.url}`).sort()).toEqual([
      'GET /api/dead-letters',
      'GET /api/dead-letters/groups',
      'POST /api/dead-letters/groups/:signature/redrive',
    ]);
    for (const r of routes) {
      const schema = r.schema as { querystring?: object; response?: Record<string, object> };
      expect(schema.querystring, r.url).toBeTypeOf('object');
      expect(Object.keys(schema.response ?? {}), r.url).toEqual(expect.arrayContaining(['200', '4xx', '5xx']));
    }
  });

  it('401 without a token; role user gets 403 everywhere; viewer reads but may not redrive', async () => {
    const sig = '0123456789ab';
    for (const [method, url] of [
      ['GET', '/api/dead-letters'],
      ['GET', '/api/dead-letters/groups'],
      ['POST', `/api/dead-letters/groups/${sig}/redrive`],
    ] as const) {
      expect((await call(method, url)).statusCode, url).toBe(401);
      const forbidden = await call(method, url, user);
      expect(forbidden.statusCode, url).toBe(403);
      expect(forbidden.json().error.code).toBe('STOWAGE_ERR_FORBIDDEN');
    }
    expect((await call('GET', '/api/dead-letters', viewer)).statusCode).toBe(200);
    expect((await call('GET', '/api/dead-letters/groups', viewer)).statusCode).toBe(200);
    const redrive = await call('POST', `/api/dead-letters/groups/${sig}/redrive?dryRun=true`, viewer);
    expect(redrive.statusCode).toBe(403);
    expect(redrive.json().error.message).toBe('role "viewer" may not redrive parked jobs; an admin token is required');
  });

  it('lists parked jobs oldest first, paged, with payloads and errors redacted', async () => {
    const all = await call('GET', '/api/dead-letters', viewer);
    expect(all.body).not.toContain(PASSWORD);
    const body = all.json();
    expect(body).toMatchObject({ total: 4, limit: 100, offset: 0, next_offset: null });
    expect(body.items.map((i: { originJobId: string }) => i.originJobId)).toEqual([
      'export.slow1',
      'export.slow2',
      'export.slow3',
      'export.refused',
    ]);
    expect(body.items[3]).toMatchObject({
      id: 'export--export.refused',
      payload: { url: 'postgres://app:[redacted]@db/app', password: '[redacted]' },
      error: { message: 'connect to postgres://app:[redacted]@db/app refused', code: 'STOWAGE_ERR_STORE' },
    });
    expect(body.items[0].signature).toMatch(/^[0-9a-f]{12}$/);

    const page = (await call('GET', '/api/dead-letters?limit=2&offset=1', viewer)).json();
    expect(page.items.map((i: { originJobId: string }) => i.originJobId)).toEqual(['export.slow2', 'export.slow3']);
    expect(page.next_offset).toBe(3);
    expect((await call('GET', '/api/dead-letters?queue=backup', viewer)).json()).toMatchObject({ items: [], total: 0 });

    const bad = await call('GET', '/api/dead-letters?limit=0&colour=red', viewer);
    expect(bad.statusCode).toBe(400);
    expect(bad.json().error.issues.join('\n')).toMatch(/limit[\s\S]*colour/);
  });

  let groups: Group[];
  it('groups parked jobs by cause, largest first', async () => {
    const res = await call('GET', '/api/dead-letters/groups', viewer);
    expect(res.statusCode).toBe(200);
    expect(res.body).not.toContain(PASSWORD);
    groups = res.json().groups;
    expect(groups.map((g) => g.count)).toEqual([3, 1]);
    expect(groups[0]).toMatchObject({
      message: 'S<num> <num> SlowDown on part <num>',
      example: 'S3 503 SlowDown on part 33',
      firstParkedAt: '2025-04-01T08:00:01.000Z',
      lastParkedAt: '2025-04-01T08:00:03.000Z',
      jobIds: ['export--export.slow1', 'export--export.slow2', 'export--export.slow3'],
    });
    expect(groups[1]!.message).toBe('connect to postgres://app:[redacted]@db/app refused');
  });

  it('admin redrives one group: a dry run moves nothing, then only that group goes back to its queue', async () => {
    const [slowGroup, refusedGroup] = groups as [Group, Group];
    const dry = await call('POST', `/api/dead-letters/groups/${slowGroup.signature}/redrive?dryRun=true`, admin);
    expect(dry.statusCode).toBe(200);
    expect(dry.json()).toMatchObject({ signature: slowGroup.signature, dryRun: true, redriven: 3, skipped: 0 });
    expect(dry.json().outcomes.map((o: { action: string }) => o.action)).toEqual(['would_redrive', 'would_redrive', 'would_redrive']);
    expect(await h.queue('export').getJob('export.slow1')).toBeUndefined();

    const moved = await call('POST', `/api/dead-letters/groups/${slowGroup.signature}/redrive`, admin);
    expect(moved.statusCode).toBe(200);
    expect(moved.json()).toMatchObject({ dryRun: false, redriven: 3, skipped: 0 });
    for (const r of slow) expect((await h.queue('export').getJob(r.originJobId))?.data).toEqual(r.payload);
    expect(await h.queue('export').getJob('export.refused')).toBeUndefined();

    const left = (await call('GET', '/api/dead-letters/groups', admin)).json().groups as Group[];
    expect(left.map((g) => [g.signature, g.count])).toEqual([[refusedGroup.signature, 1]]);

    const again = await call('POST', `/api/dead-letters/groups/${slowGroup.signature}/redrive`, admin);
    expect(again.statusCode).toBe(404);
    expect(again.json().error.message).toBe(`no parked job in group ${slowGroup.signature}`);
    const malformed = await call('POST', '/api/dead-letters/groups/SlowDown/redrive', admin);
    expect(malformed.statusCode).toBe(400);
    expect(malformed.json().error.issues[0]).toContain('signature: expected a signature of 12 hex digits');
  });
});
