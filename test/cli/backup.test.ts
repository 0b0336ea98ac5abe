/**
 * `stowage backup …` as an operator runs it (a separate process, async spawn: s3rver lives in this
 * process), against real Redis, Postgres, s3rver and a worker running the backup processor here.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:net';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import Database from 'better-sqlite3';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackupArchive, fileChecksum, fileSize } from '../../src/backups/archive.js';
import { dumpPostgres } from '../../src/backups/postgres.js';
import type { Config } from '../../src/config.js';
import { markBackupDeleted, recordBackup } from '../../src/db/backups.js';
import type { Db } from '../../src/db/pool.js';
import { createStorage } from '../../src/storage/client.js';
import { backupKey, backupName } from '../../src/storage/keys.js';
import { uploadStream } from '../../src/storage/upload.js';
import { backup } from '../../src/workers/backup.js';
import type { Runtime } from '../../src/workers/runtime.js';
import { migratedDb, startTestRuntime } from '../helpers/fleet.js';
import { runCli } from '../helpers/cli.js';
import { DATABASE_URL, isolate } from '../helpers/isolation.js';
import { startS3, type TestS3 } from '../helpers/s3.js';
import { closedPort } from '../http/harness.js';

const iso = isolate('clibackup');
let s3: TestS3;
let db: Db;
let runtime: Runtime;
let work: string;
let appDb: string;
let configFile: string;
let config: Config;

const stowage = (args: string[], env: Record<string, string> = {}) =>
  runCli(iso, args, {
    STOWAGE_CONFIG: configFile,
    R2_ENDPOINT: s3.endpoint,
    R2_BUCKET: s3.bucket,
    R2_ACCESS_KEY_ID: s3.accessKeyId,
    R2_SECRET_ACCESS_KEY: s3.secretAccessKey,
    ...env,
  });

const rows = (path: string) => {
  const d = new Database(path, { readonly: true });
  try {
    return d.prepare('SELECT v FROM t ORDER BY v').all();
  } finally {
    d.close();
  }
};

beforeAll(async () => {
  s3 = await startS3(iso.bucket);
  work = await mkdtemp(join(tmpdir(), 'stowage-clibackup-'));
  appDb = join(work, 'data', 'app.db');
  await mkdir(join(work, 'data'));
  const d = new Database(appDb);
  d.pragma('journal_mode = WAL');
  d.exec("CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('a'), ('b');");
  d.close();
  configFile = join(work, 'stowage.json');
  const sets = [{ name: 'app', sqlite: [{ name: 'main', path: appDb }], retention: { keepLast: 1 } }];
  await writeFile(configFile, JSON.stringify({ backupSets: sets }));
  config = iso.config({
    storage: { endpoint: s3.endpoint, bucket: s3.bucket, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    backupSets: sets,
  });
  db = await migratedDb(config);
  runtime = await startTestRuntime(config, db, ['backup'], { backup });
});

afterAll(async () => {
  await runtime?.close(2000);
  await db?.close();
  await s3?.close();
  await iso.cleanup();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('stowage backup', () => {
  const names: string[] = [];

  it('now --set --wait takes a backup; a second one is a new job, not a duplicate', async () => {
    const first = await stowage(['backup', 'now', '--set', 'app', '--wait']);
    expect(first.code, first.stderr).toBe(0);
    await new Promise((r) => setTimeout(r, 1100)); // a new second: a new archive name
    const second = await stowage(['backup', 'now', '--set', 'app', '--wait']);
    expect(second.code, second.stderr).toBe(0);
    const [id1, id2] = [first.stderr.trim(), second.stderr.trim()];
    expect(id1).toMatch(/^backup\.[0-9a-f]{32}$/);
    expect(id2).not.toBe(id1);
    const k1 = (JSON.parse(first.stdout) as { key: string }).key;
    const k2 = (JSON.parse(second.stdout) as { key: string }).key;
    expect(k2).not.toBe(k1);
    names.push(
      ...[k2, k1].map((k) =>
        k
          .split('/')
          .at(-1)!
          .replace(/\.tar\.gz$/, ''),
      ),
    );

    const [both, adhocNoDb, badPair] = await Promise.all([
      stowage(['backup', 'now', '--set', 'app', '--name', 'x']),
      stowage(['backup', 'now', '--name', 'x']),
      stowage(['backup', 'now', '--name', 'x', '--postgres', 'postgres://u:hunter2@h/db']),
    ]);
    expect(both.code).toBe(64);
    expect(both.stderr).toMatch(/^stowage: backup now: give --set NAME, or --name NAME/);
    expect(adhocNoDb.code).toBe(65);
    expect(adhocNoDb.stderr).toContain('sqlite: an ad hoc backup needs at least one database');
    expect(badPair.code).toBe(64);
    expect(badPair.stderr).toContain('--postgres: expected NAME=URL');
    expect(badPair.stderr).not.toContain('hunter2');
  });

  it('now refuses an ad hoc --postgres URL with a password, naming the flag and the fix', async () => {
    const res = await stowage(['backup', 'now', '--name', 'x', '--postgres', 'shop=postgres://u:hunter2@127.0.0.1:5432/shop']);
    expect(res.code).toBe(64);
    expect(res.stderr).toMatch(/^stowage: --postgres shop: the URL carries a password, .*PGPASSWORD .*configured set \(backupSets\)/);
    expect(res.stderr).not.toContain('hunter2');
  });

  it('list shows name, set, age and size, newest first; --json too', async () => {
    const [text, json] = await Promise.all([stowage(['backup', 'list']), stowage(['backup', 'list', '--json', '--set', 'app'])]);
    expect(text.code, text.stderr).toBe(0);
    const lines = text.stdout.trim().split('\n');
    expect(lines[0]).toBe('NAME\tSET\tAGE\tSIZE');
    expect(lines.slice(1, 3).map((l) => l.split('\t')[0])).toEqual(names);
    expect(lines[1]).toMatch(/^app-backup-\S+\tapp\t\d+s\t[\d.]+ (B|KiB)$/);
    expect(lines.at(-1)).toBe('2 backup(s)');
    const parsed = JSON.parse(json.stdout) as { name: string; size: number; sha256: string }[];
    expect(parsed.map((b) => b.name)).toEqual(names);
  });

  it('download writes the archive, checks its SHA-256 and reports progress on stderr', async () => {
    const out = join(work, 'dl.tar.gz');
    const res = await stowage(['backup', 'download', names[0]!, '--out', out]);
    expect(res.code, res.stderr).toBe(0);
    expect(res.stderr).toMatch(/downloaded 100%/);
    const listed = JSON.parse((await stowage(['backup', 'list', '--json'])).stdout) as { name: string; sha256: string; size: number }[];
    const bytes = await readFile(out);
    expect(bytes.length).toBe(listed[0]!.size);
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(listed[0]!.sha256);
    expect(await readdir(work)).not.toContain('dl.tar.gz.part');

    const [again, notAName, unknown] = await Promise.all([
      stowage(['backup', 'download', names[0]!, '--out', out]),
      stowage(['backup', 'download', 'nope']),
      stowage(['backup', 'download', 'app-backup-2001-01-01-000000']),
    ]);
    expect(again.stderr).toMatch(/exists; remove it or give another --out/);
    expect(notAName.code).toBe(65);
    expect(notAName.stderr).toMatch(/"nope" is not a backup name/);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain('no backup named app-backup-2001-01-01-000000');
  });

  it('restore stages, cancel-restore throws it away, apply-restore swaps it in with a safety copy', async () => {
    // The application changed its database after the backup; the restore brings back a and b.
    const live = new Database(appDb);
    live.exec("DELETE FROM t; INSERT INTO t VALUES ('changed');");
    live.close();

    const staged = await stowage(['backup', 'restore', names[0]!]);
    expect(staged.code, staged.stderr).toBe(0);
    expect(staged.stdout).toContain(`staged ${names[0]} `);
    expect(staged.stdout).toContain(`sqlite   main\t-> ${appDb}`);
    expect(await readdir(join(work, 'data', '.stowage-restore'))).toContain('.pending-restore');
    expect(rows(appDb)).toEqual([{ v: 'changed' }]); // staging touches nothing live

    const cancelled = await stowage(['backup', 'cancel-restore']);
    expect(cancelled.code, cancelled.stderr).toBe(0);
    expect(await readdir(join(work, 'data'))).not.toContain('.stowage-restore');
    const nothing = await stowage(['backup', 'apply-restore']);
    expect(nothing.code).toBe(1);
    expect(nothing.stderr).toMatch(/no pending restore found/);

    expect((await stowage(['backup', 'restore', names[0]!])).code).toBe(0);
    const applied = await stowage(['backup', 'apply-restore', '--dir', join(work, 'data')]);
    expect(applied.code, applied.stderr).toBe(0);
    expect(applied.stdout).toMatch(/restored sqlite main at .*app\.db \(previous copy: .*app\.db\.pre-restore-/);
    expect(rows(appDb)).toEqual([{ v: 'a' }, { v: 'b' }]);
    const safety = (await readdir(join(work, 'data'))).find((n) => n.startsWith('app.db.pre-restore-'))!;
    expect(rows(join(work, 'data', safety))).toEqual([{ v: 'changed' }]);

    // --to restores elsewhere and leaves the live database alone.
    const to = join(work, 'elsewhere');
    expect((await stowage(['backup', 'restore', names[1]!, '--to', to])).code).toBe(0);
    expect((await stowage(['backup', 'apply-restore', '--dir', to])).code).toBe(0);
    expect(rows(join(to, 'main.db'))).toEqual([{ v: 'a' }, { v: 'b' }]);
  });

  it("apply-restore of a set not configured here never connects to the archive's source; it restores to the server the operator names", async () => {
    // A real dump of a scratch database, in an archive whose metadata names a server of its choosing.
    const suffix = randomBytes(4).toString('hex');
    const sourceDb = `stowage_clibk_${suffix}`;
    const targetDb = `${sourceDb}_r`;
    const admin = async (text: string, database?: string) => {
      const u = new URL(DATABASE_URL);
      if (database) u.pathname = `/${database}`;
      const client = new pg.Client({ connectionString: u.toString() });
      await client.connect();
      try {
        return (await client.query(text)).rows as Record<string, unknown>[];
      } finally {
        await client.end();
      }
    };
    const connections: string[] = [];
    const trap: Server = createServer((socket) => {
      connections.push(String(socket.remoteAddress));
      socket.destroy();
    });
    await new Promise<void>((resolve) => trap.listen(0, '127.0.0.1', resolve));
    const trapPort = (trap.address() as { port: number }).port;
    const storage = createStorage(config);
    let row: number | undefined;
    let stagingDir: string | undefined;
    try {
      await admin(`CREATE DATABASE ${sourceDb}`);
      await admin("CREATE TABLE t (v text); INSERT INTO t VALUES ('from the dump')", sourceDb);
      const source = new URL(DATABASE_URL);
      source.pathname = `/${sourceDb}`;
      const dump = join(work, 'rogue.pgdump');
      await dumpPostgres(source.toString(), dump);
      const size = await fileSize(dump);
      const takenAt = new Date('2026-02-01T00:00:00Z');
      const key = backupKey('rogue', takenAt);
      const databases = [
        {
          name: 'shop',
          filename: 'shop.pgdump',
          size_bytes: size,
          checksum: await fileChecksum(dump),
          kind: 'postgres' as const,
          source: `postgres://postgres@127.0.0.1:${trapPort}/${sourceDb}`,
        },
      ];
      const body = createBackupArchive(
        { timestamp: '2026-02-01T00:00:00Z', version: '1', stowage_version: '0.1.0', set: 'rogue', databases },
        [{ filename: 'shop.pgdump', path: dump, size }],
      );
      const uploaded = await uploadStream(storage, { key, body });
      row = await recordBackup(db, {
        set: 'rogue',
        bucket: s3.bucket,
        key,
        takenAt,
        size: uploaded.size,
        sha256: uploaded.sha256,
        verified: true,
        databases,
        queue: null,
        jobId: null,
      });

      const staged = await stowage(['backup', 'restore', backupName(key), '--pg-database', targetDb]);
      expect(staged.code, staged.stderr).toBe(0);
      stagingDir = /apply with: stowage backup apply-restore --dir (\S+)/.exec(staged.stdout)![1]!;

      const refused = await stowage(['backup', 'apply-restore', '--dir', stagingDir]);
      expect(connections).toEqual([]);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toMatch(/postgres shop: no server to restore to\. .*--pg-url/);
      expect(await admin(`SELECT 1 FROM pg_database WHERE datname = '${targetDb}'`)).toEqual([]);

      const applied = await stowage(['backup', 'apply-restore', '--dir', stagingDir, '--pg-url', DATABASE_URL]);
      expect(applied.code, applied.stderr).toBe(0);
      expect(applied.stdout).toContain(`restored postgres shop into database ${targetDb} (created)`);
      expect(await admin('SELECT v FROM t', targetDb)).toEqual([{ v: 'from the dump' }]);
      expect(connections).toEqual([]);
    } finally {
      // Out of the listings the later tests count, and out of the temp folder apply-restore searches.
      if (row !== undefined) await markBackupDeleted(db, row, 'test: crafted archive');
      if (stagingDir) await rm(dirname(stagingDir), { recursive: true, force: true });
      storage.close();
      await new Promise<void>((resolve) => trap.close(() => resolve()));
      for (const d of [targetDb, sourceDb]) await admin(`DROP DATABASE IF EXISTS ${d} WITH (FORCE)`).catch(() => {});
    }
  });

  it('drill restores the newest backup into a scratch folder and verifies it; non-zero when it cannot', async () => {
    const [ok, none] = await Promise.all([stowage(['backup', 'drill', '--set', 'app']), stowage(['backup', 'drill', '--set', 'ghost'])]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(new RegExp(`^ok\\tapp\\t${names[0]}\\t\\d+ ms\\n  ok\\tsqlite main: integrity_check ok`));
    expect(none.code).toBe(1);
    expect(none.stdout).toMatch(/^FAILED\tghost\t-/);
    expect(none.stderr).toContain('drill failed for ghost (no completed backup of set ghost)');
    expect((await readdir(tmpdir())).filter((n) => n.startsWith('stowage-drill-app-'))).toEqual([]);
  });

  it('test-connection reports each step; non-zero when the store is unreachable', async () => {
    const port = await closedPort();
    const [ok, down] = await Promise.all([
      stowage(['backup', 'test-connection']),
      stowage(['backup', 'test-connection'], { R2_ENDPOINT: `http://127.0.0.1:${port}`, STOWAGE_S3_MAX_ATTEMPTS: '1' }),
    ]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(
      ok.stdout
        .split('\n')
        .slice(1, 6)
        .map((l) => l.split('\t').slice(0, 2).join(' ')),
    ).toEqual(['put ok', 'head ok', 'get ok', 'list ok', 'delete ok']);
    expect(down.code).toBe(1);
    expect(down.stdout).toMatch(/^put\tFAILED/m);
    expect(down.stderr).toMatch(/^stowage: test-connection: put failed/m);
  });

  it('prune --dry-run prints every backup with its reason and deletes nothing; prune deletes; delete removes one', async () => {
    const dry = await stowage(['backup', 'prune', '--dry-run']);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout.trim().split('\n')).toEqual([
      `keep\t${names[0]}\tnewest, last 1/1`,
      `would delete\t${names[1]}\tno rule keeps it`,
      'set app: 1 kept, 1 would be deleted (dry run)',
    ]);
    expect(JSON.parse((await stowage(['backup', 'list', '--json'])).stdout)).toHaveLength(2);

    const real = await stowage(['backup', 'prune', '--set', 'app']);
    expect(real.code, real.stderr).toBe(0);
    expect(real.stdout).toContain(`deleted\t${names[1]}\tno rule keeps it`);
    expect(JSON.parse((await stowage(['backup', 'list', '--json'])).stdout)).toHaveLength(1);

    const adhoc = await stowage(['backup', 'now', '--name', 'adhoc', '--sqlite', `db=${appDb}`, '--wait']);
    expect(adhoc.code, adhoc.stderr).toBe(0);
    const adhocName = (JSON.parse(adhoc.stdout) as { key: string }).key
      .split('/')
      .at(-1)!
      .replace(/\.tar\.gz$/, '');
    expect(adhocName).toMatch(/^adhoc-backup-/);
    const del = await stowage(['backup', 'delete', adhocName]);
    expect(del.code, del.stderr).toBe(0);
    expect(del.stdout.trim()).toBe(`deleted ${adhocName}`);
    const gone = await stowage(['backup', 'delete', adhocName]);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toContain('(it was deleted)');
    expect((await stowage(['backup', 'list'])).stdout).not.toContain('adhoc');
  });
});
