/**
 * How the CLI shows sizes to people: binary units with one decimal (`512 B`, `2.9 KiB`,
 * `1.4 GiB`). Every command's text output uses this one helper; `--json` keeps integer bytes.
 */
const UNITS = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];

export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes)) return String(bytes);
  const sign = bytes < 0 ? '-' : '';
  let v = Math.abs(bytes);
  if (v < 1024) return `${sign}${Math.round(v)} B`;
  v /= 1024;
  let u = 0;
  // Compare the rounded value, so 1023.96 KiB shows as 1.0 MiB, not 1024.0 KiB.
  while (Math.round(v * 10) / 10 >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  return `${sign}${v.toFixed(1)} ${UNITS[u]}`;
}
