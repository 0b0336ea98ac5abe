/**
 * Structural checks of what ships for deployment: the Kubernetes manifests (deploy/k8s), the
 * Dockerfile and its role-aware healthcheck, and the systemd units (deploy/systemd).
 *
 * No Kubernetes JSON-schema validation: kubeconform is not in Debian and the npm schema packages
 * are large; these checks pin what Stowage itself needs (drain bound, probes, secrets by
 * reference, one KEDA trigger per job kind) instead. Pure file reads: no services needed.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { ENV_NAMES, loadConfig } from '../../src/config.js';
import { JOB_KINDS } from '../../src/queues/index.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const k8sDir = join(root, 'deploy', 'k8s');
const systemdDir = join(root, 'deploy', 'systemd');

/** The worker's SIGTERM drain bound by default (STOWAGE_SHUTDOWN_TIMEOUT_MS). */
const DRAIN_BOUND_MS = loadConfig({}).worker.shutdownTimeoutMs;
/** Settings that must never appear as a literal value in a manifest. */
const SECRET_VARS = ['R2_SECRET_ACCESS_KEY', 'R2_ACCESS_KEY_ID', 'STOWAGE_AUTH_SECRET', 'STOWAGE_BASIC_AUTH', 'REDIS_URL', 'DATABASE_URL'];
const SECRET_NAME = 'stowage-secrets';

// ── Kubernetes ────────────────────────────────────────────────────────────────────────────────

// biome-ignore lint/suspicious/noExplicitAny: parsed YAML is untyped, and the assertions are the checks
type Obj = Record<string, any>;

interface Manifest {
  file: string;
  doc: Obj;
}

function loadManifests(): Manifest[] {
  const out: Manifest[] = [];
  for (const file of readdirSync(k8sDir)
    .filter((f) => /\.ya?ml$/.test(f))
    .sort()) {
    const docs = parseAllDocuments(readFileSync(join(k8sDir, file), 'utf8'));
    for (const d of Array.isArray(docs) ? docs : [docs]) {
      if (d.errors.length) throw new Error(`${file}: ${d.errors.map((e) => e.message).join('; ')}`);
      const doc = d.toJS() as Obj | null;
      if (doc) out.push({ file, doc });
    }
  }
  return out;
}

const manifests = loadManifests();
const resources = manifests.filter((m) => m.doc.kind !== 'Kustomization');
const ofKind = (kind: string) => resources.filter((m) => m.doc.kind === kind).map((m) => m.doc);
const named = (kind: string, name: string): Obj => {
  const found = ofKind(kind).find((d) => d.metadata?.name === name);
  if (!found) throw new Error(`no ${kind} named ${name} in deploy/k8s`);
  return found;
};
const configMap = named('ConfigMap', 'stowage-config');
const prefix: string = configMap.data?.STOWAGE_PREFIX ?? 'stowage';
const drainBoundMs = Number(configMap.data?.STOWAGE_SHUTDOWN_TIMEOUT_MS ?? DRAIN_BOUND_MS);

/** Pod templates: Deployments and Jobs. */
function podSpecs(): { name: string; kind: string; spec: Obj; labels: Obj; annotations: Obj }[] {
  return resources
    .filter((m) => m.doc.kind === 'Deployment' || m.doc.kind === 'Job')
    .map((m) => ({
      name: m.doc.metadata.name as string,
      kind: m.doc.kind as string,
      spec: m.doc.spec.template.spec as Obj,
      labels: (m.doc.spec.template.metadata?.labels ?? {}) as Obj,
      annotations: (m.doc.spec.template.metadata?.annotations ?? {}) as Obj,
    }));
}

/** Every object with an `env` array anywhere in the tree. */
function envEntries(node: unknown, acc: Obj[] = []): Obj[] {
  if (Array.isArray(node)) for (const n of node) envEntries(n, acc);
  else if (node && typeof node === 'object') {
    for (const [k, v] of Object.entries(node)) {
      if (k === 'env' && Array.isArray(v)) acc.push(...(v as Obj[]));
      else envEntries(v, acc);
    }
  }
  return acc;
}

describe('deploy/k8s', () => {
  it('every YAML parses and every object has apiVersion, kind and metadata.name, no namespace', () => {
    expect(manifests.length).toBeGreaterThan(5);
    for (const { file, doc } of manifests) {
      expect(doc.apiVersion, `${file}: apiVersion`).toEqual(expect.any(String));
      expect(doc.kind, `${file}: kind`).toEqual(expect.any(String));
      if (doc.kind === 'Kustomization') continue;
      expect(doc.metadata?.name, `${file}: metadata.name`).toEqual(expect.any(String));
      expect(doc.metadata?.namespace, `${file}: namespace-agnostic`).toBeUndefined();
    }
  });

  it('kustomization.yaml lists every manifest file and nothing missing', () => {
    const kustomization = manifests.find((m) => m.file === 'kustomization.yaml')?.doc;
    expect(kustomization?.kind).toBe('Kustomization');
    const listed = [...(kustomization!.resources as string[])].sort();
    const files = [...new Set(resources.map((m) => m.file))].sort();
    expect(listed).toEqual(files);
  });

  it('has Deployments for worker, scheduler and http, a Service, a migrate Job and PDBs', () => {
    const deployments = ofKind('Deployment')
      .map((d) => d.metadata.name as string)
      .sort();
    expect(deployments).toEqual(['stowage-http', 'stowage-scheduler', 'stowage-worker']);
    expect(named('Job', 'stowage-migrate').spec.template.spec.containers[0].args).toEqual(['migrate']);
    expect(named('Service', 'stowage-http')).toBeTruthy();
    expect(ofKind('PodDisruptionBudget').length).toBeGreaterThan(0);
  });

  it('every Deployment selects its own pods and each role runs its command', () => {
    const roles: Record<string, string> = { 'stowage-worker': 'worker', 'stowage-scheduler': 'scheduler', 'stowage-http': 'http' };
    for (const d of ofKind('Deployment')) {
      const name = d.metadata.name as string;
      expect(d.spec.selector.matchLabels, name).toEqual(expect.objectContaining({}));
      for (const [k, v] of Object.entries(d.spec.selector.matchLabels as Obj)) {
        expect(d.spec.template.metadata.labels[k], `${name}: selector ${k}`).toBe(v);
      }
      expect(d.spec.template.spec.containers[0].args[0], name).toBe(roles[name]);
    }
  });

  it('every pod runs as non-root with resources, without privilege escalation', () => {
    for (const { name, spec } of podSpecs()) {
      expect(spec.securityContext?.runAsNonRoot, `${name}: runAsNonRoot`).toBe(true);
      expect(spec.securityContext?.runAsUser, `${name}: runAsUser`).not.toBe(0);
      for (const c of spec.containers as Obj[]) {
        expect(c.image, `${name}/${c.name}: image`).toMatch(/^stowage(:|$)/);
        expect(c.resources?.requests?.cpu, `${name}/${c.name}: requests.cpu`).toBeDefined();
        expect(c.resources?.requests?.memory, `${name}/${c.name}: requests.memory`).toBeDefined();
        expect(c.resources?.limits?.memory, `${name}/${c.name}: limits.memory`).toBeDefined();
        expect(c.securityContext?.allowPrivilegeEscalation, `${name}/${c.name}`).toBe(false);
      }
    }
  });

  it(`the worker's grace period exceeds the drain bound (${DRAIN_BOUND_MS} ms) and it is scraped`, () => {
    const worker = named('Deployment', 'stowage-worker');
    const pod = worker.spec.template;
    expect(pod.spec.terminationGracePeriodSeconds * 1000).toBeGreaterThan(drainBoundMs);
    const c = pod.spec.containers[0] as Obj;
    const i = (c.args as string[]).indexOf('--metrics-port');
    expect(i).toBeGreaterThan(0);
    const port = (c.args as string[])[i + 1];
    expect(pod.metadata.annotations['prometheus.io/scrape']).toBe('true');
    expect(pod.metadata.annotations['prometheus.io/port']).toBe(port);
    expect((c.ports as Obj[]).map((p) => String(p.containerPort))).toContain(port);
    // Workers have no /healthz: their liveness probe asks /metrics on the metrics port.
    expect(c.livenessProbe?.httpGet?.path).toBe('/metrics');
    // KEDA's HPA owns the replica count.
    expect(worker.spec.replicas).toBeUndefined();
  });

  it('the http role has readiness /readyz and liveness /healthz, and its Service reaches it', () => {
    const http = named('Deployment', 'stowage-http');
    const c = http.spec.template.spec.containers[0] as Obj;
    expect(c.readinessProbe?.httpGet?.path).toBe('/readyz');
    expect(c.livenessProbe?.httpGet?.path).toBe('/healthz');
    const service = named('Service', 'stowage-http');
    for (const [k, v] of Object.entries(service.spec.selector as Obj)) expect(http.spec.template.metadata.labels[k]).toBe(v);
    const portNames = (c.ports as Obj[]).map((p) => p.name);
    for (const p of service.spec.ports as Obj[]) expect(portNames).toContain(p.targetPort);
  });

  it('the PodDisruptionBudgets select the worker and http pods', () => {
    const selected = ofKind('PodDisruptionBudget').map((p) => p.spec.selector.matchLabels['app.kubernetes.io/component']);
    expect(selected).toEqual(expect.arrayContaining(['worker', 'http']));
  });

  it('secrets only by reference: no Secret objects, no literal secret values, envFrom the stowage-secrets Secret', () => {
    expect(ofKind('Secret')).toEqual([]);
    for (const v of SECRET_VARS) expect(Object.keys(configMap.data ?? {}), `ConfigMap holds ${v}`).not.toContain(v);
    for (const e of envEntries(resources.map((m) => m.doc))) {
      if (SECRET_VARS.includes(e.name)) {
        expect(e.value, `${e.name} has a literal value`).toBeUndefined();
        expect(e.valueFrom?.secretKeyRef?.name, `${e.name} is not from a Secret`).toEqual(expect.any(String));
      }
    }
    for (const { name, spec } of podSpecs()) {
      for (const c of spec.containers as Obj[]) {
        const secretRefs = ((c.envFrom ?? []) as Obj[]).filter((e) => e.secretRef).map((e) => e.secretRef.name);
        const configRefs = ((c.envFrom ?? []) as Obj[]).filter((e) => e.configMapRef).map((e) => e.configMapRef.name);
        expect(secretRefs, `${name}/${c.name}`).toEqual([SECRET_NAME]);
        expect(configRefs, `${name}/${c.name}`).toEqual(['stowage-config']);
      }
    }
  });

  it('the ConfigMap holds only variables Stowage reads', () => {
    for (const key of Object.keys(configMap.data ?? {})) expect(ENV_NAMES, key).toContain(key);
  });

  it("the KEDA ScaledObject scales the worker Deployment on every job kind's wait list", () => {
    const [scaled, ...others] = ofKind('ScaledObject');
    expect(others).toEqual([]);
    expect(scaled!.spec.scaleTargetRef).toEqual(expect.objectContaining({ kind: 'Deployment', name: 'stowage-worker' }));
    // Delayed jobs (retries, Job Scheduler runs) are promoted by a running worker: never scale to zero.
    expect(scaled!.spec.minReplicaCount).toBeGreaterThanOrEqual(1);
    expect(scaled!.spec.maxReplicaCount).toBeGreaterThan(scaled!.spec.minReplicaCount);
    const triggers = scaled!.spec.triggers as Obj[];
    for (const kind of JOB_KINDS) {
      const t = triggers.find((tr) => tr.metadata?.listName === `${prefix}:${kind}:wait`);
      expect(t, `no trigger on ${prefix}:${kind}:wait for job kind ${kind}`).toBeDefined();
      expect(['redis', 'redis-cluster']).toContain(t!.type);
      expect(Number(t!.metadata.listLength)).toBeGreaterThan(0);
      // The Redis address and password come from a TriggerAuthentication over stowage-secrets.
      expect(t!.metadata.password).toBeUndefined();
      const auth = named('TriggerAuthentication', t!.authenticationRef.name);
      for (const ref of auth.spec.secretTargetRef as Obj[]) expect(ref.name).toBe(SECRET_NAME);
    }
    expect(triggers.length).toBe(JOB_KINDS.length);
  });
});

// ── Dockerfile ────────────────────────────────────────────────────────────────────────────────

interface Stage {
  from: string;
  name?: string;
  lines: string[];
}

/** Stages of a Dockerfile, continuation lines joined, comments dropped. */
function dockerStages(text: string): Stage[] {
  const joined = text
    .replace(/\\\r?\n/g, ' ')
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  const stages: Stage[] = [];
  for (const line of joined) {
    const from = /^FROM\s+(\S+)(?:\s+AS\s+(\S+))?/i.exec(line);
    if (from) stages.push({ from: from[1]!, ...(from[2] ? { name: from[2] } : {}), lines: [] });
    else stages.at(-1)?.lines.push(line);
  }
  return stages;
}

describe('Dockerfile', () => {
  const stages = dockerStages(readFileSync(join(root, 'Dockerfile'), 'utf8'));
  const final = stages.at(-1)!;
  const instr = (s: Stage, name: string) => s.lines.filter((l) => l.toUpperCase().startsWith(`${name} `));

  it('is multi-stage on a Node 24 LTS slim base', () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    for (const s of stages) expect(s.from).toMatch(/^node:24[\w.-]*-slim$/);
  });

  it('the final stage runs as a non-root user', () => {
    const users = instr(final, 'USER');
    expect(users.length).toBeGreaterThan(0);
    expect(users.at(-1)!.split(/\s+/)[1]).not.toMatch(/^(root|0)(:.*)?$/);
  });

  it('the final stage has no dev dependencies', () => {
    const runs = instr(final, 'RUN').join('\n');
    const copiesModules = final.lines.find((l) => /^COPY\s+--from=(\S+)\s+\S*node_modules/i.test(l));
    if (copiesModules) {
      // node_modules come from a stage that pruned them.
      const from = /--from=(\S+)/.exec(copiesModules)![1];
      const source = stages.find((s) => s.name === from);
      expect(source, `stage ${from}`).toBeDefined();
      const srcRuns = instr(source!, 'RUN');
      const pruneAt = srcRuns.findIndex((l) => /npm prune --omit=dev|npm prune --production/.test(l));
      expect(pruneAt, 'npm prune --omit=dev in the stage node_modules come from').toBeGreaterThanOrEqual(0);
      expect(srcRuns.slice(pruneAt + 1).join('\n'), 'nothing installs after the prune').not.toMatch(/npm (ci|install|i)\b/);
    } else {
      expect(runs).toMatch(/npm ci\b[^\n]*--omit=dev/);
    }
    expect(runs).not.toMatch(/npm (ci|install|i)\b(?![^\n]*--omit=dev)/);
  });

  it("ships pg_dump at least as new as the compose file's PostgreSQL (pg_dump refuses a newer server)", () => {
    const text = final.lines.join('\n');
    const major = Number(/ARG PG_CLIENT_MAJOR=(\d+)/.exec(text)?.[1]);
    expect(text).toMatch(/apt-get install[^\n]*postgresql-client-\$\{PG_CLIENT_MAJOR\}/);
    const compose = readFileSync(join(root, 'docker-compose.yml'), 'utf8');
    const server = Number(/image:\s*postgres:(\d+)/.exec(compose)?.[1]);
    expect(server).toBeGreaterThan(0);
    expect(major).toBeGreaterThanOrEqual(server);
  });

  it('has a HEALTHCHECK, picks the role with the command, and ships the healthcheck script', () => {
    const health = instr(final, 'HEALTHCHECK');
    expect(health).toHaveLength(1);
    expect(health[0]).toContain('deploy/docker/healthcheck.mjs');
    expect(final.lines.some((l) => /^COPY\s+deploy\/docker\/healthcheck\.mjs\s/.test(l))).toBe(true);
    expect(instr(final, 'ENTRYPOINT')[0]).toContain('bin/stowage.js');
    expect(instr(final, 'CMD').at(-1)).toMatch(/worker|scheduler|http|migrate/);
  });

  it('the healthcheck probes /healthz for http, /metrics for a worker with a metrics port, nothing otherwise', () => {
    const dir = mkdtempSync(join(tmpdir(), 'stowage-health-'));
    const probe = (...args: string[]) => {
      const file = join(dir, 'cmdline');
      writeFileSync(file, ['tini', '--', 'node', 'bin/stowage.js', ...args].join('\0') + '\0');
      const r = spawnSync(process.execPath, [join(root, 'deploy', 'docker', 'healthcheck.mjs'), file, '--print'], {
        encoding: 'utf8',
        env: { ...process.env, HTTP_HOST: '0.0.0.0', HTTP_PORT: '3000' },
      });
      expect(r.status, r.stderr).toBe(0);
      return r.stdout.trim();
    };
    expect(probe('http')).toBe('http://127.0.0.1:3000/healthz');
    expect(probe('worker', '--metrics-port', '9464')).toBe('http://127.0.0.1:9464/metrics');
    expect(probe('worker', '--queues', 'cleanup', '--metrics-port=9470')).toBe('http://127.0.0.1:9470/metrics');
    expect(probe('worker')).toBe('process');
    expect(probe('scheduler')).toBe('process');
    expect(probe('migrate')).toBe('process');
  });
});

// ── systemd ───────────────────────────────────────────────────────────────────────────────────

type Ini = Record<string, Record<string, string[]>>;

/** systemd unit files: [Section], Key=Value (repeatable), # and ; comments, \ continuations. */
function parseUnit(text: string, file: string): Ini {
  const ini: Ini = {};
  let section: string | undefined;
  const lines = text.replace(/\\\r?\n/g, ' ').split(/\r?\n/);
  lines.forEach((raw, n) => {
    const line = raw.trim();
    if (!line || line.startsWith('#') || line.startsWith(';')) return;
    const header = /^\[([A-Za-z]+)\]$/.exec(line);
    if (header) {
      section = header[1]!;
      ini[section] ??= {};
      return;
    }
    const kv = /^([A-Za-z][A-Za-z0-9]*)=(.*)$/.exec(line);
    if (!kv || !section) throw new Error(`${file}:${n + 1}: not a Key=Value line in a section: ${line}`);
    (ini[section]![kv[1]!] ??= []).push(kv[2]!);
  });
  return ini;
}

const seconds = (v: string): number => {
  const m = /^(\d+)(s|min)?$/.exec(v.trim());
  if (!m) throw new Error(`unsupported time span ${v}`);
  return Number(m[1]) * (m[2] === 'min' ? 60 : 1);
};

describe('deploy/systemd', () => {
  const units: Record<string, string> = {
    'stowage-worker@.service': 'worker',
    'stowage-scheduler.service': 'scheduler',
    'stowage-http.service': 'http',
    'stowage-migrate.service': 'migrate',
  };

  it('ships exactly these units (schedules run in BullMQ, so no timers)', () => {
    const files = readdirSync(systemdDir)
      .filter((f) => /\.(service|timer|socket)$/.test(f))
      .sort();
    expect(files).toEqual(Object.keys(units).sort());
  });

  for (const [file, role] of Object.entries(units)) {
    it(`${file} parses and carries the required keys`, () => {
      const ini = parseUnit(readFileSync(join(systemdDir, file), 'utf8'), file);
      const one = (section: string, key: string) => {
        const v = ini[section]?.[key];
        expect(v, `${file}: [${section}] ${key}`).toBeDefined();
        return v!.at(-1)!;
      };
      expect(one('Unit', 'Description')).not.toBe('');
      expect(one('Install', 'WantedBy')).toBe('multi-user.target');
      expect(one('Service', 'User')).toBe('stowage');
      expect(one('Service', 'EnvironmentFile')).toBe('/etc/stowage/stowage.env');
      expect(one('Service', 'ExecStart')).toMatch(new RegExp(`bin/stowage\\.js ${role}\\b`));
      expect(one('Service', 'KillSignal')).toBe('SIGTERM');
      expect(seconds(one('Service', 'TimeoutStopSec')) * 1000).toBeGreaterThan(DRAIN_BOUND_MS);
      expect(one('Service', 'NoNewPrivileges')).toBe('yes');
      expect(one('Service', 'PrivateTmp')).toBe('yes');
      expect(one('Service', 'ProtectSystem')).toBe('strict');
      // The fallback directory is writable under ProtectSystem=strict.
      const fallback = (ini.Service!.Environment ?? []).map((e) => /^AGG_LOCAL_FALLBACK=(.+)$/.exec(e)?.[1]).find(Boolean);
      expect(fallback, `${file}: AGG_LOCAL_FALLBACK`).toBeDefined();
      const writable = (ini.Service!.ReadWritePaths ?? []).flatMap((p) => p.split(/\s+/));
      expect(writable.some((p) => fallback!.startsWith(`${p}/`))).toBe(true);
      if (role === 'migrate') expect(one('Service', 'Type')).toBe('oneshot');
      else expect(one('Service', 'Restart')).toBe('on-failure');
      if (role === 'worker') expect(one('Service', 'ExecStart')).toContain('--metrics-port');
    });
  }
});
