/**
 * The counters behind FailureCatalogMissRateHigh and RecoverySuccessRateLow (and the dashboard's
 * failure-catalog panels), through the http role's real GET /metrics: reporting failures with and
 * without a catalog entry moves the hit and miss counters, and recovery outcomes (reported with the
 * failure, or later by PATCH) move the success and failure counters. Real Redis and Postgres.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToken } from '../../src/auth/tokens.js';
import { migrate } from '../../src/db/migrate.js';
import { buildServer } from '../../src/http/server.js';
import { harness, type Harness } from '../http/harness.js';
import { isolate } from '../helpers/isolation.js';

const iso = isolate('catmetrics');
let h: Harness;
let app: ReturnType<typeof buildServer>;
let admin: string;

beforeAll(async () => {
  h = await harness(iso);
  await migrate(h.deps.config);
  app = buildServer(h.deps);
  await app.ready();
  admin = await createToken(h.secret, { user: 'ops', tenant: 'acme', role: 'admin' });
}, 60_000);

afterAll(async () => {
  await app?.close();
  await h?.close();
  await iso.cleanup();
});

const scrape = async () => {
  const res = await app.inject({ method: 'GET', url: '/metrics' });
  expect(res.statusCode).toBe(200);
  return res.body;
};
/** The value of one series in the exposition text, 0 when absent. */
const value = (text: string, series: string) => {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line ? Number(line.slice(series.length + 1)) : 0;
};

describe('failure-catalog counters on /metrics', () => {
  it('hits, misses and recovery outcomes move as failures and recoveries are reported', async () => {
    const before = await scrape();
    // Registered with the failure routes: the names are there before anything was reported.
    for (const name of ['failure_match_hits_total', 'failure_match_misses_total', 'recovery_success_total', 'recovery_failure_total'])
      expect(before).toContain(`# TYPE ${name} counter`);

    const post = await app.inject({
      method: 'POST',
      url: '/api/v1/failures',
      headers: { authorization: `Bearer ${admin}` },
      payload: {
        failures: [
          { error_code: 'DB_TIMEOUT', category: 'database', message: 'query 1 timed out', catalog_entry: 'DB-1' },
          { error_code: 'DB_TIMEOUT', category: 'database', message: 'query 2 timed out', catalog_entry: 'DB-1' },
          { error_code: 'NEW_THING', message: 'never seen' },
          { error_code: 'NEW_THING', message: 'never seen again' },
          { error_code: 'NEW_THING', message: 'and again' },
          { error_code: 'UPLOAD', category: 'storage', message: 'put failed', recovery_mode: 'retry', recovery_succeeded: true },
        ],
      },
    });
    expect(post.statusCode, post.body).toBe(202);
    const [, , pending] = post.json().ids as string[];

    // A recovery marked later, once the writer has stored the failure.
    let patched = 0;
    const deadline = Date.now() + 30_000;
    while (patched !== 200) {
      expect(Date.now(), 'the failure was not stored within 30 s').toBeLessThan(deadline);
      const res = await app.inject({
        method: 'PATCH',
        url: `/api/v1/failures/${pending}/recovery`,
        headers: { authorization: `Bearer ${admin}` },
        payload: { recovery_succeeded: false, recovered_by: 'ops' },
      });
      patched = res.statusCode;
      if (patched !== 200) {
        expect(patched, res.body).toBe(404);
        await new Promise((r) => setTimeout(r, 100));
      }
    }

    const after = await scrape();
    const moved = (series: string) => value(after, series) - value(before, series);
    expect(moved('failure_match_hits_total{error_code="DB_TIMEOUT",category="DATABASE"}')).toBe(2);
    expect(moved('failure_match_hits_total{error_code="UPLOAD",category="STORAGE"}')).toBe(0);
    expect(moved('failure_match_misses_total{error_code="NEW_THING"}')).toBe(3);
    expect(moved('failure_match_misses_total{error_code="UPLOAD"}')).toBe(1);
    expect(moved('recovery_success_total{recovery_mode="RETRY",error_code="UPLOAD"}')).toBe(1);
    // No mode given with the failure: counted as MANUAL.
    expect(moved('recovery_failure_total{recovery_mode="MANUAL",error_code="NEW_THING"}')).toBe(1);
  }, 60_000);
});
