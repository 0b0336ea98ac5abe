/**
 * verify, lifecycle and usage against radosgw: `lifecycle --apply` puts the configured rules, a
 * second apply finds what the store echoes back equal (idempotent), and a rule really expires an
 * object and aborts an incomplete multipart upload (the run's radosgw counts a lifecycle "day" as
 * a few seconds, test/setup/rgw.ts). Against s3rver, which answers 501 NotImplemented to bucket
 * lifecycle calls, `lifecycle --apply` fails with one clear line and a non-zero exit (in-process
 * and through a spawned CLI), and `--show` still shows the configured rules.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import {
  CreateMultipartUploadCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsCommand,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { lifecycleCommand, usageCommand, verifyCommand, type Output } from '../../src/cli/commands/storage-ops.js';
import { DEFAULT_LIFECYCLE_RULES, loadConfig, type Config } from '../../src/config.js';
import { ERROR_CODES } from '../../src/errors.js';
import { getStoreLifecycle, isExpired, planLifecycle, ruleMatcher, toS3Rule } from '../../src/storage/lifecycle.js';
import { createStorage } from '../../src/storage/client.js';
import { estimateCost, recordUsage, summarize } from '../../src/storage/usage.js';
import { isolate } from '../helpers/isolation.js';
import { startS3, startS3rver, storageConfig, storageEnv, type TestS3 } from '../helpers/s3.js';

const iso = isolate('verifylc');
let s3: TestS3;
let client: S3Client;
const ROOT = fileURLToPath(new URL('../..', import.meta.url));

function config(overrides: Record<string, unknown> = {}, store: TestS3 = s3): Config {
  return iso.config({ storage: storageConfig(store), ...overrides });
}

const sink = (): Output & { lines: string[]; errLines: string[] } => {
  const lines: string[] = [];
  const errLines: string[] = [];
  return { lines, errLines, out: (l) => lines.push(l), err: (l) => errLines.push(l) };
};

// Objects for usage: sizes chosen so each prefix sums to a known total.
const written: Array<{ key: string; size: number }> = [
  ...Array.from({ length: 30 }, (_, i) => ({ key: `alpha/${i}.bin`, size: 1000 + i })),
  ...Array.from({ length: 20 }, (_, i) => ({ key: `beta/deep/${i}.bin`, size: 2048 })),
  { key: 'root.txt', size: 5 },
];

beforeAll(async () => {
  s3 = await startS3(iso.bucket);
  client = new S3Client({
    region: 'us-east-1',
    endpoint: s3.endpoint,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
  });
  await Promise.all(
    written.map((o) => client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: o.key, Body: Buffer.alloc(o.size, 7) }))),
  );
  const body = 'snapshot bytes\n';
  await client.send(
    new PutObjectCommand({
      Bucket: s3.bucket,
      Key: 'gamma/v1.zip',
      Body: body,
      Metadata: { 'stowage-kind': 'artifact', 'sha256-sidecar': 'v1.zip.sha256' },
    }),
  );
  await client.send(
    new PutObjectCommand({
      Bucket: s3.bucket,
      Key: 'gamma/v1.zip.sha256',
      Body: `${createHash('sha256').update(body).digest('hex')}  v1.zip\n`,
    }),
  );
});

afterAll(async () => {
  client?.destroy();
  await s3?.close();
  await iso.cleanup();
});

describe('verify', () => {
  it('puts, heads, gets, lists and deletes a probe, timing each step, and leaves nothing behind', async () => {
    const out = sink();
    await verifyCommand(config(), {}, out);
    expect(out.lines.slice(1).map((l) => l.split('\t').slice(0, 2))).toEqual([
      ['put', 'ok'],
      ['head', 'ok'],
      ['get', 'ok'],
      ['list', 'ok'],
      ['delete', 'ok'],
    ]);
    for (const l of out.lines.slice(1)) expect(l).toMatch(/\t\d+ ms$/);
    const left = await client.send(new ListObjectsCommand({ Bucket: s3.bucket, Prefix: '_stowage/' }));
    expect(left.Contents ?? []).toEqual([]);
  });

  it('fails with a one-line store error naming the step when the bucket is missing', async () => {
    const err = await verifyCommand(config({ storage: { ...storageConfig(s3), bucket: 'no-such-bucket' } }), {}, sink()).catch(
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: 'STOWAGE_ERR_STORE' });
    expect((err as Error).message).toMatch(/^verify: put failed: NoSuchBucket/);
  });

  it('--list pages through a prefix with a limit; --json', async () => {
    const out = sink();
    await verifyCommand(config(), { list: true, prefix: 'alpha/', limit: 0 }, out);
    expect(out.lines).toHaveLength(31);
    expect(out.lines.at(-1)).toBe('30 object(s)');
    const limited = sink();
    await verifyCommand(config(), { list: true, prefix: 'alpha/', limit: 5, json: true }, limited);
    const rows = JSON.parse(limited.lines[0]!) as Array<{ key: string; size: number }>;
    expect(rows.map((r) => r.key)).toEqual(['alpha/0.bin', 'alpha/1.bin', 'alpha/10.bin', 'alpha/11.bin', 'alpha/12.bin']);
  });

  it('--head shows size, ETag, the SHA-256 from the sidecar, last-modified and metadata', async () => {
    const out = sink();
    await verifyCommand(config(), { head: 'gamma/v1.zip', json: true }, out);
    const d = JSON.parse(out.lines[0]!);
    expect(d).toMatchObject({
      key: 'gamma/v1.zip',
      size: 15,
      sha256: createHash('sha256').update('snapshot bytes\n').digest('hex'),
      metadata: { 'stowage-kind': 'artifact', 'sha256-sidecar': 'v1.zip.sha256' },
    });
    expect(d.etag).toMatch(/^"[0-9a-f]{32}"$/);
    expect(Date.parse(d.lastModified)).toBeGreaterThan(Date.now() - 600_000);
    await expect(verifyCommand(config(), { head: 'gamma/missing.zip' }, sink())).rejects.toMatchObject({ code: 'STOWAGE_ERR_NOT_FOUND' });
  });
});

describe('lifecycle', () => {
  it("the default rules are the seeds': failure_patterns/ 90 days, incomplete multipart 1, and no age rule over snapshots", () => {
    expect(config().lifecycleRules).toEqual(DEFAULT_LIFECYCLE_RULES);
    // Snapshots are artifact retention's (test/cleanup/artifact-retention.test.ts): an age rule
    // would delete a project's live version.
    expect(DEFAULT_LIFECYCLE_RULES.map((r) => [r.prefix, r.expireDays ?? null, r.abortIncompleteMultipartDays ?? null])).toEqual([
      ['failure_patterns/', 90, null],
      ['', null, 1],
    ]);
    expect(() => loadConfig({}, { lifecycleRules: [{ id: 'x', prefix: 'a/' }] })).toThrow(
      /lifecycleRules\.0\.expireDays: needs expireDays/,
    );
    expect(() => loadConfig({}, { lifecycleRules: [{ id: 'x', prefix: 'a*/', expireDays: 1 }] })).toThrow(/whole path segment/);
  });

  it('matches prefixes with `*` segments and ages by days', () => {
    const snapshots = ruleMatcher({ prefix: '*/*/snapshots/' });
    expect(snapshots('u1/p1/snapshots/v1.zip')).toBe(true);
    expect(snapshots('u1/p1/snapshots/v1.zip.sha256')).toBe(true);
    expect(snapshots('u1/p1/packs/git_a_to_b.pack.zip')).toBe(false);
    expect(snapshots('u1/snapshots/v1.zip')).toBe(false);
    expect(ruleMatcher({ prefix: 'failure_patterns/' })('failure_patterns/2025/x.json')).toBe(true);
    const rule = { id: 'snapshots-30d', prefix: '*/*/snapshots/', expireDays: 30, enabled: true };
    const now = Date.now();
    expect(isExpired(rule, new Date(now - 30 * 86_400_000), now)).toBe(true);
    expect(isExpired(rule, new Date(now - 29 * 86_400_000), now)).toBe(false);
  });

  it('plans the store change; applying the same rules again changes nothing', () => {
    // The defaults and an operator's `*` rule.
    const rules = [...DEFAULT_LIFECYCLE_RULES, { id: 'snapshots-30d', prefix: '*/*/snapshots/', expireDays: 30, enabled: true }];
    const first = planLifecycle(rules, [{ ID: 'old-rule', Status: 'Enabled', Filter: { Prefix: 'x/' }, Expiration: { Days: 3 } }]);
    expect(first).toMatchObject({
      added: ['failure-patterns-90d', 'abort-incomplete-multipart-1d'],
      changed: [],
      removed: ['old-rule'],
      unchanged: false,
    });
    // The `*` rule cannot be a store rule: it is left to cleanup --enforce-lifecycle.
    expect(first.cleanupOnly.map((r) => r.id)).toEqual(['snapshots-30d']);
    // What the store echoes back after the put is what we asked for.
    const again = planLifecycle(rules, first.desired);
    expect(again.unchanged).toBe(true);
    const edited = planLifecycle(
      rules.map((r) => (r.id === 'failure-patterns-90d' ? { ...r, expireDays: 180 } : r)),
      first.desired,
    );
    expect(edited).toMatchObject({ added: [], changed: ['failure-patterns-90d'], removed: [] });
    expect(toS3Rule(rules[1]!)).toEqual({
      ID: 'abort-incomplete-multipart-1d',
      Status: 'Enabled',
      Filter: { Prefix: '' },
      AbortIncompleteMultipartUpload: { DaysAfterInitiation: 1 },
    });
  });
});

describe('lifecycle on radosgw', () => {
  let lc: TestS3;
  beforeAll(async () => {
    // A bucket of its own: its rules expire objects, which the usage tests must not see.
    lc = await startS3(`${iso.bucket}-lc`);
  });
  afterAll(async () => {
    await lc?.close();
  });

  it('--apply puts the rules a store can hold; a second --apply finds them equal; --show lists both sides', async () => {
    const first = sink();
    await lifecycleCommand(config({}, lc), { apply: true }, first);
    expect(first.lines).toEqual(['add\tfailure-patterns-90d', 'add\tabort-incomplete-multipart-1d']);
    const storage = createStorage(config({}, lc));
    try {
      const stored = await getStoreLifecycle(storage);
      expect(stored.map((r) => r.ID).sort()).toEqual(['abort-incomplete-multipart-1d', 'failure-patterns-90d']);
    } finally {
      storage.close();
    }
    // radosgw echoes the abort rule with a top-level Prefix instead of a Filter: still equal.
    const again = sink();
    await lifecycleCommand(config({}, lc), { apply: true }, again);
    expect(again.lines[0]).toBe(`lifecycle: bucket ${lc.bucket} already has the configured rules; nothing to change`);
    const show = sink();
    await lifecycleCommand(config({}, lc), { show: true }, show);
    expect(show.lines).toContain(`store (bucket ${lc.bucket}): 2 rule(s)`);
  });

  it('a rule really expires an object and aborts an incomplete multipart upload', { timeout: 60_000 }, async () => {
    const rules = [
      { id: 'expire-1d', prefix: 'expire/', expireDays: 1 },
      { id: 'abort-1d', prefix: 'uploads/', abortIncompleteMultipartDays: 1 },
    ];
    await lifecycleCommand(config({ lifecycleRules: rules }, lc), { apply: true }, sink());
    await lc.client.send(new PutObjectCommand({ Bucket: lc.bucket, Key: 'expire/old.txt', Body: 'x' }));
    await lc.client.send(new PutObjectCommand({ Bucket: lc.bucket, Key: 'keep/old.txt', Body: 'x' }));
    const upload = await lc.client.send(new CreateMultipartUploadCommand({ Bucket: lc.bucket, Key: 'uploads/abandoned.bin' }));
    const uploads = async () =>
      (await lc.client.send(new ListMultipartUploadsCommand({ Bucket: lc.bucket, Prefix: 'uploads/' }))).Uploads ?? [];
    const exists = (key: string) =>
      lc.client.send(new HeadObjectCommand({ Bucket: lc.bucket, Key: key })).then(
        () => true,
        () => false,
      );
    expect((await uploads()).map((u) => u.UploadId)).toEqual([upload.UploadId]);
    // radosgw's lifecycle thread runs every "day" (a few seconds here) and acts on what is a day old.
    const deadline = Date.now() + 20 * inject('rgw').lcDaySeconds * 1000;
    while (Date.now() < deadline && ((await exists('expire/old.txt')) || (await uploads()).length)) {
      await new Promise((r) => setTimeout(r, 500));
    }
    expect(await exists('expire/old.txt')).toBe(false);
    expect(await uploads()).toEqual([]);
    expect(await exists('keep/old.txt')).toBe(true);
  });
});

describe('lifecycle on s3rver (no lifecycle API)', () => {
  let plain: TestS3;
  beforeAll(async () => {
    plain = await startS3rver(`${iso.bucket}-plain`);
  });
  afterAll(async () => {
    await plain?.close();
  });

  it('--apply fails with one clear line (STOWAGE_ERR_STORE); --show still shows the rules', async () => {
    const err = await lifecycleCommand(config({}, plain), { apply: true }, sink()).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'STOWAGE_ERR_STORE' });
    const message = (err as Error).message;
    expect(message).not.toContain('\n');
    expect(message).toMatch(
      /^the object store does not implement bucket lifecycle rules \(GetBucketLifecycleConfiguration\) \(HTTP 501 NotImplemented\); run `stowage cleanup --enforce-lifecycle --force`/,
    );
    await expect(lifecycleCommand(config({}, plain), { apply: true, dryRun: true }, sink())).rejects.toMatchObject({
      code: 'STOWAGE_ERR_STORE',
    });

    const show = sink();
    await lifecycleCommand(config({}, plain), { show: true }, show);
    expect(show.lines.filter((l) => l.startsWith('  '))).toHaveLength(2);
    expect(show.lines.at(-1)).toMatch(/^store: the object store does not implement bucket lifecycle rules/);
  });

  it('`lifecycle --apply` as a process exits non-zero with the message on one stderr line', async () => {
    // A program with the storage commands and main.ts's error mapping (one line, the code's exit status).
    const entry = `
      import { Command } from 'commander';
      import { registerStorageCommands } from './src/cli/commands/storage-ops.ts';
      import { codeOf, ERROR_CODES } from './src/errors.ts';
      const program = new Command('stowage');
      registerStorageCommands(program);
      try {
        await program.parseAsync(process.argv.slice(1), { from: 'user' });
      } catch (err) {
        process.stderr.write('stowage: ' + String(err.message).split('\\n')[0] + '\\n');
        process.exit(ERROR_CODES[codeOf(err)].exit);
      }`;
    const env = { PATH: process.env.PATH, HOME: process.env.HOME, ...storageEnv(plain), LOG_LEVEL: 'silent' };
    const run = promisify(execFile);
    const failure = await run(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', entry, 'lifecycle', '--apply'], {
      cwd: ROOT,
      env,
    }).catch((e: { code: number; stdout: string; stderr: string }) => e);
    expect(failure).toMatchObject({ code: ERROR_CODES.STOWAGE_ERR_STORE.exit });
    // One line: no runtime warning (Node 24: the AWS SDK has no Node-version notice to print).
    const stderr = (failure as { stderr: string }).stderr.split('\n').filter(Boolean);
    expect(stderr).toHaveLength(1);
    expect(stderr[0]).toMatch(/^stowage: the object store does not implement bucket lifecycle rules/);
  });
});

describe('usage', () => {
  it('sums bytes and objects per top-level prefix exactly as written, and sets the gauge', async () => {
    const out = sink();
    await usageCommand(config(), { json: true }, out);
    const report = JSON.parse(out.lines[0]!);
    const sidecarSize = `${'0'.repeat(64)}  v1.zip\n`.length;
    expect(report.prefixes).toEqual([
      { prefix: '', objects: 1, bytes: 5 },
      { prefix: 'alpha/', objects: 30, bytes: Array.from({ length: 30 }, (_, i) => 1000 + i).reduce((a, b) => a + b, 0) },
      { prefix: 'beta/', objects: 20, bytes: 20 * 2048 },
      { prefix: 'gamma/', objects: 2, bytes: 15 + sidecarSize },
    ]);
    expect(report.objects).toBe(53);
    expect(report.bytes).toBe(written.reduce((n, o) => n + o.size, 0) + 15 + sidecarSize);
    expect(report).toMatchObject({ budgetUsd: null, overBudget: false });

    const registry = new Registry();
    recordUsage(registry, report);
    const text = await registry.metrics();
    expect(text).toContain('# TYPE stowage_storage_bytes gauge');
    expect(text).toContain(`stowage_storage_bytes{prefix="beta/"} ${20 * 2048}`);
    // Recording again replaces the series instead of registering a second metric.
    recordUsage(registry, { prefixes: [{ prefix: 'alpha/', objects: 1, bytes: 1 }] });
    expect(await registry.metrics()).not.toContain('prefix="beta/"');
  });

  it('--prefix groups by the next segment', async () => {
    const out = sink();
    await usageCommand(config(), { prefix: 'beta/', json: true }, out);
    expect(JSON.parse(out.lines[0]!).prefixes).toEqual([{ prefix: 'beta/deep/', objects: 20, bytes: 20 * 2048 }]);
    expect(
      summarize(
        [
          { key: 'a/b/c', size: 1 },
          { key: 'a/d', size: 2 },
        ],
        'a/',
      ),
    ).toEqual([
      { prefix: 'a/', objects: 1, bytes: 2 },
      { prefix: 'a/b/', objects: 1, bytes: 1 },
    ]);
  });

  it('prices storage and operations at R2 rates after the free tier, and reports a budget breach', async () => {
    const pricing = config().usage;
    expect(pricing).toMatchObject({ storagePerGbMonth: 0.015, classAPerMillion: 4.5, classBPerMillion: 0.36 });
    const cost = estimateCost(110 * 1024 ** 3, { ...pricing, classAOpsPerMonth: 3_000_000, classBOpsPerMonth: 20_000_000 });
    expect(cost).toEqual({ storageGb: 110, storageUsd: 1.5, classAUsd: 9, classBUsd: 3.6, totalUsd: 14.1 });

    // No free tier and a budget below the estimate.
    const tight = config({ usage: { freeStorageGb: 0, storagePerGbMonth: 1_000_000, monthlyBudgetUsd: 1 } });
    const out = sink();
    const { overBudget } = await usageCommand(tight, {}, out);
    expect(overBudget).toBe(true);
    expect(out.errLines.at(-1)).toMatch(/^stowage: usage: estimated monthly cost \$\d+\.\d\d is over the budget of \$1\.00$/);
    expect(out.lines.at(-1)).toMatch(/; budget \$1\.00$/);
  });
});
