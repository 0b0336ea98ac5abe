/**
 * Slow and unauthenticated clients against a listening server (raw sockets, real Redis): a refused
 * request is answered before its body is sent, and its connection closed; a request that trickles
 * in is cut at http.requestTimeoutMs; an idle keep-alive connection at http.keepAliveTimeoutMs;
 * while an event stream outlives every one of these bounds.
 */
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToken } from '../../src/auth/tokens.js';
import { buildServer, type StowageServer } from '../../src/http/server.js';
import { createEventStream, createRedis } from '../../src/queues/index.js';
import { isolate } from '../helpers/isolation.js';
import { harness, type Harness } from './harness.js';
import { sseClient } from './sse-client.js';

const iso = isolate('timeouts');
/** The bound the short-timeout server is given; every wait below is many times it. */
const TIMEOUT_MS = 1000;
/** Generous: a closed connection must be seen well within this, whatever the machine's load. */
const CLOSED_WITHIN_MS = 15_000;

let h: Harness;
let admin: string;
/** Default bounds (requestTimeoutMs 30 s). */
let normal: { app: StowageServer; port: number };
/** requestTimeoutMs and keepAliveTimeoutMs of TIMEOUT_MS. */
let short: { app: StowageServer; port: number };

async function listen(http: Record<string, unknown>) {
  const app = buildServer({ ...h.deps, config: { ...h.deps.config, http: { ...h.deps.config.http, ...http } } });
  await app.listen({ host: '127.0.0.1', port: 0 });
  return { app, port: (app.server.address() as { port: number }).port };
}

/** A raw connection that records what the server sent and when it closed. */
async function rawConnection(port: number) {
  const socket: Socket = connect(port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  let received = '';
  let closedAt: number | undefined;
  socket.on('data', (chunk) => (received += chunk.toString('latin1')));
  socket.on('error', () => {});
  const closed = new Promise<void>((resolve) =>
    socket.once('close', () => {
      closedAt = Date.now();
      resolve();
    }),
  );
  return {
    socket,
    get received() {
      return received;
    },
    get closed() {
      return closedAt !== undefined;
    },
    /** Resolves when the server closed the connection; fails after `ms`. */
    async closedWithin(ms: number, what: string) {
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`${what}: connection still open after ${ms} ms; received ${JSON.stringify(received)}`)),
          ms,
        );
      });
      try {
        await Promise.race([closed, late]);
      } finally {
        clearTimeout(timer);
      }
    },
    async receivedWithin(pattern: RegExp, ms: number) {
      const deadline = Date.now() + ms;
      while (!pattern.test(received)) {
        if (Date.now() > deadline) throw new Error(`nothing matching ${pattern} within ${ms} ms; received ${JSON.stringify(received)}`);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    },
  };
}

const postHead = (port: number, path: string, headers: Record<string, string>, length: number) =>
  [
    `POST ${path} HTTP/1.1`,
    `Host: 127.0.0.1:${port}`,
    'Content-Type: application/json',
    `Content-Length: ${length}`,
    ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
    '',
    '',
  ].join('\r\n');

beforeAll(async () => {
  h = await harness(iso);
  admin = await createToken(h.secret, { user: 'alice', role: 'admin' });
  normal = await listen({});
  short = await listen({ requestTimeoutMs: TIMEOUT_MS, keepAliveTimeoutMs: TIMEOUT_MS });
});

afterAll(async () => {
  await normal?.app.close();
  await short?.app.close();
  await h?.close();
  await iso.cleanup();
});

describe('authentication before the body', () => {
  it('answers an unauthenticated POST with 401 before its body is sent, and closes the connection', async () => {
    // The default server: its 30 s request bound is not what closes this connection.
    const conn = await rawConnection(normal.port);
    conn.socket.write(postHead(normal.port, '/v1/jobs/export', {}, 100_000));
    await conn.receivedWithin(/^HTTP\/1\.1 401 /, CLOSED_WITHIN_MS);
    expect(conn.received).toMatch(/\r\nconnection: close\r\n/i);
    expect(conn.received).toContain('STOWAGE_ERR_UNAUTHORIZED');
    await conn.closedWithin(CLOSED_WITHIN_MS, 'a refused POST whose body was never sent');
  });

  it('refuses a bad token and a cross-site write the same way', async () => {
    for (const headers of [{ Authorization: 'Bearer nope' }, { Authorization: `Bearer ${admin}`, Origin: 'https://evil.example' }]) {
      const conn = await rawConnection(normal.port);
      conn.socket.write(postHead(normal.port, '/api/backups/now', headers, 50_000));
      await conn.receivedWithin(/^HTTP\/1\.1 40[13] /, CLOSED_WITHIN_MS);
      await conn.closedWithin(CLOSED_WITHIN_MS, `refused POST with ${Object.keys(headers).join(', ')}`);
    }
  });
});

describe('http.requestTimeoutMs', () => {
  it('closes the connection of an authenticated client that trickles its POST body', async () => {
    const body = JSON.stringify({ module: 'reports', userId: 'u1', format: 'json', records: [{ id: 1, pad: 'x'.repeat(200) }] });
    const conn = await rawConnection(short.port);
    conn.socket.write(postHead(short.port, '/v1/jobs/export', { Authorization: `Bearer ${admin}` }, Buffer.byteLength(body)));
    let sent = 0;
    const trickle = setInterval(() => {
      if (conn.closed || sent >= body.length - 1) return;
      conn.socket.write(body[sent++]!);
    }, 100);
    try {
      await conn.closedWithin(CLOSED_WITHIN_MS, 'a trickled body');
    } finally {
      clearInterval(trickle);
    }
    expect(sent).toBeLessThan(body.length - 1);
    expect(conn.received).toMatch(/^HTTP\/1\.1 408 /);
  });

  it('closes the connection of a client that trickles its headers', async () => {
    const conn = await rawConnection(short.port);
    const head = `GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:${short.port}\r\nX-Slow: ${'y'.repeat(500)}\r\n\r\n`;
    let sent = 0;
    const trickle = setInterval(() => {
      if (!conn.closed && sent < head.length - 4) conn.socket.write(head[sent++]!);
    }, 50);
    try {
      await conn.closedWithin(CLOSED_WITHIN_MS, 'trickled headers');
    } finally {
      clearInterval(trickle);
    }
    expect(conn.received).not.toMatch(/^HTTP\/1\.1 200 /);
  });

  it('closes an idle keep-alive connection after http.keepAliveTimeoutMs', async () => {
    const conn = await rawConnection(short.port);
    conn.socket.write(`GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:${short.port}\r\n\r\n`);
    await conn.receivedWithin(/^HTTP\/1\.1 200 [\s\S]*"status":"ok"/, CLOSED_WITHIN_MS);
    await conn.closedWithin(CLOSED_WITHIN_MS, 'an idle keep-alive connection');
  });

  it('does not cut an event stream: it outlives several request timeouts and still delivers', async () => {
    const redis = createRedis(h.deps.config.redisUrl);
    const stream = createEventStream(redis, h.deps.config.prefix);
    const client = await sseClient(`http://127.0.0.1:${short.port}`, '/v1/events?type=export_completed', {
      authorization: `Bearer ${admin}`,
    });
    try {
      expect(client.res.status).toBe(200);
      // Several request bounds, and checks of them, go by.
      await new Promise((resolve) => setTimeout(resolve, TIMEOUT_MS * 4));
      expect(client.ended).toBe(false);
      const id = await stream.emit('export_completed', { module: 'm', userId: 'u', key: 'k', records: 1 });
      await client.until(() => client.events.some((e) => e.id === id), 'the event sent after the waits');
    } finally {
      await client.close();
      redis.disconnect();
    }
  });
});
