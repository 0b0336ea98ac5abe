/**
 * Failure signatures: a message with its variable parts masked, so failures that differ only in
 * ids, numbers or quoted values group into one candidate pattern. Also the label normalization
 * that keeps error_code/category from blowing up Prometheus' series count (the seed's
 * high-cardinality issue).
 */

/** Longest signature kept; the rest of a very long message rarely tells patterns apart. */
export const MAX_SIGNATURE_LENGTH = 500;

const MASKS: [RegExp, string][] = [
  // Quoted values first: whatever is inside ('it's "x1"') must not be masked piecemeal.
  // Any quote style masks the same way; a single quote counts only outside a word (not "can't").
  [/"(?:[^"\\]|\\.)*"/g, '"<str>"'],
  [/(?<!\w)'(?:[^'\\]|\\.)*'(?!\w)/g, '"<str>"'],
  [/`[^`]*`/g, '"<str>"'],
  [/\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b/gi, '<id>'],
  [/\b0x[0-9a-f]+\b/gi, '<hex>'],
  // Hex words of 8+ characters holding a digit and a letter (hashes, object ids, trace ids).
  [/\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b/gi, '<hex>'],
  [/\d+(?:\.\d+)?/g, '<num>'],
];

/** The message with quoted values, uuids, hex and numbers masked, whitespace collapsed. */
export function normalizeSignature(message: string): string {
  let s = message;
  for (const [pattern, mask] of MASKS) s = s.replace(pattern, mask);
  s = s.replace(/\s+/g, ' ').trim();
  return s.length > MAX_SIGNATURE_LENGTH ? s.slice(0, MAX_SIGNATURE_LENGTH) : s;
}

/** An error code as stored and grouped: trimmed, upper-case, at most 100 characters. */
export function normalizeErrorCode(code: string): string {
  return code.trim().toUpperCase().slice(0, 100);
}

/**
 * A bounded label set: values are reduced to `[A-Z0-9_]` (at most 48 characters), and once `max`
 * distinct values have been seen, any new one is reported as `OTHER`.
 */
export function boundedLabel(max: number): (value: string | null | undefined) => string {
  const seen = new Set<string>();
  return (value) => {
    const v =
      (value ?? '')
        .toUpperCase()
        .replace(/[^A-Z0-9_]+/g, '_')
        .replace(/^_+|_+$/g, '')
        .slice(0, 48) || 'UNKNOWN';
    if (seen.has(v)) return v;
    if (seen.size >= max) return 'OTHER';
    seen.add(v);
    return v;
  };
}
