// The clinvk dashboard: a client of this server's own API, nothing else. Data from the server is
// only ever set as text (never parsed as HTML). The key, when auth is on, lives in this tab's
// sessionStorage and goes out as `Authorization: Bearer`.
"use strict";

const KEY_SLOT = "clinvk.key";
const $ = (id) => document.getElementById(id);
let liveAbort = null;
let lastRunCount = -1;

function key() { return sessionStorage.getItem(KEY_SLOT) || ""; }

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (key()) h["Authorization"] = "Bearer " + key();
  return h;
}

class ApiError extends Error {
  constructor(status, body) {
    const err = body && body.error;
    super((err && (err.message || err)) || ("HTTP " + status));
    this.status = status;
    this.code = (err && err.code) || (body && body.code);
  }
}

async function api(method, path, body) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const r = await fetch(path, init);
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (e) { json = null; }
  if (!r.ok) throw new ApiError(r.status, json);
  return json;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (c instanceof Node) td.appendChild(c); else td.textContent = c === null || c === undefined ? "" : String(c);
    tr.appendChild(td);
  }
  return tr;
}

function button(label, cls, onClick) {
  const b = el("button", label, cls);
  b.type = "button";
  b.addEventListener("click", onClick);
  return b;
}

function secs(ms) {
  const s = Math.floor(ms / 1000);
  return s < 60 ? s + " s" : Math.floor(s / 60) + " min " + (s % 60) + " s";
}

function short(id) { return id ? String(id).slice(0, 8) : ""; }

// ---- sign-in ---------------------------------------------------------------------------------

async function start() {
  try {
    await api("GET", "/api/v1/backends");
  } catch (e) {
    if (e.status === 401) { showLogin(e.code === "expired_api_key" ? "This key has expired." : (key() ? "This key is not valid." : "")); return; }
    if (e.status === 403) { /* a key that may not list: still a valid key */ }
    else { showLogin("The server answered: " + e.message); return; }
  }
  $("login").hidden = true;
  $("app").hidden = false;
  $("forget").hidden = !key();
  $("whoami").textContent = key() ? "using key " + key().slice(0, 8) + "…" : "auth is off";
  connectLive();
  loadBackends();
  loadUsage();
  loadSessions();
  loadKeys();
}

function showLogin(message) {
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("key-input").focus();
}

$("key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY_SLOT, $("key-input").value.trim());
  $("key-input").value = "";
  start();
});

$("forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_SLOT);
  if (liveAbort) liveAbort.abort();
  location.reload();
});

// ---- streamed answers -------------------------------------------------------------------------

/** Reads a streamed answer's body and hands each piece ending in `sep` to `onFrame`. */
async function readFrames(r, sep, onFrame) {
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf(sep)) >= 0) {
      const frame = buf.slice(0, cut);
      buf = buf.slice(cut + sep.length);
      onFrame(frame);
    }
  }
}

// ---- live: server-sent events over fetch (EventSource cannot send a key) ----------------------

let liveSnapshot = { runs: [], workers: [] };
let liveAt = Date.now();

async function connectLive() {
  if (liveAbort) liveAbort.abort();
  liveAbort = new AbortController();
  const signal = liveAbort.signal;
  try {
    const r = await fetch("/api/v1/live", { headers: headers({ "Accept": "text/event-stream" }), signal });
    if (!r.ok) throw new ApiError(r.status, await r.json().catch(() => null));
    $("live-state").textContent = "live";
    await readFrames(r, "\n\n", (frame) => {
      const data = frame.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data) onLive(JSON.parse(data));
    });
  } catch (e) {
    if (signal.aborted) return;
    $("live-state").textContent = "disconnected: " + e.message;
  }
  if (!signal.aborted) {
    $("live-state").textContent = "reconnecting…";
    setTimeout(connectLive, 2000);
  }
}

function onLive(snap) {
  liveSnapshot = snap;
  liveAt = Date.now();
  renderLive();
  renderBackends(snap.capacity);
  // A run ended: the usage and the sessions changed.
  if (lastRunCount >= 0 && snap.runs.length < lastRunCount) { loadUsage(); loadSessions(); if (keysVisible) loadKeys(); }
  lastRunCount = snap.runs.length;
}

function renderLive() {
  const since = Date.now() - liveAt;
  const runs = $("live-runs");
  runs.replaceChildren();
  for (const r of liveSnapshot.runs) {
    const tr = row([short(r.id), r.backend, r.model || "", short(r.session_id), r.key_id || "", r.api_style, secs(r.elapsed_ms + since),
      button("Cancel", "danger cancel", () => cancelRun(r.id))]);
    tr.dataset.run = r.id;
    runs.appendChild(tr);
  }
  if (!liveSnapshot.runs.length) runs.appendChild(row(["nothing runs"]));
  const workers = $("live-workers");
  workers.replaceChildren();
  for (const w of liveSnapshot.workers) {
    workers.appendChild(row([short(w.id), w.backend, w.pid, w.state, w.turns, secs(w.age_ms + since), secs(w.idle_ms + since)]));
  }
  if (!liveSnapshot.workers.length) workers.appendChild(row(["no warm workers"]));
}

// The elapsed times tick here; nothing is fetched for it.
setInterval(() => { if (!$("app").hidden) renderLive(); }, 1000);

async function cancelRun(id) {
  try { await api("POST", "/api/v1/runs/" + encodeURIComponent(id) + "/cancel", {}); }
  catch (e) { $("live-state").textContent = "cancel failed: " + e.message; }
}

// ---- prompt ----------------------------------------------------------------------------------

$("prompt-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = $("prompt-output");
  const status = $("prompt-status");
  out.textContent = "";
  status.textContent = "running…";
  $("prompt-send").disabled = true;
  try {
    const r = await fetch("/api/v1/prompt", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({ backend: $("prompt-backend").value, prompt: $("prompt-text").value, output_format: "stream-json" }),
    });
    if (!r.ok) throw new ApiError(r.status, await r.json().catch(() => null));
    await readFrames(r, "\n", (line) => {
      if (line.trim()) onPromptEvent(JSON.parse(line.trim()), out, status);
    });
  } catch (e) {
    status.textContent = "failed: " + e.message;
  } finally {
    $("prompt-send").disabled = false;
  }
});

function onPromptEvent(ev, out, status) {
  const c = ev.content;
  switch (ev.type) {
    case "message": if (c.delta || !out.textContent) out.textContent += c.text; break;
    case "tool_use": out.textContent += "\n[tool " + c.name + "]\n"; break;
    case "error": status.textContent = "error: " + c.message; break;
    case "done":
      status.dataset.done = "1";
      if (c.error) status.textContent = "ended: " + c.error;
      else status.textContent = "done in " + secs(c.duration_ms) + " · " + c.token_usage.input_tokens + " in / " + c.token_usage.output_tokens + " out tokens";
      break;
    default: break;
  }
}

// ---- usage: an SVG bar chart drawn here ------------------------------------------------------

for (const id of ["usage-by", "usage-metric", "usage-since"]) $(id).addEventListener("change", () => loadUsage());

async function loadUsage() {
  try {
    const by = $("usage-by").value;
    const r = await api("GET", "/api/v1/usage?by=" + by + "&since=" + encodeURIComponent($("usage-since").value));
    drawChart(r.groups, $("usage-metric").value);
    const t = r.total;
    $("usage-total").textContent = t.requests + " runs (" + t.errors + " failed or cancelled) · " + t.input_tokens + " in / " + t.output_tokens + " out tokens · $" + t.cost_usd.toFixed(4) + " (claude's own figure, else an estimate)";
  } catch (e) {
    $("usage-total").textContent = "usage: " + e.message;
  }
}

const SVG = "http://www.w3.org/2000/svg"; // the SVG namespace name (never fetched)

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function metricOf(g, metric) {
  if (metric === "tokens") return g.input_tokens + g.output_tokens;
  return g[metric];
}

function drawChart(groups, metric) {
  const box = $("usage-chart-box");
  box.replaceChildren();
  const W = 640, H = 220, left = 48, bottom = 36, top = 12;
  const chart = svg("svg", { id: "usage-chart", class: "chart", viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "usage per " + $("usage-by").value });
  const max = Math.max(1e-9, ...groups.map((g) => metricOf(g, metric)));
  chart.appendChild(svg("line", { class: "axis", x1: left, y1: H - bottom, x2: W, y2: H - bottom }));
  chart.appendChild(svg("line", { class: "axis", x1: left, y1: top, x2: left, y2: H - bottom }));
  chart.appendChild(svg("text", { x: 4, y: top + 8 }, metric === "cost_usd" ? "$" + max.toFixed(2) : Math.round(max)));
  const slot = groups.length ? (W - left - 8) / groups.length : 0;
  groups.forEach((g, i) => {
    const v = metricOf(g, metric);
    const h = (v / max) * (H - bottom - top);
    const bar = svg("rect", { class: "bar point", x: left + 4 + i * slot, y: H - bottom - h, width: Math.min(60, Math.max(2, slot - 8)), height: h,
      "data-group": g.group, "data-value": v, "data-requests": g.requests });
    bar.appendChild(svg("title", {}, g.group + ": " + v));
    chart.appendChild(bar);
    chart.appendChild(svg("text", { x: left + 4 + i * slot, y: H - bottom + 14 }, String(g.group).slice(0, 14)));
  });
  if (!groups.length) chart.appendChild(svg("text", { x: left + 10, y: H / 2 }, "no runs in this period"));
  box.appendChild(chart);
}

// ---- sessions --------------------------------------------------------------------------------

for (const id of ["sessions-backend", "sessions-status"]) $(id).addEventListener("change", () => loadSessions());

async function loadSessions() {
  const q = new URLSearchParams({ limit: "50" });
  if ($("sessions-backend").value) q.set("backend", $("sessions-backend").value);
  if ($("sessions-status").value) q.set("status", $("sessions-status").value);
  const body = $("sessions");
  try {
    const page = await api("GET", "/api/v1/sessions?" + q);
    body.replaceChildren();
    for (const s of page.sessions) {
      const tr = row([short(s.id), s.backend, s.status, s.turn_count, s.last_used, s.title || s.initial_prompt,
        button("Delete", "danger", async (ev) => { ev.stopPropagation(); await deleteSession(s.id); })]);
      tr.className = "clickable";
      tr.dataset.session = s.id;
      tr.addEventListener("click", () => showTranscript(s.id));
      body.appendChild(tr);
    }
    if (!page.sessions.length) body.appendChild(row(["no sessions"]));
  } catch (e) {
    body.replaceChildren(row(["sessions: " + e.message]));
  }
}

async function showTranscript(id) {
  const box = $("transcript");
  box.replaceChildren(el("h3", "Session " + id));
  try {
    const s = await api("GET", "/api/v1/sessions/" + encodeURIComponent(id));
    for (const t of s.turns) {
      const d = el("div", undefined, "turn");
      d.appendChild(el("div", "you · " + t.at, "who"));
      d.appendChild(el("pre", t.prompt));
      d.appendChild(el("div", s.backend + (t.error ? " · " + t.error : ""), "who"));
      d.appendChild(el("pre", t.output_summary));
      box.appendChild(d);
    }
  } catch (e) {
    box.appendChild(el("p", e.message, "error"));
  }
}

async function deleteSession(id) {
  try { await api("DELETE", "/api/v1/sessions/" + encodeURIComponent(id)); $("transcript").replaceChildren(); }
  catch (e) { $("transcript").replaceChildren(el("p", "delete failed: " + e.message, "error")); }
  loadSessions();
}

// ---- backends --------------------------------------------------------------------------------

let backendList = [];
let accountsByBackend = {};

// One bar per quota window the backend's CLI reported (utilization, status, reset time).
function quotaBars(limits) {
  const box = el("div", null, "quota");
  if (!limits) return box;
  for (const w of limits.windows) {
    const pct = Math.round(w.utilization * 100);
    const line = el("div", null, "quota-window " + w.status);
    line.dataset.window = w.name;
    const bar = el("span", null, "quota-bar");
    const fill = el("span", null, "quota-fill");
    fill.style.width = Math.min(100, Math.max(0, pct)) + "%";
    bar.appendChild(fill);
    const reset = w.resets_at ? " · resets " + new Date(w.resets_at * 1000).toLocaleString() : "";
    line.append(el("span", w.name + " ", "quota-name"), bar, el("span", " " + pct + "% " + w.status.replace("_", " ") + reset, "quota-text"));
    box.appendChild(line);
  }
  return box;
}

// Each account of a backend (its name, how it logs in) with its quota windows; a backend with
// only the CLI's own login shows just the windows.
function accountBlock(accounts) {
  const box = el("div", null, "accounts");
  for (const a of accounts || []) {
    const item = el("div", null, "account");
    item.dataset.account = a.account;
    if (accounts.length > 1 || a.account !== "default") {
      item.appendChild(el("span", a.account + " (" + a.login + ")" + (a.limits && a.limits.status === "rejected" ? " · refused" : ""), "account-name"));
    }
    item.appendChild(quotaBars(a.limits));
    box.appendChild(item);
  }
  return box;
}

async function loadBackends() {
  const select = $("prompt-backend");
  const filter = $("sessions-backend");
  try {
    const r = await api("GET", "/api/v1/backends");
    backendList = r.backends;
    accountsByBackend = {};
    try {
      for (const a of (await api("GET", "/api/v1/accounts")).accounts) (accountsByBackend[a.backend] ||= []).push(a);
    } catch (e) { /* an older daemon: no windows to show */ }
    select.replaceChildren();
    const chosen = filter.value;
    filter.replaceChildren(el("option", "any"));
    filter.firstChild.value = "";
    for (const b of r.backends) {
      const o = el("option", b.name);
      o.value = b.name;
      if (!b.available) o.disabled = true;
      select.appendChild(o);
      const f = el("option", b.name);
      f.value = b.name;
      filter.appendChild(f);
    }
    filter.value = chosen;
    renderBackends(r.capacity);
  } catch (e) {
    $("backends").replaceChildren(row(["backends: " + e.message]));
  }
}

// The slots in use come with every live event.
function renderBackends(cap) {
  const body = $("backends");
  body.replaceChildren();
  $("capacity").textContent = "all backends: " + cap.running + " of " + cap.max_concurrent + " runs at once · queue " + cap.queued + " of " + cap.queue_size;
  for (const b of backendList) {
    const running = cap.running_per_backend[b.name] || 0;
    const limit = cap.per_backend[b.name];
    const tr = row([b.name, b.available ? "yes" : "no", b.version || "", b.mode, limit ? running + " / " + limit : String(running),
      b.workers.length, accountBlock(accountsByBackend[b.name]), b.message || ""]);
    tr.dataset.backend = b.name;
    body.appendChild(tr);
  }
}

// ---- keys (admin) ----------------------------------------------------------------------------

let keysVisible = false;

function against(used, limit) { return limit ? used + " / " + limit : String(used); }

async function loadKeys() {
  const body = $("keys");
  try {
    const r = await api("GET", "/api/v1/keys");
    keysVisible = true;
    $("keys-note").textContent = "auth " + (r.required ? "required" : "not required") + " · " + r.accepted_keys + " keys accepted";
    $("key-add-form").hidden = false;
    body.replaceChildren();
    for (const k of r.keys) {
      const tr = row([k.id, k.name, k.scope, against(k.today.requests, k.quotas.requests_per_day), against(k.today.tokens, k.quotas.tokens_per_day),
        against(k.today.running, k.quotas.max_concurrent), k.expired ? "expired" : (k.expires_at || "never"),
        button("Revoke", "danger revoke", () => revokeKey(k.id))]);
      tr.dataset.key = k.id;
      tr.dataset.name = k.name;
      body.appendChild(tr);
    }
  } catch (e) {
    keysVisible = false;
    $("key-add-form").hidden = true;
    body.replaceChildren();
    $("keys-note").textContent = e.status === 403 ? "Managing keys needs a key with the admin scope." : "keys: " + e.message;
  }
}

$("key-add-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const req = { name: $("key-add-name").value.trim(), scope: $("key-add-scope").value };
  const num = (id) => ($(id).value ? Number($(id).value) : undefined);
  if (num("key-add-rpd")) req.requests_per_day = num("key-add-rpd");
  if (num("key-add-tpd")) req.tokens_per_day = num("key-add-tpd");
  if (num("key-add-conc")) req.max_concurrent = num("key-add-conc");
  if ($("key-add-expires").value.trim()) req.expires = $("key-add-expires").value.trim();
  try {
    const k = await api("POST", "/api/v1/keys", req);
    $("key-new-value").textContent = k.key;
    $("key-new").hidden = false;
    $("key-add-form").reset();
  } catch (e) {
    $("keys-note").textContent = "add failed: " + e.message;
  }
  loadKeys();
});

async function revokeKey(id) {
  try { await api("DELETE", "/api/v1/keys/" + encodeURIComponent(id)); $("key-new").hidden = true; }
  catch (e) { $("keys-note").textContent = "revoke failed: " + e.message; }
  loadKeys();
}

start();
