import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    exclude: ['test/chaos/**', 'node_modules/**'],
    // Files isolate themselves (prefix, schema, bucket) and run in parallel on 2 cores.
    pool: 'forks',
    // One radosgw for the run; each file makes its own bucket.
    globalSetup: ['test/setup/build.ts', 'test/setup/rgw.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // The JSON report lets CI print a plain 'N passed, N failed' closing line.
    reporters: ['default', ['json', { outputFile: 'test-output/vitest.json' }]],
  },
});
