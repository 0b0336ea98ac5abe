/**
 * The built-in processor of each job kind: one file per kind under src/workers/. A kind without
 * an entry here has its queue and payload contract but no worker yet; `stowage worker` says so.
 */
import { aggregation } from './aggregation.js';
import { backup } from './backup.js';
import { buildArtifact } from './build-artifact.js';
import { cleanup } from './cleanup.js';
import { exportRecords } from './export.js';
import type { ProcessorMap } from './runtime.js';

export const PROCESSORS: ProcessorMap = {
  'build-artifact': buildArtifact,
  aggregation,
  backup,
  cleanup,
  export: exportRecords,
};
