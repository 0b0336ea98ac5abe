/**
 * The one place that reads `process.env`.
 *
 * One zod schema holds every setting, and the environment variables derive from it (ENV_VARS):
 * a setting at `group.someName` is `STOWAGE_GROUP_SOME_NAME` (a group may shorten its segment:
 * `storage` is `S3`), so names follow one convention by construction. The names the seeds and
 * earlier versions used (`R2_BUCKET`, `REDIS_URL`, `STOWAGE_CONCURRENCY`, …) stay as documented
 * aliases, declared beside their setting. Structured settings (schedules, backup sets, lifecycle
 * rules) take JSON, in their variable or in the file named by `STOWAGE_CONFIG`. Environment
 * variables win over the file. `loadConfig()` validates everything and reports every bad setting at
 * once, by the variable that carried it, never echoing a secret's value.
 */
import { readFileSync, realpathSync } from 'node:fs';
import { isIP } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, isAbsolute, resolve } from 'node:path';
import { z } from 'zod';
import { ConfigError } from './errors.js';
import { absolutePath, safeId } from './ids.js';
import { redactUrlSecrets } from './queues/redact.js';

/** Environment metadata on a schema node: a group's variable segment, a setting's aliases. */
interface EnvMeta {
  /** On a group: the segment its variables use instead of its key (`storage` → `S3`). */
  envSegment?: string;
  /** On a setting: the older names that still set it. */
  aliases?: string[];
  [key: string]: unknown;
}
const aka = (...aliases: string[]): EnvMeta => ({ aliases });

const bool = z
  .union([z.boolean(), z.enum(['true', 'false', '1', '0', 'yes', 'no'])])
  .transform((v) => v === true || v === 'true' || v === '1' || v === 'yes');
const int = (min: number, max: number) => z.coerce.number().int().min(min).max(max);
/** A retention tier's days: a number (0 = for ever), or `off`/false for no such tier. */
const tier = z.union([z.literal(false), z.literal('off').transform(() => false as const), int(0, 36_500)]);

/** A Job Scheduler entry: run `kind` with `data` on a cron pattern in a time zone. */
export const scheduleSchema = z.object({
  /** Stable id: upserting the same id replaces the schedule instead of adding one. */
  id: z.string().regex(/^[A-Za-z0-9_.-]{1,100}$/, 'letters, digits, _ . - only (1-100)'),
  kind: z.string().min(1),
  /** Cron pattern with 5 or 6 fields. */
  cron: z.string().refine((c) => [5, 6].includes(c.trim().split(/\s+/).length), 'expected a cron pattern with 5 or 6 fields'),
  /** IANA time zone; UTC by default. */
  tz: z.string().default('UTC'),
  data: z.record(z.string(), z.unknown()).default({}),
  enabled: z.boolean().default(true),
});
export type ScheduleConfig = z.infer<typeof scheduleSchema>;

/**
 * A retention rule, per prefix. `prefix` is a key prefix in which `*` stands for one whole path
 * segment (the default snapshots rule uses it for every project's `snapshots/` folder). Stores
 * filter lifecycle rules by a literal prefix only, so `lifecycle --apply` pushes rules without `*`;
 * `cleanup --enforce-lifecycle` enforces all of them on any store.
 */
export const lifecycleRuleSchema = z
  .object({
    /** Stable id (the store's rule ID). */
    id: z.string().regex(/^[A-Za-z0-9_.-]{1,100}$/, 'letters, digits, _ . - only (1-100)'),
    /** Key prefix; `''` is the whole bucket; `*` matches one path segment. */
    prefix: z
      .string()
      .max(1024)
      .refine((p) => p.split('/').every((seg) => seg === '*' || !seg.includes('*')), 'a `*` must be a whole path segment'),
    /** Delete objects (with their `.sha256` sidecars) this many days after they were written. */
    expireDays: int(1, 36_500).optional(),
    /** Abort multipart uploads still incomplete this many days after they were started. */
    abortIncompleteMultipartDays: int(1, 36_500).optional(),
    enabled: z.boolean().default(true),
  })
  .refine((r) => r.expireDays !== undefined || r.abortIncompleteMultipartDays !== undefined, {
    message: 'needs expireDays or abortIncompleteMultipartDays',
    path: ['expireDays'],
  });
export type LifecycleRule = z.output<typeof lifecycleRuleSchema>;

/**
 * The id of the rule that expires the aggregation exports (failures.uploadPrefix). It stays the same
 * whatever its days (failures.retentionDays, `lifecycle --apply --days N`): the store's rule is then
 * changed in place, not left behind beside a new one. The `90d` is the seeds' default, not a promise.
 */
export const FAILURE_PATTERNS_RULE_ID = 'failure-patterns-90d';

/**
 * Retention defaults (seeds 000 and 001): failure patterns 90 days, stale multipart 1. Build
 * artifacts have no age rule: an age rule would delete a project's only live version once it is a
 * month old; artifact retention (config.artifact.retention) keeps the newest and the tiers instead.
 */
export const DEFAULT_LIFECYCLE_RULES: LifecycleRule[] = [
  { id: FAILURE_PATTERNS_RULE_ID, prefix: 'failure_patterns/', expireDays: 90, enabled: true },
  { id: 'abort-incomplete-multipart-1d', prefix: '', abortIncompleteMultipartDays: 1, enabled: true },
];

/** A backup set: its SQLite (and PostgreSQL) databases and its retention policy (restic's keep-* rules). */
export const backupSetSchema = z
  .strictObject({
    name: safeId,
    sqlite: z.array(z.strictObject({ name: safeId, path: absolutePath })).default([]),
    postgres: z.array(z.strictObject({ name: safeId, url: z.string().min(1) })).default([]),
    /** When the scheduler runs it (UTC): daily, weekly (Sunday) or monthly (the 1st), at `at` (HH:MM). Absent: on demand only. */
    schedule: z
      .strictObject({
        every: z.enum(['daily', 'weekly', 'monthly']),
        at: z
          .string()
          .regex(/^([01]\d|2[0-3]):[0-5]\d$/, 'HH:MM, 24-hour')
          .default('03:00'),
      })
      .optional(),
    /**
     * Restic's keep-* rules; a backup is kept when any rule keeps it. Without `retention` a set gets
     * seed 004's default: every backup of the last 90 days, and at least the 3 newest whatever their
     * age (DEFAULT_RETENTION in src/backups/retention.ts; a test keeps the two equal). A `retention`
     * that is given is the whole policy: keepWithinDays then applies only when it is set.
     */
    retention: z
      .strictObject({
        /** Keep the N newest backups, whatever their age (the minimum kept). Default 3. */
        keepLast: z.number().int().min(0).default(3),
        keepDaily: z.number().int().min(0).optional(),
        keepWeekly: z.number().int().min(0).optional(),
        keepMonthly: z.number().int().min(0).optional(),
        /** Keep every backup taken less than this many days before the newest one; 0 = keep forever. */
        keepWithinDays: z.number().min(0).optional(),
      })
      .prefault({ keepWithinDays: 90 }),
  })
  .refine((s) => s.sqlite.length + s.postgres.length > 0, { message: 'a backup set needs at least one database', path: ['sqlite'] });
export type BackupSet = z.output<typeof backupSetSchema>;

/**
 * The default source roots: the working directory and the OS temp folder, each as given and
 * resolved (a temp folder behind a link, as on macOS, is then matched in either form).
 */
export function defaultSourceRoots(): string[] {
  const roots = new Set<string>();
  for (const dir of [process.cwd(), tmpdir()]) {
    roots.add(resolve(dir));
    try {
      roots.add(realpathSync(dir));
    } catch {
      // Not there (yet): its resolved form alone.
    }
  }
  return [...roots];
}

/** One source root: an absolute folder (normalized, no trailing separator), or `*` for anywhere. */
const sourceRoot = z
  .string()
  .superRefine((r, ctx) => {
    if (r === '*') return;
    if (!isAbsolute(r) || r.includes('\u0000'))
      ctx.addIssue({
        code: 'custom',
        message: `${JSON.stringify(r)} is not an absolute folder; give absolute folders separated by "${delimiter}"`,
      });
  })
  .transform((r) => (r === '*' ? r : resolve(r)));

/**
 * Defaults of the http group's bounds. loadConfig always sets them; they are optional in the type
 * so that a config built by hand with only `http: {host, port}` still holds, and the server falls
 * back to these.
 */
export const HTTP_DEFAULTS = {
  requestTimeoutMs: 30_000,
  keepAliveTimeoutMs: 72_000,
  connectionTimeoutMs: 0,
  requestsPerMinute: 600,
  enqueuesPerMinute: 120,
  trustProxy: false as boolean | string[],
};

/** proxy-addr's names for address ranges (Fastify's trustProxy takes them). */
const PROXY_RANGES = ['loopback', 'linklocal', 'uniquelocal'];
const proxyAddress = z
  .string()
  .trim()
  .refine((a) => {
    if (PROXY_RANGES.includes(a) || isIP(a)) return true;
    const [addr, bits, extra] = a.split('/');
    const max = { 4: 32, 6: 128 }[isIP(addr ?? '')];
    return extra === undefined && max !== undefined && /^\d{1,3}$/.test(bits ?? '') && Number(bits) <= max;
  }, 'expected true, false, or IP addresses and CIDR ranges (10.0.0.0/8) of the proxies, or loopback, linklocal, uniquelocal (hop counts cannot be checked)');
/** `true`/`false`, or proxies (a list, or comma-separated). Hop counts are refused: Fastify cannot check the peer with one. */
const trustProxySchema = z.preprocess(
  (v) => {
    if (typeof v !== 'string') return v;
    const t = v.trim().toLowerCase();
    if (t === 'true' || t === 'false') return t === 'true';
    return v.split(',').map((a) => a.trim());
  },
  z.union([z.boolean(), z.array(proxyAddress).min(1)]),
);

/** `host:port` seed nodes: a comma-separated string (the environment) or a list (a config file). */
const clusterNodesSchema = z
  .union([z.string(), z.array(z.string())])
  .transform((v) => (typeof v === 'string' ? v.split(',') : v).map((n) => n.trim()).filter(Boolean))
  .pipe(
    z
      .array(z.string().regex(/^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}$/, 'each node is host:port (e.g. redis-0.redis:6379)'))
      .min(1, 'at least one host:port'),
  );

export const configSchema = z.object({
  /** Redis for the BullMQ queues. Default redis://127.0.0.1:6379. */
  redisUrl: z.string().url().default('redis://127.0.0.1:6379').meta(aka('REDIS_URL')),
  /**
   * Redis Cluster seed nodes, `host:port` comma-separated (the rest are discovered). Set, Stowage
   * runs in cluster mode: REDIS_URL then gives only the credentials, TLS and options of every node.
   */
  redisClusterNodes: clusterNodesSchema.optional().meta(aka('REDIS_CLUSTER_NODES')),
  /**
   * Key prefix. On Redis Cluster a plain one gets a hash tag per queue (`stowage:{export}`); one
   * holding a `{hash-tag}` is used as it is (every queue in one slot). Default `stowage`.
   */
  prefix: z
    .string()
    .regex(/^[A-Za-z0-9_{}.-]{1,64}$/, 'letters, digits, _ . - { } only (1-64)')
    .default('stowage'),
  /** PostgreSQL for receipts and catalogs. Default postgres://postgres@127.0.0.1:5432/postgres. */
  databaseUrl: z.string().min(1).default('postgres://postgres@127.0.0.1:5432/postgres').meta(aka('DATABASE_URL')),
  /** Schema that holds Stowage's tables. Default `stowage`. Tests use one schema per file. */
  databaseSchema: z
    .string()
    .regex(/^[a-z_][a-z0-9_]{0,62}$/, 'lowercase identifier')
    .default('stowage')
    .meta(aka('STOWAGE_DB_SCHEMA')),
  storage: z
    .object({
      /** Cloudflare account id; the endpoint is derived from it when R2_ENDPOINT is absent. */
      accountId: z.string().optional().meta(aka('R2_ACCOUNT_ID')),
      accessKeyId: z.string().optional().meta(aka('R2_ACCESS_KEY_ID')),
      secretAccessKey: z.string().optional().meta(aka('R2_SECRET_ACCESS_KEY')),
      bucket: z
        .string()
        .regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/, 'an S3 bucket name')
        .optional()
        .meta(aka('R2_BUCKET')),
      /** Any S3-compatible endpoint (MinIO, s3rver, AWS). */
      endpoint: z.string().url().optional().meta(aka('R2_ENDPOINT')),
      /** Path-style addressing; default true for non-R2 endpoints, false for R2. */
      forcePathStyle: bool.optional().meta(aka('R2_FORCE_PATH_STYLE')),
      /** Region; `auto` is what R2 expects. */
      region: z.string().default('auto').meta(aka('R2_REGION')),
      /** Multipart part size in MiB (R2 wants equal parts; S3 needs at least 5). Default 8. */
      partSizeMb: int(5, 5120).default(8).meta(aka('STOWAGE_PART_SIZE_MB')),
      /** Parts in flight per upload. Memory is bounded by partSize x this. Default 4. */
      queueSize: int(1, 64).default(4).meta(aka('STOWAGE_UPLOAD_QUEUE_SIZE')),
      /** SDK attempts per request (first try included). Default 3. */
      maxAttempts: int(1, 20).default(3),
      /** Per-request socket timeout in ms. Default 60000. */
      requestTimeoutMs: int(1000, 3_600_000).default(60_000).meta(aka('STOWAGE_S3_TIMEOUT_MS')),
    })
    .meta({ envSegment: 'S3' }),
  /** HMAC secret for bearer tokens (at least 32 characters). */
  authSecret: z.string().min(32, 'at least 32 characters').optional(),
  /** `user:password` for HTTP basic auth on Bull Board, as an alternative to tokens. */
  basicAuth: z
    .string()
    .regex(/^[^:]+:.+$/, 'user:password')
    .optional(),
  http: z.object({
    host: z.string().default('127.0.0.1').meta(aka('HTTP_HOST')),
    port: int(0, 65535).default(3000).meta(aka('HTTP_PORT')),
    /**
     * Bound on receiving a whole request, headers and body, in ms (0 = none): a client that sends
     * slower gets 408 and its connection is closed. Responses (event streams, downloads) are not
     * bound by it. Default 30000.
     */
    requestTimeoutMs: int(0, 3_600_000).default(HTTP_DEFAULTS.requestTimeoutMs).optional(),
    /** An idle keep-alive connection is closed after this long, in ms. Default 72000 (longer than load balancers' 60 s). */
    keepAliveTimeoutMs: int(1000, 3_600_000).default(HTTP_DEFAULTS.keepAliveTimeoutMs).optional(),
    /**
     * A connection that neither sends nor receives for this long is closed, in ms (0 = none). Must
     * exceed the SSE heartbeat (15 s) and the slowest silent handler (a restore stages a whole
     * backup before answering). Default 0.
     */
    connectionTimeoutMs: int(0, 3_600_000).default(HTTP_DEFAULTS.connectionTimeoutMs).optional(),
    /**
     * Requests one caller (token user, basic-auth user, else client address) may make per minute to
     * /v1, /api and the board, shared by every http process on the Redis; more get 429 with
     * Retry-After (0 = no limit). Probes and /metrics are not counted. Default 600.
     */
    requestsPerMinute: int(0, 1_000_000).default(HTTP_DEFAULTS.requestsPerMinute).optional(),
    /** Of those, enqueues (POST /v1/jobs/:kind, record stores, backups now, redrives) per minute (0 = no limit). Default 120. */
    enqueuesPerMinute: int(0, 1_000_000).default(HTTP_DEFAULTS.enqueuesPerMinute).optional(),
    /**
     * Which peers are proxies whose X-Forwarded-For / -Proto / -Host are believed (client address,
     * https for the board cookie's Secure, Host checks): `false` (default: none), `true` (any peer:
     * only when nothing else can reach the port), or addresses and CIDR ranges, comma-separated
     * (`127.0.0.1,10.0.0.0/8`; also `loopback`, `linklocal`, `uniquelocal`).
     */
    trustProxy: trustProxySchema.default(HTTP_DEFAULTS.trustProxy).optional(),
  }),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info').meta(aka('LOG_LEVEL')),
  worker: z.object({
    /** Jobs in flight per queue per process. Default 4. */
    concurrency: int(1, 1000).default(4).meta(aka('STOWAGE_CONCURRENCY')),
    /** How long SIGTERM waits for active jobs before closing anyway (ms). Default 30000. */
    shutdownTimeoutMs: int(0, 3_600_000).default(30_000).meta(aka('STOWAGE_SHUTDOWN_TIMEOUT_MS')),
    /** Job lock TTL (ms): a dead worker's job is considered stalled after at most this. Default 30000. */
    lockDurationMs: int(1000, 3_600_000).default(30_000).meta(aka('STOWAGE_LOCK_DURATION_MS')),
    /** How often each worker checks for stalled jobs (ms). Default 15000. */
    stalledIntervalMs: int(1000, 3_600_000).default(15_000).meta(aka('STOWAGE_STALLED_INTERVAL_MS')),
    /** Times a job may stall (its worker died) before it fails. Default 2. */
    maxStalledCount: int(0, 100).default(2).meta(aka('STOWAGE_MAX_STALLED_COUNT')),
    /**
     * Which jobs get a row in job_receipts: `parked` (final failures only; default) or `all`
     * (completed too, written behind in batches). Uploads always get their own receipt.
     */
    jobReceipts: z.enum(['parked', 'all']).default('parked').meta(aka('STOWAGE_JOB_RECEIPTS')),
    /** How often each worker parks final failures the failed event missed (ms). Default 30000. */
    sweepIntervalMs: int(100, 3_600_000).default(30_000).meta(aka('STOWAGE_SWEEP_INTERVAL_MS')),
  }),
  deadLetter: z
    .object({
      /** Automatic redrive of parked jobs: every this many ms (0 = off). Default 1 hour. */
      retryIntervalMs: int(0, 30 * 86_400_000).default(3_600_000),
      /** At most this many automatic redrives per job. Default 3. */
      maxRetries: int(0, 1000).default(3),
    })
    .meta({ envSegment: 'DLQ' }),
  events: z.object({
    /** Approximate length bound of the domain-event stream. Default 10000. */
    maxLen: int(100, 10_000_000).default(10_000).meta(aka('STOWAGE_EVENTS_MAXLEN')),
    /** Open SSE streams one http process serves at most; more get 503. Default 1000. */
    maxClients: int(1, 1_000_000).default(1000),
    /**
     * Open SSE streams one caller (a token's user and role) holds at most on one http process; more
     * get 429, so one caller cannot take every slot. Default 10.
     */
    maxClientsPerCaller: int(1, 1_000_000).default(10),
    /**
     * A stream is ended after this long (less up to 10%, so clients that connected together do not
     * all reconnect together); EventSource reconnects with Last-Event-ID and loses nothing, and the
     * reconnect checks its token again. Default 3600.
     */
    maxStreamSeconds: int(1, 7 * 86_400).default(3600),
  }),
  /**
   * Folders workers may read sources from and restore into (build folders, packs, ad hoc SQLite
   * paths, HTTP restore targets), links resolved; anything else is refused at enqueue and by the
   * worker. Env form: absolute folders separated by `:` (`;` on Windows); `*` allows any path
   * (unsafe: whoever may enqueue then reads any file the worker can). Default: the working
   * directory and the OS temp folder (storage/source-roots.ts).
   */
  sourceRoots: z
    .union([z.string(), z.array(z.string())])
    .transform((v) =>
      typeof v === 'string'
        ? v
            .split(delimiter)
            .map((r) => r.trim())
            .filter(Boolean)
        : v,
    )
    .pipe(
      z
        .array(sourceRoot)
        .min(1, 'name at least one folder, or * for anywhere')
        .refine((roots) => !roots.includes('*') || roots.length === 1, '* (anywhere) cannot be combined with folders'),
    )
    .default(defaultSourceRoots),
  /** Build-artifact size policy, on the source's total file size (measured before archiving). */
  artifact: z
    .object({
      /** Over this, an artifact_size_warning event is emitted (the artifact is still stored). Default 100 MiB. */
      warnBytes: int(0, Number.MAX_SAFE_INTEGER).default(100 * 1024 * 1024),
      /** Over this, nothing is uploaded: a warning event and status `skipped_too_large`. Default 1 GiB. */
      limitBytes: int(1, Number.MAX_SAFE_INTEGER).default(1024 * 1024 * 1024),
      /**
       * Archive build files that have more than one hard link. Default false: they are left out and
       * logged, since such a file may be a planted link to a file outside the build folder.
       */
      archiveHardLinks: bool.default(false),
      /**
       * Artifact retention per project (seed 001's intent), run by the daily cleanup and
       * `stowage cleanup --artifact-retention`: see src/cleanup/artifact-retention.ts.
       */
      retention: z
        .object({
          /** Run it in the daily cleanup. Default true. */
          enabled: bool.default(true),
          /** The newest N versions of each project are always kept, whatever their age. Default 3. */
          keepLast: int(1, 100_000).default(3),
          /** Every version younger than this many days is kept; 0 = every version for ever. Default 30. */
          keepWithinDays: int(0, 36_500).default(30),
          /** The first version of each day (UTC) is kept this many days; 0 = for ever, `off` = no daily tier. Default off. */
          keepDailyDays: tier.default(false),
          /** The first version of each month is kept this many days; 0 = for ever, `off` = no monthly tier. Default 365. */
          keepMonthlyDays: tier.default(365),
          /** The first version of each year is kept this many days; 0 = for ever (default), `off` = no yearly tier. */
          keepYearlyDays: tier.default(0),
        })
        .prefault({}),
      /**
       * Where a client rebuilds a version whose artifact is gone: the `rebuildUrl` of the 404 that
       * export and download answer. `{userId}`, `{projectId}` and `{versionId}` are filled in. The
       * default is seed 001's route, which the builder application serves (Stowage has no sources
       * to rebuild from).
       */
      rebuildUrl: z
        .string()
        .min(1)
        .max(2048)
        .refine((u) => u.startsWith('/') || /^https?:\/\//.test(u), 'a path (/…) or an http(s) URL')
        .default('/v1/versions/{versionId}/rebuild'),
    })
    .refine((a) => a.warnBytes <= a.limitBytes, { message: 'must not exceed the limit', path: ['warnBytes'] })
    .prefault({}),
  /** Failure catalog: ingestion writer and the aggregation export (see docs/failures.md). */
  failures: z
    .object({
      /** Key prefix of aggregation exports, no leading or trailing `/`. Default `failure_patterns`. */
      uploadPrefix: z
        .string()
        .regex(/^[A-Za-z0-9_.-]+(?:\/[A-Za-z0-9_.-]+)*$/, 'path segments of letters, digits, _ . - joined by /')
        .default('failure_patterns')
        .meta(aka('R2_UPLOAD_PREFIX')),
      /**
       * Days the store keeps an aggregation export: the expireDays of the default lifecycle rule
       * FAILURE_PATTERNS_RULE_ID, on `{uploadPrefix}/`. 0 = for ever (no such rule; `lifecycle
       * --apply` removes it from the bucket). Shapes the default rules only: with lifecycleRules
       * given, set that rule's expireDays there. Default 90.
       */
      retentionDays: int(0, 36_500).default(90).meta(aka('R2_RETENTION_DAYS')),
      /** Upload retries after the first attempt, with exponential backoff (a job BullMQ retries tries once). Default 5. */
      maxRetries: int(0, 20).default(5).meta(aka('R2_MAX_RETRIES')),
      /** First backoff delay between upload attempts (ms), doubled each retry. Default 1000. */
      retryBaseDelayMs: int(0, 600_000).default(1000).meta(aka('AGG_RETRY_BASE_DELAY_MS')),
      /** Where an export goes when the store cannot take it. Default `.stowage/fallback-uploads`. */
      localFallbackDir: z.string().min(1).default('.stowage/fallback-uploads').meta(aka('AGG_LOCAL_FALLBACK')),
      /** Failed re-uploads of one fallback file before its status becomes `failed`. Default 10. */
      fallbackMaxTries: int(1, 1000).default(10).meta(aka('AGG_FALLBACK_MAX_TRIES')),
      /** Failures the writer inserts per Postgres transaction. Default 500. */
      writerBatchSize: int(1, 10_000).default(500).meta(aka('FAILURE_WRITER_BATCH_SIZE')),
      /** Accepted-but-unwritten failures Redis may hold; past this, ingestion refuses more (HTTP 502). Default 1000000. */
      maxPending: int(1, 100_000_000).default(1_000_000).meta(aka('FAILURE_MAX_PENDING')),
    })
    .prefault({}),
  /** Record exports (see docs/exports.md). */
  exports: z
    .object({
      /**
       * Per module, record fields whose values are copied into each manifest entry, so a search
       * can match them without reading the object (the only way Parquet objects are searched
       * cheaply). Env form: `module:field,field;module2:field`.
       */
      searchableFields: z
        .preprocess(
          (v) => (typeof v === 'string' ? parseSearchableFields(v) : v),
          z.record(safeId, z.array(z.string().min(1).max(128)).max(32, 'at most 32 fields per module')),
        )
        .default({})
        .meta(aka('STOWAGE_EXPORT_SEARCHABLE_FIELDS')),
      /** Distinct values kept per searchable field and object (the first seen). Default 20. */
      searchableMaxValues: int(1, 1000).default(20),
      /** Characters kept of each searchable string value. Default 200. */
      searchableMaxChars: int(1, 10_000).default(200),
      /** Once the head manifest's entries pass this many bytes, they roll into a segment. Default 256 KiB. */
      manifestCompactBytes: int(256, 64 * 1024 * 1024)
        .default(256 * 1024)
        .meta(aka('STOWAGE_MANIFEST_COMPACT_BYTES')),
    })
    .prefault({}),
  /** Job Schedulers (cron + tz), from the config file. */
  schedules: z.array(scheduleSchema).default([]),
  /** Backup sets (see the backup job): names are unique; each set has at least one database. */
  backupSets: z
    .array(backupSetSchema)
    .refine((sets) => new Set(sets.map((s) => s.name)).size === sets.length, 'set names must be unique')
    .default([]),
  /** Lifecycle rules (from the config file); default DEFAULT_LIFECYCLE_RULES. See `stowage lifecycle`. */
  lifecycleRules: z
    .array(lifecycleRuleSchema)
    .refine((rules) => new Set(rules.map((r) => r.id)).size === rules.length, 'rule ids must be unique')
    .default(() => structuredClone(DEFAULT_LIFECYCLE_RULES)),
  /**
   * Storage cost estimate (`stowage usage`, and the usage gauges the daily cleanup sets for the
   * StorageMonthlyBudgetExceeded alert): Cloudflare R2 list prices by default, in USD.
   */
  usage: z
    .object({
      /** Storage, per GB-month (GB = 2^30 bytes). Default 0.015. */
      storagePerGbMonth: z.coerce.number().min(0).default(0.015),
      /** Class A operations (writes, lists), per million. Default 4.50. */
      classAPerMillion: z.coerce.number().min(0).default(4.5),
      /** Class B operations (reads), per million. Default 0.36. */
      classBPerMillion: z.coerce.number().min(0).default(0.36),
      /** Expected class A operations per month, for the estimate. Default 0. */
      classAOpsPerMonth: z.coerce.number().min(0).default(0),
      /** Expected class B operations per month, for the estimate. Default 0. */
      classBOpsPerMonth: z.coerce.number().min(0).default(0),
      /** Free storage per month in GB (R2: 10). Default 10. */
      freeStorageGb: z.coerce.number().min(0).default(10),
      /** Free class A operations per month (R2: 1 million). */
      freeClassAOps: z.coerce.number().min(0).default(1_000_000),
      /** Free class B operations per month (R2: 10 million). */
      freeClassBOps: z.coerce.number().min(0).default(10_000_000),
      /**
       * Monthly budget in USD (seed 001's cost alert, e.g. 100): `stowage usage` exits 1 above it, and
       * the cleanup worker exports it as `stowage_monthly_budget_usd` for StorageMonthlyBudgetExceeded.
       * Unset: no budget, no alert.
       */
      monthlyBudgetUsd: z.coerce.number().min(0).optional().meta(aka('STOWAGE_MONTHLY_BUDGET_USD')),
    })
    .prefault({})
    .meta({ envSegment: 'COST' }),
});

export type Config = z.output<typeof configSchema>;
/** Artifact retention's policy (src/cleanup/artifact-retention.ts). */
export type ArtifactRetention = Config['artifact']['retention'];
export type ConfigInput = z.input<typeof configSchema>;

/** One variable of the configuration: its name, the path it sets, and its older names. */
export interface EnvVar {
  name: string;
  path: string[];
  aliases: string[];
  /** Takes JSON (a list: schedules, backup sets, lifecycle rules), not a scalar. */
  json: boolean;
}

interface ZodNode {
  _zod: { def: { type: string; innerType?: ZodNode; in?: ZodNode; out?: ZodNode; shape?: Record<string, ZodNode> } };
  meta(): EnvMeta | undefined;
}

/** The schema under defaults, optionals and pipes: what the value really is. */
function unwrap(node: ZodNode): ZodNode {
  for (;;) {
    const def = node._zod.def;
    if (def.innerType && ['default', 'prefault', 'optional', 'nullable', 'readonly'].includes(def.type)) node = def.innerType;
    else if (def.type === 'pipe' && def.in && def.out) node = def.in._zod.def.type === 'transform' ? def.out : def.in;
    else return node;
  }
}

/** `partSizeMb` → `PART_SIZE_MB`. */
const screaming = (key: string) =>
  key
    .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
    .replace(/([A-Z])([A-Z][a-z])/g, '$1_$2')
    .toUpperCase();

function envVarsOf(node: ZodNode, path: string[], segments: string[]): EnvVar[] {
  const inner = unwrap(node);
  const meta = node.meta() ?? inner.meta() ?? {};
  if (inner._zod.def.type === 'object' && path.length > 0 && inner._zod.def.shape) {
    const segment = meta.envSegment ?? screaming(path.at(-1)!);
    return Object.entries(inner._zod.def.shape).flatMap(([key, child]) => envVarsOf(child, [...path, key], [...segments, segment]));
  }
  if (inner._zod.def.type === 'object' && inner._zod.def.shape) {
    return Object.entries(inner._zod.def.shape).flatMap(([key, child]) => envVarsOf(child, [key], []));
  }
  const type = inner._zod.def.type;
  return [
    {
      name: ['STOWAGE', ...segments, screaming(path.at(-1)!)].join('_'),
      path,
      aliases: meta.aliases ?? [],
      json: type === 'array',
    },
  ];
}

/** Every environment variable Stowage reads, derived from the schema (see the file comment). */
export const ENV_VARS: readonly EnvVar[] = envVarsOf(configSchema as unknown as ZodNode, [], []);

/** Every name that sets something: primary names and aliases. */
export const ENV_NAMES: readonly string[] = ['STOWAGE_CONFIG', ...ENV_VARS.flatMap((v) => [v.name, ...v.aliases])];

/** Prefixes of the variables Stowage owns: an unknown one is most likely a misspelling. */
const OWN_PREFIXES = /^(STOWAGE|R2|AGG|FAILURE)_/;
/**
 * Read by the project's tooling, not the configuration (tests, scripts/node24.sh), or by a client
 * of the HTTP API (`stowage dev`'s env block: STOWAGE_URL and STOWAGE_TOKEN for curl).
 */
const TOOLING_VARIABLES = new Set(['STOWAGE_SLOW_TESTS', 'STOWAGE_NODE_VERSION', 'STOWAGE_URL', 'STOWAGE_TOKEN']);

/** Edit distance (insert, delete, substitute), for suggesting the name a misspelling meant. */
function distance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) next[j] = Math.min(row[j]! + 1, next[j - 1]! + 1, row[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    row = next;
  }
  return row[b.length]!;
}

/** Start-up warnings about settings that work but are unsafe (printed by the CLI before a command runs). */
export function unsafeSettings(env: Record<string, string | undefined> = process.env): string[] {
  const warnings: string[] = [];
  if (env.STOWAGE_SOURCE_ROOTS?.trim() === '*')
    warnings.push('STOWAGE_SOURCE_ROOTS=* lets whoever may enqueue read any file the workers can');
  return warnings;
}

/**
 * Variables with one of Stowage's prefixes that set nothing (`STOWAGE_CONCURENCY=2`), each with
 * the closest known name when one is near. They are ignored; the CLI warns about each at start-up.
 */
export function unknownVariables(
  env: Record<string, string | undefined> = process.env,
): Array<{ name: string; suggestion: string | null }> {
  const known = new Set(ENV_NAMES);
  return Object.keys(env)
    .filter((name) => OWN_PREFIXES.test(name) && !known.has(name) && !TOOLING_VARIABLES.has(name))
    .sort()
    .map((name) => {
      let best: { name: string; d: number } | null = null;
      for (const candidate of known) {
        const d = distance(name, candidate);
        if (!best || d < best.d) best = { name: candidate, d };
      }
      return { name, suggestion: best && best.d <= Math.max(2, Math.floor(name.length / 5)) ? best.name : null };
    });
}

/** `module:field,field;module2:field` → `{module: [field, field], module2: [field]}`; bad parts are left for zod to name. */
function parseSearchableFields(text: string): unknown {
  const out: Record<string, string[]> = {};
  for (const part of text
    .split(';')
    .map((p) => p.trim())
    .filter(Boolean)) {
    const colon = part.indexOf(':');
    if (colon < 1) return text; // not `module:fields`: zod reports "expected record"
    out[part.slice(0, colon).trim()] = part
      .slice(colon + 1)
      .split(',')
      .map((f) => f.trim())
      .filter(Boolean);
  }
  return out;
}

/** Settings whose values are never printed, even in an error. */
const SECRET_PATHS = new Set(['storage.secretAccessKey', 'authSecret', 'basicAuth', 'storage.accessKeyId']);

function setPath(target: Record<string, unknown>, path: string[], value: unknown): void {
  let node = target;
  for (const segment of path.slice(0, -1)) {
    const next = node[segment];
    if (typeof next !== 'object' || next === null || Array.isArray(next)) node[segment] = {};
    node = node[segment] as Record<string, unknown>;
  }
  node[path[path.length - 1]!] = value;
}

function readConfigFile(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError([`STOWAGE_CONFIG: cannot read ${file}: ${(err as Error).message}`]);
  }
  try {
    const parsed: unknown = JSON.parse(text);
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
      throw new Error('the top level must be a JSON object');
    }
    return parsed as Record<string, unknown>;
  } catch (err) {
    throw new ConfigError([`STOWAGE_CONFIG: ${file} is not valid JSON: ${(err as Error).message}`]);
  }
}

/**
 * Build the configuration from `env` (default `process.env`), the optional `STOWAGE_CONFIG` file,
 * and `overrides` (used by tests and the dev command). Throws ConfigError listing every problem.
 */
export function loadConfig(
  env: Record<string, string | undefined> = process.env,
  overrides: ConfigInput | Record<string, unknown> = {},
): Config {
  const raw: Record<string, unknown> = { storage: {}, http: {}, worker: {}, deadLetter: {}, events: {} };
  const file = env.STOWAGE_CONFIG;
  const fromFile = file ? readConfigFile(file) : {};
  deepMerge(raw, fromFile);
  deepMerge(raw, overrides as Record<string, unknown>);
  // Which variable set each path, so a problem is reported by the name the operator used.
  const setBy = new Map<string, string>();
  const envProblems: string[] = [];
  for (const v of ENV_VARS) {
    const given = [v.name, ...v.aliases].filter((n) => env[n] !== undefined && env[n] !== '');
    if (!given.length) continue;
    const values = new Set(given.map((n) => env[n]));
    if (values.size > 1) {
      envProblems.push(`${given.join(' and ')} set the same setting to different values: set ${v.name} only`);
      continue;
    }
    const name = given[0]!;
    let value: unknown = env[name];
    if (v.json) {
      try {
        value = JSON.parse(String(value));
      } catch (err) {
        envProblems.push(`${name}: not valid JSON: ${(err as Error).message}`);
        continue;
      }
    }
    setPath(raw, v.path, value);
    setBy.set(v.path.join('.'), name);
  }
  const result = configSchema.safeParse(raw);
  const pairing = crossFieldProblems(raw);
  if (!result.success || pairing.length || envProblems.length) {
    const problems = (result.success ? [] : result.error.issues).map((issue) => {
      const dotted = issue.path.join('.');
      // A variable that carries a structure (JSON, searchable fields) names the part inside it too.
      const carrier = [...setBy.entries()].find(([p]) => dotted === p || dotted.startsWith(`${p}.`));
      const inside = carrier && dotted !== carrier[0] ? ` (${dotted.slice(carrier[0].length + 1)})` : '';
      const where = carrier ? `${carrier[1]}${inside}` : file ? `${file}: ${dotted}` : dotted;
      // zod messages never include the received value for these checks, but be explicit.
      const message = SECRET_PATHS.has(dotted) ? issue.message.replace(/".*"/, '"…"') : issue.message;
      return `${where}: ${message}`;
    });
    throw new ConfigError([...envProblems, ...problems, ...pairing]);
  }
  return derive(result.data!, raw.lifecycleRules === undefined);
}

/** Rules across settings, checked on the raw values so they are reported with the rest. */
function crossFieldProblems(raw: Record<string, unknown>): string[] {
  const s = (raw.storage ?? {}) as Record<string, unknown>;
  const problems =
    Boolean(s.accessKeyId) !== Boolean(s.secretAccessKey)
      ? ['STOWAGE_S3_ACCESS_KEY_ID and STOWAGE_S3_SECRET_ACCESS_KEY (or R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY) must be set together']
      : [];
  // The retention days shape the default rules; beside a given list they would silently do nothing.
  if ((raw.failures as Record<string, unknown> | undefined)?.retentionDays !== undefined && raw.lifecycleRules !== undefined)
    problems.push(
      `STOWAGE_FAILURES_RETENTION_DAYS (or R2_RETENTION_DAYS) sets the default lifecycle rules only, and lifecycleRules is given: set the expireDays of its ${FAILURE_PATTERNS_RULE_ID} rule instead`,
    );
  return problems;
}

/** Values derived from others. `defaultRules`: lifecycleRules were not given (the defaults hold). */
function derive(config: Config, defaultRules = false): Config {
  if (defaultRules) {
    // The failure-patterns rule follows the export prefix and retention days (seed 000's R2_UPLOAD_PREFIX, R2_RETENTION_DAYS).
    const { uploadPrefix, retentionDays } = config.failures;
    config.lifecycleRules = config.lifecycleRules.flatMap((r) =>
      r.id !== FAILURE_PATTERNS_RULE_ID
        ? [r]
        : retentionDays === 0
          ? []
          : [{ ...r, prefix: `${uploadPrefix}/`, expireDays: retentionDays }],
    );
  }
  const s = config.storage;
  if (!s.endpoint && s.accountId) s.endpoint = `https://${s.accountId}.r2.cloudflarestorage.com`;
  if (s.forcePathStyle === undefined && s.endpoint) s.forcePathStyle = !isR2Endpoint(s.endpoint);
  return config;
}

export function isR2Endpoint(endpoint: string): boolean {
  return /\.r2\.cloudflarestorage\.com$/i.test(new URL(endpoint).hostname);
}

function deepMerge(target: Record<string, unknown>, source: Record<string, unknown>): void {
  for (const [key, value] of Object.entries(source)) {
    const existing = target[key];
    if (
      typeof value === 'object' &&
      value !== null &&
      !Array.isArray(value) &&
      typeof existing === 'object' &&
      existing !== null &&
      !Array.isArray(existing)
    ) {
      deepMerge(existing as Record<string, unknown>, value as Record<string, unknown>);
    } else if (value !== undefined) {
      target[key] = value;
    }
  }
}

/** The configuration with every secret replaced, safe to print or log. */
export function redactConfig(config: Config): Record<string, unknown> {
  const copy = structuredClone(config) as unknown as Record<string, unknown>;
  for (const dotted of SECRET_PATHS) {
    const path = dotted.split('.');
    let node: Record<string, unknown> | undefined = copy;
    for (const segment of path.slice(0, -1)) node = node?.[segment] as Record<string, unknown> | undefined;
    const last = path[path.length - 1]!;
    if (node && node[last] !== undefined) node[last] = '[redacted]';
  }
  // Connection URLs may carry a password: in the userinfo, or as a query parameter (`?password=`,
  // `?sslpassword=`, in any case or percent-escaping: pg and ioredis read both).
  copy.redisUrl = redactUrlSecrets(config.redisUrl);
  copy.databaseUrl = redactUrlSecrets(config.databaseUrl);
  for (const set of (copy.backupSets ?? []) as { postgres?: { url: string }[] }[]) {
    for (const db of set.postgres ?? []) db.url = redactUrlSecrets(db.url);
  }
  return copy;
}
