/**
 * The records API through the real server (bearer tokens → user), a real export worker, Redis,
 * Postgres and radosgw. The routes answer under both /api/v1/records and /v1/records.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToken } from '../../src/auth/tokens.js';
import { RECORD_ROUTE_PREFIXES } from '../../src/http/records.js';
import { buildServer } from '../../src/http/server.js';
import { exportRecords } from '../../src/workers/export.js';
import type { Runtime } from '../../src/workers/runtime.js';
import { isolate } from '../helpers/isolation.js';
import { harness, harnessRuntime, type Harness } from './harness.js';

const iso = isolate('records');
let h: Harness;
let app: ReturnType<typeof buildServer>;
let runtime: Runtime;
let alice: string;
let bob: string;
let aliceViewer: string;

const as = (token?: string) => (token ? { authorization: `Bearer ${token}` } : {});
const get = (url: string, token?: string) => app.inject({ method: 'GET', url, headers: as(token) });

beforeAll(async () => {
  h = await harness(iso, { s3: true });
  runtime = await harnessRuntime(h, ['export'], { processors: { export: exportRecords }, maintenance: false });
  app = buildServer(h.deps);
  await app.ready();
  // End users: each stores and reads only their own records.
  alice = await createToken(h.secret, { user: 'alice', role: 'user' });
  bob = await createToken(h.secret, { user: 'bob', role: 'user' });
  aliceViewer = await createToken(h.secret, { user: 'alice', role: 'viewer' });

  // Alice stores her diary over HTTP; the worker writes it.
  const res = await app.inject({
    method: 'POST',
    url: '/api/v1/records/diary',
    headers: as(alice),
    payload: { format: 'jsonl', id: 'd1', records: [{ text: 'Sunny walk by the river' }, { text: 'Rain' }] },
  });
  expect(res.statusCode).toBe(202);
  expect(res.json()).toMatchObject({ kind: 'export', created: true, id: 'd1' });
  await h.deps.producer.waitFor('export', res.json().jobId, 15_000);
}, 30_000);

afterAll(async () => {
  await app?.close();
  await runtime?.close();
  await h?.close();
  await iso.cleanup();
});

it('POST without an id answers the id the object gets, and the object is then found by it', { timeout: 15_000 }, async () => {
  const res = await app.inject({
    method: 'POST',
    url: '/v1/records/notes',
    headers: as(alice),
    payload: { format: 'json', records: [{ title: 'Lisbon' }] },
  });
  expect(res.statusCode).toBe(202);
  const { id, jobId } = res.json() as { id: string; jobId: string };
  expect(id).toMatch(/^[0-9a-f]{32}$/);
  await h.deps.producer.waitFor('export', jobId, 10_000);
  const got = await get(`/api/v1/records/notes/${id}`, alice);
  expect(got.json()).toMatchObject({ entry: { id, format: 'json' }, records: [{ title: 'Lisbon' }] });
});

describe.each(RECORD_ROUTE_PREFIXES)('%s', (prefix) => {
  it("lists, searches and gets the caller's records", async () => {
    const list = await get(`${prefix}/diary`, alice);
    expect(list.statusCode).toBe(200);
    expect(list.json().entries).toEqual([expect.objectContaining({ id: 'd1', format: 'jsonl', record_count: 2 })]);
    const search = await get(`${prefix}/diary?q=RIVER`, alice);
    expect(search.json().hits).toEqual([
      expect.objectContaining({ source: 'record', id: 'd1', index: 0, record: { text: 'Sunny walk by the river' } }),
    ]);
    const got = await get(`${prefix}/diary/d1`, aliceViewer);
    expect(got.statusCode).toBe(200);
    expect(got.json().records).toEqual([{ text: 'Sunny walk by the river' }, { text: 'Rain' }]);
    expect((await get(`${prefix}/diary?from=2000-01-01T00:00:00Z&to=2000-01-02T00:00:00Z`, alice)).json().entries).toEqual([]);
  });

  it("user B gets 404 for user A's record and URL, and sees none of A's records in lists or searches", async () => {
    for (const url of [`${prefix}/diary/d1`, `${prefix}/diary/d1/url`]) {
      const res = await get(url, bob);
      expect(res.statusCode).toBe(404);
      expect(res.json().error.code).toBe('STOWAGE_ERR_NOT_FOUND');
    }
    expect((await get(`${prefix}/diary`, bob)).json().entries).toEqual([]);
    expect((await get(`${prefix}/diary?q=river`, bob)).json().hits).toEqual([]);
  });

  it("refuses a missing token (401), a viewer's write (403), bad ids, queries and bodies (400)", async () => {
    expect((await get(`${prefix}/diary`)).statusCode).toBe(401);
    const viewerPost = await app.inject({
      method: 'POST',
      url: `${prefix}/diary`,
      headers: as(aliceViewer),
      payload: { format: 'json', records: [{ a: 1 }] },
    });
    expect(viewerPost.statusCode).toBe(403);
    const badModule = await get(`${prefix}/a..b`, alice);
    expect(badModule.statusCode).toBe(400);
    expect(badModule.json().error.message).toMatch(/module: must not contain \.\./);
    const badBody = await app.inject({
      method: 'POST',
      url: `${prefix}/diary`,
      headers: as(alice),
      payload: { format: 'xml', records: [] },
    });
    expect(badBody.statusCode).toBe(400);
    expect(badBody.json().error.message).toMatch(/format/);
    expect((await get(`${prefix}/diary?from=yesterday`, alice)).statusCode).toBe(400);
    const tooLong = await get(`${prefix}/diary/d1/url?expiresIn=604801`, alice);
    expect(tooLong.statusCode).toBe(400);
    expect(tooLong.json().error.message).toMatch(/7 days/);
  });
});

it('a presigned URL works, then expires', { timeout: 20_000 }, async () => {
  // 4 s, not 1: the signature's time is whole seconds, so a 1 s URL could be spent before a loaded
  // machine fetched it (a CI run saw 403 on the first fetch).
  const res = await get('/api/v1/records/diary/d1/url?expiresIn=4', alice);
  expect(res.statusCode).toBe(200);
  const { url, expiresAt } = res.json() as { url: string; expiresAt: string };
  expect(Date.parse(expiresAt) - Date.now()).toBeLessThanOrEqual(4_000);
  const ok = await fetch(url);
  expect(ok.status).toBe(200);
  expect(await ok.text()).toBe('{"text":"Sunny walk by the river"}\n{"text":"Rain"}\n');
  await new Promise((r) => setTimeout(r, Math.max(0, Date.parse(expiresAt) - Date.now()) + 1_100));
  expect((await fetch(url)).status).toBe(403);
});
