/**
 * The export processor against s3rver and Redis (events, manifest lock), plus the read side
 * (src/storage/records.ts) over what it wrote.
 */
import { createHash } from 'node:crypto';
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { parquetMetadata, parquetReadObjects } from 'hyparquet';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Config } from '../../src/config.js';
import type { Db } from '../../src/db/pool.js';
import { ValidationError } from '../../src/errors.js';
import { createProducer, type Producer } from '../../src/producers/index.js';
import { parkedJobId, type ExportPayload } from '../../src/queues/index.js';
import { createStorage, type Storage } from '../../src/storage/client.js';
import { manifestKey } from '../../src/storage/keys.js';
import { readManifest, readManifestHead } from '../../src/storage/manifest.js';
import { getJsonBlob, getRecord, listRecords, recordUrl, searchRecords } from '../../src/storage/records.js';
import { exportRecords } from '../../src/workers/export.js';
import type { Runtime } from '../../src/workers/runtime.js';
import { closedPort } from '../http/harness.js';
import { processorTestEnv, startTestRuntime, type ProcessorTestEnv } from '../helpers/fleet.js';
import { isolate } from '../helpers/isolation.js';
import type { TestS3 } from '../helpers/s3.js';

const iso = isolate('export');
let env: ProcessorTestEnv<'export'>;
let s3: TestS3;
let db: Db;
let reader: S3Client;
let config: Config;
/** Stowage's own client, for the read side (src/storage/records.ts). */
let storage: Storage;

const run = (data: ExportPayload) => env.run(data);

async function getText(key: string): Promise<string> {
  const res = await reader.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }));
  return res.Body!.transformToString('utf-8');
}

beforeAll(async () => {
  env = await processorTestEnv(iso, 'export', exportRecords, {
    exports: { searchableFields: { analytics: ['name', 'tags'], journal: ['mood'] }, searchableMaxValues: 3, manifestCompactBytes: 1024 },
  });
  ({ s3, config, db, reader } = env);
  storage = createStorage(config);
});

afterAll(async () => {
  storage?.close();
  await env?.close();
});

const today = () => new Date().toISOString().slice(0, 10).replace(/-/g, '/');

describe('export processor', () => {
  it('writes JSONL to records/{module}/{userId}/YYYY/MM/DD/{id}.jsonl, records it in the manifest and emits export_completed', async () => {
    const records = [
      { amount: 50, description: 'Coffee at Blue Bottle' },
      { amount: 12.5, description: 'Bus ticket', tags: ['transport'] },
    ];
    const { result, emitted, jobId } = await run({ module: 'finance', userId: 'u1', format: 'jsonl', records, id: 'tx1' });
    const key = `records/finance/u1/${today()}/tx1.jsonl`;
    expect(result).toMatchObject({ op: 'records', key, record_count: 2, format: 'jsonl', id: 'tx1', url: `s3://${s3.bucket}/${key}` });

    const text = await getText(key);
    expect(text).toBe(records.map((r) => `${JSON.stringify(r)}\n`).join(''));
    expect(result.size).toBe(Buffer.byteLength(text));
    expect(result.sha256).toBe(createHash('sha256').update(text).digest('hex'));
    expect(await getText(`${key}.sha256`)).toBe(`${result.sha256 as string}  tx1.jsonl\n`);

    const { entries } = await readManifest(storage, 'finance', 'u1');
    expect(entries).toEqual([
      expect.objectContaining({ id: 'tx1', key, format: 'jsonl', record_count: 2, size: result.size, sha256: result.sha256 }),
    ]);
    expect(emitted).toEqual([
      expect.objectContaining({
        type: 'export_completed',
        queue: 'export',
        jobId,
        data: { module: 'finance', userId: 'u1', key, records: 2 },
      }),
    ]);
  });

  it('writes JSON as an array; without an id the key derives from the records, so a rerun writes the same key and one manifest entry', async () => {
    const records = [{ theme: 'dark' }, { theme: 'light', font: 12 }];
    const first = await run({ module: 'settings', userId: 'u1', format: 'json', records });
    const second = await run({
      module: 'settings',
      userId: 'u1',
      format: 'json',
      records: [{ theme: 'dark' }, { font: 12, theme: 'light' }],
    });
    expect(second.result.key).toBe(first.result.key);
    expect(first.result.key).toMatch(new RegExp(`^records/settings/u1/${today()}/[0-9a-f]{32}\\.json$`));
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
    expect(result).toMatchObject({ key: `records/analytics/u1/${today()}/pq1.parquet`, format: 'parquet', record_count: 3 });
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
    expect(await searchRecords(storage, 'analytics', 'u1', 'grace')).toEqual([
      expect.objectContaining({ source: 'record', id: 'pq1', index: 1 }),
    ]);

    // The configured searchable fields are in the manifest entry (at most 3 distinct values each),
    // so a search that reads no object still finds the Parquet object by them.
    expect(got?.entry.searchable).toEqual({ name: ['Ada', 'Grace', 'Linus'], tags: ['a', 'b'] });
    const fromManifest = await searchRecords(storage, 'analytics', 'u1', 'grace', { read: 'text' });
    expect(fromManifest).toEqual([expect.objectContaining({ source: 'manifest', id: 'pq1', matched: { name: ['Grace'] } })]);
    expect(await searchRecords(storage, 'analytics', 'u1', 'late', { read: 'none' })).toEqual([]);
  });

  it('rejects unsafe module and user ids before writing anything', async () => {
    await expect(run({ module: '../x', userId: 'u1', format: 'json', records: [{ a: 1 }] })).rejects.toThrow(/module/);
    await expect(run({ module: 'm', userId: 'a/b', format: 'json', records: [{ a: 1 }] })).rejects.toThrow(/userId/);
    await expect(run({ module: 'manifests', userId: 'u1', format: 'json', records: [{ a: 1 }] })).rejects.toThrow(
      /module: "manifests" is reserved: Stowage keeps its own manifests\/ objects/,
    );
  });

  it('refuses a record that is not an object, naming its index', async () => {
    for (const bad of [1, 'text', null, [1, 2]]) {
      await expect(run({ module: 'm', userId: 'u1', format: 'json', records: [{ a: 1 }, bad as never] })).rejects.toThrow(
        /records\.1: expected an object of fields/,
      );
    }
  });
});

describe('read side', () => {
  beforeAll(async () => {
    await run({
      module: 'notes',
      userId: 'alice',
      format: 'jsonl',
      records: [
        { title: 'Groceries', body: 'milk, eggs' },
        { title: 'Trip', body: 'Lisbon in May' },
      ],
      id: 'n1',
    });
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

  it("searchRecords finds records by field text, case-insensitively, only in the caller's objects", async () => {
    const hits = await searchRecords(storage, 'notes', 'alice', 'LISBON');
    expect(hits.map((h) => `${h.source}:${h.id}:${h.source === 'record' ? h.index : ''}`).sort()).toEqual(['record:n1:1', 'record:n2:0']);
    expect(hits.some((h) => h.id === 'b1')).toBe(false);
    expect(await searchRecords(storage, 'notes', 'alice', 'nothing-like-this')).toEqual([]);
  });

  it("recordUrl presigns a working GET for the caller's object, and null for another user's", async () => {
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

describe('compacted manifests', () => {
  it('list, get and search still answer completely once the manifest rolled into segments', { timeout: 20_000 }, async () => {
    const moods = ['calm', 'tired', 'elated', 'grumpy'];
    for (let i = 0; i < 24; i++) {
      await run({
        module: 'journal',
        userId: 'carol',
        format: i % 2 ? 'json' : 'jsonl',
        records: [{ day: i, mood: moods[i % 4], text: `entry number ${i}` }],
        id: `j${i}`,
      });
    }
    const head = await readManifestHead(storage, 'journal', 'carol');
    expect(head.segments.length).toBeGreaterThanOrEqual(3);
    // The head holds pointers plus at most about the threshold (1 KiB here) of entries.
    expect(head.bytes).toBeLessThan(1024 + 600 + head.segments.length * 400);

    const listed = await listRecords(storage, 'journal', 'carol');
    expect(listed.map((e) => e.id).sort()).toEqual(Array.from({ length: 24 }, (_, i) => `j${i}`).sort());
    expect((await getRecord(storage, 'journal', 'carol', 'j0'))?.records).toEqual([{ day: 0, mood: 'calm', text: 'entry number 0' }]);

    const hits = await searchRecords(storage, 'journal', 'carol', 'elated');
    expect(hits.map((h) => h.id).sort()).toEqual(['j10', 'j14', 'j18', 'j2', 'j22', 'j6']);
    expect(hits.every((h) => h.source === 'record')).toBe(true);
    // From the manifest alone (searchable field `mood`), without reading one object.
    const quick = await searchRecords(storage, 'journal', 'carol', 'ELATED', { read: 'none' });
    expect(quick.map((h) => h.id).sort()).toEqual(['j10', 'j14', 'j18', 'j2', 'j22', 'j6']);
    expect(quick[0]).toMatchObject({ source: 'manifest', matched: { mood: ['elated'] } });
    // A search for text outside the searchable fields needs the objects.
    expect(await searchRecords(storage, 'journal', 'carol', 'number 13', { read: 'none' })).toEqual([]);
    expect((await searchRecords(storage, 'journal', 'carol', 'number 13')).map((h) => h.id)).toEqual(['j13']);
  });
});

describe('JSON blobs', () => {
  it('stores a value under json_blobs/{key}.json, replaces it on a later write, and reads it back', async () => {
    const first = await run({ op: 'blob', key: 'user_config_u1', value: { theme: 'dark', currency: 'USD' } });
    expect(first.result).toMatchObject({ op: 'blob', blobKey: 'user_config_u1', key: 'json_blobs/user_config_u1.json' });
    expect(JSON.parse(await getText('json_blobs/user_config_u1.json'))).toEqual({ theme: 'dark', currency: 'USD' });
    expect(await getJsonBlob(storage, 'user_config_u1')).toEqual({ theme: 'dark', currency: 'USD' });
    await run({ op: 'blob', key: 'user_config_u1', value: ['light', 3, null] });
    expect(await getJsonBlob(storage, 'user_config_u1')).toEqual(['light', 3, null]);
    expect(await getJsonBlob(storage, 'nothing_here')).toBeNull();
  });

  it('validates the key like every id, on write and on read', async () => {
    await expect(run({ op: 'blob', key: '../escape', value: 1 })).rejects.toThrow(/key: must not contain/);
    await expect(getJsonBlob(storage, 'a/b')).rejects.toThrow(ValidationError);
    await expect(run({ op: 'blob', key: 'k' } as ExportPayload)).rejects.toThrow(/value/);
  });
});

describe('producer SDK and the store-down path (runtime)', () => {
  let producer: Producer;
  let runtime: Runtime | undefined;
  beforeAll(() => {
    producer = createProducer(config);
  });
  afterAll(async () => {
    await runtime?.close();
    await producer?.close();
  });

  it('storeRecords enqueues and, with {wait: true}, returns the typed ExportResult; storeJsonBlob likewise', {
    timeout: 20_000,
  }, async () => {
    runtime = await startTestRuntime(config, db, ['export'], { export: exportRecords });
    const records = [{ item: 'tea', price: 3 }];
    const stored = await producer.storeRecords({ module: 'orders', userId: 'dave', format: 'jsonl', records }, { wait: true });
    expect(stored).toMatchObject({ op: 'records', format: 'jsonl', record_count: 1, url: `s3://${s3.bucket}/${stored.key}` });
    expect(stored.key).toBe(`records/orders/dave/${today()}/${stored.id}.jsonl`);
    expect(stored.sha256).toBe(
      createHash('sha256')
        .update(await getText(stored.key))
        .digest('hex'),
    );

    // Without wait: the job and the id the object gets (derived from the records, like the worker's).
    const enqueued = await producer.storeRecords({ module: 'orders', userId: 'dave', format: 'json', records: [{ item: 'cake' }] });
    const done = await producer.waitFor('export', enqueued.jobId);
    expect(done).toMatchObject({ id: enqueued.id });
    await expect(producer.storeRecords({ module: 'orders', userId: '', format: 'json', records: [] })).rejects.toThrow(
      /userId: must not be empty.*records: at least one record/,
    );

    // A, then B, then A again ends with A (each call is a write of its own).
    await producer.storeJsonBlob('prefs', { v: 'A' }, { wait: true });
    await producer.storeJsonBlob('prefs', { v: 'B' }, { wait: true });
    const blob = await producer.storeJsonBlob('prefs', { v: 'A' }, { wait: true });
    expect(blob).toMatchObject({ op: 'blob', key: 'json_blobs/prefs.json' });
    expect(await getJsonBlob(storage, 'prefs')).toEqual({ v: 'A' });
    await runtime.close();
    runtime = undefined;
  });

  it('with the store unreachable the job retries, is parked with its records intact, and a redrive against a live store stores it', {
    timeout: 30_000,
  }, async () => {
    const port = await closedPort();
    const downConfig = iso.config({
      storage: {
        endpoint: `http://127.0.0.1:${port}`,
        bucket: s3.bucket,
        accessKeyId: s3.accessKeyId,
        secretAccessKey: s3.secretAccessKey,
        maxAttempts: 1,
      },
    });
    const records = [
      { amount: 42, memo: 'stored while the store was down' },
      { amount: 7, memo: 'second' },
    ];
    runtime = await startTestRuntime(downConfig, db, ['export'], { export: exportRecords });
    await expect(
      producer.storeRecords(
        { module: 'ledger', userId: 'erin', format: 'jsonl', records, id: 'down1' },
        { wait: true, attempts: 3, backoffMs: 50 },
      ),
    ).rejects.toThrow(/was parked in the dead-letter queue \(retries_exhausted\).*ECONNREFUSED/);
    // waitFor answered once the job was parked, so the dead-letter queue holds it now.
    const parked = await runtime.deadLetter.list({ queue: 'export' });
    expect(parked).toHaveLength(1);
    expect(parked[0]!.data).toMatchObject({
      attemptsMade: 3,
      reason: 'retries_exhausted',
      payload: { module: 'ledger', userId: 'erin', records },
    });
    const jobId = parked[0]!.data.originJobId;
    expect(parked[0]!.id).toBe(parkedJobId('export', jobId));
    expect(await getRecord(storage, 'ledger', 'erin', 'down1')).toBeNull();
    await runtime.close();

    // The store is back (workers configured for it): redrive replays the parked payload.
    runtime = await startTestRuntime(config, db, ['export'], { export: exportRecords });
    expect(await runtime.deadLetter.redrive({ ids: [jobId] })).toEqual([expect.objectContaining({ action: 'redriven' })]);
    const result = await producer.waitFor('export', jobId, 15_000);
    expect(result).toMatchObject({ id: 'down1', record_count: 2 });
    const got = await getRecord(storage, 'ledger', 'erin', 'down1');
    expect(got?.records).toEqual(records);
    expect(await runtime.deadLetter.list({ queue: 'export' })).toEqual([]);
  });
});
