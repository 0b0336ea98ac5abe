// The artifact pipeline run from compiled JavaScript (bench/memory.ts --compiled): what a
// production worker (bin/stowage.js → dist/) holds in memory, without tsx's loader and its
// in-memory transpiled sources. argv: <dist dir> <source> <key>. Prints one JSON line.
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const [dist, source, key] = process.argv.slice(2);
const load = (rel) => import(pathToFileURL(join(dist, rel)).href);
const { loadConfig } = await load('config.js');
const { createStorage } = await load('storage/client.js');
const { uploadStream } = await load('storage/upload.js');
const { createZipStream, scanSource } = await load('storage/zip.js');
const storage = createStorage(loadConfig());
const started = performance.now();
const r = await uploadStream(storage, { key, body: createZipStream(await scanSource(source)), contentType: 'application/zip' });
const ms = performance.now() - started;
storage.close();
process.stdout.write(`${JSON.stringify({ ms, size: r.size, maxRssBytes: process.resourceUsage().maxRSS * 1024 })}\n`);
