/**
 * A real Redis Cluster for tests: 3 masters + 3 replicas from the system's redis-server, each in its
 * own temp dir on free loopback ports, formed with `redis-cli --cluster create`. Torn down (killed,
 * dirs removed) by stop(), and on process exit if a test run dies first.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { afterAll } from 'vitest';

const run = promisify(execFile);

export interface ClusterNode {
  port: number;
  dir: string;
  process: ChildProcess | undefined;
  /** A redis.conf read first (the command line's settings come after it and win). */
  configFile?: string | undefined;
  extraArgs?: string[] | undefined;
}

export interface RedisCluster {
  /** Seed nodes as REDIS_CLUSTER_NODES takes them: `127.0.0.1:port`, every node. */
  nodes: string[];
  /** Config overrides that put a test's Stowage on this cluster. */
  config: { redisClusterNodes: string[] };
  all: ClusterNode[];
  /** The node serving `slot` as master now (asked of a live node). */
  masterOf(slot: number): Promise<number>;
  /** Ports of the live nodes that are masters now, each by its own ROLE. */
  masters(): Promise<number[]>;
  /** CLUSTER NODES as a live node sees it (for failure messages). */
  nodesText(): Promise<string>;
  /** SIGKILL one node (its data dir stays, as a crashed host's disk would). */
  kill(port: number): Promise<void>;
  /** Start a killed node again on its port and dir (it rejoins from its nodes.conf). */
  restart(port: number): Promise<void>;
  /**
   * Wait until every live node reports cluster_state:ok and knows every node, and every live
   * replica's link to its master is up (its first sync done: only then can it be promoted).
   */
  waitHealthy(timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}

/** A port whose cluster bus port (port + 10000) is free too. */
async function freePortPair(taken: Set<number>): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const port = 20_000 + Math.floor(Math.random() * 20_000);
    if (taken.has(port) || taken.has(port + 10_000)) continue;
    if ((await isFree(port)) && (await isFree(port + 10_000))) {
      taken.add(port);
      taken.add(port + 10_000);
      return port;
    }
  }
  throw new Error('no free loopback port pair for a Redis Cluster node');
}

function isFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const p of live) p.kill('SIGKILL');
});

function startNode(node: ClusterNode): ChildProcess {
  const child = spawn(
    'redis-server',
    [
      ...(node.configFile ? [node.configFile] : []),
      '--port',
      String(node.port),
      '--bind',
      '127.0.0.1',
      '--cluster-enabled',
      'yes',
      '--cluster-config-file',
      join(node.dir, 'nodes.conf'),
      '--cluster-node-timeout',
      '2000',
      // A replica that has never finished its first sync cannot be promoted (its data age is
      // unbounded); Redis 7 waits 5 s for more replicas before a diskless sync starts.
      '--repl-diskless-sync-delay',
      '0',
      '--appendonly',
      'yes',
      '--appendfsync',
      'everysec',
      '--save',
      '',
      '--dir',
      node.dir,
      '--logfile',
      join(node.dir, 'redis.log'),
      ...(node.extraArgs ?? []),
    ],
    { stdio: 'ignore' },
  );
  live.add(child);
  child.once('exit', () => live.delete(child));
  node.process = child;
  return child;
}

async function info(port: number, section: 'cluster' | 'replication' = 'cluster'): Promise<string | undefined> {
  const r = new Redis({ port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
  r.on('error', () => {});
  try {
    await r.connect();
    return section === 'cluster' ? ((await r.call('CLUSTER', 'INFO')) as string) : await r.info('replication');
  } catch {
    return undefined;
  } finally {
    r.disconnect();
  }
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`Redis Cluster: timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export interface ClusterOptions {
  masters?: number;
  replicas?: number;
  /** Start every node from this redis.conf (e.g. deploy/docker/redis-cluster.conf). */
  configFile?: string;
  /** More redis-server arguments for every node. */
  extraArgs?: string[];
  /** false: start the nodes and return them unformed (to form them some other way). Default true. */
  form?: boolean;
}

export async function startRedisCluster(options: ClusterOptions = {}): Promise<RedisCluster> {
  const masters = options.masters ?? 3;
  const replicas = options.replicas ?? 1;
  const taken = new Set<number>();
  const all: ClusterNode[] = [];
  const stop = async () => {
    for (const n of all) n.process?.kill('SIGKILL');
    await Promise.all(
      all.map((n) => (n.process && n.process.exitCode === null ? new Promise((r) => n.process!.once('exit', r)) : undefined)),
    );
    for (const n of all) rmSync(n.dir, { recursive: true, force: true });
  };
  try {
    for (let i = 0; i < masters * (1 + replicas); i++) {
      const node: ClusterNode = {
        port: await freePortPair(taken),
        dir: mkdtempSync(join(tmpdir(), 'stowage-cluster-')),
        process: undefined,
        configFile: options.configFile,
        extraArgs: options.extraArgs,
      };
      all.push(node);
      startNode(node);
    }
    await until('the nodes to listen', async () => (await Promise.all(all.map((n) => info(n.port)))).every(Boolean), 10_000);
    if (options.form !== false)
      await run('redis-cli', [
        '--cluster',
        'create',
        ...all.map((n) => `127.0.0.1:${n.port}`),
        '--cluster-replicas',
        String(replicas),
        '--cluster-yes',
      ]);
  } catch (err) {
    await stop();
    throw err;
  }
  const total = all.length;
  const liveNodes = () => all.filter((n) => n.process && n.process.exitCode === null && n.process.signalCode === null);
  const ask = async (command: string[]) => {
    for (const n of liveNodes()) {
      const r = new Redis({ port: n.port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
      r.on('error', () => {});
      try {
        await r.connect();
        return await r.call(command[0]!, ...command.slice(1));
      } catch {
        // next node
      } finally {
        r.disconnect();
      }
    }
    throw new Error('Redis Cluster: no node answers');
  };
  const cluster: RedisCluster = {
    nodes: all.map((n) => `127.0.0.1:${n.port}`),
    config: { redisClusterNodes: all.map((n) => `127.0.0.1:${n.port}`) },
    all,
    async masterOf(slot) {
      const slots = (await ask(['CLUSTER', 'SLOTS'])) as [number, number, [string, number]][];
      const range = slots.find(([from, to]) => slot >= from && slot <= to);
      if (!range) throw new Error(`Redis Cluster: slot ${slot} is not served`);
      return range[2][1];
    },
    async nodesText() {
      return (await ask(['CLUSTER', 'NODES'])) as string;
    },
    async masters() {
      // Each live node's own word (ROLE): another node's CLUSTER NODES lags a change by gossip.
      const roles = await Promise.all(
        liveNodes().map(async (n) => {
          const r = new Redis({ port: n.port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
          r.on('error', () => {});
          try {
            await r.connect();
            return { port: n.port, role: ((await r.call('ROLE')) as [string])[0] };
          } catch {
            return { port: n.port, role: 'down' };
          } finally {
            r.disconnect();
          }
        }),
      );
      return roles.filter((r) => r.role === 'master').map((r) => r.port);
    },
    async kill(port) {
      const node = all.find((n) => n.port === port)!;
      const exited = new Promise((r) => node.process!.once('exit', r));
      node.process!.kill('SIGKILL');
      await exited;
    },
    async restart(port) {
      const node = all.find((n) => n.port === port)!;
      startNode(node);
      await until(`node ${port} to listen`, async () => (await info(port)) !== undefined, 10_000);
    },
    async waitHealthy(timeoutMs = 20_000) {
      await until(
        'cluster_state:ok on every node and every replica in sync',
        async () => {
          const infos = await Promise.all(liveNodes().map((n) => info(n.port)));
          if (!infos.every((i) => !!i && /cluster_state:ok/.test(i) && new RegExp(`cluster_known_nodes:${total}\\b`).test(i))) return false;
          const repl = await Promise.all(liveNodes().map((n) => info(n.port, 'replication')));
          return repl.every((i) => !!i && (/role:master/.test(i) || /master_link_status:up/.test(i)));
        },
        timeoutMs,
      );
    },
    stop,
  };
  try {
    if (options.form !== false) {
      await attachOrphans(all);
      await cluster.waitHealthy();
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return cluster;
}

/**
 * redis-cli --cluster create attaches each replica once the nodes have met; on a busy machine a
 * CLUSTER REPLICATE can come too early and fail, leaving that node a master without slots (and
 * its would-be master with no replica to fail over to). Attach any such node to the master with
 * the fewest replicas, as redis-cli meant to.
 */
async function attachOrphans(nodes: ClusterNode[]): Promise<void> {
  const call = async (port: number, ...command: string[]) => {
    const r = new Redis({ port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
    r.on('error', () => {});
    try {
      await r.connect();
      return await r.call(command[0]!, ...command.slice(1));
    } finally {
      r.disconnect();
    }
  };
  await until(
    'every node without slots attached as a replica',
    async () => {
      // Each node's own line (flagged myself) is current; other nodes learn a change by gossip.
      // Fields: id address flags master-id ping pong epoch link-state [slots...]
      const own = await Promise.all(
        nodes.map(async (n) => {
          const text = (await call(n.port, 'CLUSTER', 'NODES')) as string;
          return {
            port: n.port,
            f: text
              .split('\n')
              .find((l) => l.includes('myself'))!
              .trim()
              .split(' '),
          };
        }),
      );
      const orphan = own.find(({ f }) => f[2]!.includes('master') && f.length === 8);
      if (!orphan) return true;
      const replicas = (id: string) => own.filter(({ f }) => f[3] === id).length;
      const masters = own.filter(({ f }) => f[2]!.includes('master') && f.length > 8);
      const target = masters.sort((a, b) => replicas(a.f[0]!) - replicas(b.f[0]!))[0]!;
      await call(orphan.port, 'CLUSTER', 'REPLICATE', target.f[0]!).catch(() => {});
      return false;
    },
    20_000,
  );
}

/** One Redis, or the test file's cluster. */
export type RedisVariant = { name: 'single' } | { name: 'cluster'; cluster: RedisCluster };

/**
 * Both Redis layouts, for `describe.each(await redisVariants())('on $name Redis', …)`: the file's
 * cluster is started now (top-level await) and stopped after the file, whatever its outcome.
 */
export async function redisVariants(): Promise<RedisVariant[]> {
  const cluster = await startRedisCluster();
  afterAll(() => cluster.stop());
  return [{ name: 'single' }, { name: 'cluster', cluster }];
}
