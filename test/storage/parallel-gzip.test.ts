/**
 * The parallel gzip writer: what it writes must be one ordinary gzip stream that Node's gunzip and
 * the system's `gzip -t` / `gunzip` read back byte for byte, at every size around block edges,
 * and about as small as single-threaded gzip at the same level.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { promisify } from 'node:util';
import { deflateRawSync, gunzipSync, gzipSync, inflateRawSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createParallelDeflateRaw, createParallelGzip } from '../../src/storage/parallel-gzip.js';

const run = promisify(execFile);
const BLOCK = 64 * 1024;
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'stowage-pgzip-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Text that compresses (and refers back across block edges) mixed with random bytes that don't. */
function sample(bytes: number): Buffer {
  const text = Buffer.from(Array.from({ length: 4000 }, (_, i) => `line ${i % 700}: the quick brown fox ${i % 13}\n`).join(''));
  const out = Buffer.alloc(bytes);
  for (let at = 0; at < bytes; ) {
    const piece = (at / 50_000) % 3 < 1 ? randomBytes(Math.min(20_000, bytes - at)) : text.subarray(0, Math.min(text.length, bytes - at));
    piece.copy(out, at);
    at += piece.length;
  }
  return out;
}

type Options = Parameters<typeof createParallelGzip>[0];

/** Feed `data` in uneven chunks so block edges fall inside chunks. */
function throughUneven(data: Buffer, stream: ReturnType<typeof createParallelGzip>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for (let at = 0, n = 1; at < data.length; at += n, n = (n * 7 + 13) % 50_000 || 1) chunks.push(data.subarray(at, at + n));
  return buffer(Readable.from(chunks).pipe(stream));
}

const gzipped = (data: Buffer, options: Options = { blockSize: BLOCK }) => throughUneven(data, createParallelGzip(options));

describe('createParallelGzip', () => {
  it.each([0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK, 10 * BLOCK + 12_345])(
    'round-trips %i bytes through Node and gzip -t / gunzip',
    async (n) => {
      const data = sample(n);
      const gz = await gzipped(data);
      expect(gunzipSync(gz).equals(data)).toBe(true);
      const file = join(dir, `s${n}.gz`);
      await writeFile(file, gz);
      await run('gzip', ['-t', file]);
      const { stdout } = await run('gunzip', ['-c', file], { encoding: 'buffer', maxBuffer: 64 * 1024 * 1024 });
      expect(Buffer.compare(stdout, data)).toBe(0);
    },
  );

  it('is as small as one-thread gzip at the same level (the dictionary carries across blocks)', async () => {
    const data = sample(40 * BLOCK);
    const single = gzipSync(data, { level: 6 }).length;
    const parallel = (await gzipped(data, { blockSize: BLOCK, level: 6 })).length;
    expect(parallel / single).toBeLessThan(1.005);
  });

  it('keeps order with many blocks in flight and a slow reader', async () => {
    const data = sample(24 * BLOCK + 7);
    const gz = createParallelGzip({ blockSize: BLOCK, concurrency: 8 });
    Readable.from([data]).pipe(gz);
    const out: Buffer[] = [];
    for await (const chunk of gz) {
      out.push(chunk as Buffer);
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    expect(gunzipSync(Buffer.concat(out)).equals(data)).toBe(true);
  });
});

describe('createParallelDeflateRaw (a zip entry of a large file)', () => {
  it.each([0, 1, BLOCK, BLOCK + 1, 10 * BLOCK + 12_345])('round-trips %i bytes as one raw deflate stream', async (n) => {
    const data = sample(n);
    const raw = await throughUneven(data, createParallelDeflateRaw({ blockSize: BLOCK }));
    expect(inflateRawSync(raw).equals(data)).toBe(true);
  });

  it('writes the same bytes however many blocks are in flight, about as small as one stream', async () => {
    const data = sample(30 * BLOCK + 99);
    const outs = await Promise.all(
      [1, 2, 8].map((concurrency) => throughUneven(data, createParallelDeflateRaw({ blockSize: BLOCK, concurrency }))),
    );
    // A rerun (a resumed upload's regenerated zip) must produce the very bytes the first run sent.
    expect(outs[1]!.equals(outs[0]!)).toBe(true);
    expect(outs[2]!.equals(outs[0]!)).toBe(true);
    expect(outs[0]!.length / deflateRawSync(data, { level: 6 }).length).toBeLessThan(1.005);
  });
});
