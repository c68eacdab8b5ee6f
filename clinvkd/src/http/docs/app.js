// clinvk API docs: renders /openapi.json in the browser, offline (no libraries, no CDN).
// Endpoints are grouped by tag; each shows its method, path, summary, parameters, request body
// and responses, with schemas ($refs expanded) as pretty JSON.
"use strict";

(function () {
  const METHODS = ["get", "put", "post", "delete", "patch", "head", "options"];
  const main = document.getElementById("main");
  const nav = document.getElementById("nav");

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  // A tiny subset of Markdown: `code`, **bold**, paragraphs. Text only — never innerHTML.
  function md(text) {
    const wrap = el("div", { class: "md" });
    for (const para of String(text || "").split(/\n{2,}/)) {
      const p = el("p");
      const parts = para.split(/(`[^`]+`|\*\*[^*]+\*\*)/);
      for (const part of parts) {
        if (part.startsWith("`") && part.endsWith("`") && part.length > 1) p.append(el("code", {}, part.slice(1, -1)));
        else if (part.startsWith("**") && part.endsWith("**") && part.length > 3) p.append(el("strong", {}, part.slice(2, -2)));
        else if (part) p.append(part);
      }
      wrap.append(p);
    }
    return wrap;
  }

  function lookup(doc, ref) {
    if (!ref.startsWith("#/")) return undefined;
    return ref.slice(2).split("/").reduce((o, k) => (o === undefined ? o : o[k.replace(/~1/g, "/").replace(/~0/g, "~")]), doc);
  }

  // Expands $refs (each at most once along a path, to survive recursion).
  function expand(doc, value, seen) {
    seen = seen || [];
    if (Array.isArray(value)) return value.map((v) => expand(doc, v, seen));
    if (value && typeof value === "object") {
      if (typeof value.$ref === "string") {
        const name = value.$ref.split("/").pop();
        if (seen.includes(value.$ref) || seen.length > 8) return { $ref: value.$ref };
        const target = lookup(doc, value.$ref);
        if (target === undefined) return value;
        const out = expand(doc, target, seen.concat([value.$ref]));
        return out && typeof out === "object" && !Array.isArray(out) ? Object.assign({ "x-schema": name }, out) : out;
      }
      const out = {};
      for (const [k, v] of Object.entries(value)) out[k] = expand(doc, v, seen);
      return out;
    }
    return value;
  }

  const pretty = (v) => el("pre", {}, JSON.stringify(v, null, 2));

  function contentBlock(doc, content) {
    const box = el("div");
    for (const [ctype, media] of Object.entries(content || {})) {
      box.append(el("div", { class: "ctype" }, ctype));
      if (media["x-stream"]) box.append(md(media["x-stream"]));
      if (media["x-stream-item"]) {
        box.append(el("div", { class: "ctype" }, "each event:"));
        box.append(pretty(expand(doc, media["x-stream-item"])));
      }
      if (media.schema && !(media["x-stream-item"] && media.schema.type === "string")) box.append(pretty(expand(doc, media.schema)));
      if (media.example !== undefined) {
        box.append(el("div", { class: "ctype" }, "example:"));
        box.append(el("pre", {}, typeof media.example === "string" ? media.example : JSON.stringify(media.example, null, 2)));
      }
    }
    return box;
  }

  function anchor(method, path) {
    return "op-" + method + "-" + path.replace(/[^A-Za-z0-9]+/g, "-");
  }

  function operation(doc, path, method, op, pathParams) {
    const id = anchor(method, path);
    const d = el("details", { class: "op", id });
    const security = op.security || doc.security || [];
    const open = security.length === 0 || security.some((s) => Object.keys(s).length === 0);
    const needsKey = security.some((s) => Object.keys(s).length > 0);
    d.append(
      el(
        "summary",
        {},
        el("span", { class: "method " + method }, method.toUpperCase()),
        el("span", { class: "path" }, path),
        el("span", { class: "summary" }, op.summary || ""),
        needsKey ? el("span", { class: "badge" }, open ? "key optional" : "key required") : el("span", { class: "badge" }, "no key")
      )
    );
    const body = el("div", { class: "body" });
    if (op.description) body.append(md(op.description));
    const params = (pathParams || []).concat(op.parameters || []).map((p) => expand(doc, p));
    if (params.length) {
      body.append(el("h4", {}, "Parameters"));
      const t = el("table", {}, el("tr", {}, el("th", {}, "name"), el("th", {}, "in"), el("th", {}, "schema"), el("th", {}, "description")));
      for (const p of params) {
        t.append(
          el(
            "tr",
            {},
            el("td", {}, el("code", {}, p.name), p.required ? " *" : ""),
            el("td", {}, p.in),
            el("td", {}, el("code", {}, JSON.stringify(p.schema || {}))),
            el("td", {}, md(p.description || ""))
          )
        );
      }
      body.append(t);
    }
    if (op.requestBody) {
      const rb = expand(doc, op.requestBody);
      body.append(el("h4", {}, "Request body" + (rb.required ? " (required)" : "")));
      if (rb.description) body.append(md(rb.description));
      body.append(contentBlock(doc, rb.content));
    }
    body.append(el("h4", {}, "Responses"));
    for (const [status, raw] of Object.entries(op.responses || {})) {
      const r = raw.$ref ? lookup(doc, raw.$ref) || {} : raw;
      const row = el("div", { class: "response" });
      row.append(el("div", {}, el("span", { class: "status s" + status[0] }, status), " ", r.description ? md(r.description).firstChild : ""));
      const headers = Object.keys(r.headers || {});
      if (headers.length) row.append(el("div", { class: "ctype" }, "headers: " + headers.join(", ")));
      if (r.content) {
        const c = el("details", {}, el("summary", {}, "schema"), contentBlock(doc, r.content));
        if (status.startsWith("2")) c.open = true;
        row.append(c);
      }
      body.append(row);
    }
    d.append(body);
    return d;
  }

  function render(doc) {
    const info = doc.info || {};
    document.title = (info.title || "API") + " " + (info.version || "");
    document.getElementById("title").textContent = (info.title || "API") + " " + (info.version || "");
    main.textContent = "";
    const intro = el("section", { class: "intro" });
    if (info.summary) intro.append(el("p", {}, el("strong", {}, info.summary)));
    if (info.description) intro.append(md(info.description));
    const schemes = (doc.components || {}).securitySchemes || {};
    if (Object.keys(schemes).length) {
      intro.append(el("h4", {}, "Security schemes"));
      const ul = el("ul");
      for (const [name, s] of Object.entries(schemes)) {
        ul.append(el("li", {}, el("code", {}, name), " — ", s.type === "http" ? "HTTP " + s.scheme : s.type + " in " + s.in + " " + (s.name || ""), s.description ? md(s.description).firstChild : ""));
      }
      intro.append(ul);
    }
    main.append(intro);

    const tags = (doc.tags || []).map((t) => t.name);
    const groups = new Map(tags.map((t) => [t, []]));
    for (const [path, item] of Object.entries(doc.paths || {})) {
      for (const m of METHODS) {
        if (!item[m]) continue;
        const tag = (item[m].tags || ["other"])[0];
        if (!groups.has(tag)) groups.set(tag, []);
        groups.get(tag).push([path, m, item[m], item.parameters]);
      }
    }
    for (const [tag, ops] of groups) {
      if (!ops.length) continue;
      const meta = (doc.tags || []).find((t) => t.name === tag) || {};
      const sec = el("section", { class: "tag", id: "tag-" + tag }, el("h2", {}, tag));
      if (meta.description) sec.append(el("p", { class: "tag-desc" }, meta.description));
      nav.append(el("h3", {}, tag));
      for (const [path, m, op, pp] of ops) {
        sec.append(operation(doc, path, m, op, pp));
        nav.append(el("a", { href: "#" + anchor(m, path) }, m.toUpperCase() + " " + path));
      }
      main.append(sec);
    }
    // Opening a linked operation.
    const open = () => {
      const t = location.hash && document.getElementById(location.hash.slice(1));
      if (t && t.tagName === "DETAILS") t.open = true;
    };
    window.addEventListener("hashchange", open);
    open();
  }

  fetch("/openapi.json", { headers: { Accept: "application/json" } })
    .then((r) => {
      if (!r.ok) throw new Error("GET /openapi.json answered " + r.status);
      return r.json();
    })
    .then(render)
    .catch((e) => {
      main.textContent = "";
      main.append(el("p", { class: "error" }, "Cannot load the API description: " + e.message));
    });
})();
