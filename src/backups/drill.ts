/**
 * Restore drills: the newest completed backup of a set restored into a scratch folder and scratch
 * PostgreSQL databases, checked there, and removed again. The backup processor's `drill` task and
 * `stowage backup drill` run it.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import type { Config } from '../config.js';
import { PermanentError } from '../errors.js';
import { listBackups } from '../db/backups.js';
import type { Db } from '../db/pool.js';
import type { Logger } from '../observability/logger.js';
import type { Storage } from '../storage/client.js';
import { postgresConnection, postgresUrlFor } from './postgres.js';
import { applyRestore, dropPostgresDatabase, stageRestore, type ApplyResult } from './restore.js';
import { quickCheck } from './snapshot.js';
import type { BackupResult } from '../queues/payloads.js';

/** The drill's checks: the `drill` backup job result (declared once, in the queue contract). */
export type DrillResult = Omit<Extract<BackupResult, { status: 'drilled' }>, 'status'>;

/**
 * A restore drill: the newest completed backup of `set` is staged (archive checksum, per-file
 * checksums, integrity_check, foreign_key_check, pg_restore --list), applied into a scratch folder
 * and scratch PostgreSQL databases on the configured set's servers, and checked again there
 * (integrity_check; tables readable).
 * Everything it creates is removed. Never throws for a failed drill: `ok` says.
 */
export async function runRestoreDrill(
  deps: { db: Db; storage: Storage; config: Pick<Config, 'backupSets'>; logger?: Logger },
  set: string,
): Promise<DrillResult> {
  const started = Date.now();
  const result: DrillResult = { ok: false, set, key: null, ms: 0, databases: [] };
  const newest = (await listBackups(deps.db, set)).find((b) => b.status === 'completed' && b.verified);
  if (!newest) {
    result.error = `no completed backup of set ${set}`;
    result.ms = Date.now() - started;
    return result;
  }
  result.key = newest.key;
  const configured = deps.config.backupSets.find((s) => s.name === set);
  const pgUrl = (name: string) => configured?.postgres.find((p) => p.name === name)?.url;
  const scratch = await mkdtemp(join(tmpdir(), `stowage-drill-${set}-`));
  let applied: ApplyResult | null = null;
  const urls = new Map<string, string>();
  try {
    const { stagingDir, pending } = await stageRestore(deps.storage, newest.key, {
      toDir: scratch,
      pgDatabase: `stowage_drill_${randomBytes(4).toString('hex')}`,
    });
    for (const d of pending.postgres ?? []) {
      // Only a configured server: the archive's recorded source never receives the password.
      const url = pgUrl(d.name);
      if (!url)
        throw new PermanentError(
          `restore refused: postgres ${d.name}: set ${set} has no configured database of that name; a drill restores dumps only to a configured set's server`,
        );
      urls.set(d.name, url);
    }
    applied = await applyRestore(stagingDir, { postgresUrl: (name) => urls.get(name) });
    for (const d of applied.databases) {
      const problems = quickCheck(d.target, 'integrity_check');
      result.databases.push({
        name: d.name,
        kind: 'sqlite',
        ok: problems.length === 0,
        detail: problems.length ? problems.slice(0, 3).join('; ') : 'integrity_check ok',
      });
    }
    for (const d of applied.postgres) {
      const url = urls.get(d.name)!;
      const conn = postgresConnection(url);
      const client = new pg.Client({
        connectionString: postgresUrlFor(url, d.database),
        ...(conn.password !== undefined ? { password: conn.password } : {}),
      });
      client.on('error', () => {});
      await client.connect();
      try {
        const { rows } = await client.query<{ n: string }>(
          "SELECT count(*) AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
        );
        result.databases.push({ name: d.name, kind: 'postgres', ok: true, detail: `restored, ${rows[0]!.n} table(s)` });
      } finally {
        await client.end().catch(() => {});
      }
    }
    result.ok = result.databases.every((d) => d.ok);
    if (!result.ok)
      result.error = result.databases
        .filter((d) => !d.ok)
        .map((d) => `${d.name}: ${d.detail}`)
        .join('; ');
  } catch (err) {
    result.error = (err as Error).message;
  } finally {
    for (const d of applied?.postgres ?? []) await dropPostgresDatabase(urls.get(d.name)!, d.database).catch(() => {});
    await rm(scratch, { recursive: true, force: true });
  }
  result.ms = Date.now() - started;
  deps.logger?.[result.ok ? 'info' : 'error']({ set, key: result.key, ok: result.ok, error: result.error }, 'restore drill');
  return result;
}
