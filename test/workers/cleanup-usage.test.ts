/**
 * Cost you can alert on, end to end: the scheduler role keeps the daily cleanup's Job Scheduler
 * (its payload as shipped, only the cron made every 2 s), a worker role runs it against radosgw,
 * and that worker's own /metrics (`--metrics-port`, scraped over HTTP) then carries the usage
 * gauges: bytes per prefix, the estimated monthly cost at the configured price, the time of the
 * measurement and the configured budget. The scraped samples are then fed to `promtool test rules`
 * with the repository's alerts.yml: StorageMonthlyBudgetExceeded fires on them, and does not with a
 * budget above the cost.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSchedulerRole, startWorkerRole, type WorkerRole } from '../../src/cli/roles.js';
import type { Config } from '../../src/config.js';
import type { Db } from '../../src/db/pool.js';
import { createLogger } from '../../src/observability/logger.js';
import type { Scheduler } from '../../src/queues/scheduler.js';
import { DEFAULT_SCHEDULES } from '../../src/queues/schedules.js';
import { estimateCost } from '../../src/storage/usage.js';
import { migratedDb } from '../helpers/fleet.js';
import { isolate } from '../helpers/isolation.js';
import { startS3, storageConfig, type TestS3 } from '../helpers/s3.js';

const iso = isolate('cleanupusage');
const root = resolve(import.meta.dirname, '../..');
const logger = createLogger({ level: 'silent' });
const objects = [
  ...Array.from({ length: 3 }, (_, i) => ({ key: `alpha/${i}.bin`, size: 1000 })),
  ...Array.from({ length: 2 }, (_, i) => ({ key: `beta/deep/${i}.bin`, size: 2048 })),
  { key: 'root.txt', size: 5 },
];
const total = objects.reduce((n, o) => n + o.size, 0);
// A price that makes a few KiB cost dollars, no free tier: the cost is then a number to compare.
const usage = { storagePerGbMonth: 1_000_000, freeStorageGb: 0, monthlyBudgetUsd: 5 };

let s3: TestS3;
let db: Db;
let config: Config;
let scheduler: Scheduler | undefined;
let worker: WorkerRole | undefined;
const tmp = mkdtempSync(join(tmpdir(), 'stowage-usage-alert-'));

beforeAll(async () => {
  s3 = await startS3(iso.bucket);
  await Promise.all(
    objects.map((o) => s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: o.key, Body: Buffer.alloc(o.size, 1) }))),
  );
  const daily = DEFAULT_SCHEDULES.find((s) => s.id === 'cleanup-daily')!;
  config = iso.config({
    storage: storageConfig(s3),
    usage,
    // The shipped daily cleanup (same id, same payload), due every 2 seconds instead of at 03:00.
    schedules: [{ id: daily.id, kind: 'cleanup', cron: '*/2 * * * * *', data: daily.data }],
  });
  db = await migratedDb(config);
}, 60_000);

afterAll(async () => {
  await scheduler?.close();
  await worker?.close();
  await db?.close();
  await s3?.close();
  await iso.cleanup();
  rmSync(tmp, { recursive: true, force: true });
});

async function scrape(): Promise<string> {
  const { port } = worker!.metricsServer!.address() as AddressInfo;
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  expect(res.status).toBe(200);
  return res.text();
}

/** `name{labels} value` lines of the exposition text, comments left out. */
const samples = (text: string, name: string) =>
  text
    .split('\n')
    .filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `))
    .map((l) => {
      const at = l.lastIndexOf(' ');
      return { series: l.slice(0, at), value: Number(l.slice(at + 1)) };
    });

function promtoolTest(yaml: string) {
  const file = join(tmp, `case-${Math.random().toString(36).slice(2)}.test.yml`);
  writeFileSync(file, yaml);
  const run = spawnSync('promtool', ['test', 'rules', file], { encoding: 'utf8', timeout: 20_000 });
  if ((run.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT')
    throw new Error('promtool is missing: apt-get install -y prometheus');
  return { status: run.status, output: `${run.stdout}${run.stderr}` };
}

describe('the scheduled cleanup sets the usage gauges on its worker /metrics', () => {
  let text = '';

  it('bytes per prefix, estimated monthly cost, measurement time and budget', async () => {
    worker = await startWorkerRole(config, logger, { kinds: ['cleanup'], metricsPort: 0, db });
    // Before any run: no usage series at all (not a false 0 cost, nor a 0 budget).
    const before = await scrape();
    expect(samples(before, 'stowage_storage_estimated_monthly_cost_usd')).toEqual([]);
    expect(samples(before, 'stowage_monthly_budget_usd')).toEqual([]);

    const started = Date.now() / 1000;
    scheduler = await startSchedulerRole(config, logger);
    const deadline = Date.now() + 60_000;
    while (!samples(text, 'stowage_storage_usage_timestamp_seconds').length) {
      expect(Date.now(), 'the scheduled cleanup did not set the usage gauges within 60 s').toBeLessThan(deadline);
      await new Promise((r) => setTimeout(r, 250));
      text = await scrape();
    }

    expect(text).toContain('# TYPE stowage_storage_bytes gauge');
    expect(samples(text, 'stowage_storage_bytes')).toEqual([
      { series: 'stowage_storage_bytes{prefix=""}', value: 5 },
      { series: 'stowage_storage_bytes{prefix="alpha/"}', value: 3000 },
      { series: 'stowage_storage_bytes{prefix="beta/"}', value: 4096 },
    ]);
    const expected = estimateCost(total, config.usage).totalUsd;
    expect(expected).toBeGreaterThan(usage.monthlyBudgetUsd);
    expect(samples(text, 'stowage_storage_estimated_monthly_cost_usd')).toEqual([
      { series: 'stowage_storage_estimated_monthly_cost_usd', value: expected },
    ]);
    expect(samples(text, 'stowage_monthly_budget_usd')).toEqual([{ series: 'stowage_monthly_budget_usd', value: 5 }]);
    const [measured] = samples(text, 'stowage_storage_usage_timestamp_seconds');
    expect(measured!.value).toBeGreaterThanOrEqual(Math.floor(started));
  }, 90_000);

  it('StorageMonthlyBudgetExceeded fires on what the worker exports, and not under a higher budget', () => {
    expect(text).not.toBe('');
    const instance = 'worker-1:9464';
    const series = (names: string[], override: Record<string, number> = {}) =>
      names
        .flatMap((n) => samples(text, n))
        .map(({ series: s, value }) => {
          const name = s.replace(/\{.*$/, '');
          const labels = s.includes('{') ? s.slice(s.indexOf('{') + 1, -1) : '';
          const v = override[name] ?? value;
          return `      - series: '${name}{${[labels, `instance="${instance}"`].filter(Boolean).join(',')}}'\n        values: '${v}x30'`;
        })
        .join('\n');
    const names = ['stowage_storage_estimated_monthly_cost_usd', 'stowage_storage_usage_timestamp_seconds', 'stowage_monthly_budget_usd'];
    const cost = samples(text, 'stowage_storage_estimated_monthly_cost_usd')[0]!.value;
    const firing = `
          - exp_labels:
              severity: warning
            exp_annotations:
              summary: "Estimated storage cost $${cost.toFixed(2)} per month is over the budget of $5.00"
              description: "The last usage measurement (the daily cleanup) estimates $${cost.toFixed(2)} per month, above STOWAGE_MONTHLY_BUDGET_USD."
              runbook: "docs/operations.md#storagemonthlybudgetexceeded"`;
    const testFile = (budget: number | null, expectFiring: boolean) => `rule_files:
  - ${join(root, 'deploy/prometheus/alerts.yml')}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
${series(names, budget === null ? {} : { stowage_monthly_budget_usd: budget })}
    alert_rule_test:
      - eval_time: 10m
        alertname: StorageMonthlyBudgetExceeded
        exp_alerts:${expectFiring ? firing : ' []'}
`;
    const fires = promtoolTest(testFile(null, true));
    expect(fires.output).toContain('SUCCESS');
    expect(fires.status).toBe(0);
    const quiet = promtoolTest(testFile(Math.ceil(cost) + 1, false));
    expect(quiet.output).toContain('SUCCESS');
    expect(quiet.status).toBe(0);
  });
});
