/**
 * Secrets out of job payloads wherever a payload is shown (Bull Board, `dlq list`, HTTP), and out of
 * URLs wherever one is printed (`stowage config`, request logs).
 *
 * New payloads carry no secrets (producers refuse them), but jobs written by older producers, and
 * dead letters that never expire, may: a `postgres://user:pass@host` URL, a `?password=` query
 * parameter or a `password` field. Showing a payload goes through this so a viewer never reads one.
 */

const SECRET_KEY = /^(password|passwd|secret|secretAccessKey|token|apiKey|authorization)$/i;
/**
 * Query parameter names whose values are secrets: libpq's `password`/`sslpassword`, ioredis'
 * `password`, bearer tokens, API keys, presigned-URL signatures. Compared after percent-decoding,
 * as servers decode them (`%74oken` is `token` to Fastify and to pg).
 */
const SECRET_PARAM =
  /^(password|passwd|pass|pwd|sslpassword|secret|client_secret|token|access_token|refresh_token|id_token|auth_token|api_key|apikey|key|x-amz-signature|x-amz-credential|x-amz-security-token)$/i;
/** `scheme://user:secret@`: the password is everything up to the last `@` of the authority. */
const URL_WITH_PASSWORD = /\b([a-z][a-z0-9+.-]*:\/\/[^:/?#@\s]*:)([^/?#\s]+)@/gi;
/** `name=value` after `?`, `&`, `;` or whitespace (query strings, libpq-style `k=v` lists in messages). */
const PARAM = /(^|[?&;\s])([^=&#;?\s]+)=([^&#;\s]*)/g;
/** Deeper than any payload Stowage writes; deeper input is cut rather than recursed into. */
const MAX_DEPTH = 32;

/** Whether a query parameter (or `k=v`) name carries a secret: case-insensitive, percent-decoded. */
export function isSecretParam(name: string): boolean {
  let decoded = name;
  try {
    decoded = decodeURIComponent(name.replace(/\+/g, ' '));
  } catch {
    // A malformed escape: match the raw name.
  }
  return SECRET_PARAM.test(decoded.trim());
}

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

/**
 * `scheme://user:secret@host` → `scheme://user:[redacted]@host`, and the value of every secret-named
 * parameter (`?password=`, `&%74oken=`, `sslpassword=`) → `[redacted]`, anywhere in free text.
 */
export function redactString(s: string): string {
  return s
    .replace(URL_WITH_PASSWORD, '$1[redacted]@')
    .replace(PARAM, (all, sep: string, name: string, value: string) => (value && isSecretParam(name) ? `${sep}${name}=[redacted]` : all));
}

/**
 * A connection URL safe to print: its password and secret-named query parameters replaced by
 * `redacted`, the rest as the URL parser normalizes it. Unchanged when there is nothing to hide;
 * `[redacted]` when it does not parse as a URL (it may be anything, a secret included).
 */
export function redactUrlSecrets(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return '[redacted]';
  }
  let changed = false;
  if (u.password) {
    u.password = 'redacted';
    changed = true;
  }
  const params = [...u.searchParams];
  if (params.some(([name]) => isSecretParam(name))) {
    u.search = new URLSearchParams(
      params.map(([name, value]): [string, string] => [name, isSecretParam(name) ? 'redacted' : value]),
    ).toString();
    changed = true;
  }
  return changed ? u.toString() : url;
}
