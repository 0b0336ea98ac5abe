/**
 * Scenario 6, hostile input. Property-based (fast-check) and hand-picked attacks on every way in:
 * job payloads (the schema itself and POST /v1/jobs/:kind), failure reports, path traversal in ids
 * and URL parameters, oversize bodies, another user's artifacts and signed URLs, credentials
 * (none, wrong, expired), and hostile backup archives at restore (zip-slip, links, tar bombs).
 *
 * What must hold: a bad input gets a 4xx with a message naming what is wrong, never a 500 or a
 * crash, and a refused request writes nothing (queues and the failure backlog are unchanged).
 * Secrets configured for the server never show up in what it logged.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import fc from 'fast-check';
import tar from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createToken } from '../../src/auth/tokens.js';
import { migrate } from '../../src/db/migrate.js';
import { ValidationError } from '../../src/errors.js';
import { failureKeys } from '../../src/failures/ingest.js';
import { buildServer, type StowageServer } from '../../src/http/server.js';
import { JOB_KINDS, PAYLOAD_SCHEMAS, parsePayload, type JobKind } from '../../src/queues/index.js';
import { artifactKey, objectUrl, sha256SidecarKey } from '../../src/storage/keys.js';
import { presignDownload } from '../../src/storage/presign.js';
import { stageRestore } from '../../src/backups/restore.js';
import { isolate } from '../helpers/isolation.js';
import { BASIC_PASSWORD, basicHeader, harness, type Harness } from '../http/harness.js';
import { recordSummary, sleep } from './fleet.js';

const RUNS = Number(process.env.CHAOS_FUZZ_RUNS ?? 150);
const iso = isolate('chaoshostile');
let h: Harness;
let app: StowageServer;
let admin: string;
let bob: string;
const tried: Record<string, number> = {};
const count = (what: string, n = 1) => {
  tried[what] = (tried[what] ?? 0) + n;
};

const VALID: Record<JobKind, Record<string, unknown>> = {
  'build-artifact': { userId: 'alice', projectId: 'p1', versionId: 'v1', buildDir: join(tmpdir(), 'build', 'out') },
  aggregation: { days: 7 },
  export: { module: 'reports', userId: 'alice', format: 'json', records: [{ a: 1 }] },
  backup: { name: 'adhoc', sqlite: [{ name: 'main', path: join(tmpdir(), 'data', 'main.db') }] },
  cleanup: { dryRun: true, prefix: 'tmp/' },
};
/** Fields that become object keys, job ids or file names: each gets the path-traversal list. */
const ID_FIELDS: Partial<Record<JobKind, string[]>> = {
  'build-artifact': ['userId', 'projectId', 'versionId', 'buildId', 'fromVersionId'],
  export: ['module', 'userId', 'id'],
  backup: ['name', 'set'],
};
const TRAVERSAL = [
  '..',
  '../etc',
  '../../etc/passwd',
  'a/b',
  'a\\b',
  '..\\..\\x',
  'x/../y',
  '/abs',
  '\u0000',
  'a\u0000b',
  ' lead',
  'trail ',
  '\n',
  'a'.repeat(129),
];

/** A valid payload with one field replaced by anything, or a key added. */
const mutated = (kind: JobKind) =>
  fc
    .tuple(
      fc.constantFrom(...Object.keys(VALID[kind]), 'extra', '__proto__', 'constructor'),
      fc.oneof(fc.anything(), fc.string(), fc.integer(), fc.constant(null)),
    )
    .map(([key, value]) => ({ ...VALID[kind], [key]: value }));
const anyBody = (kind: JobKind) => fc.oneof(mutated(kind), fc.jsonValue(), fc.anything());

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

async function jobTotals(): Promise<number> {
  let n = 0;
  for (const kind of JOB_KINDS) {
    const c = await h.queue(kind).getJobCounts('waiting', 'delayed', 'prioritized', 'active', 'completed', 'failed');
    n += Object.values(c).reduce((a, b) => a + b, 0);
  }
  return n;
}

beforeAll(async () => {
  await migrate(iso.config());
  // Fuzzing fires hundreds of requests a second from one token: no rate limits here (rate-limit.test.ts has them).
  h = await harness(iso, { s3: true, config: { http: { requestsPerMinute: 0, enqueuesPerMinute: 0 } } });
  app = buildServer(h.deps);
  await app.ready();
  admin = await createToken(h.secret, { user: 'alice', role: 'admin' });
  bob = await createToken(h.secret, { user: 'bob', role: 'admin' });
});

afterAll(async () => {
  await app?.close();
  await h?.close();
  await iso.cleanup();
});

describe('hostile input: job payload schemas', () => {
  for (const kind of JOB_KINDS) {
    it(`${kind}: parsePayload accepts or names the bad field, never anything else`, () => {
      fc.assert(
        fc.property(anyBody(kind), (input) => {
          count('schema');
          try {
            parsePayload(kind, input);
          } catch (err) {
            expect(err).toBeInstanceOf(ValidationError);
            const issues = (err as ValidationError).issues;
            expect(issues.length).toBeGreaterThan(0);
            // Every issue is `<field path>: <what is wrong>`.
            for (const i of issues) expect(i).toMatch(/^[^\s:]+: \S/);
          }
        }),
        { numRuns: RUNS * 3 },
      );
    });
  }

  it('path traversal in every id field is refused, naming the field', () => {
    for (const [kind, fields] of Object.entries(ID_FIELDS) as [JobKind, string[]][]) {
      for (const field of fields) {
        for (const value of TRAVERSAL) {
          count('traversal');
          const payload: Record<string, unknown> = { ...VALID[kind], [field]: value };
          if (kind === 'backup' && field === 'set') delete payload.name;
          if (kind === 'backup' && field === 'set') delete payload.sqlite;
          const r = PAYLOAD_SCHEMAS[kind].safeParse(payload);
          expect(r.success, `${kind}.${field} = ${JSON.stringify(value)} was accepted`).toBe(false);
          expect(() => parsePayload(kind, payload)).toThrow(new RegExp(`${field}: `));
        }
      }
    }
    // Paths that are not absolute, or hold NUL, are refused too.
    for (const buildDir of ['relative/dir', '../up', '', '/ok\u0000/x']) {
      count('traversal');
      expect(() => parsePayload('build-artifact', { ...VALID['build-artifact'], buildDir })).toThrow(/buildDir: /);
    }
  });
});

describe('hostile input: HTTP bodies', () => {
  for (const kind of JOB_KINDS) {
    it(`POST /v1/jobs/${kind}: 202 or a 400 naming the field; a refused body enqueues nothing`, async () => {
      await fc.assert(
        fc.asyncProperty(anyBody(kind), async (input) => {
          count('http');
          const before = await jobTotals();
          const res = await app.inject({
            method: 'POST',
            url: `/v1/jobs/${kind}`,
            headers: { ...bearer(admin), 'content-type': 'application/json' },
            payload: JSON.stringify(input ?? null) ?? 'null',
          });
          expect(res.statusCode, res.body).toBeLessThan(500);
          if (res.statusCode === 202) return;
          expect(res.statusCode, res.body).toBe(400);
          const body = res.json() as { error: { code: string; message: string; issues?: string[] } };
          expect(body.error.message).toMatch(/payload|body/i);
          if (body.error.issues) for (const i of body.error.issues) expect(i).toMatch(/^[^\s:]+: \S/);
          expect(await jobTotals()).toBe(before);
        }),
        { numRuns: RUNS },
      );
    });
  }

  it('malformed JSON, wrong content types and odd kinds are 4xx, never 500', async () => {
    const cases: { url: string; payload: string; type: string }[] = [
      { url: '/v1/jobs/export', payload: '{"module": ', type: 'application/json' },
      { url: '/v1/jobs/export', payload: '\u0000\u0001', type: 'application/json' },
      { url: '/v1/jobs/export', payload: 'module=x', type: 'application/x-www-form-urlencoded' },
      { url: '/v1/jobs/export', payload: '<xml/>', type: 'text/xml' },
      { url: '/v1/jobs/..%2F..%2Fetc', payload: '{}', type: 'application/json' },
      { url: '/v1/jobs/__proto__', payload: '{}', type: 'application/json' },
      { url: '/v1/jobs/constructor', payload: '{}', type: 'application/json' },
      { url: '/api/v1/failures', payload: '{"failures": [', type: 'application/json' },
      { url: '/api/v1/failures', payload: '{"__proto__": {"polluted": true}}', type: 'application/json' },
    ];
    for (const c of cases) {
      count('http');
      const res = await app.inject({
        method: 'POST',
        url: c.url,
        headers: { ...bearer(admin), 'content-type': c.type },
        payload: c.payload,
      });
      expect(res.statusCode, `${c.url} ${c.payload}: ${res.body}`).toBeGreaterThanOrEqual(400);
      expect(res.statusCode, `${c.url} ${c.payload}: ${res.body}`).toBeLessThan(500);
    }
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('POST /api/v1/failures: 202 or a 400 naming the field; a refused body adds nothing to the backlog', async () => {
    const failure = fc.record(
      {
        error_code: fc.oneof(fc.string(), fc.constant('E_X'), fc.anything()),
        message: fc.oneof(fc.string(), fc.constant('boom'), fc.anything()),
        category: fc.oneof(fc.string(), fc.constant(null), fc.anything()),
        occurred_at: fc.oneof(
          fc.string(),
          fc.date().map((d) => (Number.isNaN(d.getTime()) ? 'x' : d.toISOString())),
        ),
      },
      { requiredKeys: [] },
    );
    const body = fc.oneof(
      failure,
      fc.array(failure, { maxLength: 5 }),
      fc.record({ failures: fc.array(failure, { maxLength: 5 }) }),
      fc.jsonValue(),
    );
    // The server's failure writer moves accepted records from the Redis backlog into Postgres as
    // the run goes, so the check is on the total: backlog + persisted = exactly what was accepted.
    const pendingKey = failureKeys.pending(iso.prefix);
    const landed = async () =>
      (await h.deps.redis.llen(pendingKey)) +
      Number((await h.deps.db.pool.query('SELECT count(*) FROM failure_matches WHERE tenant_id = $1', ['alice'])).rows[0].count);
    const start = await landed();
    let accepted = 0;
    await fc.assert(
      fc.asyncProperty(body, async (input) => {
        count('http');
        const res = await app.inject({
          method: 'POST',
          url: '/api/v1/failures',
          headers: { ...bearer(admin), 'content-type': 'application/json' },
          payload: JSON.stringify(input) ?? 'null',
        });
        expect(res.statusCode, res.body).toBeLessThan(500);
        if (res.statusCode === 202) {
          accepted += (res.json() as { accepted: number }).accepted;
          return;
        }
        expect(res.statusCode, res.body).toBe(400);
        expect((res.json() as { error: { message: string } }).error.message).toMatch(/failures|body|payload/i);
      }),
      { numRuns: RUNS },
    );
    // Random bodies are mostly invalid: a few valid shapes make sure the accept path is counted too.
    for (const valid of [
      { error_code: 'E_ONE', message: 'one' },
      [
        { error_code: 'E_ARR', message: 'a' },
        { error_code: 'E_ARR', message: 'b', category: 'c' },
      ],
      { failures: [{ error_code: 'E_BATCH', message: 'x', occurred_at: new Date().toISOString() }] },
    ]) {
      count('http');
      const res = await app.inject({
        method: 'POST',
        url: '/api/v1/failures',
        headers: { ...bearer(admin), 'content-type': 'application/json' },
        payload: JSON.stringify(valid),
      });
      expect(res.statusCode, res.body).toBe(202);
      accepted += (res.json() as { accepted: number }).accepted;
    }
    // A record being moved may briefly be in both places; it settles within a writer cycle.
    for (let i = 0; i < 40 && (await landed()) !== start + accepted; i++) await sleep(250);
    expect(await landed()).toBe(start + accepted);
  });

  it('oversize bodies are refused with 413 before anything is parsed or written', async () => {
    const before = await jobTotals();
    const huge = JSON.stringify({ ...VALID.export, records: [{ blob: 'x'.repeat(2 * 1024 * 1024) }] });
    for (const url of ['/v1/jobs/export', '/api/v1/failures', '/api/v1/records/reports']) {
      count('http');
      const res = await app.inject({
        method: 'POST',
        url,
        headers: { ...bearer(admin), 'content-type': 'application/json' },
        payload: huge,
      });
      expect(res.statusCode, `${url}: ${res.body}`).toBe(413);
    }
    expect(await jobTotals()).toBe(before);
  });

  it('path traversal in URL parameters is a 400 or 404, never a read elsewhere or a 500', async () => {
    const ids = ['..', '..%2F..%2Fetc%2Fpasswd', '%2e%2e%2f%2e%2e%2f', '..%5C..%5Cx', '%00', 'a%00b', '%2F', encodeURIComponent('../../x')];
    const routes = (id: string) => [
      `/v1/jobs/build-artifact/${id}`,
      `/v1/jobs/dead-letter/${id}`,
      `/v1/versions/${id}/download`,
      `/v1/projects/${id}/export`,
      `/api/v1/records/${id}`,
      `/api/v1/records/reports/${id}`,
      `/api/v1/records/${id}/x/url`,
      `/api/v1/failures/${id}`,
    ];
    for (const id of ids) {
      for (const url of routes(id)) {
        count('traversal');
        const res = await app.inject({ method: 'GET', url, headers: bearer(admin) });
        expect([400, 404], `${url}: ${res.statusCode} ${res.body}`).toContain(res.statusCode);
      }
    }
  });
});

describe('hostile input: another user and credentials', () => {
  it("another user's artifact, job and records answer 404", async () => {
    const storage = h.deps.storage();
    // Alice owns version v1 of p1 with a stored artifact.
    const key = artifactKey('alice', 'p1', 'v1');
    await storage.client.send(new PutObjectCommand({ Bucket: storage.bucket, Key: key, Body: 'alice zip' }));
    await storage.client.send(new PutObjectCommand({ Bucket: storage.bucket, Key: artifactKey('bob', 'p1', 'v1'), Body: 'bob zip' }));
    await h.deps.db.pool.query(
      `INSERT INTO project_versions (user_id, project_id, version_id, artifact_url, artifact_size, artifact_checksum) VALUES ($1, $2, $3, $4, $5, $6)`,
      ['alice', 'p1', 'v1', objectUrl(storage.bucket, key), 9, createHash('sha256').update('alice zip').digest('hex')],
    );
    const mine = await app.inject({ method: 'GET', url: '/v1/versions/v1/download', headers: bearer(admin) });
    expect(mine.statusCode, mine.body).toBe(200);
    for (const url of [
      '/v1/versions/v1/download',
      '/v1/projects/p1/export',
      '/api/v1/records/reports/r1',
      '/api/v1/records/reports/r1/url',
    ]) {
      count('authz');
      const res = await app.inject({ method: 'GET', url, headers: bearer(bob) });
      expect(res.statusCode, `${url}: ${res.body}`).toBe(404);
    }
    // Alice's job, read by bob: 404, like a missing one.
    const { jobId } = await h.deps.producer.enqueue('build-artifact', VALID['build-artifact'] as never);
    // (Viewers and admins are operators and read every job; a plain user reads only their own.)
    const bobUser = await createToken(h.secret, { user: 'bob', role: 'user' });
    count('authz');
    const job = await app.inject({ method: 'GET', url: `/v1/jobs/build-artifact/${jobId}`, headers: bearer(bobUser) });
    expect(job.statusCode, job.body).toBe(404);
    // The only signed URLs the API hands out are for the caller's own versions (bob got 404s
    // above). The signature covers the key, so one URL is one object: the store (radosgw, like R2
    // and S3) refuses alice's URL bent to bob's key, or with its signature changed, with 403.
    const signed = await presignDownload(storage, { key, filename: 'a.zip', expiresInSeconds: 60 });
    const got = await fetch(signed.url);
    expect(got.status).toBe(200);
    expect(await got.text()).toBe('alice zip');
    const other = await presignDownload(storage, { key: artifactKey('bob', 'p1', 'v1'), filename: 'a.zip', expiresInSeconds: 60 });
    expect(new URL(other.url).searchParams.get('X-Amz-Signature')).not.toBe(new URL(signed.url).searchParams.get('X-Amz-Signature'));
    const bent = new URL(signed.url);
    bent.pathname = new URL(other.url).pathname;
    const tampered = new URL(signed.url);
    tampered.searchParams.set('X-Amz-Signature', '0'.repeat(64));
    for (const url of [bent, tampered]) {
      count('authz');
      const res = await fetch(url);
      const body = await res.text();
      expect(res.status, `${url.pathname}: ${body}`).toBe(403);
      expect(body).toContain('SignatureDoesNotMatch');
      expect(body).not.toContain('bob zip');
    }
  });

  it('the API and the dashboard refuse no, wrong and expired credentials with 401', async () => {
    const otherSecret = randomBytes(32).toString('hex');
    const forged = await createToken(otherSecret, { user: 'alice', role: 'admin' });
    // Minted an hour ago with a 60 s lifetime: expired well past the verifier's clock tolerance.
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(Date.now() - 3_600_000);
    const expired = await createToken(h.secret, { user: 'alice', role: 'admin', ttl: 60 });
    vi.useRealTimers();
    const variants: Record<string, Record<string, string>> = {
      none: {},
      garbage: bearer('not.a.token'),
      forged: bearer(forged),
      expired: bearer(expired),
      empty: { authorization: 'Bearer ' },
      wrongBasic: { authorization: basicHeader('ops', `${BASIC_PASSWORD}x`) },
      wrongUser: { authorization: basicHeader('root', BASIC_PASSWORD) },
    };
    const targets = [
      { method: 'POST' as const, url: '/v1/jobs/export', payload: VALID.export },
      { method: 'GET' as const, url: '/v1/jobs/export/x' },
      { method: 'GET' as const, url: '/v1/versions/v1/download' },
      { method: 'POST' as const, url: '/api/v1/failures', payload: { error_code: 'E', message: 'm' } },
      { method: 'GET' as const, url: '/api/v1/failures' },
      { method: 'GET' as const, url: '/admin/queues' },
      { method: 'GET' as const, url: '/admin/queues/api/queues' },
      { method: 'GET' as const, url: `/admin/queues?token=${expired}` },
      { method: 'GET' as const, url: `/admin/queues?token=${forged}` },
    ];
    const before = await jobTotals();
    for (const t of targets) {
      for (const [name, headers] of Object.entries(variants)) {
        // ?token= variants carry their own (bad) credential: only the no-header case applies.
        if (t.url.includes('?token=') && name !== 'none') continue;
        // Basic auth is for the board only; on /v1 it is still a 401.
        count('auth');
        const res = await app.inject({ method: t.method, url: t.url, headers, ...(t.payload ? { payload: t.payload } : {}) });
        expect(res.statusCode, `${t.method} ${t.url} with ${name}: ${res.body}`).toBe(401);
      }
    }
    expect(await jobTotals()).toBe(before);
  });
});

describe('hostile input: backup archives at restore', () => {
  const entry = (name: string, body: Buffer, extra: Partial<tar.Header> = {}) => ({ name, body, extra });
  async function archive(entries: ReturnType<typeof entry>[]): Promise<Buffer> {
    const pack = tar.pack();
    const chunks: Buffer[] = [];
    pack.on('data', (c: unknown) => void chunks.push(c as Buffer));
    const done = new Promise<void>((r) => pack.on('end', () => r()));
    for (const e of entries) {
      if (e.extra.type && e.extra.type !== 'file') pack.entry({ name: e.name, ...e.extra });
      else pack.entry({ name: e.name, ...e.extra }, e.body);
    }
    pack.finalize();
    await done;
    return gzipSync(Buffer.concat(chunks));
  }
  const metadata = (files: { filename: string; body: Buffer; size?: number }[]) =>
    Buffer.from(
      JSON.stringify({
        version: '1',
        stowage_version: '0.1.0',
        set: 'evil',
        timestamp: new Date().toISOString(),
        databases: files.map((f) => ({
          name: 'main',
          filename: f.filename,
          kind: 'sqlite',
          source_path: '/srv/data/main.db',
          size_bytes: f.size ?? f.body.length,
          checksum: `sha256:${createHash('sha256').update(f.body).digest('hex')}`,
        })),
      }),
    );
  async function stage(name: string, body: Buffer): Promise<{ error: Error | null; left: string[]; outside: string[] }> {
    const storage = h.deps.storage();
    const key = `backups/evil/${name}.tar.gz`;
    await storage.client.send(new PutObjectCommand({ Bucket: storage.bucket, Key: key, Body: body }));
    const sha = createHash('sha256').update(body).digest('hex');
    await storage.client.send(
      new PutObjectCommand({ Bucket: storage.bucket, Key: sha256SidecarKey(key), Body: `${sha}  ${name}.tar.gz\n` }),
    );
    const parent = await mkdtemp(join(tmpdir(), 'stowage-chaos-restore-'));
    const toDir = join(parent, 'to');
    let error: Error | null = null;
    try {
      await stageRestore(storage, key, { toDir });
    } catch (err) {
      error = err as Error;
    }
    const left = await readdir(toDir).catch(() => []);
    const outside = (await readdir(parent)).filter((f) => f !== 'to');
    await rm(parent, { recursive: true, force: true });
    return { error, left, outside };
  }

  const db = Buffer.from('SQLite format 3\u0000 not really');
  const cases: [string, () => Promise<Buffer>, RegExp][] = [
    [
      'zip-slip ../',
      () => archive([entry('backup-metadata.json', metadata([{ filename: 'main.db', body: db }])), entry('../evil.db', db)]),
      /not a bare file name/,
    ],
    [
      'zip-slip ../ declared',
      () => archive([entry('backup-metadata.json', metadata([{ filename: '../evil.db', body: db }])), entry('../evil.db', db)]),
      /refused/,
    ],
    [
      'absolute path',
      () => archive([entry('backup-metadata.json', metadata([{ filename: 'main.db', body: db }])), entry('/tmp/evil.db', db)]),
      /not a bare file name/,
    ],
    [
      'symlink entry',
      () =>
        archive([
          entry('backup-metadata.json', metadata([{ filename: 'main.db', body: db }])),
          entry('main.db', Buffer.alloc(0), { type: 'symlink', linkname: '/etc/passwd' }),
        ]),
      /symlink, not a file/,
    ],
    [
      'hard link entry',
      () =>
        archive([
          entry('backup-metadata.json', metadata([{ filename: 'main.db', body: db }])),
          entry('main.db', Buffer.alloc(0), { type: 'link', linkname: '../../etc/passwd' }),
        ]),
      /not a file/,
    ],
    [
      'tar bomb: entry larger than declared',
      () =>
        archive([
          entry('backup-metadata.json', metadata([{ filename: 'main.db', body: db, size: 10 }])),
          entry('main.db', Buffer.alloc(64 * 1024 * 1024)),
        ]),
      /declared/,
    ],
    [
      'undeclared entry',
      () => archive([entry('backup-metadata.json', metadata([{ filename: 'main.db', body: db }])), entry('extra.db', db)]),
      /not in backup-metadata.json/,
    ],
    [
      'metadata not first',
      () => archive([entry('main.db', db), entry('backup-metadata.json', metadata([{ filename: 'main.db', body: db }]))]),
      /first entry/,
    ],
  ];
  for (const [name, make, message] of cases) {
    it(`restore refuses ${name}, writing nothing outside its staging folder`, async () => {
      count('restore');
      const { error, left, outside } = await stage(name.replace(/[^a-z]+/g, '-'), await make());
      expect(error?.message).toMatch(message);
      expect(error?.name).toBe('PermanentError');
      expect(outside).toEqual([]);
      expect(left).toEqual([]);
    });
  }

  // A gzip of 64 MiB of spaces is 64 KiB; without a bound on the metadata entry a larger one
  // would exhaust memory before anything is checked.
  it('restore refuses an oversized backup-metadata.json (gzip bomb) without reading it whole', async () => {
    count('restore');
    const padded = Buffer.concat([Buffer.alloc(64 * 1024 * 1024, ' '), metadata([{ filename: 'main.db', body: db }])]);
    const { error } = await stage('metadata-bomb', await archive([entry('backup-metadata.json', padded), entry('main.db', db)]));
    expect(error?.message).toMatch(/backup-metadata.json.*(large|size)/);
  });
});

describe('hostile input: secrets in logs', () => {
  it('no configured secret or presented credential appears in what the server logged', async () => {
    const text = h.logLines.join('');
    expect(text.length).toBeGreaterThan(1000);
    const secrets = { authSecret: h.secret, basicPassword: BASIC_PASSWORD, adminToken: admin, bobToken: bob };
    for (const [name, value] of Object.entries(secrets)) expect(text.includes(value), `${name} in the server log`).toBe(false);
    const inputs = Object.values(tried).reduce((a, b) => a + b, 0);
    await recordSummary('hostile', { inputsTried: inputs, byKind: tried, logBytesScanned: Buffer.byteLength(text), lost: 0 });
  });
});
