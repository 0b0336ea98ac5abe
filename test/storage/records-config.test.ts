/** The exports config (env and file forms) and the bounds of searchable values in manifest entries. */
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { ConfigError } from '../../src/errors.js';
import { searchableValues } from '../../src/storage/manifest.js';

describe('exports config', () => {
  it('defaults: no searchable fields, 20 values, 200 characters, compaction at 256 KiB', () => {
    expect(loadConfig({}).exports).toEqual({
      searchableFields: {},
      searchableMaxValues: 20,
      searchableMaxChars: 200,
      manifestCompactBytes: 256 * 1024,
    });
  });

  it('reads STOWAGE_EXPORT_SEARCHABLE_FIELDS as module:field,field;module:field and STOWAGE_MANIFEST_COMPACT_BYTES', () => {
    const config = loadConfig({
      STOWAGE_EXPORT_SEARCHABLE_FIELDS: 'finance: description, category ;notes:title',
      STOWAGE_MANIFEST_COMPACT_BYTES: '4096',
    });
    expect(config.exports.searchableFields).toEqual({ finance: ['description', 'category'], notes: ['title'] });
    expect(config.exports.manifestCompactBytes).toBe(4096);
  });

  it('takes the object form from overrides (as from the STOWAGE_CONFIG file)', () => {
    expect(loadConfig({}, { exports: { searchableFields: { finance: ['memo'] } } }).exports.searchableFields).toEqual({
      finance: ['memo'],
    });
  });

  it('names the bad variable', () => {
    expect(() => loadConfig({ STOWAGE_EXPORT_SEARCHABLE_FIELDS: 'no-colon-here' })).toThrow(ConfigError);
    expect(() => loadConfig({ STOWAGE_EXPORT_SEARCHABLE_FIELDS: 'no-colon-here' })).toThrow(/STOWAGE_EXPORT_SEARCHABLE_FIELDS/);
    expect(() => loadConfig({ STOWAGE_MANIFEST_COMPACT_BYTES: '10' })).toThrow(/STOWAGE_MANIFEST_COMPACT_BYTES/);
    expect(() => loadConfig({ STOWAGE_EXPORT_SEARCHABLE_FIELDS: '../x:title' })).toThrow(/STOWAGE_EXPORT_SEARCHABLE_FIELDS \(\.\.\/x\): /);
  });
});

describe('searchableValues', () => {
  const records = [
    { category: 'food', memo: 'x'.repeat(500), tags: ['a', 'b'], amount: 3, nested: { no: 1 } },
    { category: 'food', tags: ['b', 'c', 'd'], amount: 4, paid: true },
    { category: 'travel', amount: 5 },
  ];

  it('keeps the first distinct scalar values per field (array elements one by one), strings cut short', () => {
    expect(searchableValues(records, ['category', 'memo', 'tags', 'amount', 'nested', 'missing'], { maxValues: 3, maxChars: 10 })).toEqual({
      category: ['food', 'travel'],
      memo: ['xxxxxxxxxx'],
      tags: ['a', 'b', 'c'],
      amount: [3, 4, 5],
    });
  });

  it('is undefined when no configured field has a value', () => {
    expect(searchableValues(records, ['missing', 'nested'])).toBeUndefined();
  });
});
