// Docker HEALTHCHECK for every role of the one Stowage image. The role is the command the
// container runs (`stowage <role> …`), read from PID 1's command line (tini -- node bin/stowage.js …):
//   http                     GET /healthz on HTTP_PORT (3000)
//   worker --metrics-port P  GET /metrics on P (workers serve no /healthz)
//   worker (no metrics port), scheduler, migrate, anything else: healthy while the process runs
// Usage: node deploy/docker/healthcheck.mjs [file holding a NUL-separated command line [--print]]
// (--print: say what would be probed, probe nothing; the tests use it).
import { readFileSync } from 'node:fs';

const source = process.argv[2] ?? '/proc/1/cmdline';
let args;
try {
  args = readFileSync(source, 'utf8').split('\0').filter(Boolean);
} catch {
  process.exit(0); // no /proc: nothing to tell the roles apart by; the process is up
}
const cli = args.findIndex((a) => a.endsWith('stowage.js') || a.endsWith('stowage') || a.endsWith('main.js'));
const rest = cli >= 0 ? args.slice(cli + 1) : args;
const role = rest.find((a) => !a.startsWith('-'));
const host = ['', '0.0.0.0', '::'].includes(process.env.HTTP_HOST ?? '') ? '127.0.0.1' : process.env.HTTP_HOST;
const hostPart = host.includes(':') ? `[${host}]` : host;

function option(name) {
  const i = rest.findIndex((a) => a === name || a.startsWith(`${name}=`));
  if (i < 0) return undefined;
  return rest[i].includes('=') ? rest[i].slice(name.length + 1) : rest[i + 1];
}

let url;
if (role === 'http') url = `http://${hostPart}:${process.env.HTTP_PORT || 3000}/healthz`;
else if (role === 'worker' && option('--metrics-port')) url = `http://${hostPart}:${option('--metrics-port')}/metrics`;

if (process.argv[3] === '--print') {
  console.log(url ?? 'process');
  process.exit(0);
}
if (!url) process.exit(0);
fetch(url, { signal: AbortSignal.timeout(2500) }).then(
  (r) => process.exit(r.ok ? 0 : 1),
  () => process.exit(1),
);
