/**
 * The auth plugin: who is calling, decided here and nowhere else. It decorates every request with
 * `request.caller` (user, tenant, role, and how they authenticated) and gives routes their checks:
 * `app.authenticateApi` (the /v1 and /api onRequest hook: cross-site refusal, then bearer tokens),
 * `app.authenticate` (the same caller, for handlers: it reuses what the hook found),
 * `app.adminOnly(action)` (a preHandler), and `app.authenticateBoard` (Bull Board's onRequest
 * hook). Basic auth is @fastify/basic-auth, the board's session cookie @fastify/cookie, bearer
 * tokens src/auth/tokens.ts.
 *
 * | route                  | no auth configured (dev) | STOWAGE_AUTH_SECRET / STOWAGE_BASIC_AUTH set          |
 * | ---------------------- | ------------------------ | ----------------------------------------------------- |
 * | /healthz /readyz       | open                     | open (probes; they say ok/fail and an error code only) |
 * | /metrics               | open                     | open (Prometheus; counts and queue names only)         |
 * | POST /v1/jobs/:kind    | open                     | bearer token with role admin; viewer gets 403          |
 * | GET /v1/jobs/:kind/:id | open                     | any valid bearer token; role user: own jobs only (404) |
 * | GET /v1/…/events (SSE) | open                     | any valid bearer token; role user: own only (events.ts) |
 * | /api/backups…          | open                     | bearer token with role admin, else 403 (backups.ts)    |
 * | GET /api/dead-letters… | open                     | bearer token, admin or viewer; user 403 (dead-letters.ts) |
 * | POST …/groups/:s/redrive | open                   | bearer token with role admin, else 403                  |
 * | /openapi.json          | open                     | open (the contract; no data)                           |
 * | /admin/queues          | open                     | basic auth (full access), or a token: admin writes,    |
 * |                        |                          | viewer reads only (writes 403, buttons hidden), user 403 |
 *
 * Basic auth is for people at the board; /v1 takes bearer tokens only. `startServer` refuses to
 * listen beyond loopback when no auth is configured, so "open" only ever means a developer's machine;
 * there, /v1 and the board also refuse a non-loopback Host (DNS rebinding).
 *
 * In every mode, auth on or off: the checks run in onRequest hooks, before the body is read, so a
 * refused request never gets its body parsed (and its connection is closed when a body is still on
 * its way); a write (POST, PUT, PATCH, DELETE) to /v1, /api or the board whose Origin, Referer or
 * Sec-Fetch-Site shows another site is refused 403 (a page cannot make a browser restore a backup
 * on a developer's machine); and past authentication, each caller is rate limited (rate-limit.ts:
 * 429 with Retry-After). Probes, /metrics and /openapi.json are neither checked nor limited.
 *
 * Browsers cannot add a bearer header to a page load, so the board also takes `?token=` once: it
 * sets an HttpOnly, SameSite=Strict cookie scoped to the board's path and redirects to the same URL
 * without the token. Board writes are refused when Origin / Referer / Sec-Fetch-Site show another
 * site; the cookie is never sent cross-site (SameSite=Strict), and basic credentials a browser
 * replays cross-site are caught by the Origin check.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';
import fastifyBasicAuth from '@fastify/basic-auth';
import fastifyCookie from '@fastify/cookie';
import type { FastifyReply, FastifyRequest, onRequestAsyncHookHandler, preHandlerAsyncHookHandler } from 'fastify';
import fp from 'fastify-plugin';
import { verifyToken, type Role } from '../auth/tokens.js';
import type { Config } from '../config.js';
import { AuthError } from '../errors.js';
import { errorResponse } from './error-response.js';

/** Cookie that carries a board token after `?token=`; scoped to the board's path. */
export const BOARD_COOKIE = 'stowage_board';

/** Who made a request. */
export interface Caller {
  userId: string;
  tenant: string;
  role: Role;
  /**
   * `bearer`: an Authorization: Bearer token; `query`: the board's `?token=` (swapped for the
   * cookie at once); `cookie`: the board's session cookie; `basic`: the board's user and password;
   * `open`: no auth configured (dev, loopback Host only).
   */
  via: 'bearer' | 'query' | 'cookie' | 'basic' | 'open';
}

const OPEN_CALLER: Caller = { userId: 'anonymous', tenant: 'anonymous', role: 'admin', via: 'open' };

export interface AuthOptions {
  config: Pick<Config, 'authSecret' | 'basicAuth'>;
  /** Where Bull Board is mounted: the session cookie's Path, and named in its 401s. */
  boardPath: string;
}

declare module 'fastify' {
  interface FastifyRequest {
    /** Who is calling, once an auth check passed; null on open routes (probes, metrics). */
    caller: Caller | null;
  }
  interface FastifyInstance {
    /**
     * The /v1 and /api onRequest hook: refuse a cross-site write, then authenticate (sets
     * request.caller); throws AuthError. Runs before the body is read.
     */
    authenticateApi(req: FastifyRequest, reply: FastifyReply): Promise<void>;
    /** The caller of an API request from its bearer token (open in dev mode); sets request.caller, else throws AuthError. */
    authenticate(req: FastifyRequest): Promise<Caller>;
    /** A preHandler: authenticate, then 403 unless the role is admin, naming the refused `action`. */
    adminOnly(action: string): preHandlerAsyncHookHandler;
    /** Bull Board's onRequest hook: CSRF, then basic auth, a token, `?token=` or the cookie; sets request.caller or answers itself. */
    authenticateBoard: onRequestAsyncHookHandler;
  }
}

export const authPlugin = fp<AuthOptions>(
  async (app, { config, boardPath }) => {
    const authEnabled = Boolean(config.authSecret || config.basicAuth);

    await app.register(fastifyCookie);
    await app.register(fastifyBasicAuth, {
      // One comparison of the whole `user:password`: which half was wrong is not said.
      validate: async (user, password) => {
        if (!config.basicAuth || !sameSecret(`${user}:${password}`, config.basicAuth)) throw new AuthError('wrong user name or password');
      },
      // The board's refusal sets the challenge, for every 401 alike (boardDeny).
      authenticate: false,
      // Spaces and tabs around the credentials, as before the plugin.
      strictCredentials: false,
    });
    app.decorateRequest('caller', null);

    const verify = async (token: string) => {
      if (!config.authSecret) throw new AuthError('bearer tokens are not enabled on this server (STOWAGE_AUTH_SECRET is not set)');
      return verifyToken(config.authSecret, token);
    };

    // ---- the API (/v1, /api) ---------------------------------------------------------------

    const apiCaller = async (req: FastifyRequest): Promise<Caller> => {
      if (!authEnabled) {
        assertLoopbackHost(req);
        return OPEN_CALLER;
      }
      const auth = req.headers.authorization;
      const bearer = auth ? parseBearer(auth) : undefined;
      if (!bearer) {
        throw new AuthError(
          auth
            ? 'the /v1 API takes bearer tokens only (Authorization: Bearer <token>)'
            : 'missing bearer token: send Authorization: Bearer <token>',
        );
      }
      const principal = await verify(bearer);
      return { userId: principal.userId, tenant: principal.tenant, role: principal.role, via: 'bearer' };
    };

    // Handlers call it again after authenticateApi: the hook's caller stands (request.caller is
    // null until an auth check passes, and only the API's checks set it on API routes).
    const authenticate = async (req: FastifyRequest): Promise<Caller> => {
      req.caller ??= await apiCaller(req);
      return req.caller;
    };
    app.decorate('authenticate', authenticate);
    app.decorate('authenticateApi', async (req: FastifyRequest, reply: FastifyReply) => {
      try {
        if (isWrite(req)) {
          const crossSite = crossSiteReason(req);
          if (crossSite) throw new AuthError(crossSite, 'STOWAGE_ERR_FORBIDDEN');
        }
        await authenticate(req);
      } catch (err) {
        closeUnreadBody(req, reply);
        throw err;
      }
    });
    app.decorate(
      'adminOnly',
      (action: string): preHandlerAsyncHookHandler =>
        async (req) => {
          const caller = await authenticate(req);
          if (caller.role !== 'admin') {
            throw new AuthError(`role "${caller.role}" may not ${action}; an admin token is required`, 'STOWAGE_ERR_FORBIDDEN');
          }
        },
    );

    // ---- Bull Board ------------------------------------------------------------------------

    /** Basic credentials through @fastify/basic-auth; any refusal of it is an AuthError. */
    const checkBasic = (req: FastifyRequest, reply: FastifyReply) =>
      new Promise<void>((resolve, reject) => {
        const basicAuth = app.basicAuth as (req: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void) => void;
        basicAuth.call(app, req, reply, (err) => {
          if (!err) resolve();
          // Its own refusals (no colon, control characters) are credentials that cannot match.
          else reject(err instanceof AuthError ? err : new AuthError('wrong user name or password'));
        });
      });

    /** The board caller, with `fromQuery` when a `?token=` must be swapped for the cookie first. */
    const boardCaller = async (
      req: FastifyRequest,
      reply: FastifyReply,
    ): Promise<{ caller: Caller; fromQuery?: { token: string; expiresAt: number } }> => {
      const auth = req.headers.authorization;
      if (auth) {
        if (isBasic(auth)) {
          if (!config.basicAuth) throw new AuthError('basic auth is not enabled on this server');
          await checkBasic(req, reply);
          const user = config.basicAuth.split(':')[0]!;
          return { caller: { userId: user, tenant: user, role: 'admin', via: 'basic' } };
        }
        const bearer = parseBearer(auth);
        if (!bearer) throw new AuthError('unsupported Authorization scheme; use Basic or Bearer');
        return { caller: fromPrincipal(await verify(bearer), 'bearer') };
      }
      const query = (req.query ?? {}) as Record<string, unknown>;
      if (typeof query.token === 'string' && (req.method === 'GET' || req.method === 'HEAD')) {
        const principal = await verify(query.token);
        return { caller: fromPrincipal(principal, 'query'), fromQuery: { token: query.token, expiresAt: principal.expiresAt } };
      }
      const cookie = sessionCookie(req);
      if (cookie) return { caller: fromPrincipal(await verify(cookie), 'cookie') };
      throw new AuthError('authentication required');
    };

    const boardDeny = (reply: FastifyReply, err: unknown): FastifyReply => {
      closeUnreadBody(reply.request, reply);
      const { status, body } = errorResponse(err, reply.request.id);
      if (status === 401) {
        // A Basic challenge makes a browser prompt for the user and password.
        reply.header('www-authenticate', config.basicAuth ? 'Basic realm="stowage", charset="UTF-8"' : 'Bearer realm="stowage"');
        if (config.authSecret) body.error.message += `; with a token, open ${boardPath}?token=<token>`;
      }
      return reply.code(status).send(body);
    };

    const cookieOptions = (req: FastifyRequest) => ({
      path: boardPath,
      httpOnly: true,
      sameSite: 'strict' as const,
      secure: req.protocol === 'https',
    });

    app.decorate('authenticateBoard', async (req: FastifyRequest, reply: FastifyReply) => {
      const write = isWrite(req);
      if (write) {
        const crossSite = crossSiteReason(req);
        if (crossSite) return boardDeny(reply, new AuthError(crossSite, 'STOWAGE_ERR_FORBIDDEN'));
      }
      if (!authEnabled) {
        try {
          assertLoopbackHost(req);
        } catch (err) {
          return boardDeny(reply, err);
        }
        req.caller = OPEN_CALLER;
        return;
      }
      let found: Awaited<ReturnType<typeof boardCaller>>;
      try {
        found = await boardCaller(req, reply);
      } catch (err) {
        // A stale or tampered cookie would otherwise fail every request until it expires.
        if (sessionCookie(req)) reply.clearCookie(BOARD_COOKIE, cookieOptions(req));
        return boardDeny(reply, err);
      }
      const { caller, fromQuery } = found;
      if (caller.role === 'user') {
        return boardDeny(
          reply,
          new AuthError('the board is for operators; a user token may not open it (use an admin or viewer token)', 'STOWAGE_ERR_FORBIDDEN'),
        );
      }
      if (fromQuery) {
        const maxAge = fromQuery.expiresAt - Math.floor(Date.now() / 1000);
        const url = new URL(req.url, 'http://board.invalid');
        url.searchParams.delete('token');
        // Redirect so the token leaves the address bar and history; the cookie carries it from here.
        return reply
          .setCookie(BOARD_COOKIE, fromQuery.token, { ...cookieOptions(req), maxAge: Math.max(0, maxAge) })
          .header('cache-control', 'no-store')
          .header('referrer-policy', 'no-referrer')
          .redirect(url.pathname + url.search, 303);
      }
      if (write && caller.role !== 'admin') {
        return boardDeny(
          reply,
          new AuthError('viewers have a read-only board; an admin token or basic auth is required to change jobs', 'STOWAGE_ERR_FORBIDDEN'),
        );
      }
      req.caller = caller;
    });
  },
  { name: 'stowage-auth', fastify: '5.x' },
);

const fromPrincipal = (p: { userId: string; tenant: string; role: Role }, via: Caller['via']): Caller => ({
  userId: p.userId,
  tenant: p.tenant,
  role: p.role,
  via,
});

/** The board's session cookie (parsed by @fastify/cookie), or undefined when absent or empty. */
function sessionCookie(req: FastifyRequest): string | undefined {
  return req.cookies[BOARD_COOKIE] || undefined;
}

/** True for addresses only this machine can reach. */
export function isLoopback(host: string): boolean {
  const h = host
    .trim()
    .toLowerCase()
    .replace(/^\[(.*)\]$/, '$1');
  if (h === 'localhost') return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  if (isIP(h) === 6) return h === '::1' || /^::ffff:127\./.test(h);
  return false;
}

/**
 * In the no-auth mode, serve only requests addressed to a loopback name. A hostile page can point
 * its own domain at 127.0.0.1 (DNS rebinding): its requests then pass the Origin check, but carry
 * its Host.
 */
function assertLoopbackHost(req: FastifyRequest): void {
  const host = req.host.startsWith('[') ? req.host.slice(0, req.host.indexOf(']') + 1) : req.host.split(':')[0]!;
  if (!isLoopback(host)) {
    throw new AuthError(
      `no authentication is configured, so only loopback host names are served (got Host ${host}); set STOWAGE_AUTH_SECRET or STOWAGE_BASIC_AUTH`,
      'STOWAGE_ERR_FORBIDDEN',
    );
  }
}

function parseBearer(header: string): string | undefined {
  return /^Bearer\s+([A-Za-z0-9._~+/=-]+)\s*$/i.exec(header)?.[1];
}

/** Whether a header is Basic credentials (checked by @fastify/basic-auth); anything else must be Bearer. */
function isBasic(header: string): boolean {
  return /^Basic\s+[A-Za-z0-9+/=]*\s*$/i.test(header);
}

/** Constant-time comparison that also hides the length. */
function sameSecret(a: string, b: string): boolean {
  return timingSafeEqual(createHash('sha256').update(a).digest(), createHash('sha256').update(b).digest());
}

/** Whether a request may change something (anything but GET and HEAD): what the cross-site check refuses. */
function isWrite(req: FastifyRequest): boolean {
  return req.method !== 'GET' && req.method !== 'HEAD';
}

/**
 * On a refusal before the body was read: close the connection after the answer instead of
 * reading (and discarding) whatever body the client is still sending.
 */
export function closeUnreadBody(req: FastifyRequest, reply: FastifyReply): void {
  const length = req.headers['content-length'];
  const pending = req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
  if (pending && !req.raw.complete) reply.header('connection', 'close');
}

/**
 * Why a write to the API or the board looks cross-site, or undefined. Origin (or Referer when
 * Origin is absent) must name this Host; Sec-Fetch-Site, sent by current browsers, must say
 * same-origin. Absent headers pass: non-browser clients (curl, the CLI, the SDK) send none.
 */
function crossSiteReason(req: FastifyRequest): string | undefined {
  const site = req.headers['sec-fetch-site'];
  if (typeof site === 'string' && site !== 'same-origin' && site !== 'none') {
    return `cross-site request refused (Sec-Fetch-Site: ${site})`;
  }
  const host = req.host.toLowerCase();
  const hostOf = (value: string) => {
    try {
      return new URL(value).host.toLowerCase();
    } catch {
      return undefined;
    }
  };
  const origin = req.headers.origin;
  if (origin !== undefined) {
    return hostOf(origin) === host ? undefined : `cross-origin request refused: Origin does not match Host ${host}`;
  }
  const referer = req.headers.referer;
  if (referer !== undefined) {
    return hostOf(referer) === host ? undefined : `cross-origin request refused: Referer does not match Host ${host}`;
  }
  return undefined;
}
