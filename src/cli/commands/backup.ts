/**
 * `stowage backup …`: database backups (the job: src/workers/backup.ts; the library:
 * src/backups/) and two-phase restores (src/backups/restore.ts). `now` enqueues a job for the workers; everything else runs in
 * this process with this process's configuration. Results go to stdout, progress to stderr.
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { readdir, rename, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import type { Command } from 'commander';
import { deleteBackupObject, describeBackup, resolveBackup } from '../../backups/catalog.js';
import { runRestoreDrill } from '../../backups/drill.js';
import { withBackupLock } from '../../backups/lock.js';
import { pruneBackupSet } from '../../backups/prune.js';
import {
  applyRestore,
  cancelRestore,
  readPendingRestore,
  stageRestore,
  stagingDirFor,
  STAGING_DIR_NAME,
  type PendingRestore,
} from '../../backups/restore.js';
import { DEFAULT_RETENTION, type RetentionPolicy } from '../../backups/retention.js';
import { loadConfig, type Config } from '../../config.js';
import { listAllBackups, markBackupDeleted } from '../../db/backups.js';
import { createDb, type Db } from '../../db/pool.js';
import { StowageError } from '../../errors.js';
import { createLogger, type Logger } from '../../observability/logger.js';
import { createProducer } from '../../producers/index.js';
import { AD_HOC_PASSWORD_MESSAGE, postgresUrlWithoutPassword, type PayloadInput } from '../../queues/index.js';
import { createStorage, type Storage } from '../../storage/client.js';
import { BACKUP_KEY_PATTERN, backupName } from '../../storage/keys.js';
import { storeError } from '../../storage/store-errors.js';
import { probeStore } from '../../storage/verify.js';
import { formatBytes } from '../format.js';

interface Deps {
  config: Config;
  db: Db;
  logger: Logger;
  storage: () => Storage;
}

async function withDeps<T>(fn: (deps: Deps) => Promise<T>): Promise<T> {
  const config = loadConfig();
  // Logs go to stderr so that stdout holds only results.
  const logger = createLogger({ level: config.logLevel === 'info' ? 'warn' : config.logLevel }, process.stderr);
  const db = createDb(config, { max: 2 });
  let storage: Storage | undefined;
  try {
    return await fn({ config, db, logger, storage: () => (storage ??= createStorage(config)) });
  } finally {
    storage?.close();
    await db.close();
  }
}

const out = (line: string) => console.log(line);
const err = (line: string) => process.stderr.write(`${line}\n`);

export function humanAge(seconds: number): string {
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 86_400) return `${Math.floor(seconds / 3600)}h ${Math.floor((seconds % 3600) / 60)}m`;
  return `${Math.floor(seconds / 86_400)}d ${Math.floor((seconds % 86_400) / 3600)}h`;
}

/** `name=value` options (repeatable) → [{ name, [field]: value }]. */
function pairs(flag: string, field: 'path' | 'url') {
  return (value: string, acc: Record<string, string>[] = []): Record<string, string>[] => {
    const i = value.indexOf('=');
    if (i <= 0 || i === value.length - 1)
      throw new StowageError(
        'STOWAGE_ERR_USAGE',
        `${flag}: expected NAME=${field.toUpperCase()}, got "${field === 'url' ? value.replace(/:[^:@/]*@/, ':***@') : value}"`,
      );
    const name = value.slice(0, i);
    const given = value.slice(i + 1);
    if (field === 'url') {
      // Refused here, by flag, before a payload (kept in Redis, shown on the board) could hold it.
      const checked = adHocPostgresUrl.safeParse(given);
      if (!checked.success) throw new StowageError('STOWAGE_ERR_USAGE', `${flag} ${name}: the URL ${checked.error.issues[0]!.message}`);
    }
    return [...acc, { name, [field]: given }];
  };
}

const adHocPostgresUrl = postgresUrlWithoutPassword(AD_HOC_PASSWORD_MESSAGE);

function positive(flag: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isSafeInteger(n) || n < 1)
      throw new StowageError('STOWAGE_ERR_USAGE', `${flag}: expected a positive integer, got "${value}"`);
    return n;
  };
}

/** The staging folders a restore may have left, for apply/cancel without --dir. */
async function findStaged(config: Config): Promise<string[]> {
  const candidates = new Set<string>();
  for (const set of config.backupSets) for (const d of set.sqlite) candidates.add(dirname(d.path));
  for (const name of await readdir(tmpdir()).catch(() => [] as string[]))
    if (name.startsWith('stowage-restore-')) candidates.add(join(tmpdir(), name));
  const found: string[] = [];
  for (const dir of candidates) {
    const staging = await stagingDirFor(dir);
    if (staging) found.push(staging);
  }
  return found;
}

async function locateStaging(config: Config, dir: string | undefined, verb: string): Promise<string> {
  if (dir) {
    const staging = await stagingDirFor(resolve(dir));
    if (!staging)
      throw new StowageError('STOWAGE_ERR_NOT_FOUND', `${verb}: no pending restore in ${resolve(dir)} (nor in its ${STAGING_DIR_NAME})`);
    return staging;
  }
  const found = await findStaged(config);
  if (found.length === 0)
    throw new StowageError('STOWAGE_ERR_NOT_FOUND', `${verb}: no pending restore found next to the configured databases; give --dir`);
  if (found.length > 1) throw new StowageError('STOWAGE_ERR_USAGE', `${verb}: several pending restores (${found.join(', ')}); give --dir`);
  return found[0]!;
}

/** The configured URL (with its password) of a database in the set a pending restore came from. */
function postgresUrlFor(config: Config, pending: PendingRestore, override?: string) {
  const set = BACKUP_KEY_PATTERN.exec(pending.key)?.[1];
  const configured = config.backupSets.find((s) => s.name === set);
  return (name: string) => override ?? configured?.postgres.find((p) => p.name === name)?.url;
}

function printPlan(stagingDir: string, pending: PendingRestore): void {
  out(`staged ${backupName(pending.key)} (taken ${pending.timestamp}) in ${stagingDir}`);
  for (const d of pending.databases) out(`  sqlite   ${d.name}\t-> ${d.target}`);
  for (const d of pending.postgres ?? [])
    out(`  postgres ${d.name}\t-> database ${d.targetDatabase}${d.force ? ' (forced: over an existing database)' : ' (new)'}`);
}

export function registerBackupCommands(program: Command): void {
  const backup = program.command('backup').description('database backups to object storage: take, list, prune, download, restore, drill');

  backup
    .command('now')
    .description('enqueue a backup of a configured set (--set) or an ad hoc one (--name with --sqlite/--postgres)')
    .option('--set <name>', 'a backup set from the configuration')
    .option('--name <name>', 'an ad hoc set name')
    .option('--sqlite <name=path>', 'ad hoc: a SQLite database (repeatable)', pairs('--sqlite', 'path'))
    .option(
      '--postgres <name=url>',
      'ad hoc: a PostgreSQL database URL without a password (repeatable; the workers take it from PGPASSWORD or ~/.pgpass)',
      pairs('--postgres', 'url'),
    )
    .option('--wait', 'wait for the job and print its result as JSON (exit 1 if it fails)')
    .option('--timeout <ms>', 'with --wait: give up after this many ms', positive('--timeout'), 30 * 60_000)
    .action(
      async (opts: {
        set?: string;
        name?: string;
        sqlite?: { name: string; path: string }[];
        postgres?: { name: string; url: string }[];
        wait?: boolean;
        timeout: number;
      }) => {
        if (Boolean(opts.set) === Boolean(opts.name))
          throw new StowageError('STOWAGE_ERR_USAGE', 'backup now: give --set NAME, or --name NAME with --sqlite/--postgres databases');
        if (opts.set && (opts.sqlite || opts.postgres))
          throw new StowageError('STOWAGE_ERR_USAGE', 'backup now: --sqlite and --postgres go with --name, not --set');
        const payload: PayloadInput<'backup'> = opts.set
          ? { set: opts.set, requestedAt: new Date().toISOString() }
          : { name: opts.name!, sqlite: opts.sqlite ?? [], postgres: opts.postgres ?? [], requestedAt: new Date().toISOString() };
        const producer = createProducer(loadConfig());
        try {
          const { jobId } = await producer.backup(payload);
          if (!opts.wait) return out(jobId);
          err(jobId);
          out(JSON.stringify(await producer.waitFor('backup', jobId, opts.timeout), null, 2));
        } finally {
          await producer.close();
        }
      },
    );

  backup
    .command('list')
    .description('list backups, newest first: name, set, age, size')
    .option('--set <name>', 'only this set')
    .option('--json', 'print JSON')
    .action(async (opts: { set?: string; json?: boolean }) => {
      await withDeps(async ({ db }) => {
        const rows = (await listAllBackups(db, opts.set ? { set: opts.set } : {})).map((r) => describeBackup(r));
        if (opts.json) return out(JSON.stringify(rows, null, 2));
        if (!rows.length) return out(opts.set ? `no backups of set ${opts.set}` : 'no backups');
        out('NAME\tSET\tAGE\tSIZE');
        for (const r of rows) out(`${r.name}\t${r.set}\t${humanAge(r.ageSeconds)}\t${formatBytes(r.size)}`);
        out(`${rows.length} backup(s)`);
      });
    });

  backup
    .command('prune')
    .description("apply each set's retention policy; prints every backup with the reason it is kept or deleted")
    .option('--set <name>', 'only this set')
    .option('--dry-run', 'decide and print; delete nothing')
    .action(async (opts: { set?: string; dryRun?: boolean }) => {
      await withDeps(async ({ config, db, logger, storage }) => {
        const names = opts.set ? [opts.set] : config.backupSets.map((s) => s.name);
        if (!names.length) throw new StowageError('STOWAGE_ERR_USAGE', 'backup prune: no backup sets are configured; give --set NAME');
        for (const set of names) {
          let policy: RetentionPolicy | undefined = config.backupSets.find((s) => s.name === set)?.retention;
          if (!policy) {
            policy = { ...DEFAULT_RETENTION };
            err(
              `set ${set} is not configured: using the default retention (keepLast ${DEFAULT_RETENTION.keepLast}, keepWithinDays ${DEFAULT_RETENTION.keepWithinDays})`,
            );
          }
          const res = await withBackupLock(db, set, () =>
            pruneBackupSet({ db, storage: storage(), logger }, set, policy, { dryRun: Boolean(opts.dryRun) }),
          );
          for (const d of res.decisions) {
            const action = d.action === 'delete' ? (opts.dryRun ? 'would delete' : 'deleted') : d.action === 'keep' ? 'keep' : 'ignore';
            out(`${action}\t${backupName(d.backup.key)}\t${d.reasons.join(', ')}`);
          }
          const kept = res.decisions.filter((d) => d.action === 'keep').length;
          const doomed = res.decisions.filter((d) => d.action === 'delete').length;
          out(`set ${set}: ${kept} kept, ${doomed} ${opts.dryRun ? 'would be deleted (dry run)' : 'deleted'}`);
        }
      });
    });

  backup
    .command('download')
    .description('download a backup archive and check its SHA-256')
    .argument('<name>', 'backup name ({set}-backup-YYYY-MM-DD-HHMMSS)')
    .option('--out <file>', 'where to write it (default ./NAME.tar.gz)')
    .action(async (name: string, opts: { out?: string }) => {
      await withDeps(async ({ db, storage }) => {
        const s = storage();
        const row = await resolveBackup(db, s.bucket, name);
        const file = resolve(opts.out ?? `${backupName(row.key)}.tar.gz`);
        if (
          await stat(file).then(
            () => true,
            () => false,
          )
        )
          throw new StowageError('STOWAGE_ERR_USAGE', `download: ${file} exists; remove it or give another --out`);
        let body: NodeJS.ReadableStream;
        try {
          body = (await s.client.send(new GetObjectCommand({ Bucket: s.bucket, Key: row.key }))).Body as NodeJS.ReadableStream;
        } catch (e) {
          throw storeError(e, `download ${row.key}`);
        }
        const hash = createHash('sha256');
        const tty = process.stderr.isTTY;
        let bytes = 0;
        let shown = -1;
        const show = () => {
          const pct = row.size ? Math.floor((bytes / row.size) * 100) : 100;
          if (tty) {
            const filled = Math.round(pct / 5);
            process.stderr.write(
              `\r[${'#'.repeat(filled)}${'-'.repeat(20 - filled)}] ${pct}% ${formatBytes(bytes)} / ${formatBytes(row.size)}`,
            );
          } else if (pct >= shown + 25 || pct === 100) {
            shown = pct - (pct % 25);
            err(`downloaded ${pct}% (${formatBytes(bytes)} / ${formatBytes(row.size)})`);
          }
        };
        const part = `${file}.part`;
        try {
          await pipeline(
            body,
            new Transform({
              transform(chunk: Buffer, _enc, cb) {
                bytes += chunk.length;
                hash.update(chunk);
                show();
                cb(null, chunk);
              },
            }),
            createWriteStream(part, { flags: 'wx', mode: 0o600 }),
          );
          if (tty) process.stderr.write('\n');
          const digest = hash.digest('hex');
          if (digest !== row.sha256)
            throw new StowageError(
              'STOWAGE_ERR_STORE',
              `download: ${row.key} has SHA-256 ${digest}, the backup recorded ${row.sha256}; not kept`,
            );
          await rename(part, file);
        } catch (e) {
          await rm(part, { force: true });
          throw e;
        }
        out(`${file}\t${formatBytes(bytes)}\tsha256:${row.sha256}`);
      });
    });

  backup
    .command('delete')
    .description('delete a backup: its archive, its checksum sidecar; the row is kept, marked deleted')
    .argument('<name>', 'backup name')
    .action(async (name: string) => {
      await withDeps(async ({ db, storage }) => {
        const s = storage();
        const row = await resolveBackup(db, s.bucket, name);
        await deleteBackupObject(s, row.key);
        await markBackupDeleted(db, row.id, 'deleted by hand (stowage backup delete)');
        out(`deleted ${backupName(row.key)}`);
      });
    });

  backup
    .command('test-connection')
    .description('put, head, get, list and delete a probe object in the backup bucket; report each step')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }) => {
      await withDeps(async ({ storage }) => {
        const s = storage();
        const probe = await probeStore(s);
        if (opts.json) out(JSON.stringify({ endpoint: s.endpoint, bucket: s.bucket, ...probe }, null, 2));
        else {
          out(`endpoint ${s.endpoint}, bucket ${s.bucket}`);
          for (const step of probe.steps)
            out(`${step.step}\t${step.ok ? 'ok' : 'FAILED'}\t${step.ms} ms${step.error ? `\t${step.error}` : ''}`);
        }
        if (!probe.ok) {
          const failed = probe.steps.find((x) => !x.ok);
          throw new StowageError(
            'STOWAGE_ERR_STORE',
            `test-connection: ${failed?.step ?? 'probe'} failed${failed?.error ? `: ${failed.error}` : ''}`,
          );
        }
      });
    });

  backup
    .command('restore')
    .description('stage a restore: download, verify every checksum, integrity_check, unpack next to the targets, flag .pending-restore')
    .argument('<name>', 'backup name')
    .option(
      '--to <dir>',
      "restore the SQLite files into this folder instead of the configured set's paths (required for a set not configured here)",
    )
    .option('--pg-database <name>', 'PostgreSQL: the new database to restore into (default <source>_restored_<stamp>)')
    .option('--force', 'PostgreSQL: allow restoring over an existing database, even the source')
    .action(async (name: string, opts: { to?: string; pgDatabase?: string; force?: boolean }) => {
      await withDeps(async ({ config, db, storage }) => {
        const s = storage();
        const row = await resolveBackup(db, s.bucket, name);
        const { stagingDir, pending } = await stageRestore(s, row.key, {
          configuredSet: config.backupSets.find((set) => set.name === row.set),
          ...(opts.to ? { toDir: resolve(opts.to) } : {}),
          ...(opts.pgDatabase ? { pgDatabase: opts.pgDatabase } : {}),
          ...(opts.force ? { force: true } : {}),
        });
        printPlan(stagingDir, pending);
        out(`verified; apply with: stowage backup apply-restore --dir ${stagingDir}   (or cancel-restore)`);
      });
    });

  backup
    .command('apply-restore')
    .description('apply a staged restore (stop the application first): safety copy, swap, quick_check; rolls back on failure')
    .option('--dir <dir>', 'the staging folder, or the folder holding it (default: found next to the configured databases)')
    .option(
      '--pg-url <url>',
      "PostgreSQL: the server to restore to (default: the configured set's; required for a set not configured here; the archive's source is never used)",
    )
    .action(async (opts: { dir?: string; pgUrl?: string }) => {
      await withDeps(async ({ config }) => {
        const staging = await locateStaging(config, opts.dir, 'apply-restore');
        const pending = await readPendingRestore(staging);
        const result = await applyRestore(staging, { postgresUrl: postgresUrlFor(config, pending, opts.pgUrl) });
        for (const d of result.postgres)
          out(`restored postgres ${d.name} into database ${d.database}${d.created ? ' (created)' : ' (over the existing database)'}`);
        for (const d of result.databases)
          out(`restored sqlite ${d.name} at ${d.target}${d.safetyCopy ? ` (previous copy: ${d.safetyCopy})` : ''}`);
        out(`applied ${backupName(pending.key)}`);
      });
    });

  backup
    .command('cancel-restore')
    .description('throw away a staged restore')
    .option('--dir <dir>', 'the staging folder, or the folder holding it')
    .action(async (opts: { dir?: string }) => {
      await withDeps(async ({ config }) => {
        const staging = await locateStaging(config, opts.dir, 'cancel-restore');
        const { pending } = await cancelRestore(staging);
        out(`cancelled the restore of ${backupName(pending.key)}; removed ${staging}`);
      });
    });

  backup
    .command('drill')
    .description('restore the newest backup of each set (or --set) into a scratch folder / database and verify it; exit 1 if any cannot')
    .option('--set <name>', 'only this set')
    .option('--json', 'print JSON')
    .action(async (opts: { set?: string; json?: boolean }) => {
      await withDeps(async ({ config, db, logger, storage }) => {
        let sets = opts.set ? [opts.set] : config.backupSets.map((s) => s.name);
        if (!sets.length) sets = [...new Set((await listAllBackups(db)).map((r) => r.set))];
        if (!sets.length) throw new StowageError('STOWAGE_ERR_NOT_FOUND', 'drill: no backup sets are configured and no backups exist');
        const results = [];
        for (const set of sets) results.push(await runRestoreDrill({ db, storage: storage(), config, logger }, set));
        if (opts.json) out(JSON.stringify(results, null, 2));
        else {
          for (const r of results) {
            out(`${r.ok ? 'ok' : 'FAILED'}\t${r.set}\t${r.key ? backupName(r.key) : '-'}\t${r.ms} ms${r.error ? `\t${r.error}` : ''}`);
            for (const d of r.databases) out(`  ${d.ok ? 'ok' : 'FAILED'}\t${d.kind} ${d.name}: ${d.detail}`);
          }
        }
        const failed = results.filter((r) => !r.ok);
        if (failed.length)
          throw new StowageError('STOWAGE_ERR_INTERNAL', `drill failed for ${failed.map((r) => `${r.set} (${r.error})`).join(', ')}`);
      });
    });
}
