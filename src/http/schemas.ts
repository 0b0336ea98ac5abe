/**
 * Route schemas from the zod schemas the handlers validate with, so each has one source. A route's
 * `schema` option holds the JSON Schema derived here (documentation, the OpenAPI work builds on
 * it); the handler still validates with zod through `parse`.
 */
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
 * The JSON Schema (draft-07, Fastify's dialect) of a zod schema: what a request may send (`input`,
 * before defaults and coercion) or what a reply holds (`output`). Refinements zod cannot express
 * (e.g. safeId's "no ..") are left out; the handler's zod check still applies them.
 */
export function jsonSchema(schema: z.ZodType, io: 'input' | 'output' = 'input'): JsonSchema {
  const { $schema: _dialect, ...rest } = z.toJSONSchema(schema, { io, target: 'draft-7', unrepresentable: 'any' }) as JsonSchema;
  return rest;
}

const ERROR_JSON = jsonSchema(errorBody, 'output');

/**
 * A route's `response` schemas: its successes (zod schemas, or JSON Schema for bodies that are not
 * JSON, e.g. `{ content: { 'text/plain': { schema } } }`) and the error body for every 4xx and 5xx.
 */
export function replies(ok: Record<number, z.ZodType | JsonSchema>): Record<string, JsonSchema> {
  const out: Record<string, JsonSchema> = {};
  for (const [status, s] of Object.entries(ok)) out[status] = s instanceof z.ZodType ? jsonSchema(s, 'output') : s;
  return { ...out, '4xx': ERROR_JSON, '5xx': ERROR_JSON };
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
