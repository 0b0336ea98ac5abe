/**
 * Secrets out of job payloads wherever a payload is shown (Bull Board, `dlq list`, HTTP).
 *
 * New payloads carry no secrets (producers refuse them), but jobs written by older producers, and
 * dead letters that never expire, may: a `postgres://user:pass@host` URL or a `password` field.
 * Showing a payload goes through this so a viewer never reads one.
 */

const SECRET_KEY = /^(password|passwd|secret|secretAccessKey|token|apiKey|authorization)$/i;
const URL_WITH_PASSWORD = /\b([a-z][a-z0-9+.-]*:\/\/[^:/?#@\s]*:)([^@/?#\s]+)@/gi;
/** Deeper than any payload Stowage writes; deeper input is cut rather than recursed into. */
const MAX_DEPTH = 32;

/** A copy of `value` with URL passwords and secret-named fields replaced by `[redacted]`. */
export function redactSecrets<T>(value: T): T {
  return redact(value, 0) as T;
}

function redact(value: unknown, depth: number): unknown {
  if (typeof value === 'string') return redactString(value);
  if (value === null || typeof value !== 'object') return value;
  if (depth >= MAX_DEPTH) return '[too deep]';
  if (Array.isArray(value)) return value.map((v) => redact(v, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    out[k] = SECRET_KEY.test(k) && v !== null && v !== undefined && v !== '' ? '[redacted]' : redact(v, depth + 1);
  }
  return out;
}

/** `scheme://user:secret@host` → `scheme://user:[redacted]@host`; `?password=` values too. */
export function redactString(s: string): string {
  return s.replace(URL_WITH_PASSWORD, '$1[redacted]@').replace(/([?&](?:password|passwd|token)=)[^&#\s]*/gi, '$1[redacted]');
}
