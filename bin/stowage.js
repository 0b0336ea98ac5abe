#!/usr/bin/env node
// The published entry: the compiled CLI (`npm run build` writes dist/).
import { main } from '../dist/cli/main.js';

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`stowage: ${err?.message ?? err}\n`);
    process.exit(1);
  },
);
