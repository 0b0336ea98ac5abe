/**
 * `stowage dlq list --group`, `redrive --group` and `purge --group` as an operator runs them (a
 * separate process), against real Redis. The parked jobs are written straight into the dead-letter
 * queue, as an older fleet left them (one with a password in its payload and its error).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDeadLetterQueue, type DeadLetterQueue, type ParkedJob } from '../../src/queues/dead-letter.js';
import { createRedis, parkedJobId } from '../../src/queues/index.js';
import { runCli } from '../helpers/cli.js';
import { isolate } from '../helpers/isolation.js';

const iso = isolate('dlqgroupcli');
const config = iso.config();
const redis = createRedis(config.redisUrl);
let dlq: DeadLetterQueue;
const stowage = (args: string[]) => runCli(iso, args, {}, 30_000);

const T0 = Date.parse('2025-03-01T10:00:00.000Z');
const PASSWORD = 'hunter2-in-an-old-payload';

function parked(queue: string, jobId: string, message: string, at: number, extra: Partial<ParkedJob> = {}): ParkedJob {
  return {
    originQueue: queue,
    originJobId: jobId,
    name: queue,
    payload: { n: jobId },
    error: { message, name: 'Error', code: 'STOWAGE_ERR_STORE' },
    attemptsMade: 5,
    opts: { attempts: 5 },
    redrives: 0,
    timestamps: { created: at - 60_000, parked: at },
    reason: 'retries_exhausted',
    ...extra,
  };
}

const slow = Array.from({ length: 3 }, (_, i) => parked('build-artifact', `ba-${i}`, `S3 503 SlowDown on part ${i + 1}`, T0 + i * 60_000));
const missing = [
  parked('build-artifact', 'ba-9', 'buildDir missing: /srv/builds/9', T0 + 10 * 60_000, {
    error: { message: `buildDir missing: /srv/builds/9 (db postgres://app:${PASSWORD}@db:5432/app)`, name: 'PermanentError' },
    payload: { buildDir: '/srv/builds/9', password: PASSWORD },
    reason: 'permanent',
  }),
];

beforeAll(async () => {
  dlq = openDeadLetterQueue({ connection: redis, prefix: config.prefix });
  for (const r of [...slow, ...missing]) await dlq.add(r.name, r, { jobId: parkedJobId(r.originQueue, r.originJobId) });
});
afterAll(async () => {
  await dlq?.close();
  redis.disconnect();
  await iso.cleanup();
});

interface Group {
  signature: string;
  count: number;
  message: string;
  example: string;
  errorCode: string | null;
  errorName: string;
  queues: string[];
  firstParkedAt: string;
  lastParkedAt: string;
  jobIds: string[];
}

describe('stowage dlq --group', () => {
  let groups: Group[];

  it('list --group --json: one group per cause, largest first, with counts and first/last parked', async () => {
    const run = await stowage(['dlq', 'list', '--group', '--json']);
    expect(run.code).toBe(0);
    groups = JSON.parse(run.stdout) as Group[];
    expect(groups).toHaveLength(2);
    expect(groups[0]).toMatchObject({
      count: 3,
      errorCode: 'STOWAGE_ERR_STORE',
      queues: ['build-artifact'],
      firstParkedAt: '2025-03-01T10:00:00.000Z',
      lastParkedAt: '2025-03-01T10:02:00.000Z',
      jobIds: ['build-artifact--ba-0', 'build-artifact--ba-1', 'build-artifact--ba-2'],
      example: 'S3 503 SlowDown on part 3',
    });
    expect(groups[1]).toMatchObject({ count: 1, errorCode: null, errorName: 'PermanentError', jobIds: ['build-artifact--ba-9'] });
    expect(run.stdout).not.toContain(PASSWORD);
    expect(groups[1]!.example).toContain('postgres://app:[redacted]@db');
  });

  it('list --group: a table with the count, the signature to redrive by and first/last parked in ISO', async () => {
    const run = await stowage(['dlq', 'list', '--group']);
    expect(run.code).toBe(0);
    const lines = run.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^COUNT\s+SIGNATURE\s+FIRST PARKED\s+LAST PARKED\s+QUEUES\s+ERROR\s+MESSAGE$/);
    expect(lines[1]).toMatch(
      new RegExp(
        `^3 ×\\s+${groups[0]!.signature}\\s+2025-03-01T10:00:00.000Z\\s+2025-03-01T10:02:00.000Z\\s+build-artifact\\s+STOWAGE_ERR_STORE\\s+S<num> <num> SlowDown on part <num>$`,
      ),
    );
    expect(lines[2]).toMatch(new RegExp(`^1 ×\\s+${groups[1]!.signature}\\s.*PermanentError\\s+buildDir missing`));
    expect(lines[3]).toBe('4 parked job(s) in 2 group(s); act on one with dlq redrive --group <signature>');
    expect(run.stdout).not.toContain(PASSWORD);
  });

  it('list (plain and --json) shows payloads and errors with secrets redacted, each with its group', async () => {
    const [plain, json] = await Promise.all([stowage(['dlq', 'list']), stowage(['dlq', 'list', '--json'])]);
    expect(plain.code).toBe(0);
    expect(json.code).toBe(0);
    expect(plain.stdout).not.toContain(PASSWORD);
    expect(json.stdout).not.toContain(PASSWORD);
    const jobs = JSON.parse(json.stdout) as { id: string; signature: string; payload: Record<string, unknown> }[];
    expect(jobs.find((j) => j.id === 'build-artifact--ba-9')).toMatchObject({
      signature: groups[1]!.signature,
      payload: { buildDir: '/srv/builds/9', password: '[redacted]' },
    });
  });

  it('redrive --group --dry-run and purge --group act on that group only', async () => {
    const dry = await stowage(['dlq', 'redrive', '--group', groups[0]!.signature, '--dry-run']);
    expect(dry.code).toBe(0);
    expect(dry.stdout).toContain('3 job(s) would be redriven, 0 skipped');
    expect(dry.stdout).not.toContain('ba-9');

    const purge = await stowage(['dlq', 'purge', '--group', groups[1]!.signature]);
    expect(purge.code).toBe(0);
    expect(purge.stdout).toBe('build-artifact--ba-9\n1 job(s) purged\n');
    const after = JSON.parse((await stowage(['dlq', 'list', '--group', '--json'])).stdout) as Group[];
    expect(after.map((g) => [g.signature, g.count])).toEqual([[groups[0]!.signature, 3]]);
  });

  it('refuses a malformed or unknown signature, and --group with another selector, in one line', async () => {
    const [bad, unknown, both] = await Promise.all([
      stowage(['dlq', 'redrive', '--group', 'SlowDown']),
      stowage(['dlq', 'purge', '--group', '0123456789ab']),
      stowage(['dlq', 'redrive', '--group', groups[0]!.signature, '--all']),
    ]);
    expect(bad.code).toBe(64);
    expect(bad.stderr).toBe('stowage: --group: expected a signature of 12 hex digits (see dlq list --group), got "SlowDown"\n');
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toBe('stowage: no parked job in group 0123456789ab\n');
    expect(both.code).toBe(64);
    expect(both.stderr).toContain('give exactly one of --id, --queue or --all, or --group <signature>');
    // Nothing was moved or removed.
    expect((await dlq.getJobCounts('waiting')).waiting).toBe(3);
  });
});
