// Incremental MD5 (RFC 1321) so the upload page can hash big files slice by slice.
"use strict";

// Per-step left rotations, four per round.
const SHIFTS = [7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21];
// The additive constants are defined by RFC 1321 as floor(|sin(i + 1)| * 2^32).
const CONSTANTS = new Int32Array(64);
for (let i = 0; i < 64; i++) CONSTANTS[i] = Math.floor(Math.abs(Math.sin(i + 1)) * 2 ** 32) | 0;

export class Md5 {
  constructor() {
    this.state = Int32Array.of(0x67452301, 0xefcdab89 | 0, 0x98badcfe | 0, 0x10325476);
    this.pending = new Uint8Array(64);
    this.filled = 0;
    this.length = 0;
    this.words = new Int32Array(16);
  }

  /** Feed more bytes (a Uint8Array). */
  update(bytes) {
    this.length += bytes.length;
    let at = 0;
    if (this.filled > 0) {
      at = Math.min(64 - this.filled, bytes.length);
      this.pending.set(bytes.subarray(0, at), this.filled);
      this.filled += at;
      if (this.filled < 64) return this;
      this.block(this.pending, 0);
      this.filled = 0;
    }
    for (; at + 64 <= bytes.length; at += 64) this.block(bytes, at);
    if (at < bytes.length) {
      this.pending.set(bytes.subarray(at));
      this.filled = bytes.length - at;
    }
    return this;
  }

  block(bytes, offset) {
    const w = this.words;
    for (let j = 0; j < 16; j++, offset += 4) {
      w[j] = bytes[offset] | (bytes[offset + 1] << 8) | (bytes[offset + 2] << 16) | (bytes[offset + 3] << 24);
    }
    const h = this.state;
    let a = h[0], b = h[1], c = h[2], d = h[3];
    let t, s;
    // Four rounds of sixteen steps, each with its own mixing function and word order;
    // separate loops keep the hot path free of branches.
    for (let j = 0; j < 16; j++) {
      s = SHIFTS[j & 3];
      t = (a + ((b & c) | (~b & d)) + CONSTANTS[j] + w[j]) | 0;
      a = d; d = c; c = b;
      b = (b + ((t << s) | (t >>> (32 - s)))) | 0;
    }
    for (let j = 16; j < 32; j++) {
      s = SHIFTS[4 + (j & 3)];
      t = (a + ((d & b) | (~d & c)) + CONSTANTS[j] + w[(5 * j + 1) & 15]) | 0;
      a = d; d = c; c = b;
      b = (b + ((t << s) | (t >>> (32 - s)))) | 0;
    }
    for (let j = 32; j < 48; j++) {
      s = SHIFTS[8 + (j & 3)];
      t = (a + (b ^ c ^ d) + CONSTANTS[j] + w[(3 * j + 5) & 15]) | 0;
      a = d; d = c; c = b;
      b = (b + ((t << s) | (t >>> (32 - s)))) | 0;
    }
    for (let j = 48; j < 64; j++) {
      s = SHIFTS[12 + (j & 3)];
      t = (a + (c ^ (b | ~d)) + CONSTANTS[j] + w[(7 * j) & 15]) | 0;
      a = d; d = c; c = b;
      b = (b + ((t << s) | (t >>> (32 - s)))) | 0;
    }
    h[0] = (h[0] + a) | 0;
    h[1] = (h[1] + b) | 0;
    h[2] = (h[2] + c) | 0;
    h[3] = (h[3] + d) | 0;
  }

  /** The digest as lower-case hex; the object is spent afterwards. */
  hex() {
    const bits = this.length * 8;
    const tail = new Uint8Array(this.filled < 56 ? 64 - this.filled : 128 - this.filled);
    tail[0] = 0x80;
    const n = tail.length;
    // The message length in bits, 64-bit little-endian; split because JS bit operators are 32-bit.
    const low = bits % 2 ** 32;
    const high = Math.floor(bits / 2 ** 32);
    for (let i = 0; i < 4; i++) {
      tail[n - 8 + i] = (low >>> (8 * i)) & 0xff;
      tail[n - 4 + i] = (high >>> (8 * i)) & 0xff;
    }
    this.update(tail);
    let out = "";
    for (const word of this.state) {
      for (let i = 0; i < 4; i++) out += ((word >>> (8 * i)) & 0xff).toString(16).padStart(2, "0");
    }
    return out;
  }
}

/** MD5 of a Blob, read in slices so a big file is never held in memory; reports progress 0..1. */
export async function md5Blob(blob, onProgress, sliceSize = 4 * 1024 * 1024) {
  const md5 = new Md5();
  for (let at = 0; at < blob.size; at += sliceSize) {
    const part = new Uint8Array(await blob.slice(at, at + sliceSize).arrayBuffer());
    md5.update(part);
    if (onProgress) onProgress(Math.min(1, (at + part.length) / blob.size));
  }
  return md5.hex();
}
