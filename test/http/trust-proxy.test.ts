/**
 * http.trustProxy: X-Forwarded-Proto / -For are believed from the configured proxies only. Behind
 * one, the board cookie gets Secure when the client used https, and the rate limit counts each
 * client address, not the proxy's. Real Redis, through inject() (whose peer is 127.0.0.1 unless
 * told otherwise).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToken } from '../../src/auth/tokens.js';
import type { ConfigInput } from '../../src/config.js';
import { BOARD_COOKIE, buildServer, type StowageServer } from '../../src/http/server.js';
import { isolate } from '../helpers/isolation.js';
import { harness, type Harness } from './harness.js';

const iso = isolate('trustproxy');
const REQUESTS = 3;

let h: Harness;
let admin: string;
const servers: StowageServer[] = [];

/**
 * A server on the harness's deps with these http settings (parsed as loadConfig would, env strings
 * included), ready. Wrapped: a Fastify instance is a thenable, which an async function would unwrap.
 */
async function server(http: NonNullable<ConfigInput['http']>, auth = true): Promise<{ app: StowageServer }> {
  const config = iso.config({ ...(auth ? { authSecret: h.secret } : {}), http });
  const app = buildServer({ ...h.deps, config });
  servers.push(app);
  await app.ready();
  return { app };
}

const boardCookie = (res: { headers: Record<string, unknown> }) =>
  ([res.headers['set-cookie']].flat() as string[]).find((c) => c.startsWith(`${BOARD_COOKIE}=`));

beforeAll(async () => {
  h = await harness(iso);
  admin = await createToken(h.secret, { user: 'alice', role: 'admin' });
});

afterAll(async () => {
  await Promise.all(servers.map((s) => s.close()));
  await h?.close();
  await iso.cleanup();
});

describe('the board cookie', () => {
  it('is Secure when a trusted proxy says the client used https, and only then', async () => {
    const { app: trusting } = await server({ trustProxy: '127.0.0.1' });
    const { app: plain } = await server({});
    const open = (app: StowageServer, headers: Record<string, string>, remoteAddress = '127.0.0.1') =>
      app.inject({ method: 'GET', url: `/admin/queues?token=${admin}`, headers, remoteAddress });

    const behindProxy = await open(trusting, { 'x-forwarded-proto': 'https' });
    expect(behindProxy.statusCode).toBe(303);
    expect(boardCookie(behindProxy)).toMatch(/; Secure/);

    // The same header from a peer that is not the proxy, or with no proxy configured, is ignored.
    for (const [what, res] of [
      ['an untrusted peer', await open(trusting, { 'x-forwarded-proto': 'https' }, '10.1.2.3')],
      ['no trustProxy', await open(plain, { 'x-forwarded-proto': 'https' })],
      ['plain http via the proxy', await open(trusting, { 'x-forwarded-proto': 'http' })],
    ] as const) {
      expect(res.statusCode, what).toBe(303);
      expect(boardCookie(res), what).toBeDefined();
      expect(boardCookie(res), what).not.toMatch(/Secure/);
    }
  });
});

describe('the rate limit by client address (no auth configured)', () => {
  const get = (app: StowageServer, forwardedFor: string) =>
    app.inject({ method: 'GET', url: '/v1/jobs/export/export.none', headers: { 'x-forwarded-for': forwardedFor } });

  it('counts each client behind a trusted proxy on its own', async () => {
    const { app } = await server({ trustProxy: ['127.0.0.1'], requestsPerMinute: REQUESTS }, false);
    for (let i = 0; i < REQUESTS; i++) expect((await get(app, '203.0.113.1')).statusCode).toBe(404);
    const over = await get(app, '203.0.113.1');
    expect(over.statusCode).toBe(429);
    expect(over.json().error.message).toContain('client 203.0.113.1');
    expect((await get(app, '203.0.113.2')).statusCode).toBe(404);
  });

  it('without trustProxy, counts the peer: a forged X-Forwarded-For does not buy a fresh budget', async () => {
    const { app } = await server({ requestsPerMinute: REQUESTS }, false);
    for (let i = 0; i < REQUESTS; i++) expect((await get(app, `198.51.100.${i}`)).statusCode).toBe(404);
    const over = await get(app, '198.51.100.99');
    expect(over.statusCode).toBe(429);
    expect(over.json().error.message).toContain('client 127.0.0.1');
  });
});

describe('http.trustProxy', () => {
  it('refuses a hop count or a malformed address, naming the variable', () => {
    for (const value of ['2', '10.0.0.0/33', 'proxy.example']) {
      expect(() => iso.config({ http: { trustProxy: value } }), value).toThrow(/http\.trustProxy.*expected true, false, or IP addresses/);
    }
  });
});
