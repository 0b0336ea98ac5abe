/**
 * The zip writer, checked by independent readers: Info-ZIP `unzip -t` / `unzip` / `zipinfo`
 * (apt package `unzip`), and Python's zipfile when python3 is present.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { chmod, lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, symlink, truncate, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createZipStream, scanSource, type ZipOptions } from '../../src/storage/zip.js';

let work: string;
let src: string;
let outside: string;

/** Text that compresses like source code (varied tokens, not one repeated line). */
function sourceText(bytes: number): Buffer {
  const words = [
    'const',
    'return',
    'function',
    'import',
    'export',
    'await',
    'value',
    'result',
    'items',
    'config',
    '=>',
    '{',
    '}',
    '(',
    ')',
    ';',
  ];
  const parts: string[] = [];
  let n = 0;
  for (let i = 0; n < bytes; i++) {
    const line = `${words[i % 16]} ${words[(i * 7) % 16]}_${i % 977} = ${words[(i * 3) % 16]}(${i});\n`;
    parts.push(line);
    n += line.length;
  }
  return Buffer.from(parts.join('')).subarray(0, bytes);
}

async function zipTo(source: string, file: string, options: ZipOptions = {}): Promise<void> {
  const scanned = await scanSource(source);
  await pipeline(createZipStream(scanned, options), createWriteStream(file));
}

function unzipTest(file: string): string {
  const res = spawnSync('unzip', ['-t', file], { encoding: 'utf8', maxBuffer: 256 << 20 });
  expect(res.status, res.stdout + res.stderr).toBe(0);
  return res.stdout;
}

/** zipinfo's method column per entry name (stor, defN, defF, defX, …). */
function methods(file: string): Map<string, string> {
  const out = execFileSync('zipinfo', [file], { encoding: 'utf8' });
  const map = new Map<string, string>();
  for (const line of out.split('\n')) {
    const cols = line.trim().split(/\s+/);
    if (cols.length >= 9 && /^[-dl]/.test(cols[0]!)) map.set(cols.slice(8).join(' '), cols[5]!);
  }
  return map;
}

/** Every path under `dir` with its type, mode, size, mtime (s) and content hash or link target. */
async function describeTree(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (abs: string, rel: string) => {
    for (const name of (await readdir(abs)).sort()) {
      const p = join(abs, name);
      const r = rel ? `${rel}/${name}` : name;
      const st = await lstat(p);
      const mode = (st.mode & 0o7777).toString(8);
      if (st.isDirectory()) {
        out[r] = `dir ${mode}`;
        await walk(p, r);
      } else if (st.isSymbolicLink()) {
        out[r] = `link -> ${await readlink(p)}`;
      } else if (!st.isFile()) {
        out[r] = 'special'; // never read: a FIFO would block
      } else {
        const hash = createHash('sha256')
          .update(await readFile(p))
          .digest('hex');
        out[r] = `file ${mode} ${st.size} ${Math.floor(st.mtimeMs / 1000)} ${hash}`;
      }
    }
  };
  await walk(dir, '');
  return out;
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'stowage-zip-'));
  src = join(work, 'src');
  outside = join(work, 'outside');
  await mkdir(join(src, 'assets', 'fonts'), { recursive: true });
  await mkdir(join(src, 'empty', 'nested-empty'), { recursive: true });
  await mkdir(join(src, 'lib'), { recursive: true });
  await mkdir(outside);
  await writeFile(join(outside, 'secret.txt'), 'not for the archive\n');
  await writeFile(join(src, 'index.html'), '<!doctype html><title>x</title>\n'.repeat(50));
  await writeFile(join(src, 'run.sh'), '#!/bin/sh\necho hi\n');
  await chmod(join(src, 'run.sh'), 0o755);
  await writeFile(join(src, 'private.key'), 'k');
  await chmod(join(src, 'private.key'), 0o600);
  await writeFile(join(src, 'empty.txt'), '');
  await writeFile(join(src, 'grüße ✓.txt'), 'unicode name\n');
  await writeFile(join(src, 'lib', 'small.js'), sourceText(40_000));
  await writeFile(join(src, 'lib', 'big.js'), sourceText(3 * 1024 * 1024)); // streamed, deflated
  await writeFile(join(src, 'lib', 'noise.dat'), randomBytes(200_000)); // small, does not shrink
  await writeFile(join(src, 'lib', 'noise-big.dat'), randomBytes(2 * 1024 * 1024 + 17)); // streamed, stored
  // A PNG that happens to be very compressible: stored anyway, by extension.
  await writeFile(join(src, 'assets', 'logo.png'), Buffer.alloc(300_000, 7));
  await writeFile(join(src, 'assets', 'fonts', 'a.woff2'), randomBytes(30_000));
  await symlink('../index.html', join(src, 'lib', 'index-link.html')); // inside: kept as a link
  await symlink(join(src, 'assets'), join(src, 'assets-abs')); // absolute but inside: kept, made relative
  await symlink(join(outside, 'secret.txt'), join(src, 'leak.txt')); // outside: left out
  await symlink('../../outside', join(src, 'lib', 'escape')); // outside folder: left out
  await symlink('missing', join(src, 'dangling')); // dangling: left out
  execFileSync('mkfifo', [join(src, 'pipe')]); // special file: left out (would block a reader)
  // Fixed, distinct mtimes (one before 1980, which DOS time cannot hold: the UT field keeps it).
  await utimes(join(src, 'index.html'), new Date('2024-03-01T12:34:56Z'), new Date('2024-03-01T12:34:56Z'));
  await utimes(join(src, 'run.sh'), new Date('1975-06-01T00:00:00Z'), new Date('1975-06-01T00:00:00Z'));
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('scanSource', () => {
  it('lists entries sorted, sizes regular files, and reports what it leaves out', async () => {
    const s = await scanSource(src);
    const names = s.entries.map((e) => e.name);
    expect(names).toEqual([...names].sort());
    expect(names).toContain('empty/nested-empty/');
    expect(s.entries.find((e) => e.name === 'lib/index-link.html')).toMatchObject({ type: 'symlink', linkTarget: '../index.html' });
    expect(s.entries.find((e) => e.name === 'assets-abs')).toMatchObject({ type: 'symlink', linkTarget: 'assets' });
    expect(s.skipped).toEqual([
      { name: 'dangling', reason: 'symlink-dangling' },
      { name: 'leak.txt', reason: 'symlink-outside' },
      { name: 'lib/escape', reason: 'symlink-outside' },
      { name: 'pipe', reason: 'special-file' },
    ]);
    const files = s.entries.filter((e) => e.type === 'file');
    expect(s.fileCount).toBe(files.length);
    expect(s.totalBytes).toBe(files.reduce((n, e) => n + e.size, 0));
  });

  it('counts a sparse file by its apparent size without reading it', async () => {
    const dir = join(work, 'sparse');
    await mkdir(dir);
    await writeFile(join(dir, 'huge.bin'), '');
    await truncate(join(dir, 'huge.bin'), 50 * 1024 ** 3);
    const s = await scanSource(dir);
    expect(s.totalBytes).toBe(50 * 1024 ** 3);
  });

  it('refuses a missing source and a special file as permanent errors naming the path', async () => {
    await expect(scanSource(join(work, 'nope'))).rejects.toMatchObject({
      name: 'PermanentError',
      message: expect.stringContaining('nope'),
    });
    await expect(scanSource(join(src, 'pipe'))).rejects.toMatchObject({
      name: 'PermanentError',
      message: expect.stringContaining('neither'),
    });
  });
});

describe('createZipStream', () => {
  it('writes an archive that unzip -t accepts and that round-trips paths, contents, modes, mtimes, empty folders and inside links', async () => {
    const file = join(work, 'round.zip');
    await zipTo(src, file);
    const report = unzipTest(file);
    expect(report).toContain('No errors detected');

    const out = join(work, 'round-out');
    execFileSync('unzip', ['-q', file, '-d', out]);
    const expected = await describeTree(src);
    // What the archive must leave out.
    for (const gone of ['dangling', 'leak.txt', 'lib/escape', 'pipe']) delete expected[gone];
    expected['assets-abs'] = 'link -> assets';
    expect(await describeTree(out)).toEqual(expected);
    // The outside file never entered the archive, under any name.
    expect(execFileSync('unzip', ['-p', file], { maxBuffer: 64 << 20 }).includes('not for the archive')).toBe(false);
  });

  it('stores already-compressed and incompressible files and deflates text', async () => {
    const file = join(work, 'methods.zip');
    await zipTo(src, file);
    const m = methods(file);
    expect(m.get('assets/logo.png')).toBe('stor'); // by extension, although it would shrink
    expect(m.get('assets/fonts/a.woff2')).toBe('stor');
    expect(m.get('lib/noise.dat')).toBe('stor'); // by trying: random bytes do not shrink
    expect(m.get('lib/noise-big.dat')).toBe('stor'); // by the 64 KiB probe
    expect(m.get('lib/small.js')).toMatch(/^def/);
    expect(m.get('lib/big.js')).toMatch(/^def/);
    expect(m.get('index.html')).toMatch(/^def/);
    expect(m.get('empty.txt')).toBe('stor');
  });

  it('is deterministic: the same folder gives the same bytes', async () => {
    const a = join(work, 'det-a.zip');
    const b = join(work, 'det-b.zip');
    await zipTo(src, a);
    await zipTo(src, b);
    const hash = async (f: string) =>
      createHash('sha256')
        .update(await readFile(f))
        .digest('hex');
    expect(await hash(a)).toBe(await hash(b));
  });

  it('writes valid Zip64 records when forced', async () => {
    const file = join(work, 'zip64.zip');
    await zipTo(src, file, { forceZip64: true });
    expect(unzipTest(file)).toContain('No errors detected');
    const out = join(work, 'zip64-out');
    execFileSync('unzip', ['-q', file, '-d', out]);
    const expected = await describeTree(src);
    for (const gone of ['dangling', 'leak.txt', 'lib/escape', 'pipe']) delete expected[gone];
    expected['assets-abs'] = 'link -> assets';
    expect(await describeTree(out)).toEqual(expected);
    // End of central directory says "see Zip64", and the Zip64 end record is there.
    const bytes = await readFile(file);
    expect(bytes.readUInt32LE(bytes.length - 22)).toBe(0x06054b50);
    expect(bytes.readUInt16LE(bytes.length - 22 + 10)).toBe(0xffff);
    expect(bytes.readUInt32LE(bytes.length - 22 - 20 - 56)).toBe(0x06064b50);
    const python = spawnSync('python3', ['-c', 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); print(z.testzip())', file], {
      encoding: 'utf8',
    });
    if (python.status !== null && !python.error) expect(python.stdout.trim()).toBe('None');
  });

  it('gives the same bytes with compression threads (many small files) as without', async () => {
    const dir = join(work, 'many');
    for (let i = 0; i < 300; i++) {
      await mkdir(join(dir, `d${i % 7}`), { recursive: true });
      // Text, incompressible and empty files, so every method and edge goes through the threads.
      const content = i % 10 === 0 ? randomBytes(3000) : i % 25 === 0 ? Buffer.alloc(0) : sourceText(2000 + i * 37);
      await writeFile(join(dir, `d${i % 7}`, `f${i}.${i % 3 === 0 ? 'png' : 'js'}`), content);
    }
    const scanned = await scanSource(dir);
    const threaded = join(work, 'many-threads.zip');
    const inline = join(work, 'many-inline.zip');
    await pipeline(createZipStream(scanned, { threads: 2 }), createWriteStream(threaded));
    await pipeline(createZipStream(scanned, { threads: 0 }), createWriteStream(inline));
    const [a, b] = await Promise.all([readFile(threaded), readFile(inline)]);
    expect(a.equals(b)).toBe(true);
    expect(unzipTest(threaded)).toContain('No errors detected');
    const out = join(work, 'many-out');
    execFileSync('unzip', ['-q', threaded, '-d', out]);
    expect(await describeTree(out)).toEqual(await describeTree(dir));

    // A file that shrinks after the scan is caught in a thread too.
    await writeFile(join(dir, 'd3', 'f3.png'), 'short');
    await expect(pipeline(createZipStream(scanned, { threads: 2 }), createWriteStream(join(work, 'many-shrink.zip')))).rejects.toThrow(
      /d3\/f3\.png changed while it was being archived/,
    );
  });

  it('archives a single file under its own name', async () => {
    const file = join(work, 'single.zip');
    await zipTo(join(src, 'lib', 'big.js'), file);
    expect(unzipTest(file)).toContain('testing: big.js');
    expect(execFileSync('unzip', ['-p', file, 'big.js'], { maxBuffer: 8 << 20 }).equals(await readFile(join(src, 'lib', 'big.js')))).toBe(
      true,
    );
  });

  it('stops with an AbortError when the signal fires', async () => {
    const controller = new AbortController();
    const stream = createZipStream(await scanSource(src), { signal: controller.signal });
    controller.abort();
    await expect(pipeline(stream, createWriteStream(join(work, 'aborted.zip')))).rejects.toMatchObject({ name: 'AbortError' });
  });

  it('fails, not silently truncates, when a file shrinks after the scan', async () => {
    const dir = join(work, 'shrink');
    await mkdir(dir);
    await writeFile(join(dir, 'a.txt'), sourceText(100_000));
    const scanned = await scanSource(dir);
    await writeFile(join(dir, 'a.txt'), 'short');
    await expect(pipeline(createZipStream(scanned), createWriteStream(join(work, 'shrink.zip')))).rejects.toThrow(
      /changed while it was being archived/,
    );
  });

  it.skipIf(!process.env.STOWAGE_SLOW_TESTS)(
    'writes more than 65,535 entries with a Zip64 end record that unzip -t accepts',
    { timeout: 300_000 },
    async () => {
      const dir = join(work, 'entries');
      for (let d = 0; d < 70; d++) {
        await mkdir(join(dir, `d${d}`), { recursive: true });
        await Promise.all(Array.from({ length: 1000 }, (_, i) => writeFile(join(dir, `d${d}`, `f${i}.txt`), `${d}/${i}\n`)));
      }
      const file = join(work, 'entries.zip');
      await zipTo(dir, file);
      expect(unzipTest(file)).toContain('No errors detected');
      expect(
        execFileSync('unzip', ['-Z1', file], { encoding: 'utf8', maxBuffer: 64 << 20 })
          .trim()
          .split('\n'),
      ).toHaveLength(70_070);
      await rm(dir, { recursive: true, force: true });
    },
  );

  // Real >4 GiB archive (about 75 s on 2 cores and 4.4 GB of temporary disk). Run with STOWAGE_SLOW_TESTS=1.
  it.skipIf(!process.env.STOWAGE_SLOW_TESTS)('writes a >4 GiB archive that unzip -t accepts', { timeout: 300_000 }, async () => {
    const dir = join(work, 'big');
    await mkdir(dir);
    // Sparse inputs: stored by extension, so the archive itself passes 4 GiB and needs Zip64
    // sizes and offsets; a deflated 4.5 GiB entry exercises the Zip64 data descriptor.
    await writeFile(join(dir, 'a.zip'), '');
    await truncate(join(dir, 'a.zip'), 4_400_000_000);
    await writeFile(join(dir, 'b.bin'), '');
    await truncate(join(dir, 'b.bin'), 4.5 * 1024 ** 3);
    await writeFile(join(dir, 'c.txt'), 'after the 4 GiB mark\n');
    const file = join(work, 'big.zip');
    await zipTo(dir, file);
    expect(unzipTest(file)).toContain('No errors detected');
    await rm(file);
  });
});
