/** Redis connections for BullMQ and for Stowage's own keys. */
import { Cluster, type ClusterOptions, Redis, type RedisOptions } from 'ioredis';
import { parseURL } from 'ioredis/built/utils/index.js';
import { StowageError } from '../errors.js';
import { backoffDelay } from '../retry.js';

/** Where an outage is reported: a pino logger, or (default) one line on stderr. */
export interface OutageLog {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

const STDERR_LOG: OutageLog = {
  warn: (obj, msg) => process.stderr.write(`stowage: ${msg} (${(obj as { code?: string }).code ?? 'error'}); retrying\n`),
  info: () => {},
};

/**
 * Where Redis is: a URL (one Redis), or the URL plus Redis Cluster seed nodes (`config.redisUrl`,
 * `config.redisClusterNodes`). With seed nodes the URL's credentials, TLS (`rediss:`) and query
 * options apply to every node; its host and port are not used.
 */
export type RedisTarget = string | { redisUrl: string; redisClusterNodes?: readonly string[] | undefined };

/**
 * A connection suitable for BullMQ workers: `maxRetriesPerRequest: null` so blocking commands
 * wait through a Redis restart instead of failing, and a capped reconnect backoff (ioredis owns
 * the reconnect loop; src/retry.ts the formula): 400 ms doubling to 5 s.
 *
 * An outage is one warning when it starts and one line when Redis is back, not ioredis's stack
 * per reconnect attempt ("Unhandled error event" is what ioredis prints with no error listener).
 *
 * With cluster seed nodes this is an ioredis `Cluster` (see createCluster), typed as the `Redis`
 * Stowage's modules take: they use only what both have (commands, duplicate, events, quit).
 */
export function createRedis(target: RedisTarget, options: RedisOptions & { log?: OutageLog } = {}): Redis {
  const { log = STDERR_LOG, ...redisOptions } = options;
  const url = typeof target === 'string' ? target : target.redisUrl;
  const nodes = typeof target === 'string' ? undefined : target.redisClusterNodes;
  const workerDefaults: RedisOptions = {
    maxRetriesPerRequest: null,
    enableReadyCheck: true,
    retryStrategy: (times) => backoffDelay(times, { delayMs: 400, maxDelayMs: 5_000, jitter: 0 }),
  };
  if (nodes?.length) {
    const cluster = createCluster(url, nodes, { ...workerDefaults, ...redisOptions });
    reportOutages(cluster as unknown as Redis, log);
    return cluster as unknown as Redis;
  }
  const redis = new Redis(url, { ...workerDefaults, ...redisOptions });
  reportOutages(redis, log);
  return redis;
}

/** Options that are the Cluster's own, not each node connection's (ioredis ClusterOptions). */
const CLUSTER_LEVEL = ['lazyConnect', 'enableOfflineQueue', 'enableReadyCheck'] as const;

/** Split Redis-style options into the Cluster's own and its nodes' (`redisOptions`). */
function clusterOptions(options: RedisOptions): Partial<ClusterOptions> {
  const { retryStrategy, ...rest } = options;
  const own: Record<string, unknown> = {};
  const node: Record<string, unknown> = { ...rest };
  for (const k of CLUSTER_LEVEL) {
    if (k in node) {
      own[k] = node[k];
      delete node[k];
    }
  }
  // The Cluster reconnects as a whole (clusterRetryStrategy); a node connection that drops is
  // dropped, and the slots are refreshed from the others (that is how a failover is followed).
  if (retryStrategy) own.clusterRetryStrategy = retryStrategy;
  return { ...own, redisOptions: node as RedisOptions };
}

/**
 * The node connection options a REDIS_URL stands for (user, password, TLS, query options such as
 * `family`), without its host and port. A database other than 0 is refused: Cluster has only 0.
 */
export function clusterNodeOptions(url: string): RedisOptions {
  const { host: _host, port: _port, path: _path, db, username, password, ...query } = parseURL(url) as RedisOptions & { db?: string };
  if (db !== undefined && Number(db) !== 0)
    throw new StowageError(
      'STOWAGE_ERR_CONFIG',
      `REDIS_URL selects database ${db}; Redis Cluster has only database 0 (drop "/${db}" from the URL)`,
    );
  return {
    ...query,
    ...(username ? { username } : {}),
    ...(password ? { password } : {}),
    // rediss: is TLS on every node (ioredis reads the scheme only for a single Redis).
    ...(/^rediss:/i.test(url) ? { tls: {} } : {}),
  };
}

/** `host:port` (`[v6]:port` too) into what ioredis Cluster takes as a seed node. */
export function parseClusterNode(node: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(node.trim());
  const port = Number(m?.[3]);
  if (!m || port < 1 || port > 65_535)
    throw new StowageError('STOWAGE_ERR_CONFIG', `REDIS_CLUSTER_NODES: "${node}" is not host:port (e.g. redis-0.redis:6379)`);
  return { host: (m[1] ?? m[2])!, port };
}

/**
 * An ioredis Cluster from seed nodes, with `url`'s credentials and TLS on every node. Its
 * `duplicate` also takes the Redis form, `duplicate({ connectionName })`, which Stowage's callers
 * use; the Cluster form `(startupNodes, clusterOptions)` (BullMQ's) still works.
 */
function createCluster(url: string, nodes: readonly string[], options: RedisOptions): Cluster {
  const split = clusterOptions(options);
  const cluster = new Cluster(nodes.map(parseClusterNode), {
    ...split,
    redisOptions: { ...clusterNodeOptions(url), ...split.redisOptions },
    // Follow a failover promptly: a MOVED or a dropped master triggers a slots refresh, and commands
    // for its slots wait (not fail) while the replica is promoted (cluster-node-timeout).
    retryDelayOnFailover: 200,
    retryDelayOnClusterDown: 300,
    retryDelayOnTryAgain: 200,
    slotsRefreshTimeout: 2_000,
  });
  adaptDuplicate(cluster);
  return cluster;
}

function adaptDuplicate(cluster: Cluster): void {
  const duplicate = cluster.duplicate.bind(cluster);
  cluster.duplicate = ((first?: unknown, second?: Partial<ClusterOptions>) => {
    let copy: Cluster;
    if (first === undefined || Array.isArray(first)) copy = duplicate(first as never, second);
    else {
      const split = clusterOptions(first as RedisOptions);
      copy = duplicate([], { ...split, redisOptions: { ...cluster.options.redisOptions, ...split.redisOptions } });
    }
    adaptDuplicate(copy);
    return copy;
  }) as Cluster['duplicate'];
}

/** One warning per outage on `redis` (and on its duplicates, which BullMQ makes for blocking reads). */
export function reportOutages(redis: Redis, log: OutageLog, outage = { down: new Set<Redis>(), nodesDown: new Set<string>() }): void {
  // A connection and its duplicates share one outage: the first to fail warns, the last to come back says so.
  const where = redisAddress(redis);
  redis.on('error', (err: NodeJS.ErrnoException) => {
    if (outage.down.has(redis)) return;
    outage.down.add(redis);
    if (outage.down.size === 1)
      log.warn({ redis: where, code: err.code ?? err.name, err: err.message }, `Redis at ${where} is unreachable`);
  });
  const back = () => {
    if (!outage.down.delete(redis)) return;
    if (outage.down.size === 0) log.info({ redis: where }, `Redis at ${where} is reachable again`);
  };
  redis.on('ready', back);
  // Closed for good (shutdown): no longer part of the outage, and nothing to announce.
  redis.on('end', () => outage.down.delete(redis));
  if (redis.isCluster) reportNodeOutages(redis as unknown as Cluster, log, outage.nodesDown);
  const duplicate = redis.duplicate.bind(redis) as (...args: unknown[]) => Redis;
  redis.duplicate = ((...args: unknown[]) => {
    const copy = duplicate(...args);
    reportOutages(copy, log, outage);
    return copy;
  }) as Redis['duplicate'];
}

/**
 * A Cluster stays up while one node is away (a failover): one warning per node when it drops
 * (shared by the connection and its duplicates, like the outage), one line when it answers again.
 */
function reportNodeOutages(cluster: Cluster, log: OutageLog, down: Set<string>): void {
  cluster.on('node error', (err: NodeJS.ErrnoException, address: string) => {
    if (down.has(address)) return;
    down.add(address);
    log.warn({ redis: address, code: err.code ?? err.name, err: err.message }, `Redis Cluster node ${address} is unreachable`);
  });
  cluster.on('+node', (node: Redis) => {
    const address = `${node.options.host}:${node.options.port}`;
    node.once('ready', () => {
      if (down.delete(address)) log.info({ redis: address }, `Redis Cluster node ${address} is reachable again`);
    });
  });
}

function redisAddress(redis: Redis): string {
  if (redis.isCluster) {
    const seeds = (redis as unknown as { startupNodes: { host: string; port: number }[] }).startupNodes;
    return `cluster ${seeds.map((n) => `${n.host}:${n.port}`).join(',')}`;
  }
  const { host, port, path } = redis.options;
  return path ?? `${host ?? '127.0.0.1'}:${port ?? 6379}`;
}

/**
 * A connection for producers: fail fast (a bounded number of retries per command) so an
 * application request is not held forever while Redis is away.
 */
export function createProducerRedis(target: RedisTarget): Redis {
  return createRedis(target, { maxRetriesPerRequest: 3, enableOfflineQueue: true });
}

/**
 * For one-shot commands (the CLI): connect once, within `timeoutMs`, or throw one line naming the
 * address and the cause, e.g. "Redis at 127.0.0.1:6390 is unreachable (ECONNREFUSED)".
 */
export async function assertRedisReachable(target: RedisTarget, timeoutMs = 3_000): Promise<void> {
  const url = typeof target === 'string' ? target : target.redisUrl;
  const nodes = typeof target === 'string' ? undefined : target.redisClusterNodes;
  const once: RedisOptions = {
    lazyConnect: true,
    connectTimeout: timeoutMs,
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    retryStrategy: () => null,
  };
  const probe = nodes?.length ? (createCluster(url, nodes, once) as unknown as Redis) : new Redis(url, once);
  let last: NodeJS.ErrnoException | undefined;
  probe.on('error', (err: NodeJS.ErrnoException) => (last = err));
  probe.on('node error', (err: NodeJS.ErrnoException) => (last = err));
  try {
    await probe.connect();
    await probe.ping();
  } catch (err) {
    const e = last ?? (err as NodeJS.ErrnoException);
    const cause = e.code ?? (/timeout/i.test(e.message) ? 'ETIMEDOUT' : e.message.split('\n')[0]);
    throw new StowageError('STOWAGE_ERR_UNREACHABLE', `Redis at ${redisAddress(probe)} is unreachable (${cause})`);
  } finally {
    probe.disconnect();
  }
}

const CONNECTION_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EPIPE',
]);

/** A lost or refused Redis connection (already reported once per outage by reportOutages), not a job's or command's error. */
export function isConnectionError(err: unknown): boolean {
  const e = err as NodeJS.ErrnoException | undefined;
  return (
    !!e && ((e.code !== undefined && CONNECTION_CODES.has(e.code)) || /^Connection is closed|^Stream isn't writeable/.test(e.message ?? ''))
  );
}
