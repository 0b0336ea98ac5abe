#!/usr/bin/env node
/**
 * The `stowage` command. Every error is one line on stderr and a non-zero exit status taken from
 * the error's code (ERROR_CODES); `--help` works on every command.
 */
import { Command, CommanderError, Option } from 'commander';
import { createToken, ROLES, type Role } from '../auth/tokens.js';
import { loadConfig, redactConfig, unknownVariables, unsafeSettings, type Config } from '../config.js';
import { migrate } from '../db/migrate.js';
import { codeOf, ERROR_CODES, StowageError } from '../errors.js';
import { createLogger, type Logger } from '../observability/logger.js';
import { createProducer } from '../producers/index.js';
import {
  assertRedisReachable,
  createEventStream,
  createRedis,
  isJobKind,
  JOB_KINDS,
  type DomainEvent,
  type PayloadInput,
} from '../queues/index.js';
import { DeadLetter, GROUP_SIGNATURE, showParked, type DeadLetterGroup, type RedriveSelector } from '../queues/dead-letter.js';
import { registerBackupCommands } from './commands/backup.js';
import { registerFailureCommands } from './commands/failures.js';
import { registerStorageCommands } from './commands/storage-ops.js';
import { chooseKinds, runUntilSignal, startSchedulerRole, startWorkerRole } from './roles.js';

import { VERSION } from '../version.js';

function config(): Config {
  return loadConfig();
}

function logger(cfg: Config): Logger {
  return createLogger({ level: cfg.logLevel });
}

function int(name: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isSafeInteger(n) || n < 0)
      throw new StowageError('STOWAGE_ERR_USAGE', `${name}: expected a non-negative integer, got "${value}"`);
    return n;
  };
}

function parseJson(flag: string, text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new StowageError('STOWAGE_ERR_USAGE', `${flag}: not valid JSON (${(err as Error).message})`);
  }
}

function selector(opts: { id?: string[]; queue?: string; group?: string; all?: boolean }, verb: string): RedriveSelector {
  const n = [opts.id?.length, opts.queue, opts.group, opts.all].filter(Boolean).length;
  if (n !== 1)
    throw new StowageError('STOWAGE_ERR_USAGE', `dlq ${verb}: give exactly one of --id, --queue or --all, or --group <signature>`);
  if (opts.group && !GROUP_SIGNATURE.test(opts.group))
    throw new StowageError(
      'STOWAGE_ERR_USAGE',
      `--group: expected a signature of 12 hex digits (see dlq list --group), got "${opts.group}"`,
    );
  if (opts.id?.length) return { ids: opts.id };
  if (opts.queue) return { queue: opts.queue };
  return opts.group ? { group: opts.group } : { all: true };
}

/** The groups as a table, largest first: count, the signature to redrive by, when, where, and the cause. */
function formatGroups(groups: DeadLetterGroup[]): string[] {
  const rows = groups.map((g) => [
    `${g.count} ×`,
    g.signature,
    g.firstParkedAt,
    g.lastParkedAt,
    g.queues.join(','),
    g.errorCode ?? g.errorName,
    g.message.slice(0, 120),
  ]);
  const table = [['COUNT', 'SIGNATURE', 'FIRST PARKED', 'LAST PARKED', 'QUEUES', 'ERROR', 'MESSAGE'], ...rows];
  const widths = table[0]!.map((_, i) => Math.max(...table.map((r) => r[i]!.length)));
  return table.map((r) => r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  '));
}

async function withDeadLetter<T>(fn: (dl: DeadLetter) => Promise<T>): Promise<T> {
  const cfg = config();
  const connection = createRedis(cfg, { maxRetriesPerRequest: 3 });
  const dl = new DeadLetter({
    connection,
    prefix: cfg.prefix,
    logger: createLogger({ level: 'warn' }),
    events: createEventStream(connection, cfg.prefix, cfg.events.maxLen),
  });
  try {
    return await fn(dl);
  } finally {
    await dl.close();
    connection.disconnect();
  }
}

function formatEvent(e: DomainEvent): string {
  const origin = e.queue ? ` ${e.queue}/${e.jobId}` : '';
  return `${e.at} ${e.type}${origin} ${JSON.stringify(e.data)}`;
}

export function buildProgram(): Command {
  const program = new Command('stowage')
    .description('Ship data durably to S3-compatible object storage with a BullMQ worker fleet.')
    .version(VERSION)
    .showHelpAfterError(false)
    .configureOutput({ outputError: (str, write) => write(`stowage: ${str.replace(/^error: /, '').trim()}\n`) });
  // One-shot commands that talk to Redis check it first: one line and a non-zero exit within a few
  // seconds instead of ioredis's reconnect loop (the long-lived roles keep retrying instead).
  program.hook('preAction', async (_program, action) => {
    if (NEEDS_REDIS.has(commandPath(action))) await assertRedisReachable(config());
  });

  program
    .command('dev')
    .description('run everything on embedded defaults: S3 server, migrations, workers, scheduler, HTTP, sample jobs')
    .option('--port <port>', 'HTTP port', int('--port'), 3000)
    .option('--s3-port <port>', 'embedded S3 server port', int('--s3-port'), 4568)
    .option('--no-samples', 'do not enqueue sample jobs')
    .option('--data-dir <dir>', 'where the embedded S3 server and samples keep their files', '.stowage')
    .action(async (opts: { port: number; s3Port: number; samples: boolean; dataDir: string }) => {
      const { runDev } = await import('./dev.js');
      await runDev(opts);
    });

  program
    .command('worker')
    .description('process jobs (default: every kind that has a processor)')
    .option('--queues <kinds>', `comma-separated kinds (${JOB_KINDS.join(', ')})`)
    .option('--concurrency <n>', 'jobs in flight per queue', int('--concurrency'))
    .option('--metrics-port <port>', "serve this process's /metrics on this port", int('--metrics-port'))
    .action(async (opts: { queues?: string; concurrency?: number; metricsPort?: number }) => {
      const cfg = config();
      const log = logger(cfg);
      const kinds = chooseKinds(opts.queues);
      await runUntilSignal(
        () =>
          startWorkerRole(cfg, log, {
            kinds,
            ...(opts.concurrency ? { concurrency: opts.concurrency } : {}),
            ...(opts.metricsPort !== undefined ? { metricsPort: opts.metricsPort } : {}),
          }),
        log,
      );
    });

  program
    .command('scheduler')
    .description('keep BullMQ Job Schedulers equal to the configured schedules')
    .action(async () => {
      const cfg = config();
      const log = logger(cfg);
      await runUntilSignal(() => startSchedulerRole(cfg, log), log);
    });

  program
    .command('http')
    .description('serve Bull Board, /metrics, /healthz, /readyz and the /v1 API')
    .action(async () => {
      const cfg = config();
      const log = logger(cfg);
      const { startHttpRole } = await import('./http-role.js');
      await runUntilSignal(() => startHttpRole(cfg, log), log);
    });

  program
    .command('migrate')
    .description('apply database migrations (idempotent)')
    .action(async () => {
      const cfg = config();
      const applied = await migrate(cfg);
      console.log(applied.length ? `applied: ${applied.join(', ')}` : 'database is up to date');
    });

  program
    .command('config')
    .description('print the effective configuration, secrets redacted')
    .action(() => {
      console.log(JSON.stringify(redactConfig(config()), null, 2));
    });

  program
    .command('enqueue')
    .description('enqueue one job and print its id')
    .argument('<kind>', `job kind (${JOB_KINDS.join(', ')})`)
    .requiredOption('--data <json>', 'the payload as JSON')
    .option('--wait', 'wait for the job and print its result as JSON (exit 1 if it fails or is parked)')
    .option('--timeout <ms>', 'with --wait: give up after this many ms', int('--timeout'), 10 * 60_000)
    .action(async (kind: string, opts: { data: string; wait?: boolean; timeout: number }) => {
      if (!isJobKind(kind))
        throw new StowageError('STOWAGE_ERR_UNKNOWN_KIND', `unknown job kind "${kind}"; expected one of ${JOB_KINDS.join(', ')}`);
      const payload = parseJson('--data', opts.data);
      const cfg = config();
      const producer = createProducer(cfg);
      try {
        // Unchecked JSON: enqueue validates it against the kind's schema and names each bad field.
        const { jobId } = await producer.enqueue(kind, payload as PayloadInput<typeof kind>);
        if (!opts.wait) {
          console.log(jobId);
          return;
        }
        process.stderr.write(`${jobId}\n`);
        const result = await producer.waitFor(kind, jobId, opts.timeout);
        console.log(JSON.stringify(result, null, 2));
      } finally {
        await producer.close();
      }
    });

  const dlq = program.command('dlq').description('inspect, redrive and purge the dead-letter queue');
  dlq
    .command('list')
    .description('list parked jobs, oldest first (secrets redacted); --group: one line per cause, largest first')
    .option('--queue <name>', 'only jobs from this origin queue')
    .option('--group', 'group parked jobs by cause (error name, code and message with ids and numbers masked)')
    .option('--json', 'print JSON')
    .action(async (opts: { queue?: string; group?: boolean; json?: boolean }) => {
      await withDeadLetter(async (dl) => {
        const filter = opts.queue ? { queue: opts.queue } : {};
        if (opts.group) {
          const groups = await dl.groups(filter);
          if (opts.json) console.log(JSON.stringify(groups, null, 2));
          else if (!groups.length) console.log('dead-letter queue is empty');
          else {
            for (const line of formatGroups(groups)) console.log(line);
            const total = groups.reduce((n, g) => n + g.count, 0);
            console.log(`${total} parked job(s) in ${groups.length} group(s); act on one with dlq redrive --group <signature>`);
          }
          return;
        }
        const jobs = (await dl.list(filter)).map(showParked);
        if (opts.json) {
          console.log(JSON.stringify(jobs, null, 2));
          return;
        }
        if (!jobs.length) {
          console.log('dead-letter queue is empty');
          return;
        }
        for (const r of jobs) {
          const when = new Date(r.timestamps.parked).toISOString();
          console.log(
            `${r.id}\t${r.originQueue}\t${r.reason}\tattempts=${r.attemptsMade}\tredrives=${r.redrives}\t${when}\t${r.error.message.slice(0, 120)}`,
          );
        }
        console.log(`${jobs.length} parked job(s)`);
      });
    });
  dlq
    .command('redrive')
    .description('send parked jobs back to their origin queue')
    .option('--id <id...>', 'dead-letter or origin job id(s)')
    .option('--queue <name>', 'every job parked from this queue')
    .option('--group <signature>', 'every job parked for this cause (a signature from dlq list --group)')
    .option('--all', 'every parked job')
    .option('--dry-run', 'show what would move; move nothing')
    .action(async (opts: { id?: string[]; queue?: string; group?: string; all?: boolean; dryRun?: boolean }) => {
      const sel = selector(opts, 'redrive');
      await withDeadLetter(async (dl) => {
        const outcomes = await dl.redrive(sel, { dryRun: Boolean(opts.dryRun) });
        for (const o of outcomes) console.log(`${o.action}\t${o.originQueue}\t${o.originJobId}${o.reason ? `\t${o.reason}` : ''}`);
        const moved = outcomes.filter((o) => o.action !== 'skipped').length;
        console.log(`${moved} job(s) ${opts.dryRun ? 'would be redriven' : 'redriven'}, ${outcomes.length - moved} skipped`);
        if (sel.ids && outcomes.length === 0)
          throw new StowageError('STOWAGE_ERR_NOT_FOUND', `no parked job with id ${sel.ids.join(', ')}`);
        if (sel.group && outcomes.length === 0) throw new StowageError('STOWAGE_ERR_NOT_FOUND', `no parked job in group ${sel.group}`);
      });
    });
  dlq
    .command('purge')
    .description('delete parked jobs for good')
    .option('--id <id...>', 'dead-letter or origin job id(s)')
    .option('--queue <name>', 'every job parked from this queue')
    .option('--group <signature>', 'every job parked for this cause (a signature from dlq list --group)')
    .option('--all', 'every parked job')
    .option('--dry-run', 'show what would be deleted')
    .action(async (opts: { id?: string[]; queue?: string; group?: string; all?: boolean; dryRun?: boolean }) => {
      const sel = selector(opts, 'purge');
      await withDeadLetter(async (dl) => {
        const removed = await dl.purge(sel, { dryRun: Boolean(opts.dryRun) });
        if (sel.group && removed.length === 0) throw new StowageError('STOWAGE_ERR_NOT_FOUND', `no parked job in group ${sel.group}`);
        for (const id of removed) console.log(id);
        console.log(`${removed.length} job(s) ${opts.dryRun ? 'would be purged' : 'purged'}`);
      });
    });

  program
    .command('events')
    .description('print domain events from the Redis stream')
    .option('--follow', 'keep printing new events')
    .option('--json', 'one JSON object per line')
    .option('--since <id>', 'start after this stream id (default: the start)', '0')
    .option(
      '--type <type>',
      'only events of this type (repeatable, or comma-separated)',
      (v: string, acc: string[]) => [...acc, ...v.split(',')],
      [] as string[],
    )
    .action(async (opts: { follow?: boolean; json?: boolean; since: string; type: string[] }) => {
      const cfg = config();
      const redis = createRedis(cfg);
      const stream = createEventStream(redis, cfg.prefix, cfg.events.maxLen);
      const types = new Set(opts.type.map((t) => t.trim()).filter(Boolean));
      const print = (e: DomainEvent) => {
        if (types.size && !types.has(e.type)) return;
        console.log(opts.json ? JSON.stringify(e) : formatEvent(e));
      };
      let last = opts.since;
      let stop = false;
      const onSignal = () => {
        stop = true;
        redis.disconnect();
      };
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
      try {
        for (;;) {
          const batch = await stream.read({ afterId: last, count: 500 });
          batch.forEach(print);
          if (batch.length) last = batch[batch.length - 1]!.id;
          if (batch.length < 500) break;
        }
        while (opts.follow && !stop) {
          const batch = await stream.follow(last === '0' ? '0-0' : last, 5_000).catch((err: unknown) => {
            if (stop) return [];
            throw err;
          });
          batch.forEach(print);
          if (batch.length) last = batch[batch.length - 1]!.id;
        }
      } finally {
        if (!stop) await redis.quit().catch(() => redis.disconnect());
      }
    });

  const token = program.command('token').description('bearer tokens for the HTTP API and Bull Board');
  token
    .command('create')
    .description('print a signed token (needs STOWAGE_AUTH_SECRET)')
    .requiredOption('--user <id>', 'user id')
    .option('--tenant <id>', 'tenant (default: the user id)')
    .addOption(new Option('--role <role>', 'role').choices([...ROLES]).default('user'))
    .option('--ttl <ttl>', 'lifetime: 30m, 1h, 7d or seconds', '1h')
    .action(async (opts: { user: string; tenant?: string; role: Role; ttl: string }) => {
      const cfg = config();
      if (!cfg.authSecret) throw new StowageError('STOWAGE_ERR_CONFIG', 'STOWAGE_AUTH_SECRET is not set');
      console.log(
        await createToken(cfg.authSecret, {
          user: opts.user,
          role: opts.role,
          ttl: opts.ttl,
          ...(opts.tenant ? { tenant: opts.tenant } : {}),
        }),
      );
    });

  registerFailureCommands(program);
  registerStorageCommands(program);
  registerBackupCommands(program);

  for (const cmd of [program, ...allCommands(program)]) cmd.exitOverride();
  return program;
}

/** Commands that need Redis before they can do anything (see the preAction hook). */
const NEEDS_REDIS = new Set(['dev', 'enqueue', 'events', 'dlq list', 'dlq redrive', 'dlq purge', 'backup now']);

function commandPath(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c?.parent; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}

function allCommands(cmd: Command): Command[] {
  return cmd.commands.flatMap((c) => [c, ...allCommands(c)]);
}

export async function main(argv = process.argv): Promise<number> {
  const program = buildProgram();
  for (const { name, suggestion } of unknownVariables()) {
    process.stderr.write(
      `stowage: warning: ${name} is not a Stowage setting and is ignored${suggestion ? `; did you mean ${suggestion}?` : ''}\n`,
    );
  }
  for (const warning of unsafeSettings()) process.stderr.write(`stowage: warning: ${warning}\n`);
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version "fail" with exit code 0; usage errors were already printed.
      return err.exitCode === 0 ? 0 : ERROR_CODES.STOWAGE_ERR_USAGE.exit;
    }
    const code = codeOf(err);
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`stowage: ${message.split('\n')[0]}\n`);
    return ERROR_CODES[code].exit;
  }
}

const isEntry = process.argv[1] && /(?:^|[/\\])main\.(?:ts|js)$/.test(process.argv[1]);
/**
 * Exit once stdout and stderr are flushed: on a pipe they are asynchronous, and process.exit
 * alone cuts a long listing (a dry run's thousands of lines) at the pipe's buffer.
 */
function exitFlushed(code: number): void {
  let pending = 2;
  const done = () => {
    if (--pending === 0) process.exit(code);
  };
  process.stdout.write('', done);
  process.stderr.write('', done);
}

if (isEntry) {
  main().then(exitFlushed, (err: unknown) => {
    process.stderr.write(`stowage: ${(err as Error).message}\n`);
    exitFlushed(1);
  });
}
