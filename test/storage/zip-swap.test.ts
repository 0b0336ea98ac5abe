/**
 * The zip writer against a build folder that changes under it (security issue 17, item 1): a
 * folder swapped for a link to somewhere outside, files replaced, hard links. Whatever happens,
 * no byte from outside the source may reach the archive, and what is left out is reported.
 * Archives are read back with Info-ZIP `unzip`.
 */
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, renameSync, symlinkSync } from 'node:fs';
import { link, mkdir, mkdtemp, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isPermanent } from '../../src/errors.js';
import { artifactKey } from '../../src/storage/keys.js';
import { createZipStream, scanSource, type SkippedEntry, type ZipOptions, type ZipSource } from '../../src/storage/zip.js';
import { buildArtifact } from '../../src/workers/build-artifact.js';
import { processorTestEnv, type ProcessorTestEnv } from '../helpers/fleet.js';
import { isolate } from '../helpers/isolation.js';

const SECRET = 'OUTSIDE-SECRET';
/** Enough small files for the compression threads (see useThreads), and more than one scan slice. */
const FILES = 300;

let work: string;
let n = 0;
const fresh = async (name: string) => {
  const dir = join(work, `${name}-${n++}`);
  await mkdir(dir, { recursive: true });
  return dir;
};

/** `dir` filled with FILES small text files and one large one, each saying `label` and its name. */
async function fill(dir: string, label: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  await Promise.all(Array.from({ length: FILES }, (_, i) => writeFile(join(dir, `f${i}.txt`), `${label} f${i}\n`.repeat(20))));
  // Over 1 MiB: streamed on the main thread, not prepared ahead.
  await writeFile(join(dir, 'big.txt'), `${label} big\n`.repeat(200_000));
}

/** Zip `source` to a file; returns the file and what was reported left out while reading. */
async function zip(source: ZipSource, options: ZipOptions = {}): Promise<{ file: string; onRead: SkippedEntry[] }> {
  const file = join(work, `out-${n++}.zip`);
  const onRead: SkippedEntry[] = [];
  await pipeline(createZipStream(source, { ...options, onSkip: (s) => onRead.push(s) }), createWriteStream(file));
  return { file, onRead };
}

const names = (file: string) =>
  execFileSync('unzip', ['-Z1', file], { encoding: 'utf8', maxBuffer: 64 << 20 })
    .trim()
    .split('\n');
/** Every entry's content, concatenated (unzip -p), as text. */
const contents = (file: string) => execFileSync('unzip', ['-p', file], { maxBuffer: 256 << 20 }).toString('latin1');

/** A separate process swapping `base`/build/sub for a link to `base`/outside and back, as fast as it can, until killed. */
const startSwapper = (base: string) =>
  spawn(
    'bash',
    [
      '-c',
      'cd "$1" && while :; do mv build/sub held && ln -s "$PWD/outside" build/sub && rm build/sub && mv held build/sub; done',
      '-',
      base,
    ],
    { stdio: 'ignore' },
  );

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'stowage-zip-swap-'));
});

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

describe.each([
  { threads: 2, how: 'in compression threads' },
  { threads: 0, how: 'in this thread' },
])('a folder swapped for a link to outside after the scan ($how)', ({ threads }) => {
  it('archives none of the outside files, whatever their names, and reports each one it left out', async () => {
    const base = await fresh('swap');
    const root = join(base, 'build');
    await fill(join(root, 'sub'), 'inside');
    await writeFile(join(root, 'index.html'), '<!doctype html>\n');
    await fill(join(base, 'outside'), SECRET); // the same names as sub/

    const scanned = await scanSource(root);
    // The window: after the scan, before the reads.
    await rename(join(root, 'sub'), join(base, 'held'));
    await symlink(join(base, 'outside'), join(root, 'sub'));

    const { file, onRead } = await zip(scanned, { threads });
    expect(contents(file)).not.toContain(SECRET);
    expect(names(file)).toEqual(['index.html', 'sub/']);
    const subFiles = scanned.entries.filter((e) => e.type === 'file' && e.name.startsWith('sub/')).map((e) => e.name);
    expect(subFiles).toHaveLength(FILES + 1);
    expect(onRead).toEqual(subFiles.map((name) => ({ name, reason: 'outside-root' })));
  });
});

describe('a folder swapped while the scan lists its parent', () => {
  it('is not listed through the link: no outside name enters the archive, and the folder is reported', async () => {
    const base = await fresh('scan-swap');
    const root = join(base, 'build');
    await fill(join(root, 'a'), 'inside');
    await fill(join(root, 'b'), 'inside');
    for (const d of ['a', 'b']) {
      await fill(join(base, `out-${d}`), SECRET);
      await writeFile(join(base, `out-${d}`, 'only-outside.txt'), SECRET);
    }
    // The scan checks its abort signal each time it yields to the event loop (after 256 calls:
    // inside the listing of the first of a/ and b/), which is where any other code, a swapper
    // included, gets to run. This signal swaps both folders the first time.
    const { signal } = new AbortController();
    let swapped = false;
    Object.defineProperty(signal, 'throwIfAborted', {
      value: () => {
        if (swapped) return;
        swapped = true;
        for (const d of ['a', 'b']) {
          renameSync(join(root, d), join(base, `held-${d}`));
          symlinkSync(join(base, `out-${d}`), join(root, d));
        }
      },
    });
    const scanned = await scanSource(root, { signal });
    expect(swapped).toBe(true);
    // The folder being listed is finished from its descriptor; the other one is not listed at all.
    expect(scanned.entries.map((e) => e.name).filter((name) => name.endsWith('only-outside.txt'))).toEqual([]);
    const left = scanned.skipped.filter((s) => s.name === 'a/' || s.name === 'b/');
    expect(left).toHaveLength(1);
    expect(left[0]!.reason).toBe('changed-since-scan');

    // The listed folder's files now open through the link: refused at the read.
    const { file, onRead } = await zip(scanned);
    expect(contents(file)).not.toContain(SECRET);
    const listed = left[0]!.name === 'a/' ? 'b/' : 'a/';
    expect(names(file)).toEqual([listed]);
    expect(onRead).toHaveLength(FILES + 1);
    expect(onRead.every((s) => s.name.startsWith(listed) && s.reason === 'outside-root')).toBe(true);
  });
});

describe('a folder swapped back and forth while archives are made', () => {
  it('never lets outside content into an archive', { timeout: 120_000 }, async () => {
    const base = await fresh('churn');
    const root = join(base, 'build');
    await fill(join(root, 'sub'), 'inside');
    await writeFile(join(root, 'index.html'), '<!doctype html>\n');
    await fill(join(base, 'outside'), SECRET);
    // A separate process swaps sub/ for a link to outside/ and back, as fast as it can, while this
    // one scans and archives; between archives there is no pause.
    const swapper = startSwapper(base);
    const outcomes = { archived: 0, failed: 0 };
    try {
      for (let i = 0; i < 24; i++) {
        let archive: string;
        try {
          archive = (await zip(await scanSource(root), { threads: i % 2 ? 2 : 0 })).file;
        } catch (err) {
          // sub/ was missing mid-swap: this archive fails, retryably.
          expect(isPermanent(err), (err as Error).message).toBe(false);
          outcomes.failed++;
          continue;
        }
        outcomes.archived++;
        expect(contents(archive), JSON.stringify(outcomes)).not.toContain(SECRET);
      }
    } finally {
      swapper.kill();
    }
  });
});

describe('a file replaced between the scan and the read', () => {
  it.each([2, 0])('is left out and reported, not archived with the new content (threads: %i)', async (threads) => {
    const root = await fresh('replace');
    await fill(root, 'inside');
    const secret = join(work, `secret-${n++}.txt`);
    await writeFile(secret, SECRET);
    const scanned = await scanSource(root);
    // Same sizes, new files (new inodes): an atomic rename over the old one, as a build tool does.
    for (const name of ['f7.txt', 'big.txt']) {
      const old = await readFile(join(root, name));
      await writeFile(join(root, `${name}.new`), Buffer.from(old.toString().replaceAll('inside', SECRET.slice(0, 6))));
      await rename(join(root, `${name}.new`), join(root, name));
    }
    // And one replaced by a link to a file outside.
    await rm(join(root, 'f8.txt'));
    await symlink(secret, join(root, 'f8.txt'));

    const { file, onRead } = await zip(scanned, { threads });
    expect(onRead).toEqual([
      { name: 'big.txt', reason: 'changed-since-scan' },
      { name: 'f7.txt', reason: 'changed-since-scan' },
      { name: 'f8.txt', reason: 'changed-since-scan' },
    ]);
    const archived = names(file);
    expect(archived).toHaveLength(FILES - 2);
    expect(archived).not.toContain('f7.txt');
    const text = contents(file);
    expect(text).not.toContain(SECRET.slice(0, 6));
    expect(text).toContain('inside f9\n');
  });
});

describe('hard links', () => {
  let root: string;
  let secret: string;

  beforeAll(async () => {
    root = await fresh('links');
    await writeFile(join(root, 'plain.txt'), 'plain\n');
    await writeFile(join(root, 'a.txt'), 'shared content\n');
    await link(join(root, 'a.txt'), join(root, 'b.txt'));
    // A link planted in the build folder to a file elsewhere: its content is not the build's.
    secret = join(work, 'linked-secret.txt');
    await writeFile(secret, `${SECRET}\n`);
    await link(secret, join(root, 'planted.txt'));
  });

  it('by default, files with more than one link are left out and reported by the scan', async () => {
    const scanned = await scanSource(root);
    expect(scanned.skipped).toEqual([
      { name: 'a.txt', reason: 'hard-link' },
      { name: 'b.txt', reason: 'hard-link' },
      { name: 'planted.txt', reason: 'hard-link' },
    ]);
    expect(scanned.fileCount).toBe(1);
    const { file } = await zip(scanned);
    expect(names(file)).toEqual(['plain.txt']);
    expect(contents(file)).not.toContain(SECRET);
  });

  it('with archiveHardLinks they are archived', async () => {
    const { file, onRead } = await zip(await scanSource(root, { archiveHardLinks: true }));
    expect(onRead).toEqual([]);
    expect(names(file)).toEqual(['a.txt', 'b.txt', 'plain.txt', 'planted.txt']);
    expect(execFileSync('unzip', ['-p', file, 'b.txt'], { encoding: 'utf8' })).toBe('shared content\n');
  });

  it('a link made after the scan is caught when the file is opened', async () => {
    const dir = await fresh('late-link');
    await fill(dir, 'inside');
    const scanned = await scanSource(dir);
    await link(join(dir, 'f3.txt'), join(work, `late-${n++}.txt`));
    await link(join(dir, 'big.txt'), join(work, `late-${n++}.txt`));
    for (const threads of [2, 0]) {
      const { file, onRead } = await zip(scanned, { threads });
      expect(onRead).toEqual([
        { name: 'big.txt', reason: 'hard-link' },
        { name: 'f3.txt', reason: 'hard-link' },
      ]);
      expect(names(file)).toHaveLength(FILES - 1);
    }
  });
});

describe('the build-artifact processor', () => {
  const iso = isolate('zipswap');
  let env: ProcessorTestEnv<'build-artifact'>;

  beforeAll(async () => {
    env = await processorTestEnv(iso, 'build-artifact', buildArtifact);
  });

  afterAll(async () => {
    await env?.close();
  });

  it('leaves hard-linked files out unless artifact.archiveHardLinks is set', async () => {
    const buildDir = await fresh('artifact-links');
    await writeFile(join(buildDir, 'index.html'), '<!doctype html>\n');
    await writeFile(join(buildDir, 'app.js'), randomBytes(1000).toString('hex'));
    await link(join(buildDir, 'app.js'), join(work, `app-elsewhere-${n++}.js`));
    const key = artifactKey('u1', 'p1', 'v1');
    const entriesOf = async () => {
      const file = join(work, `artifact-${n++}.zip`);
      await writeFile(file, await env.getObject(key));
      return names(file);
    };

    await env.run({ userId: 'u1', projectId: 'p1', versionId: 'v1', buildDir });
    expect(await entriesOf()).toEqual(['index.html']);

    await env.run({ userId: 'u1', projectId: 'p1', versionId: 'v1', buildDir }, env.configWith({ artifact: { archiveHardLinks: true } }));
    expect((await entriesOf()).sort()).toEqual(['app.js', 'index.html']);
  });

  it('uploads no outside byte while another process swaps a folder of the build for a link to outside', { timeout: 120_000 }, async () => {
    const base = await fresh('artifact-churn');
    const buildDir = join(base, 'build');
    await fill(join(buildDir, 'sub'), 'inside');
    await writeFile(join(buildDir, 'index.html'), '<!doctype html>\n');
    await fill(join(base, 'outside'), SECRET);
    const swapper = startSwapper(base);
    const outcomes = { uploaded: 0, failed: 0 };
    try {
      for (let i = 0; i < 12; i++) {
        const versionId = `churn${i}`;
        try {
          await env.run({ userId: 'u1', projectId: 'p2', versionId, buildDir });
        } catch (err) {
          // sub/ missing mid-swap: a retryable failure of this attempt, never a leak.
          expect(isPermanent(err), (err as Error).message).toBe(false);
          outcomes.failed++;
          continue;
        }
        outcomes.uploaded++;
        const file = join(work, `churn-${n++}.zip`);
        await writeFile(file, await env.getObject(artifactKey('u1', 'p2', versionId)));
        expect(contents(file), JSON.stringify(outcomes)).not.toContain(SECRET);
        expect(names(file)).toContain('index.html');
      }
    } finally {
      swapper.kill();
    }
    expect(outcomes.uploaded).toBeGreaterThan(0);
  });
});
