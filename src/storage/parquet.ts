/**
 * Records → Parquet with @dsnp/parquetjs (pinned to 1.8.9: the 1.9.3 tarball ships without its
 * dist/ folder). The schema is inferred from the records, every column optional:
 * booleans → BOOLEAN; whole numbers (safe integers) → INT64; other numbers → DOUBLE;
 * strings → UTF8; anything else (objects, arrays, or a column whose values mix types) → JSON
 * (UTF8 holding the value's JSON). null and missing values are nulls.
 */
import { PassThrough, type Readable } from 'node:stream';
import parquet from '@dsnp/parquetjs';
import type { FieldDefinition, SchemaDefinition } from '@dsnp/parquetjs';

type Kind = 'BOOLEAN' | 'INT64' | 'DOUBLE' | 'UTF8' | 'JSON';

function kindOf(value: unknown): Kind {
  if (typeof value === 'boolean') return 'BOOLEAN';
  if (typeof value === 'number') return Number.isSafeInteger(value) ? 'INT64' : 'DOUBLE';
  if (typeof value === 'string') return 'UTF8';
  return 'JSON';
}

/** The inferred column types, in first-seen order of the fields. */
export function inferParquetSchema(records: Record<string, unknown>[]): Record<string, Kind> {
  const kinds = new Map<string, Kind>();
  for (const record of records) {
    for (const [field, value] of Object.entries(record)) {
      if (value === null || value === undefined) {
        if (!kinds.has(field)) kinds.set(field, 'UTF8');
        continue;
      }
      const k = kindOf(value);
      const seen = kinds.get(field);
      if (seen === undefined) kinds.set(field, k);
      else if (seen !== k)
        kinds.set(field, (seen === 'INT64' && k === 'DOUBLE') || (seen === 'DOUBLE' && k === 'INT64') ? 'DOUBLE' : 'JSON');
    }
  }
  // A column that held only nulls until a typed value came: re-infer from its non-null values.
  for (const field of kinds.keys()) {
    const values = records.map((r) => r[field]).filter((v) => v !== null && v !== undefined);
    if (values.length === 0) continue;
    const set = new Set(values.map(kindOf));
    kinds.set(field, set.size === 1 ? [...set][0]! : set.size === 2 && set.has('INT64') && set.has('DOUBLE') ? 'DOUBLE' : 'JSON');
  }
  return Object.fromEntries(kinds);
}

function toCell(kind: Kind, value: unknown): unknown {
  if (value === null || value === undefined) return undefined;
  if (kind === 'JSON') return JSON.stringify(value);
  return value;
}

/** A Parquet file of `records`, as a byte stream (rows are written while the stream is read). */
export function parquetStream(records: Record<string, unknown>[]): Readable {
  const kinds = inferParquetSchema(records);
  const definition: SchemaDefinition = {};
  for (const [field, kind] of Object.entries(kinds)) {
    definition[field] = { type: kind, optional: true, compression: 'SNAPPY' } as FieldDefinition;
  }
  const schema = new parquet.ParquetSchema(definition);
  const out = new PassThrough();
  (async () => {
    const writer = await parquet.ParquetWriter.openStream(schema, out as unknown as Parameters<typeof parquet.ParquetWriter.openStream>[1]);
    for (const record of records) {
      const row: Record<string, unknown> = {};
      for (const [field, kind] of Object.entries(kinds)) {
        const cell = toCell(kind, record[field]);
        if (cell !== undefined) row[field] = cell;
      }
      await writer.appendRow(row);
    }
    await writer.close();
  })().catch((err: unknown) => out.destroy(err instanceof Error ? err : new Error(String(err))));
  return out;
}

/**
 * The rows of a Parquet file, the inverse of parquetStream: JSON columns parsed, INT64 as numbers,
 * null cells left out.
 */
export async function readParquetRows(bytes: Buffer): Promise<Record<string, unknown>[]> {
  const reader = await parquet.ParquetReader.openBuffer(bytes);
  try {
    const fields = reader.getSchema().fields;
    const cell = (field: string, v: unknown): unknown => {
      if (typeof v === 'bigint') return Number(v);
      if (typeof v === 'string' && fields[field]?.originalType === 'JSON') return JSON.parse(v) as unknown;
      return v;
    };
    const cursor = reader.getCursor();
    const rows: Record<string, unknown>[] = [];
    for (let row = await cursor.next(); row; row = await cursor.next()) {
      rows.push(
        Object.fromEntries(
          Object.entries(row as Record<string, unknown>)
            .filter(([, v]) => v !== null && v !== undefined)
            .map(([k, v]) => [k, cell(k, v)]),
        ),
      );
    }
    return rows;
  } finally {
    await reader.close();
  }
}
