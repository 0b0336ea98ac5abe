/**
 * The layers of DESIGN.md (docs/design.md), held by a tool: `npm run lint` runs this beside Biome.
 * A rule names what may not depend on what; the why is in each comment.
 */
module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      severity: 'error',
      comment: 'A cycle makes load order matter and hides which module owns what.',
      from: { path: '^src/' },
      to: { circular: true },
    },
    {
      name: 'storage-is-a-leaf',
      severity: 'error',
      comment: 'storage/ knows S3, archives and keys; no jobs, queues, tables, HTTP or CLI.',
      from: { path: '^src/storage/' },
      to: { path: '^src/(queues|workers|producers|db|http|cli|backups|failures|cleanup|auth)/' },
    },
    {
      name: 'db-knows-no-jobs',
      severity: 'error',
      comment: 'db/ is the pool, migrations and one repository per table: no queues, workers, HTTP or CLI.',
      from: { path: '^src/db/' },
      to: { path: '^src/(queues|workers|producers|http|cli)/' },
    },
    {
      name: 'producers-import-no-processor',
      severity: 'error',
      comment: 'What applications import must not pull in processors (and their dependencies).',
      from: { path: '^src/producers/' },
      to: { path: '^src/workers/' },
    },
    {
      name: 'http-imports-no-processor',
      severity: 'error',
      comment: 'HTTP routes use domains (backups/, failures/, storage/ …), never a processor.',
      from: { path: '^src/http/' },
      to: { path: '^src/workers/' },
    },
    {
      name: 'cli-imports-only-the-runtime',
      severity: 'error',
      comment: 'The CLI runs workers through the runtime and the processor map; its commands use domains.',
      from: { path: '^src/cli/' },
      to: { path: '^src/workers/', pathNot: '^src/workers/(runtime|processors)\\.ts$' },
    },
    {
      name: 'domains-import-no-processor',
      severity: 'error',
      comment: 'A domain library serves processors, CLI and HTTP alike, so it cannot depend on one of them.',
      from: { path: '^src/(backups|failures|cleanup|queues|auth|observability)/' },
      to: { path: '^src/(workers|http|cli)/' },
    },
    {
      name: 'processors-import-no-entry-points',
      severity: 'error',
      comment: 'Processors are called by the runtime; they never reach up into HTTP or the CLI.',
      from: { path: '^src/workers/' },
      to: { path: '^src/(http|cli)/' },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsConfig: { fileName: 'tsconfig.json' },
    tsPreCompilationDeps: true,
    enhancedResolveOptions: { extensions: ['.ts', '.js'] },
  },
};
