/**
 * Two-phase restore of a backup archive (Litestream / WAL-G discipline: verify before swap, keep a
 * safety copy).
 *
 * Stage (`stageRestore`): download the archive into a staging folder on the target filesystem,
 * check its SHA-256 against the `<key>.sha256` sidecar, unpack it entry by entry refusing anything
 * that is not a plain file with a bare name declared in backup-metadata.json at the declared size
 * (so `../x`, `/abs`, links and oversized entries never reach the disk), check every file's
 * checksum, run `PRAGMA integrity_check` and `foreign_key_check` on each database, then write the
 * `.pending-restore` flag. Any refusal removes the staging folder.
 *
 * Apply (`applyRestore`, for `stowage backup apply-restore` or an application at start-up, with
 * the databases closed): for each database a consistent safety copy (`VACUUM INTO
 * <target>.pre-restore-<stamp>`), stale -wal/-shm/-journal removed, the staged file renamed into
 * place, the folder fsynced, the database reopened and quick_checked. Any failure puts every
 * database already swapped back from its safety copy.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { copyFile, mkdir, open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, isAbsolute, join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import Database from 'better-sqlite3';
import tar from 'tar-stream';
import { PermanentError } from '../errors.js';
import { BACKUP_METADATA_FILE, type BackupMetadata } from '../storage/backup-archive.js';
import type { Storage } from '../storage/client.js';
import { sha256SidecarKey } from '../storage/keys.js';
import { storeError } from '../storage/upload.js';
import { quickCheck } from './backup.js';

export const PENDING_RESTORE_FLAG = '.pending-restore';
export const STAGING_DIR_NAME = '.stowage-restore';

export interface PendingRestore {
  key: string;
  sha256: string;
  stagedAt: string;
  timestamp: string;
  databases: { name: string; staged: string; target: string }[];
}

const SAFE_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/;

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

function parseMetadata(bytes: Buffer): BackupMetadata {
  let m: BackupMetadata;
  try {
    m = JSON.parse(bytes.toString('utf8')) as BackupMetadata;
  } catch {
    refuse(`${BACKUP_METADATA_FILE} is not JSON`);
  }
  if (!m || typeof m.timestamp !== 'string' || !Array.isArray(m.databases) || m.databases.length === 0) refuse(`${BACKUP_METADATA_FILE} is malformed`);
  const seen = new Set<string>();
  for (const d of m.databases) {
    if (typeof d.filename !== 'string' || !SAFE_NAME.test(d.filename) || d.filename === BACKUP_METADATA_FILE) refuse(`bad filename ${JSON.stringify(d.filename)}`);
    if (seen.has(d.filename)) refuse(`duplicate filename ${d.filename}`);
    seen.add(d.filename);
    if (!Number.isSafeInteger(d.size_bytes) || d.size_bytes < 0) refuse(`bad size for ${d.filename}`);
    if (typeof d.checksum !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(d.checksum)) refuse(`bad checksum for ${d.filename}`);
    if (typeof d.source_path !== 'string' || !isAbsolute(d.source_path)) refuse(`bad source_path for ${d.filename}`);
  }
  return m;
}

/**
 * Stage a restore of `key`. Targets are each database's `source_path`, or `toDir/<filename>`.
 * Returns the staging folder (holding the flag) and the plan.
 */
export async function stageRestore(storage: Storage, key: string, options: { toDir?: string } = {}): Promise<{ stagingDir: string; pending: PendingRestore }> {
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
  // it, under the first database's folder once known; the archive goes to a temp name meanwhile.
  const stagingParent = options.toDir;
  const download = async (dir: string): Promise<string> => {
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir, { recursive: true });
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
    // Peek the metadata from a verified download in the system temp folder, then stage for real.
    const peekDir = join(tmpdir(), `stowage-restore-peek-${process.pid}-${Date.now()}`);
    try {
      const archive = await download(peekDir);
      const metadata = await readMetadataOnly(archive);
      const dirs = new Set(metadata.databases.map((d) => dirname(d.source_path)));
      if (dirs.size !== 1) refuse('databases live in several folders; restore with --to DIR');
      stagingDir = join([...dirs][0]!, STAGING_DIR_NAME);
    } finally {
      await rm(peekDir, { recursive: true, force: true });
    }
  }

  try {
    const archive = await download(stagingDir);
    const metadata = await extract(archive, stagingDir);
    await rm(archive, { force: true });
    const databases = metadata.databases.map((d) => ({
      name: d.name,
      staged: join(stagingDir, d.filename),
      target: options.toDir ? join(options.toDir, d.filename) : d.source_path,
    }));
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
    const pending: PendingRestore = { key, sha256: expected, stagedAt: new Date().toISOString(), timestamp: metadata.timestamp, databases };
    await writeFile(join(stagingDir, PENDING_RESTORE_FLAG), `${JSON.stringify(pending, null, 2)}\n`, { mode: 0o600 });
    return { stagingDir, pending };
  } catch (err) {
    await rm(stagingDir, { recursive: true, force: true });
    throw err;
  }
}

/** Read and validate only the first entry (the metadata) of an archive. */
async function readMetadataOnly(archive: string): Promise<BackupMetadata> {
  const ex = tar.extract();
  const source = createReadStream(archive).pipe(createGunzip());
  source.pipe(ex);
  try {
    for await (const entry of ex) {
      if (entry.header.name !== BACKUP_METADATA_FILE || entry.header.type !== 'file') refuse(`the first entry must be ${BACKUP_METADATA_FILE}`);
      const chunks: Buffer[] = [];
      for await (const c of entry) chunks.push(c as Buffer);
      return parseMetadata(Buffer.concat(chunks));
    }
    refuse('empty archive');
  } finally {
    source.destroy();
    ex.destroy();
  }
}

/** Unpack into `dir`, refusing hostile entries before writing them; checks each file's checksum. */
async function extract(archive: string, dir: string): Promise<BackupMetadata> {
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
      if (isAbsolute(name) || name.split(/[/\\]/).includes('..') || !SAFE_NAME.test(name)) refuse(`entry name ${JSON.stringify(name)} is not a bare file name`);
      if (!metadata) {
        if (name !== BACKUP_METADATA_FILE) refuse(`the first entry must be ${BACKUP_METADATA_FILE}`);
        const chunks: Buffer[] = [];
        for await (const c of entry) chunks.push(c as Buffer);
        metadata = parseMetadata(Buffer.concat(chunks));
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

const exists = (p: string) => stat(p).then(() => true, () => false);

export interface ApplyResult {
  databases: { name: string; target: string; safetyCopy: string | null }[];
}

/**
 * Apply a staged restore. `hooks.afterSwap` is called after each rename (tests inject failures
 * there). On failure every swapped database is put back from its safety copy and the error is
 * rethrown; the staging folder is kept for inspection. On success the staging folder is removed.
 */
export async function applyRestore(stagingDir: string, hooks: { afterSwap?: (name: string) => void | Promise<void> } = {}): Promise<ApplyResult> {
  let pending: PendingRestore;
  try {
    pending = JSON.parse(await readFile(join(stagingDir, PENDING_RESTORE_FLAG), 'utf8')) as PendingRestore;
  } catch (err) {
    throw new PermanentError(`no pending restore in ${stagingDir}: ${(err as Error).message}`, { cause: err });
  }
  const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d{3}Z$/, 'Z');
  const done: { name: string; target: string; safetyCopy: string | null }[] = [];
  try {
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
      await hooks.afterSwap?.(d.name);
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
    throw err;
  }
  await rm(stagingDir, { recursive: true, force: true });
  return { databases: done };
}
