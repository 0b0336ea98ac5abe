/**
 * Backup operations over HTTP, admin bearer token only (no token 401, any other role 403):
 *
 * | route                                  |                                                        |
 * | -------------------------------------- | ------------------------------------------------------ |
 * | GET    /api/backups                    | ?set: name, set, age, size… newest first               |
 * | POST   /api/backups/now                | {set} or {name, sqlite, postgres}: enqueue; 202 {jobId} |
 * |                                        | (a postgres URL with a password: 400, see payloads.ts)  |
 * | GET    /api/backups/:name/download     | the archive, streamed (x-checksum-sha256 header)       |
 * | DELETE /api/backups/:name              | archive and sidecar removed, row marked deleted        |
 * | POST   /api/backups/test-connection    | put/head/get/list/delete a probe; 200 ok, 502 failed   |
 * | POST   /api/backups/:name/restore      | {to?, pgDatabase?, force?}: stage on this server        |
 * |                                        | (`to` outside the source roots: 400, or 422 via a link) |
 * | POST   /api/backups/cancel-restore     | {dir}: throw a staged restore away                     |
 *
 * Apply stays a CLI / start-up step: it must run with the application stopped, on its host.
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { z } from 'zod';
import type { Role } from '../auth/tokens.js';
import { defaultSourceRoots, type Config } from '../config.js';
import { deleteBackupObject, describeBackup, resolveBackup } from '../backups/catalog.js';
import { cancelRestore, stageRestore } from '../backups/restore.js';
import { listAllBackups, markBackupDeleted } from '../db/backups.js';
import type { Db } from '../db/pool.js';
import { AuthError, ValidationError } from '../errors.js';
import { absolutePath, safeId } from '../ids.js';
import type { Logger } from '../observability/logger.js';
import type { Producer } from '../producers/index.js';
import type { PayloadInput } from '../queues/index.js';
import type { Storage } from '../storage/client.js';
import { backupName } from '../storage/keys.js';
import { storeError } from '../storage/store-errors.js';
import { probeStore } from '../storage/verify.js';
import { jsonSchema, parse, replies, validatedInHandler } from './schemas.js';

export interface BackupRoutesDeps {
  db: Db;
  storage: () => Storage;
  producer: Producer;
  authenticate: (req: FastifyRequest) => Promise<{ userId: string; role: Role }>;
  /**
   * The configured backup sets: a restore without `to` puts SQLite files only at their paths (absent:
   * `to` is required); and the source roots a restore's `to` must resolve inside (absent: the default ones).
   */
  config?: Pick<Config, 'backupSets' | 'sourceRoots'>;
}

type App = FastifyInstance<Server, IncomingMessage, ServerResponse, Logger>;

const restoreBody = z.strictObject({
  to: absolutePath.optional(),
  pgDatabase: z.string().min(1).max(63).optional(),
  force: z.boolean().optional(),
});
const cancelBody = z.strictObject({ dir: absolutePath });
const listQuery = z.strictObject({ set: safeId.optional() });

const nameParams = jsonSchema(z.object({ name: z.string().describe('a backup name, as GET /api/backups lists them') }));
const listSchema = { querystring: jsonSchema(listQuery), response: replies({ 200: z.object({ backups: z.array(z.looseObject({})) }) }) };
const nowSchema = {
  // Documentation only: the producer validates against the backup payload schema (queues/payloads.ts).
  body: jsonSchema(
    z.looseObject({}).describe('a backup payload: {set} or {name, sqlite, postgres}; postgres URLs carry no password (400 if they do)'),
  ),
  response: replies({ 202: z.object({ jobId: z.string(), kind: z.literal('backup'), created: z.boolean() }) }),
};
const downloadSchema = {
  params: nameParams,
  response: replies({
    200: {
      description: 'the archive (x-checksum-sha256 header)',
      content: { 'application/gzip': { schema: { type: 'string', format: 'binary' } } },
    },
  }),
};
const deleteSchema = { params: nameParams, response: replies({ 200: z.object({ deleted: z.string() }) }) };
const probeResult = z.looseObject({ endpoint: z.string(), bucket: z.string(), ok: z.boolean() });
const testConnectionSchema = { response: replies({ 200: probeResult, 502: probeResult }) };
const restoreSchema = {
  params: nameParams,
  body: jsonSchema(restoreBody),
  response: replies({ 200: z.looseObject({ name: z.string(), stagingDir: z.string(), apply: z.string() }) }),
};
const cancelSchema = {
  body: jsonSchema(cancelBody),
  response: replies({ 200: z.object({ cancelled: z.string(), stagingDir: z.string() }) }),
};

export function registerBackupRoutes(app: App, deps: BackupRoutesDeps): void {
  const admin = async (req: FastifyRequest) => {
    const caller = await deps.authenticate(req);
    if (caller.role !== 'admin')
      throw new AuthError(`role "${caller.role}" may not operate backups; an admin token is required`, 'STOWAGE_ERR_FORBIDDEN');
    return caller;
  };

  app.get<{ Querystring: Record<string, string> }>('/api/backups', { schema: listSchema, ...validatedInHandler }, async (req) => {
    await admin(req);
    const { set } = parse(listQuery, req.query ?? {}, 'query');
    const rows = await listAllBackups(deps.db, set ? { set } : {});
    return { backups: rows.map((r) => describeBackup(r)) };
  });

  app.post('/api/backups/now', { schema: nowSchema, ...validatedInHandler }, async (req, reply) => {
    const caller = await admin(req);
    if (typeof req.body !== 'object' || req.body === null || Array.isArray(req.body))
      throw new ValidationError('backup request', ['the body must be a JSON object: {set} or {name, sqlite, postgres}']);
    // requestedAt makes each request its own job (see the backup payload); the schema checks the rest.
    const payload = { ...(req.body as object), requestedAt: new Date().toISOString() } as PayloadInput<'backup'>;
    if ((payload as { task?: string }).task && (payload as { task?: string }).task !== 'backup')
      throw new ValidationError('backup request', ['task: only backups are taken here']);
    const enqueued = await deps.producer.backup(payload);
    req.log.info({ jobId: enqueued.jobId, user: caller.userId }, 'backup enqueued');
    return reply.code(202).send(enqueued);
  });

  app.get<{ Params: { name: string } }>(
    '/api/backups/:name/download',
    { schema: downloadSchema, ...validatedInHandler },
    async (req, reply) => {
      await admin(req);
      const storage = deps.storage();
      const row = await resolveBackup(deps.db, storage.bucket, req.params.name);
      let res;
      try {
        res = await storage.client.send(new GetObjectCommand({ Bucket: storage.bucket, Key: row.key }));
      } catch (err) {
        throw storeError(err, `download ${row.key}`);
      }
      return reply
        .headers({
          'content-type': 'application/gzip',
          'content-disposition': `attachment; filename="${backupName(row.key)}.tar.gz"`,
          ...(res.ContentLength !== undefined ? { 'content-length': String(res.ContentLength) } : {}),
          'x-checksum-sha256': row.sha256,
          'cache-control': 'no-store',
        })
        .send(res.Body as NodeJS.ReadableStream);
    },
  );

  app.delete<{ Params: { name: string } }>('/api/backups/:name', { schema: deleteSchema, ...validatedInHandler }, async (req) => {
    const caller = await admin(req);
    const storage = deps.storage();
    const row = await resolveBackup(deps.db, storage.bucket, req.params.name);
    await deleteBackupObject(storage, row.key);
    await markBackupDeleted(deps.db, row.id, `deleted over HTTP by ${caller.userId}`);
    req.log.info({ key: row.key, user: caller.userId }, 'backup deleted');
    return { deleted: backupName(row.key) };
  });

  app.post('/api/backups/test-connection', { schema: testConnectionSchema, ...validatedInHandler }, async (req, reply) => {
    await admin(req);
    const storage = deps.storage();
    const probe = await probeStore(storage);
    return reply.code(probe.ok ? 200 : 502).send({ endpoint: storage.endpoint, bucket: storage.bucket, ...probe });
  });

  app.post<{ Params: { name: string } }>('/api/backups/:name/restore', { schema: restoreSchema, ...validatedInHandler }, async (req) => {
    const caller = await admin(req);
    const body = parse(restoreBody, req.body ?? {}, 'restore request');
    const storage = deps.storage();
    const row = await resolveBackup(deps.db, storage.bucket, req.params.name);
    const staged = await stageRestore(storage, row.key, {
      configuredSet: deps.config?.backupSets.find((s) => s.name === row.set),
      ...(body.to ? { toDir: body.to } : {}),
      ...(body.pgDatabase ? { pgDatabase: body.pgDatabase } : {}),
      ...(body.force ? { force: true } : {}),
      // The caller names a folder on this server: hold it to the roots like any source path.
      sourceRoots: deps.config?.sourceRoots ?? defaultSourceRoots(),
    });
    req.log.info({ key: row.key, stagingDir: staged.stagingDir, user: caller.userId }, 'restore staged');
    return { name: backupName(row.key), ...staged, apply: `stowage backup apply-restore --dir ${staged.stagingDir}` };
  });

  app.post('/api/backups/cancel-restore', { schema: cancelSchema, ...validatedInHandler }, async (req) => {
    const caller = await admin(req);
    const { dir } = parse(cancelBody, req.body ?? {}, 'cancel request');
    const { stagingDir, pending } = await cancelRestore(dir);
    req.log.info({ stagingDir, user: caller.userId }, 'restore cancelled');
    return { cancelled: backupName(pending.key), stagingDir };
  });
}
