/**
 * Storage usage: bytes and objects per top-level prefix, the estimated monthly cost at R2 prices
 * (config.usage; free tier deducted), and the budget check (seed 001's cost alert). Also the gauges
 * the scheduled cleanup job sets after each whole-bucket run (src/workers/cleanup.ts), so the cost
 * can be alerted on (StorageMonthlyBudgetExceeded): `stowage_storage_bytes{prefix}` (the label is
 * the top-level prefix, a small bounded set), the estimated monthly cost, when it was measured, and
 * the configured budget. They are made on the first measurement, never before: a process that has
 * measured nothing exports no cost (not a false 0) and no budget.
 */
import { Gauge, type Registry } from 'prom-client';
import type { Config } from '../config.js';
import type { Storage } from './client.js';
import { listObjects, type ListedObject } from './verify.js';

const GB = 1024 ** 3;
export const STORAGE_BYTES_METRIC = 'stowage_storage_bytes';
export const STORAGE_COST_METRIC = 'stowage_storage_estimated_monthly_cost_usd';
export const STORAGE_MEASURED_METRIC = 'stowage_storage_usage_timestamp_seconds';
export const MONTHLY_BUDGET_METRIC = 'stowage_monthly_budget_usd';

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

function gauge<L extends string>(registry: Registry, name: string, help: string, labelNames: L[] = []): Gauge<L> {
  return (registry.getSingleMetric(name) as Gauge<L> | undefined) ?? new Gauge<L>({ name, help, labelNames, registers: [registry] });
}

/** The usage gauges, each made in `registry` on first use (a label-less gauge exports 0 once it exists). */
const USAGE_GAUGES = {
  bytes: (registry: Registry) =>
    gauge(registry, STORAGE_BYTES_METRIC, 'Bytes stored per top-level key prefix, as last measured by the scheduled cleanup job', [
      'prefix',
    ]),
  cost: (registry: Registry) =>
    gauge(
      registry,
      STORAGE_COST_METRIC,
      'Estimated monthly cost in USD of what is stored (and the configured expected operations), at the configured prices',
    ),
  measuredAt: (registry: Registry) =>
    gauge(registry, STORAGE_MEASURED_METRIC, 'Unix time of the usage measurement the storage gauges hold'),
  budget: (registry: Registry) =>
    gauge(registry, MONTHLY_BUDGET_METRIC, 'The configured monthly budget in USD (STOWAGE_MONTHLY_BUDGET_USD); absent when none is set'),
};

/** The `stowage_storage_bytes{prefix}` gauge in `registry` (created once per registry). */
export function storageBytesGauge(registry: Registry): Gauge<'prefix'> {
  return USAGE_GAUGES.bytes(registry);
}

/** Registers every usage gauge in `registry`: for listing the names only (the deploy tests), never in a serving process. */
export function registerUsageGauges(registry: Registry): void {
  for (const make of Object.values(USAGE_GAUGES)) make(registry);
}

/**
 * Set the gauges from a report: one `stowage_storage_bytes` series per top-level prefix (prefixes
 * gone since the last measurement are dropped), the cost, the time, and the budget when one is set.
 */
export function recordUsage(
  registry: Registry,
  report: Pick<UsageReport, 'prefixes'> & Partial<Pick<UsageReport, 'cost' | 'budgetUsd'>>,
  now: number = Date.now(),
): void {
  const bytes = USAGE_GAUGES.bytes(registry);
  bytes.reset();
  for (const p of report.prefixes) bytes.set({ prefix: p.prefix }, p.bytes);
  if (report.cost) USAGE_GAUGES.cost(registry).set(report.cost.totalUsd);
  if (report.budgetUsd !== undefined && report.budgetUsd !== null) USAGE_GAUGES.budget(registry).set(report.budgetUsd);
  USAGE_GAUGES.measuredAt(registry).set(now / 1000);
}
