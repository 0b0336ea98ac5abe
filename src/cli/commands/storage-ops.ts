/**
 * `stowage verify | lifecycle | cleanup | usage`: operating the object store (seed 000's verify,
 * lifecycle and cleanup scripts; seed 001's cost monitoring). Each command's work is an exported
 * function taking the config and an output sink, so tests call it directly; errors are
 * StowageErrors that the CLI prints as one line with the code's exit status.
 */
import type { Command } from 'commander';
import { runRecordedCleanup } from '../../cleanup/recorded.js';
import { FAILURE_PATTERNS_RULE_ID, loadConfig, type Config } from '../../config.js';
import { createDb } from '../../db/pool.js';
import { StowageError } from '../../errors.js';
import { createStorage, type Storage } from '../../storage/client.js';
import { applyLifecycle, describeRule, getStoreLifecycle, withFailurePatternDays } from '../../storage/lifecycle.js';
import { measureUsage } from '../../storage/usage.js';
import { CAPABILITY_LABELS, formatCapability, probeCapabilities, type CapabilityName } from '../../storage/capabilities.js';
import { listObjects, objectDetails, probeStore } from '../../storage/verify.js';
import { formatBytes } from '../format.js';

/** Where a command writes: results on `out` (stdout), progress and warnings on `err` (stderr). */
export interface Output {
  out(line: string): void;
  err(line: string): void;
}

export const consoleOutput: Output = {
  out: (line) => console.log(line),
  err: (line) => process.stderr.write(`${line}\n`),
};

function number(flag: string, integer: boolean) {
  return (value: string): number => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n) || n < 0 || (integer && !Number.isSafeInteger(n))) {
      throw new StowageError('STOWAGE_ERR_USAGE', `${flag}: expected a non-negative ${integer ? 'integer' : 'number'}, got "${value}"`);
    }
    return n;
  };
}

async function withStorage<T>(cfg: Config, fn: (storage: Storage) => Promise<T>): Promise<T> {
  const storage = createStorage(cfg);
  try {
    return await fn(storage);
  } finally {
    storage.close();
  }
}

export interface VerifyOptions {
  capabilities?: boolean;
  list?: boolean;
  prefix?: string;
  limit?: number;
  json?: boolean;
  head?: string;
}

export async function verifyCommand(cfg: Config, opts: VerifyOptions, io: Output = consoleOutput): Promise<void> {
  if ([opts.list, opts.head, opts.capabilities].filter(Boolean).length > 1) {
    throw new StowageError('STOWAGE_ERR_USAGE', 'verify: give one of --capabilities, --list or --head');
  }
  await withStorage(cfg, async (storage) => {
    if (opts.capabilities) {
      const report = await probeCapabilities(storage);
      if (opts.json) return io.out(JSON.stringify(report, null, 2));
      io.out(`endpoint ${storage.endpoint}, bucket ${storage.bucket}`);
      const width = Math.max(...Object.values(CAPABILITY_LABELS).map((l) => l.length));
      for (const [name, label] of Object.entries(CAPABILITY_LABELS) as Array<[CapabilityName, string]>) {
        const shown = formatCapability(report.capabilities[name]);
        io.out(`${label.padEnd(width)}  ${shown.padEnd(19)}  ${report.evidence[name]}`);
      }
      const caps = report.capabilities;
      io.out(
        `manifests: ${caps.createOnly && caps.compareAndSwap ? `conditional writes (If-Match with the ${caps.compareAndSwap} ETag)` : 'the Redis fenced lock'}`,
      );
      io.out(
        `uploads: ${caps.partChecksumSha256 ? 'a SHA-256 checksum with every part' : 'size checked by HEAD after the upload'}; ETag from ${caps.completeEtag ? 'CompleteMultipartUpload' : 'HEAD'}`,
      );
      io.out(`listings: ${caps.listObjectsV2 ? 'ListObjectsV2' : 'ListObjects (v1) markers'}`);
      return;
    }
    if (opts.head) {
      const d = await objectDetails(storage, opts.head);
      if (opts.json) return io.out(JSON.stringify(d, null, 2));
      io.out(`key\t${d.key}`);
      io.out(`size\t${formatBytes(d.size)}${d.size >= 1024 ? ` (${d.size} B)` : ''}`);
      io.out(`etag\t${d.etag ?? '-'}`);
      io.out(`sha256\t${d.sha256 ?? '- (no sidecar)'}`);
      io.out(`last-modified\t${d.lastModified ?? '-'}`);
      io.out(`content-type\t${d.contentType ?? '-'}`);
      for (const [k, v] of Object.entries(d.metadata)) io.out(`meta.${k}\t${v}`);
      return;
    }
    if (opts.list) {
      const limit = opts.limit === 0 ? Infinity : (opts.limit ?? 100);
      const rows: Array<{ key: string; size: number; lastModified: string; etag: string | null }> = [];
      let count = 0;
      for await (const o of listObjects(storage, {
        ...(opts.prefix ? { prefix: opts.prefix } : {}),
        limit,
        onPage: (n) => {
          if (n % 10_000 === 0) io.err(`listed ${n} keys`);
        },
      })) {
        count++;
        if (opts.json) rows.push({ key: o.key, size: o.size, lastModified: o.lastModified.toISOString(), etag: o.etag });
        else io.out(`${o.lastModified.toISOString()}\t${formatBytes(o.size)}\t${o.key}`);
      }
      if (opts.json) io.out(JSON.stringify(rows, null, 2));
      else io.out(`${count} object(s)${count === limit ? ` (first ${limit}; --limit 0 for all)` : ''}`);
      return;
    }
    const probe = await probeStore(storage);
    if (opts.json) io.out(JSON.stringify({ endpoint: storage.endpoint, bucket: storage.bucket, ...probe }, null, 2));
    else {
      io.out(`endpoint ${storage.endpoint}, bucket ${storage.bucket}`);
      for (const s of probe.steps) io.out(`${s.step}\t${s.ok ? 'ok' : 'FAILED'}\t${s.ms} ms${s.error ? `\t${s.error}` : ''}`);
    }
    if (!probe.ok) {
      const failed = probe.steps.find((s) => !s.ok)!;
      throw new StowageError('STOWAGE_ERR_STORE', `verify: ${failed.step} failed: ${failed.error}`);
    }
  });
}

export interface LifecycleOptions {
  show?: boolean;
  apply?: boolean;
  dryRun?: boolean;
  /** Expire the aggregation exports after this many days, for this run (seed 000's `--days`). */
  days?: number;
  json?: boolean;
}

/** `--days`: a whole number of days a lifecycle rule can hold. */
function days(value: string): number {
  const n = Number(value);
  if (!/^\s*\d+\s*$/.test(value) || !Number.isSafeInteger(n) || n < 1 || n > 36_500) {
    throw new StowageError('STOWAGE_ERR_USAGE', `lifecycle: --days: expected a whole number of days from 1 to 36500, got "${value}"`);
  }
  return n;
}

export async function lifecycleCommand(cfg: Config, opts: LifecycleOptions, io: Output = consoleOutput): Promise<void> {
  if (opts.show && opts.apply) throw new StowageError('STOWAGE_ERR_USAGE', 'lifecycle: give exactly one of --show or --apply');
  // `--days N` alone shows the plan it would apply (as --apply --dry-run --days N does).
  if (!opts.show && !opts.apply && opts.days === undefined)
    throw new StowageError('STOWAGE_ERR_USAGE', 'lifecycle: give exactly one of --show or --apply');
  if (opts.dryRun && !opts.apply) throw new StowageError('STOWAGE_ERR_USAGE', 'lifecycle: --dry-run goes with --apply');
  if (opts.days !== undefined) days(String(opts.days));
  const dryRun = Boolean(opts.dryRun) || !opts.apply;
  const rules =
    opts.days === undefined ? cfg.lifecycleRules : withFailurePatternDays(cfg.lifecycleRules, cfg.failures.uploadPrefix, opts.days);
  await withStorage(cfg, async (storage) => {
    if (opts.show) {
      let store: unknown[] | string;
      try {
        store = await getStoreLifecycle(storage);
      } catch (err) {
        // --show still shows the configuration; the store's side is a note.
        store = (err as Error).message;
      }
      if (opts.json) return io.out(JSON.stringify({ configured: rules, store }, null, 2));
      io.out('configured rules (id, prefix, action, enforced by):');
      for (const r of rules) io.out(`  ${describeRule(r)}`);
      if (typeof store === 'string') io.out(`store: ${store}`);
      else {
        io.out(`store (bucket ${storage.bucket}): ${store.length} rule(s)`);
        for (const r of store as Array<Record<string, unknown>>) io.out(`  ${JSON.stringify(r)}`);
      }
      return;
    }
    const plan = await applyLifecycle(storage, rules, { dryRun });
    if (opts.json) return io.out(JSON.stringify({ dryRun, ...plan }, null, 2));
    const verb = dryRun ? 'would ' : '';
    if (plan.unchanged) io.out(`lifecycle: bucket ${storage.bucket} already has the configured rules; nothing to change`);
    for (const id of plan.added) io.out(`${verb}add\t${id}`);
    for (const id of plan.changed) io.out(`${verb}change\t${id}`);
    for (const id of plan.removed) io.out(`${verb}remove\t${id}`);
    for (const r of plan.cleanupOnly)
      io.out(
        `cleanup only\t${r.id}\t${r.prefix}\t(a \`*\` prefix: stores filter by a literal prefix; enforced by cleanup --enforce-lifecycle)`,
      );
  });
}

export interface CleanupCliOptions {
  dryRun?: boolean;
  force?: boolean;
  olderThan?: number;
  prefix?: string;
  testOnly?: boolean;
  orphanedPacks?: boolean;
  multipart?: boolean;
  olderThanHours?: number;
  enforceLifecycle?: boolean;
  artifactRetention?: boolean;
  json?: boolean;
}

export async function cleanupCommand(cfg: Config, opts: CleanupCliOptions, io: Output = consoleOutput): Promise<{ logId: number }> {
  if (!opts.force && !opts.dryRun) {
    throw new StowageError('STOWAGE_ERR_USAGE', 'cleanup: deletes nothing without --force (or list what it would delete with --dry-run)');
  }
  if (opts.force && opts.dryRun) throw new StowageError('STOWAGE_ERR_USAGE', 'cleanup: give --force or --dry-run, not both');
  if (opts.olderThanHours !== undefined && !opts.multipart)
    throw new StowageError('STOWAGE_ERR_USAGE', 'cleanup: --older-than-hours goes with --multipart');
  const db = createDb(cfg, { max: 2 });
  try {
    return await withStorage(cfg, async (storage) => {
      const { report, logId } = await runRecordedCleanup({
        storage,
        db,
        config: cfg,
        options: {
          dryRun: Boolean(opts.dryRun),
          prefix: opts.prefix,
          olderThanDays: opts.olderThan,
          olderThanHours: opts.olderThanHours,
          testOnly: opts.testOnly,
          orphanedPacks: opts.orphanedPacks,
          multipart: opts.multipart,
          enforceLifecycle: opts.enforceLifecycle,
          artifactRetention: opts.artifactRetention,
        },
        onProgress: (message) => io.err(message),
      });
      const verb = report.dryRun ? 'would delete' : 'deleted';
      if (opts.json) {
        io.out(JSON.stringify({ logId, ...report }, null, 2));
      } else {
        // A dry run of artifact retention also says why each kept version is kept.
        if (report.dryRun)
          for (const a of report.artifacts.filter((v) => v.action === 'keep'))
            io.out(`keep\t${a.key}\t${a.createdAt.slice(0, 10)}\t${a.reasons.join('; ')}`);
        for (const o of report.objects) io.out(`${verb}\t${o.key}\t${formatBytes(o.size)}\t${o.reason}`);
        for (const u of report.uploads)
          io.out(`${report.dryRun ? 'would abort' : 'aborted'}\t${u.key}\t${u.uploadId}\t${u.initiated ?? '-'}\t${u.reason}`);
        io.out(
          `${report.modes.join('+')}: scanned ${report.scanned}, ${verb} ${report.deleted} (${formatBytes(report.bytesFreed)}), ` +
            `errors ${report.errors}${report.stragglers ? `, stragglers ${report.stragglers}` : ''}; r2_cleanup_logs #${logId}`,
        );
        for (const u of report.unsupported) io.err(`note: the store does not implement ${u}; that part was skipped`);
      }
      if (report.errors) {
        throw new StowageError('STOWAGE_ERR_STORE', `cleanup: ${report.errors} error(s), first: ${report.errorMessages[0] ?? 'unknown'}`);
      }
      return { logId };
    });
  } finally {
    await db.close();
  }
}

export interface UsageOptions {
  prefix?: string;
  json?: boolean;
}

/** Prints the usage; a budget breach is reported on stderr and returned (the CLI exits 1). */
export async function usageCommand(cfg: Config, opts: UsageOptions, io: Output = consoleOutput): Promise<{ overBudget: boolean }> {
  return withStorage(cfg, async (storage) => {
    const report = await measureUsage(storage, cfg.usage, {
      ...(opts.prefix ? { prefix: opts.prefix } : {}),
      onProgress: (m) => io.err(m),
    });
    if (opts.json) io.out(JSON.stringify(report, null, 2));
    else {
      io.out('prefix\tobjects\tsize');
      for (const p of report.prefixes) io.out(`${p.prefix || '(top level)'}\t${p.objects}\t${formatBytes(p.bytes)}`);
      io.out(`total\t${report.objects}\t${formatBytes(report.bytes)}`);
      io.out(
        `estimated monthly cost: $${report.cost.totalUsd.toFixed(2)} (storage ${report.cost.storageGb.toFixed(3)} GB: $${report.cost.storageUsd.toFixed(2)}, ` +
          `class A $${report.cost.classAUsd.toFixed(2)}, class B $${report.cost.classBUsd.toFixed(2)})` +
          (report.budgetUsd !== null ? `; budget $${report.budgetUsd.toFixed(2)}` : ''),
      );
    }
    if (report.overBudget) {
      io.err(
        `stowage: usage: estimated monthly cost $${report.cost.totalUsd.toFixed(2)} is over the budget of $${report.budgetUsd!.toFixed(2)}`,
      );
    }
    return { overBudget: report.overBudget };
  });
}

/** Adds verify, lifecycle, cleanup and usage to the program. */
export function registerStorageCommands(program: Command, options: { config?: () => Config; io?: Output } = {}): void {
  const config = options.config ?? (() => loadConfig());
  const io = options.io ?? consoleOutput;

  program
    .command('verify')
    .description(
      'check the object store: put, head, get, list and delete a probe (timed); or what it supports; or list objects; or show one',
    )
    .option(
      '--capabilities',
      'probe what the store supports (conditional writes, multipart listing and abort, lifecycle, checksums) and how Stowage adapts',
    )
    .option('--list', 'list objects (key order)')
    .option('--prefix <prefix>', 'with --list: only keys under this prefix')
    .option('--limit <n>', 'with --list: at most this many (0 = all)', number('--limit', true), 100)
    .option('--head <key>', "an object's size, ETag, SHA-256, last-modified and metadata")
    .option('--json', 'print JSON')
    .action(async (opts: VerifyOptions) => {
      await verifyCommand(config(), opts, io);
    });

  program
    .command('lifecycle')
    .description('show the retention rules, or apply them to the bucket (idempotent)')
    .option('--show', "print the configured rules and the store's current ones")
    .option('--apply', "make the bucket's lifecycle rules equal the configured ones")
    .option('--dry-run', 'with --apply: print the change, change nothing')
    .option(
      '--days <n>',
      `expire the aggregation exports (${FAILURE_PATTERNS_RULE_ID}, on failures.uploadPrefix) after n days, for this run; without --apply, print the plan`,
      days,
    )
    .option('--json', 'print JSON')
    .action(async (opts: LifecycleOptions) => {
      await lifecycleCommand(config(), opts, io);
    });

  program
    .command('cleanup')
    .description(
      'delete objects by selector and record the run in r2_cleanup_logs. Without --orphaned-packs, --multipart, --artifact-retention or ' +
        '--enforce-lifecycle it deletes the objects under --prefix / older than --older-than / marked as test (--test-only)',
    )
    .option('--dry-run', 'list what would be deleted; delete nothing')
    .option('--force', 'really delete (required unless --dry-run)')
    .option('--older-than <days>', 'only objects at least this many days old', number('--older-than', false))
    .option('--prefix <prefix>', 'only under this prefix; nothing outside it is touched')
    .option('--test-only', 'only objects Stowage marked as test data')
    .option('--orphaned-packs', 'diff packs whose versions no longer exist in project_versions')
    .option('--multipart', 'abort incomplete multipart uploads (then list again and abort stragglers)')
    .option(
      '--older-than-hours <hours>',
      `with --multipart: only uploads started at least this long ago (default ${24})`,
      number('--older-than-hours', false),
    )
    .option('--enforce-lifecycle', 'apply the configured lifecycle rules by listing and deleting (for stores without lifecycle support)')
    .option(
      '--artifact-retention',
      "build artifacts per project: keep the newest N and the daily/monthly/yearly tiers (STOWAGE_ARTIFACT_RETENTION_*), delete the rest and mark their rows; with --dry-run, each version's reason",
    )
    .option('--json', 'print the report as JSON')
    .action(async (opts: CleanupCliOptions) => {
      await cleanupCommand(config(), opts, io);
    });

  program
    .command('usage')
    .description('bytes and objects per top-level prefix, estimated monthly cost at R2 prices, and the budget (exit 1 when over it)')
    .option('--prefix <prefix>', 'only under this prefix (grouped by the next path segment)')
    .option('--json', 'print JSON')
    .action(async (opts: UsageOptions) => {
      const { overBudget } = await usageCommand(config(), opts, io);
      if (overBudget) process.exitCode = 1;
    });
}
