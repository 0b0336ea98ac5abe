/**
 * docs/api.md is true: its Python script (the page's one python block, run as it is with python3,
 * standard library only) enqueues a build-artifact job and follows it to completed or parked
 * against a real server and workers, with a token from `stowage token create` as the page says;
 * every route its curl lines call is in /openapi.json.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToken } from '../../src/auth/tokens.js';
import { startServer, type RunningServer } from '../../src/http/server.js';
import type { Runtime } from '../../src/workers/runtime.js';
import { runCli } from '../helpers/cli.js';
import { isolate } from '../helpers/isolation.js';
import { harness, harnessRuntime, type Harness } from './harness.js';

const DOC = new URL('../../docs/api.md', import.meta.url);

const iso = isolate('apidocs');
let h: Harness;
let server: RunningServer;
let runtime: Runtime;
let dir: string;
let script: string;
let token: string;
let markdown: string;

/** The fenced blocks of a language in the page. */
const blocks = (lang: string) => [...markdown.matchAll(new RegExp(`^\`\`\`${lang}\\n([\\s\\S]*?)^\`\`\`$`, 'gm'))].map((m) => m[1]!);

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** The page's script as a user runs it: python3, their PATH, the two variables the page sets, nothing else. */
function python(args: string[], env: { STOWAGE_TOKEN: string }): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      'python3',
      [script, ...args],
      { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', STOWAGE_URL: server.url, ...env }, timeout: 60_000 },
      (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr }),
    );
  });
}

beforeAll(async () => {
  markdown = await readFile(DOC, 'utf8');
  h = await harness(iso, { s3: true, config: { http: { port: 0 } } });
  runtime = await harnessRuntime(h, ['build-artifact'], { maintenance: false });
  server = await startServer(h.deps);
  dir = await mkdtemp(join(tmpdir(), 'stowage-apidocs-'));
  await writeFile(join(dir, 'index.html'), '<h1>from python</h1>\n');
  const code = blocks('python');
  expect(code, 'docs/api.md has exactly one python block').toHaveLength(1);
  script = join(dir, 'stowage_build.py');
  await writeFile(script, code[0]!);
  // The page's way to a token: the CLI, on a machine with the server's secret.
  const made = await runCli(iso, ['token', 'create', '--user', 'ci', '--role', 'admin', '--ttl', '1h'], { STOWAGE_AUTH_SECRET: h.secret });
  expect(made.stderr).toBe('');
  expect(made.code).toBe(0);
  token = made.stdout.trim();
});

afterAll(async () => {
  await server?.close();
  await runtime?.close(2000);
  await h?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
  await iso.cleanup();
});

describe('docs/api.md, the Python example', () => {
  it('enqueues a build, polls it to completed and prints the result: the stored zip, its SHA-256 right', async () => {
    const build = join(dir, 'build');
    await mkdir(build);
    await writeFile(join(build, 'index.html'), '<h1>built</h1>\n');
    const run = await python(['u_123', 'site', 'v42', build], { STOWAGE_TOKEN: token });
    expect(run.stderr).toMatch(/^job build-artifact\.[0-9a-f]{32} enqueued\n/);
    expect(run.stderr).toMatch(/state: completed\n$/);
    expect(run.code).toBe(0);
    const result = JSON.parse(run.stdout) as { status: string; key: string; sha256: string; size: number };
    expect(result).toMatchObject({ status: 'uploaded', key: 'u_123/site/snapshots/v42.zip' });
    const storage = h.deps.storage();
    const object = await storage.client.send(new GetObjectCommand({ Bucket: storage.bucket, Key: result.key }));
    const bytes = Buffer.from(await object.Body!.transformToByteArray());
    expect(bytes.length).toBe(result.size);
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(result.sha256);

    // Run again: the same job id, already enqueued, the same result.
    const again = await python(['u_123', 'site', 'v42', build], { STOWAGE_TOKEN: token });
    expect(again.code).toBe(0);
    expect(again.stderr).toMatch(/was already enqueued/);
    expect(JSON.parse(again.stdout)).toEqual(result);
  });

  it('exits 1 naming why when the job is parked, and the id to redrive it with', async () => {
    const run = await python(['u_123', 'site', 'v43', join(dir, 'missing')], { STOWAGE_TOKEN: token });
    expect(run.code).toBe(1);
    expect(run.stdout).toBe('');
    expect(run.stderr).toMatch(
      /parked \(permanent\): buildDir: .*missing does not exist; redrive with: stowage dlq redrive --id build-artifact--build-artifact\.[0-9a-f]{32}\n$/,
    );
  });

  it("exits 1 with the server's code and each bad field when a request is refused", async () => {
    const bad = await python(['u_123', 'site', 'v44', 'relative/dir'], { STOWAGE_TOKEN: token });
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/HTTP 400 STOWAGE_ERR_INVALID_PAYLOAD: .*\n {2}buildDir: must be an absolute path\n$/);
    const viewer = await createToken(h.secret, { user: 'victor', role: 'viewer' });
    const forbidden = await python(['u_123', 'site', 'v44', dir], { STOWAGE_TOKEN: viewer });
    expect(forbidden.code).toBe(1);
    expect(forbidden.stderr).toMatch(/HTTP 403 STOWAGE_ERR_FORBIDDEN: role "viewer" may not enqueue jobs/);
  });
});

describe('docs/api.md, the curl examples', () => {
  it('call only routes that /openapi.json lists', async () => {
    const doc = (await (await fetch(`${server.url}/openapi.json`)).json()) as { paths: Record<string, Record<string, unknown>> };
    const templates = Object.entries(doc.paths).flatMap(([path, item]) =>
      Object.keys(item).map((method) => ({
        method: method.toUpperCase(),
        path,
        // `{kind}` matches a segment, written literally (build-artifact) or as a shell variable ($JOB_ID).
        re: new RegExp(`^${path.replace(/[.]/g, '\\.').replace(/\{\w+\}/g, '[^/]+')}$`),
      })),
    );
    const calls = blocks('sh')
      .join('\n')
      .replace(/\\\n\s*/g, ' ')
      .split('\n')
      .filter((line) => /^\s*curl /.test(line))
      .map((line) => {
        const path = /"\$STOWAGE_URL(\/[^"?]*)/.exec(line)?.[1];
        const method = /-X (\w+)/.exec(line)?.[1] ?? 'GET';
        return { line, method, path };
      });
    expect(calls.length).toBeGreaterThan(5);
    const unknown = calls.filter((c) => !c.path || !templates.some((t) => t.method === c.method && t.re.test(c.path!)));
    expect(unknown.map((c) => c.line)).toEqual([]);
  });
});
