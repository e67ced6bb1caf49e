// One row of the upload page per upload: name, state, progress bar, and the results.
"use strict";

import { copyButton } from "./copy.js";
import { el, human } from "./dom.js";

const list = document.getElementById("uploads");
const idle = document.getElementById("idle");
const announcer = document.getElementById("announce");

// Screen readers hear finished uploads through one polite live region, not every progress tick.
function announce(text) {
  if (announcer) announcer.textContent = text;
}

// Blobs are named by their checksums; `?name=` makes the browser save one under a real name.
function named(url, filename) {
  return filename ? `${url}?name=${encodeURIComponent(filename)}` : url;
}

// The name of what a compressed upload decompresses to: `x.tgz` → `x.tar`, `x.log.gz` → `x.log`.
function unpacked(filename) {
  if (!filename) return "";
  if (/\.(tgz|tbz2?|txz)$/i.test(filename)) return filename.replace(/\.[^.]+$/, ".tar");
  return /\.(gz|bz2|xz|zst)$/i.test(filename) ? filename.replace(/\.[^.]+$/, "") : "";
}

export class Row {
  constructor(label, size, kind) {
    this.name = el("span", { className: "name", textContent: label });
    this.state = el("span", { className: "state", textContent: `${human(size)} · waiting` });
    this.bar = el("progress", { max: 100, value: 0 });
    this.bar.setAttribute("aria-label", `Progress of ${label}`);
    this.where = el("p", { className: "hint" });
    this.stop = el("button", { type: "button", className: "small", textContent: "Cancel" });
    this.stop.setAttribute("aria-label", `Cancel the upload of ${label}`);
    const head = el("div", { className: "head" }, this.name, el("span", { className: "side" }, this.state, this.stop));
    this.li = el("li", { className: `upload ${kind}` }, head, this.bar, this.where);
    this.li.setAttribute("aria-label", label);
    this.size = size;
    list.append(this.li);
    if (idle) idle.hidden = true;
  }

  status(text) {
    this.state.textContent = text;
  }

  progress(fraction) {
    this.bar.value = Math.round(fraction * 100);
  }

  note(text) {
    this.li.append(el("p", { className: "note", textContent: text }));
  }

  finish(kind) {
    this.li.classList.add(kind);
    this.stop.remove();
  }

  cancelled() {
    announce(`${this.name.textContent} cancelled`);
    this.finish("cancelled");
    this.status("cancelled");
    this.bar.hidden = true;
    this.where.hidden = true;
  }

  fail(message) {
    announce(`${this.name.textContent} failed: ${message}`);
    this.finish("failed");
    this.status("failed");
    this.bar.removeAttribute("value");
    this.bar.hidden = true;
    this.where.hidden = true;
    this.li.append(el("p", { className: "error", role: "alert", textContent: message }));
  }

  done(answer) {
    announce(`${this.name.textContent} uploaded`);
    this.finish("done");
    this.progress(1);
    // The links below say where it went; the forecast has served its purpose.
    this.where.hidden = true;
    this.status(`done · ${human(answer.size ?? this.size)}`);
    const results = el("dl", { className: "results" });
    const add = (term, node, copyText) => {
      results.append(el("dt", { textContent: term }), el("dd", {}, node, copyButton(copyText, `Copy ${term.toLowerCase()} of ${this.name.textContent}`)));
    };
    const link = (url, href = url) => el("a", { href, textContent: url.replace(location.origin, "") || url });
    add(`Checksum (${answer.algorithm})`, el("code", { textContent: answer.checksum.blob }), answer.checksum.blob);
    const url = answer.url || {};
    if (url.blob) add("File", link(url.blob, named(url.blob, answer.filename)), url.blob);
    if (url.decompressed) add("Decompressed", link(url.decompressed, named(url.decompressed, unpacked(answer.filename))), url.decompressed);
    if (url.archive) add("Tree", link(url.archive), url.archive);
    for (const replica of url.replicas || []) add("Replica", link(replica), replica);
    this.li.append(results);
    if (answer.files != null) this.note(`Unpacked ${answer.files} file${answer.files === 1 ? "" : "s"} into the tree.`);
    for (const skipped of answer.skipped || []) this.note(`Not filed: ${skipped}`);
  }
}
