/** Configuration: env wins over the file, every bad setting reported at once by name, no secret printed. */
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { ENV_VARS, loadConfig, redactConfig } from '../src/config.js';
import { ConfigError } from '../src/errors.js';

function problems(env: Record<string, string>): string[] {
  try {
    loadConfig(env);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems;
  }
  throw new Error('expected a ConfigError');
}

describe('loadConfig', () => {
  it('has working defaults', () => {
    const c = loadConfig({});
    expect(c.redisUrl).toBe('redis://127.0.0.1:6379');
    expect(c.prefix).toBe('stowage');
    expect(c.http).toEqual({
      host: '127.0.0.1',
      port: 3000,
      requestTimeoutMs: 30_000,
      keepAliveTimeoutMs: 72_000,
      connectionTimeoutMs: 0,
      requestsPerMinute: 600,
      enqueuesPerMinute: 120,
      trustProxy: false,
    });
    expect(c.storage.region).toBe('auto');
  });

  it('reports every bad variable at once, by name', () => {
    const p = problems({ REDIS_URL: 'not a url', HTTP_PORT: '70000', LOG_LEVEL: 'loud', STOWAGE_PREFIX: 'has space' });
    expect(p.map((x) => x.split(':')[0])).toEqual(expect.arrayContaining(['REDIS_URL', 'HTTP_PORT', 'LOG_LEVEL', 'STOWAGE_PREFIX']));
    expect(p).toHaveLength(4);
  });

  it('never prints a secret value', () => {
    const secret = 'tooshort-secret-value';
    const err = (() => {
      try {
        loadConfig({ STOWAGE_AUTH_SECRET: secret, R2_ACCESS_KEY_ID: 'AKIAEXAMPLE' });
      } catch (e) {
        return e as ConfigError;
      }
      throw new Error('expected a ConfigError');
    })();
    expect(err.message).toContain('STOWAGE_AUTH_SECRET');
    expect(err.message).not.toContain(secret);
    expect(err.message).toContain(
      'STOWAGE_S3_ACCESS_KEY_ID and STOWAGE_S3_SECRET_ACCESS_KEY (or R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY) must be set together',
    );
    expect(err.message).not.toContain('AKIAEXAMPLE');
    const ok = loadConfig({ STOWAGE_AUTH_SECRET: 'x'.repeat(40), R2_ACCESS_KEY_ID: 'AKIA', R2_SECRET_ACCESS_KEY: 'shh-its-secret' });
    const withUrls = loadConfig({ DATABASE_URL: 'postgres://app:db-pass-123@db:5432/x', REDIS_URL: 'redis://:redis-pass-9@cache:6379' });
    const urls = JSON.stringify(redactConfig(withUrls));
    expect(urls).not.toContain('db-pass-123');
    expect(urls).not.toContain('redis-pass-9');
    expect(urls).toContain('postgres://app:redacted@db:5432/x');
    const printed = JSON.stringify(redactConfig(ok));
    expect(printed).not.toContain('shh-its-secret');
    expect(printed).not.toContain('x'.repeat(40));
  });

  it('derives the R2 endpoint from the account id, virtual-hosted; path-style for other endpoints', () => {
    const r2 = loadConfig({ R2_ACCOUNT_ID: 'abc123' });
    expect(r2.storage.endpoint).toBe('https://abc123.r2.cloudflarestorage.com');
    expect(r2.storage.forcePathStyle).toBe(false);
    const minio = loadConfig({ R2_ENDPOINT: 'http://127.0.0.1:9000' });
    expect(minio.storage.forcePathStyle).toBe(true);
    const forced = loadConfig({ R2_ENDPOINT: 'http://127.0.0.1:9000', R2_FORCE_PATH_STYLE: 'false' });
    expect(forced.storage.forcePathStyle).toBe(false);
  });

  it('reads structured settings from STOWAGE_CONFIG; env wins', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'stowage-config-'));
    const file = join(dir, 'stowage.json');
    await writeFile(
      file,
      JSON.stringify({ prefix: 'from-file', http: { port: 4000 }, schedules: [{ id: 'agg', kind: 'aggregation', cron: '0 2 * * *' }] }),
    );
    const c = loadConfig({ STOWAGE_CONFIG: file, HTTP_PORT: '5000' });
    expect(c.prefix).toBe('from-file');
    expect(c.http.port).toBe(5000);
    expect(c.schedules).toEqual([{ id: 'agg', kind: 'aggregation', cron: '0 2 * * *', tz: 'UTC', data: {}, enabled: true }]);

    await writeFile(file, JSON.stringify({ schedules: [{ id: 'bad id!', kind: 'x', cron: '* *' }] }));
    const p = problems({ STOWAGE_CONFIG: file });
    expect(p.join('\n')).toMatch(/schedules\.0\.id/);
    expect(p.join('\n')).toMatch(/schedules\.0\.cron/);

    await writeFile(file, '{ not json');
    expect(problems({ STOWAGE_CONFIG: file })[0]).toMatch(/^STOWAGE_CONFIG: .* is not valid JSON/);
    expect(problems({ STOWAGE_CONFIG: join(dir, 'missing.json') })[0]).toMatch(/^STOWAGE_CONFIG: cannot read/);
  });

  it('derives one variable per setting from the schema, STOWAGE_ + group + setting, and reads the older names as aliases', () => {
    const byPath = new Map(ENV_VARS.map((v) => [v.path.join('.'), v]));
    expect(byPath.get('worker.concurrency')).toMatchObject({ name: 'STOWAGE_WORKER_CONCURRENCY', aliases: ['STOWAGE_CONCURRENCY'] });
    expect(byPath.get('storage.bucket')).toMatchObject({ name: 'STOWAGE_S3_BUCKET', aliases: ['R2_BUCKET'] });
    expect(byPath.get('failures.maxRetries')).toMatchObject({ name: 'STOWAGE_FAILURES_MAX_RETRIES', aliases: ['R2_MAX_RETRIES'] });
    expect(byPath.get('usage.classAPerMillion')).toMatchObject({ name: 'STOWAGE_COST_CLASS_A_PER_MILLION' });
    for (const v of ENV_VARS) expect(v.name).toMatch(/^STOWAGE_[A-Z0-9]+(_[A-Z0-9]+)*$/);
    // Every setting has a variable: the leaves of a default config are exactly the derived paths
    // (optional settings without a default are absent from it, so compare in one direction).
    const leaves = (o: Record<string, unknown>, at: string[] = []): string[] =>
      Object.entries(o).flatMap(([k, v]) =>
        v && typeof v === 'object' && !Array.isArray(v) && !['searchableFields'].includes(k)
          ? leaves(v as Record<string, unknown>, [...at, k])
          : [[...at, k].join('.')],
      );
    for (const leaf of leaves(loadConfig({}) as unknown as Record<string, unknown>)) expect(byPath.has(leaf), leaf).toBe(true);
    const names = ENV_VARS.flatMap((v) => [v.name, ...v.aliases]);
    expect(new Set(names).size).toBe(names.length);

    expect(loadConfig({ STOWAGE_WORKER_CONCURRENCY: '7' }).worker.concurrency).toBe(7);
    expect(loadConfig({ STOWAGE_CONCURRENCY: '8' }).worker.concurrency).toBe(8);
    expect(loadConfig({ STOWAGE_CONCURRENCY: '9', STOWAGE_WORKER_CONCURRENCY: '9' }).worker.concurrency).toBe(9);
    expect(problems({ STOWAGE_CONCURRENCY: '2', STOWAGE_WORKER_CONCURRENCY: '3' })).toEqual([
      'STOWAGE_WORKER_CONCURRENCY and STOWAGE_CONCURRENCY set the same setting to different values: set STOWAGE_WORKER_CONCURRENCY only',
    ]);
    // A problem is reported by the name that carried the value.
    expect(problems({ STOWAGE_CONCURRENCY: 'lots' })[0]).toMatch(/^STOWAGE_CONCURRENCY: /);
    expect(problems({ STOWAGE_WORKER_CONCURRENCY: 'lots' })[0]).toMatch(/^STOWAGE_WORKER_CONCURRENCY: /);
  });

  it('takes structured settings as JSON in their variables', () => {
    const c = loadConfig({ STOWAGE_SCHEDULES: JSON.stringify([{ id: 'agg', kind: 'aggregation', cron: '0 2 * * *' }]) });
    expect(c.schedules).toEqual([{ id: 'agg', kind: 'aggregation', cron: '0 2 * * *', tz: 'UTC', data: {}, enabled: true }]);
    expect(problems({ STOWAGE_LIFECYCLE_RULES: '[{' })[0]).toMatch(/^STOWAGE_LIFECYCLE_RULES: not valid JSON/);
    expect(problems({ STOWAGE_BACKUP_SETS: '[{"name":"a"}]' })[0]).toMatch(
      /^STOWAGE_BACKUP_SETS \(0\.sqlite\): a backup set needs at least one database/,
    );
  });

  it('README and .env.example name every variable and alias', () => {
    const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
    const example = readFileSync(new URL('../.env.example', import.meta.url), 'utf8');
    for (const v of ENV_VARS) {
      expect(readme, v.name).toMatch(new RegExp(`^\\| \`${v.name}\` \\| ${v.aliases.map((a) => `\`${a}\``).join(', ')} \\|`, 'm'));
      expect(example, v.name).toMatch(new RegExp(`^${v.name}=`, 'm'));
      for (const a of v.aliases) expect(example, a).toContain(a);
    }
  });
});
