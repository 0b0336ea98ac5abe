/**
 * A user-space link shaper for benchmarks (this kernel has no `tc netem`): a TCP proxy in front of
 * the S3 server that gives every connection a round-trip time and all connections together a
 * bandwidth cap, as a VM talking to R2 sees them.
 *
 * Model, per direction: a chunk that arrives is serialized onto a link shared by every connection
 * (it leaves at max(arrival, link free) + size / bandwidth), then propagates for RTT/2 and is
 * delivered. Chunks pipeline: the delay is latency, not a per-chunk wait, so a window of bytes in
 * flight still moves at the link's rate, as on a real long link. Backpressure: a connection whose
 * queue holds more than HIGH_WATER bytes stops reading until it drains below LOW_WATER, so memory
 * stays bounded and TCP's own flow control reaches the sender. The link itself queues at most one
 * bandwidth-delay product (RTT × bandwidth, the usual router buffer): past that every connection
 * stops reading until it drains. Without that limit, four 8 MiB parts in flight queued 16 MB ahead
 * of any other connection's request, 320 ms at 50 MB/s, a queue no real path to R2 holds.
 *
 * Settings: BENCH_RTT_MS (default 30) and BENCH_BANDWIDTH_MBPS (megabytes per second, default 50).
 */
import { connect, createServer, type Socket } from 'node:net';

export interface ShaperOptions {
  rttMs: number;
  /** Bytes per second in each direction, shared by every connection. */
  bytesPerSecond: number;
}

export interface Shaper {
  url: string;
  port: number;
  options: ShaperOptions;
  stats: { connections: number; bytesUp: number; bytesDown: number };
  close(): Promise<void>;
}

const HIGH_WATER = 4 << 20;
const LOW_WATER = 1 << 20;

export function shaperOptionsFromEnv(env: NodeJS.ProcessEnv = process.env): ShaperOptions {
  const rttMs = Number(env.BENCH_RTT_MS ?? 30);
  const mbps = Number(env.BENCH_BANDWIDTH_MBPS ?? 50);
  if (!Number.isFinite(rttMs) || rttMs < 0) throw new Error(`BENCH_RTT_MS: expected milliseconds ≥ 0, got ${env.BENCH_RTT_MS}`);
  if (!Number.isFinite(mbps) || mbps <= 0) throw new Error(`BENCH_BANDWIDTH_MBPS: expected MB/s > 0, got ${env.BENCH_BANDWIDTH_MBPS}`);
  return { rttMs, bytesPerSecond: mbps * 1_000_000 };
}

/** One direction of the link, shared by every connection: when it is next free to send. */
class Link {
  private free = 0;
  private readonly drained = new Set<() => void>();
  private timer: NodeJS.Timeout | null = null;
  constructor(
    private readonly bytesPerSecond: number,
    /** Bytes the link may have queued (accepted, not yet sent). */
    private readonly queueBytes: number,
  ) {}
  /** The time (performance.now ms) a chunk of `bytes` arriving now has left the link. */
  departure(now: number, bytes: number): number {
    this.free = Math.max(this.free, now) + (bytes / this.bytesPerSecond) * 1000;
    return this.free;
  }
  /** More than queueBytes are waiting to be sent. */
  full(now: number): boolean {
    return ((this.free - now) / 1000) * this.bytesPerSecond > this.queueBytes;
  }
  /** Call `fn` once the queue is back under queueBytes. */
  whenDrained(fn: () => void): void {
    this.drained.add(fn);
    if (this.timer) return;
    const wake = () => {
      const now = performance.now();
      if (this.full(now)) {
        this.timer = setTimeout(wake, Math.max(1, this.free - (this.queueBytes / this.bytesPerSecond) * 1000 - now));
        return;
      }
      this.timer = null;
      const waiting = [...this.drained];
      this.drained.clear();
      for (const f of waiting) f();
    };
    this.timer = setTimeout(wake, 0);
  }
}

/** Pipe `from` into `to` through `link`, delivering each chunk `delayMs` after it left the link. */
function shapeDirection(from: Socket, to: Socket, link: Link, delayMs: number, count: (n: number) => void): void {
  const queue: { at: number; chunk: Buffer }[] = [];
  let queued = 0;
  let timer: NodeJS.Timeout | null = null;
  let ended = false;
  /** Read again once this connection's queue is low and the link has room. */
  const maybeResume = () => {
    if (!from.isPaused() || from.destroyed || queued >= LOW_WATER) return;
    if (link.full(performance.now())) link.whenDrained(maybeResume);
    else from.resume();
  };
  const flush = () => {
    timer = null;
    const now = performance.now();
    while (queue.length && queue[0]!.at <= now) {
      const { chunk } = queue.shift()!;
      queued -= chunk.length;
      if (!to.destroyed) to.write(chunk);
    }
    maybeResume();
    if (queue.length) timer = setTimeout(flush, Math.max(0, queue[0]!.at - performance.now()));
    else if (ended && !to.destroyed) to.end();
  };
  from.on('data', (chunk: Buffer) => {
    count(chunk.length);
    const now = performance.now();
    queue.push({ at: link.departure(now, chunk.length) + delayMs, chunk });
    queued += chunk.length;
    if (queued > HIGH_WATER) from.pause();
    else if (link.full(now)) {
      from.pause();
      link.whenDrained(maybeResume);
    }
    if (!timer) timer = setTimeout(flush, Math.max(0, queue[0]!.at - now));
  });
  from.on('end', () => {
    ended = true;
    if (!queue.length && !timer && !to.destroyed) to.end();
  });
  from.on('close', () => {
    // A hard close (not an end) of one side cuts the other once what was sent is delivered.
    if (!ended) {
      queue.length = 0;
      to.destroy();
    }
  });
}

export async function startShaper(
  target: { host?: string; port: number },
  options: ShaperOptions = shaperOptionsFromEnv(),
): Promise<Shaper> {
  // One bandwidth-delay product of queue per direction (at least 64 KiB, for RTT 0).
  const queueBytes = Math.max(64 * 1024, (options.rttMs / 1000) * options.bytesPerSecond);
  const up = new Link(options.bytesPerSecond, queueBytes);
  const down = new Link(options.bytesPerSecond, queueBytes);
  const half = options.rttMs / 2;
  const stats = { connections: 0, bytesUp: 0, bytesDown: 0 };
  const open = new Set<Socket>();
  const server = createServer({ noDelay: true }, (client) => {
    stats.connections++;
    const upstream = connect({ host: target.host ?? '127.0.0.1', port: target.port, noDelay: true });
    for (const s of [client, upstream]) {
      open.add(s);
      s.on('error', () => s.destroy());
      s.on('close', () => open.delete(s));
    }
    // A connection costs a round trip before its first byte, as a TCP handshake does.
    client.pause();
    setTimeout(() => client.resume(), options.rttMs);
    shapeDirection(client, upstream, up, half, (n) => (stats.bytesUp += n));
    shapeDirection(upstream, client, down, half, (n) => (stats.bytesDown += n));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    options,
    stats,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of open) s.destroy();
        server.close(() => resolve());
      }),
  };
}
