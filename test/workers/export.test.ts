/**
 * The export processor against s3rver and Redis (events, manifest lock), plus the read side
 * (src/storage/records.ts) over what it wrote.
 */
import { createHash } from 'node:crypto';
import { GetObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { Queue } from 'bullmq';
import Fastify from 'fastify';
import { parquetMetadata, parquetReadObjects } from 'hyparquet';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Config } from '../../src/config.js';
import { migrate } from '../../src/db/migrate.js';
import { createDb, type Db } from '../../src/db/pool.js';
import { AuthError } from '../../src/errors.js';
import { registerRecordRoutes } from '../../src/http/records.js';
import { errorResponse } from '../../src/http/server.js';
import { createEventStream, type EventStream, type ExportPayload } from '../../src/queues/index.js';
import { createStorage, type Storage } from '../../src/storage/client.js';
import { manifestKey } from '../../src/storage/keys.js';
import { readManifest } from '../../src/storage/manifest.js';
import { getRecord, listRecords, recordUrl, searchRecords } from '../../src/storage/records.js';
import { exportRecords } from '../../src/workers/export.js';
import { runProcessor } from '../helpers/fleet.js';
import { isolate, REDIS_URL } from '../helpers/isolation.js';
import { startS3, type TestS3 } from '../helpers/s3.js';

const iso = isolate('export');
let s3: TestS3;
let db: Db;
let redis: Redis;
let queue: Queue;
let events: EventStream;
let reader: S3Client;
let config: Config;
let storage: Storage;
const storages: Storage[] = [];

const run = (data: ExportPayload) => runProcessor('export', exportRecords, data, { config, db, events, queue, storages });

async function getText(key: string): Promise<string> {
  const res = await reader.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }));
  return res.Body!.transformToString('utf-8');
}

beforeAll(async () => {
  s3 = await startS3(iso.bucket);
  config = iso.config({ storage: { endpoint: s3.endpoint, bucket: s3.bucket, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey } });
  await migrate(config);
  db = createDb(config, { max: 2 });
  redis = new Redis(REDIS_URL);
  events = createEventStream(redis, iso.prefix);
  queue = new Queue('export', { connection: redis.duplicate(), prefix: iso.prefix });
  storage = createStorage(config);
  reader = new S3Client({
    region: 'us-east-1',
    endpoint: s3.endpoint,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
  });
});

afterAll(async () => {
  for (const s of storages) s.close();
  storage?.close();
  reader?.destroy();
  await queue?.close();
  redis?.disconnect();
  await db?.close();
  await s3?.close();
  await iso.cleanup();
});

const today = () => new Date().toISOString().slice(0, 10).replace(/-/g, '/');

describe('export processor', () => {
  it('writes JSONL to {module}/{userId}/YYYY/MM/DD/{id}.jsonl, records it in the manifest and emits export_completed', async () => {
    const records = [
      { amount: 50, description: 'Coffee at Blue Bottle' },
      { amount: 12.5, description: 'Bus ticket', tags: ['transport'] },
    ];
    const { result, emitted, jobId } = await run({ module: 'finance', userId: 'u1', format: 'jsonl', records, id: 'tx1' });
    const key = `finance/u1/${today()}/tx1.jsonl`;
    expect(result).toMatchObject({ key, recordCount: 2, format: 'jsonl', id: 'tx1' });

    const text = await getText(key);
    expect(text).toBe(records.map((r) => `${JSON.stringify(r)}\n`).join(''));
    expect(result.size).toBe(Buffer.byteLength(text));
    expect(result.sha256).toBe(createHash('sha256').update(text).digest('hex'));
    expect(await getText(`${key}.sha256`)).toBe(`${result.sha256 as string}  tx1.jsonl\n`);

    const { entries } = await readManifest(storage, 'finance', 'u1');
    expect(entries).toEqual([
      expect.objectContaining({ id: 'tx1', key, format: 'jsonl', record_count: 2, size: result.size, sha256: result.sha256 }),
    ]);
    expect(emitted).toEqual([expect.objectContaining({ type: 'export_completed', queue: 'export', jobId, data: { module: 'finance', userId: 'u1', key, records: 2 } })]);
  });

  it('writes JSON as an array; without an id the key derives from the records, so a rerun writes the same key and one manifest entry', async () => {
    const records = [{ theme: 'dark' }, { theme: 'light', font: 12 }];
    const first = await run({ module: 'settings', userId: 'u1', format: 'json', records });
    const second = await run({ module: 'settings', userId: 'u1', format: 'json', records: [{ theme: 'dark' }, { font: 12, theme: 'light' }] });
    expect(second.result.key).toBe(first.result.key);
    expect(first.result.key).toMatch(new RegExp(`^settings/u1/${today()}/[0-9a-f]{32}\\.json$`));
    expect(JSON.parse(await getText(first.result.key as string))).toEqual(records);
    const { entries } = await readManifest(storage, 'settings', 'u1');
    expect(entries).toHaveLength(1);

    const other = await run({ module: 'settings', userId: 'u1', format: 'json', records: [{ theme: 'blue' }] });
    expect(other.result.key).not.toBe(first.result.key);
  });

  it('writes Parquet with inferred types that another reader (hyparquet) reads back with equal rows', async () => {
    const records = [
      { name: 'Ada', visits: 3, score: 9.5, active: true, tags: ['a', 'b'] },
      { name: 'Grace', visits: 12, score: 7, active: false, note: 'late' },
      { name: 'Linus', visits: 0, score: null, active: true },
    ];
    const { result } = await run({ module: 'analytics', userId: 'u1', format: 'parquet', records, id: 'pq1' });
    expect(result).toMatchObject({ key: `analytics/u1/${today()}/pq1.parquet`, format: 'parquet', recordCount: 3 });
    const res = await reader.send(new GetObjectCommand({ Bucket: s3.bucket, Key: result.key as string }));
    const bytes = await res.Body!.transformToByteArray();
    expect(result.sha256).toBe(createHash('sha256').update(bytes).digest('hex'));
    const file = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
    const rows = (await parquetReadObjects({ file })) as Record<string, unknown>[];
    // Normalize what the reader returns: INT64 as bigint, JSON columns as text or parsed.
    const normalized = rows.map((row) =>
      Object.fromEntries(
        Object.entries(row)
          .filter(([, v]) => v !== null && v !== undefined)
          .map(([k, v]) => [k, typeof v === 'bigint' ? Number(v) : k === 'tags' && typeof v === 'string' ? JSON.parse(v) : v]),
      ),
    );
    expect(normalized).toEqual(records.map((r) => Object.fromEntries(Object.entries(r).filter(([, v]) => v !== null))));
    const meta = parquetMetadata(file);
    const types = Object.fromEntries(meta.schema.slice(1).map((c) => [c.name, c.type]));
    expect(types).toMatchObject({ name: 'BYTE_ARRAY', visits: 'INT64', score: 'DOUBLE', active: 'BOOLEAN', tags: 'BYTE_ARRAY' });

    // The read side reads it too (with parquetjs), and search covers Parquet objects.
    const got = await getRecord(storage, 'analytics', 'u1', 'pq1');
    expect(got?.records).toEqual(normalized);
    expect((await searchRecords(storage, 'analytics', 'u1', 'grace')).map((h) => h.index)).toEqual([1]);
  });

  it('rejects unsafe module and user ids before writing anything', async () => {
    await expect(run({ module: '../x', userId: 'u1', format: 'json', records: [{ a: 1 }] })).rejects.toThrow(/module/);
    await expect(run({ module: 'm', userId: 'a/b', format: 'json', records: [{ a: 1 }] })).rejects.toThrow(/userId/);
  });
});

describe('read side', () => {
  beforeAll(async () => {
    await run({ module: 'notes', userId: 'alice', format: 'jsonl', records: [{ title: 'Groceries', body: 'milk, eggs' }, { title: 'Trip', body: 'Lisbon in May' }], id: 'n1' });
    await run({ module: 'notes', userId: 'alice', format: 'json', records: [{ title: 'Books', body: 'Dune; lisbon guide' }], id: 'n2' });
    await run({ module: 'notes', userId: 'bob', format: 'json', records: [{ title: 'Secret', body: 'lisbon plans' }], id: 'b1' });
  });

  it('getRecord returns the entry and its records; another user gets null', async () => {
    const got = await getRecord(storage, 'notes', 'alice', 'n1');
    expect(got?.entry).toMatchObject({ id: 'n1', record_count: 2 });
    expect(got?.records.map((r) => r.title)).toEqual(['Groceries', 'Trip']);
    expect(await getRecord(storage, 'notes', 'bob', 'n1')).toBeNull();
    expect(await getRecord(storage, 'notes', 'alice', 'missing')).toBeNull();
  });

  it('listRecords lists the manifest, filtered by created_at', async () => {
    expect((await listRecords(storage, 'notes', 'alice')).map((e) => e.id).sort()).toEqual(['n1', 'n2']);
    expect(await listRecords(storage, 'notes', 'alice', { from: new Date(Date.now() + 3_600_000) })).toEqual([]);
    expect(await listRecords(storage, 'notes', 'alice', { to: new Date(Date.now() - 3_600_000) })).toEqual([]);
  });

  it('searchRecords finds records by field text, case-insensitively, only in the caller\'s objects', async () => {
    const hits = await searchRecords(storage, 'notes', 'alice', 'LISBON');
    expect(hits.map((h) => `${h.id}:${h.index}`).sort()).toEqual(['n1:1', 'n2:0']);
    expect(hits.some((h) => h.id === 'b1')).toBe(false);
    expect(await searchRecords(storage, 'notes', 'alice', 'nothing-like-this')).toEqual([]);
  });

  it('recordUrl presigns a working GET for the caller\'s object, and null for another user\'s', async () => {
    const signed = await recordUrl(storage, 'notes', 'alice', 'n2', 60);
    expect(signed).not.toBeNull();
    const res = await fetch(signed!.url);
    expect(res.status).toBe(200);
    expect(JSON.parse(await res.text())).toEqual([{ title: 'Books', body: 'Dune; lisbon guide' }]);
    expect(await recordUrl(storage, 'notes', 'bob', 'n2')).toBeNull();
  });

  it('the manifest key is per module and user', () => {
    expect(manifestKey('notes', 'alice')).toBe('manifests/notes/alice/manifest.jsonl');
  });
});

describe('HTTP routes', () => {
  const enqueued: unknown[] = [];
  const app = Fastify();
  beforeAll(async () => {
    app.setErrorHandler((err, req, reply) => {
      const { status, body } = errorResponse(err, req.id);
      return reply.code(status).send(body);
    });
    registerRecordRoutes(app as never, {
      storage: () => storage,
      producer: {
        export: async (p) => {
          enqueued.push(p);
          return { jobId: 'export.x', created: true } as never;
        },
      },
      // The test's bearer token is the user id.
      authenticate: async (req) => {
        const token = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
        if (!token) throw new AuthError('no token');
        return { userId: token };
      },
    });
    await app.ready();
    await run({ module: 'diary', userId: 'alice', format: 'jsonl', records: [{ text: 'Sunny walk by the river' }, { text: 'Rain' }], id: 'd1' });
  });
  afterAll(() => app.close());
  const as = (user: string) => ({ authorization: `Bearer ${user}` });

  it('POST enqueues an export for the caller (the user comes from the token, not the body)', async () => {
    const res = await app.inject({ method: 'POST', url: '/api/v1/records/diary', headers: as('alice'), payload: { format: 'json', records: [{ a: 1 }] } });
    expect(res.statusCode).toBe(202);
    expect(enqueued.at(-1)).toEqual({ module: 'diary', userId: 'alice', format: 'json', records: [{ a: 1 }] });
    const bad = await app.inject({ method: 'POST', url: '/api/v1/records/diary', headers: as('alice'), payload: { format: 'xml', records: [] } });
    expect(bad.statusCode).toBe(400);
    expect((await app.inject({ method: 'POST', url: '/api/v1/records/diary', payload: { format: 'json', records: [{}] } })).statusCode).toBe(401);
  });

  it('lists, searches and gets the caller\'s records; user B gets 404 for user A\'s record and URL', async () => {
    const list = await app.inject({ url: '/api/v1/records/diary', headers: as('alice') });
    expect(list.json().entries.map((e: { id: string }) => e.id)).toEqual(['d1']);
    const search = await app.inject({ url: '/api/v1/records/diary?q=river', headers: as('alice') });
    expect(search.json().hits).toEqual([expect.objectContaining({ id: 'd1', index: 0, record: { text: 'Sunny walk by the river' } })]);
    expect((await app.inject({ url: '/api/v1/records/diary?q=river', headers: as('bob') })).json().hits).toEqual([]);
    const got = await app.inject({ url: '/api/v1/records/diary/d1', headers: as('alice') });
    expect(got.statusCode).toBe(200);
    expect(got.json().records).toHaveLength(2);
    expect((await app.inject({ url: '/api/v1/records/diary/d1', headers: as('bob') })).statusCode).toBe(404);
    expect((await app.inject({ url: '/api/v1/records/diary/d1/url', headers: as('bob') })).statusCode).toBe(404);
    expect((await app.inject({ url: '/api/v1/records/diary/d1/url?expiresIn=604801', headers: as('alice') })).statusCode).toBe(400);
  });

  it('a presigned URL works, then expires', { timeout: 10_000 }, async () => {
    const res = await app.inject({ url: '/api/v1/records/diary/d1/url?expiresIn=1', headers: as('alice') });
    expect(res.statusCode).toBe(200);
    const { url } = res.json() as { url: string };
    expect((await fetch(url)).status).toBe(200);
    await new Promise((r) => setTimeout(r, 2_100));
    expect((await fetch(url)).status).toBe(403);
  });
});
