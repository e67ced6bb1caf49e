// The upload page: drops and picks files or folders, uploads a few at a time with progress,
// skips content the server already has, and shows where everything landed.
"use strict";

import { human } from "./dom.js";
import { Filing } from "./filing.js";
import { md5Blob } from "./md5.js";
import { Row } from "./row.js";
import { tarBlob } from "./tar.js";

const PARALLEL = 3;
const BUSY_RETRIES = 4;
// WebCrypto digests a whole buffer at once, so only files up to this size are hashed that way.
const WEBCRYPTO_MAX = 256 * 1024 * 1024;
const WEBCRYPTO_NAMES = { sha1: "SHA-1", sha256: "SHA-256", sha384: "SHA-384", sha512: "SHA-512" };

const queue = [];
let running = 0;
let config = { CHECKSUM_TYPE: null, MAX_CONTENT_LENGTH: null, replication: [] };
let filing = null;
const ready = loadConfig();

for (const el of document.querySelectorAll(".origin")) el.textContent = location.origin;

// Header values go out as UTF-8 bytes: XMLHttpRequest only takes Latin-1 strings.
function headerValue(text) {
  return String.fromCharCode(...new TextEncoder().encode(text));
}

async function loadConfig() {
  try {
    const response = await fetch("/config", { headers: { Accept: "application/json" } });
    if (response.ok) config = { ...config, ...(await response.json()) };
  } catch {
    // The page still uploads; it only loses the limit check, dedup and the filing fields.
  }
  if (config.MAX_CONTENT_LENGTH_TEXT) document.getElementById("limit").textContent = config.MAX_CONTENT_LENGTH_TEXT;
  if (config.replication.length) {
    filing = new Filing(config.replication, document.getElementById("fields"), document.getElementById("where"));
    document.getElementById("replication").hidden = false;
  }
}

// -- sending --

function send(method, path, body, headers, row, job) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    // Kept so the row's Cancel button can abort the request.
    job.xhr = xhr;
    xhr.open(method, path);
    for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, headerValue(value));
    xhr.setRequestHeader("Accept", "application/json");
    const samples = [];
    if (row) {
      xhr.upload.addEventListener("progress", (event) => {
        const now = performance.now();
        samples.push([now, event.loaded]);
        // bytes/s over the last two seconds, so the figure follows the link's real speed.
        while (samples.length > 2 && now - samples[0][0] > 2000) samples.shift();
        const [t0, b0] = samples[0];
        const rate = now > t0 ? ((event.loaded - b0) * 1000) / (now - t0) : 0;
        const total = event.lengthComputable ? event.total : row.size;
        row.progress(total ? event.loaded / total : 0);
        row.status(`${human(event.loaded)} of ${human(total)} · ${human(Math.round(rate))}/s`);
      });
    }
    xhr.addEventListener("load", () => {
      let answer = null;
      try {
        answer = JSON.parse(xhr.responseText);
      } catch {
        answer = null;
      }
      resolve({ status: xhr.status, answer, text: xhr.responseText, retryAfter: xhr.getResponseHeader("Retry-After") });
    });
    const broken = () => resolve({ status: 0, answer: null, text: "" });
    xhr.addEventListener("error", broken);
    xhr.addEventListener("abort", broken);
    xhr.send(body);
  });
}

function explain(result, job) {
  if (result.answer && result.answer.error) {
    const prefix = { 413: "Too large: ", 422: "Refused: ", 507: "The server's disk is full: " }[result.status] || "";
    return prefix + result.answer.error;
  }
  if (result.status === 0) {
    return `The connection broke before the server answered. Is the server still running, or did a proxy on the way refuse ${human(job.body.size)}?`;
  }
  return `The server answered ${result.status}: ${result.text.slice(0, 200) || "no explanation"}`;
}

async function digestOf(job) {
  const algorithm = (config.CHECKSUM_TYPE || "").toLowerCase();
  if (algorithm === "md5") {
    return md5Blob(job.body, (f) => {
      // Throwing stops the hashing of a cancelled upload at the next slice.
      if (job.cancelled) throw new Error("cancelled");
      job.row.status(`computing md5 · ${Math.round(f * 100)}%`);
    });
  }
  const name = WEBCRYPTO_NAMES[algorithm];
  // crypto.subtle exists only on https or localhost pages.
  if (name && window.crypto && crypto.subtle && job.body.size <= WEBCRYPTO_MAX) {
    job.row.status(`computing ${algorithm}`);
    const digest = await crypto.subtle.digest(name, await job.body.arrayBuffer());
    return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
  }
  return null;
}

async function run(job) {
  const { row } = job;
  await ready;
  const limit = config.MAX_CONTENT_LENGTH;
  if (limit && job.body.size > limit) {
    row.fail(
      `Too large: ${human(job.body.size)} is more than this server accepts per upload ` +
        `(MAX_CONTENT_LENGTH ${config.MAX_CONTENT_LENGTH_TEXT || human(limit)}). Nothing was sent.`,
    );
    return;
  }
  const path = `/upload/${encodeURIComponent(job.name)}`;
  const headers = { ...job.headers };
  let digest = null;
  if (job.dedup) {
    try {
      digest = await digestOf(job);
    } catch {
      digest = null;
    }
  }
  if (job.cancelled) return row.cancelled();
  if (digest) {
    headers["X-Checksum"] = digest;
    const known = await fetch(`/checksum/${digest}`, { method: "HEAD" }).then((r) => r.status, () => 0);
    if (known === 200) {
      row.status("already stored · deploying by checksum");
      const deploy = { ...headers, "X-Checksum-Deploy": "true" };
      const result = await send("PUT", path, "", deploy, null, job);
      if (job.cancelled) return row.cancelled();
      if (result.status === 200 && result.answer) {
        row.done(result.answer);
        row.note("Already on the server: deployed by checksum, no bytes sent.");
        return;
      }
      // 404: it went away in between; send the bytes as usual.
    }
  }
  let result = null;
  for (let attempt = 1; ; attempt++) {
    row.status(`${human(job.body.size)} · sending`);
    result = await send("PUT", path, job.body, headers, row, job);
    if (job.cancelled) return row.cancelled();
    // 503 means every upload slot of the server is taken: wait as it asks, a few times.
    if (result.status !== 503 || attempt >= BUSY_RETRIES) break;
    const wait = Math.min(30, Number(result.retryAfter) || 2);
    row.progress(0);
    row.status(`server busy · retrying in ${wait} s`);
    await new Promise((resolve) => setTimeout(resolve, wait * 1000));
    if (job.cancelled) return row.cancelled();
  }
  if (result.status === 200 && result.answer) row.done(result.answer);
  else row.fail(explain(result, job));
}

function pump() {
  while (running < PARALLEL && queue.length) {
    const job = queue.shift();
    running++;
    run(job)
      .catch((error) => job.row.fail(`Unexpected problem in the page: ${error}`))
      .finally(() => {
        running--;
        pump();
      });
  }
}

function enqueue(name, body, { kind, dedup, label }) {
  const headers = filing ? filing.headers() : {};
  const row = new Row(label || name, body.size, kind);
  if (filing) row.where.textContent = filing.describe(headers);
  const job = { name, body, row, headers, dedup, cancelled: false, xhr: null };
  row.stop.addEventListener("click", () => {
    job.cancelled = true;
    const waiting = queue.indexOf(job);
    if (waiting >= 0) {
      queue.splice(waiting, 1);
      row.cancelled();
    } else if (job.xhr) {
      job.xhr.abort();
    }
  });
  queue.push(job);
  pump();
}

function addFiles(files) {
  for (const file of files) enqueue(file.name, file, { kind: "file", dedup: true });
}

/** Folders as one tar each: `entries` are {path, file} or {path, dir: true}, paths start with the folder name. */
function addFolders(entries) {
  const groups = new Map();
  for (const entry of entries) {
    const top = entry.path.split("/")[0];
    if (!groups.has(top)) groups.set(top, []);
    groups.get(top).push(entry);
  }
  for (const [top, members] of groups) {
    const files = members.filter((m) => !m.dir).length;
    enqueue(`${top}.tar`, tarBlob(members), { kind: "folder", dedup: false, label: `${top}/ (${files} files, as ${top}.tar)` });
  }
}

// -- choosing and dropping --

const filesInput = document.getElementById("files");
const folderInput = document.getElementById("folder");
filesInput.multiple = true;
document.getElementById("choose-files").addEventListener("click", () => filesInput.click());
document.getElementById("choose-folder").addEventListener("click", () => folderInput.click());
filesInput.addEventListener("change", () => {
  addFiles(Array.from(filesInput.files));
  filesInput.value = "";
});
folderInput.addEventListener("change", () => {
  addFolders(Array.from(folderInput.files, (file) => ({ path: file.webkitRelativePath || file.name, file })));
  folderInput.value = "";
});
document.getElementById("upload-form").addEventListener("submit", (event) => {
  event.preventDefault();
  addFiles(Array.from(filesInput.files));
  filesInput.value = "";
});

function readAll(reader) {
  return new Promise((resolve, reject) => reader.readEntries(resolve, reject));
}

async function walk(entry, prefix, out) {
  if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    out.push({ path: prefix + entry.name, file });
    return;
  }
  const path = `${prefix}${entry.name}/`;
  out.push({ path, dir: true });
  const reader = entry.createReader();
  // readEntries hands out a folder in batches until it returns an empty one.
  for (;;) {
    const batch = await readAll(reader);
    if (!batch.length) break;
    for (const child of batch) await walk(child, path, out);
  }
}

let dragDepth = 0;
document.addEventListener("dragenter", (event) => {
  event.preventDefault();
  dragDepth++;
  document.body.classList.add("dragging");
});
document.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) document.body.classList.remove("dragging");
});
document.addEventListener("dragover", (event) => event.preventDefault());
document.addEventListener("drop", async (event) => {
  event.preventDefault();
  dragDepth = 0;
  document.body.classList.remove("dragging");
  const items = Array.from(event.dataTransfer.items || []).filter((item) => item.kind === "file");
  // Entries must be taken before the handler yields: the drop data is gone afterwards.
  const entries = items.map((item) => (item.webkitGetAsEntry ? item.webkitGetAsEntry() : null));
  const plain = items.map((item) => item.getAsFile());
  const folders = [];
  for (let i = 0; i < items.length; i++) {
    const entry = entries[i];
    if (entry && entry.isDirectory) folders.push(entry);
    else if (plain[i]) addFiles([plain[i]]);
  }
  for (const folder of folders) {
    const out = [];
    try {
      await walk(folder, "", out);
    } catch (error) {
      new Row(`${folder.name}/`, 0, "folder").fail(`Could not read the folder: ${error.message || error}`);
      continue;
    }
    addFolders(out);
  }
});

