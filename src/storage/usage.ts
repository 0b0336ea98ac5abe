/**
 * Storage usage: bytes and objects per top-level prefix, the estimated monthly cost at R2 prices
 * (config.usage; free tier deducted), and the budget check (seed 001's cost alert). Also the gauge
 * `stowage_storage_bytes{prefix}`; its label is the top-level prefix, a small bounded set.
 */
import { Gauge, type Registry } from 'prom-client';
import type { Config } from '../config.js';
import type { Storage } from './client.js';
import { listObjects, type ListedObject } from './verify.js';

const GB = 1024 ** 3;
export const STORAGE_BYTES_METRIC = 'stowage_storage_bytes';

export interface PrefixUsage {
  /** `<segment>/` below the listed prefix, or `` for keys with no further `/`. */
  prefix: string;
  objects: number;
  bytes: number;
}

export interface CostEstimate {
  storageGb: number;
  storageUsd: number;
  classAUsd: number;
  classBUsd: number;
  totalUsd: number;
}

export interface UsageReport {
  bucket: string;
  prefix: string | null;
  prefixes: PrefixUsage[];
  objects: number;
  bytes: number;
  cost: CostEstimate;
  budgetUsd: number | null;
  /** True when the estimate is above the budget. */
  overBudget: boolean;
}

/** Group listed objects by their first path segment below `base`. */
export function summarize(objects: Iterable<Pick<ListedObject, 'key' | 'size'>>, base = ''): PrefixUsage[] {
  const groups = new Map<string, PrefixUsage>();
  for (const o of objects) {
    const rest = o.key.slice(base.length);
    const slash = rest.indexOf('/');
    const prefix = base + (slash === -1 ? '' : rest.slice(0, slash + 1));
    const g = groups.get(prefix) ?? { prefix, objects: 0, bytes: 0 };
    g.objects++;
    g.bytes += o.size;
    groups.set(prefix, g);
  }
  return [...groups.values()].sort((a, b) => (a.prefix < b.prefix ? -1 : a.prefix > b.prefix ? 1 : 0));
}

/** Monthly cost of keeping `bytes` stored, plus the configured expected operations. */
export function estimateCost(bytes: number, pricing: Config['usage']): CostEstimate {
  const storageGb = bytes / GB;
  const storageUsd = Math.max(0, storageGb - pricing.freeStorageGb) * pricing.storagePerGbMonth;
  const classAUsd = (Math.max(0, pricing.classAOpsPerMonth - pricing.freeClassAOps) / 1e6) * pricing.classAPerMillion;
  const classBUsd = (Math.max(0, pricing.classBOpsPerMonth - pricing.freeClassBOps) / 1e6) * pricing.classBPerMillion;
  const round = (n: number) => Math.round(n * 1e6) / 1e6;
  return {
    storageGb: round(storageGb),
    storageUsd: round(storageUsd),
    classAUsd: round(classAUsd),
    classBUsd: round(classBUsd),
    totalUsd: round(storageUsd + classAUsd + classBUsd),
  };
}

/** List everything under `prefix` (sidecars included: they are billed too) and price it. */
export async function measureUsage(
  storage: Storage,
  pricing: Config['usage'],
  options: { prefix?: string; onProgress?: (message: string) => void; signal?: AbortSignal } = {},
): Promise<UsageReport> {
  const all: Array<Pick<ListedObject, 'key' | 'size'>> = [];
  for await (const o of listObjects(storage, {
    ...(options.prefix ? { prefix: options.prefix } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
    onPage: (n) => {
      if (n % 10_000 === 0) options.onProgress?.(`listed ${n} keys`);
    },
  })) {
    all.push({ key: o.key, size: o.size });
  }
  const prefixes = summarize(all, options.prefix ?? '');
  const bytes = prefixes.reduce((n, p) => n + p.bytes, 0);
  const cost = estimateCost(bytes, pricing);
  const budgetUsd = pricing.monthlyBudgetUsd ?? null;
  return {
    bucket: storage.bucket,
    prefix: options.prefix || null,
    prefixes,
    objects: all.length,
    bytes,
    cost,
    budgetUsd,
    overBudget: budgetUsd !== null && cost.totalUsd > budgetUsd,
  };
}

/** The `stowage_storage_bytes{prefix}` gauge in `registry` (created once per registry). */
export function storageBytesGauge(registry: Registry): Gauge<'prefix'> {
  const existing = registry.getSingleMetric(STORAGE_BYTES_METRIC);
  if (existing) return existing as Gauge<'prefix'>;
  return new Gauge({
    name: STORAGE_BYTES_METRIC,
    help: 'Bytes stored per top-level key prefix, as last measured by stowage usage or the cleanup job',
    labelNames: ['prefix'],
    registers: [registry],
  });
}

/** Set the gauge from a report: one series per top-level prefix (old prefixes are dropped). */
export function recordUsage(registry: Registry, report: Pick<UsageReport, 'prefixes'>): void {
  const gauge = storageBytesGauge(registry);
  gauge.reset();
  for (const p of report.prefixes) gauge.set({ prefix: p.prefix }, p.bytes);
}
