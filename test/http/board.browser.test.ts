/**
 * Bull Board in a real headless Chromium (Debian's `chromium` package, driven by playwright-core)
 * against a listening server, real Redis and Postgres; and once more on a real Redis Cluster
 * (3 masters + 3 replicas, a hash tag per queue): the board lists every queue and shows a failed
 * job's error, and /metrics answers with every queue.
 */
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, stat } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Worker } from 'bullmq';
import { chromium, type BrowserContext } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToken } from '../../src/auth/tokens.js';
import { BOARD_COOKIE, startServer, type RunningServer } from '../../src/http/server.js';
import { QUEUE_NAMES } from '../../src/queues/index.js';
import { isolate } from '../helpers/isolation.js';
import { startRedisCluster, type RedisCluster } from '../helpers/redis-cluster.js';
import { BASIC_PASSWORD, BASIC_USER, harness, type Harness } from './harness.js';

const CHROMIUM = '/usr/bin/chromium';
/** Kept with the test output (gitignored) for a person to look at. */
const SCREENSHOT = resolve(import.meta.dirname, '../../test-output/board.png');
if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get update && apt-get install -y chromium`);

const iso = isolate('httpboard');
let h: Harness;
let server: RunningServer;
const dirs: string[] = [];

/** A browser with a fresh profile; `launchPersistentContext` is how Playwright takes --user-data-dir. */
async function browser(options: { httpCredentials?: { username: string; password: string } } = {}): Promise<BrowserContext> {
  const dir = await mkdtemp(join(tmpdir(), 'stowage-chromium-'));
  dirs.push(dir);
  return chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    ...options,
  });
}

beforeAll(async () => {
  h = await harness(iso, { config: { http: { host: '127.0.0.1', port: 0 } } });
  server = await startServer(h.deps);
});

afterAll(async () => {
  await server?.close();
  await h?.close();
  await iso.cleanup();
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

describe('Bull Board in Chromium', () => {
  it('401 unauthenticated; ?token= signs in, lists every queue, and only same-origin writes pass', async () => {
    const admin = await createToken(h.secret, { user: 'alice', role: 'admin' });
    const context = await browser();
    // A page on another origin of the same site (another port): SameSite=Strict still sends the cookie there.
    const attacker: Server = createServer((_req, res) => {
      res.setHeader('content-type', 'text/html');
      res.end(
        `<form id="f" method="POST" enctype="text/plain" action="${server.url}/admin/queues/api/queues/export/add">` +
          `<input name='{"name":"evil","data":{},"x":"' value='"}'></form><script>document.getElementById('f').submit()</script>`,
      );
    });
    await new Promise<void>((resolve) => attacker.listen(0, '127.0.0.1', resolve));
    try {
      const page = await context.newPage();
      // A navigation would stop at Chromium's basic-auth prompt; the context's own request API
      // shares the browser's (still empty) cookie jar and shows the answer.
      const anonymous = await context.request.get(`${server.url}/admin/queues`);
      expect(anonymous.status()).toBe(401);
      expect(anonymous.headers()['www-authenticate']).toMatch(/^Basic /);
      // Its own page: the cancelled prompt leaves a chrome-error navigation that would interrupt the next goto.
      const probe = await context.newPage();
      await expect(probe.goto(`${server.url}/admin/queues`)).rejects.toThrow(/ERR_INVALID_AUTH_CREDENTIALS/);
      await probe.close();

      const signedIn = await page.goto(`${server.url}/admin/queues?token=${admin}`);
      expect(signedIn?.status()).toBe(200);
      expect(page.url()).toBe(`${server.url}/admin/queues`);
      for (const name of QUEUE_NAMES) await page.getByText(name, { exact: true }).first().waitFor({ timeout: 10_000 });
      const [cookie] = (await context.cookies()).filter((c) => c.name === BOARD_COOKIE);
      expect(cookie).toMatchObject({ httpOnly: true, sameSite: 'Strict', path: '/admin/queues' });

      const pause = (verb: 'pause' | 'resume') =>
        page.evaluate(async (url) => (await fetch(url, { method: 'PUT' })).status, `/admin/queues/api/queues/cleanup/${verb}`);
      expect(await pause('pause')).toBe(200);
      expect(await h.queue('cleanup').isPaused()).toBe(true);
      expect(await pause('resume')).toBe(200);
      expect(await h.queue('cleanup').isPaused()).toBe(false);

      const { port } = attacker.address() as { port: number };
      const forged = page.waitForResponse((r) => r.url().endsWith('/api/queues/export/add'));
      await page.goto(`http://127.0.0.1:${port}/`);
      const response = await forged;
      expect(response.status()).toBe(403);
      expect(await response.json()).toMatchObject({ error: { code: 'STOWAGE_ERR_FORBIDDEN' } });
      expect(await h.queue('export').getJobCountByTypes('waiting', 'prioritized', 'delayed', 'active', 'completed', 'failed')).toBe(0);
    } finally {
      attacker.close();
      await context.close();
    }
  });

  it('renders with HTTP basic auth and lists the dead-letter queue', async () => {
    const context = await browser({ httpCredentials: { username: BASIC_USER, password: BASIC_PASSWORD } });
    try {
      const page = await context.newPage();
      const res = await page.goto(`${server.url}/admin/queues`);
      expect(res?.status()).toBe(200);
      expect(await page.title()).toBe('Stowage');
      for (const name of QUEUE_NAMES) await page.getByText(name, { exact: true }).first().waitFor({ timeout: 10_000 });
    } finally {
      await context.close();
    }
  });

  it("shows a failed job's error on its queue's Failed tab, and saves a screenshot", async () => {
    const reason = `source bucket unreachable (${iso.id})`;
    // A real BullMQ worker fails one job for good, leaving it in aggregation's failed set (the
    // Stowage runtime would park it in dead-letter instead).
    const worker = new Worker(
      'aggregation',
      async () => {
        throw new Error(reason);
      },
      { connection: h.deps.redis.duplicate(), prefix: h.deps.config.prefix },
    );
    const failed = new Promise<void>((done) => worker.once('failed', () => done()));
    await h.queue('aggregation').add('nightly', { days: 7 }, { attempts: 1, jobId: 'aggregation.screenshot' });
    await failed;
    await worker.close();
    expect(await h.queue('aggregation').getJobState('aggregation.screenshot')).toBe('failed');

    const context = await browser({ httpCredentials: { username: BASIC_USER, password: BASIC_PASSWORD } });
    try {
      const page = await context.newPage();
      await page.setViewportSize({ width: 1280, height: 900 });
      const res = await page.goto(`${server.url}/admin/queues/queue/aggregation?status=failed`);
      expect(res?.status()).toBe(200);
      await page.getByText(reason).first().waitFor({ timeout: 10_000 });
      await mkdir(resolve(SCREENSHOT, '..'), { recursive: true });
      await page.screenshot({ path: SCREENSHOT, fullPage: true });
      expect((await stat(SCREENSHOT)).size).toBeGreaterThan(10_000);
    } finally {
      await context.close();
    }
  });
});

describe('Bull Board in Chromium on a Redis Cluster', () => {
  let cluster: RedisCluster;
  let ch: Harness;
  let cserver: RunningServer;
  let ciso: ReturnType<typeof isolate>;

  beforeAll(async () => {
    cluster = await startRedisCluster();
    ciso = isolate('httpboardcl', { name: 'cluster', cluster });
    ch = await harness(ciso, { config: { http: { host: '127.0.0.1', port: 0 } } });
    cserver = await startServer(ch.deps);
  }, 60_000);

  afterAll(async () => {
    await cserver?.close();
    await ch?.close();
    await ciso?.cleanup();
    await cluster?.stop();
  });

  it("lists every queue, shows a failed job's error, and /metrics counts it", async () => {
    const reason = `cluster source unreachable (${ciso.id})`;
    const worker = new Worker(
      'aggregation',
      async () => {
        throw new Error(reason);
      },
      // The queue's own prefix: on the cluster it carries the queue's hash tag.
      { connection: ch.deps.redis.duplicate(), prefix: ch.queue('aggregation').opts.prefix! },
    );
    const failed = new Promise<void>((done) => worker.once('failed', () => done()));
    await ch.queue('aggregation').add('nightly', { days: 7 }, { attempts: 1, jobId: 'aggregation.cluster' });
    await failed;
    await worker.close();

    const context = await browser({ httpCredentials: { username: BASIC_USER, password: BASIC_PASSWORD } });
    try {
      const page = await context.newPage();
      const res = await page.goto(`${cserver.url}/admin/queues`);
      expect(res?.status()).toBe(200);
      for (const name of QUEUE_NAMES) await page.getByText(name, { exact: true }).first().waitFor({ timeout: 10_000 });
      const tab = await page.goto(`${cserver.url}/admin/queues/queue/aggregation?status=failed`);
      expect(tab?.status()).toBe(200);
      await page.getByText(reason).first().waitFor({ timeout: 10_000 });
      const metrics = await context.request.get(`${cserver.url}/metrics`);
      expect(metrics.status()).toBe(200);
      const text = await metrics.text();
      expect(text).toMatch(/^stowage_queue_jobs\{queue="aggregation",state="failed"\} 1$/m);
      for (const name of QUEUE_NAMES) expect(text).toContain(`queue="${name}"`);
    } finally {
      await context.close();
    }
  });
});
