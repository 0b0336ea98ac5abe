/** docs/design.md's layout is the tree: every top-level entry of src/ is named there, and nothing else. */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('../..', import.meta.url));

describe('docs/design.md', () => {
  it('names every top-level file and folder of src/ in its layout, and only those', () => {
    const doc = readFileSync(join(root, 'docs/design.md'), 'utf8');
    const block = doc.slice(doc.indexOf('## Layout')).split('```')[1]!;
    const lines = block.split('\n');
    const start = lines.findIndex((l) => l.trim() === 'src/');
    const documented: string[] = [];
    for (const line of lines.slice(start + 1)) {
      if (!line.startsWith('  ')) break; // the next top-level entry (test/, bench/ …)
      const m = /^ {2}(\S+)/.exec(line);
      if (m) documented.push(m[1]!);
    }
    const actual = readdirSync(join(root, 'src')).map((name) => (statSync(join(root, 'src', name)).isDirectory() ? `${name}/` : name));
    expect(documented.sort()).toEqual(actual.sort());
  });
});
