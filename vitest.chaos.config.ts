import { defineConfig } from 'vitest/config';

/**
 * The chaos suite (`npm run test:chaos`): worker fleets as separate processes against real Redis,
 * Postgres and radosgw (test/setup/rgw.ts), with injected faults. One file at a time: each scenario runs several
 * processes and the machine has 2 cores. Not part of `npm test` (vitest.config.ts excludes it).
 */
export default defineConfig({
  test: {
    include: ['test/chaos/**/*.test.ts'],
    pool: 'forks',
    fileParallelism: false,
    testTimeout: 180_000,
    hookTimeout: 90_000,
    globalSetup: ['test/setup/build.ts', 'test/setup/rgw.ts', 'test/chaos/summary-setup.ts'],
    reporters: ['default'],
  },
});
