import { randomBytes } from 'node:crypto';
import { SignJWT } from 'jose';
import { describe, expect, it } from 'vitest';
import { createToken, parseTtl, verifyToken } from '../../src/auth/tokens.js';
import { AuthError, StowageError } from '../../src/errors.js';

const secret = randomBytes(32).toString('hex');
const key = new TextEncoder().encode(secret);

async function rejection(promise: Promise<unknown>): Promise<StowageError> {
  const err = await promise.then(
    () => {
      throw new Error('expected a rejection');
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(StowageError);
  return err as StowageError;
}

describe('tokens', () => {
  it('round-trips user, tenant and role, with tenant defaulting to the user', async () => {
    const admin = await verifyToken(secret, await createToken(secret, { user: 'alice', tenant: 'acme', role: 'admin', ttl: '30m' }));
    expect(admin).toMatchObject({ userId: 'alice', tenant: 'acme', role: 'admin' });
    const nowSeconds = Date.now() / 1000;
    expect(admin.expiresAt).toBeGreaterThan(nowSeconds + 29 * 60);
    expect(admin.expiresAt).toBeLessThanOrEqual(nowSeconds + 30 * 60 + 1);

    // Least privilege by default: an end user, not an operator.
    const user = await verifyToken(secret, await createToken(secret, { user: 'bob' }));
    expect(user).toMatchObject({ userId: 'bob', tenant: 'bob', role: 'user' });
  });

  it('rejects a tampered payload and a token signed with another secret', async () => {
    const token = await createToken(secret, { user: 'alice', role: 'viewer' });
    const [header, payload, signature] = token.split('.') as [string, string, string];
    const claims = JSON.parse(Buffer.from(payload, 'base64url').toString()) as Record<string, unknown>;
    const forged = Buffer.from(JSON.stringify({ ...claims, role: 'admin' })).toString('base64url');
    const tampered = await rejection(verifyToken(secret, `${header}.${forged}.${signature}`));
    expect(tampered).toBeInstanceOf(AuthError);
    expect(tampered.code).toBe('STOWAGE_ERR_UNAUTHORIZED');
    expect(tampered.message).toMatch(/signature is invalid/);

    const other = await rejection(verifyToken(secret, await createToken(randomBytes(32).toString('hex'), { user: 'alice' })));
    expect(other.message).toMatch(/signature is invalid/);

    const garbage = await rejection(verifyToken(secret, 'not-a-jwt'));
    expect(garbage.code).toBe('STOWAGE_ERR_UNAUTHORIZED');
    expect(garbage.message).toMatch(/malformed/);
  });

  it('rejects an expired token, saying so', async () => {
    const issued = Math.floor(Date.now() / 1000) - 7200;
    const expired = await new SignJWT({ tenant: 'alice', role: 'admin' })
      .setProtectedHeader({ alg: 'HS256' })
      .setIssuer('stowage')
      .setSubject('alice')
      .setIssuedAt(issued)
      .setExpirationTime(issued + 3600)
      .sign(key);
    const err = await rejection(verifyToken(secret, expired));
    expect(err.code).toBe('STOWAGE_ERR_UNAUTHORIZED');
    expect(err.message).toMatch(/^token expired at \d{4}-/);
  });

  it('rejects a validly signed token from another issuer or with an unknown role', async () => {
    const now = Math.floor(Date.now() / 1000);
    const sign = (claims: Record<string, unknown>, issuer: string) =>
      new SignJWT(claims)
        .setProtectedHeader({ alg: 'HS256' })
        .setIssuer(issuer)
        .setSubject('alice')
        .setIssuedAt(now)
        .setExpirationTime(now + 60)
        .sign(key);
    expect((await rejection(verifyToken(secret, await sign({ tenant: 'a', role: 'admin' }, 'someone-else')))).message).toMatch(
      /claim "iss"/,
    );
    expect((await rejection(verifyToken(secret, await sign({ tenant: 'a', role: 'root' }, 'stowage')))).message).toMatch(
      /claims are invalid: role/,
    );
  });

  it('parses ttl strictly and names a bad one', async () => {
    expect(parseTtl('45s')).toBe(45);
    expect(parseTtl('30m')).toBe(1800);
    expect(parseTtl('1h')).toBe(3600);
    expect(parseTtl('7d')).toBe(7 * 86_400);
    expect(parseTtl(90)).toBe(90);
    expect(parseTtl('90')).toBe(90);
    for (const bad of ['1.5h', '1 h', '-1h', '0', '1w', 'h', '', '1h30m', 0, -5, 1.5, '400d']) {
      let err: unknown;
      try {
        parseTtl(bad);
      } catch (e) {
        err = e;
      }
      expect(err, `ttl ${JSON.stringify(bad)}`).toBeInstanceOf(StowageError);
      expect((err as StowageError).code).toBe('STOWAGE_ERR_USAGE');
      expect((err as StowageError).message).toContain(`invalid ttl ${JSON.stringify(bad)}`);
    }
    const viaCreate = await rejection(createToken(secret, { user: 'alice', ttl: '2 weeks' }));
    expect(viaCreate.code).toBe('STOWAGE_ERR_USAGE');
    expect(viaCreate.message).toContain('"2 weeks"');
  });

  it('refuses a short secret and a bad user id', async () => {
    expect((await rejection(createToken('short', { user: 'alice' }))).code).toBe('STOWAGE_ERR_CONFIG');
    expect((await rejection(createToken(secret, { user: '../etc' }))).code).toBe('STOWAGE_ERR_USAGE');
  });
});
