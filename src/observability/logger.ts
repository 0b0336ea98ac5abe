/** pino, with secrets redacted wherever they may appear. */
import { pino, type Logger } from 'pino';

export type { Logger };

/** Paths pino blanks out in every log line. */
export const REDACT_PATHS = [
  'secretAccessKey',
  'accessKeyId',
  'authSecret',
  'basicAuth',
  'password',
  'token',
  'authorization',
  '*.secretAccessKey',
  '*.accessKeyId',
  '*.authSecret',
  '*.password',
  '*.token',
  '*.authorization',
  'req.headers.authorization',
  'req.headers.cookie',
  'headers.authorization',
  'config.storage.secretAccessKey',
  'config.storage.accessKeyId',
];

export function createLogger(options: { level?: string; name?: string } = {}, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      name: options.name ?? 'stowage',
      level: options.level ?? 'info',
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      formatters: { level: (label) => ({ level: label }) },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    destination,
  );
}

/**
 * Strip the signature and credential parts of a presigned URL (X-Amz-Signature, X-Amz-Credential,
 * X-Amz-Security-Token) so it can be logged.
 */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    for (const name of [...u.searchParams.keys()]) {
      if (/^x-amz-(signature|credential|security-token)$/i.test(name)) u.searchParams.set(name, 'redacted');
    }
    if (u.password) u.password = 'redacted';
    return u.toString();
  } catch {
    return '[unparseable url]';
  }
}
