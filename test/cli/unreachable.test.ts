/**
 * Redis away: a one-shot command is one line and a non-zero exit (it used to hang, printing an
 * ioredis stack per reconnect attempt); a long-lived role keeps retrying, says so once per outage,
 * and says when Redis is back.
 */
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import { CLI_MAIN, runCli } from '../helpers/cli.js';
import { DATABASE_URL, isolate } from '../helpers/isolation.js';

const iso = isolate('unreachable');

afterAll(() => iso.cleanup());

/** A loopback port nothing listens on (bound, read, released). */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

describe('with Redis unreachable', () => {
  it('one-shot commands fail with one line naming the address and the cause', async () => {
    const port = await closedPort();
    for (const args of [['dlq', 'list'], ['events'], ['enqueue', 'cleanup', '--data', '{"prefix":"x/"}']]) {
      // The timeout only catches a hang (the old behaviour); it is not a speed check.
      const run = await runCli(iso, args, { REDIS_URL: `redis://127.0.0.1:${port}` }, 20_000);
      expect(run.stderr.split('\n').filter(Boolean), args.join(' ')).toEqual([
        `stowage: Redis at 127.0.0.1:${port} is unreachable (ECONNREFUSED)`,
      ]);
      expect(run.code, args.join(' ')).toBe(69);
    }
  }, 60_000);

  it('a worker keeps retrying, logs the outage once, and says when Redis is back', async () => {
    const port = await closedPort();
    const child = spawn(process.execPath, [CLI_MAIN, 'worker', '--queues', 'cleanup'], {
      env: {
        PATH: process.env.PATH ?? '',
        HOME: process.env.HOME ?? '/tmp',
        REDIS_URL: `redis://127.0.0.1:${port}`,
        DATABASE_URL,
        STOWAGE_PREFIX: iso.prefix,
        STOWAGE_DB_SCHEMA: iso.schema,
        LOG_LEVEL: 'info',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const waitFor = async (re: RegExp) => {
      while (!re.test(out)) {
        if (child.exitCode !== null) throw new Error(`worker exited:\n${out}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    };
    let redis: ReturnType<typeof spawn> | undefined;
    try {
      await waitFor(/is unreachable/);
      // Several reconnect attempts (400 ms, 800 ms, 1.6 s …) go by with no new line.
      await new Promise((r) => setTimeout(r, 3_000));
      redis = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
        stdio: 'ignore',
      });
      await waitFor(/workers started/);
      await waitFor(/is reachable again/);
      const lines = out.split('\n').filter(Boolean);
      expect(lines.filter((l) => l.includes('is unreachable'))).toHaveLength(1);
      expect(out).not.toMatch(/Unhandled error event|at TCPConnectWrap/);
      for (const line of lines) expect(() => JSON.parse(line), line).not.toThrow();
    } finally {
      child.kill('SIGTERM');
      await exited;
      redis?.kill('SIGTERM');
    }
  }, 60_000);
});
