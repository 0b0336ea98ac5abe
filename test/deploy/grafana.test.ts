/**
 * The Grafana dashboard and its provisioning: importable JSON, a layout without overlaps, a
 * datasource variable instead of a hard-wired datasource, and PromQL that reads only metrics the
 * code exports (a renamed metric fails here, not on an operator's empty panel).
 */
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { exportedMetricNames, metricNamesIn } from './metric-names.js';

const root = resolve(import.meta.dirname, '../..');
const read = (path: string) => readFileSync(join(root, path), 'utf8');

interface Target {
  expr: string;
  refId: string;
  datasource?: { type?: string; uid?: string };
}
interface Panel {
  id: number;
  type: string;
  title: string;
  gridPos: { h: number; w: number; x: number; y: number };
  datasource?: { type?: string; uid?: string };
  targets?: Target[];
  description?: string;
}

const dashboard = JSON.parse(read('deploy/grafana/stowage.json')) as {
  uid: string;
  title: string;
  schemaVersion: number;
  panels: Panel[];
  templating: { list: { name: string; type: string; query: unknown }[] };
};
const queryPanels = dashboard.panels.filter((p) => p.type !== 'row');
const exprs = queryPanels.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title, expr: t.expr })));

describe('deploy/grafana/stowage.json', () => {
  it('is an importable dashboard: uid, title, schemaVersion, unique panel ids, a 24-column grid without overlaps', () => {
    expect(dashboard).toMatchObject({ uid: 'stowage', title: 'Stowage' });
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(36);
    const ids = dashboard.panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    const cells = new Map<string, string>();
    for (const p of dashboard.panels) {
      const { h, w, x, y } = p.gridPos;
      for (const n of [h, w, x, y]) expect(Number.isInteger(n) && n >= 0, p.title).toBe(true);
      expect(x + w, p.title).toBeLessThanOrEqual(24);
      for (let row = y; row < y + h; row++) {
        for (let col = x; col < x + w; col++) {
          const other = cells.get(`${row}:${col}`);
          expect(other, `${p.title} overlaps ${other}`).toBeUndefined();
          cells.set(`${row}:${col}`, p.title);
        }
      }
    }
  });

  it('takes its Prometheus from a datasource variable, in every panel and query', () => {
    const variable = dashboard.templating.list.find((v) => v.type === 'datasource');
    expect(variable).toMatchObject({ name: 'datasource', query: 'prometheus' });
    for (const p of queryPanels) {
      // biome-ignore lint/suspicious/noTemplateCurlyInString: Grafana's own variable syntax, not a template literal
      expect(p.datasource, p.title).toEqual({ type: 'prometheus', uid: '${datasource}' });
      expect(p.targets?.length, p.title).toBeGreaterThan(0);
      // biome-ignore lint/suspicious/noTemplateCurlyInString: Grafana's own variable syntax, not a template literal
      for (const t of p.targets!) expect(t.datasource, p.title).toEqual({ type: 'prometheus', uid: '${datasource}' });
    }
  });

  it('reads only metrics the code exports', async () => {
    const known = await exportedMetricNames();
    for (const { panel, expr } of exprs) {
      const names = metricNamesIn(expr);
      expect(names.length, `${panel}: ${expr}`).toBeGreaterThan(0);
      for (const name of names) expect(known, `${panel}: ${name}`).toContain(name);
    }
  });

  it('covers throughput, failures, dead-letter, depth, age, durations, uploads, backup age and cost', () => {
    const uses = (pattern: RegExp) => exprs.some(({ expr }) => pattern.test(expr));
    expect(uses(/rate\(stowage_jobs_completed_total/)).toBe(true);
    expect(uses(/stowage_jobs_failed_total/)).toBe(true);
    expect(uses(/stowage_jobs_parked_total/)).toBe(true);
    expect(uses(/stowage_queue_jobs\{queue="dead-letter"/)).toBe(true);
    expect(uses(/max by \(queue, state\) \(stowage_queue_jobs/)).toBe(true);
    expect(uses(/stowage_queue_oldest_waiting_age_seconds/)).toBe(true);
    expect(uses(/histogram_quantile\(0\.5, .*stowage_job_duration_seconds_bucket/)).toBe(true);
    expect(uses(/histogram_quantile\(0\.95, .*stowage_job_duration_seconds_bucket/)).toBe(true);
    expect(uses(/rate\(stowage_upload_bytes_total/)).toBe(true);
    expect(uses(/time\(\) - max\(stowage_queue_last_completed_timestamp_seconds\{queue="backup"\}\)/)).toBe(true);
    const cost = queryPanels.find((p) => /cost/i.test(p.title));
    expect(cost?.title).toMatch(/estimate/i);
    expect(cost?.description).toMatch(/ESTIMATE/);
    expect(cost?.targets?.[0]?.expr).toMatch(/stowage_upload_bytes_total.*\$price_gb_month/);
    expect(dashboard.templating.list.find((v) => v.name === 'price_gb_month')).toMatchObject({ type: 'textbox', query: '0.015' });
  });
});

describe('Grafana provisioning and compose', () => {
  it('provisions the Prometheus datasource and the dashboard directory', () => {
    const datasource = read('deploy/grafana/provisioning/datasources/prometheus.yml');
    expect(datasource).toMatch(/^apiVersion: 1$/m);
    expect(datasource).toMatch(/^\s+type: prometheus$/m);
    expect(datasource).toMatch(/^\s+url: http:\/\/prometheus:9090$/m);
    const provider = read('deploy/grafana/provisioning/dashboards/stowage.yml');
    expect(provider).toMatch(/^\s+type: file$/m);
    expect(provider).toMatch(/^\s+path: \/var\/lib\/grafana\/dashboards$/m);
  });

  it('docker-compose mounts the dashboard where the provider looks, and every mounted repo file exists', () => {
    const compose = read('docker-compose.yml');
    expect(compose).toContain('- ./deploy/grafana/stowage.json:/var/lib/grafana/dashboards/stowage.json:ro');
    expect(compose).toContain('- ./deploy/grafana/provisioning:/etc/grafana/provisioning:ro');
    expect(compose).toMatch(/grafana:\n\s+image: grafana\/grafana/);
    expect(compose).toContain('"3001:3000"');
    const mounts = [...compose.matchAll(/^\s+- \.\/([^:\s]+):/gm)].map((m) => m[1]!);
    expect(mounts.length).toBeGreaterThanOrEqual(4);
    for (const path of mounts) expect(existsSync(join(root, path)), path).toBe(true);
  });
});
