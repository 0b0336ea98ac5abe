/**
 * The OpenAPI 3.1 contract at GET /openapi.json, over a real socket with real Redis, Postgres,
 * radosgw and workers: valid by the official OpenAPI schemas (@seriousme/openapi-schema-validator),
 * every schema in it valid JSON Schema 2020-12, every route the server registers in it (collected by
 * an onRoute hook, so routes added later are covered without touching this file), and real answers
 * valid by the schemas it declares.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Validator } from '@seriousme/openapi-schema-validator';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import type { RouteOptions } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToken } from '../../src/auth/tokens.js';
import { BOARD_PATH, buildServer, type StowageServer } from '../../src/http/server.js';
import type { Runtime } from '../../src/workers/runtime.js';
import { isolate } from '../helpers/isolation.js';
import { harness, harnessRuntime, type Harness } from './harness.js';

const iso = isolate('openapi');
let h: Harness;
let app: StowageServer;
let url: string;
let runtime: Runtime;
let admin: string;
let buildDir: string;
/** Every route the server registered, as its onRoute hook saw it. */
const routes: { method: string; url: string; schema: RouteOptions['schema'] }[] = [];

type Operation = {
  operationId?: string;
  tags?: string[];
  security?: unknown[];
  parameters?: { in: string; name: string }[];
  requestBody?: unknown;
  responses: Record<string, { description?: string; content?: Record<string, { schema?: Record<string, unknown> }> }>;
};
type Doc = { openapi: string; paths: Record<string, Record<string, Operation>>; components?: Record<string, unknown> };
let doc: Doc;

const http = (method: string, path: string, options: { token?: string | undefined; body?: unknown } = {}) =>
  fetch(url + path, {
    method,
    headers: {
      ...(options.token ? { authorization: `Bearer ${options.token}` } : {}),
      ...(options.body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    ...(options.body === undefined ? {} : { body: JSON.stringify(options.body) }),
  });

/** `/v1/jobs/:kind` as the document writes it: `/v1/jobs/{kind}`. */
const docPath = (routeUrl: string) => routeUrl.replace(/:(\w+)/g, '{$1}');

/** Fastify's automatic HEAD routes and Bull Board's own UI routes are left out on purpose (openapi.ts). */
const excluded = (r: { method: string; url: string }) =>
  r.method === 'HEAD' || (r.url.startsWith(`${BOARD_PATH}/`) && r.url !== `${BOARD_PATH}/`);

const ajv = new Ajv2020({ strict: true, allErrors: true });
addFormats.default(ajv);

/** Whether a real answer matches what the document says `method path` answers with `status`. */
async function expectDocumented(method: string, path: string, res: Response): Promise<unknown> {
  const op = doc.paths[path]?.[method.toLowerCase()];
  expect(op, `${method} ${path} is in the document`).toBeDefined();
  const status = String(res.status);
  const response = op!.responses[status] ?? op!.responses[`${status[0]}XX`];
  expect(response, `${method} ${path} documents status ${status}`).toBeDefined();
  const schema = response!.content?.['application/json']?.schema;
  expect(schema, `${method} ${path} ${status} has a JSON schema`).toBeDefined();
  expect(res.headers.get('content-type')).toMatch(/^application\/json/);
  const body: unknown = await res.json();
  const validate = ajv.compile(schema!);
  expect(validate(body) ? [] : validate.errors, `${method} ${path} ${status}: ${JSON.stringify(body)}`).toEqual([]);
  return body;
}

/** GET the job until it is completed or parked; each answer must match the document. */
async function waitForJob(kind: string, jobId: string): Promise<{ state: string; result: unknown }> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const body = (await expectDocumented(
      'GET',
      '/v1/jobs/{kind}/{id}',
      await http('GET', `/v1/jobs/${kind}/${jobId}`, { token: admin }),
    )) as {
      state: string;
      result: unknown;
    };
    if (body.state === 'completed' || body.state === 'parked' || Date.now() > deadline) return body;
    await new Promise((r) => setTimeout(r, 100));
  }
}

beforeAll(async () => {
  h = await harness(iso, { s3: true });
  runtime = await harnessRuntime(h, ['build-artifact', 'export'], { maintenance: false });
  app = buildServer(h.deps);
  // Added before the plugins load (at listen), so it sees every route they register.
  app.addHook('onRoute', (r) => {
    for (const method of [r.method].flat()) routes.push({ method, url: r.url, schema: r.schema });
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  url = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`;
  admin = await createToken(h.secret, { user: 'alice', role: 'admin' });
  buildDir = await mkdtemp(join(tmpdir(), 'stowage-openapi-'));
  await writeFile(join(buildDir, 'index.html'), '<h1>contract</h1>\n');
  const res = await http('GET', '/openapi.json');
  expect(res.status).toBe(200);
  doc = (await res.json()) as Doc;
});

afterAll(async () => {
  await app?.close();
  await runtime?.close(2000);
  await h?.close();
  if (buildDir) await rm(buildDir, { recursive: true, force: true });
  await iso.cleanup();
});

describe('GET /openapi.json', () => {
  it('is an OpenAPI 3.1 document that the official schemas accept, served without credentials', async () => {
    // The harness configures auth: the contract is open anyway, like /healthz.
    const res = await http('GET', '/openapi.json');
    expect(res.status).toBe(200);
    expect(doc.openapi).toMatch(/^3\.1\.\d+$/);
    const result = await new Validator().validate(structuredClone(doc));
    expect(result.errors ?? []).toEqual([]);
    expect(result.valid).toBe(true);
    await expectDocumented('GET', '/openapi.json', res);
  });

  it('holds only valid JSON Schema 2020-12, with no reference that does not resolve', () => {
    const problems: string[] = [];
    const refs: string[] = [];
    for (const [path, item] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(item)) {
        const schemas = [
          ...(op.parameters ?? []).map((p) => [`parameter ${p.name}`, (p as { schema?: unknown }).schema] as const),
          ...Object.entries((op.requestBody as { content?: Record<string, { schema?: unknown }> } | undefined)?.content ?? {}).map(
            ([type, m]) => [`body ${type}`, m.schema] as const,
          ),
          ...Object.entries(op.responses).flatMap(([status, r]) =>
            Object.entries(r.content ?? {}).map(([type, m]) => [`${status} ${type}`, m.schema] as const),
          ),
        ];
        for (const [where, schema] of schemas) {
          if (!ajv.validateSchema(schema as object))
            problems.push(`${method.toUpperCase()} ${path} ${where}: ${ajv.errorsText(ajv.errors)}`);
          JSON.stringify(schema, (k, v: unknown) => {
            if (k === '$ref' && typeof v === 'string') refs.push(v);
            return v;
          });
        }
      }
    }
    expect(problems).toEqual([]);
    const resolves = (ref: string) =>
      ref.startsWith('#/') &&
      ref
        .slice(2)
        .split('/')
        .reduce<unknown>(
          (node, key) => (node as Record<string, unknown> | undefined)?.[key.replace(/~1/g, '/').replace(/~0/g, '~')],
          doc,
        ) !== undefined;
    expect(refs.filter((r) => !resolves(r))).toEqual([]);
  });

  it('lists every route the server registers, with its parameters, a schema for each success and the error body', () => {
    const documented = routes.filter((r) => !excluded(r));
    // The groups are all there (a wiring mistake would leave the list short, and the check vacuous).
    expect(documented.map((r) => `${r.method} ${r.url}`)).toEqual(
      expect.arrayContaining(['POST /v1/jobs/:kind', 'GET /v1/jobs/:kind/:id/events', 'GET /api/v1/records/:module', 'GET /healthz']),
    );
    const problems: string[] = [];
    for (const r of documented) {
      const name = `${r.method} ${r.url}`;
      const op = doc.paths[docPath(r.url === `${BOARD_PATH}/` ? BOARD_PATH : r.url)]?.[r.method.toLowerCase()];
      if (!op) {
        problems.push(`${name}: not in the document`);
        continue;
      }
      if (!r.schema && !r.url.startsWith(BOARD_PATH)) problems.push(`${name}: no schema`);
      const pathParams = [...r.url.matchAll(/:(\w+)/g)].map((m) => m[1]);
      if (pathParams.length && !r.schema?.params) problems.push(`${name}: no params schema for ${pathParams.join(', ')}`);
      for (const p of pathParams) {
        if (!op.parameters?.some((q) => q.in === 'path' && q.name === p)) problems.push(`${name}: path parameter ${p} undocumented`);
      }
      const statuses = Object.keys(op.responses);
      const successes = statuses.filter((s) => s.startsWith('2'));
      if (!successes.length) problems.push(`${name}: no 2xx response`);
      for (const s of successes) {
        const media = Object.values(op.responses[s]!.content ?? {});
        // A 204 has no body; anything else must say what it holds (Fastify's fallback is a bare "Default Response").
        if (s !== '204' && !media.some((m) => m.schema)) problems.push(`${name}: ${s} has no schema`);
      }
      for (const s of ['4XX', '5XX']) {
        if (!op.responses[s]?.content?.['application/json']?.schema) problems.push(`${name}: no ${s} error body`);
      }
      if (!op.operationId) problems.push(`${name}: no operationId`);
      if (!op.tags?.length) problems.push(`${name}: no tag`);
      if (!op.security) problems.push(`${name}: security not declared`);
    }
    expect(problems).toEqual([]);
    const ids = Object.values(doc.paths).flatMap((item) => Object.values(item).map((op) => op.operationId));
    expect(ids.filter((id, i) => ids.indexOf(id) !== i)).toEqual([]);
  });

  it('leaves out Bull Board internals and HEAD routes; says which operations need which credentials', () => {
    expect(Object.keys(doc.paths).filter((p) => p.startsWith(`${BOARD_PATH}/`))).toEqual([]);
    expect(Object.values(doc.paths).filter((item) => 'head' in item)).toEqual([]);
    expect(doc.components).toMatchObject({
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' }, basic: { type: 'http', scheme: 'basic' } },
    });
    expect(doc.paths['/v1/jobs/{kind}']!.post!.security).toEqual([{ bearer: [] }]);
    expect(doc.paths['/api/v1/failures']!.get!.security).toEqual([{ bearer: [] }]);
    expect(doc.paths['/readyz']!.get!.security).toEqual([]);
    expect(doc.paths['/openapi.json']!.get!.security).toEqual([]);
    expect(doc.paths[BOARD_PATH]!.get!.security).toEqual(expect.arrayContaining([{ basic: [] }, { bearer: [] }]));
    expect(doc.paths['/v1/jobs/{kind}/{id}/events']!.get!.tags).toEqual(['events']);
  });
});

describe('real answers match the document', () => {
  it('a build-artifact job: enqueued (202), followed to completed (200), refusals (4xx)', async () => {
    const payload = { userId: 'alice', projectId: 'site', versionId: 'v1', buildDir };
    const enqueued = (await expectDocumented(
      'POST',
      '/v1/jobs/{kind}',
      await http('POST', '/v1/jobs/build-artifact', { token: admin, body: payload }),
    )) as {
      jobId: string;
    };
    const done = await waitForJob('build-artifact', enqueued.jobId);
    expect(done).toMatchObject({ state: 'completed', result: { status: 'uploaded', sha256: expect.stringMatching(/^[0-9a-f]{64}$/) } });

    const bad = await http('POST', '/v1/jobs/build-artifact', { token: admin, body: { ...payload, buildDir: 'relative/dir' } });
    expect(bad.status).toBe(400);
    expect(await expectDocumented('POST', '/v1/jobs/{kind}', bad)).toMatchObject({ error: { code: 'STOWAGE_ERR_INVALID_PAYLOAD' } });
    const anonymous = await http('GET', `/v1/jobs/build-artifact/${enqueued.jobId}`);
    expect(anonymous.status).toBe(401);
    await expectDocumented('GET', '/v1/jobs/{kind}/{id}', anonymous);
  });

  it('records: stored (202), fetched and listed (200); a probe (200)', async () => {
    const stored = (await expectDocumented(
      'POST',
      '/api/v1/records/{module}',
      await http('POST', '/api/v1/records/notes', { token: admin, body: { format: 'json', id: 'n1', records: [{ text: 'hello' }] } }),
    )) as { jobId: string; id: string };
    expect((await waitForJob('export', stored.jobId)).state).toBe('completed');
    const one = await expectDocumented(
      'GET',
      '/api/v1/records/{module}/{id}',
      await http('GET', '/api/v1/records/notes/n1', { token: admin }),
    );
    expect(one).toMatchObject({ entry: { id: 'n1' }, records: [{ text: 'hello' }] });
    const list = await expectDocumented('GET', '/api/v1/records/{module}', await http('GET', '/api/v1/records/notes', { token: admin }));
    expect(list).toMatchObject({ module: 'notes', entries: [{ id: 'n1' }] });
    await expectDocumented('GET', '/readyz', await http('GET', '/readyz'));
  });
});
