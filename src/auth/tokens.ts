/**
 * Bearer tokens: HS256 JWTs signed with `STOWAGE_AUTH_SECRET`, issuer `stowage`.
 *
 * Claims: `sub` (user id), `tenant` (defaults to the user id), `role` (`admin` | `viewer`), `iat`,
 * `exp`. Every token expires; there is no way to mint one that does not.
 *
 * Roles, as the HTTP server enforces them:
 * - `admin`: enqueue (POST /v1/jobs/:kind), read every job and event, and a writable Bull Board.
 * - `viewer`: an operator who looks: every job and event, and a read-only Bull Board; enqueueing
 *   is refused with 403.
 * - `user`: an application's end user: their own records, artifacts, jobs and events only (a job
 *   or event of another user answers 404 / is not sent), no Bull Board. Least privilege, so it is
 *   the default role.
 */
import { SignJWT, errors as joseErrors, jwtVerify } from 'jose';
import { z } from 'zod';
import { AuthError, StowageError } from '../errors.js';
import { safeId } from '../ids.js';

export const TOKEN_ISSUER = 'stowage';
export const TOKEN_ALGORITHM = 'HS256';
export const ROLES = ['admin', 'viewer', 'user'] as const;
export type Role = (typeof ROLES)[number];

/** Longest lifetime a token may have: a year. Longer-lived credentials should be rotated secrets. */
export const MAX_TTL_SECONDS = 366 * 86_400;

/** Tokens minted on one host are verified on another: allow this much clock skew. */
const CLOCK_TOLERANCE_SECONDS = 5;

export interface TokenOptions {
  /** User id; becomes `sub`. Same rules as ids in payloads (no `/`, `..`, control characters). */
  user: string;
  /** Tenant; defaults to the user id. */
  tenant?: string;
  /** Default `user` (least privilege). */
  role?: Role;
  /** `30m`, `1h`, `7d`, `45s`, or a number of seconds. Default `1h`; at most 366 days. */
  ttl?: string | number;
}

export interface Principal {
  userId: string;
  tenant: string;
  role: Role;
  /** Expiry, seconds since the epoch. */
  expiresAt: number;
}

/**
 * Whether a caller may see a job or event owned by `owner` (its payload's / data's `userId`).
 * Operators (admin, viewer) see everything; a `user` sees only what carries their own user id.
 */
export function mayRead(caller: { userId: string; role: Role }, owner: unknown): boolean {
  return caller.role !== 'user' || (typeof owner === 'string' && owner === caller.userId);
}

const UNIT_SECONDS = { s: 1, m: 60, h: 3600, d: 86_400 } as const;

/** `ttl` in seconds; throws STOWAGE_ERR_USAGE naming the bad value. */
export function parseTtl(ttl: string | number): number {
  let seconds: number | undefined;
  if (typeof ttl === 'number') {
    seconds = Number.isSafeInteger(ttl) && ttl > 0 ? ttl : undefined;
  } else {
    // Strict: one positive integer and one unit, no spaces, no fractions, no compound forms.
    const match = /^([1-9][0-9]{0,8})([smhd]?)$/.exec(ttl);
    if (match) seconds = Number(match[1]) * UNIT_SECONDS[(match[2] || 's') as keyof typeof UNIT_SECONDS];
  }
  if (seconds === undefined) {
    throw new StowageError(
      'STOWAGE_ERR_USAGE',
      `invalid ttl ${JSON.stringify(ttl)}: expected a positive whole number of seconds or <n>s, <n>m, <n>h, <n>d (e.g. 30m, 1h, 7d)`,
    );
  }
  if (seconds > MAX_TTL_SECONDS) {
    throw new StowageError('STOWAGE_ERR_USAGE', `invalid ttl ${JSON.stringify(ttl)}: at most ${MAX_TTL_SECONDS / 86_400} days`);
  }
  return seconds;
}

function keyFrom(secret: string): Uint8Array {
  // config.ts enforces this too; a library caller may bypass config, so check again.
  if (typeof secret !== 'string' || secret.length < 32) {
    throw new StowageError('STOWAGE_ERR_CONFIG', 'the token secret (STOWAGE_AUTH_SECRET) must be at least 32 characters');
  }
  return new TextEncoder().encode(secret);
}

function checkId(what: string, value: unknown): string {
  const result = safeId.safeParse(value);
  if (!result.success) {
    throw new StowageError('STOWAGE_ERR_USAGE', `invalid ${what}: ${result.error.issues.map((i) => i.message).join('; ')}`);
  }
  return result.data;
}

/** Mint a signed token. */
export async function createToken(secret: string, options: TokenOptions): Promise<string> {
  const key = keyFrom(secret);
  const user = checkId('user', options.user);
  const tenant = checkId('tenant', options.tenant ?? user);
  const role = options.role ?? 'user';
  if (!(ROLES as readonly string[]).includes(role)) {
    throw new StowageError('STOWAGE_ERR_USAGE', `invalid role ${JSON.stringify(role)}: expected one of ${ROLES.join(', ')}`);
  }
  const ttl = parseTtl(options.ttl ?? '1h');
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ tenant, role })
    .setProtectedHeader({ alg: TOKEN_ALGORITHM, typ: 'JWT' })
    .setIssuer(TOKEN_ISSUER)
    .setSubject(user)
    .setIssuedAt(now)
    .setExpirationTime(now + ttl)
    .sign(key);
}

const claimsSchema = z.object({
  sub: safeId,
  tenant: safeId,
  role: z.enum(ROLES),
  exp: z.number().int(),
});

/** Verify a token; returns who it names or throws AuthError (STOWAGE_ERR_UNAUTHORIZED) saying why. */
export async function verifyToken(secret: string, token: string): Promise<Principal> {
  const key = keyFrom(secret);
  let payload: unknown;
  try {
    ({ payload } = await jwtVerify(token, key, {
      algorithms: [TOKEN_ALGORITHM],
      issuer: TOKEN_ISSUER,
      requiredClaims: ['sub', 'exp', 'iat'],
      clockTolerance: CLOCK_TOLERANCE_SECONDS,
    }));
  } catch (err) {
    throw new AuthError(describeJoseError(err));
  }
  const claims = claimsSchema.safeParse(payload);
  if (!claims.success) {
    const fields = [...new Set(claims.error.issues.map((i) => i.path.join('.') || '(claims)'))];
    throw new AuthError(`token claims are invalid: ${fields.join(', ')}`);
  }
  const { sub, tenant, role, exp } = claims.data;
  return { userId: sub, tenant, role, expiresAt: exp };
}

/** A message a caller can act on, checked by error class (jose's codes), never by its text. */
function describeJoseError(err: unknown): string {
  if (err instanceof joseErrors.JWTExpired) {
    const exp = (err.payload as { exp?: unknown }).exp;
    const when = typeof exp === 'number' ? ` at ${new Date(exp * 1000).toISOString()}` : '';
    return `token expired${when}; ask for a new one`;
  }
  if (err instanceof joseErrors.JWSSignatureVerificationFailed) {
    return 'token signature is invalid: it was altered or signed with another secret';
  }
  if (err instanceof joseErrors.JOSEAlgNotAllowed) return `token algorithm is not allowed; expected ${TOKEN_ALGORITHM}`;
  if (err instanceof joseErrors.JWTClaimValidationFailed) return `token claim "${err.claim}" is invalid (${err.reason})`;
  if (err instanceof joseErrors.JWSInvalid || err instanceof joseErrors.JWTInvalid) return 'token is malformed';
  return 'token could not be verified';
}
