/**
 * A restore trusts nothing an archive says (issue 17, item 5), against the real store (radosgw):
 * every metadata field is validated and a bad one is refused by name before anything is staged; a
 * crafted `set` never places a folder outside the temp folder; the archive's `source_path` is not
 * a restore target unless the operator names one (`toDir`) or the set is configured.
 */
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackupArchive, fileChecksum, fileSize, type BackupMetadata } from '../../src/backups/archive.js';
import { STAGING_DIR_NAME, stageRestore } from '../../src/backups/restore.js';
import { createStorage, type Storage } from '../../src/storage/client.js';
import { uploadStream } from '../../src/storage/upload.js';
import { isolate } from '../helpers/isolation.js';
import { startS3, type TestS3 } from '../helpers/s3.js';

const iso = isolate('restoremeta');
let s3: TestS3;
let storage: Storage;
let work: string;
let snapshot: string;
let entry: BackupMetadata['databases'][number];

/** Valid metadata for one SQLite snapshot; each case below breaks one field. */
const valid = (): BackupMetadata => ({
  timestamp: '2026-01-01T03:00:00Z',
  version: '1',
  stowage_version: '0.1.0',
  set: 'meta',
  databases: [{ ...entry }],
});

let n = 0;
/** Upload an archive (the project's own writer) holding `metadata` and the snapshot, with its sidecar. */
async function upload(metadata: unknown, key = `backups/crafted/crafted-${++n}.tar.gz`): Promise<string> {
  const files = [{ filename: 'main.db', path: snapshot, size: await fileSize(snapshot) }];
  await uploadStream(storage, { key, body: createBackupArchive(metadata as BackupMetadata, files) });
  return key;
}

beforeAll(async () => {
  s3 = await startS3(iso.bucket);
  storage = createStorage(
    iso.config({ storage: { endpoint: s3.endpoint, bucket: s3.bucket, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey } }),
  );
  work = await mkdtemp(join(tmpdir(), 'stowage-metatest-'));
  snapshot = join(work, 'snapshot.db');
  const d = new Database(snapshot);
  d.exec("CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('restored');");
  d.close();
  entry = {
    name: 'main',
    filename: 'main.db',
    size_bytes: await fileSize(snapshot),
    checksum: await fileChecksum(snapshot),
    source_path: join(work, 'live', 'app.db'),
  };
});

afterAll(async () => {
  storage?.close();
  await s3?.close();
  await iso.cleanup();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('restore metadata', () => {
  it.each([
    // The example, and one that would climb from the temp folder into this test's folder.
    ['../../tmp/evil', () => '../../tmp/evil'],
    ['a climb into the test folder', () => `/../../..${work}/evil`],
  ])('refuses a crafted set (%s) and creates nothing outside the temp folder', async (_label, set) => {
    // PostgreSQL-only: the case that stages in a temp folder named after the set.
    const key = await upload({
      ...valid(),
      set: set(),
      databases: [
        {
          name: 'db',
          filename: 'main.db',
          size_bytes: entry.size_bytes,
          checksum: entry.checksum,
          kind: 'postgres',
          source: 'postgres://u@db.example/db',
        },
      ],
    });
    const before = (await readdir(tmpdir())).filter((f) => f.includes('evil'));
    const err = await stageRestore(storage, key).then(
      () => null,
      (e: unknown) => e as Error,
    );
    expect((await readdir(work)).filter((f) => f.includes('evil'))).toEqual([]);
    expect((await readdir(tmpdir())).filter((f) => f.includes('evil'))).toEqual(before);
    expect(err?.message).toMatch(/^restore refused: backup-metadata\.json: set: must not contain/);
  });

  const db0 = (patch: Record<string, unknown>) => ({ ...valid(), databases: [{ ...entry, ...patch }] });
  it.each<[string, () => unknown, RegExp]>([
    [
      'an unknown format version',
      () => ({ ...valid(), version: '2' }),
      /version: unsupported archive format; this Stowage reads version 1/,
    ],
    ['a timestamp that is no time', () => ({ ...valid(), timestamp: 'yesterday' }), /timestamp: expected an ISO 8601 UTC time/],
    ['an unknown engine', () => db0({ kind: 'mysql' }), /databases\.0\.kind: /],
    ['a negative size', () => db0({ size_bytes: -1 }), /databases\.0\.size_bytes: must not be negative/],
    ['a fractional size', () => db0({ size_bytes: 1.5 }), /databases\.0\.size_bytes: must be a whole number of bytes/],
    [
      'a checksum that is not SHA-256',
      () => db0({ checksum: 'md5:d41d8cd98f00b204e9800998ecf8427e' }),
      /databases\.0\.checksum: expected sha256:/,
    ],
    ['a database name with a slash', () => db0({ name: 'a/b' }), /databases\.0\.name: must not contain \/ or \\/],
    ['a relative source_path', () => db0({ source_path: 'data/app.db' }), /databases\.0\.source_path: must be an absolute path/],
    ['a sqlite entry without source_path', () => db0({ source_path: undefined }), /databases\.0\.source_path: a sqlite entry needs/],
    [
      'a source with a password',
      () => db0({ kind: 'postgres', source_path: undefined, source: 'postgres://u:Hunter2Secret@db.example/app' }),
      /databases\.0\.source: must not carry a password/,
    ],
    [
      'a source that is not postgres',
      () => db0({ kind: 'postgres', source_path: undefined, source: 'mysql://u@db.example/app' }),
      /databases\.0\.source: must start with postgres:\/\//,
    ],
    ['an unknown field', () => ({ ...valid(), hooks: ['rm -rf /'] }), /\(metadata\): Unrecognized key: "hooks"/],
    ['no databases', () => ({ ...valid(), databases: [] }), /databases: an archive holds at least one database/],
  ])('refuses %s, naming the field, with nothing staged', async (_label, metadata, message) => {
    const key = await upload(metadata());
    const to = join(work, `to-${n}`);
    await mkdir(to);
    const err = await stageRestore(storage, key, { toDir: to }).then(
      () => null,
      (e: unknown) => e as Error,
    );
    expect(err?.message).toMatch(/^restore refused: backup-metadata\.json: /);
    expect(err?.message).toMatch(message);
    expect(err?.message).not.toContain('Hunter2Secret');
    expect(await readdir(to)).toEqual([]);
  });

  it("refuses metadata naming another set than the backup's key", async () => {
    const key = await upload({ ...valid(), set: 'other' }, 'backups/meta/meta-backup-2026-01-01-030000.tar.gz');
    const to = join(work, 'to-mismatch');
    await mkdir(to);
    await expect(stageRestore(storage, key, { toDir: to })).rejects.toThrow(
      /backup-metadata\.json: set: says "other", but the archive is stored as a backup of set meta/,
    );
    expect(await readdir(to)).toEqual([]);
  });

  it("does not take the archive's source_path as a target: --to or the configured set's path", async () => {
    const key = await upload(valid());
    const live = join(work, 'live');
    await mkdir(live);
    // Not configured here: refused, nothing next to the path the archive names.
    await expect(stageRestore(storage, key)).rejects.toThrow(/set meta is not configured here.*give --to DIR/);
    await expect(
      stageRestore(storage, key, { configuredSet: { name: 'meta', sqlite: [{ name: 'other', path: join(live, 'x.db') }] } }),
    ).rejects.toThrow(/set meta has no configured sqlite database named main; give --to DIR/);
    expect(await readdir(live)).toEqual([]);

    // Configured: the configured path is the target, wherever the archive says the file came from.
    const configuredDir = join(work, 'configured');
    await mkdir(configuredDir);
    await writeFile(join(configuredDir, 'keep.txt'), 'x');
    const { stagingDir, pending } = await stageRestore(storage, key, {
      configuredSet: { name: 'meta', sqlite: [{ name: 'main', path: join(configuredDir, 'app.db') }] },
    });
    expect(stagingDir).toBe(join(configuredDir, STAGING_DIR_NAME));
    expect(pending.databases).toEqual([{ name: 'main', staged: join(stagingDir, 'main.db'), target: join(configuredDir, 'app.db') }]);
    expect(await readdir(live)).toEqual([]);
  });
});
