/**
 * Validation of the ids and paths that end up in object keys, job ids and file system calls.
 * Shared by the queue contract, config, HTTP and storage, so it belongs to none of those layers.
 */
import { isAbsolute } from 'node:path';
import { z } from 'zod';

/** One path segment: no separators, no `..`, no control characters, bounded length. */
export const safeId = z
  .string()
  .min(1, 'must not be empty')
  .max(128, 'at most 128 characters')
  .refine((s) => !/[/\\]/.test(s), 'must not contain / or \\')
  .refine((s) => !s.includes('..'), 'must not contain ..')
  // biome-ignore lint/suspicious/noControlCharactersInRegex: finding control characters is the point
  .refine((s) => !/[\u0000-\u001f\u007f]/.test(s), 'must not contain control characters')
  .refine((s) => s.trim() === s, 'must not start or end with whitespace');

/** A file system path a worker will open: absolute, bounded, no NUL (used by payloads, config and HTTP). */
export const absolutePath = z
  .string()
  .min(1, 'must not be empty')
  .max(4096, 'at most 4096 characters')
  .refine((p) => isAbsolute(p), 'must be an absolute path')
  .refine((p) => !p.includes('\u0000'), 'must not contain NUL');
