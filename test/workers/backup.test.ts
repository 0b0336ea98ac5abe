/**
 * The backup processor against real services (s3rver in-process, Postgres, Redis), with a separate
 * process writing to the SQLite database for the whole backup. Child processes run through async
 * exec only: s3rver lives in this process, and a blocking call would deadlock it.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getBackupByKey, listBackups, recordBackup } from '../../src/db/backups.js';
import { isPermanent } from '../../src/errors.js';
import { jobIdFor, parsePayload } from '../../src/queues/contract.js';
import type { BackupPayload } from '../../src/queues/index.js';
import { createBackupArchive, type BackupMetadata } from '../../src/backups/archive.js';
import { pruneBackupSet } from '../../src/backups/prune.js';
import { applyRestore, PENDING_RESTORE_FLAG, stageRestore, STAGING_DIR_NAME } from '../../src/backups/restore.js';
import { quickCheck } from '../../src/backups/snapshot.js';
import { createStorage, type Storage } from '../../src/storage/client.js';
import { backupKey, BACKUP_KEY_PATTERN } from '../../src/storage/keys.js';
import { backup } from '../../src/workers/backup.js';
import { uploadStream } from '../../src/storage/upload.js';
import { Readable } from 'node:stream';
import { createGzip } from 'node:zlib';
import tar from 'tar-stream';
import { processorTestEnv, type ProcessorTestEnv } from '../helpers/fleet.js';
import { isolate } from '../helpers/isolation.js';

const exec = promisify(execFile);
const iso = isolate('backup');
let env: ProcessorTestEnv<'backup'>;
let work: string;
let appDb: string;
let otherDb: string;
const storages: Storage[] = [];

const backupSets = () => [
  {
    name: 'app',
    sqlite: [
      { name: 'main', path: appDb },
      { name: 'other', path: otherDb },
    ],
  },
  { name: 'pruned', sqlite: [{ name: 'x', path: otherDb }], retention: { keepLast: 1 } },
];
const run = (data: BackupPayload) => env.run(data);
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

const getObject = (key: string) => env.getObject(key);
const exists = (key: string) => env.exists(key);

/**
 * Another process that inserts rows for as long as it runs, one transaction per row: the row
 * `id` counts up from 1 and `counter.n` is set to it in the same transaction, so any consistent
 * snapshot has count(*) = max(id) = counter.n. It prints the committed count every 20 ms.
 */
const WRITER = `
import Database from 'better-sqlite3';
const db = new Database(process.argv[1]);
db.pragma('journal_mode = WAL');
db.pragma('busy_timeout = 10000');
const insert = db.prepare('INSERT INTO items (payload) VALUES (randomblob(512))');
const bump = db.prepare('UPDATE counter SET n = ?');
const step = db.transaction(() => { const { lastInsertRowid } = insert.run(); bump.run(Number(lastInsertRowid)); return Number(lastInsertRowid); });
let n = 0; let last = 0;
for (;;) {
  n = step();
  if (Date.now() - last > 20) { last = Date.now(); process.stdout.write(n + '\\n'); await new Promise((r) => setImmediate(r)); }
}
`;

function startWriter(path: string): { child: ChildProcess; committed: () => number; ready: Promise<void> } {
  const child = spawn(process.execPath, ['--input-type=module', '-e', WRITER, path], {
    cwd: process.cwd(),
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let committed = 0;
  let resolveReady!: () => void;
  const ready = new Promise<void>((r) => (resolveReady = r));
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (chunk: string) => {
    const lines = chunk.trim().split('\n');
    const n = Number(lines.at(-1));
    if (Number.isFinite(n) && n > committed) committed = n;
    if (committed > 2000) resolveReady();
  });
  return { child, committed: () => committed, ready };
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'stowage-backup-test-'));
  appDb = join(work, 'app.db');
  otherDb = join(work, 'other.db');
  const app = new Database(appDb);
  app.pragma('journal_mode = WAL');
  app.exec(
    'CREATE TABLE items (id INTEGER PRIMARY KEY, payload BLOB NOT NULL); CREATE TABLE counter (n INTEGER NOT NULL); INSERT INTO counter VALUES (0);',
  );
  app.close();
  const other = new Database(otherDb);
  other.exec("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT); INSERT INTO kv VALUES ('a', '1'), ('b', '2');");
  other.close();

  env = await processorTestEnv(iso, 'backup', backup, { backupSets: backupSets() });
});

afterAll(async () => {
  for (const s of storages) s.close();
  await env?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('backup', () => {
  it('snapshots a database another process keeps writing: the archive restores to a consistent prefix of the writes', async () => {
    const writer = startWriter(appDb);
    let result: Awaited<ReturnType<typeof run>>;
    let before: number;
    let after: number;
    try {
      await writer.ready;
      before = writer.committed();
      result = await run({ set: 'app' });
      await new Promise((r) => setTimeout(r, 100));
      after = writer.committed();
    } finally {
      writer.child.kill('SIGTERM');
      await new Promise((r) => writer.child.once('exit', r));
    }
    expect(after).toBeGreaterThan(before); // the application kept writing around the backup

    const { key, sha256: digest, size } = result.result as { key: string; sha256: string; size: number };
    expect(key).toMatch(BACKUP_KEY_PATTERN);
    expect(key).toMatch(/^backups\/app\/app-backup-\d{4}-\d{2}-\d{2}-\d{6}\.tar\.gz$/);

    // The object, its sidecar, the row and the event agree.
    const archive = await getObject(key);
    expect(archive.length).toBe(size);
    expect(sha256(archive)).toBe(digest);
    expect((await getObject(`${key}.sha256`)).toString()).toBe(`${digest}  ${key.split('/').at(-1)}\n`);
    const row = await getBackupByKey(env.db, env.s3.bucket, key);
    expect(row).toMatchObject({ set: 'app', size, sha256: digest, status: 'completed', verified: true });
    expect(result.emitted.map((e) => [e.type, e.data])).toEqual([
      ['backup_completed', { set: 'app', key, size, sha256: digest, databases: 2 }],
    ]);

    // tar lists the archive: metadata first, then one file per database.
    const restore = join(work, 'restore');
    await mkdir(restore);
    const file = join(restore, 'archive.tar.gz');
    await writeFile(file, archive);
    const listing = (await exec('tar', ['tzf', file])).stdout.trim().split('\n');
    expect(listing).toEqual(['backup-metadata.json', 'main.db', 'other.db']);
    await exec('tar', ['xzf', file, '-C', restore]);

    // Metadata checksums and sizes match the files.
    const metadata = JSON.parse(await readFile(join(restore, 'backup-metadata.json'), 'utf8')) as BackupMetadata;
    expect(metadata).toMatchObject({ version: '1', stowage_version: '0.1.0', set: 'app' });
    expect(metadata.timestamp).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/);
    expect(metadata.databases.map((d) => [d.name, d.filename, d.source_path])).toEqual([
      ['main', 'main.db', appDb],
      ['other', 'other.db', otherDb],
    ]);
    for (const d of metadata.databases) {
      const bytes = await readFile(join(restore, d.filename));
      expect(bytes.length).toBe(d.size_bytes);
      expect(d.checksum).toBe(`sha256:${sha256(bytes)}`);
    }
    expect(row!.databases).toEqual(metadata.databases);

    // The restored snapshot is sound and a consistent prefix of the writes.
    expect(quickCheck(join(restore, 'main.db'), 'integrity_check')).toEqual([]);
    const snap = new Database(join(restore, 'main.db'), { readonly: true });
    try {
      const { count, max } = snap.prepare('SELECT count(*) AS count, max(id) AS max FROM items').get() as { count: number; max: number };
      const { n } = snap.prepare('SELECT n FROM counter').get() as { n: number };
      expect(count).toBe(max);
      expect(n).toBe(count);
      expect(count).toBeGreaterThanOrEqual(before);
      expect(count).toBeLessThanOrEqual(after);
      expect(snap.pragma('journal_mode', { simple: true })).not.toBe('wal'); // a single self-contained file
    } finally {
      snap.close();
    }
    const kv = new Database(join(restore, 'other.db'), { readonly: true });
    expect(kv.prepare('SELECT count(*) AS n FROM kv').get()).toEqual({ n: 2 });
    kv.close();

    // The temp dir with the snapshots is gone.
    expect((await readdir(tmpdir())).filter((n) => n.startsWith('stowage-backup-app-'))).toEqual([]);
  });

  it('ad hoc requests of one set are distinct jobs; a scheduled payload keeps one job id', () => {
    const id = (data: Record<string, unknown>) => jobIdFor('backup', parsePayload('backup', data));
    // Job Schedulers name each tick's job themselves; a payload without requestedAt still dedupes.
    expect(id({ set: 'app' })).toBe(id({ set: 'app' }));
    const a = id({ set: 'app', requestedAt: '2026-01-01T03:00:00.000Z' });
    const b = id({ set: 'app', requestedAt: '2026-01-01T03:00:00.001Z' });
    expect(a).not.toBe(b);
    expect(a).not.toBe(id({ set: 'app' }));
    expect(() => parsePayload('backup', { set: 'app', requestedAt: 'yesterday' })).toThrow(/requestedAt/);
    expect(() => parsePayload('backup', { name: 'x', sqlite: [{ name: 'a', path: '/a.db' }], task: 'drill' })).toThrow(
      /prune and drill need a configured set/,
    );
    expect(parsePayload('backup', { set: 'app', task: 'drill' })).toMatchObject({ set: 'app', task: 'drill' }); // schedulable as a config schedule
  });

  it('two backups of one set never run at once: the second fails retryably', async () => {
    const settled = await Promise.allSettled([run({ set: 'app' }), run({ set: 'app' })]);
    const failed = settled.filter((s) => s.status === 'rejected');
    expect(settled.filter((s) => s.status === 'fulfilled')).toHaveLength(1);
    expect(failed).toHaveLength(1);
    const reason = (failed[0] as PromiseRejectedResult).reason as Error;
    expect(reason.message).toMatch(/another backup of set app is running/);
    expect(reason).toMatchObject({ code: 'STOWAGE_ERR_BUSY' });
    expect(isPermanent(reason)).toBe(false);
  });

  it('ad hoc sets work; a missing database or an unknown set fails permanently and cleans up', async () => {
    const { result } = await run({ name: 'adhoc', sqlite: [{ name: 'kv', path: otherDb }] });
    expect((result as { key: string }).key).toMatch(/^backups\/adhoc\/adhoc-backup-/);

    for (const payload of [{ name: 'gone', sqlite: [{ name: 'x', path: join(work, 'missing.db') }] }, { set: 'nope' }]) {
      const err = await run(payload).then(
        () => null,
        (e: unknown) => e,
      );
      expect(isPermanent(err)).toBe(true);
    }
    expect((await readdir(tmpdir())).filter((n) => n.startsWith('stowage-backup-gone-'))).toEqual([]);
  });

  it('retention deletes the object and its sidecar and marks the row; keeps the newest', async () => {
    const storage = createStorage(env.config);
    storages.push(storage);
    const keys: string[] = [];
    for (let day = 1; day <= 5; day++) {
      const takenAt = new Date(Date.UTC(2026, 0, day, 3));
      const key = backupKey('pruned', takenAt);
      keys.push(key);
      await env.reader.send(new PutObjectCommand({ Bucket: env.s3.bucket, Key: key, Body: `archive ${day}` }));
      await env.reader.send(new PutObjectCommand({ Bucket: env.s3.bucket, Key: `${key}.sha256`, Body: 'x' }));
      await recordBackup(env.db, {
        set: 'pruned',
        bucket: env.s3.bucket,
        key,
        takenAt,
        size: 9,
        sha256: 'x',
        verified: day !== 5,
        databases: [],
        queue: null,
        jobId: null,
      });
    }
    // Day 5 is newest but unverified: not counted, not deleted. keepLast 2 keeps days 4 and 3.
    const dry = await pruneBackupSet({ db: env.db, storage }, 'pruned', { keepLast: 2 }, { dryRun: true });
    expect(dry.deleted).toEqual([]);
    expect(dry.decisions.map((d) => d.action)).toEqual(['ignore', 'keep', 'keep', 'delete', 'delete']);
    for (const key of keys) expect(await exists(key)).toBe(true);

    const res = await pruneBackupSet({ db: env.db, storage }, 'pruned', { keepLast: 2 });
    expect(res.deleted).toEqual([keys[1], keys[0]]);
    for (const key of keys.slice(0, 2)) {
      expect(await exists(key)).toBe(false);
      expect(await exists(`${key}.sha256`)).toBe(false);
    }
    for (const key of keys.slice(2)) expect(await exists(key)).toBe(true);
    const rows = await listBackups(env.db, 'pruned', { includeDeleted: true });
    expect(rows.map((r) => r.status)).toEqual(['completed', 'completed', 'completed', 'deleted', 'deleted']);
    expect(rows[4]!.deletedReason).toMatch(/^retention: no rule keeps it/);

    await expect(pruneBackupSet({ db: env.db, storage }, 'pruned', { keepLast: 0 })).rejects.toThrow(/empty/);

    // The scheduled form: the processor with task prune applies the set's configured policy (keepLast 1).
    const { result } = await run({ set: 'pruned', task: 'prune' });
    expect(result).toMatchObject({ status: 'pruned', set: 'pruned', dryRun: false, deleted: [keys[2]] });
    expect(await exists(keys[2]!)).toBe(false);
    expect(await exists(keys[3]!)).toBe(true);
  });
});

/** A tar.gz built by hand: for hostile archives. */
async function handmade(
  entries: { name: string; type?: 'file' | 'symlink' | 'directory'; body?: Buffer; size?: number; linkname?: string }[],
): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const done = new Promise<void>((resolve, reject) => {
    const gz = pack.pipe(createGzip());
    gz.on('data', (c: Buffer) => chunks.push(c));
    gz.on('end', resolve);
    gz.on('error', reject);
  });
  for (const e of entries) {
    await new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null) => (err ? reject(err) : resolve());
      if (e.type === 'symlink') pack.entry({ name: e.name, type: 'symlink', linkname: e.linkname! }, cb);
      else if (e.size !== undefined) {
        const stream = pack.entry({ name: e.name, size: e.size }, cb);
        stream.end(e.body ?? Buffer.alloc(e.size));
      } else pack.entry({ name: e.name, type: e.type ?? 'file' }, e.body ?? Buffer.alloc(0), cb);
    });
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

describe('restore', () => {
  let storage: Storage;
  let key: string;

  beforeAll(async () => {
    storage = createStorage(env.config);
    storages.push(storage);
    await new Promise((r) => setTimeout(r, 1100)); // a new second: a new key
    key = ((await run({ set: 'app' })).result as { key: string }).key;
  });

  async function liveDb(dir: string, filename: string): Promise<string> {
    await mkdir(dir, { recursive: true });
    const path = join(dir, filename);
    const live = new Database(path);
    live.pragma('journal_mode = WAL');
    live.exec("CREATE TABLE live (v TEXT); INSERT INTO live VALUES ('before the restore');");
    live.close();
    return path;
  }

  const tables = (path: string) => {
    const d = new Database(path, { readonly: true });
    try {
      return (d.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as { name: string }[]).map(
        (r) => r.name,
      );
    } finally {
      d.close();
    }
  };

  it('stages (verified, flagged) then applies with a safety copy of the live database', async () => {
    const to = join(work, 'restore-ok');
    const live = await liveDb(to, 'main.db');
    const { stagingDir, pending } = await stageRestore(storage, key, { toDir: to });
    expect(stagingDir).toBe(join(to, STAGING_DIR_NAME));
    expect((await readdir(stagingDir)).sort()).toEqual([PENDING_RESTORE_FLAG, 'main.db', 'other.db']);
    expect(pending.databases.map((d) => d.target)).toEqual([join(to, 'main.db'), join(to, 'other.db')]);
    expect(tables(live)).toEqual(['live']); // staging touches nothing live

    const applied = await applyRestore(stagingDir);
    expect(tables(live)).toEqual(['counter', 'items']);
    expect(quickCheck(live, 'integrity_check')).toEqual([]);
    const safety = applied.databases[0]!.safetyCopy!;
    expect(safety).toMatch(/main\.db\.pre-restore-/);
    expect(tables(safety)).toEqual(['live']);
    expect(applied.databases[1]!.safetyCopy).toBeNull();
    expect(await readdir(to)).not.toContain(STAGING_DIR_NAME);
    expect(await readdir(to)).not.toContain('main.db-wal');
  });

  it("without --to, stages next to the configured set's databases, targeting their paths", async () => {
    const { stagingDir, pending } = await stageRestore(storage, key, {
      configuredSet: env.config.backupSets.find((s) => s.name === 'app')!,
    });
    try {
      expect(stagingDir).toBe(join(work, STAGING_DIR_NAME));
      expect(pending.databases.map((d) => d.target)).toEqual([appDb, otherDb]);
      expect((await readdir(tmpdir())).filter((n) => n.startsWith('stowage-restore-peek-'))).toEqual([]);
    } finally {
      await rm(stagingDir, { recursive: true, force: true });
    }
  });

  it('a failure during apply rolls back to the original database', async () => {
    const to = join(work, 'restore-fail');
    const live = await liveDb(to, 'main.db');
    const { stagingDir } = await stageRestore(storage, key, { toDir: to });
    await expect(
      applyRestore(stagingDir, {
        afterSwap: (name) => {
          if (name === 'other') throw new Error('injected failure');
        },
      }),
    ).rejects.toThrow(/injected failure/);
    expect(tables(live)).toEqual(['live']);
    expect(quickCheck(live, 'integrity_check')).toEqual([]);
    expect(await readdir(to)).not.toContain('other.db'); // it did not exist before
  });

  it('refuses an archive with one byte changed, at stage, leaving nothing', async () => {
    const archive = await getObject(key);
    const middle = Math.floor(archive.length / 2);
    archive[middle] = archive[middle]! ^ 0x01;
    const bad = 'backups/app/tampered.tar.gz';
    await env.reader.send(new PutObjectCommand({ Bucket: env.s3.bucket, Key: bad, Body: archive }));
    await env.reader.send(new PutObjectCommand({ Bucket: env.s3.bucket, Key: `${bad}.sha256`, Body: await getObject(`${key}.sha256`) }));
    const to = join(work, 'restore-tampered');
    await mkdir(to);
    await expect(stageRestore(storage, bad, { toDir: to })).rejects.toThrow(/does not match its sidecar/);
    expect(await readdir(to)).toEqual([]);
  });

  it('refuses a file whose checksum differs from the metadata', async () => {
    const snap = join(work, 'snap.db');
    const d = new Database(snap);
    d.exec('CREATE TABLE t (x)');
    d.close();
    const size = (await readFile(snap)).length;
    const meta = {
      timestamp: '2026-01-01T00:00:00Z',
      version: '1',
      stowage_version: '0.1.0',
      set: 'x',
      databases: [{ name: 'm', filename: 'main.db', size_bytes: size, checksum: `sha256:${'0'.repeat(64)}`, source_path: '/srv/main.db' }],
    };
    const bad = 'backups/x/x-backup-badsum.tar.gz';
    await uploadStream(storage, { key: bad, body: createBackupArchive(meta, [{ filename: 'main.db', path: snap, size }]) });
    const to = join(work, 'restore-badsum');
    await mkdir(to);
    await expect(stageRestore(storage, bad, { toDir: to })).rejects.toThrow(/checksum .* does not match the metadata/);
    expect(await readdir(to)).toEqual([]);
  });

  it('the drill task restores the newest backup into a scratch folder and verifies it; a broken newest backup fails it', async () => {
    const { result } = await run({ set: 'app', task: 'drill' });
    expect(result).toMatchObject({
      status: 'drilled',
      ok: true,
      set: 'app',
      key,
      databases: [
        { name: 'main', kind: 'sqlite', ok: true, detail: 'integrity_check ok' },
        { name: 'other', kind: 'sqlite', ok: true, detail: 'integrity_check ok' },
      ],
    });
    expect((await readdir(tmpdir())).filter((n) => n.startsWith('stowage-drill-app-'))).toEqual([]);
    // Set `pruned` holds hand-made rows whose objects are not archives: the drill must say so.
    const err = await run({ set: 'pruned', task: 'drill' }).then(
      () => null,
      (e: unknown) => e as Error,
    );
    expect(err?.message).toMatch(/^drill of set pruned failed: restore refused: sidecar of .* holds no SHA-256/);
    expect(isPermanent(err)).toBe(true);
  });

  const meta = Buffer.from(
    JSON.stringify({
      timestamp: '2026-01-01T00:00:00Z',
      version: '1',
      stowage_version: '0.1.0',
      set: 'h',
      databases: [{ name: 'm', filename: 'main.db', size_bytes: 10, checksum: `sha256:${'0'.repeat(64)}`, source_path: '/srv/main.db' }],
    }),
  );
  it.each([
    ['a ../ path', [{ name: '../evil.db', body: Buffer.alloc(10) }], /not a bare file name/],
    ['an absolute path', [{ name: join(work ?? '/tmp', 'abs.db'), body: Buffer.alloc(10) }], /not a bare file name/],
    ['a symlink', [{ name: 'main.db', type: 'symlink' as const, linkname: '/etc/passwd' }], /is a symlink/],
    ['a directory', [{ name: 'main.db', type: 'directory' as const }], /is a directory/],
    ['an entry larger than declared', [{ name: 'main.db', size: 20 }], /20 bytes, 10 declared/],
    ['an undeclared entry', [{ name: 'extra.db', body: Buffer.alloc(10) }], /not in backup-metadata/],
    ['no metadata first', [], /first entry must be/],
  ])('refuses a hostile archive (%s) with nothing written', async (label, entries, message) => {
    const all =
      label === 'no metadata first'
        ? [{ name: 'main.db', body: Buffer.alloc(10) }]
        : [{ name: 'backup-metadata.json', body: meta }, ...entries];
    const hostile = `backups/h/h-${label.replace(/[^a-z]/g, '')}.tar.gz`;
    await uploadStream(storage, { key: hostile, body: Readable.from([await handmade(all)]) });
    const to = join(work, `restore-hostile-${label.replace(/[^a-z]/g, '')}`);
    await mkdir(to);
    await expect(stageRestore(storage, hostile, { toDir: to })).rejects.toThrow(message);
    expect(await readdir(to)).toEqual([]);
    expect((await readdir(work)).filter((n) => n.startsWith('evil') || n.startsWith('abs'))).toEqual([]);
  });
});
