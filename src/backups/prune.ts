/**
 * Applying a set's retention policy: the pure decision (src/backups/retention.ts), then the store
 * deletes and the `backups` rows marked. Used by the backup processor's `prune` task and
 * `stowage backup prune`.
 */
import { listBackups, markBackupDeleted, type BackupRow } from '../db/backups.js';
import type { Db } from '../db/pool.js';
import type { Logger } from '../observability/logger.js';
import type { Storage } from '../storage/client.js';
import { deleteBackupObject } from './catalog.js';
import { applyRetentionPolicy, type RetentionDecision, type RetentionPolicy } from './retention.js';

export interface PruneResult {
  set: string;
  dryRun: boolean;
  decisions: RetentionDecision<BackupRow>[];
  deleted: string[];
}

/**
 * Apply a retention policy to a set: decide (pure, src/backups/retention.ts), then for each backup
 * to delete remove the object and its sidecar and mark its row deleted. The row is marked only
 * after the store confirmed the delete, so a failure leaves it listed for the next run.
 */
export async function pruneBackupSet(
  deps: { db: Db; storage: Storage; logger?: Logger },
  set: string,
  policy: RetentionPolicy,
  options: { dryRun?: boolean | undefined } = {},
): Promise<PruneResult> {
  const rows = await listBackups(deps.db, set);
  const decisions = applyRetentionPolicy(rows, policy);
  const deleted: string[] = [];
  if (!options.dryRun) {
    for (const d of decisions) {
      if (d.action !== 'delete') continue;
      const { key } = d.backup;
      await deleteBackupObject(deps.storage, key);
      await markBackupDeleted(deps.db, d.backup.id, `retention: ${d.reasons.join(', ')}`);
      deps.logger?.info({ key }, 'backup deleted by retention');
      deleted.push(key);
    }
  }
  return { set, dryRun: Boolean(options.dryRun), decisions, deleted };
}
