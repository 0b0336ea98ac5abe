/**
 * The scan and the link policy: one lstat walk of the source that decides what the archive will
 * hold and what it leaves out. Entries are sorted by path; directories are entries of their own
 * (empty folders survive); names are `/`-separated, relative to the source.
 *
 * Symlinks are never followed. A link that resolves (through any chain of links) to a path inside
 * the source is stored as a link entry whose target is rewritten relative to the link, so it stays
 * valid wherever the archive is extracted; a link that resolves outside, or is dangling, is left
 * out and reported in `ZipSource.skipped`. Sockets, FIFOs and devices are skipped. (That a file
 * read later is still the file the scan saw is read.ts's part: O_NOFOLLOW and fstat.)
 */
import { lstatSync, readdirSync, realpathSync } from 'node:fs';
import { realpath, stat } from 'node:fs/promises';
import { basename, dirname, join, relative, sep } from 'node:path';
import { PermanentError } from '../../errors.js';

export type ZipEntryType = 'file' | 'directory' | 'symlink';

export interface ZipEntry {
  /** Path inside the archive: `/`-separated, relative; directories end with `/`. */
  name: string;
  /** Absolute path on disk. */
  path: string;
  type: ZipEntryType;
  /** st_mode: file type and permission bits. */
  mode: number;
  /** Content bytes: the file size, or the byte length of a link's target. */
  size: number;
  mtimeMs: number;
  /** For symlinks: the target as stored, relative to the link's folder. */
  linkTarget?: string;
}

export interface SkippedEntry {
  name: string;
  reason: 'symlink-outside' | 'symlink-dangling' | 'special-file';
}

/** The result of scanning a source: what the archive will hold, from one stat walk. */
export interface ZipSource {
  /** Real path of the source. */
  root: string;
  kind: 'directory' | 'file';
  /** Sorted by name. */
  entries: ZipEntry[];
  skipped: SkippedEntry[];
  /** Sum of regular file sizes (st_size; a sparse file counts its apparent size). */
  totalBytes: number;
  fileCount: number;
}

/** The scan yields to the event loop after this many synchronous syscalls. */
const SCAN_SLICE = 256;

function isInside(root: string, path: string): boolean {
  return path === root || path.startsWith(root.endsWith(sep) ? root : root + sep);
}

/** A missing or unreadable source is the caller's mistake (permanent); anything else passes through. */
export function sourceError(err: unknown, what: string): Error {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOENT' || code === 'ENOTDIR') return new PermanentError(`${what} does not exist`, { cause: err });
  if (code === 'EACCES' || code === 'EPERM') return new PermanentError(`${what} is not readable (${code})`, { cause: err });
  return err as Error;
}

/**
 * Walk `source` (lstat only; no file is read) and list what the archive will hold. Cheap enough to
 * run before deciding whether to archive at all.
 */
export async function scanSource(source: string, options: { signal?: AbortSignal } = {}): Promise<ZipSource> {
  let root: string;
  let rootStat: Awaited<ReturnType<typeof stat>>;
  try {
    root = await realpath(source);
    rootStat = await stat(root);
  } catch (err) {
    throw sourceError(err, source);
  }
  if (rootStat.isFile()) {
    const name = basename(root);
    return {
      root,
      kind: 'file',
      entries: [{ name, path: root, type: 'file', mode: rootStat.mode, size: rootStat.size, mtimeMs: rootStat.mtimeMs }],
      skipped: [],
      totalBytes: rootStat.size,
      fileCount: 1,
    };
  }
  if (!rootStat.isDirectory()) throw new PermanentError(`${source} is neither a directory nor a regular file`);

  // Synchronous lstat/readdir in slices, yielding to the event loop between them: ~10x faster
  // than the promise API for trees of thousands of files, without holding the loop for long.
  const entries: ZipEntry[] = [];
  const skipped: SkippedEntry[] = [];
  let totalBytes = 0;
  let fileCount = 0;
  let calls = 0;
  const tick = async () => {
    if (++calls % SCAN_SLICE === 0) {
      await new Promise<void>((resolve) => setImmediate(resolve));
      options.signal?.throwIfAborted();
    }
  };
  const dirs: { abs: string; rel: string }[] = [{ abs: root, rel: '' }];
  try {
    while (dirs.length) {
      const { abs: absDir, rel: relDir } = dirs.pop()!;
      await tick();
      for (const n of readdirSync(absDir)) {
        await tick();
        const abs = join(absDir, n);
        const name = relDir ? `${relDir}/${n}` : n;
        const st = lstatSync(abs);
        if (st.isDirectory()) {
          entries.push({ name: `${name}/`, path: abs, type: 'directory', mode: st.mode, size: 0, mtimeMs: st.mtimeMs });
          dirs.push({ abs, rel: name });
        } else if (st.isFile()) {
          entries.push({ name, path: abs, type: 'file', mode: st.mode, size: st.size, mtimeMs: st.mtimeMs });
          totalBytes += st.size;
          fileCount++;
        } else if (st.isSymbolicLink()) {
          let resolved: string;
          try {
            resolved = realpathSync(abs);
          } catch {
            skipped.push({ name, reason: 'symlink-dangling' });
            continue;
          }
          if (!isInside(root, resolved)) {
            skipped.push({ name, reason: 'symlink-outside' });
            continue;
          }
          // The stored target is the resolved path made relative to the link, so a target like
          // `../../root/b` cannot point elsewhere once extracted under another folder name.
          const linkTarget = relative(dirname(abs), resolved).split(sep).join('/') || '.';
          entries.push({
            name,
            path: abs,
            type: 'symlink',
            mode: st.mode,
            size: Buffer.byteLength(linkTarget),
            mtimeMs: st.mtimeMs,
            linkTarget,
          });
        } else {
          skipped.push({ name, reason: 'special-file' });
        }
      }
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EACCES') throw sourceError(err, `a path under ${source}`);
    throw err;
  }
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  skipped.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return { root, kind: 'directory', entries, skipped, totalBytes, fileCount };
}
