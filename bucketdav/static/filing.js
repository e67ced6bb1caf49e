// The replication header fields of the upload page: built from GET /config's templates,
// remembered in localStorage, and turned into the place an upload will be filed.
"use strict";

import { el } from "./dom.js";

const STORE_PREFIX = "bucketdav.header.";

export class Filing {
  /** `rules` are GET /config's `replication` list: {variable, template, headers}. */
  constructor(rules, box, where) {
    this.rules = rules;
    this.where = where;
    this.inputs = new Map();
    for (const rule of rules) {
      for (const name of rule.headers) {
        if (![...this.inputs.keys()].some((n) => n.toLowerCase() === name.toLowerCase())) this.add(box, name);
      }
    }
    this.show();
  }

  add(box, name) {
    const id = `header-${this.inputs.size}`;
    const input = el("input", { id, type: "text", name, autocomplete: "off", spellcheck: false });
    input.value = localStorage.getItem(STORE_PREFIX + name) || "";
    input.addEventListener("input", () => {
      localStorage.setItem(STORE_PREFIX + name, input.value);
      this.show();
    });
    this.inputs.set(name, input);
    box.append(el("div", { className: "field" }, el("label", { htmlFor: id, textContent: name }), input));
  }

  /** The request headers the fields give, by header name; empty fields are left out. */
  headers() {
    const headers = {};
    for (const [name, input] of this.inputs) {
      const value = input.value.trim();
      if (value) headers[name] = value;
    }
    return headers;
  }

  /** Where an upload with `headers` will be filed, one entry per template. */
  places(headers) {
    const lower = new Map(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
    return this.rules.map((rule) => {
      const missing = rule.headers.filter((h) => !lower.has(h.toLowerCase()));
      if (missing.length) return { rule, missing, path: null };
      const path = rule.template.replace(/\$\{([^}]+)\}/g, (_, name) => lower.get(name.toLowerCase()));
      return { rule, missing, path: `replica/${path}/` };
    });
  }

  /** One sentence for an upload's row: where it goes, or that it is not filed. */
  describe(headers) {
    if (!this.rules.length) return "";
    const filed = this.places(headers).filter((p) => p.path).map((p) => p.path);
    return filed.length ? `Will be filed under ${filed.join(", ")}` : "Not filed under replica/ (no names given)";
  }

  show() {
    this.where.replaceChildren();
    for (const place of this.places(this.headers())) {
      const text = place.path
        ? el("code", { textContent: place.path })
        : `not filed by ${place.rule.variable} (${place.rule.template}): fill ${place.missing.join(", ")}`;
      this.where.append(el("li", {}, text));
    }
  }
}
