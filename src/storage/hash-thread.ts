/**
 * The body of the SHA-256 thread (started by part-hasher.ts): every part of an upload is hashed
 * here twice, into its upload's running whole-object hash and on its own. A part's memory is
 * transferred here and back (no copy). Parts of one upload arrive in order, so the whole hash sees
 * the object's bytes in order.
 *
 * A thread entry point loaded by Node directly (as .ts under tsx and vitest, as .js from dist/),
 * like zip/compress-thread.ts: only erasable syntax, and no imports but `node:` builtins. It
 * serves messages only in a thread started with `THREAD_ROLE`, so importing it has no effect.
 */
import { createHash, type Hash } from 'node:crypto';
import { parentPort, workerData } from 'node:worker_threads';

/** The hasher's workerData: only a thread started with it serves requests. */
export const THREAD_ROLE = 'stowage-sha256';

export type HashRequest =
  /** Add the bytes to the upload's whole hash, and answer their own SHA-256. */
  | { op: 'part'; seq: number; upload: number; buffer: ArrayBuffer; offset: number; length: number }
  /** Answer the upload's whole SHA-256 and forget the upload. */
  | { op: 'digest'; seq: number; upload: number }
  /** Forget the upload (it failed or was given up); no answer. */
  | { op: 'drop'; upload: number };

export interface HashResponse {
  seq: number;
  hex: string;
  /** A part's memory, transferred back. */
  buffer?: ArrayBuffer;
}

if (parentPort && workerData === THREAD_ROLE) {
  const port = parentPort;
  const wholes = new Map<number, Hash>();
  const whole = (upload: number): Hash => {
    let hash = wholes.get(upload);
    if (!hash) {
      hash = createHash('sha256');
      wholes.set(upload, hash);
    }
    return hash;
  };
  port.on('message', (m: HashRequest) => {
    if (m.op === 'drop') {
      wholes.delete(m.upload);
    } else if (m.op === 'digest') {
      const hex = whole(m.upload).digest('hex');
      wholes.delete(m.upload);
      port.postMessage({ seq: m.seq, hex } satisfies HashResponse);
    } else {
      const bytes = new Uint8Array(m.buffer, m.offset, m.length);
      whole(m.upload).update(bytes);
      const hex = createHash('sha256').update(bytes).digest('hex');
      port.postMessage({ seq: m.seq, hex, buffer: m.buffer } satisfies HashResponse, [m.buffer]);
    }
  });
}
