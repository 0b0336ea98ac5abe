/**
 * Artifact downloads: `GET /v1/projects/:projectId/export` (the latest version with an artifact)
 * and `GET /v1/versions/:versionId/download`. The user comes from the bearer token; another user's
 * project or version answers 404, never 403, so ids cannot be probed. Links are presigned GET URLs
 * that download as an attachment, 24 h by default (`?expiresIn=` seconds, at most 7 days).
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Logger } from '../observability/logger.js';
import { z } from 'zod';
import type { Db } from '../db/pool.js';
import {
  findUserVersion,
  getLatestProjectVersion,
  getLatestProjectVersionWithArtifact,
  type ProjectVersion,
} from '../db/project-versions.js';
import { StowageError } from '../errors.js';
import { safeId } from '../ids.js';
import type { Storage } from '../storage/client.js';
import { MAX_PRESIGN_SECONDS } from '../storage/client.js';
import { parseObjectUrl } from '../storage/keys.js';
import { DEFAULT_PRESIGN_SECONDS, presignDownload } from '../storage/presign.js';
import { jsonSchema, parse, replies, validatedInHandler } from './schemas.js';

export interface ArtifactRoutesDeps {
  db: Db;
  /** config.artifact.rebuildUrl: `{userId}`, `{projectId}`, `{versionId}` are filled in. */
  rebuildUrl: string;
  storage: () => Storage;
  authenticate: (req: FastifyRequest) => Promise<{ userId: string }>;
}

const query = z.strictObject({
  expiresIn: z.coerce.number().int().min(1).max(MAX_PRESIGN_SECONDS, `at most ${MAX_PRESIGN_SECONDS} seconds (7 days)`).optional(),
  projectId: safeId.optional(),
});

const downloadLink = z.object({
  downloadUrl: z.url().describe('a presigned GET URL: a bearer credential until it expires'),
  expiresAt: z.iso.datetime(),
  filename: z.string(),
  size: z.number().int().nullable(),
});
const versionDownload = downloadLink.extend({ version: z.object({ id: z.string(), projectId: z.string(), createdAt: z.iso.datetime() }) });

const exportSchema = {
  params: jsonSchema(z.object({ projectId: safeId })),
  querystring: jsonSchema(query),
  response: replies({ 200: downloadLink }),
};
const downloadSchema = {
  params: jsonSchema(z.object({ versionId: safeId })),
  querystring: jsonSchema(query),
  response: replies({ 200: versionDownload }),
};

/**
 * 404 with `canRebuild: true` and the `rebuildUrl`: the version exists (or may), but has no stored
 * artifact; when retention deleted it, also when and why.
 */
class NoArtifactError extends StowageError {
  readonly rebuild: { canRebuild: true; rebuildUrl?: string; artifactDeletedAt?: string; artifactDeletedReason?: string };
  constructor(message: string, rebuildUrl: string | null, version?: ProjectVersion | null) {
    super('STOWAGE_ERR_NOT_FOUND', message);
    this.name = 'NoArtifactError';
    this.rebuild = {
      canRebuild: true,
      ...(rebuildUrl ? { rebuildUrl } : {}),
      ...(version?.artifactDeletedAt
        ? { artifactDeletedAt: version.artifactDeletedAt.toISOString(), artifactDeletedReason: version.artifactDeletedReason ?? '' }
        : {}),
    };
  }
}

/** The rebuild link of a version, from the configured template (ids are safe in a URL path: safeId). */
export function rebuildUrlOf(template: string, v: Pick<ProjectVersion, 'userId' | 'projectId' | 'versionId'>): string {
  return template.replace(/\{(userId|projectId|versionId)\}/g, (_, name: 'userId' | 'projectId' | 'versionId') =>
    encodeURIComponent(v[name]),
  );
}

/** The server's instance type (its logger is our pino logger). */
type App = FastifyInstance<Server, IncomingMessage, ServerResponse, Logger>;

export function registerArtifactRoutes(app: App, deps: ArtifactRoutesDeps): void {
  const link = async (v: ProjectVersion, filename: string, expiresIn: number | undefined): Promise<z.output<typeof downloadLink>> => {
    const where = v.artifactUrl ? parseObjectUrl(v.artifactUrl) : null;
    if (!where) throw new NoArtifactError(`version ${v.versionId} has no artifact`, rebuildUrlOf(deps.rebuildUrl, v), v);
    const storage = deps.storage();
    if (where.bucket !== storage.bucket) {
      throw new StowageError(
        'STOWAGE_ERR_STORE',
        `the artifact of version ${v.versionId} is in bucket ${where.bucket}, not the configured ${storage.bucket}`,
      );
    }
    const signed = await presignDownload(storage, { key: where.key, filename, expiresInSeconds: expiresIn ?? DEFAULT_PRESIGN_SECONDS });
    return { downloadUrl: signed.url, expiresAt: signed.expiresAt.toISOString(), filename: signed.filename, size: v.artifactSize };
  };

  // The signed URL is a bearer credential until it expires: keep it out of shared caches.
  const noStore = { 'cache-control': 'no-store' };

  app.get<{ Params: { projectId: string }; Querystring: Record<string, string> }>(
    '/v1/projects/:projectId/export',
    { schema: exportSchema, ...validatedInHandler },
    async (req, reply) => {
      const caller = await deps.authenticate(req);
      const projectId = parse(safeId, req.params.projectId, 'projectId');
      const { expiresIn } = parse(query, req.query, 'query');
      const latest = await getLatestProjectVersionWithArtifact(deps.db, caller.userId, projectId);
      if (!latest) {
        // Rebuilding means the newest version, when the project has one.
        const newest = await getLatestProjectVersion(deps.db, caller.userId, projectId);
        throw new NoArtifactError(
          `project ${projectId} has no version with an artifact`,
          newest ? rebuildUrlOf(deps.rebuildUrl, newest) : null,
          newest,
        );
      }
      return reply.headers(noStore).send(await link(latest, `${projectId}-latest.zip`, expiresIn));
    },
  );

  app.get<{ Params: { versionId: string }; Querystring: Record<string, string> }>(
    '/v1/versions/:versionId/download',
    { schema: downloadSchema, ...validatedInHandler },
    async (req, reply) => {
      const caller = await deps.authenticate(req);
      const versionId = parse(safeId, req.params.versionId, 'versionId');
      const { expiresIn, projectId } = parse(query, req.query, 'query');
      const { version, matches } = await findUserVersion(deps.db, caller.userId, versionId, projectId);
      if (!version) throw new StowageError('STOWAGE_ERR_NOT_FOUND', `version ${versionId} not found`);
      if (matches > 1) {
        throw new StowageError('STOWAGE_ERR_USAGE', `version id ${versionId} exists in ${matches} of your projects: add ?projectId=`);
      }
      if (!version.artifactUrl) {
        const why = version.artifactDeletedAt
          ? `: artifact retention deleted it on ${version.artifactDeletedAt.toISOString().slice(0, 10)}`
          : '';
        throw new NoArtifactError(`version ${versionId} has no artifact${why}`, rebuildUrlOf(deps.rebuildUrl, version), version);
      }
      const body = await link(version, `${version.projectId}-${versionId}.zip`, expiresIn);
      return reply
        .headers(noStore)
        .send({ ...body, version: { id: version.versionId, projectId: version.projectId, createdAt: version.createdAt.toISOString() } });
    },
  );
}
