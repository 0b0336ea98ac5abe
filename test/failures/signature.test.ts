/** Signatures mask what varies; metric labels stay few whatever services send. */
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { countMatch, failureMetrics, MAX_ERROR_CODES } from '../../src/failures/metrics.js';
import { boundedLabel, normalizeSignature } from '../../src/failures/signature.js';
import { createMetrics } from '../../src/observability/metrics.js';

describe('normalizeSignature', () => {
  it('masks numbers, ids, hex and quoted values, and nothing else', () => {
    expect(
      normalizeSignature(`user 42 got 'no such key "a"' for 3f2504e0-4f89-11d3-9a0c-0305e82c3301 at 0xFF00, trace 9f86d081884c7d65`),
    ).toBe('user <num> got "<str>" for <id> at <hex>, trace <hex>');
    expect(normalizeSignature("can't open `x.txt`:\n  timeout   after 1.5s")).toBe(`can't open "<str>": timeout after <num>s`);
    expect(normalizeSignature('deadline exceeded')).toBe('deadline exceeded');
    expect(normalizeSignature('x'.repeat(900))).toHaveLength(500);
  });
});

describe('failure metric labels', () => {
  it('are normalized and capped, the rest counted as OTHER', async () => {
    const label = boundedLabel(2);
    expect([label('db-timeout'), label(' DB timeout!! '), label('x'), label('y'), label('DB_TIMEOUT'), label(null)]).toEqual([
      'DB_TIMEOUT',
      'DB_TIMEOUT',
      'X',
      'OTHER',
      'DB_TIMEOUT',
      'OTHER',
    ]);
    const metrics = createMetrics({ defaults: false });
    const fm = failureMetrics(metrics.registry);
    expect(failureMetrics(metrics.registry)).toBe(fm);
    // The counters createMetrics already has are reused, not registered twice.
    expect(fm.persistDropped).toBe(metrics.failurePersistDropped);
    for (let i = 0; i < MAX_ERROR_CODES + 50; i++) countMatch(fm, { errorCode: `E${i}`, category: null, catalogEntry: null });
    const series = (await fm.matchMisses.get()).values;
    expect(series).toHaveLength(MAX_ERROR_CODES + 1);
    expect(series.find((v) => v.labels.error_code === 'OTHER')?.value).toBe(50);
    // A bare registry works too.
    expect(failureMetrics(new Registry()).persistDropped).toBeDefined();
  });
});
