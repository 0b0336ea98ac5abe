/**
 * The failures API against real Redis and Postgres: every endpoint answers for the token's tenant
 * only; another tenant's failure is 404 on read and on PATCH (and stays unchanged); viewers read
 * but do not write; bad input is 400 naming the field. Runs the routes on their own Fastify
 * instance with the server's error mapping and a bearer check like the server's.
 */
import Fastify from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToken, verifyToken } from '../../src/auth/tokens.js';
import { migrate } from '../../src/db/migrate.js';
import { createDb, type Db } from '../../src/db/pool.js';
import { AuthError } from '../../src/errors.js';
import { startFailureWriter, type FailureWriter } from '../../src/failures/ingest.js';
import { failureMetrics } from '../../src/failures/metrics.js';
import { registerFailureRoutes } from '../../src/http/failures.js';
import { errorResponse } from '../../src/http/server.js';
import { createLogger } from '../../src/observability/logger.js';
import { createMetrics } from '../../src/observability/metrics.js';
import { createRedis } from '../../src/queues/index.js';
import { isolate } from '../helpers/isolation.js';

const iso = isolate('failuresapi');
const secret = 'x'.repeat(40);
const config = iso.config({ authSecret: secret });
const logger = createLogger({ level: 'silent' });
const metrics = createMetrics({ defaults: false });
const redis = createRedis(config.redisUrl);
let db: Db;
let writer: FailureWriter;
const app = Fastify({ loggerInstance: logger });
const tokens: Record<string, string> = {};

const call = (method: 'GET' | 'POST' | 'PATCH', url: string, who: string, payload?: unknown) =>
  app.inject({
    method,
    url,
    headers: { authorization: `Bearer ${tokens[who]}` },
    ...(payload !== undefined ? { payload: payload as object } : {}),
  });

beforeAll(async () => {
  await migrate(config);
  db = createDb(config, { max: 4 });
  app.setErrorHandler((err, req, reply) => {
    const { status, body } = errorResponse(err, req.id);
    return reply.code(status).send(body);
  });
  registerFailureRoutes(app, {
    config,
    db,
    redis,
    metrics,
    logger,
    writer: false,
    authenticate: async (req) => {
      const m = /^Bearer (.+)$/.exec(req.headers.authorization ?? '');
      if (!m) throw new AuthError('missing bearer token');
      const p = await verifyToken(secret, m[1]!);
      return { tenant: p.tenant, role: p.role };
    },
  });
  writer = startFailureWriter({ redis, db, config, logger, metrics: failureMetrics(metrics.registry), idleMs: 50 });
  tokens.acme = await createToken(secret, { user: 'ann', tenant: 'acme', role: 'admin' });
  tokens.acmeViewer = await createToken(secret, { user: 'vic', tenant: 'acme', role: 'viewer' });
  tokens.globex = await createToken(secret, { user: 'gus', tenant: 'globex', role: 'admin' });
});

afterAll(async () => {
  await app.close();
  await writer?.close();
  await db?.close();
  redis.disconnect();
  await iso.cleanup();
});

let acmeIds: string[];
let globexIds: string[];

describe('failures API', () => {
  it("accepts one failure or a batch and persists them for the token's tenant", async () => {
    const batch = await call('POST', '/api/v1/failures', 'acme', [
      { error_code: 'db_timeout', category: 'database', message: 'query 17 timed out', catalog_entry: 'DB-1' },
      { error_code: 'DB_TIMEOUT', category: 'database', message: 'query 18 timed out' },
      { error_code: 'UPLOAD', category: 'storage', message: 'put "a.zip" failed', recovery_mode: 'retry' },
    ]);
    expect(batch.statusCode).toBe(202);
    acmeIds = batch.json().ids;
    expect(acmeIds).toHaveLength(3);
    const one = await call('POST', '/api/v1/failures', 'globex', {
      error_code: 'DB_TIMEOUT',
      category: 'database',
      message: 'query 99 timed out',
    });
    expect(one.statusCode).toBe(202);
    globexIds = one.json().ids;
    // A body that tries to pick its tenant is refused, not obeyed.
    const forged = await call('POST', '/api/v1/failures', 'globex', { error_code: 'X', message: 'm', tenant_id: 'acme' });
    expect(forged.statusCode).toBe(400);
    expect(forged.json().error.issues.join()).toMatch(/tenant_id/);
    const bad = await call('POST', '/api/v1/failures', 'acme', { failures: [{ error_code: '', message: 'x' }] });
    expect(bad.statusCode).toBe(400);
    expect(bad.json().error.issues.join()).toMatch(/failures\.0\.error_code/);
    expect((await call('POST', '/api/v1/failures', 'acmeViewer', { error_code: 'X', message: 'm' })).statusCode).toBe(403);
    await writer.flush();
    const { rows } = await db.pool.query('SELECT tenant_id, count(*)::int AS n FROM failure_matches GROUP BY tenant_id ORDER BY tenant_id');
    expect(rows).toEqual([
      { tenant_id: 'acme', n: 3 },
      { tenant_id: 'globex', n: 1 },
    ]);
    const text = await metrics.registry.metrics();
    expect(text).toMatch(/failure_match_hits_total\{error_code="DB_TIMEOUT",category="DATABASE"\} 1/);
    expect(text).toMatch(/failure_match_misses_total\{error_code="DB_TIMEOUT"\} 2/);
  });

  it('lists, filters and pages within the tenant only', async () => {
    const acme = await call('GET', '/api/v1/failures', 'acme');
    expect(acme.statusCode).toBe(200);
    expect(
      acme
        .json()
        .items.map((f: { id: string }) => f.id)
        .sort(),
    ).toEqual([...acmeIds].sort());
    expect(acme.json().items.every((f: { tenant_id: string }) => f.tenant_id === 'acme')).toBe(true);
    const globex = await call('GET', '/api/v1/failures', 'globex');
    expect(globex.json().items.map((f: { id: string }) => f.id)).toEqual(globexIds);
    const byCode = await call('GET', '/api/v1/failures?error_code=db_timeout', 'acme');
    expect(byCode.json().items).toHaveLength(2);
    const byCategory = await call('GET', '/api/v1/failures?category=storage', 'acme');
    expect(byCategory.json().items.map((f: { message: string; signature: string }) => [f.message, f.signature])).toEqual([
      ['put "a.zip" failed', 'put "<str>" failed'],
    ]);
    const page1 = await call('GET', '/api/v1/failures?limit=2', 'acme');
    expect(page1.json()).toMatchObject({ limit: 2, offset: 0, next_offset: 2 });
    const page2 = await call('GET', '/api/v1/failures?limit=2&offset=2', 'acme');
    expect(page2.json().items).toHaveLength(1);
    expect(page2.json().next_offset).toBeNull();
    expect(
      (await call('GET', `/api/v1/failures?since=${encodeURIComponent(new Date(Date.now() + 60_000).toISOString())}`, 'acme')).json().items,
    ).toEqual([]);
    expect((await call('GET', '/api/v1/failures?limit=0', 'acme')).statusCode).toBe(400);
  });

  it("gets one failure by id, and 404 for another tenant's or a malformed id", async () => {
    const mine = await call('GET', `/api/v1/failures/${acmeIds[0]}`, 'acme');
    expect(mine.statusCode).toBe(200);
    expect(mine.json()).toMatchObject({ id: acmeIds[0], tenant_id: 'acme', error_code: 'DB_TIMEOUT', catalog_entry: 'DB-1' });
    const theirs = await call('GET', `/api/v1/failures/${acmeIds[0]}`, 'globex');
    expect(theirs.statusCode).toBe(404);
    expect(theirs.body).not.toContain('query 17');
    expect((await call('GET', '/api/v1/failures/not-a-uuid', 'acme')).statusCode).toBe(404);
  });

  it("marks recovery for the tenant's own failures only", async () => {
    const body = { recovery_succeeded: true, recovered_by: 'ops-team', notes: 'restarted' };
    const foreign = await call('PATCH', `/api/v1/failures/${acmeIds[2]}/recovery`, 'globex', body);
    expect(foreign.statusCode).toBe(404);
    expect((await call('PATCH', `/api/v1/failures/${acmeIds[2]}/recovery`, 'acmeViewer', body)).statusCode).toBe(403);
    expect((await call('PATCH', `/api/v1/failures/${acmeIds[2]}/recovery`, 'acme', { recovered_by: 'x' })).statusCode).toBe(400);
    const { rows } = await db.pool.query('SELECT recovery_succeeded FROM failure_matches WHERE id = $1', [acmeIds[2]]);
    expect(rows[0].recovery_succeeded).toBeNull();
    const ok = await call('PATCH', `/api/v1/failures/${acmeIds[2]}/recovery`, 'acme', body);
    expect(ok.statusCode).toBe(200);
    expect(ok.json()).toMatchObject({ recovery_succeeded: true, recovered_by: 'ops-team', notes: 'restarted' });
    expect(ok.json().recovered_at).toEqual(expect.any(String));
    const failed = await call('PATCH', `/api/v1/failures/${acmeIds[1]}/recovery`, 'acme', {
      recovery_succeeded: false,
      recovered_by: 'ops-team',
    });
    expect(failed.statusCode).toBe(200);
    const text = await metrics.registry.metrics();
    expect(text).toMatch(/recovery_success_total\{recovery_mode="RETRY",error_code="UPLOAD"\} 1/);
    expect(text).toMatch(/recovery_failure_total\{recovery_mode="MANUAL",error_code="DB_TIMEOUT"\} 1/);
    expect((await call('GET', '/api/v1/failures?recovered=true', 'acme')).json().items.map((f: { id: string }) => f.id)).toEqual([
      acmeIds[2],
    ]);
    expect((await call('GET', '/api/v1/failures?recovered=true', 'globex')).json().items).toEqual([]);
  });

  it('lists unrecovered failures per tenant', async () => {
    const acme = await call('GET', '/api/v1/failures/unrecovered?since_hours=24&limit=50', 'acme');
    expect(acme.statusCode).toBe(200);
    expect(
      acme
        .json()
        .items.map((f: { id: string }) => f.id)
        .sort(),
    ).toEqual([acmeIds[0], acmeIds[1]].sort());
    const globex = await call('GET', '/api/v1/failures/unrecovered', 'globex');
    expect(globex.json().items.map((f: { id: string }) => f.id)).toEqual(globexIds);
    expect((await call('GET', '/api/v1/failures/unrecovered?limit=1', 'acme')).json().items).toHaveLength(1);
  });

  it("computes stats over the tenant's rows only", async () => {
    const acme = (await call('GET', '/api/v1/failures/stats', 'acme')).json();
    expect(acme).toMatchObject({ total: 3, matched: 1, unmatched: 2, recovered: 1, recovery_failed: 1, unrecovered: 2 });
    expect(acme.top_error_codes).toEqual([
      { error_code: 'DB_TIMEOUT', count: 2 },
      { error_code: 'UPLOAD', count: 1 },
    ]);
    const globex = (await call('GET', '/api/v1/failures/stats?since_hours=1', 'globex')).json();
    expect(globex).toMatchObject({ total: 1, matched: 0, recovered: 0, unrecovered: 1 });
    expect(globex.top_error_codes).toEqual([{ error_code: 'DB_TIMEOUT', count: 1 }]);
  });

  it('refuses requests without a token', async () => {
    for (const url of ['/api/v1/failures', '/api/v1/failures/stats', '/api/v1/failures/unrecovered', `/api/v1/failures/${acmeIds[0]}`]) {
      expect((await app.inject({ method: 'GET', url })).statusCode).toBe(401);
    }
  });
});
