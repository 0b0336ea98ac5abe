/**
 * Manifest updates under concurrency, against real stores: radosgw, which enforces If-Match and
 * If-None-Match (in its own way: it honours only the unquoted ETag), so updates take the
 * conditional path; and s3rver, which ignores both headers, so updates take the Redis lock. The
 * lock path is also pinned on radosgw (`etagForm: null`), and the quoted form is pinned there to
 * show what happens on a store that refuses its own ETag: a switch to the lock, never a livelock.
 */
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Config } from '../../src/config.js';
import { createLogger } from '../../src/observability/logger.js';
import { redisKeys } from '../../src/queues/keys.js';
import { createStorage, type Storage } from '../../src/storage/client.js';
import { HeadObjectCommand } from '@aws-sdk/client-s3';
import { capabilityReport, resetCapabilities } from '../../src/storage/capabilities.js';
import {
  findManifestEntry,
  manifestWriteMode,
  readManifest,
  readManifestHead,
  serializeManifest,
  upsertManifestEntry,
  type ManifestDeps,
  type ManifestEntry,
} from '../../src/storage/manifest.js';
import { exportRecords } from '../../src/workers/export.js';
import { processorTestEnv, type ProcessorTestEnv } from '../helpers/fleet.js';
import { isolate } from '../helpers/isolation.js';
import { startS3rver, storageConfig, type TestS3 } from '../helpers/s3.js';

const iso = isolate('manifest');
/** The lock keys the export processor passes: `redisKeys.manifestLock` under this file's prefix. */
const lockKey = (module: string, userId: string) => redisKeys.manifestLock(iso.prefix, module, userId);

let env: ProcessorTestEnv<'export'>;
let redis: Redis;
let config: Config;
let storage: Storage;

beforeAll(async () => {
  env = await processorTestEnv(iso, 'export', exportRecords);
  ({ redis, config } = env);
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

/** Deps whose Redis must never be asked for: the conditional path takes no lock. */
const noRedis = (): Redis => {
  throw new Error('the conditional path must not take the lock');
};

describe('manifest on radosgw (conditional writes)', () => {
  it('the probe picks conditional writes with the unquoted ETag, once per process and store', async () => {
    resetCapabilities();
    // One probe per process and store: the second ask gets the same pending report.
    expect(capabilityReport(storage)).toBe(capabilityReport(storage));
    expect(await manifestWriteMode(storage)).toBe('unquoted');
  });

  it('50 concurrent exports into one manifest leave 50 entries, no duplicates, no lock', { timeout: 25_000 }, async () => {
    const runs = Array.from({ length: 50 }, (_, i) =>
      env.run({ module: 'finance', userId: 'busy', format: 'jsonl', records: [{ n: i }], id: `e${i}` }),
    );
    await Promise.all(runs);
    const { entries } = await readManifest(storage, 'finance', 'busy');
    expect(entries).toHaveLength(50);
    expect(new Set(entries.map((e) => e.id)).size).toBe(50);
    expect(await redis.exists(`${redisKeys.manifestLock(config.prefix, 'finance', 'busy')}:fence`)).toBe(0);
  });

  it('20 concurrent updates retry on 412 and all land, without Redis', { timeout: 25_000 }, async () => {
    const deps: ManifestDeps = { storage, redis: noRedis, lockKey };
    const updates = await Promise.all(Array.from({ length: 20 }, (_, i) => upsertManifestEntry(deps, 'cond', 'busy', entry(`c${i}`))));
    expect(updates.every((u) => u.mode === 'conditional')).toBe(true);
    expect(updates.some((u) => u.attempts > 1)).toBe(true);
    const { entries } = await readManifest(storage, 'cond', 'busy');
    expect(entries.map((e) => e.id).sort()).toEqual(Array.from({ length: 20 }, (_, i) => `c${i}`).sort());
  });

  it('a store refusing the ETag form it seemed to honour: 20 writers switch to the lock, all land, and the switch is logged', {
    timeout: 25_000,
  }, async () => {
    const lines: string[] = [];
    const logger = createLogger({ level: 'warn' }, { write: (l: string) => void lines.push(l) });
    // radosgw answers 412 to the quoted form of its own ETag (it compares byte for byte).
    const deps: ManifestDeps = { storage, redis: () => redis, lockKey, etagForm: 'quoted', logger };
    await upsertManifestEntry({ ...deps, etagForm: 'unquoted' }, 'stuck', 'u', entry('first'));
    const started = Date.now();
    const updates = await Promise.all(Array.from({ length: 20 }, (_, i) => upsertManifestEntry(deps, 'stuck', 'u', entry(`w${i}`))));
    const { entries } = await readManifest(storage, 'stuck', 'u');
    expect(entries.map((e) => e.id).sort()).toEqual(['first', ...Array.from({ length: 20 }, (_, i) => `w${i}`)].sort());
    expect(updates.every((u) => u.mode === 'lock')).toBe(true);
    const warnings = lines.map((l) => JSON.parse(l) as { msg: string; key: string });
    expect(warnings.some((w) => /unchanged ETag.*Redis lock/.test(w.msg) && w.key === 'manifests/stuck/u/manifest.jsonl')).toBe(true);
    // Bounded by the switch (a few conflicts), not by the 60 s conflict deadline.
    expect(Date.now() - started).toBeLessThan(20_000);
    // Later updates of that manifest go straight to the lock.
    expect(await upsertManifestEntry(deps, 'stuck', 'u', entry('later'))).toMatchObject({ mode: 'lock', attempts: 1 });
  });
});

for (const where of ['radosgw, lock pinned', 's3rver'] as const) {
  describe(`manifest on the lock path (${where})`, () => {
    let lockStorage: Storage;
    let own: TestS3 | undefined;
    beforeAll(async () => {
      if (where === 's3rver') {
        own = await startS3rver(`${iso.bucket}-lock`);
        lockStorage = createStorage(iso.config({ storage: storageConfig(own) }));
      } else lockStorage = storage;
    });
    afterAll(async () => {
      if (own) {
        lockStorage.close();
        await own.close();
      }
    });
    const deps = (more: Partial<ManifestDeps> = {}): ManifestDeps => ({
      storage: lockStorage,
      redis: () => redis,
      lockKey,
      ...(where === 's3rver' ? {} : { etagForm: null }),
      ...more,
    });
    const m = where === 's3rver' ? 'm3' : 'm';

    it('the probe chooses the lock on s3rver', async () => {
      if (where === 's3rver') expect(await manifestWriteMode(lockStorage)).toBeNull();
      else expect(await manifestWriteMode(lockStorage)).toBe('unquoted');
    });

    it('50 concurrent updates leave 50 entries, and the lock is released', { timeout: 25_000 }, async () => {
      const updates = await Promise.all(Array.from({ length: 50 }, (_, i) => upsertManifestEntry(deps(), m, 'busy', entry(`l${i}`))));
      expect(updates.every((u) => u.mode === 'lock')).toBe(true);
      const { entries } = await readManifest(lockStorage, m, 'busy');
      expect(entries).toHaveLength(50);
      expect(new Set(entries.map((e) => e.id)).size).toBe(50);
      expect(await redis.exists(lockKey(m, 'busy'))).toBe(0);
    });

    it('an update replaces an entry with the same id', async () => {
      await upsertManifestEntry(deps(), m, 'u', entry('a'));
      await upsertManifestEntry(deps(), m, 'u', entry('b'));
      const update = await upsertManifestEntry(deps(), m, 'u', { ...entry('a'), record_count: 7 });
      expect(update).toMatchObject({ entries: 2, mode: 'lock' });
      const { entries } = await readManifest(lockStorage, m, 'u');
      expect(entries.map((e) => [e.id, e.record_count])).toEqual([
        ['b', 1],
        ['a', 7],
      ]);
    });

    it('waits for a held lock, and gives up at its timeout without writing', async () => {
      const held = lockKey(m, 'held');
      await redis.set(held, 'someone-else', 'PX', 10_000);
      await expect(upsertManifestEntry(deps({ timeoutMs: 300 }), m, 'held', entry('x'))).rejects.toThrow(/lock not acquired/);
      // The other holder's lock is untouched (release only deletes our own token).
      expect(await redis.get(held)).toBe('someone-else');
      expect((await readManifest(lockStorage, m, 'held')).entries).toEqual([]);
      await redis.del(held);
      await upsertManifestEntry(deps({ timeoutMs: 5_000 }), m, 'held', entry('x'));
      expect((await readManifest(lockStorage, m, 'held')).entries.map((e) => e.id)).toEqual(['x']);
    });
  });
}

describe('compaction', () => {
  const COMPACT = 1024;

  it('rolls the head into dated segments past the threshold: every update rewrites a bounded head, and reads see every entry', async () => {
    const deps: ManifestDeps = { storage, redis: noRedis, lockKey, compactBytes: COMPACT };
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

  for (const [path, etagForm] of [
    ['lock', null],
    ['conditional', undefined],
  ] as const) {
    it(`50 concurrent writers with compaction on leave 50 entries, no duplicates (${path} path)`, { timeout: 25_000 }, async () => {
      const deps: ManifestDeps = {
        storage,
        redis: etagForm === null ? () => redis : noRedis,
        lockKey,
        compactBytes: COMPACT,
        ...(etagForm === null ? { etagForm } : {}),
      };
      const ids = Array.from({ length: 50 }, (_, i) => `${path}${i}`);
      const updates = await Promise.all(ids.map((id) => upsertManifestEntry(deps, 'conc', path, entry(id))));
      expect(updates.every((u) => u.mode === path)).toBe(true);
      expect(updates.filter((u) => u.compacted).length).toBeGreaterThan(3);
      await expectCompacted(storage, 'conc', path, ids);
    });
  }
});
