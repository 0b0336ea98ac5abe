/**
 * Route schemas from the zod schemas the handlers validate with, so each has one source. A route's
 * `schema` option holds the JSON Schema derived here, from which /openapi.json is built
 * (openapi.ts); the handler still validates with zod through `parse`.
 */
import { STATUS_CODES } from 'node:http';
import { z } from 'zod';
import { ValidationError } from '../errors.js';
import { errorBody } from './error-response.js';

/** A JSON Schema object, as `schema` options hold them. */
export type JsonSchema = Record<string, unknown>;

/** `value` as `schema` parses it, or a ValidationError (400) with one `path: message` issue per problem, `what` naming the part. */
export function parse<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const r = schema.safeParse(value);
  if (!r.success) throw ValidationError.fromZod(what, r.error);
  return r.data;
}

/**
 * The JSON Schema (2020-12, the dialect of OpenAPI 3.1) of a zod schema: what a request may send
 * (`input`, before defaults and coercion) or what a reply holds (`output`). Refinements zod cannot
 * express (e.g. safeId's "no ..") are left out; the handler's zod check still applies them. Fastify
 * compiles none of these (validatedInHandler), so its own Ajv dialect does not matter.
 */
export function jsonSchema(schema: z.ZodType, io: 'input' | 'output' = 'input'): JsonSchema {
  const { $schema: _dialect, ...rest } = z.toJSONSchema(schema, { io, target: 'draft-2020-12', unrepresentable: 'any' }) as JsonSchema;
  return inlineDefs(rest);
}

/**
 * The schema without `$defs`: each `#/$defs/…` reference replaced by its definition, and a
 * recursive one (z.json()'s arrays and objects) by `{}` (any value) where it recurs. In an OpenAPI
 * document `#/…` points at the document's root, so a route schema must not refer to itself.
 */
function inlineDefs(schema: JsonSchema): JsonSchema {
  const { $defs, ...root } = schema as JsonSchema & { $defs?: Record<string, JsonSchema> };
  if (!$defs) return schema;
  const inline = (node: unknown, expanding: ReadonlySet<string>): unknown => {
    if (Array.isArray(node)) return node.map((n) => inline(n, expanding));
    if (node === null || typeof node !== 'object') return node;
    const ref = (node as { $ref?: unknown }).$ref;
    if (typeof ref === 'string' && ref.startsWith('#/$defs/')) {
      const name = ref.slice('#/$defs/'.length);
      const def = $defs[name];
      if (!def) throw new Error(`jsonSchema: unresolved reference ${ref}`);
      if (expanding.has(name)) return {};
      const { $ref: _ref, ...siblings } = node as JsonSchema;
      return { ...(inline(def, new Set([...expanding, name])) as JsonSchema), ...siblings };
    }
    return Object.fromEntries(Object.entries(node).map(([k, v]) => [k, inline(v, expanding)]));
  };
  return inline(root, new Set()) as JsonSchema;
}

const ERROR_JSON = jsonSchema(errorBody, 'output');
const REFUSED = { ...ERROR_JSON, description: 'refused: `error.code` (STOWAGE_ERR_*) says why, `error.message` what to change' };
const FAILED = {
  ...ERROR_JSON,
  description: 'failed: a dependency did not answer (503 STOWAGE_ERR_UNREACHABLE, 502 STOWAGE_ERR_STORE) or an internal error; retry later',
};

/**
 * A route's `response` schemas: its successes (zod schemas, or JSON Schema for bodies that are not
 * JSON, e.g. `{ content: { 'text/plain': { schema } } }`) and the error body for every 4xx and 5xx.
 * A success without a description is described by its status ("Accepted"), as the document needs one.
 */
export function replies(ok: Record<number, z.ZodType | JsonSchema>): Record<string, JsonSchema> {
  const out: Record<string, JsonSchema> = {};
  for (const [status, s] of Object.entries(ok)) {
    const schema = s instanceof z.ZodType ? jsonSchema(s, 'output') : s;
    out[status] = schema.description ? schema : { ...schema, description: STATUS_CODES[status] ?? status };
  }
  return { ...out, '4xx': REFUSED, '5xx': FAILED };
}

/**
 * Route options to put beside `schema`: Fastify compiles nothing from it. zod validates in the
 * handler, after the auth check (a request without credentials is a 401 whatever its body), with
 * the messages clients rely on; Ajv would check first and word its refusals differently. Replies are
 * JSON.stringify'd as on a route without a response schema (fast-json-stringify would drop fields
 * the schema does not list). Per route, so it holds on whatever instance the routes are registered.
 */
export const validatedInHandler = {
  validatorCompiler: () => () => true,
  serializerCompiler: () => (data: unknown) => JSON.stringify(data),
};
