/**
 * Two-phase restore of a backup archive (Litestream / WAL-G discipline: verify before swap, keep a
 * safety copy).
 *
 * Stage (`stageRestore`): download the archive into a staging folder on the target filesystem,
 * check its SHA-256 against the `<key>.sha256` sidecar, validate every field of
 * backup-metadata.json (archive.ts `backupMetadataSchema`: the set-name rule, engines, sizes,
 * checksums, time, sources without passwords), unpack it entry by entry refusing anything that is
 * not a plain file with a bare name declared in the metadata at the declared size (so `../x`,
 * `/abs`, links and oversized entries never reach the disk), check every file's checksum, run
 * `PRAGMA integrity_check` and `foreign_key_check` on each database, then write the
 * `.pending-restore` flag. Any refusal removes the staging folder.
 *
 * The archive chooses no destination: SQLite files go to `toDir` or to the configured set's paths,
 * PostgreSQL dumps to the server the operator or the configuration names at apply; the archive's
 * `source_path` and `source` are informational.
 *
 * Apply (`applyRestore`, for `stowage backup apply-restore` or an application at start-up, with
 * the databases closed): for each database a consistent safety copy (`VACUUM INTO
 * <target>.pre-restore-<stamp>`), stale -wal/-shm/-journal removed, the staged file renamed into
 * place, the folder fsynced, the database reopened and quick_checked. Any failure puts every
 * database already swapped back from its safety copy.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { copyFile, mkdir, mkdtemp, open, readFile, rename, rm, rmdir, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, isAbsolute, join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import Database from 'better-sqlite3';
import pg from 'pg';
import tar from 'tar-stream';
import type { BackupDatabaseEntry } from '../db/backups.js';
import { PermanentError, StowageError, ValidationError } from '../errors.js';
import type { Storage } from '../storage/client.js';
import { BACKUP_KEY_PATTERN, sha256SidecarKey } from '../storage/keys.js';
import { resolveInsideRoots, sourceRootProblem } from '../storage/source-roots.js';
import { storeError } from '../storage/store-errors.js';
import { ARCHIVE_FILENAME, BACKUP_METADATA_FILE, backupMetadataSchema, type BackupMetadata } from './archive.js';
import { postgresConnection, postgresUrlFor, runPgTool } from './postgres.js';
import { quickCheck } from './snapshot.js';

export const PENDING_RESTORE_FLAG = '.pending-restore';
export const STAGING_DIR_NAME = '.stowage-restore';

export interface PendingRestore {
  key: string;
  sha256: string;
  stagedAt: string;
  timestamp: string;
  /** SQLite databases: swapped into place by apply. */
  databases: { name: string; staged: string; target: string }[];
  /** PostgreSQL dumps: restored by apply into `targetDatabase`, a new database unless `force`. */
  postgres?: { name: string; staged: string; source: string; sourceDatabase: string; targetDatabase: string; force: boolean }[];
}

export interface StageOptions {
  /** Restore the SQLite files into this folder instead of their source paths. */
  toDir?: string;
  /** PostgreSQL: the database to restore into (with several dumps, `<this>_<name>`). Default `<source>_restored_<stamp>`. */
  pgDatabase?: string;
  /** PostgreSQL: allow restoring over an existing database, the source included. */
  force?: boolean;
  /**
   * The caller's configured backup set of this backup's name, if it has one. Without `toDir`, SQLite
   * files go only to its paths (by database name): the archive's `source_path` is what the archive
   * says, not a target, so a backup of a set not configured here needs `toDir`.
   */
  configuredSet?: { name: string; sqlite: readonly { name: string; path: string }[] } | undefined;
  /**
   * Hold `toDir` to these folders (the source roots): refused by its text (ValidationError), then
   * after resolving links (PermanentError), and staged at the resolved path. HTTP gives them; the
   * CLI, run by an operator on the host, does not. Configured set paths are never checked.
   */
  sourceRoots?: readonly string[];
}

const isPostgres = (d: Pick<BackupDatabaseEntry, 'kind'>) => d.kind === 'postgres';
const PG_IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_$-]{0,62}$/;

function refuse(message: string): never {
  throw new PermanentError(`restore refused: ${message}`);
}

async function readBody(storage: Storage, key: string): Promise<NodeJS.ReadableStream> {
  try {
    const res = await storage.client.send(new GetObjectCommand({ Bucket: storage.bucket, Key: key }));
    return res.Body as NodeJS.ReadableStream;
  } catch (err) {
    throw storeError(err, `download ${key}`);
  }
}

/**
 * The archive's metadata, every field checked (archive.ts `backupMetadataSchema`); any bad field is
 * refused by name before anything is staged. A backup stored under a set's key must say that set.
 */
function parseMetadata(bytes: Buffer, key: string): BackupMetadata {
  let raw: unknown;
  try {
    raw = JSON.parse(bytes.toString('utf8'));
  } catch {
    refuse(`${BACKUP_METADATA_FILE} is not JSON`);
  }
  const parsed = backupMetadataSchema.safeParse(raw);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.length ? i.path.map(String).join('.') : '(metadata)'}: ${i.message}`);
    refuse(`${BACKUP_METADATA_FILE}: ${issues.join('; ')}`);
  }
  // JSON holds no `undefined`, so zod's `?: T | undefined` fields are the interface's `?: T`.
  const m = parsed.data as BackupMetadata;
  const keySet = BACKUP_KEY_PATTERN.exec(key)?.[1];
  if (keySet !== undefined && keySet !== m.set)
    refuse(`${BACKUP_METADATA_FILE}: set: says ${JSON.stringify(m.set)}, but the archive is stored as a backup of set ${keySet}`);
  return m;
}

/**
 * Where each SQLite database of `metadata` goes: `toDir/<filename>`, else the configured set's path
 * for it. Refuses when neither is there: the archive's own `source_path` never chooses a target.
 */
function sqliteTargets(metadata: BackupMetadata, options: StageOptions): Map<string, string> {
  const targets = new Map<string, string>();
  for (const d of metadata.databases.filter((x) => !isPostgres(x))) {
    if (options.toDir) {
      targets.set(d.filename, join(options.toDir, d.filename));
      continue;
    }
    const set = options.configuredSet;
    if (!set || set.name !== metadata.set)
      refuse(`set ${metadata.set} is not configured here, so its archive's source paths are not restore targets; give --to DIR`);
    const configured = set.sqlite.find((c) => c.name === d.name);
    if (!configured) refuse(`set ${set.name} has no configured sqlite database named ${d.name}; give --to DIR`);
    targets.set(d.filename, configured.path);
  }
  return targets;
}

/** `options` with `toDir` held to `sourceRoots` when both are given, and resolved (see StageOptions). */
async function withCheckedTarget(options: StageOptions): Promise<StageOptions> {
  const roots = options.sourceRoots;
  if (options.toDir === undefined || !roots) return options;
  const problem = sourceRootProblem(options.toDir, roots);
  if (problem) throw new ValidationError('restore request', [`to: ${problem}`]);
  return { ...options, toDir: await resolveInsideRoots('to', options.toDir, roots) };
}

/** A private folder directly under the temp folder (mkdtemp: 0700, unguessable), checked to be there. */
async function privateTempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  if (dirname(dir) !== tmpdir()) {
    await rm(dir, { recursive: true, force: true });
    refuse(`temp folder ${JSON.stringify(prefix)} would not be directly under ${tmpdir()}`);
  }
  return dir;
}

/**
 * Stage a restore of `key`. SQLite targets are `toDir/<filename>`, or the configured set's paths
 * (`configuredSet`); never the archive's `source_path`. Returns the staging folder (holding the
 * flag) and the plan.
 */
export async function stageRestore(
  storage: Storage,
  key: string,
  given: StageOptions = {},
): Promise<{ stagingDir: string; pending: PendingRestore }> {
  if (given.toDir !== undefined && !isAbsolute(given.toDir))
    throw new PermanentError(`restore: --to must be an absolute path, got ${JSON.stringify(given.toDir)}`);
  const options = await withCheckedTarget(given);
  if (options.pgDatabase !== undefined && !PG_IDENTIFIER.test(options.pgDatabase)) {
    throw new PermanentError(
      `restore: ${JSON.stringify(options.pgDatabase)} is not a usable database name (letters, digits, _ $ -; at most 63)`,
    );
  }
  // The sidecar first: no archive is read without a checksum to hold it to.
  let expected: string;
  try {
    const sidecar = (await readBody(storage, sha256SidecarKey(key))) as AsyncIterable<Buffer>;
    const chunks: Buffer[] = [];
    for await (const c of sidecar) chunks.push(Buffer.from(c));
    expected = Buffer.concat(chunks).toString('utf8').split(/\s+/)[0] ?? '';
  } catch (err) {
    throw storeError(err, `read ${sha256SidecarKey(key)}`);
  }
  if (!/^[0-9a-f]{64}$/.test(expected)) refuse(`sidecar of ${key} holds no SHA-256`);

  // The staging folder sits next to the targets, so the swap is a rename on one filesystem. We
  // learn the targets from the metadata, so download first into a folder under toDir or, without
  // it, under the first database's configured folder once known; the archive goes to a temp name meanwhile.
  const stagingParent = options.toDir;
  const download = async (dir: string, fresh = true): Promise<string> => {
    if (fresh) {
      await rm(dir, { recursive: true, force: true });
      await mkdir(dir, { recursive: true });
    }
    const file = join(dir, 'archive.tar.gz');
    const hash = createHash('sha256');
    await pipeline(
      await readBody(storage, key),
      new Transform({
        transform(chunk: Buffer, _enc, cb) {
          hash.update(chunk);
          cb(null, chunk);
        },
      }),
      createWriteStream(file, { flags: 'wx', mode: 0o600 }),
    );
    const actual = hash.digest('hex');
    if (actual !== expected) refuse(`archive SHA-256 ${actual} does not match its sidecar ${expected}`);
    return file;
  };

  let stagingDir = stagingParent ? join(stagingParent, STAGING_DIR_NAME) : '';
  if (!stagingDir) {
    // Peek the metadata from a verified download in a private temp folder, then stage for real.
    const peekDir = await privateTempDir('stowage-restore-peek-');
    try {
      const archive = await download(peekDir, false);
      const metadata = await readMetadataOnly(archive, key);
      const dirs = new Set([...sqliteTargets(metadata, options).values()].map((t) => dirname(t)));
      if (dirs.size > 1) refuse('databases live in several folders; restore with --to DIR');
      // PostgreSQL dumps only: nothing lands next to a live file, so stage in a private temp
      // folder (apply-restore finds it by its prefix). The set name passed the set-name rule.
      stagingDir = join(dirs.size ? [...dirs][0]! : await privateTempDir(`stowage-restore-${metadata.set}-`), STAGING_DIR_NAME);
    } finally {
      await rm(peekDir, { recursive: true, force: true });
    }
  }

  try {
    const archive = await download(stagingDir);
    const metadata = await extract(archive, stagingDir, key);
    await rm(archive, { force: true });
    const targets = sqliteTargets(metadata, options);
    const databases = metadata.databases
      .filter((d) => !isPostgres(d))
      .map((d) => ({ name: d.name, staged: join(stagingDir, d.filename), target: targets.get(d.filename)! }));
    const dumps = metadata.databases.filter(isPostgres);
    const stamp = new Date().toISOString().replace(/[-:T]/g, '').slice(0, 14);
    const postgres = dumps.map((d) => {
      const sourceDatabase = postgresConnection(d.source!).database;
      const targetDatabase = options.pgDatabase
        ? dumps.length === 1
          ? options.pgDatabase
          : `${options.pgDatabase}_${d.name}`.slice(0, 63)
        : `${sourceDatabase.slice(0, 30)}_restored_${stamp}`;
      if (!PG_IDENTIFIER.test(targetDatabase))
        refuse(`${JSON.stringify(targetDatabase)} is not a usable database name; give --pg-database`);
      if (targetDatabase === sourceDatabase && !options.force) {
        refuse(`restoring ${d.name} into ${targetDatabase} would overwrite the source database; pick another name or give --force`);
      }
      return {
        name: d.name,
        staged: join(stagingDir, d.filename),
        source: d.source!,
        sourceDatabase,
        targetDatabase,
        force: Boolean(options.force),
      };
    });
    for (const d of postgres) {
      // The custom-format table of contents reads back: the dump is whole and pg_restore can use it.
      await runPgTool('pg_restore', ['--list', d.staged]).catch((err: unknown) =>
        refuse(`${basename(d.staged)} is not a readable pg_dump archive: ${(err as Error).message}`),
      );
    }
    for (const d of databases) {
      const integrity = quickCheck(d.staged, 'integrity_check');
      if (integrity.length) refuse(`${basename(d.staged)} fails integrity_check: ${integrity.slice(0, 5).join('; ')}`);
      const db = new Database(d.staged, { readonly: true, fileMustExist: true });
      try {
        const fk = db.pragma('foreign_key_check') as unknown[];
        if (fk.length) refuse(`${basename(d.staged)} fails foreign_key_check (${fk.length} rows)`);
      } finally {
        db.close();
      }
    }
    const pending: PendingRestore = {
      key,
      sha256: expected,
      stagedAt: new Date().toISOString(),
      timestamp: metadata.timestamp,
      databases,
      ...(postgres.length ? { postgres } : {}),
    };
    await writeFile(join(stagingDir, PENDING_RESTORE_FLAG), `${JSON.stringify(pending, null, 2)}\n`, { mode: 0o600 });
    return { stagingDir, pending };
  } catch (err) {
    await removeStaging(stagingDir);
    throw err;
  }
}

/** Remove a staging folder, and its parent when that is an emptied private temp folder. */
async function removeStaging(stagingDir: string): Promise<void> {
  await rm(stagingDir, { recursive: true, force: true });
  const parent = dirname(stagingDir);
  if (dirname(parent) === tmpdir() && basename(parent).startsWith('stowage-restore-')) await rmdir(parent).catch(() => {});
}

/** Metadata is a few kB; anything near this is a bomb, refused before it is read into memory. */
const MAX_METADATA_BYTES = 1024 * 1024;

/** The metadata entry's bytes, refused when its header or its content is larger than the bound. */
async function readMetadataEntry(entry: AsyncIterable<unknown> & { header: { size?: number } }): Promise<Buffer> {
  const tooBig = () => refuse(`${BACKUP_METADATA_FILE} is larger than ${MAX_METADATA_BYTES} bytes`);
  if ((entry.header.size ?? 0) > MAX_METADATA_BYTES) tooBig();
  const chunks: Buffer[] = [];
  let bytes = 0;
  for await (const c of entry) {
    bytes += (c as Buffer).length;
    if (bytes > MAX_METADATA_BYTES) tooBig();
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks);
}

/** Read and validate only the first entry (the metadata) of an archive. */
async function readMetadataOnly(archive: string, key: string): Promise<BackupMetadata> {
  const ex = tar.extract();
  const source = createReadStream(archive).pipe(createGunzip());
  source.pipe(ex);
  try {
    for await (const entry of ex) {
      if (entry.header.name !== BACKUP_METADATA_FILE || entry.header.type !== 'file')
        refuse(`the first entry must be ${BACKUP_METADATA_FILE}`);
      return parseMetadata(await readMetadataEntry(entry), key);
    }
    refuse('empty archive');
  } finally {
    source.destroy();
    ex.destroy();
  }
}

/** Unpack into `dir`, refusing hostile entries before writing them; checks each file's checksum. */
async function extract(archive: string, dir: string, key: string): Promise<BackupMetadata> {
  const ex = tar.extract();
  const source = createReadStream(archive).pipe(createGunzip());
  source.on('error', (err) => ex.destroy(err));
  source.pipe(ex);
  let metadata: BackupMetadata | null = null;
  const written = new Set<string>();
  try {
    for await (const entry of ex) {
      const { name, type, size } = entry.header;
      if (type !== 'file') refuse(`entry ${JSON.stringify(name)} is a ${type}, not a file`);
      if (isAbsolute(name) || name.split(/[/\\]/).includes('..') || !ARCHIVE_FILENAME.test(name))
        refuse(`entry name ${JSON.stringify(name)} is not a bare file name`);
      if (!metadata) {
        if (name !== BACKUP_METADATA_FILE) refuse(`the first entry must be ${BACKUP_METADATA_FILE}`);
        metadata = parseMetadata(await readMetadataEntry(entry), key);
        continue;
      }
      const declared = metadata.databases.find((d) => d.filename === name);
      if (!declared) refuse(`entry ${name} is not in ${BACKUP_METADATA_FILE}`);
      if (written.has(name)) refuse(`entry ${name} appears twice`);
      if (size !== declared.size_bytes) refuse(`entry ${name} is ${size} bytes, ${declared.size_bytes} declared`);
      const hash = createHash('sha256');
      let bytes = 0;
      await pipeline(
        entry,
        new Transform({
          transform(chunk: Buffer, _enc, cb) {
            bytes += chunk.length;
            if (bytes > declared.size_bytes) return cb(new PermanentError(`restore refused: entry ${name} is larger than declared`));
            hash.update(chunk);
            cb(null, chunk);
          },
        }),
        createWriteStream(join(dir, name), { flags: 'wx', mode: 0o600 }),
      );
      written.add(name);
      const checksum = `sha256:${hash.digest('hex')}`;
      if (checksum !== declared.checksum) refuse(`${name} checksum ${checksum} does not match the metadata ${declared.checksum}`);
    }
  } finally {
    source.destroy();
  }
  if (!metadata) refuse('empty archive');
  const missing = metadata.databases.filter((d) => !written.has(d.filename));
  if (missing.length) refuse(`missing from the archive: ${missing.map((d) => d.filename).join(', ')}`);
  return metadata;
}

async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );

export interface ApplyResult {
  databases: { name: string; target: string; safetyCopy: string | null }[];
  postgres: { name: string; database: string; created: boolean }[];
}

export interface ApplyOptions {
  /** Called after each SQLite rename (tests inject failures there). */
  afterSwap?: (name: string) => void | Promise<void>;
  /**
   * The server a PostgreSQL dump is restored to, by database name in the backup: a URL (its
   * database is only used to connect; a password in it goes to PGPASSWORD; without one libpq uses
   * PGPASSWORD or ~/.pgpass). Required for every dump: the operator or the configuration names the
   * server, never the archive (its recorded `source` is informational), so a password is never
   * sent to a server an archive chose.
   */
  postgresUrl?: (name: string) => string | undefined;
}

/** Run `fn` on an admin connection to the server of `url`: its own database, else `postgres`. */
async function withPgAdmin<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const conn = postgresConnection(url);
  const connect = async (database: string): Promise<pg.Client> => {
    const client = new pg.Client({
      connectionString: postgresUrlFor(url, database),
      ...(conn.password !== undefined ? { password: conn.password } : {}),
      connectionTimeoutMillis: 10_000,
    });
    client.on('error', () => {});
    await client.connect();
    return client;
  };
  let client: pg.Client;
  try {
    client = await connect(conn.database);
  } catch (err) {
    // The restore may be the answer to a lost database: fall back to the maintenance database.
    if ((err as { code?: string }).code !== '3D000')
      throw new StowageError('STOWAGE_ERR_INTERNAL', `postgres ${conn.url}: cannot connect: ${(err as Error).message}`, { cause: err });
    client = await connect('postgres');
  }
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => {});
  }
}

/** Drop a database (restore rollback, drill clean-up). */
export async function dropPostgresDatabase(url: string, database: string): Promise<void> {
  await withPgAdmin(url, async (client) => {
    await client.query(`DROP DATABASE IF EXISTS ${client.escapeIdentifier(database)} WITH (FORCE)`);
  });
}

/**
 * pg_restore a custom-format dump into `database` on the server of `url`: created first (it must
 * not exist), or, with `force`, restored over the existing one (`--clean --if-exists`). A failed
 * restore into a database it created drops that database again. Returns whether it created it.
 */
export async function restorePostgres(dump: string, url: string, database: string, options: { force?: boolean } = {}): Promise<boolean> {
  if (!PG_IDENTIFIER.test(database)) throw new PermanentError(`restore: ${JSON.stringify(database)} is not a usable database name`);
  const conn = postgresConnection(url);
  const created = await withPgAdmin(url, async (client) => {
    const { rowCount } = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [database]);
    if (rowCount) {
      if (!options.force) refuse(`database ${database} already exists; pick a new name or give --force to restore over it`);
      return false;
    }
    await client.query(`CREATE DATABASE ${client.escapeIdentifier(database)}`);
    return true;
  });
  try {
    await runPgTool(
      'pg_restore',
      // Owners and grants of the source may not exist here; the restoring user owns the copy.
      [
        '--dbname',
        postgresUrlFor(url, database),
        '--no-owner',
        '--no-privileges',
        '--exit-on-error',
        ...(created ? [] : ['--clean', '--if-exists']),
        dump,
      ],
      { password: conn.password },
    );
  } catch (err) {
    if (created) await dropPostgresDatabase(url, database).catch(() => {});
    throw err;
  }
  return created;
}

/** The plan in a staging folder's `.pending-restore`. */
export async function readPendingRestore(stagingDir: string): Promise<PendingRestore> {
  try {
    return JSON.parse(await readFile(join(stagingDir, PENDING_RESTORE_FLAG), 'utf8')) as PendingRestore;
  } catch (err) {
    throw new PermanentError(`no pending restore in ${stagingDir}: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Apply a staged restore. PostgreSQL dumps go first (into new databases: nothing live changes),
 * then each SQLite database is swapped in. On failure every swapped database is put back from its
 * safety copy, databases this run created are dropped, and the error is rethrown; the staging
 * folder is kept for inspection. On success the staging folder is removed.
 */
export async function applyRestore(stagingDir: string, options: ApplyOptions = {}): Promise<ApplyResult> {
  const pending = await readPendingRestore(stagingDir);
  const stamp = new Date()
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d{3}Z$/, 'Z');
  const done: { name: string; target: string; safetyCopy: string | null }[] = [];
  const restored: { name: string; database: string; created: boolean; url: string }[] = [];
  // Every dump's server is known before anything changes.
  const servers = new Map<string, string>();
  for (const d of pending.postgres ?? []) {
    const url = options.postgresUrl?.(d.name);
    if (!url)
      refuse(
        `postgres ${d.name}: no server to restore to. The backup's set is not configured here, so name the server: ` +
          `stowage backup apply-restore --pg-url postgres://user@host:port/db (password in PGPASSWORD). ` +
          `The archive's recorded source ${d.source} is informational and never connected to`,
      );
    servers.set(d.name, url);
  }
  try {
    for (const d of pending.postgres ?? []) {
      if (d.targetDatabase === d.sourceDatabase && !d.force)
        refuse(`${d.name}: would restore over the source database ${d.sourceDatabase}`);
      const url = servers.get(d.name)!;
      const created = await restorePostgres(d.staged, url, d.targetDatabase, { force: d.force });
      restored.push({ name: d.name, database: d.targetDatabase, created, url });
    }
    for (const d of pending.databases) {
      await mkdir(dirname(d.target), { recursive: true });
      let safetyCopy: string | null = null;
      if (await exists(d.target)) {
        safetyCopy = `${d.target}.pre-restore-${stamp}`;
        const live = new Database(d.target, { readonly: true, fileMustExist: true });
        try {
          live.prepare('VACUUM INTO ?').run(safetyCopy);
        } finally {
          live.close();
        }
      }
      done.push({ name: d.name, target: d.target, safetyCopy });
      for (const suffix of ['-wal', '-shm', '-journal']) await rm(`${d.target}${suffix}`, { force: true });
      await rename(d.staged, d.target);
      await fsyncDir(dirname(d.target));
      await options.afterSwap?.(d.name);
      const problems = quickCheck(d.target);
      if (problems.length) throw new Error(`${d.target} fails quick_check after the swap: ${problems.join('; ')}`);
    }
  } catch (err) {
    for (const d of done.reverse()) {
      for (const suffix of ['-wal', '-shm', '-journal']) await rm(`${d.target}${suffix}`, { force: true });
      if (d.safetyCopy) {
        const tmp = `${d.target}.rollback-${stamp}`;
        await copyFile(d.safetyCopy, tmp);
        await rename(tmp, d.target);
      } else {
        await rm(d.target, { force: true });
      }
      await fsyncDir(dirname(d.target));
    }
    for (const r of restored) if (r.created) await dropPostgresDatabase(r.url, r.database).catch(() => {});
    throw err;
  }
  await removeStaging(stagingDir);
  return { databases: done, postgres: restored.map(({ name, database, created }) => ({ name, database, created })) };
}

/** The staging folder for `dir`: `dir` itself when it holds the flag, else `dir/.stowage-restore`. */
export async function stagingDirFor(dir: string): Promise<string | null> {
  for (const candidate of [dir, join(dir, STAGING_DIR_NAME)]) {
    if (await exists(join(candidate, PENDING_RESTORE_FLAG))) return candidate;
  }
  return null;
}

/**
 * What an application calls at start-up, before it opens its databases: if a restore was staged
 * for `dir` (the folder of the databases, or the staging folder), apply it and return what was
 * done; else null. Throws (after rolling back) when the apply fails.
 */
export async function applyPendingRestore(dir: string, options: ApplyOptions = {}): Promise<ApplyResult | null> {
  const staging = await stagingDirFor(dir);
  return staging ? applyRestore(staging, options) : null;
}

/** Throw away a staged restore: removes the staging folder. NotFound-style error when there is none. */
export async function cancelRestore(dir: string): Promise<{ stagingDir: string; pending: PendingRestore }> {
  const staging = await stagingDirFor(dir);
  if (!staging) throw new StowageError('STOWAGE_ERR_NOT_FOUND', `no pending restore in ${dir}`);
  const pending = await readPendingRestore(staging);
  await removeStaging(staging);
  return { stagingDir: staging, pending };
}
