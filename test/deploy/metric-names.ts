/**
 * The metric names Stowage exports and the names a PromQL expression reads, so deploy files
 * (alert rules, the Grafana dashboard) are checked against the code: a renamed metric fails a test.
 */
import { failureMetrics } from '../../src/failures/metrics.js';
import { createMetrics, renderQueueMetrics } from '../../src/observability/metrics.js';
import { registerUsageGauges } from '../../src/storage/usage.js';

/**
 * Every series name a /metrics can carry: createMetrics (with prom-client defaults), the
 * failure-catalog metrics (the http role registers them with its failure routes), the usage gauges
 * (a worker makes them on its first usage measurement) and the scrape-time queue gauges.
 */
export async function exportedMetricNames(): Promise<Set<string>> {
  const { registry } = createMetrics();
  failureMetrics(registry);
  registerUsageGauges(registry);
  const text = (await registry.metrics()) + (await renderQueueMetrics([]));
  const names = new Set<string>();
  for (const [, name, type] of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    names.add(name!);
    if (type === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) names.add(name + suffix);
    if (type === 'summary') for (const suffix of ['_sum', '_count']) names.add(name + suffix);
  }
  return names;
}

const KEYWORDS = new Set([
  'by',
  'without',
  'on',
  'ignoring',
  'group_left',
  'group_right',
  'bool',
  'offset',
  'and',
  'or',
  'unless',
  'inf',
  'nan',
]);

/** Metric names an expression selects: identifiers that are not functions, keywords, labels or variables. */
export function metricNamesIn(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, '""') // string literals
    .replace(/\{[^}]*\}/g, '') // label matchers
    .replace(/\[[^\]]*\]/g, '') // range and subquery durations
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, '') // label lists
    .replace(/\boffset\s+-?\w+/g, ''); // offset durations
  const names = new Set<string>();
  for (const match of stripped.matchAll(/(?<![\w.$])[a-zA-Z_:][\w:]*(?!\s*\()/g)) {
    const name = match[0];
    // `(?!\s*\()` alone would accept a function name minus its last letter; refuse partial words.
    const next = stripped[match.index! + name.length];
    if (next !== undefined && /[\w:]/.test(next)) continue;
    if (!KEYWORDS.has(name.toLowerCase())) names.add(name);
  }
  return [...names];
}
