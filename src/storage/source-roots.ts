/**
 * Source roots (`sourceRoots`, STOWAGE_SOURCE_ROOTS): the folders a worker may read from or restore
 * into. A payload names paths (a build folder, a SQLite file, a restore target) and anyone who may
 * enqueue (an admin token, the board's basic auth) writes payloads, so a path is held to the roots
 * twice: lexically at enqueue (`sourceRootProblem`, pure, so a producer refuses it before Redis),
 * and by the worker after resolving links (`resolveInsideRoots`), since a link inside a root may
 * point anywhere and a payload may reach the queue without a producer (the board's "add job").
 *
 * A path is inside a root when it equals the root or lies under `root + sep`, so `/srv/builds2` is
 * not inside `/srv/builds`. The entry `*` allows every path (unsafe; only for a single-user host).
 *
 * Here in storage/ because it is about file system paths and nothing else: it knows no jobs, and
 * producers, processors, backups and HTTP all use it.
 */
import { realpath } from 'node:fs/promises';
import { basename, delimiter, dirname, join, resolve, sep } from 'node:path';
import { PermanentError } from '../errors.js';

/** The variable that sets the roots, named in every refusal. */
export const SOURCE_ROOTS_VARIABLE = 'STOWAGE_SOURCE_ROOTS';
/** The entry that lets workers read anywhere. */
export const ANYWHERE = '*';

/** True when the roots are `*`: every path is allowed. */
export const allowsAnywhere = (roots: readonly string[]): boolean => roots.includes(ANYWHERE);

/** `path` equals `root` or lies under it; both absolute and normalized. */
function within(path: string, root: string): boolean {
  return path === root || path.startsWith(root.endsWith(sep) ? root : root + sep);
}

/** True when `path` (absolute) is inside one of `roots`, by its text alone (`..` resolved, links not). */
export function isInsideRoots(path: string, roots: readonly string[]): boolean {
  if (allowsAnywhere(roots)) return true;
  const p = resolve(path);
  return roots.some((root) => within(p, resolve(root)));
}

const outside = (roots: readonly string[]) =>
  `outside the source roots (${SOURCE_ROOTS_VARIABLE}=${roots.join(delimiter)}); add its folder to ${SOURCE_ROOTS_VARIABLE}`;

/**
 * The enqueue check: null when `path` is lexically inside the roots, else why not (for a
 * ValidationError issue `field: …`). Pure: a producer may run where the path does not exist.
 */
export function sourceRootProblem(path: string, roots: readonly string[]): string | null {
  return isInsideRoots(path, roots) ? null : `${resolve(path)} is ${outside(roots)}`;
}

const UNRESOLVABLE = new Set(['ELOOP', 'EACCES', 'EPERM', 'ENAMETOOLONG']);
const isMissing = (err: unknown) => ['ENOENT', 'ENOTDIR'].includes((err as NodeJS.ErrnoException).code ?? '');

/**
 * `path` with every link resolved: its realpath, or, when it does not exist yet (a restore
 * target), its nearest existing parent's realpath with the rest appended.
 */
async function realpathOrParent(path: string): Promise<string> {
  const rest: string[] = [];
  let at = resolve(path);
  for (;;) {
    try {
      return join(await realpath(at), ...rest.reverse());
    } catch (err) {
      if (!isMissing(err) || dirname(at) === at) throw err;
      rest.push(basename(at));
      at = dirname(at);
    }
  }
}

/**
 * The worker check: resolves `path`'s links (see realpathOrParent) and returns the resolved path
 * when it lies inside one of the roots (each resolved too; a root that does not exist holds
 * nothing), else throws PermanentError naming `field`. Callers use the returned path from then on,
 * so a link swapped after the check is not followed.
 */
export async function resolveInsideRoots(field: string, path: string, roots: readonly string[]): Promise<string> {
  if (allowsAnywhere(roots)) return path;
  let real: string;
  try {
    real = await realpathOrParent(path);
  } catch (err) {
    // A link loop or a folder we may not enter stays so; anything else (EMFILE, EIO) may pass.
    if (!UNRESOLVABLE.has((err as NodeJS.ErrnoException).code ?? '')) throw err;
    throw new PermanentError(`${field}: cannot resolve ${path}: ${(err as Error).message}`, { cause: err });
  }
  const realRoots = await Promise.all(roots.map((root) => realpath(root).catch(() => resolve(root))));
  if (realRoots.some((root) => within(real, root))) return real;
  const given = resolve(path);
  throw new PermanentError(`${field}: ${given}${real === given ? '' : ` resolves to ${real}, which`} is ${outside(roots)}`);
}
