/**
 * The Redis Cluster overlay (deploy/k8s/redis-cluster): it builds on the base, sets
 * REDIS_CLUSTER_NODES, and its KEDA `redis-cluster` triggers read the wait list of every job kind
 * under the names Stowage really writes on a cluster. Checked on a real 3-master cluster: a job
 * enqueued on a paused queue sits in exactly the list the trigger names.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Cluster } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { ENV_NAMES, loadConfig } from '../../src/config.js';
import { createRedis } from '../../src/queues/connection.js';
import { JOB_KINDS, openQueue } from '../../src/queues/index.js';
import { REDIS_URL } from '../helpers/isolation.js';
import { startRedisCluster, type RedisCluster } from '../helpers/redis-cluster.js';

const dir = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'deploy', 'k8s', 'redis-cluster');
// biome-ignore lint/suspicious/noExplicitAny: parsed YAML is untyped, and the assertions are the checks
type Obj = Record<string, any>;
const load = (file: string): Obj[] =>
  parseAllDocuments(readFileSync(join(dir, file), 'utf8')).map((d) => {
    if (d.errors.length) throw new Error(`${file}: ${d.errors.map((e) => e.message).join('; ')}`);
    return d.toJS() as Obj;
  });

const kustomization = load('kustomization.yaml')[0]!;
const [scaled] = load('keda-scaledobject.yaml');
const [auth] = load('trigger-auth.yaml');
const [configMap] = load('configmap.yaml');
/** The base's STOWAGE_PREFIX, which the overlay keeps. */
const prefix = (load('../configmap.yaml')[0]!.data as Record<string, string>).STOWAGE_PREFIX!;

describe('deploy/k8s/redis-cluster', () => {
  let cluster: RedisCluster;
  beforeAll(async () => {
    cluster = await startRedisCluster();
  }, 60_000);
  afterAll(async () => {
    await cluster?.stop();
  });

  it('builds on the base and lists every file it uses', () => {
    expect(kustomization.kind).toBe('Kustomization');
    expect(kustomization.resources).toEqual(['..', 'trigger-auth.yaml']);
    expect((kustomization.patches as Obj[]).map((p) => p.path).sort()).toEqual(['configmap.yaml', 'keda-scaledobject.yaml']);
    expect(configMap!.metadata.name).toBe('stowage-config');
    for (const key of Object.keys(configMap!.data)) expect(ENV_NAMES).toContain(key);
    // What the overlay sets is a configuration Stowage accepts.
    expect(loadConfig({ REDIS_CLUSTER_NODES: configMap!.data.REDIS_CLUSTER_NODES }).redisClusterNodes).toHaveLength(3);
    expect(auth!.kind).toBe('TriggerAuthentication');
    expect((auth!.spec.secretTargetRef as Obj[]).map((r) => [r.parameter, r.name])).toEqual([
      ['addresses', 'stowage-secrets'],
      ['password', 'stowage-secrets'],
    ]);
  });

  it('has one redis-cluster trigger per job kind, on the very list a waiting job of that kind is in', async () => {
    const triggers = scaled!.spec.triggers as Obj[];
    expect(triggers.map((t) => t.name).sort()).toEqual([...JOB_KINDS].sort());
    const config = loadConfig({ REDIS_URL, REDIS_CLUSTER_NODES: cluster.nodes.join(','), STOWAGE_PREFIX: prefix });
    const redis = createRedis(config);
    try {
      for (const kind of JOB_KINDS) {
        const trigger = triggers.find((t) => t.name === kind)!;
        expect(trigger.type).toBe('redis-cluster');
        expect(trigger.authenticationRef.name).toBe(auth!.metadata.name);
        const queue = openQueue(kind, { connection: redis, prefix: config.prefix }, { jobDefaults: false });
        await queue.pause();
        await queue.add(kind, {} as never, { jobId: `keda-${kind}` });
        // The trigger's list is a real list on the cluster, holding that job.
        const cluster = redis as unknown as Cluster;
        expect(await cluster.type(trigger.metadata.listName)).toBe('list');
        expect(await cluster.lrange(trigger.metadata.listName, 0, -1)).toEqual([`keda-${kind}`]);
        await queue.obliterate({ force: true });
        await queue.close();
      }
    } finally {
      redis.disconnect();
    }
  });
});
