/**
 * The OpenAPI 3.1 contract, `GET /openapi.json`: @fastify/swagger builds it from every route's
 * `schema` (JSON Schema derived from the zod schemas the handlers and the SDK validate with, see
 * schemas.ts), so the document and the code have one source. Each operation gets its tag (route
 * group), operationId and security from its path here, unless its schema declares its own.
 *
 * The document is open like /healthz and /readyz: it says what the API accepts, nothing about what
 * it holds. Bull Board's entry page is listed; its internal routes (/admin/queues/api/…, static
 * files) are hidden: they are @bull-board's UI API, change with its versions, and are not a
 * contract for services.
 */
import fastifySwagger from '@fastify/swagger';
import type { FastifyPluginAsync, FastifySchema } from 'fastify';
import fp from 'fastify-plugin';
import { z } from 'zod';
import { VERSION } from '../version.js';
import { BOARD_COOKIE } from './auth.js';
import { BOARD_PATH } from './board.js';
import { replies, validatedInHandler } from './schemas.js';

export const OPENAPI_PATH = '/openapi.json';

/** Routes open whatever auth is configured (auth.ts). */
const OPEN_PATHS = new Set(['/healthz', '/readyz', '/metrics', OPENAPI_PATH]);

const BEARER = [{ bearer: [] }];
const BOARD_SECURITY = [{ basic: [] }, { bearer: [] }, { boardSession: [] }];

/** Route groups, as the document's tags; a group not listed here still gets its tag, without a description. */
const TAGS: Record<string, string> = {
  jobs: 'Enqueue jobs and read their state (POST needs an admin token)',
  events: 'Server-Sent Events: one job live, or every domain event',
  records: 'Store, list, search and fetch records (also under /api/v1/records)',
  artifacts: 'Presigned downloads of build artifacts',
  failures: "The failure catalog, scoped to the token's tenant",
  backups: 'Database backups and restores (admin tokens only)',
  'dead-letters': 'Parked jobs, grouped by cause, and redrives (admin and viewer tokens; redrive: admin)',
  probes: 'Liveness and readiness, open',
  metrics: 'Prometheus metrics, open',
  board: 'Bull Board, for people (its own UI routes are not part of this contract)',
  openapi: 'This document, open',
};

/** A path segment naming its group differently from the group's tag. */
const SEGMENT_TAGS: Record<string, string> = {
  projects: 'artifacts',
  versions: 'artifacts',
  healthz: 'probes',
  readyz: 'probes',
  'openapi.json': 'openapi',
};

/** The tag of a route: `/v1/jobs/:kind` → jobs, `/api/v1/failures` → failures, an SSE route → events. */
export function tagOf(url: string): string {
  if (url === BOARD_PATH || url.startsWith(`${BOARD_PATH}/`)) return 'board';
  if (/\/events$/.test(url)) return 'events';
  const first = url.split('/').find((s) => s !== '' && s !== 'api' && !/^v\d+$/.test(s)) ?? 'root';
  return SEGMENT_TAGS[first] ?? first;
}

/** `POST /v1/jobs/:kind` → postV1JobsKind: stable, unique per method and path, an identifier in any language. */
export function operationIdOf(method: string, url: string): string {
  const words = url
    .split(/[^A-Za-z0-9]+/)
    .filter(Boolean)
    .map((w) => w[0]!.toUpperCase() + w.slice(1));
  return method.toLowerCase() + words.join('');
}

type Security = NonNullable<FastifySchema['security']>;

function securityOf(url: string): Security {
  if (OPEN_PATHS.has(url)) return [];
  if (tagOf(url) === 'board') return BOARD_SECURITY;
  return BEARER;
}

/** A route's schema as documented: its own tags, operationId and security, else those its path gives. */
function document(schema: FastifySchema, url: string, method: string): FastifySchema {
  return {
    ...schema,
    tags: schema.tags ?? [tagOf(url)],
    operationId: schema.operationId ?? operationIdOf(method, url),
    security: schema.security ?? securityOf(url),
  };
}

const boardPage: FastifySchema = {
  description:
    `Bull Board, for people in a browser. Basic auth (STOWAGE_BASIC_AUTH), a bearer token, or ` +
    `\`?token=<token>\` once: it is swapped for the \`${BOARD_COOKIE}\` cookie and a redirect to the same URL.`,
  querystring: { type: 'object', properties: { token: { type: 'string', description: 'a bearer token, swapped for the cookie' } } },
  response: {
    200: { description: 'the board page', content: { 'text/html': { schema: { type: 'string' } } } },
    303: { description: 'after `?token=`: the cookie is set, and the same URL without the token follows', type: 'null' },
    ...replies({}),
  },
};

const documentSchema = {
  response: replies({
    200: z.looseObject({ openapi: z.string(), info: z.looseObject({}), paths: z.looseObject({}) }).describe('this OpenAPI 3.1 document'),
  }),
};

/**
 * @fastify/swagger and `GET /openapi.json`. Register it before the routes: it collects them with
 * an onRoute hook.
 */
export const openapiPlugin: FastifyPluginAsync = fp(
  async (app) => {
    await app.register(fastifySwagger, {
      openapi: {
        openapi: '3.1.0',
        info: {
          title: 'Stowage',
          version: VERSION,
          description:
            'Enqueue and follow Stowage jobs, read records, artifacts and failures. Errors are ' +
            '`{"error": {"code", "message"}}` with a stable STOWAGE_ERR_* code. docs/api.md shows it from curl and Python.',
        },
        components: {
          securitySchemes: {
            bearer: {
              type: 'http',
              scheme: 'bearer',
              bearerFormat: 'JWT',
              description: 'a token from `stowage token create --user ID --role admin|viewer|user`',
            },
            basic: { type: 'http', scheme: 'basic', description: 'STOWAGE_BASIC_AUTH user:password; Bull Board only' },
            boardSession: { type: 'apiKey', in: 'cookie', name: BOARD_COOKIE, description: "Bull Board's session, set after ?token=" },
          },
        },
      },
      // `const` is JSON Schema 2020-12, valid in OpenAPI 3.1: keep zod's schemas as they are.
      convertConstToEnum: false,
      transform: ({ schema, url, route }) => {
        const method = Array.isArray(route.method) ? route.method[0]! : route.method;
        if (tagOf(url) === 'board') {
          // Bull Board hides its routes itself; its page (registered as `/` under the prefix, so
          // seen here as BOARD_PATH/) is listed, for the people who open it and its auth schemes.
          const page = method === 'GET' && (url === BOARD_PATH || url === `${BOARD_PATH}/`);
          return page ? { schema: document(boardPage, BOARD_PATH, method), url: BOARD_PATH } : { schema: { ...schema, hide: true }, url };
        }
        return { schema: document(schema ?? {}, url, method), url };
      },
      // The tags in use, in a stable order, with what each group is.
      transformObject: (documentObject) => {
        if (!('openapiObject' in documentObject)) return documentObject.swaggerObject;
        const { openapiObject } = documentObject;
        const used = new Set<string>();
        for (const item of Object.values(openapiObject.paths ?? {})) {
          for (const op of Object.values(item ?? {})) for (const t of (op as { tags?: string[] }).tags ?? []) used.add(t);
        }
        const tags = [...used].sort().map((name) => (TAGS[name] ? { name, description: TAGS[name] } : { name }));
        return { ...openapiObject, tags };
      },
    });

    // The document is built once, on the first request, from the routes registered by then (all of them).
    app.get(OPENAPI_PATH, { schema: documentSchema, ...validatedInHandler }, async () => app.swagger());
  },
  { name: 'stowage-openapi', fastify: '5.x' },
);
