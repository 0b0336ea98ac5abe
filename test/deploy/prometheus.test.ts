/**
 * Prometheus files under deploy/prometheus, checked with the real `promtool` (Debian package
 * `prometheus`; CI installs it): rules and config valid, every alert unit-tested, and every metric
 * an alert reads exported by the code.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { exportedMetricNames, metricNamesIn } from './metric-names.js';

const root = resolve(import.meta.dirname, '../..');
const dir = join(root, 'deploy/prometheus');
const rulesText = readFileSync(join(dir, 'alerts.yml'), 'utf8');
const testsText = readFileSync(join(dir, 'alerts.test.yml'), 'utf8');
const alertNames = [...rulesText.matchAll(/^\s*- alert:\s*(\S+)\s*$/gm)].map((m) => m[1]!);
const tmp = mkdtempSync(join(tmpdir(), 'stowage-prom-'));

afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function promtool(...args: string[]) {
  const run = spawnSync('promtool', args, { cwd: root, encoding: 'utf8', timeout: 20_000 });
  if ((run.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') {
    throw new Error('promtool is missing: apt-get install -y prometheus');
  }
  return { status: run.status, output: `${run.stdout}${run.stderr}` };
}

/** Each rule's `expr`, single-line or a `|` block: enough YAML for this file (counted against the alerts below). */
function exprs(yaml: string): string[] {
  const found: string[] = [];
  const lines = yaml.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const m = /^(\s*)expr:\s*(.*)$/.exec(lines[i]!);
    if (!m) continue;
    if (m[2] !== '|' && m[2] !== '|-') {
      found.push(m[2]!);
      continue;
    }
    const block: string[] = [];
    while (i + 1 < lines.length && (lines[i + 1]!.trim() === '' || lines[i + 1]!.search(/\S/) > m[1]!.length)) block.push(lines[++i]!);
    found.push(block.join('\n'));
  }
  return found;
}

describe('deploy/prometheus', () => {
  it('has alerts to test', () => {
    expect(alertNames.length).toBeGreaterThanOrEqual(8);
    expect(new Set(alertNames).size).toBe(alertNames.length);
  });

  it('promtool check rules alerts.yml', () => {
    const run = promtool('check', 'rules', 'deploy/prometheus/alerts.yml');
    expect(run.output).toContain(`SUCCESS: ${alertNames.length} rules found`);
    expect(run.status).toBe(0);
  });

  it('promtool test rules alerts.test.yml', () => {
    const run = promtool('test', 'rules', 'deploy/prometheus/alerts.test.yml');
    expect(run.output).toContain('SUCCESS');
    expect(run.status).toBe(0);
  });

  it('every alert has a unit test where it fires and one where it does not', () => {
    for (const name of alertNames) {
      expect(testsText, `${name} firing`).toMatch(new RegExp(`alertname: ${name}\\s*\\n\\s*exp_alerts:\\s*\\n\\s*- exp_labels:`));
      expect(testsText, `${name} not firing`).toMatch(new RegExp(`alertname: ${name}\\s*\\n\\s*exp_alerts: \\[\\]`));
    }
  });

  it('promtool check config prometheus.yml, alone and with the rules it loads in the container', () => {
    const syntax = promtool('check', 'config', '--syntax-only', 'deploy/prometheus/prometheus.yml');
    expect(syntax.output).toContain('SUCCESS');
    expect(syntax.status).toBe(0);
    // The config names /etc/prometheus/alerts.yml (the compose mount); point a copy at the repo's file.
    const config = readFileSync(join(dir, 'prometheus.yml'), 'utf8');
    expect(config).toContain('/etc/prometheus/alerts.yml');
    const copy = join(tmp, 'prometheus.yml');
    writeFileSync(copy, config.replace('/etc/prometheus/alerts.yml', join(dir, 'alerts.yml')));
    const full = promtool('check', 'config', copy);
    expect(full.output).toContain(`SUCCESS: ${alertNames.length} rules found`);
    expect(full.status).toBe(0);
  });

  it('every metric an alert reads is exported by the code', async () => {
    const found = exprs(rulesText);
    expect(found).toHaveLength(alertNames.length);
    const known = await exportedMetricNames();
    for (const expr of found) {
      const names = metricNamesIn(expr);
      expect(names.length, expr).toBeGreaterThan(0);
      for (const name of names) expect(known, `${name} in: ${expr}`).toContain(name);
    }
  });

  it('every runbook link points at a section of docs/operations.md', () => {
    const ops = readFileSync(join(root, 'docs/operations.md'), 'utf8');
    const alertsSection = ops.slice(ops.indexOf('\n## Alerts'));
    expect(ops).toContain('\n## Alerts\n');
    const anchors = new Set([...alertsSection.matchAll(/^###\s+(.+)$/gm)].map((m) => m[1]!.trim().toLowerCase()));
    for (const name of alertNames) {
      const runbook = new RegExp(`- alert: ${name}\\n[\\s\\S]*?runbook: "([^"]+)"`).exec(rulesText)?.[1];
      expect(runbook, name).toBe(`docs/operations.md#${name.toLowerCase()}`);
      expect(anchors, name).toContain(name.toLowerCase());
    }
  });
});
