/**
 * Global setup of the chaos suite: start each run with an empty summary, and print the totals
 * (jobs, kills, outages, inputs tried, lost) once every scenario has written its figures.
 */
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { SUMMARY_FILE } from './fleet.js';

const started = Date.now();

export async function setup(): Promise<void> {
  await rm(SUMMARY_FILE, { force: true });
}

export async function teardown(): Promise<void> {
  let summary: { scenarios: Record<string, Record<string, unknown>> };
  try {
    summary = JSON.parse(await readFile(SUMMARY_FILE, 'utf8')) as typeof summary;
  } catch {
    return;
  }
  const sum = (field: string) =>
    Object.values(summary.scenarios).reduce((n, s) => n + (typeof s[field] === 'number' ? (s[field] as number) : 0), 0);
  const totals = {
    jobs: sum('jobs'),
    kills: sum('kills'),
    outages: sum('outages'),
    inputsTried: sum('inputsTried'),
    lost: sum('lost'),
    duplicated: sum('duplicated'),
    wallSeconds: Math.round((Date.now() - started) / 1000),
  };
  await mkdir(SUMMARY_FILE.replace(/\/[^/]+$/, ''), { recursive: true });
  await writeFile(SUMMARY_FILE, `${JSON.stringify({ ...summary, totals }, null, 2)}\n`);
  process.stdout.write(`\n[chaos] totals: ${JSON.stringify(totals)}\n[chaos] summary written to ${SUMMARY_FILE}\n`);
}
