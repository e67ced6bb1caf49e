// A POSIX (ustar + pax) tar as a Blob made of header blocks and File references, so the
// browser streams each file from disk while uploading instead of reading it into memory.
"use strict";

const BLOCK = 512;
const encoder = new TextEncoder();
// The largest size an 11-digit octal ustar field holds; beyond it the size goes in a pax record.
const USTAR_MAX_SIZE = 0o77777777777;

function put(block, offset, length, text) {
  const bytes = encoder.encode(text);
  block.set(bytes.subarray(0, length), offset);
}

function octal(value, digits) {
  return Math.floor(value).toString(8).padStart(digits, "0");
}

function isPlainAscii(text) {
  return /^[\x20-\x7e]*$/.test(text);
}

/** One 512-byte ustar header block. */
export function ustarHeader({ name, size = 0, mtime = 0, type = "0", mode = 0o644 }) {
  const block = new Uint8Array(BLOCK);
  put(block, 0, 100, name);
  put(block, 100, 8, octal(mode, 7));
  put(block, 108, 8, octal(0, 7));
  put(block, 116, 8, octal(0, 7));
  put(block, 124, 12, octal(Math.min(size, USTAR_MAX_SIZE), 11));
  put(block, 136, 12, octal(Math.max(0, Math.min(mtime, 0o77777777777)), 11));
  put(block, 156, 1, type);
  put(block, 257, 6, "ustar");
  put(block, 263, 2, "00");
  // The checksum is the byte sum with its own field counted as spaces.
  block.fill(0x20, 148, 156);
  let sum = 0;
  for (const byte of block) sum += byte;
  put(block, 148, 8, octal(sum, 6) + "\0 ");
  return block;
}

/** A pax record "<len> <key>=<value>\n", whose length counts its own digits. */
export function paxRecord(key, value) {
  const body = encoder.encode(` ${key}=${value}\n`).length;
  let length = body + 1;
  while (String(length).length + body !== length) length = String(length).length + body;
  return `${length} ${key}=${value}\n`;
}

function padding(size) {
  const rest = size % BLOCK;
  return rest ? new Uint8Array(BLOCK - rest) : null;
}

/** A short ASCII stand-in for a name the ustar header cannot hold (pax carries the real one). */
function fallbackName(path, isDir) {
  const ascii = path.replace(/[^\x20-\x7e]/g, "_");
  const trimmed = ascii.length > 99 ? ascii.slice(ascii.length - 99).replace(/^\/+/, "") : ascii;
  return isDir && !trimmed.endsWith("/") ? trimmed.slice(0, 98) + "/" : trimmed;
}

/**
 * Pack entries ({path, file} for files, {path, dir: true} for folders; paths use "/" and
 * folders end with "/") into a Blob. Parent folders are added where they are missing.
 */
export function tarBlob(entries) {
  const seen = new Set();
  const list = [];
  function addDir(path, mtime) {
    if (seen.has(path)) return;
    const parent = path.slice(0, path.slice(0, -1).lastIndexOf("/") + 1);
    if (parent) addDir(parent, mtime);
    seen.add(path);
    list.push({ path, dir: true, mtime });
  }
  for (const entry of entries) {
    const mtime = entry.file ? Math.floor(entry.file.lastModified / 1000) : Math.floor(Date.now() / 1000);
    if (entry.dir) {
      addDir(entry.path.endsWith("/") ? entry.path : entry.path + "/", mtime);
      continue;
    }
    const cut = entry.path.lastIndexOf("/");
    if (cut > 0) addDir(entry.path.slice(0, cut + 1), mtime);
    list.push({ path: entry.path, file: entry.file, mtime });
  }
  const parts = [];
  for (const item of list) {
    const size = item.dir ? 0 : item.file.size;
    const records = [];
    if (encoder.encode(item.path).length > 100 || !isPlainAscii(item.path)) {
      records.push(paxRecord("path", item.path));
    }
    if (size > USTAR_MAX_SIZE) records.push(paxRecord("size", String(size)));
    let name = item.path;
    if (records.length) {
      name = fallbackName(item.path, item.dir);
      const pax = encoder.encode(records.join(""));
      parts.push(ustarHeader({ name: "PaxHeader/" + name.replace(/\/$/, "").slice(-80), size: pax.length, type: "x" }));
      parts.push(pax);
      const pad = padding(pax.length);
      if (pad) parts.push(pad);
    }
    parts.push(
      ustarHeader({ name, size, mtime: item.mtime, type: item.dir ? "5" : "0", mode: item.dir ? 0o755 : 0o644 }),
    );
    if (!item.dir) {
      parts.push(item.file);
      const pad = padding(size);
      if (pad) parts.push(pad);
    }
  }
  parts.push(new Uint8Array(2 * BLOCK));
  return new Blob(parts, { type: "application/x-tar" });
}
