/**
 * docker-compose.cluster.yml, the compose example for a Redis Cluster. There is no Docker engine
 * here, so what a container would run is run on this machine instead: six redis-servers started
 * from the very deploy/docker/redis-cluster.conf the nodes mount, formed by the very
 * deploy/docker/redis-cluster-init.sh the init service runs, then `stowage enqueue` as a process
 * on the result. The merged compose file is checked with `docker-compose config`.
 */
import { execFile, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Cluster } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { loadConfig } from '../../src/config.js';
import { runCli } from '../helpers/cli.js';
import { isolate } from '../helpers/isolation.js';
import { type RedisCluster, startRedisCluster } from '../helpers/redis-cluster.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const CONF = join(root, 'deploy/docker/redis-cluster.conf');
const INIT = join(root, 'deploy/docker/redis-cluster-init.sh');
const iso = isolate('compose-cluster');

// biome-ignore lint/suspicious/noExplicitAny: parsed YAML is untyped, and the assertions are the checks
type Obj = Record<string, any>;

/** `source:target` of a volume, in either of the forms docker-compose versions print. */
const mount = (v: string | Obj) => (typeof v === 'string' ? v.split(':').slice(0, 2).join(':') : `${v.source}:${v.target}`);

/** The two files merged as `docker compose -f docker-compose.yml -f docker-compose.cluster.yml` does. */
function mergedCompose(): Obj {
  const envFile = join(tmpdir(), `stowage-compose-cluster-${process.pid}.env`);
  writeFileSync(envFile, '');
  const r = spawnSync('docker-compose', ['--env-file', envFile, '-f', 'docker-compose.yml', '-f', 'docker-compose.cluster.yml', 'config'], {
    cwd: root,
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`docker-compose config failed: ${r.stderr}`);
  return parse(r.stdout) as Obj;
}

function initScript(env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('sh', [INIT], { env: { PATH: process.env.PATH ?? '', ...env }, timeout: 60_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
    );
  });
}

describe('docker-compose.cluster.yml', () => {
  it('puts the workers, scheduler and http on the six nodes, after the cluster is formed', () => {
    const compose = mergedCompose();
    const services = compose.services as Obj;
    const nodes = Object.keys(services).filter((n) => /^redis-node-\d$/.test(n));
    expect(nodes).toHaveLength(6);
    for (const n of nodes) {
      const s = services[n];
      // Each node runs the shared conf and announces its own service name.
      expect(s.command).toEqual(['redis-server', '/etc/redis/cluster.conf', '--cluster-announce-hostname', n]);
      expect(s.volumes.map(mount)).toContain(`${CONF}:/etc/redis/cluster.conf`);
      expect(s.healthcheck.test).toContain('ping');
    }
    const init = services['redis-cluster-init'];
    expect(init.volumes.map(mount)).toContain(`${INIT}:/redis-cluster-init.sh`);
    for (const n of nodes) expect(init.depends_on[n]).toEqual({ condition: 'service_healthy' });
    for (const role of ['worker', 'scheduler', 'http']) {
      const s = services[role];
      expect(s.depends_on['redis-cluster-init']).toEqual({ condition: 'service_completed_successfully' });
      // The seed list names exactly the node services, and Stowage accepts it.
      const seeds = String(s.environment.REDIS_CLUSTER_NODES);
      expect(seeds.split(',').sort()).toEqual(nodes.map((n) => `${n}:6379`).sort());
      expect(s.environment.REDIS_CLUSTER_NODES).toBe(init.environment.REDIS_CLUSTER_NODES);
      expect(loadConfig({ REDIS_URL: s.environment.REDIS_URL, REDIS_CLUSTER_NODES: seeds }).redisClusterNodes).toHaveLength(6);
    }
  });

  describe('the init script and the node config, run here', () => {
    let nodes: RedisCluster;
    let seeds: string;
    beforeAll(async () => {
      // `localhost` stands in for a service name: the script resolves names, the nodes announce them.
      nodes = await startRedisCluster({ configFile: CONF, extraArgs: ['--cluster-announce-hostname', 'localhost'], form: false });
      seeds = nodes.all.map((n) => `localhost:${n.port}`).join(',');
    }, 60_000);
    afterAll(async () => {
      await nodes?.stop();
    });

    it('forms 3 masters with a replica each, tells clients the names, and leaves a formed cluster alone', async () => {
      const first = await initScript({ REDIS_CLUSTER_NODES: seeds, REDIS_CLUSTER_REPLICAS: '1' });
      expect(first.stderr).toContain('cluster_state:ok on every node');
      expect(first.code).toBe(0);
      await nodes.waitHealthy();
      expect(await nodes.masters()).toHaveLength(3);

      const client = new Cluster([{ host: '127.0.0.1', port: nodes.all[0]!.port }]);
      try {
        type Slot = [number, number, [string, number, string], ...[string, number, string][]];
        // A replica is listed once its first sync is done (Redis 7 leaves out replicas at offset 0).
        let slots: Slot[] = [];
        for (let i = 0; i < 100; i++) {
          slots = (await client.cluster('SLOTS')) as unknown as Slot[];
          if (slots.every((s) => s.length === 4)) break;
          await new Promise((r) => setTimeout(r, 100));
        }
        expect(slots.reduce((sum, [from, to]) => sum + (to - from + 1), 0)).toBe(16_384);
        // cluster-preferred-endpoint-type hostname: clients get the name, which survives a new IP.
        for (const [, , master, ...replicas] of slots) {
          expect(master[0]).toBe('localhost');
          expect(replicas.map((r) => r[0])).toEqual(['localhost']);
        }
      } finally {
        client.disconnect();
      }

      const again = await initScript({ REDIS_CLUSTER_NODES: seeds });
      expect(again.code).toBe(0);
      expect(again.stderr).toContain('already formed (6 nodes known');
    });

    it('the CLI enqueues on it as the compose services would, by the announced names', async () => {
      const r = await runCli(iso, ['enqueue', 'cleanup', '--data', JSON.stringify({ prefix: 'tmp/', dryRun: true })], {
        REDIS_CLUSTER_NODES: seeds,
      });
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      const id = r.stdout.trim().split('\n').at(-1)!;
      expect(id).not.toBe('');
      const client = new Cluster([{ host: '127.0.0.1', port: nodes.all[0]!.port }]);
      try {
        // Stowage placed the queue's hash tag itself: the job is in that queue's wait list.
        expect(await client.lrange(`${iso.prefix}:{cleanup}:cleanup:wait`, 0, -1)).toContain(id);
      } finally {
        client.disconnect();
      }
    });

    it('refuses a missing seed list, and a node that never answers, in one line each', async () => {
      const none = await initScript({});
      expect(none.code).not.toBe(0);
      expect(none.stderr).toMatch(/REDIS_CLUSTER_NODES/);
      const dead = await initScript({ REDIS_CLUSTER_NODES: 'localhost:1', REDIS_CLUSTER_INIT_TRIES: '2' });
      expect(dead.code).toBe(1);
      expect(dead.stderr.trim()).toBe('redis-cluster-init: localhost:1 does not answer PING');
    });
  });
});
