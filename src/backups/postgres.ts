/**
 * The PostgreSQL side of backups: a database URL split for libpq (the password kept off command
 * lines and out of logs), and the client tools (pg_dump, pg_restore) run with the password in
 * PGPASSWORD. Shared by the backup processor, the restore (src/backups/restore.ts) and the drill.
 */
import { spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { PermanentError, StowageError } from '../errors.js';

/**
 * A PostgreSQL URL split for libpq: the URL without its password (safe to log, to store in the
 * metadata and to pass on a command line, where `ps` would show it), the password for
 * PGPASSWORD, and the database name. The URL itself is never echoed in an error.
 */
export function postgresConnection(url: string): { url: string; password: string | undefined; database: string } {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new PermanentError('postgres: the database URL is not valid (expected postgres://user@host:port/database)');
  }
  if (u.protocol !== 'postgres:' && u.protocol !== 'postgresql:')
    throw new PermanentError(`postgres: the database URL must start with postgres:// (got ${u.protocol}//)`);
  let password = u.password ? decodeURIComponent(u.password) : undefined;
  u.password = '';
  const fromQuery = u.searchParams.get('password');
  if (fromQuery !== null) {
    password ??= fromQuery;
    u.searchParams.delete('password');
  }
  const database = decodeURIComponent(u.pathname.replace(/^\//, ''));
  if (!database) throw new PermanentError(`postgres: the database URL ${u.toString()} names no database`);
  return { url: u.toString(), password, database };
}

/** The same server, another database (URL without password). */
export function postgresUrlFor(url: string, database: string): string {
  const u = new URL(postgresConnection(url).url);
  u.pathname = `/${encodeURIComponent(database)}`;
  return u.toString();
}

/**
 * Run a PostgreSQL client tool (pg_dump, pg_restore) with the password in PGPASSWORD, never in
 * argv. stdout goes to `stdout` when given (streamed), else is returned. A non-zero exit throws a
 * StowageError with the tool's stderr (bounded, password scrubbed).
 */
export async function runPgTool(
  tool: 'pg_dump' | 'pg_restore',
  args: string[],
  options: { password?: string | undefined; stdout?: NodeJS.WritableStream; signal?: AbortSignal } = {},
): Promise<string> {
  // biome-ignore lint/style/noProcessEnv: the pg tool inherits the environment (PATH, locale, PG* defaults) plus PGPASSWORD
  const env = { ...process.env };
  if (options.password !== undefined) env.PGPASSWORD = options.password;
  const child = spawn(tool, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const onAbort = () => child.kill('SIGTERM');
  options.signal?.addEventListener('abort', onAbort, { once: true });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (c: string) => {
    if (stderr.length < 8192) stderr += c;
  });
  const chunks: Buffer[] = [];
  const exited = new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => resolve(code));
  });
  try {
    const [code] = await Promise.all([
      exited,
      options.stdout
        ? pipeline(child.stdout, options.stdout)
        : (async () => {
            for await (const c of child.stdout) chunks.push(c as Buffer);
          })(),
    ]);
    if (code !== 0) {
      const scrubbed = options.password ? stderr.split(options.password).join('***') : stderr;
      throw new StowageError(
        'STOWAGE_ERR_INTERNAL',
        `${tool} failed (exit ${code}): ${scrubbed.trim().split('\n').slice(0, 5).join(' | ') || 'no message'}`,
      );
    }
    return Buffer.concat(chunks).toString('utf8');
  } catch (err) {
    child.kill('SIGKILL');
    if ((err as NodeJS.ErrnoException).code === 'ENOENT')
      throw new PermanentError(`${tool} is not installed (not found on PATH)`, { cause: err });
    throw err;
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
  }
}

/**
 * `pg_dump --format=custom` of one database, streamed from the tool's stdout to `dest` (the
 * archive needs each entry's size up front, so the dump is spooled next to the SQLite snapshots),
 * then `pg_restore --list` on it: a dump that pg_restore cannot read fails the job before upload.
 */
export async function dumpPostgres(url: string, dest: string, signal?: AbortSignal): Promise<void> {
  const conn = postgresConnection(url);
  await runPgTool('pg_dump', ['--format=custom', '--dbname', conn.url], {
    password: conn.password,
    stdout: createWriteStream(dest, { flags: 'wx', mode: 0o600 }),
    ...(signal ? { signal } : {}),
  });
  await runPgTool('pg_restore', ['--list', dest]).catch((err: unknown) => {
    throw new StowageError('STOWAGE_ERR_INTERNAL', `postgres ${conn.url}: the dump does not read back: ${(err as Error).message}`, {
      cause: err,
    });
  });
}
