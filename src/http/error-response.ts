/**
 * What a refused or failed request answers: the error body every route shares, its status from
 * ERROR_CODES, and the server's error and not-found handlers.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { ERROR_CODES, StowageError, codeOf, type ErrorCode } from '../errors.js';

export const errorBody = z.object({
  error: z.object({
    code: z.enum(Object.keys(ERROR_CODES) as [ErrorCode, ...ErrorCode[]]),
    message: z.string(),
    /** A validation error's problems, one `path: message` each. */
    issues: z.array(z.string()).optional(),
  }),
  /** On a 404 for a missing artifact: the version can be rebuilt. */
  canRebuild: z.literal(true).optional(),
  /** With canRebuild: where (config artifact.rebuildUrl, seed 001's `/v1/versions/{versionId}/rebuild`). */
  rebuildUrl: z.string().optional(),
  /** With canRebuild, when artifact retention deleted the artifact: when, and why. */
  artifactDeletedAt: z.iso.datetime().optional(),
  artifactDeletedReason: z.string().optional(),
});

export type ErrorBody = z.output<typeof errorBody>;

/** Status and body for an error: StowageError codes via ERROR_CODES; never a stack trace. */
export function errorResponse(err: unknown, requestId: string): { status: number; body: ErrorBody } {
  const code = codeOf(err);
  if (code !== 'STOWAGE_ERR_INTERNAL' || err instanceof StowageError) {
    const error: ErrorBody['error'] = { code, message: (err as Error).message };
    const issues = (err as { issues?: unknown }).issues;
    if (Array.isArray(issues)) error.issues = issues.map(String);
    // A missing artifact can be rebuilt: say so, and where, as the download endpoints promise.
    const rebuild = (err as { rebuild?: Omit<ErrorBody, 'error'> }).rebuild;
    return { status: ERROR_CODES[code].http, body: rebuild ? { error, ...rebuild } : { error } };
  }
  // Fastify's own client errors (bad JSON, wrong content type, body too large) keep their status.
  const statusCode = (err as { statusCode?: unknown } | null)?.statusCode;
  if (typeof statusCode === 'number' && statusCode >= 400 && statusCode < 500) {
    return {
      status: statusCode,
      body: { error: { code: statusCode === 404 ? 'STOWAGE_ERR_NOT_FOUND' : 'STOWAGE_ERR_USAGE', message: (err as Error).message } },
    };
  }
  return {
    status: 500,
    body: { error: { code: 'STOWAGE_ERR_INTERNAL', message: `internal error (request ${requestId}); see the server log` } },
  };
}

/** The server's error handler: the mapped body, logged as a failure (5xx) or a refusal. */
export function sendError(err: unknown, req: FastifyRequest, reply: FastifyReply): FastifyReply {
  const { status, body } = errorResponse(err, req.id);
  if (status >= 500) req.log.error({ err, code: body.error.code }, 'request failed');
  else req.log.info({ code: body.error.code, message: body.error.message }, 'request refused');
  if (status === 401 && !reply.hasHeader('www-authenticate')) reply.header('www-authenticate', 'Bearer realm="stowage"');
  // EventSource and HTTP clients back off on it.
  if (body.error.code === 'STOWAGE_ERR_BUSY') reply.header('retry-after', '5');
  return reply.code(status).send(body);
}

/** The server's not-found handler: a 404 with a code, naming the path without its query. */
export function sendNotFound(req: FastifyRequest, reply: FastifyReply): FastifyReply {
  const path = req.url.split('?')[0];
  return reply
    .code(404)
    .send({ error: { code: 'STOWAGE_ERR_NOT_FOUND', message: `no route for ${req.method} ${path}` } } satisfies ErrorBody);
}
