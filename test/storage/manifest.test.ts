/**
 * Manifest updates under concurrency, against s3rver. s3rver ignores If-Match / If-None-Match, so
 * detection picks the Redis-lock path there. The conditional (ETag) path is exercised through
 * `conditionalProxy` below: a test double in front of s3rver that enforces If-Match /
 * If-None-Match on PUT (atomically per key, from the ETags it has seen). It is not a real R2, S3
 * or MinIO; those remain untested here.
 */
import { Agent, createServer, request as httpRequest, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Config } from '../../src/config.js';
import { createStorage, type Storage } from '../../src/storage/client.js';
import { HeadObjectCommand } from '@aws-sdk/client-s3';
import {
  findManifestEntry,
  manifestLockKey,
  readManifest,
  readManifestHead,
  serializeManifest,
  resetConditionalWriteDetection,
  storeEnforcesConditionalWrites,
  upsertManifestEntry,
  type ManifestEntry,
} from '../../src/storage/manifest.js';
import { exportRecords } from '../../src/workers/export.js';
import { processorTestEnv, type ProcessorTestEnv } from '../helpers/fleet.js';
import { isolate } from '../helpers/isolation.js';
import type { TestS3 } from '../helpers/s3.js';

const iso = isolate('manifest');

const UNKNOWN_ETAG = 'unknown: a write failed in flight';

/** A proxy that enforces conditional PUTs, serialized per path (see the file comment). */
async function conditionalProxy(upstream: string) {
  const target = new URL(upstream);
  const etags = new Map<string, string>();
  const locks = new Map<string, Promise<void>>();
  const stats = { preconditionFailed: 0 };
  const readBody = async (req: IncomingMessage) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    return Buffer.concat(chunks);
  };
  // A fresh connection per request: a reused keep-alive socket that s3rver has just closed fails
  // with ECONNRESET, and a failed request leaves this proxy unsure of the object's state.
  const agent = new Agent({ keepAlive: false });
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]!;
    const previous = locks.get(path) ?? Promise.resolve();
    const done = previous.then(async () => {
      const body = await readBody(req);
      const ifMatch = req.headers['if-match'];
      const ifNoneMatch = req.headers['if-none-match'];
      if (req.method === 'PUT' && ((ifNoneMatch === '*' && etags.has(path)) || (ifMatch !== undefined && etags.get(path) !== ifMatch))) {
        stats.preconditionFailed++;
        res.writeHead(412, { 'content-type': 'application/xml' });
        res.end('<?xml version="1.0" encoding="UTF-8"?><Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions you specified did not hold</Message></Error>');
        return;
      }
      await new Promise<void>((resolve, reject) => {
        const up = httpRequest(
          { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers, agent },
          (upRes) => {
            const status = upRes.statusCode ?? 500;
            const etag = upRes.headers.etag;
            if (req.method === 'PUT' && status < 300 && etag) etags.set(path, etag);
            if ((req.method === 'GET' || req.method === 'HEAD') && status < 300 && etag) etags.set(path, etag);
            if (req.method === 'DELETE' && status < 300) etags.delete(path);
            res.writeHead(status, upRes.headers);
            upRes.pipe(res);
            upRes.on('end', resolve);
            upRes.on('error', reject);
          },
        );
        up.on('error', reject);
        up.end(body);
      }).catch((err: unknown) => {
        // The write may or may not have landed: refuse every conditional write on this path (as a
        // store that cannot tell would) until a read learns its ETag again.
        if (req.method === 'PUT') etags.set(path, UNKNOWN_ETAG);
        throw err;
      });
    });
    locks.set(path, done.catch(() => {}));
    done.catch(() => res.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    stats,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}
let env: ProcessorTestEnv<'export'>;
let s3: TestS3;
let redis: Redis;
let config: Config;
let storage: Storage;

beforeAll(async () => {
  env = await processorTestEnv(iso, 'export', exportRecords);
  ({ s3, redis, config } = env);
  storage = createStorage(config);
});

afterAll(async () => {
  storage?.close();
  await env?.close();
});

const entry = (id: string, createdAt = new Date()): ManifestEntry => ({
  id,
  key: `m/u/2026/01/01/${id}.json`,
  format: 'json',
  record_count: 1,
  size: 10,
  sha256: '0'.repeat(64),
  created_at: createdAt.toISOString(),
});

/** Every segment the head points at exists, and the entries across head and segments are `ids`. */
async function expectCompacted(s: Storage, module: string, userId: string, ids: string[]) {
  const head = await readManifestHead(s, module, userId);
  for (const p of head.segments) {
    expect(p.key).toMatch(new RegExp(`^manifests/${module}/${userId}/segments/\\d{4}-\\d{2}-\\d{2}-\\d{6}-[0-9a-f]{12}\\.jsonl$`));
    const res = await s.client.send(new HeadObjectCommand({ Bucket: s.bucket, Key: p.key }));
    expect(res.ContentLength).toBe(p.bytes);
  }
  expect(head.segments.map((p) => p.seq)).toEqual(head.segments.map((_, i) => i + 1));
  const { entries } = await readManifest(s, module, userId);
  expect(entries.map((e) => e.id).sort()).toEqual([...ids].sort());
  return head;
}

const ENTRY_BYTES = Buffer.byteLength(serializeManifest([entry('c00')]));

describe('manifest', () => {
  it('detects that s3rver does not enforce conditional writes (once per process and store)', async () => {
    resetConditionalWriteDetection();
    const first = storeEnforcesConditionalWrites(storage);
    expect(storeEnforcesConditionalWrites(storage)).toBe(first);
    expect(await first).toBe(false);
  });

  it('50 concurrent exports into one manifest leave 50 entries, no duplicates (lock path)', { timeout: 25_000 }, async () => {
    const runs = Array.from({ length: 50 }, (_, i) =>
      env.run({ module: 'finance', userId: 'busy', format: 'jsonl', records: [{ n: i }], id: `e${i}` }),
    );
    await Promise.all(runs);
    const { entries } = await readManifest(storage, 'finance', 'busy');
    expect(entries).toHaveLength(50);
    expect(new Set(entries.map((e) => e.id)).size).toBe(50);
    // The lock is released after every update.
    expect(await redis.exists(manifestLockKey(config.prefix, 'finance', 'busy'))).toBe(0);
  });

  it('an update replaces an entry with the same id', async () => {
    const deps = { storage, redis: () => redis, prefix: iso.prefix };
    await upsertManifestEntry(deps, 'm', 'u', entry('a'));
    await upsertManifestEntry(deps, 'm', 'u', entry('b'));
    const update = await upsertManifestEntry(deps, 'm', 'u', { ...entry('a'), record_count: 7 });
    expect(update).toMatchObject({ entries: 2, mode: 'lock' });
    const { entries } = await readManifest(storage, 'm', 'u');
    expect(entries.map((e) => [e.id, e.record_count])).toEqual([
      ['b', 1],
      ['a', 7],
    ]);
  });

  it('waits for a held lock, and gives up at its timeout without writing', async () => {
    const lockKey = manifestLockKey(iso.prefix, 'm', 'held');
    await redis.set(lockKey, 'someone-else', 'PX', 10_000);
    const deps = { storage, redis: () => redis, prefix: iso.prefix, timeoutMs: 300 };
    await expect(upsertManifestEntry(deps, 'm', 'held', entry('x'))).rejects.toThrow(/lock not acquired/);
    // The other holder's lock is untouched (release only deletes our own token).
    expect(await redis.get(lockKey)).toBe('someone-else');
    expect((await readManifest(storage, 'm', 'held')).entries).toEqual([]);
    await redis.del(lockKey);
    await upsertManifestEntry({ ...deps, timeoutMs: 5_000 }, 'm', 'held', entry('x'));
    expect((await readManifest(storage, 'm', 'held')).entries.map((e) => e.id)).toEqual(['x']);
  });
});

describe('manifest on a store that enforces conditional writes (test proxy)', () => {
  let proxy: Awaited<ReturnType<typeof conditionalProxy>>;
  let guarded: Storage;
  beforeAll(async () => {
    proxy = await conditionalProxy(s3.endpoint);
    guarded = createStorage(iso.config({ storage: { endpoint: proxy.endpoint, bucket: s3.bucket, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey } }));
  });
  afterAll(async () => {
    guarded?.close();
    await proxy?.close();
  });

  it('detects enforcement, and 50 concurrent updates via If-Match / If-None-Match retries leave 50 entries without Redis', { timeout: 25_000 }, async () => {
    expect(await storeEnforcesConditionalWrites(guarded)).toBe(true);
    const deps = {
      storage: guarded,
      redis: (): Redis => {
        throw new Error('the conditional path must not take the lock');
      },
      prefix: iso.prefix,
    };
    const updates = await Promise.all(Array.from({ length: 50 }, (_, i) => upsertManifestEntry(deps, 'cond', 'busy', entry(`c${i}`))));
    expect(updates.every((u) => u.mode === 'conditional')).toBe(true);
    expect(proxy.stats.preconditionFailed).toBeGreaterThan(0);
    expect(updates.some((u) => u.attempts > 1)).toBe(true);
    const { entries } = await readManifest(storage, 'cond', 'busy');
    expect(entries).toHaveLength(50);
    expect(new Set(entries.map((e) => e.id)).size).toBe(50);
  });
});

describe('compaction', () => {
  const COMPACT = 1024;

  it('rolls the head into dated segments past the threshold: every update rewrites a bounded head, and reads see every entry', async () => {
    const deps = { storage, redis: () => redis, prefix: iso.prefix, compactBytes: COMPACT };
    const ids = Array.from({ length: 40 }, (_, i) => `s${String(i).padStart(2, '0')}`);
    let largestHead = 0;
    let compactions = 0;
    for (const [i, id] of ids.entries()) {
      // Entries a day apart, so segment names carry different dates.
      const update = await upsertManifestEntry(deps, 'seq', 'u', entry(id, new Date(Date.UTC(2026, 0, 1 + i))));
      if (update.compacted) compactions++;
      const head = await readManifestHead(storage, 'seq', 'u');
      // The head's own entries stay under threshold + one entry; the pointers add one line per segment.
      expect(Buffer.byteLength(serializeManifest(head.entries))).toBeLessThan(COMPACT + ENTRY_BYTES);
      largestHead = Math.max(largestHead, head.bytes - Buffer.byteLength(serializeManifest([], head.segments)));
    }
    const head = await expectCompacted(storage, 'seq', 'u', ids);
    expect(compactions).toBe(head.segments.length);
    expect(head.segments.length).toBeGreaterThanOrEqual(5);
    expect(largestHead).toBeLessThan(COMPACT + ENTRY_BYTES);
    expect(head.segments[0]!.key).toMatch(/segments\/2026-01-01-000001-/);
    expect(head.segments.reduce((n, p) => n + p.entries, 0) + head.entries.length).toBe(40);

    // A lookup by id reaches into the oldest segment; a rerun of an old id wins over its segment copy.
    expect(await findManifestEntry(storage, 'seq', 'u', 's00')).toMatchObject({ id: 's00' });
    await upsertManifestEntry(deps, 'seq', 'u', { ...entry('s00'), record_count: 9 });
    expect(await findManifestEntry(storage, 'seq', 'u', 's00')).toMatchObject({ record_count: 9 });
    const all = (await readManifest(storage, 'seq', 'u')).entries;
    expect(all.filter((e) => e.id === 's00')).toEqual([expect.objectContaining({ record_count: 9 })]);
    expect(all).toHaveLength(40);
  });

  it('50 concurrent writers with compaction on leave 50 entries, no duplicates (lock path)', { timeout: 25_000 }, async () => {
    const deps = { storage, redis: () => redis, prefix: iso.prefix, compactBytes: COMPACT };
    const ids = Array.from({ length: 50 }, (_, i) => `k${i}`);
    const updates = await Promise.all(ids.map((id) => upsertManifestEntry(deps, 'conc', 'lock', entry(id))));
    expect(updates.filter((u) => u.compacted).length).toBeGreaterThan(3);
    await expectCompacted(storage, 'conc', 'lock', ids);
  });

  it('50 concurrent writers with compaction on leave 50 entries, no duplicates (conditional path, test proxy)', { timeout: 25_000 }, async () => {
    const proxy = await conditionalProxy(s3.endpoint);
    const guarded = createStorage(iso.config({ storage: { endpoint: proxy.endpoint, bucket: s3.bucket, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey } }));
    try {
      expect(await storeEnforcesConditionalWrites(guarded)).toBe(true);
      const deps = {
        storage: guarded,
        redis: (): Redis => {
          throw new Error('the conditional path must not take the lock');
        },
        prefix: iso.prefix,
        compactBytes: COMPACT,
      };
      const ids = Array.from({ length: 50 }, (_, i) => `q${i}`);
      const updates = await Promise.all(ids.map((id) => upsertManifestEntry(deps, 'conc', 'cond', entry(id))));
      expect(updates.every((u) => u.mode === 'conditional')).toBe(true);
      expect(updates.filter((u) => u.compacted).length).toBeGreaterThan(3);
      await expectCompacted(storage, 'conc', 'cond', ids);
    } finally {
      guarded.close();
      await proxy.close();
    }
  });
});
