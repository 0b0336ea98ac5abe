/**
 * Sizes in the CLI's text output are for people (`2.9 KiB`, `1.5 MiB`, one helper:
 * src/cli/format.ts); `--json` keeps integer bytes. `stowage usage`, `verify --list`,
 * `verify --head` and `cleanup --dry-run` run as separate processes against radosgw.
 */
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatBytes } from '../../src/cli/format.js';
import { migrate } from '../../src/db/migrate.js';
import { runCli } from '../helpers/cli.js';
import { isolate } from '../helpers/isolation.js';
import { startS3, storageConfig, storageEnv, type TestS3 } from '../helpers/s3.js';

const iso = isolate('clisizes');
let s3: TestS3;
const objects = [
  ...Array.from({ length: 3 }, (_, i) => ({ key: `alpha/${i}.bin`, size: 1000 })),
  { key: 'big/blob.bin', size: 1.5 * 1024 * 1024 },
  { key: 'root.txt', size: 5 },
];
const stowage = (args: string[]) => runCli(iso, args, storageEnv(s3), 60_000);

beforeAll(async () => {
  s3 = await startS3(iso.bucket);
  for (const o of objects) await s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: o.key, Body: Buffer.alloc(o.size, 3) }));
  // cleanup records its run in r2_cleanup_logs.
  await migrate(iso.config({ storage: storageConfig(s3) }));
}, 60_000);

afterAll(async () => {
  await s3?.close();
  await iso.cleanup();
});

describe('formatBytes', () => {
  it.each([
    [0, '0 B'],
    [1023, '1023 B'],
    [1024, '1.0 KiB'],
    [3000, '2.9 KiB'],
    [1024 * 1024 - 1, '1.0 MiB'],
    [1.4 * 1024 ** 3, '1.4 GiB'],
    [5 * 1024 ** 4, '5.0 TiB'],
  ])('%d bytes is %s', (bytes, shown) => {
    expect(formatBytes(bytes)).toBe(shown);
  });
});

describe('sizes in CLI output', () => {
  it('usage: a human size per prefix and in total; --json integer bytes', async () => {
    // One after another: each CLI run probes the store with objects of its own under _stowage/.
    const text = await stowage(['usage']);
    const json = await stowage(['usage', '--json']);
    expect(text.code, text.stderr).toBe(0);
    const lines = text.stdout.trim().split('\n');
    expect(lines.slice(0, 5)).toEqual([
      'prefix\tobjects\tsize',
      '(top level)\t1\t5 B',
      'alpha/\t3\t2.9 KiB',
      'big/\t1\t1.5 MiB',
      `total\t5\t${formatBytes(3000 + 1.5 * 1024 * 1024 + 5)}`,
    ]);
    expect(lines[4]).toBe('total\t5\t1.5 MiB');
    expect(json.code, json.stderr).toBe(0);
    const report = JSON.parse(json.stdout) as { bytes: number; prefixes: { prefix: string; bytes: number }[] };
    expect(report.bytes).toBe(3000 + 1.5 * 1024 * 1024 + 5);
    expect(report.prefixes.map((p) => p.bytes)).toEqual([5, 3000, 1.5 * 1024 * 1024]);
    for (const p of report.prefixes) expect(Number.isInteger(p.bytes)).toBe(true);
  });

  it('verify --list and --head: human sizes; --json integer bytes', async () => {
    const list = await stowage(['verify', '--list']);
    const listJson = await stowage(['verify', '--list', '--json']);
    const head = await stowage(['verify', '--head', 'big/blob.bin']);
    expect(list.code, list.stderr).toBe(0);
    const rows = list.stdout
      .trim()
      .split('\n')
      .filter((l) => l.includes('\t'))
      .map((l) => l.split('\t').slice(1));
    expect(rows).toEqual([
      ['1000 B', 'alpha/0.bin'],
      ['1000 B', 'alpha/1.bin'],
      ['1000 B', 'alpha/2.bin'],
      ['1.5 MiB', 'big/blob.bin'],
      ['5 B', 'root.txt'],
    ]);
    expect(JSON.parse(listJson.stdout).map((o: { size: number }) => o.size)).toEqual([1000, 1000, 1000, 1.5 * 1024 * 1024, 5]);
    expect(head.code, head.stderr).toBe(0);
    expect(head.stdout).toContain(`size\t1.5 MiB (${1.5 * 1024 * 1024} B)`);
  });

  it('cleanup --dry-run: each object and the total freed in human units; --json bytes', async () => {
    const text = await stowage(['cleanup', '--dry-run', '--prefix', 'alpha/']);
    const json = await stowage(['cleanup', '--dry-run', '--prefix', 'alpha/', '--json']);
    expect(text.code, text.stderr).toBe(0);
    const lines = text.stdout.trim().split('\n');
    expect(lines.filter((l) => l.startsWith('would delete\t')).map((l) => l.split('\t')[2])).toEqual(['1000 B', '1000 B', '1000 B']);
    expect(lines.at(-1)).toMatch(/^objects: scanned 3, would delete 3 \(2\.9 KiB\), errors 0/);
    expect(json.code, json.stderr).toBe(0);
    expect(JSON.parse(json.stdout)).toMatchObject({ bytesFreed: 3000, deleted: 3 });
  });
});
