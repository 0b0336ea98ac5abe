/**
 * ZIP record encoding (APPNOTE 6.3.x): local headers, data descriptors, central-directory records
 * and the end records, as bytes. Pure functions of an EntryRecord; no I/O.
 *
 * - Names are UTF-8 (flag bit 11).
 * - Unix mode in the high 16 bits of the external attributes (made-by = Unix), so `unzip`
 *   restores permissions and recreates symlinks.
 * - Modification time as a DOS time in UTC plus the 0x5455 extended timestamp (exact UTC seconds),
 *   so output does not depend on the worker's time zone and `unzip` restores the right mtime.
 * - Zip64 where needed: entries whose size may pass 4 GiB carry Zip64 sizes in the local header
 *   and an 8-byte-size data descriptor; offsets past 4 GiB and more than 65,535 entries get Zip64
 *   central records and the Zip64 end-of-central-directory record.
 */

export const STORE = 0;
export const DEFLATE = 8;
export const U32_MAX = 0xffffffff;
export const U16_MAX = 0xffff;
export const FLAG_DATA_DESCRIPTOR = 0x0008;
export const FLAG_UTF8 = 0x0800;
/** Made by: Unix (3), spec 4.5. */
const VERSION_MADE_BY = (3 << 8) | 45;

export interface DosTime {
  time: number;
  date: number;
  /** Unix seconds for the 0x5455 field (unsigned 32-bit, as Info-ZIP reads it). */
  unix: number;
}

export function dosTime(mtimeMs: number): DosTime {
  const d = new Date(mtimeMs);
  let year = d.getUTCFullYear();
  let time: number;
  let date: number;
  if (year < 1980) {
    time = 0;
    date = (1 << 5) | 1;
  } else {
    if (year > 2107) year = 2107;
    time = (d.getUTCHours() << 11) | (d.getUTCMinutes() << 5) | (d.getUTCSeconds() >> 1);
    date = ((year - 1980) << 9) | ((d.getUTCMonth() + 1) << 5) | d.getUTCDate();
  }
  const unix = Math.min(Math.max(Math.floor(mtimeMs / 1000), 0), U32_MAX);
  return { time, date, unix };
}

export function deflateFlags(method: number, level: number): number {
  if (method !== DEFLATE) return 0;
  // Bits 1-2 describe the deflate option; only informational (zipinfo shows defS/defF/defX).
  if (level <= 1) return 0x0006;
  if (level === 2) return 0x0004;
  if (level >= 8) return 0x0002;
  return 0;
}

export interface EntryRecord {
  nameBuf: Buffer;
  flags: number;
  method: number;
  versionNeeded: number;
  dos: DosTime;
  crc: number;
  csize: number;
  usize: number;
  offset: number;
  externalAttr: number;
  /** The local header carried Zip64 sizes; the central record then does too. */
  zip64Sizes: boolean;
}

function extendedTimestamp(unix: number): Buffer {
  const b = Buffer.alloc(9);
  b.writeUInt16LE(0x5455, 0);
  b.writeUInt16LE(5, 2);
  b.writeUInt8(1, 4); // mtime present
  b.writeUInt32LE(unix, 5);
  return b;
}

function zip64Extra(values: number[]): Buffer {
  const b = Buffer.alloc(4 + 8 * values.length);
  b.writeUInt16LE(0x0001, 0);
  b.writeUInt16LE(8 * values.length, 2);
  values.forEach((v, i) => b.writeBigUInt64LE(BigInt(v), 4 + 8 * i));
  return b;
}

export function localHeader(r: EntryRecord, streaming: boolean): Buffer {
  const extras: Buffer[] = [];
  let crc = r.crc;
  let csize = r.csize;
  let usize = r.usize;
  if (streaming) crc = csize = usize = 0;
  if (r.zip64Sizes) {
    // Zip64 local header: both sizes in the extra field (zero when streaming: the data descriptor
    // has them), 0xFFFFFFFF in the fixed fields.
    extras.push(zip64Extra([usize, csize]));
    csize = usize = U32_MAX;
  }
  extras.push(extendedTimestamp(r.dos.unix));
  const extra = Buffer.concat(extras);
  const h = Buffer.alloc(30);
  h.writeUInt32LE(0x04034b50, 0);
  h.writeUInt16LE(r.versionNeeded, 4);
  h.writeUInt16LE(r.flags, 6);
  h.writeUInt16LE(r.method, 8);
  h.writeUInt16LE(r.dos.time, 10);
  h.writeUInt16LE(r.dos.date, 12);
  h.writeUInt32LE(crc >>> 0, 14);
  h.writeUInt32LE(csize, 18);
  h.writeUInt32LE(usize, 22);
  h.writeUInt16LE(r.nameBuf.length, 26);
  h.writeUInt16LE(extra.length, 28);
  return Buffer.concat([h, r.nameBuf, extra]);
}

export function dataDescriptor(r: EntryRecord): Buffer {
  if (r.zip64Sizes) {
    const b = Buffer.alloc(24);
    b.writeUInt32LE(0x08074b50, 0);
    b.writeUInt32LE(r.crc >>> 0, 4);
    b.writeBigUInt64LE(BigInt(r.csize), 8);
    b.writeBigUInt64LE(BigInt(r.usize), 16);
    return b;
  }
  const b = Buffer.alloc(16);
  b.writeUInt32LE(0x08074b50, 0);
  b.writeUInt32LE(r.crc >>> 0, 4);
  b.writeUInt32LE(r.csize, 8);
  b.writeUInt32LE(r.usize, 12);
  return b;
}

export function centralHeader(r: EntryRecord, forceZip64: boolean): Buffer {
  const big: number[] = [];
  let usize = r.usize;
  let csize = r.csize;
  let offset = r.offset;
  if (forceZip64 || r.zip64Sizes || usize >= U32_MAX) {
    big.push(usize);
    usize = U32_MAX;
  }
  if (forceZip64 || r.zip64Sizes || csize >= U32_MAX) {
    big.push(csize);
    csize = U32_MAX;
  }
  if (forceZip64 || offset >= U32_MAX) {
    big.push(offset);
    offset = U32_MAX;
  }
  const ut = Buffer.alloc(9);
  ut.writeUInt16LE(0x5455, 0);
  ut.writeUInt16LE(5, 2);
  ut.writeUInt8(1, 4);
  ut.writeUInt32LE(r.dos.unix, 5);
  const extra = big.length ? Buffer.concat([zip64Extra(big), ut]) : ut;
  const h = Buffer.alloc(46);
  h.writeUInt32LE(0x02014b50, 0);
  h.writeUInt16LE(VERSION_MADE_BY, 4);
  h.writeUInt16LE(big.length ? 45 : r.versionNeeded, 6);
  h.writeUInt16LE(r.flags, 8);
  h.writeUInt16LE(r.method, 10);
  h.writeUInt16LE(r.dos.time, 12);
  h.writeUInt16LE(r.dos.date, 14);
  h.writeUInt32LE(r.crc >>> 0, 16);
  h.writeUInt32LE(csize, 20);
  h.writeUInt32LE(usize, 24);
  h.writeUInt16LE(r.nameBuf.length, 28);
  h.writeUInt16LE(extra.length, 30);
  h.writeUInt16LE(0, 32); // comment length
  h.writeUInt16LE(0, 34); // disk number start
  h.writeUInt16LE(0, 36); // internal attributes
  h.writeUInt32LE(r.externalAttr >>> 0, 38);
  h.writeUInt32LE(offset, 42);
  return Buffer.concat([h, r.nameBuf, extra]);
}

export function endRecords(count: number, cdOffset: number, cdSize: number, forceZip64: boolean): Buffer {
  const zip64 = forceZip64 || count > U16_MAX || cdOffset >= U32_MAX || cdSize >= U32_MAX;
  const parts: Buffer[] = [];
  if (zip64) {
    const rec = Buffer.alloc(56);
    rec.writeUInt32LE(0x06064b50, 0);
    rec.writeBigUInt64LE(44n, 4); // size of the rest of this record
    rec.writeUInt16LE(VERSION_MADE_BY, 12);
    rec.writeUInt16LE(45, 14);
    rec.writeUInt32LE(0, 16); // this disk
    rec.writeUInt32LE(0, 20); // disk with the central directory
    rec.writeBigUInt64LE(BigInt(count), 24);
    rec.writeBigUInt64LE(BigInt(count), 32);
    rec.writeBigUInt64LE(BigInt(cdSize), 40);
    rec.writeBigUInt64LE(BigInt(cdOffset), 48);
    const locator = Buffer.alloc(20);
    locator.writeUInt32LE(0x07064b50, 0);
    locator.writeUInt32LE(0, 4);
    locator.writeBigUInt64LE(BigInt(cdOffset + cdSize), 8); // where the Zip64 record starts
    locator.writeUInt32LE(1, 16); // total disks
    parts.push(rec, locator);
  }
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0);
  eocd.writeUInt16LE(0, 4);
  eocd.writeUInt16LE(0, 6);
  eocd.writeUInt16LE(zip64 ? U16_MAX : count, 8);
  eocd.writeUInt16LE(zip64 ? U16_MAX : count, 10);
  eocd.writeUInt32LE(zip64 && cdSize >= U32_MAX ? U32_MAX : cdSize, 12);
  eocd.writeUInt32LE(zip64 ? U32_MAX : cdOffset, 16);
  eocd.writeUInt16LE(0, 20);
  parts.push(eocd);
  return Buffer.concat(parts);
}

/** Worst-case deflate output for `size` bytes (stored blocks: 5 bytes per 16 KiB) plus slack. */
export function mayExceed4GiB(size: number): boolean {
  return size + Math.ceil(size / 16_383) * 5 + 1024 >= U32_MAX;
}
