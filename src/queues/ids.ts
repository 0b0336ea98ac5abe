/** Validation of the ids that end up in object keys and job ids. */
import { z } from 'zod';

/** One path segment: no separators, no `..`, no control characters, bounded length. */
export const safeId = z
  .string()
  .min(1, 'must not be empty')
  .max(128, 'at most 128 characters')
  .refine((s) => !/[/\\]/.test(s), 'must not contain / or \\')
  .refine((s) => !s.includes('..'), 'must not contain ..')
  // eslint-disable-next-line no-control-regex
  .refine((s) => !/[\u0000-\u001f\u007f]/.test(s), 'must not contain control characters')
  .refine((s) => s.trim() === s, 'must not start or end with whitespace');
