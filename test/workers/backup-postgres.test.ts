/**
 * PostgreSQL in a backup set, against the real server: pg_dump (custom format) into the archive,
 * metadata without the password, pg_restore into a new database with the same rows, never over the
 * source unless forced, and the restore drill. Scratch databases are dropped in afterAll.
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BackupMetadata } from '../../src/backups/archive.js';
import { runRestoreDrill } from '../../src/backups/drill.js';
import { postgresConnection } from '../../src/backups/postgres.js';
import { applyPendingRestore, applyRestore, stageRestore } from '../../src/backups/restore.js';
import type { Config } from '../../src/config.js';
import { getBackupByKey } from '../../src/db/backups.js';
import { migrate } from '../../src/db/migrate.js';
import { createDb, type Db } from '../../src/db/pool.js';
import { createEventStream, type EventStream } from '../../src/queues/index.js';
import { createStorage, type Storage } from '../../src/storage/client.js';
import { backup } from '../../src/workers/backup.js';
import { runProcessor } from '../helpers/fleet.js';
import { DATABASE_URL, isolate, REDIS_URL } from '../helpers/isolation.js';
import { startS3, type TestS3 } from '../helpers/s3.js';

const exec = promisify(execFile);
const iso = isolate('backuppg');
const suffix = randomBytes(4).toString('hex');
const SOURCE_DB = `stowage_bk_${suffix}`;
const RESTORED_DB = `stowage_bk_${suffix}_r`;
const PASSWORD = `pw-${randomBytes(6).toString('hex')}`;
let s3: TestS3;
let db: Db;
let redis: Redis;
let queue: Queue;
let events: EventStream;
let storage: Storage;
let work: string;
const storages: Storage[] = [];

/** The test server trusts local connections, so any password works: one is set to prove it never leaks. */
function urlFor(database: string, password = PASSWORD): string {
  const u = new URL(DATABASE_URL);
  u.password = password;
  u.pathname = `/${database}`;
  return u.toString();
}

async function sql<T extends pg.QueryResultRow>(database: string, text: string): Promise<T[]> {
  const client = new pg.Client({ connectionString: urlFor(database) });
  await client.connect();
  try {
    return (await client.query<T>(text)).rows;
  } finally {
    await client.end();
  }
}

const admin = () => new URL(DATABASE_URL).pathname.slice(1) || 'postgres';

function config(): Config {
  return iso.config({
    storage: { endpoint: s3.endpoint, bucket: s3.bucket, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    backupSets: [
      { name: 'pgset', postgres: [{ name: 'shop', url: urlFor(SOURCE_DB) }] },
      // A configured set may carry a password (the payload names only the set); its database does not exist.
      { name: 'gone', postgres: [{ name: 'x', url: urlFor(`stowage_bk_${suffix}_missing`) }] },
    ],
  });
}
const deps = () => ({ config: config(), db, events, queue, storages });

beforeAll(async () => {
  s3 = await startS3(iso.bucket);
  work = await mkdtemp(join(tmpdir(), 'stowage-backuppg-'));
  await sql(admin(), `CREATE DATABASE ${SOURCE_DB}`);
  await sql(
    SOURCE_DB,
    `CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL, qty int NOT NULL, note text);
     INSERT INTO orders (item, qty, note) SELECT 'item-' || g, g % 7, CASE WHEN g % 3 = 0 THEN NULL ELSE repeat('x', g % 50) END FROM generate_series(1, 1000) g;
     CREATE TABLE lines (order_id int REFERENCES orders(id), n int);
     INSERT INTO lines SELECT id, id * 2 FROM orders WHERE id <= 10;`,
  );
  const c = config();
  await migrate(c);
  db = createDb(c);
  redis = new Redis(REDIS_URL);
  events = createEventStream(redis, iso.prefix);
  queue = new Queue('backup', { connection: redis.duplicate(), prefix: iso.prefix });
  storage = createStorage(c);
  storages.push(storage);
});

afterAll(async () => {
  // Every database this file may have made, including drill and default-named restores.
  const leftovers = await sql<{ datname: string }>(
    admin(),
    `SELECT datname FROM pg_database WHERE datname LIKE 'stowage_bk_${suffix}%' OR datname LIKE 'stowage_drill_%'`,
  ).catch(() => []);
  for (const { datname } of leftovers) await sql(admin(), `DROP DATABASE IF EXISTS "${datname}" WITH (FORCE)`).catch(() => {});
  for (const s of storages) s.close();
  await queue?.close();
  redis?.disconnect();
  await db?.close();
  await s3?.close();
  await iso.cleanup();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('PostgreSQL backups', () => {
  let key: string;

  it('dumps into the archive with checksummed metadata and no password anywhere', async () => {
    const { result } = await runProcessor('backup', backup, { set: 'pgset' }, deps());
    key = (result as { key: string }).key;
    expect(key).toMatch(/^backups\/pgset\/pgset-backup-\d{4}-\d{2}-\d{2}-\d{6}\.tar\.gz$/);

    const res = await storage.client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }));
    const archive = Buffer.from(await res.Body!.transformToByteArray());
    const file = join(work, 'pg.tar.gz');
    await writeFile(file, archive);
    await exec('tar', ['xzf', file, '-C', work]);
    const metadata = JSON.parse(await readFile(join(work, 'backup-metadata.json'), 'utf8')) as BackupMetadata;
    expect(metadata.databases).toHaveLength(1);
    const entry = metadata.databases[0]!;
    expect(entry).toMatchObject({ name: 'shop', filename: 'shop.pgdump', kind: 'postgres' });
    const dump = await readFile(join(work, 'shop.pgdump'));
    expect(dump.subarray(0, 5).toString()).toBe('PGDMP'); // custom format
    expect(entry.size_bytes).toBe(dump.length);
    expect(entry.checksum).toBe(`sha256:${createHash('sha256').update(dump).digest('hex')}`);
    expect(entry.source).toBe(postgresConnection(urlFor(SOURCE_DB)).url);
    expect(entry.source).toContain(SOURCE_DB);

    const row = await getBackupByKey(db, s3.bucket, key);
    for (const text of [JSON.stringify(metadata), JSON.stringify(row), JSON.stringify(result), archive.toString('latin1')]) {
      expect(text).not.toContain(PASSWORD);
    }
  });

  it('restores into a new database with the same rows', async () => {
    const { stagingDir, pending } = await stageRestore(storage, key, { toDir: join(work, 'restore'), pgDatabase: RESTORED_DB });
    expect(pending.postgres).toEqual([
      expect.objectContaining({ name: 'shop', sourceDatabase: SOURCE_DB, targetDatabase: RESTORED_DB, force: false }),
    ]);
    const applied = await applyRestore(stagingDir, { postgresUrl: () => urlFor(SOURCE_DB) });
    expect(applied.postgres).toEqual([{ name: 'shop', database: RESTORED_DB, created: true }]);

    const q =
      'SELECT (SELECT json_agg(o ORDER BY id) FROM orders o) AS orders, (SELECT json_agg(l ORDER BY order_id) FROM lines l) AS lines';
    const [source] = await sql(SOURCE_DB, q);
    const [restored] = await sql(RESTORED_DB, q);
    expect((restored as { orders: unknown[] }).orders).toHaveLength(1000);
    expect(restored).toEqual(source);
    // The sequence came along: the next insert does not collide.
    const [next] = await sql<{ id: number }>(RESTORED_DB, "INSERT INTO orders (item, qty) VALUES ('new', 1) RETURNING id");
    expect(next!.id).toBe(1001);
  });

  it('refuses to restore over the source, or into an existing database, unless forced', async () => {
    await expect(stageRestore(storage, key, { toDir: join(work, 'over'), pgDatabase: SOURCE_DB })).rejects.toThrow(
      /would overwrite the source database/,
    );

    // Staged into a name that exists by now: apply refuses and leaves that database as it was.
    const { stagingDir } = await stageRestore(storage, key, { toDir: join(work, 'exists'), pgDatabase: RESTORED_DB });
    await expect(applyRestore(stagingDir, { postgresUrl: () => urlFor(SOURCE_DB) })).rejects.toThrow(/already exists.*--force/);
    const [{ n }] = (await sql<{ n: string }>(RESTORED_DB, 'SELECT count(*) AS n FROM orders')) as [{ n: string }];
    expect(Number(n)).toBe(1001);

    // Forced over the source: allowed, and the source ends up as dumped (1000 rows).
    await sql(SOURCE_DB, "INSERT INTO orders (item, qty) VALUES ('after the backup', 1)");
    const forced = await stageRestore(storage, key, { toDir: join(work, 'forced'), pgDatabase: SOURCE_DB, force: true });
    const applied = await applyRestore(forced.stagingDir, { postgresUrl: () => urlFor(SOURCE_DB) });
    expect(applied.postgres).toEqual([{ name: 'shop', database: SOURCE_DB, created: false }]);
    const [{ m }] = (await sql<{ m: string }>(SOURCE_DB, 'SELECT count(*) AS m FROM orders')) as [{ m: string }];
    expect(Number(m)).toBe(1000);
  });

  it('without --to, a PostgreSQL-only backup stages in a private temp folder that applyPendingRestore finds and removes', async () => {
    const { stagingDir } = await stageRestore(storage, key, { pgDatabase: `${RESTORED_DB}2` });
    const parent = dirname(stagingDir);
    expect(dirname(parent)).toBe(tmpdir());
    expect(basename(parent)).toMatch(/^stowage-restore-pgset-\w{6}$/);
    expect((await stat(parent)).mode & 0o777).toBe(0o700);
    const applied = await applyPendingRestore(parent, { postgresUrl: () => urlFor(SOURCE_DB) });
    expect(applied?.postgres).toEqual([{ name: 'shop', database: `${RESTORED_DB}2`, created: true }]);
    expect((await readdir(tmpdir())).includes(basename(parent))).toBe(false);
    expect(await applyPendingRestore(parent)).toBeNull();
    const [{ n }] = (await sql<{ n: string }>(`${RESTORED_DB}2`, 'SELECT count(*) AS n FROM orders')) as [{ n: string }];
    expect(Number(n)).toBe(1000);
  });

  it('a drill restores the newest backup into a scratch database, verifies it and drops it', async () => {
    const drill = await runRestoreDrill({ db, storage, config: config() }, 'pgset');
    expect(drill).toMatchObject({
      ok: true,
      set: 'pgset',
      key,
      databases: [{ name: 'shop', kind: 'postgres', ok: true, detail: 'restored, 2 table(s)' }],
    });
    const left = await sql(admin(), "SELECT datname FROM pg_database WHERE datname LIKE 'stowage_drill_%'");
    expect(left).toEqual([]);

    const none = await runRestoreDrill({ db, storage, config: config() }, 'nothing-here');
    expect(none).toMatchObject({ ok: false, error: 'no completed backup of set nothing-here' });
  });

  it('a database that cannot be dumped fails the job and names it without the password', async () => {
    const err = await runProcessor('backup', backup, { set: 'gone' }, deps()).then(
      () => null,
      (e: unknown) => e as Error,
    );
    expect(err?.message).toMatch(/pg_dump failed/);
    expect(err?.message).toContain(`stowage_bk_${suffix}_missing`);
    expect(err?.message).not.toContain(PASSWORD);
  });
});
