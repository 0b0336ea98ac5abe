/**
 * build-artifact jobs for the chaos scenarios: generated source folders, and the end-state check
 * that every job's effect is there exactly once and intact (object, sidecar, receipt, catalog row,
 * all agreeing with each other and with the source).
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { GetObjectCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import type pg from 'pg';
import type { Readable } from 'node:stream';
import { artifactKey, isSha256SidecarKey, sha256SidecarKey } from '../../src/storage/keys.js';
import { createZipStream, scanSource } from '../../src/storage/zip.js';
import type { Producer } from '../../src/producers/index.js';
import type { TestS3 } from '../helpers/s3.js';

export interface ArtifactJob {
  userId: string;
  projectId: string;
  versionId: string;
  buildDir: string;
  key: string;
}

/**
 * `count` source folders of a few small random files; every `bigEvery`-th also holds `bigBytes` of
 * incompressible data so its upload is multipart (parts of STOWAGE_PART_SIZE_MB).
 */
export async function makeSources(
  root: string,
  tag: string,
  count: number,
  options: { bigEvery?: number; bigBytes?: number } = {},
): Promise<ArtifactJob[]> {
  const jobs: ArtifactJob[] = [];
  for (let i = 0; i < count; i++) {
    const buildDir = join(root, `${tag}-${i}`);
    await mkdir(join(buildDir, 'assets'), { recursive: true });
    await writeFile(join(buildDir, 'index.html'), `<h1>${tag} ${i}</h1>\n`.repeat(50 + i));
    await writeFile(join(buildDir, 'assets', 'app.js'), randomBytes(2_000 + ((i * 7919) % 30_000)));
    await writeFile(join(buildDir, 'assets', 'data.bin'), randomBytes(1_000 + ((i * 104_729) % 20_000)));
    if (options.bigEvery && i % options.bigEvery === 0)
      await writeFile(join(buildDir, 'assets', 'big.bin'), randomBytes(options.bigBytes ?? 6 * 1024 * 1024));
    const userId = `u${i % 4}`;
    const projectId = `${tag}-p${i % 7}`;
    const versionId = `v${i}`;
    jobs.push({ userId, projectId, versionId, buildDir, key: artifactKey(userId, projectId, versionId) });
  }
  return jobs;
}

async function bodySha256(body: Readable): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of body) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

async function bodyText(body: Readable): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of body) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * The application through an outage: one enqueue every `gapMs`, each retried every 500 ms until
 * Redis accepts it (a refused enqueue was never accepted). The counts move as it goes; `done`
 * resolves once every job is in.
 */
export function enqueueThroughOutage(producer: Pick<Producer, 'buildArtifact'>, jobs: ArtifactJob[], gapMs = 150) {
  const pause = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
  const progress = { accepted: 0, refused: 0, done: Promise.resolve() };
  progress.done = (async () => {
    for (const j of jobs) {
      for (;;) {
        try {
          await producer.buildArtifact({ userId: j.userId, projectId: j.projectId, versionId: j.versionId, buildDir: j.buildDir });
          progress.accepted++;
          break;
        } catch {
          progress.refused++;
          await pause(500);
        }
      }
      await pause(gapMs);
    }
  })();
  return progress;
}

export interface ArtifactCheck {
  objects: number;
  receipts: number;
  catalogRows: number;
  /** Jobs whose effect is missing or wrong (object, sidecar, receipt, row or source disagree). */
  lost: string[];
  /** Objects, receipts or rows beyond one per job. */
  duplicated: number;
}

/**
 * Read everything back straight from radosgw (not through any fault proxy), with the scenario's
 * credentials, and from Postgres. The source check rebuilds each zip locally: the archive is
 * deterministic (sorted entries, file mtimes), so equal SHA-256 means the object holds exactly
 * that folder.
 */
export async function checkArtifacts(s3: TestS3, pool: pg.Pool, jobs: ArtifactJob[]): Promise<ArtifactCheck> {
  const client = new S3Client({
    region: 'auto',
    endpoint: s3.endpoint,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
  try {
    const keys: string[] = [];
    let token: string | undefined;
    for (;;) {
      const page = await client.send(new ListObjectsV2Command({ Bucket: s3.bucket, ...(token ? { ContinuationToken: token } : {}) }));
      keys.push(...(page.Contents ?? []).map((c) => c.Key!));
      if (!page.IsTruncated) break;
      token = page.NextContinuationToken;
      if (!token) throw new Error('ListObjectsV2: a truncated page without NextContinuationToken');
    }
    // Artifacts only: other kinds a scenario runs (exports, manifests) have keys of their own.
    const isArtifact = (k: string) => /^[^/]+\/[^/]+\/snapshots\/[^/]+\.zip$/.test(k);
    const objects = keys.filter((k) => !isSha256SidecarKey(k) && isArtifact(k));
    const receipts = (
      await pool.query<{ key: string; sha256: string; size: string; etag: string | null }>(
        'SELECT key, sha256, size, etag FROM upload_receipts',
      )
    ).rows.filter((r) => isArtifact(r.key));
    const rows = (
      await pool.query<{ user_id: string; project_id: string; version_id: string; artifact_checksum: string; artifact_size: string }>(
        'SELECT user_id, project_id, version_id, artifact_checksum, artifact_size FROM project_versions',
      )
    ).rows;
    const receiptBy = new Map(receipts.map((r) => [r.key, r]));
    const rowBy = new Map(rows.map((r) => [`${r.user_id}/${r.project_id}/${r.version_id}`, r]));
    const lost: string[] = [];
    for (const job of jobs) {
      const why: string[] = [];
      const receipt = receiptBy.get(job.key);
      const row = rowBy.get(`${job.userId}/${job.projectId}/${job.versionId}`);
      if (!objects.includes(job.key)) why.push('no object');
      if (!receipt) why.push('no upload receipt');
      if (!row) why.push('no project_versions row');
      if (!why.length) {
        const object = await client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: job.key }));
        const stored = await bodySha256(object.Body as Readable);
        const sidecar = await bodyText(
          (await client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: sha256SidecarKey(job.key) }))).Body as Readable,
        );
        const source = await bodySha256(createZipStream(await scanSource(job.buildDir)));
        if (stored !== receipt!.sha256) why.push(`object sha256 ${stored} != receipt ${receipt!.sha256}`);
        // The store's own ETag of the object (radosgw's CompleteMultipartUpload answers an empty one).
        if (!object.ETag || object.ETag === '""' || receipt!.etag !== object.ETag)
          why.push(`receipt etag ${JSON.stringify(receipt!.etag)} != object ETag ${object.ETag}`);
        if (row!.artifact_checksum !== receipt!.sha256) why.push('project_versions checksum != receipt');
        if (!sidecar.startsWith(`${stored}  `)) why.push('sidecar disagrees');
        if (source !== stored) why.push('object is not the zip of its source');
      }
      if (why.length) lost.push(`${job.key}: ${why.join(', ')}`);
    }
    const duplicated =
      Math.max(0, objects.length - jobs.length) + Math.max(0, receipts.length - jobs.length) + Math.max(0, rows.length - jobs.length);
    return { objects: objects.length, receipts: receipts.length, catalogRows: rows.length, lost, duplicated };
  } finally {
    client.destroy();
  }
}
