/**
 * The Grafana dashboard and its provisioning: importable JSON, a layout without overlaps, a
 * datasource variable instead of a hard-wired datasource, and PromQL that reads only metrics the
 * code exports (a renamed metric fails here, not on an operator's empty panel).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
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
    // The measured estimate (the daily cleanup's), priced by configuration, and the budget beside it.
    expect(cost?.targets?.map((t) => t.expr)).toEqual([
      expect.stringMatching(/stowage_storage_estimated_monthly_cost_usd/),
      expect.stringMatching(/stowage_monthly_budget_usd/),
    ]);
  });

  it('shows storage by prefix over time, and the failure catalog panels of seed 003', () => {
    const panel = (title: RegExp) => {
      const found = queryPanels.find((p) => title.test(p.title));
      expect(found, String(title)).toBeDefined();
      return found!;
    };
    const exprsOf = (p: Panel) => (p.targets ?? []).map((t) => t.expr).join('\n');
    const byPrefix = panel(/bytes by prefix/i);
    expect(byPrefix.type).toBe('timeseries');
    expect(exprsOf(byPrefix)).toMatch(/^max by \(prefix\) \(last_over_time\(stowage_storage_bytes\[26h\]\)/);
    // Counts as 0 when no failure has matched yet, so the rates are not "no data" while all miss.
    expect(exprsOf(panel(/catalog hit rate/i))).toMatch(/failure_match_hits_total\[10m\]\)\) or vector\(0\).*failure_match_misses_total/);
    expect(exprsOf(panel(/recovery success rate/i))).toMatch(/recovery_success_total.*recovery_failure_total/);
    expect(exprsOf(panel(/unmatched failures/i))).toMatch(/sum by \(error_code\) \(increase\(failure_match_misses_total/);
    const top = panel(/top error codes/i);
    expect(top.type).toBe('bargauge');
    expect(exprsOf(top)).toMatch(/^topk\(10, sum by \(error_code\) .*failure_match_hits_total.* or .*failure_match_misses_total/);
    expect(exprsOf(panel(/recover.*by mode/i))).toMatch(
      /sum by \(recovery_mode\) \(increase\(recovery_success_total.*\n.*sum by \(recovery_mode\) \(increase\(recovery_failure_total/,
    );
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
    expect(compose).toContain('"127.0.0.1:3001:3000"');
    const mounts = [...compose.matchAll(/^\s+- \.\/([^:\s]+):/gm)].map((m) => m[1]!);
    expect(mounts.length).toBeGreaterThanOrEqual(4);
    for (const path of mounts) expect(existsSync(join(root, path)), path).toBe(true);
  });

  it('publishes every port on 127.0.0.1 only, and has no default password: MinIO and Grafana refuse to start without one from .env', () => {
    // docker-compose resolves the file as `up` would; an empty env file stands in for a missing .env
    // (a developer's own .env must not change the answer).
    const dir = mkdtempSync(join(tmpdir(), 'compose-'));
    const resolved = (env: Record<string, string>) => {
      const envFile = join(dir, 'env');
      writeFileSync(
        envFile,
        Object.entries(env)
          .map(([k, v]) => `${k}=${v}\n`)
          .join(''),
      );
      const cleanEnv = { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp' };
      const r = spawnSync('docker-compose', ['--env-file', envFile, '-f', join(root, 'docker-compose.yml'), 'config'], {
        encoding: 'utf8',
        env: cleanEnv,
      });
      expect(r.status, r.stderr).toBe(0);
      return parseYaml(r.stdout) as {
        services: Record<
          string,
          { ports?: (string | { host_ip?: string; published?: number })[]; environment?: Record<string, string>; entrypoint?: string[] }
        >;
      };
    };
    try {
      const bare = resolved({});
      const published = Object.entries(bare.services).flatMap(([name, s]) => (s.ports ?? []).map((p) => ({ name, p })));
      expect(published.map((x) => x.name).sort()).toEqual(['grafana', 'http', 'minio', 'prometheus']);
      for (const { name, p } of published) {
        const hostIp = typeof p === 'string' ? p.split(':')[0] : p.host_ip;
        expect(hostIp, `${name}: ${JSON.stringify(p)}`).toBe('127.0.0.1');
      }
      // Without .env the passwords are empty, and the entrypoints refuse an empty one, naming the variable.
      expect(bare.services.grafana!.environment!.GF_SECURITY_ADMIN_PASSWORD).toBe('');
      expect(bare.services.minio!.environment!.MINIO_ROOT_PASSWORD).toBe('');
      expect(bare.services.grafana!.entrypoint!.join(' ')).toMatch(
        /test -n .*GF_SECURITY_ADMIN_PASSWORD.*set GRAFANA_ADMIN_PASSWORD in \.env/,
      );
      expect(bare.services.minio!.entrypoint!.join(' ')).toMatch(/test -n .*MINIO_ROOT_PASSWORD.*set MINIO_ROOT_PASSWORD in \.env/);
      const set = resolved({ GRAFANA_ADMIN_PASSWORD: 'g-pass-from-env', MINIO_ROOT_PASSWORD: 'm-pass-from-env' });
      expect(set.services.grafana!.environment!.GF_SECURITY_ADMIN_PASSWORD).toBe('g-pass-from-env');
      expect(set.services.minio!.environment!.MINIO_ROOT_PASSWORD).toBe('m-pass-from-env');
      expect(set.services.worker!.environment!.R2_SECRET_ACCESS_KEY).toBe('m-pass-from-env');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    // No literal fallback credential anywhere, in the file or in the example env.
    const text = read('docker-compose.yml');
    expect(text).not.toMatch(/admin\/admin|PASSWORD:-[^}]|stowage-secret/);
    expect(read('.env.example')).toMatch(/^GRAFANA_ADMIN_PASSWORD=$/m);
    expect(read('.env.example')).toMatch(/^MINIO_ROOT_PASSWORD=$/m);
  });
});
