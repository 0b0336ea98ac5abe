/**
 * The fault proxy itself: each mode does what the scenarios rely on, against a plain echo server.
 */
import { connect, createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFaultProxy, type FaultProxy } from './fault-proxy.js';

let echo: Server;
let proxy: FaultProxy;

/** Send `text`, half-close, and collect the answer (or the error code). */
function roundTrip(port: number, text: string): Promise<{ data: string; error?: string; ms: number }> {
  const started = Date.now();
  return new Promise((resolve) => {
    let data = '';
    const socket = connect({ host: '127.0.0.1', port }, () => socket.end(text));
    socket.on('data', (d) => (data += d.toString()));
    socket.on('error', (err: NodeJS.ErrnoException) => resolve({ data, error: err.code ?? err.message, ms: Date.now() - started }));
    socket.on('close', () => resolve({ data, ms: Date.now() - started }));
  });
}

beforeAll(async () => {
  echo = createServer((s) => {
    s.on('error', () => {});
    s.pipe(s);
  });
  await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
  proxy = await startFaultProxy({ port: (echo.address() as { port: number }).port });
});
afterAll(async () => {
  await proxy.close();
  await new Promise<void>((r) => echo.close(() => r()));
});

describe('fault proxy', () => {
  it('pass relays both ways; delay relays late but whole and in order', async () => {
    expect(await roundTrip(proxy.port, 'hello')).toMatchObject({ data: 'hello' });
    await proxy.set({ mode: 'delay', ms: 150 });
    const slow = await roundTrip(proxy.port, 'x'.repeat(200_000));
    expect(slow.data).toBe('x'.repeat(200_000));
    expect(slow.ms).toBeGreaterThanOrEqual(300);
  });

  it('reset resets, refuse refuses on the same port, answer-503 answers with an S3 error; pass heals', async () => {
    await proxy.set({ mode: 'reset' });
    expect((await roundTrip(proxy.port, 'a')).error).toBe('ECONNRESET');
    await proxy.set({ mode: 'refuse' });
    expect((await roundTrip(proxy.port, 'a')).error).toBe('ECONNREFUSED');
    await proxy.set({ mode: 'answer-503' });
    const answer = await roundTrip(proxy.port, 'GET / HTTP/1.1\r\nhost: x\r\n\r\n');
    expect(answer.data).toMatch(/^HTTP\/1\.1 503 /);
    expect(answer.data).toContain('<Code>ServiceUnavailable</Code>');
    await proxy.set({ mode: 'pass' });
    expect(await roundTrip(proxy.port, 'back')).toMatchObject({ data: 'back' });
    expect(proxy.stats).toMatchObject({ resets: 1, answered503: 1 });
  });

  it('switching to a fault cuts connections already open', async () => {
    const socket = connect({ host: '127.0.0.1', port: proxy.port });
    await new Promise((r) => socket.once('connect', r));
    const closed = new Promise((r) => socket.once('close', r));
    socket.on('error', () => {});
    await new Promise((r) => setTimeout(r, 50));
    await proxy.set({ mode: 'reset' });
    await closed;
    await proxy.set({ mode: 'pass' });
  });
});
